/* Packed quantized matrices: per-row or per-group codes with scales and zero points. */
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_internal.h"
#include "dq_qmatrix.h"

/* The first released layout ends after clip_ratio. */
#define QUANT_PARAMS_MIN_SIZE (offsetof(dq_quant_params, clip_ratio) + sizeof(float))

DQ_API dq_status dq_quant_params_init(dq_quant_params *p, size_t struct_size)
{
    const dq_quant_params defaults = {
        .struct_size = sizeof defaults,
        .bits = 4,
        .scheme = DQ_QUANT_ASYM,
        .group_size = 0,
        .clip_ratio = 1.0f,
    };
    return dq__params_init(p, struct_size, QUANT_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static bool valid_clip(float c)
{
    return c > 0.0f && c <= 1.0f; /* false for NaN too */
}

dq_status dq__quant_params_read(const dq_context *ctx, const char *func,
                                const dq_quant_params *user, dq_quant_params *p)
{
    dq_quant_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, func, "params", p, sizeof *p, QUANT_PARAMS_MIN_SIZE,
                                      user);
    if (st != DQ_OK)
        return st;
    if (p->flags != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->flags 0x%x, expected 0",
                        (unsigned)p->flags);
    if (p->bits != 4 && p->bits != 8)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->bits %d, expected 4 or 8",
                        (int)p->bits);
    if (p->scheme != DQ_QUANT_ASYM && p->scheme != DQ_QUANT_SYM)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->scheme %d, expected DQ_QUANT_ASYM or DQ_QUANT_SYM",
                        (int)p->scheme);
    if (p->group_size < 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->group_size %d, expected >= 0",
                        (int)p->group_size);
    if (!valid_clip(p->clip_ratio))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->clip_ratio %g, expected (0, 1]",
                        (double)p->clip_ratio);
    return DQ_OK;
}

static size_t packed_row_bytes(int32_t bits, int64_t cols)
{
    return bits == 4 ? dq_int4_packed_size(cols) : (size_t)cols;
}

static int32_t load_code(const uint8_t *row, int32_t bits, int32_t scheme, int64_t j)
{
    int32_t v = bits == 8 ? row[j] : (row[j / 2] >> (4 * (j & 1))) & 0xF;
    int32_t half = 1 << (bits - 1);
    return (scheme == DQ_QUANT_SYM && v >= half) ? v - 2 * half : v;
}

static bool clips_valid(const float *c, size_t n)
{
    if (!c)
        return true;
    for (size_t i = 0; i < n; i++)
        if (!valid_clip(c[i]))
            return false;
    return true;
}

/* n_clip: the length of clip_hi and clip_lo, rows * groups (one factor per group) or rows (one
 * per row, for each of its groups); -1 = rows * groups, unchecked (dq_qmatrix_pack). */
