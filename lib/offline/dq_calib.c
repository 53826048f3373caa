/* Calibrator: streaming per-channel statistics of a layer input and the sample the rotation
 * search runs on. */
#include <math.h>
#include <string.h>

#include "dq_transform.h"

/* The first released layout ends after sample_mode. */
#define CALIB_PARAMS_MIN_SIZE (offsetof(dq_calib_params, sample_mode) + sizeof(int32_t))

struct dq_calib {
    dq_context ctx;
    int64_t cols;
    int32_t mode;
    int64_t sample_tokens;
    int64_t tokens;
    float *absmax, *min, *max;
    float *first; /* FIRST: sample_tokens x cols */
    double *sum;  /* SEQ_MEAN: sample_tokens x cols running sums per sequence position */
};

DQ_API dq_status dq_calib_params_init(dq_calib_params *p, size_t struct_size)
{
    const dq_calib_params defaults = {
        .struct_size = sizeof defaults,
        .sample_tokens = 2048,
        .sample_mode = DQ_CALIB_SAMPLE_FIRST,
    };
    return dq__params_init(p, struct_size, CALIB_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_calib_params(const dq_calib_params *user, dq_calib_params *p)
{
    dq_calib_params_init(p, sizeof *p);
    dq_status st = dq__params_read(p, sizeof *p, CALIB_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if (p->flags != 0 || p->sample_mode < DQ_CALIB_SAMPLE_NONE ||
        p->sample_mode > DQ_CALIB_SAMPLE_SEQ_MEAN)
        return DQ_ERR_INVALID_ARG;
    if (p->sample_mode != DQ_CALIB_SAMPLE_NONE && p->sample_tokens < 1)
        return DQ_ERR_INVALID_ARG;
    return DQ_OK;
}

DQ_API dq_status dq_calib_create(dq_context *ctx, const dq_calib_params *params, int64_t cols,
                                 dq_calib **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    dq_calib_params p;
    dq_status st = read_calib_params(params, &p);
    if (st != DQ_OK)
        return st;
    if (cols <= 0)
        return DQ_ERR_SHAPE;
    size_t elem = p.sample_mode == DQ_CALIB_SAMPLE_SEQ_MEAN ? sizeof(double) : sizeof(float);
    size_t n_sample = 0, sample_bytes = 0, stat_bytes;
    if ((uint64_t)cols > SIZE_MAX / sizeof(float) ||
        !dq__mul_size((size_t)cols, sizeof(float), &stat_bytes))
        return DQ_ERR_OVERFLOW;
    if (p.sample_mode != DQ_CALIB_SAMPLE_NONE &&
        ((uint64_t)p.sample_tokens > SIZE_MAX ||
         !dq__mul_size((size_t)p.sample_tokens, (size_t)cols, &n_sample) ||
         !dq__mul_size(n_sample, elem, &sample_bytes) || sample_bytes > (size_t)INT64_MAX))
        return DQ_ERR_OVERFLOW;

    const dq_context *c = dq__ctx(ctx);
    dq_calib *cal = dq__calloc(c, 1, sizeof *cal);
    if (!cal)
        return DQ_ERR_NOMEM;
    cal->ctx = *c;
    cal->cols = cols;
    cal->mode = p.sample_mode;
    cal->sample_tokens = p.sample_mode == DQ_CALIB_SAMPLE_NONE ? 0 : p.sample_tokens;
    cal->absmax = dq__alloc(c, stat_bytes);
    cal->min = dq__alloc(c, stat_bytes);
    cal->max = dq__alloc(c, stat_bytes);
    bool ok = cal->absmax && cal->min && cal->max;
    if (p.sample_mode == DQ_CALIB_SAMPLE_FIRST) {
        cal->first = dq__alloc(c, sample_bytes);
        ok = ok && cal->first;
    } else if (p.sample_mode == DQ_CALIB_SAMPLE_SEQ_MEAN) {
        cal->sum = dq__calloc(c, n_sample, sizeof(double));
        ok = ok && cal->sum;
    }
    if (!ok) {
        dq_calib_free(cal);
        return DQ_ERR_NOMEM;
    }
    for (int64_t j = 0; j < cols; j++) {
        cal->absmax[j] = 0.0f;
        cal->min[j] = INFINITY;
        cal->max[j] = -INFINITY;
    }
    *out = cal;
    return DQ_OK;
}

DQ_API void dq_calib_free(dq_calib *cal)
{
    if (!cal)
        return;
    dq_context c = cal->ctx;
    dq__free(&c, cal->absmax);
    dq__free(&c, cal->min);
    dq__free(&c, cal->max);
    dq__free(&c, cal->first);
    dq__free(&c, cal->sum);
    dq__free(&c, cal);
}

DQ_API dq_status dq_calib_observe(dq_calib *cal, const float *x, int64_t rows, int64_t cols,
                                  int64_t ldx)
{
    if (!cal)
        return DQ_ERR_INVALID_ARG;
    dq_status st = dq__check_matrix(&cal->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != cal->cols)
        return DQ_ERR_SHAPE;
    if (rows > INT64_MAX - cal->tokens)
        return DQ_ERR_OVERFLOW;
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_ERR_NONFINITE;

    for (int64_t i = 0; i < rows; i++) {
        const float *row = x + (size_t)i * (size_t)ldx;
        for (int64_t j = 0; j < cols; j++) {
            float v = row[j], a = fabsf(v);
            cal->absmax[j] = a > cal->absmax[j] ? a : cal->absmax[j];
            cal->min[j] = v < cal->min[j] ? v : cal->min[j];
            cal->max[j] = v > cal->max[j] ? v : cal->max[j];
        }
        int64_t t = cal->tokens + i;
        if (cal->mode == DQ_CALIB_SAMPLE_FIRST && t < cal->sample_tokens) {
            memcpy(cal->first + (size_t)t * (size_t)cols, row, (size_t)cols * sizeof(float));
        } else if (cal->mode == DQ_CALIB_SAMPLE_SEQ_MEAN) {
            double *acc = cal->sum + (size_t)(t % cal->sample_tokens) * (size_t)cols;
            for (int64_t j = 0; j < cols; j++)
                acc[j] += (double)row[j];
        }
    }
    cal->tokens += rows;
    return DQ_OK;
}

DQ_API dq_status dq_calib_merge(dq_calib *dst, const dq_calib *src)
{
    if (!dst || !src || dst == src)
        return DQ_ERR_INVALID_ARG;
    if (dst->cols != src->cols)
        return DQ_ERR_SHAPE;
    if (dst->mode != src->mode || dst->sample_tokens != src->sample_tokens)
        return DQ_ERR_INVALID_ARG;
    if (src->tokens > INT64_MAX - dst->tokens)
        return DQ_ERR_OVERFLOW;
    /* Sums of partial sequences would put tokens at the wrong positions. */
    if (dst->mode == DQ_CALIB_SAMPLE_SEQ_MEAN &&
        (dst->tokens % dst->sample_tokens != 0 || src->tokens % src->sample_tokens != 0))
        return DQ_ERR_BAD_STATE;

    const int64_t cols = dst->cols;
    for (int64_t j = 0; j < cols; j++) {
        dst->absmax[j] = src->absmax[j] > dst->absmax[j] ? src->absmax[j] : dst->absmax[j];
        dst->min[j] = src->min[j] < dst->min[j] ? src->min[j] : dst->min[j];
        dst->max[j] = src->max[j] > dst->max[j] ? src->max[j] : dst->max[j];
    }
    if (dst->mode == DQ_CALIB_SAMPLE_FIRST && dst->tokens < dst->sample_tokens) {
        int64_t have_src = src->tokens < src->sample_tokens ? src->tokens : src->sample_tokens;
        int64_t take = dst->sample_tokens - dst->tokens;
        take = take < have_src ? take : have_src;
        memcpy(dst->first + (size_t)dst->tokens * (size_t)cols, src->first,
               (size_t)take * (size_t)cols * sizeof(float));
    } else if (dst->mode == DQ_CALIB_SAMPLE_SEQ_MEAN) {
        size_t n = (size_t)dst->sample_tokens * (size_t)cols;
        for (size_t k = 0; k < n; k++)
            dst->sum[k] += src->sum[k];
    }
    dst->tokens += src->tokens;
    return DQ_OK;
}

DQ_API dq_status dq_calib_tokens(const dq_calib *cal, int64_t *tokens)
{
    if (!cal || !tokens)
        return DQ_ERR_INVALID_ARG;
    *tokens = cal->tokens;
    return DQ_OK;
}

DQ_API dq_status dq_calib_absmax(const dq_calib *cal, float *out, int64_t n)
{
    if (!cal || !out)
        return DQ_ERR_INVALID_ARG;
    if (n != cal->cols)
        return DQ_ERR_SHAPE;
    if (cal->tokens == 0)
        return DQ_ERR_BAD_STATE;
    memcpy(out, cal->absmax, (size_t)n * sizeof(float));
    return DQ_OK;
}

DQ_API dq_status dq_calib_minmax(const dq_calib *cal, float *min, float *max, int64_t n)
{
    if (!cal || (!min && !max))
        return DQ_ERR_INVALID_ARG;
    if (n != cal->cols)
        return DQ_ERR_SHAPE;
    if (cal->tokens == 0)
        return DQ_ERR_BAD_STATE;
    if (min)
        memcpy(min, cal->min, (size_t)n * sizeof(float));
    if (max)
        memcpy(max, cal->max, (size_t)n * sizeof(float));
    return DQ_OK;
}

static int64_t sample_rows(const dq_calib *cal)
{
    if (cal->mode == DQ_CALIB_SAMPLE_FIRST)
        return cal->tokens < cal->sample_tokens ? cal->tokens : cal->sample_tokens;
    if (cal->mode == DQ_CALIB_SAMPLE_SEQ_MEAN && cal->tokens > 0 &&
        cal->tokens % cal->sample_tokens == 0)
        return cal->sample_tokens;
    return 0;
}

static void write_sample(const dq_calib *cal, float *out, int64_t ldo, int64_t rows)
{
    const int64_t cols = cal->cols;
    if (cal->mode == DQ_CALIB_SAMPLE_FIRST) {
        for (int64_t i = 0; i < rows; i++)
            memcpy(out + (size_t)i * (size_t)ldo, cal->first + (size_t)i * (size_t)cols,
                   (size_t)cols * sizeof(float));
        return;
    }
    double seqs = (double)(cal->tokens / cal->sample_tokens);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            out[(size_t)i * (size_t)ldo + (size_t)j] =
                (float)(cal->sum[(size_t)i * (size_t)cols + (size_t)j] / seqs);
}

DQ_API dq_status dq_calib_sample(const dq_calib *cal, float *out, int64_t ldo, int64_t *rows)
{
    if (!cal || !rows)
        return DQ_ERR_INVALID_ARG;
    int64_t n = sample_rows(cal);
    if (out) {
        if (ldo < cal->cols)
            return DQ_ERR_SHAPE;
        if (n == 0)
            return DQ_ERR_BAD_STATE;
        write_sample(cal, out, ldo, n);
    }
    *rows = n;
    return DQ_OK;
}

dq_status dq__calib_take_sample(const dq_calib *cal, const dq_context *ctx, float **sample,
                                int64_t *rows)
{
    *sample = NULL;
    int64_t n = sample_rows(cal);
    if (n == 0)
        return DQ_ERR_BAD_STATE;
    float *buf = dq__calloc(ctx, (size_t)n * (size_t)cal->cols, sizeof(float));
    if (!buf)
        return DQ_ERR_NOMEM;
    write_sample(cal, buf, cal->cols, n);
    *sample = buf;
    *rows = n;
    return DQ_OK;
}

int64_t dq__calib_cols(const dq_calib *cal)
{
    return cal->cols;
}

int64_t dq__calib_token_count(const dq_calib *cal)
{
    return cal->tokens;
}

const float *dq__calib_absmax_ptr(const dq_calib *cal)
{
    return cal->absmax;
}
