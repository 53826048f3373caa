/* Calibrator: streaming per-channel statistics of a layer input and the sample the rotation
 * search runs on. */
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_transform.h"

/* The first released layout ends after sample_mode. */
#define CALIB_PARAMS_MIN_SIZE (offsetof(dq_calib_params, sample_mode) + sizeof(int32_t))

struct dq_calib {
    uint64_t tag; /* DQ__TAG_CALIB (dq_handle.h) */
    dq_context ctx;
    int64_t cols;
    int32_t mode;
    int64_t sample_tokens;
    int64_t tokens;
    float *absmax, *min, *max;
    float *first; /* FIRST: sample_tokens x cols */
    double *sum;  /* SEQ_MEAN: sample_tokens x cols running sums per sequence position */
};
DQ__HANDLE_LAYOUT(struct dq_calib);

DQ_API dq_status dq_calib_params_init(dq_calib_params *p, size_t struct_size)
{
    const dq_calib_params defaults = {
        .struct_size = sizeof defaults,
        .sample_tokens = 2048,
        .sample_mode = DQ_CALIB_SAMPLE_FIRST,
    };
    return dq__params_init(p, struct_size, CALIB_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_calib_params(const dq_context *ctx, const dq_calib_params *user,
                                   dq_calib_params *p)
{
    dq_calib_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, "dq_calib_create", "params", p, sizeof *p,
                                      CALIB_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if (p->flags != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_calib_create", "params->flags 0x%x, "
                        "expected 0", (unsigned)p->flags);
    if (p->sample_mode < DQ_CALIB_SAMPLE_NONE || p->sample_mode > DQ_CALIB_SAMPLE_SEQ_MEAN)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_calib_create", "params->sample_mode %d "
                        "outside [%d, %d]", (int)p->sample_mode, DQ_CALIB_SAMPLE_NONE,
                        DQ_CALIB_SAMPLE_SEQ_MEAN);
    if (p->sample_mode != DQ_CALIB_SAMPLE_NONE && p->sample_tokens < 1)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_calib_create", "params->sample_tokens "
                        "%lld, expected >= 1", (long long)p->sample_tokens);
    return DQ_OK;
}

DQ_API dq_status dq_calib_create(dq_context *ctx, const dq_calib_params *params, int64_t cols,
                                 dq_calib **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_calib_params p;
    dq_status st = read_calib_params(ctx, params, &p);
    if (st != DQ_OK)
        return st;
    if (cols <= 0)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld, expected > 0", (long long)cols);
    size_t elem = p.sample_mode == DQ_CALIB_SAMPLE_SEQ_MEAN ? sizeof(double) : sizeof(float);
    size_t n_sample = 0, sample_bytes = 0, stat_bytes;
    if ((uint64_t)cols > SIZE_MAX / sizeof(float) ||
        !dq__mul_size((size_t)cols, sizeof(float), &stat_bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "cols %lld overflow size_t", (long long)cols);
    if (p.sample_mode != DQ_CALIB_SAMPLE_NONE &&
        ((uint64_t)p.sample_tokens > SIZE_MAX ||
         !dq__mul_size((size_t)p.sample_tokens, (size_t)cols, &n_sample) ||
         !dq__mul_size(n_sample, elem, &sample_bytes) || sample_bytes > (size_t)INT64_MAX))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "params->sample_tokens %lld x cols %lld overflow",
                       (long long)p.sample_tokens, (long long)cols);

    const dq_context *c = dq__ctx(ctx);
    dq_calib *cal = dq__calloc(c, 1, sizeof *cal);
    if (!cal)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "%zu bytes for the calibrator", sizeof *cal);
    dq__context_keep(&cal->ctx, c);
    cal->tag = DQ__TAG_CALIB;
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
        return DQ_FAIL(c, DQ_ERR_NOMEM, "statistics of %lld columns and a %zu-byte sample",
                       (long long)cols, sample_bytes);
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
    DQ_CHECK_HANDLE_FREE(cal, DQ__H_CALIB, "cal");
    DQ_HANDLE_RETIRE(cal, DQ__H_CALIB);
    dq_context c = cal->ctx;
    dq__free(&c, cal->absmax);
    dq__free(&c, cal->min);
    dq__free(&c, cal->max);
    dq__free(&c, cal->first);
    dq__free(&c, cal->sum);
    dq__free(&c, cal);
    dq__context_drop(&c);
}

