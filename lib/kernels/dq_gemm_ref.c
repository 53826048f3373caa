/* Portable integer-product kernels: the oracle every faster kernel must match bit for bit
 * (arithmetic in dq_gemm.h), and the preparation of packed weights for them. */
#include <string.h>

#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_qmatrix.h"

/* Code rows start on 64-byte boundaries: one AVX-512 load, no straddled cache lines. */
#define CODE_ROW_ALIGN 64

void dq__wprep_free(dq__wprep *w)
{
    if (!w)
        return;
    dq_context c = w->ctx;
    if (w->kernel && w->kernel_free)
        w->kernel_free(&c, w->kernel);
    dq__free(&c, w->codes);
    dq__free(&c, w->scales);
    dq__free(&c, w->zeros);
    dq__free(&c, w->code_sums);
    dq__free(&c, w);
    dq__context_drop(&c);
}

dq_status dq__wprep_create(const dq_context *ctx, const dq_qmatrix *q, dq__wprep **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    if (!q)
        return DQ_ERR_INVALID_ARG;
    if (q->bits != 4 && q->bits != 8)
        return DQ_ERR_UNSUPPORTED;
    const dq_context *c = dq__ctx(ctx);
    int64_t code_ld = (q->cols + CODE_ROW_ALIGN - 1) / CODE_ROW_ALIGN * CODE_ROW_ALIGN;
    size_t ncodes, ngroups, gbytes;
    if (code_ld < q->cols || !dq__mul_size((size_t)q->rows, (size_t)code_ld, &ncodes) ||
        !dq__mul_size((size_t)q->rows, (size_t)q->groups_per_row, &ngroups) ||
        !dq__mul_size(ngroups, sizeof(float), &gbytes))
        return DQ_ERR_OVERFLOW;

    dq__wprep *w = dq__calloc(c, 1, sizeof *w);
    if (!w)
        return DQ_ERR_NOMEM;
    dq__context_keep(&w->ctx, c);
    w->codes = dq__calloc(c, ncodes, 1);
    w->scales = dq__alloc(c, gbytes);
    w->zeros = dq__alloc(c, gbytes);
    w->code_sums = dq__alloc(c, gbytes);
    if (!w->codes || !w->scales || !w->zeros || !w->code_sums) {
        dq__wprep_free(w);
        return DQ_ERR_NOMEM;
    }
    w->rows = q->rows;
    w->cols = q->cols;
    w->bits = q->bits;
    w->group_len = q->group_len;
    w->groups = q->groups_per_row;
    w->code_ld = code_ld;

    /* ASYM codes 0..2^bits-1 are shifted into the signed byte range together with their zero
     * point, so (c - zw) is unchanged; SYM codes are already signed with zero point 0. */
    const int32_t shift = q->scheme == DQ_QUANT_ASYM ? 1 << (q->bits - 1) : 0;
    for (int64_t i = 0; i < q->rows; i++) {
        const uint8_t *row = q->packed + (size_t)i * q->row_bytes;
        int8_t *dst = w->codes + (size_t)i * (size_t)code_ld;
        for (int64_t g = 0; g < w->groups; g++) {
            size_t gi = (size_t)i * (size_t)w->groups + (size_t)g;
            int64_t j0 = g * w->group_len;
            int64_t j1 = j0 + w->group_len < q->cols ? j0 + w->group_len : q->cols;
            int32_t sum = 0;
            for (int64_t j = j0; j < j1; j++) {
                int32_t code = dq__qmatrix_code(q, row, j) - shift;
                dst[j] = (int8_t)code;
                sum += code;
            }
            w->scales[gi] = q->scales[gi];
            /* Zero points are integer-valued floats within +-1e4 (dq__quant_params). */
            w->zeros[gi] = q->zeros ? (int32_t)q->zeros[gi] - shift : 0;
            w->code_sums[gi] = sum;
        }
    }
    dq__gemm_prepare(w);
    *out = w;
    return DQ_OK;
}

void dq__quantize_tokens_ref(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                             int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                             int64_t code_ld, float *scales, int32_t *zeros)
{
    const dq__qspec spec = {bits, scheme};
    /* SYM codes -2^(bits-1).. are stored shifted into the unsigned byte range. */
    const int32_t shift = scheme == DQ_QUANT_SYM ? 1 << (bits - 1) : 0;
    for (int64_t t = 0; t < rows; t++) {
        const float *src = x + (size_t)t * (size_t)ldx;
        uint8_t *dst = codes + (size_t)t * (size_t)code_ld;
        float scale, zero;
        dq__quant_params(spec, src, cols, clip, clip, &scale, &zero);
        for (int64_t j = 0; j < cols; j++)
            dst[j] = (uint8_t)(dq__quant_code(spec, src[j], scale, zero) + shift);
        if (code_ld > cols)
            memset(dst + cols, 0, (size_t)(code_ld - cols));
        scales[t] = scale;
        zeros[t] = scheme == DQ_QUANT_SYM ? shift : (int32_t)zero;
    }
}

void dq__gemm_w_a_ref(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                      int64_t ldy)
{
    for (int64_t t = 0; t < a->rows; t++) {
        const uint8_t *u = a->codes + (size_t)t * (size_t)a->code_ld;
        const int32_t zx = a->zeros[t];
        const float sx = a->scales[t];
        for (int64_t o = 0; o < w->rows; o++) {
            const int8_t *c = w->codes + (size_t)o * (size_t)w->code_ld;
            float acc = bias ? bias[o] : 0.0f;
            for (int64_t g = 0; g < w->groups; g++) {
                size_t gi = (size_t)o * (size_t)w->groups + (size_t)g;
                int64_t j0 = g * w->group_len;
                int64_t j1 = j0 + w->group_len < w->cols ? j0 + w->group_len : w->cols;
                const int32_t zw = w->zeros[gi];
                /* The direct form in 64 bits: the exact value the int32 identity in
                 * dq_gemm.h produces whenever it does not overflow. */
                int64_t sum = 0;
                for (int64_t j = j0; j < j1; j++)
                    sum += (int64_t)((int32_t)u[j] - zx) * (int64_t)((int32_t)c[j] - zw);
                const float s = sx * w->scales[gi];
                acc += s * (float)sum;
            }
            y[(size_t)t * (size_t)ldy + (size_t)o] = acc;
        }
    }
}

void dq__gemm_w_f32_ref(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                        const float *bias, float *y, int64_t ldy)
{
    for (int64_t t = 0; t < rows; t++) {
        const float *xt = x + (size_t)t * (size_t)ldx;
        for (int64_t o = 0; o < w->rows; o++) {
            const int8_t *c = w->codes + (size_t)o * (size_t)w->code_ld;
            float acc = bias ? bias[o] : 0.0f;
            for (int64_t g = 0; g < w->groups; g++) {
                size_t gi = (size_t)o * (size_t)w->groups + (size_t)g;
                int64_t j0 = g * w->group_len;
                int64_t j1 = j0 + w->group_len < w->cols ? j0 + w->group_len : w->cols;
                const int32_t zw = w->zeros[gi];
                double sum = 0.0;
                for (int64_t j = j0; j < j1; j++)
                    sum += (double)xt[j] * (double)((int32_t)c[j] - zw);
                acc += w->scales[gi] * (float)sum;
            }
            y[(size_t)t * (size_t)ldy + (size_t)o] = acc;
        }
    }
}
