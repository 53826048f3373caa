/* Portable integer-product kernels: the oracle every faster kernel must match bit for bit
 * (arithmetic in dq_gemm.h), and the preparation of packed weights for them. */
#include <math.h>
#include <string.h>

#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_pool.h"
#include "dq_qmatrix.h"

dq__wprep *dq__wprep_retain(const dq__wprep *w)
{
    /* The count is the one mutable part of prepared weights; they were allocated mutable. */
    dq__wprep *m = (dq__wprep *)(uintptr_t)w;
    if (m)
        atomic_fetch_add_explicit(&m->extra_refs, 1, memory_order_relaxed);
    return m;
}

void dq__wprep_free(dq__wprep *w)
{
    if (!w || atomic_fetch_sub_explicit(&w->extra_refs, 1, memory_order_acq_rel) > 0)
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

/* Rows whose repacking is one part of the parallel loop: whole DQ_GEMM_BLOCK row blocks, so
 * that no two parts write the same packed block. */
typedef struct repack_job {
    const dq__wprep *w;
    const dq_qmatrix *q;
    dq__wpack *wp;
    int32_t shift;
    int8_t *row_codes; /* cols bytes per part */
    int32_t *row_ints; /* 2 x groups per part: zero points, code sums */
    int64_t *max_abs_zero; /* per part */
} repack_job;

static void repack_part(void *arg, int32_t p, int32_t n)
{
    const repack_job *j = arg;
    const dq__wprep *w = j->w;
    const dq_qmatrix *q = j->q;
    const size_t groups = (size_t)q->groups_per_row;
    int8_t *row_codes = j->row_codes + (size_t)p * (size_t)q->cols;
    int32_t *zeros = j->row_ints + (size_t)p * 2 * groups, *sums = zeros + groups;
    /* A private copy of the layout: every field but the running max is shared read-only, and
     * the codes and records it points to are written only in this part's row blocks. */
    dq__wpack mine = *j->wp;
    mine.max_abs_zero = 0;
    int64_t b0, b1;
    dq__split((q->rows + DQ_GEMM_BLOCK - 1) / DQ_GEMM_BLOCK, p, n, &b0, &b1);
    const int64_t r1 = b1 * DQ_GEMM_BLOCK < q->rows ? b1 * DQ_GEMM_BLOCK : q->rows;
    for (int64_t i = b0 * DQ_GEMM_BLOCK; i < r1; i++) {
        const uint8_t *row = q->packed + (size_t)i * q->row_bytes;
        const size_t gi = (size_t)i * groups;
        for (int64_t g = 0; g < w->groups; g++) {
            int64_t j0 = g * w->group_len;
            int64_t j1 = j0 + w->group_len < q->cols ? j0 + w->group_len : q->cols;
            int32_t sum = 0;
            for (int64_t c = j0; c < j1; c++) {
                int32_t code = dq__qmatrix_code(q, row, c) - j->shift;
                row_codes[c] = (int8_t)code;
                sum += code;
            }
            /* Zero points are integer-valued floats within +-1e4 (dq__quant_params). */
            zeros[g] = q->zeros ? (int32_t)q->zeros[gi + (size_t)g] - j->shift : 0;
            sums[g] = sum;
        }
        dq__wpack_store_row(w, &mine, i, row_codes, q->scales + gi, zeros, sums);
    }
    j->max_abs_zero[p] = mine.max_abs_zero;
}

/* Codes a repacking part should hold before another thread joins in. */
#define REPACK_MIN_CODES ((int64_t)1 << 20)
static int64_t repack_min_codes = REPACK_MIN_CODES;

void dq__wprep_set_repack_min_codes(int64_t codes)
{
    repack_min_codes = codes > 0 ? codes : REPACK_MIN_CODES;
}

/* The repacked form straight from the packed matrix: one row of signed codes at a time per
 * thread, no unpacked copy of the whole matrix. */
dq_status dq__wprep_create(const dq_context *ctx, const dq_qmatrix *q, dq__wprep **out)
{
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!q)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "q is NULL");
    if (q->bits != 4 && q->bits != 8)
        return DQ_FAIL(ctx, DQ_ERR_UNSUPPORTED, "bits %d (expected 4 or 8)", (int)q->bits);
    const dq_context *c = dq__ctx(ctx);
    dq__wprep *w = dq__calloc(c, 1, sizeof *w);
    if (!w)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "prepared weights");
    dq__context_keep(&w->ctx, c);
    w->rows = q->rows;
    w->cols = q->cols;
    w->bits = q->bits;
    w->scheme = q->scheme;
    w->group_size = q->group_size;
    w->group_len = q->group_len;
    w->groups = q->groups_per_row;
    const int64_t row_blocks = (q->rows + DQ_GEMM_BLOCK - 1) / DQ_GEMM_BLOCK;
    int64_t useful = q->rows * q->cols / repack_min_codes;
    useful = useful < row_blocks ? useful : row_blocks;
    const int32_t n = dq__threads(c, useful);
    dq__wpack *wp = NULL;
    dq_status st = dq__wpack_create(w, NULL, NULL, &wp);
    /* Scratch per part: one row's codes, then per group zero point and code sum. */
    const size_t groups = (size_t)q->groups_per_row;
    int8_t *row_codes = st == DQ_OK ? dq__alloc(c, (size_t)n * (size_t)q->cols) : NULL;
    int32_t *row_ints =
        st == DQ_OK ? dq__alloc(c, (size_t)n * 2 * groups * sizeof(int32_t)) : NULL;
    int64_t *max_abs = st == DQ_OK ? dq__alloc(c, (size_t)n * sizeof(int64_t)) : NULL;
    /* dq__wpack_create logged its own failure; only the scratch rows are logged here. */
    if (st == DQ_OK && (!row_codes || !row_ints || !max_abs))
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "%d scratch rows of %lld codes for repacking", (int)n,
                     (long long)q->cols);
    if (st == DQ_OK) {
        /* ASYM codes 0..2^bits-1 are shifted into the signed byte range together with their
         * zero point, so (c - zw) is unchanged; SYM codes are already signed, zero point 0. */
        repack_job job = {w, q, wp, q->scheme == DQ_QUANT_ASYM ? 1 << (q->bits - 1) : 0,
                          row_codes, row_ints, max_abs};
        dq__parallel(c, n, repack_part, &job);
        for (int32_t p = 0; p < n; p++)
            wp->max_abs_zero = max_abs[p] > wp->max_abs_zero ? max_abs[p] : wp->max_abs_zero;
    }
    dq__free(c, row_codes);
    dq__free(c, row_ints);
    dq__free(c, max_abs);
    if (wp)
        dq__wpack_attach(w, wp);
    if (st != DQ_OK) {
        dq__wprep_free(w);
        return st;
    }
    *out = w;
    return DQ_OK;
}