static dq_status pack(const char *func, dq_context *ctx, const dq_quant_params *params,
                      const float *w, int64_t rows, int64_t cols, int64_t ldw,
                      const float *clip_hi, const float *clip_lo, int64_t n_clip,
                      dq_qmatrix **out)
{
    if (!out)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "out is NULL");
    *out = NULL;
    dq_quant_params p;
    dq_status st = dq__quant_params_read(ctx, func, params, &p);
    if (st != DQ_OK)
        return st;
    if ((st = dq__check_matrix_at(ctx, func, "w", w, rows, cols, ldw)) != DQ_OK)
        return st;
    int64_t group_len = (p.group_size == 0 || p.group_size > cols) ? cols : p.group_size;
    int64_t groups = cols / group_len + (cols % group_len != 0);
    size_t row_bytes = packed_row_bytes(p.bits, cols), nbytes, ngroups, gbytes;
    if (!dq__mul_size((size_t)rows, row_bytes, &nbytes) ||
        !dq__mul_size((size_t)rows, (size_t)groups, &ngroups) ||
        !dq__mul_size(ngroups, sizeof(float), &gbytes))
        return dq__fail(ctx, DQ_ERR_OVERFLOW, func,
                        "w: %lld rows x %lld groups of codes and scales", (long long)rows,
                        (long long)groups);
    const bool per_row = n_clip >= 0 && n_clip != (int64_t)ngroups && n_clip == rows;
    if ((clip_hi || clip_lo) && n_clip >= 0 && n_clip != (int64_t)ngroups && n_clip != rows)
        return dq__fail(ctx, DQ_ERR_SHAPE, func,
                        "n_clip %lld: expected %lld (rows * groups_per_row) or %lld (rows)",
                        (long long)n_clip, (long long)ngroups, (long long)rows);
    const size_t nclip = per_row ? (size_t)rows : ngroups;
    if (!clips_valid(clip_hi, nclip) || !clips_valid(clip_lo, nclip))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "%s: each factor must be in (0, 1]",
                        clips_valid(clip_hi, nclip) ? "clip_lo" : "clip_hi");
    if (!dq__all_finite(w, rows, cols, ldw))
        return dq__fail(ctx, DQ_ERR_NONFINITE, func, "w (%lld x %lld) holds NaN or Inf",
                        (long long)rows, (long long)cols);

    const dq_context *c = dq__ctx(ctx);
    dq_qmatrix *q = dq__qmatrix_new(c);
    if (!q)
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "qmatrix object");
    q->packed = dq__calloc(c, nbytes, 1);
    q->scales = dq__alloc(c, gbytes);
    q->zeros = p.scheme == DQ_QUANT_ASYM ? dq__alloc(c, gbytes) : NULL;
    if (!q->packed || !q->scales || (p.scheme == DQ_QUANT_ASYM && !q->zeros)) {
        dq_qmatrix_free(q);
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "%zu bytes of codes, %zu of scales (%lld x %lld)",
                        nbytes, gbytes, (long long)rows, (long long)cols);
    }
    q->rows = rows;
    q->cols = cols;
    q->bits = p.bits;
    q->scheme = p.scheme;
    q->group_size = p.group_size;
    q->group_len = group_len;
    q->groups_per_row = groups;
    q->row_bytes = row_bytes;
    q->nbytes = nbytes;
    q->plan_fingerprint = p.plan_fingerprint;

    const dq__qspec spec = {p.bits, p.scheme};
    for (int64_t i = 0; i < rows; i++) {
        const float *src = w + (size_t)i * (size_t)ldw;
        uint8_t *dst = q->packed + (size_t)i * row_bytes;
        for (int64_t g = 0; g < groups; g++) {
            size_t gi = (size_t)i * (size_t)groups + (size_t)g;
            int64_t j0 = g * group_len;
            int64_t n = cols - j0 < group_len ? cols - j0 : group_len;
            const size_t ci = per_row ? (size_t)i : gi;
            float hi = clip_hi ? clip_hi[ci] : p.clip_ratio;
            float lo = clip_lo ? clip_lo[ci] : p.clip_ratio;
            float scale, zero;
            dq__quant_params(spec, src + j0, n, hi, lo, &scale, &zero);
            if (!isfinite(scale)) {
                dq_qmatrix_free(q);
                return dq__fail(ctx, DQ_ERR_NONFINITE, func,
                                "w row %lld group %lld: range max - min overflows float",
                                (long long)i, (long long)g);
            }
            q->scales[gi] = scale;
            if (q->zeros)
                q->zeros[gi] = zero;
            for (int64_t j = j0; j < j0 + n; j++)
                dq__qmatrix_store_code(dst, p.bits, j, dq__quant_code(spec, src[j], scale, zero));
        }
    }
    *out = q;
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_pack(dq_context *ctx, const dq_quant_params *params, const float *w,
                                 int64_t rows, int64_t cols, int64_t ldw, const float *clip_hi,
                                 const float *clip_lo, dq_qmatrix **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    return pack(__func__, ctx, params, w, rows, cols, ldw, clip_hi, clip_lo, -1, out);
}

DQ_API dq_status dq_qmatrix_pack_clipped(dq_context *ctx, const dq_quant_params *params,
                                         const float *w, int64_t rows, int64_t cols, int64_t ldw,
                                         const float *clip_hi, const float *clip_lo,
                                         int64_t n_clip, dq_qmatrix **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (out)
        *out = NULL;
    if (n_clip < 0)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "n_clip %lld < 0", (long long)n_clip);
    if (!clip_hi && !clip_lo && n_clip != 0)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "n_clip %lld with no clip arrays (expected 0)",
                       (long long)n_clip);
    return pack(__func__, ctx, params, w, rows, cols, ldw, clip_hi, clip_lo, n_clip, out);
}