DQ_API dq_status dq_calib_observe(dq_calib *cal, const float *x, int64_t rows, int64_t cols,
                                  int64_t ldx)
{
    DQ_CHECK_HANDLE(NULL, cal, DQ__H_CALIB, "cal");
    if (!cal)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "cal is NULL");
    dq_status st = dq__check_matrix(&cal->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != cal->cols)
        return DQ_FAIL(&cal->ctx, DQ_ERR_SHAPE, "x: cols %lld != calibrator cols %lld",
                       (long long)cols, (long long)cal->cols);
    if (rows > INT64_MAX - cal->tokens)
        return DQ_FAIL(&cal->ctx, DQ_ERR_OVERFLOW, "token count %lld + rows %lld overflows",
                       (long long)cal->tokens, (long long)rows);
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_FAIL(&cal->ctx, DQ_ERR_NONFINITE, "x has a non-finite element");

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
    DQ_CHECK_HANDLE(NULL, dst, DQ__H_CALIB, "dst");
    DQ_CHECK_HANDLE(dst ? &dst->ctx : NULL, src, DQ__H_CALIB, "src");
    if (!dst || !src || dst == src)
        return DQ_FAIL(dst ? &dst->ctx : NULL, DQ_ERR_INVALID_ARG, "%s",
                       !dst ? "dst is NULL" : !src ? "src is NULL" : "dst and src are the same");
    if (dst->cols != src->cols)
        return DQ_FAIL(&dst->ctx, DQ_ERR_SHAPE, "src cols %lld != dst cols %lld",
                       (long long)src->cols, (long long)dst->cols);
    if (dst->mode != src->mode || dst->sample_tokens != src->sample_tokens)
        return DQ_FAIL(&dst->ctx, DQ_ERR_INVALID_ARG, "src sample_mode %d, sample_tokens %lld "
                       "!= dst sample_mode %d, sample_tokens %lld", (int)src->mode,
                       (long long)src->sample_tokens, (int)dst->mode,
                       (long long)dst->sample_tokens);
    if (src->tokens > INT64_MAX - dst->tokens)
        return DQ_FAIL(&dst->ctx, DQ_ERR_OVERFLOW, "token count %lld + %lld overflows",
                       (long long)dst->tokens, (long long)src->tokens);
    /* Sums of partial sequences would put tokens at the wrong positions. */
    if (dst->mode == DQ_CALIB_SAMPLE_SEQ_MEAN &&
        (dst->tokens % dst->sample_tokens != 0 || src->tokens % src->sample_tokens != 0))
        return DQ_FAIL(&dst->ctx, DQ_ERR_BAD_STATE, "SEQ_MEAN token counts dst %lld, src %lld "
                       "are not multiples of sample_tokens %lld", (long long)dst->tokens,
                       (long long)src->tokens, (long long)dst->sample_tokens);

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
    DQ_CHECK_HANDLE(NULL, cal, DQ__H_CALIB, "cal");
    if (!cal || !tokens)
        return DQ_FAIL(cal ? &cal->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !cal ? "cal" : "tokens");
    *tokens = cal->tokens;
    return DQ_OK;
}

DQ_API dq_status dq_calib_absmax(const dq_calib *cal, float *out, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, cal, DQ__H_CALIB, "cal");
    if (!cal || !out)
        return DQ_FAIL(cal ? &cal->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !cal ? "cal" : "out");
    if (n != cal->cols)
        return DQ_FAIL(&cal->ctx, DQ_ERR_SHAPE, "n %lld != calibrator cols %lld", (long long)n,
                       (long long)cal->cols);
    if (cal->tokens == 0)
        return DQ_FAIL(&cal->ctx, DQ_ERR_BAD_STATE, "no token observed yet");
    memcpy(out, cal->absmax, (size_t)n * sizeof(float));
    return DQ_OK;
}

DQ_API dq_status dq_calib_minmax(const dq_calib *cal, float *min, float *max, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, cal, DQ__H_CALIB, "cal");
    if (!cal || (!min && !max))
        return DQ_FAIL(cal ? &cal->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !cal ? "cal" : "min and max are both");
    if (n != cal->cols)
        return DQ_FAIL(&cal->ctx, DQ_ERR_SHAPE, "n %lld != calibrator cols %lld", (long long)n,
                       (long long)cal->cols);
    if (cal->tokens == 0)
        return DQ_FAIL(&cal->ctx, DQ_ERR_BAD_STATE, "no token observed yet");
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
    DQ_CHECK_HANDLE(NULL, cal, DQ__H_CALIB, "cal");
    if (!cal || !rows)
        return DQ_FAIL(cal ? &cal->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !cal ? "cal" : "rows");
    int64_t n = sample_rows(cal);
    if (out) {
        if (ldo < cal->cols)
            return DQ_FAIL(&cal->ctx, DQ_ERR_SHAPE, "ldo %lld < cols %lld", (long long)ldo,
                           (long long)cal->cols);
        if (n == 0)
            return DQ_FAIL(&cal->ctx, DQ_ERR_BAD_STATE, "no sample: sample_mode %d, %lld tokens "
                           "observed", (int)cal->mode, (long long)cal->tokens);
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
        return DQ_FAIL(ctx, DQ_ERR_BAD_STATE, "calibrator has no sample: sample_mode %d, %lld "
                       "tokens observed", (int)cal->mode, (long long)cal->tokens);
    float *buf = dq__calloc(ctx, (size_t)n * (size_t)cal->cols, sizeof(float));
    if (!buf)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "sample of %lld x %lld", (long long)n,
                       (long long)cal->cols);
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