void dq__wprep_unpack_row(const dq__wprep *w, int64_t r, int8_t *codes, float *scales,
                          int32_t *zeros)
{
    const dq__wpack *wp = w->kernel;
    const int64_t o = r % DQ_GEMM_BLOCK;
    const uint8_t *blk = wp->codes + (size_t)(r / DQ_GEMM_BLOCK) * (size_t)wp->block_bytes;
    const dq__gemm_meta *meta = wp->meta + (size_t)(r / DQ_GEMM_BLOCK) * (size_t)wp->groups;
    const int32_t bias = w->bits == 4 ? 8 : 0;
    for (int64_t g = 0; g < w->groups; g++) {
        const int64_t j0 = g * w->group_len;
        const int64_t j1 = j0 + w->group_len < w->cols ? j0 + w->group_len : w->cols;
        const int64_t kp0 = g * wp->group_steps * DQ_GEMM_STEP;
        for (int64_t j = j0; j < j1; j++)
            codes[j] = (int8_t)(dq__wpack_stored(wp, blk, o, kp0 + j - j0) - bias);
        if (scales)
            scales[g] = meta[g].scale[o];
        if (zeros)
            zeros[g] = (int32_t)((uint32_t)meta[g].zero[o] - (uint32_t)bias);
    }
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
        if (!isfinite(scale)) {
            /* A NaN or an overflowing range: scale +Inf, zero point 0, codes 0; the caller
             * reports DQ_ERR_NONFINITE. No code is computed from a NaN. */
            memset(dst, 0, (size_t)code_ld);
            scales[t] = scale;
            zeros[t] = 0;
            continue;
        }
        for (int64_t j = 0; j < cols; j++)
            dst[j] = (uint8_t)(dq__quant_code(spec, src[j], scale, zero) + shift);
        if (code_ld > cols)
            memset(dst + cols, 0, (size_t)(code_ld - cols));
        scales[t] = scale;
        zeros[t] = scheme == DQ_QUANT_SYM ? shift : (int32_t)zero;
    }
}