dq_qmatrix *dq__qmatrix_new(const dq_context *ctx)
{
    dq_qmatrix *q = dq__calloc(ctx, 1, sizeof *q);
    if (q) {
        q->tag = DQ__TAG_QMATRIX;
        dq__context_keep(&q->ctx, ctx);
    }
    return q;
}

DQ_API void dq_qmatrix_free(dq_qmatrix *q)
{
    if (!q)
        return;
    DQ_CHECK_HANDLE_FREE(q, DQ__H_QMATRIX, "q");
    DQ_HANDLE_RETIRE(q, DQ__H_QMATRIX);
    dq_context c = q->ctx;
    dq__free(&c, q->packed);
    dq__free(&c, q->scales);
    dq__free(&c, q->zeros);
    dq__free(&c, q);
    dq__context_drop(&c);
}

DQ_API dq_status dq_qmatrix_layout(const dq_qmatrix *q, int64_t *rows, int64_t *cols,
                                   int32_t *bits, int32_t *scheme, int32_t *group_size,
                                   int64_t *groups_per_row, size_t *row_bytes)
{
    DQ_CHECK_HANDLE(NULL, q, DQ__H_QMATRIX, "q");
    if (!q)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "q is NULL");
    if (rows)
        *rows = q->rows;
    if (cols)
        *cols = q->cols;
    if (bits)
        *bits = q->bits;
    if (scheme)
        *scheme = q->scheme;
    if (group_size)
        *group_size = q->group_size;
    if (groups_per_row)
        *groups_per_row = q->groups_per_row;
    if (row_bytes)
        *row_bytes = q->row_bytes;
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_view(const dq_qmatrix *q, const uint8_t **packed, size_t *nbytes,
                                 const float **scales, const float **zeros)
{
    DQ_CHECK_HANDLE(NULL, q, DQ__H_QMATRIX, "q");
    if (!q)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "q is NULL");
    if (packed)
        *packed = q->packed;
    if (nbytes)
        *nbytes = q->nbytes;
    if (scales)
        *scales = q->scales;
    if (zeros)
        *zeros = q->zeros;
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_unpack_codes(const dq_qmatrix *q, int32_t *codes, int64_t ldc)
{
    DQ_CHECK_HANDLE(NULL, q, DQ__H_QMATRIX, "q");
    if (!q || !codes)
        return DQ_FAIL(q ? &q->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !q ? "q" : "codes");
    if (ldc < q->cols)
        return DQ_FAIL(&q->ctx, DQ_ERR_SHAPE, "ldc %lld < cols %lld", (long long)ldc,
                       (long long)q->cols);
    for (int64_t i = 0; i < q->rows; i++) {
        const uint8_t *row = q->packed + (size_t)i * q->row_bytes;
        for (int64_t j = 0; j < q->cols; j++)
            codes[(size_t)i * (size_t)ldc + (size_t)j] = load_code(row, q->bits, q->scheme, j);
    }
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_dequantize(const dq_qmatrix *q, float *out, int64_t ldo)
{
    DQ_CHECK_HANDLE(NULL, q, DQ__H_QMATRIX, "q");
    if (!q || !out)
        return DQ_FAIL(q ? &q->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !q ? "q" : "out");
    if (ldo < q->cols)
        return DQ_FAIL(&q->ctx, DQ_ERR_SHAPE, "ldo %lld < cols %lld", (long long)ldo,
                       (long long)q->cols);
    const dq__qspec spec = {q->bits, q->scheme};
    for (int64_t i = 0; i < q->rows; i++) {
        const uint8_t *row = q->packed + (size_t)i * q->row_bytes;
        for (int64_t j = 0; j < q->cols; j++) {
            size_t gi = (size_t)i * (size_t)q->groups_per_row + (size_t)(j / q->group_len);
            float zero = q->zeros ? q->zeros[gi] : 0.0f;
            out[(size_t)i * (size_t)ldo + (size_t)j] =
                dq__dequant(spec, load_code(row, q->bits, q->scheme, j), q->scales[gi], zero);
        }
    }
    return DQ_OK;
}