void dq__quantize_groups_ref(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                             int64_t group_len, int32_t bits, int32_t scheme, float clip,
                             uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros)
{
    const int64_t groups = (cols + group_len - 1) / group_len;
    for (int64_t t = 0; t < rows; t++) {
        const float *src = x + (size_t)t * (size_t)ldx;
        uint8_t *dst = codes + (size_t)t * (size_t)code_ld;
        for (int64_t g = 0; g < groups; g++) {
            const int64_t j0 = g * group_len;
            const int64_t len = j0 + group_len < cols ? group_len : cols - j0;
            const size_t i = (size_t)t * (size_t)groups + (size_t)g;
            dq__quantize_tokens_ref(src + j0, 1, len, len, bits, scheme, clip, dst + j0, len,
                                    scales + i, zeros + i);
        }
        if (code_ld > cols)
            memset(dst + cols, 0, (size_t)(code_ld - cols));
    }
}

void dq__gemm_w_a_ref_rows(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                           int64_t ldy, int64_t o_begin, int64_t o_end)
{
    const dq__wpack *wp = w->kernel;
    for (int64_t t = 0; t < a->rows; t++) {
        const uint8_t *u = a->codes + (size_t)t * (size_t)a->code_ld;
        /* Per token: one scale and zero point for every group; grouped: one per group. */
        const size_t ai = a->groups ? (size_t)t * (size_t)a->groups : (size_t)t;
        const size_t ag = a->groups ? 1 : 0;
        for (int64_t r = o_begin; r < o_end; r++) {
            const int64_t o = r % DQ_GEMM_BLOCK;
            const size_t b = (size_t)(r / DQ_GEMM_BLOCK);
            const uint8_t *blk = wp->codes + b * (size_t)wp->block_bytes;
            const dq__gemm_meta *meta = wp->meta + b * (size_t)wp->groups;
            float acc = bias ? bias[r] : 0.0f;
            for (int64_t g = 0; g < w->groups; g++) {
                int64_t j0 = g * w->group_len;
                int64_t j1 = j0 + w->group_len < w->cols ? j0 + w->group_len : w->cols;
                const int64_t kp0 = g * wp->group_steps * DQ_GEMM_STEP;
                /* zw plus the code bias: stored code minus it is c - zw. */
                const int32_t zw = meta[g].zero[o];
                const int32_t zx = a->zeros[ai + ag * (size_t)g];
                const float sx = a->scales[ai + ag * (size_t)g];
                /* The direct form in 64 bits: the exact value the int32 identity in
                 * dq_gemm.h produces whenever it does not overflow. */
                int64_t sum = 0;
                for (int64_t j = j0; j < j1; j++)
                    sum += (int64_t)((int32_t)u[j] - zx) *
                           (int64_t)(dq__wpack_stored(wp, blk, o, kp0 + j - j0) - zw);
                const float s = sx * meta[g].scale[o];
                acc += s * (float)sum;
            }
            y[(size_t)t * (size_t)ldy + (size_t)r] = acc;
        }
    }
}

void dq__gemm_w_a_ref(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                      int64_t ldy)
{
    dq__gemm_w_a_ref_rows(w, a, bias, y, ldy, 0, w->rows);
}

void dq__gemm_w_f32_ref_rows(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                             const float *bias, float *y, int64_t ldy, int64_t o_begin,
                             int64_t o_end)
{
    const dq__wpack *wp = w->kernel;
    for (int64_t t = 0; t < rows; t++) {
        const float *xt = x + (size_t)t * (size_t)ldx;
        for (int64_t r = o_begin; r < o_end; r++) {
            const int64_t o = r % DQ_GEMM_BLOCK;
            const size_t b = (size_t)(r / DQ_GEMM_BLOCK);
            const uint8_t *blk = wp->codes + b * (size_t)wp->block_bytes;
            const dq__gemm_meta *meta = wp->meta + b * (size_t)wp->groups;
            float acc = bias ? bias[r] : 0.0f;
            for (int64_t g = 0; g < w->groups; g++) {
                int64_t j0 = g * w->group_len;
                int64_t j1 = j0 + w->group_len < w->cols ? j0 + w->group_len : w->cols;
                const int64_t kp0 = g * wp->group_steps * DQ_GEMM_STEP;
                const int32_t zw = meta[g].zero[o];
                double sum = 0.0;
                for (int64_t j = j0; j < j1; j++)
                    sum += (double)xt[j] * (double)(dq__wpack_stored(wp, blk, o, kp0 + j - j0) - zw);
                acc += meta[g].scale[o] * (float)sum;
            }
            y[(size_t)t * (size_t)ldy + (size_t)r] = acc;
        }
    }
}

void dq__gemm_w_f32_ref(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                        const float *bias, float *y, int64_t ldy)
{
    dq__gemm_w_f32_ref_rows(w, x, rows, ldx, bias, y, ldy, 0, w->rows);
}
