/* Private interface of the integer matrix products behind dq_linear.
 *
 * Arithmetic shared by every kernel. A token row is quantized to unsigned codes u (one byte
 * each) with a scale sx and an integer zero point zx: x ~ (u - zx) * sx. SYM activations are
 * stored the same way, shifted by 2^(bits-1) (zx = 2^(bits-1)). A weight group is held as
 * signed codes c with a scale sw and an integer zero point zw: w ~ (c - zw) * sw (ASYM codes
 * are shifted by -2^(bits-1) and so is their zero point; SYM has zw = 0). Then, per group of n
 * elements,
 *     sum (u - zx)(c - zw) = sum u*c - zw * sum u - zx * sum c + n * zx * zw
 * is exact in int32 (|u*c| <= 255*128 per term: groups up to 65536 elements at 8 bits, far more
 * at 4 bits), and y = sx * sum_g sw_g * (that). This holds while the zero points stay near the
 * code range, i.e. whenever a token row and a weight group each span 0 (or come close). A row
 * or group of one sign with a range tiny against its values gets a zero point far outside
 * (up to +-1e4, dq__quant_params' clamp); then the true sum may exceed int32. The portable
 * kernel sums in 64 bits, so it stays exact and equals every int32 kernel wherever the true
 * sum fits (int32 kernels wrap modulo 2^32 beyond that).
 * Unsigned-by-signed byte products are what AVX-512 VNNI (vpdpbusd), AMX-INT8 (tdpbusd) and
 * AVX2 (vpmaddubsw) multiply, so every kernel reads the same operands.
 *
 * The portable kernels (dq_gemm_ref.c) are the oracle every SIMD variant is tested against:
 * results must be bit-identical, because the integer sums are exact and the float epilogue
 * below is fixed.
 *
 * Float epilogue, in this order for every kernel: acc_g is the exact int32 group sum;
 *     y = bias + sum over g in increasing order of (sx * sw_g) * (float)acc_g
 * with the product sx * sw_g rounded to float first, and one float addition per group.
 */
#ifndef DQ_GEMM_H
#define DQ_GEMM_H

#include <stdatomic.h>
#include <stdint.h>

#include "dq_internal.h"

/* Weights prepared for the integer product; built once per layer, immutable afterwards.
 * The kernels, the portable ones included, read only the repacked form behind `kernel`
 * (dq__wpack, dq_gemm_simd.h): 4-bit codes take half a byte per weight there, and nothing else
 * is kept. codes .. code_sums are an optional unpacked source for hand-built weights (tests,
 * benchmarks), the input of dq__gemm_prepare: rows x cols signed codes, one int8 per element,
 * row stride code_ld (a multiple of 64, padding 0), scales, zero points in the shifted code
 * space and code sums per group. Weights made by dq__wprep_create leave them NULL. */
typedef struct dq__wprep {
    dq_context ctx;
    int64_t rows, cols;
    int32_t bits;         /* 4 or 8 */
    int32_t scheme;       /* DQ_QUANT_* of the packed matrix it came from (files keep it) */
    int32_t group_size;   /* as requested: 0 = whole row */
    int64_t group_len;    /* elements per group (cols when whole rows) */
    int64_t groups;       /* groups per row */
    int64_t code_ld;
    int8_t *codes;        /* rows * code_ld, or NULL */
    float *scales;        /* rows * groups, or NULL */
    int32_t *zeros;       /* rows * groups, integer zero points in the shifted code space */
    int32_t *code_sums;   /* rows * groups: sum of c over each group */
    void *kernel;         /* the repacked form (freed by dq__wprep_free) */
    void (*kernel_free)(const dq_context *ctx, void *kernel);
    atomic_int extra_refs; /* holders besides the first (layers sharing these weights) */
} dq__wprep;

/* Quantized activations: rows tokens of cols unsigned codes (code_ld >= cols), with a scale
 * and an integer zero point per token (groups 0), or per token and group: groups > 0 must equal
 * the weights' groups (same group length, the last one possibly shorter), and scales, zeros
 * hold rows x groups entries, token-major. Then sx and zx above are the group's own, so
 *     y = bias + sum over g of (sx_g * sw_g) * (float)acc_g
 * with the same order and roundings as per token. */
typedef struct dq__aq {
    int64_t rows, cols, code_ld;
    const uint8_t *codes;
    const float *scales;
    const int32_t *zeros;
    int64_t groups; /* 0: per token */
} dq__aq;

/* Build the prepared form of a packed matrix (any bits / scheme / group size it supports). */
dq_status dq__wprep_create(const dq_context *ctx, const dq_qmatrix *q, dq__wprep **out);
/* Codes each thread's part of a repacking must hold (default 1 Mi; codes <= 0 restores it), so
 * tests can split small matrices. Not thread-safe: process-wide, set while nothing repacks. */
void dq__wprep_set_repack_min_codes(int64_t codes);
/* One more holder of w (immutable, so layers may share it): each dq__wprep_free drops one,
 * the last frees it. Returns w. */
dq__wprep *dq__wprep_retain(const dq__wprep *w);
void dq__wprep_free(dq__wprep *w);

/* Per-token quantization, reference-exact (DESIGN.md 4.7: true division, round half to even):
 * x rows x cols (ldx) -> codes (code_ld), scales, zeros as in dq__aq. bits 4 or 8, scheme
 * DQ_QUANT_ASYM or DQ_QUANT_SYM, clip in (0, 1] on each token's min and max. */
void dq__quantize_tokens_ref(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                             int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                             int64_t code_ld, float *scales, int32_t *zeros);

/* Per-group quantization: each token's groups of group_len elements (the last one shorter when
 * group_len does not divide cols) quantized as dq__quantize_tokens_ref quantizes a token, into
 * scales and zeros of rows x ceil(cols / group_len) entries, token-major. */
void dq__quantize_groups_ref(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                             int64_t group_len, int32_t bits, int32_t scheme, float clip,
                             uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros);

/* y (a->rows x w->rows, ldy) = dequantized product, plus bias (w->rows floats) when not NULL.
 * The portable oracle (reads the repacked form, which w must have). */
void dq__gemm_w_a_ref(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                      int64_t ldy);

/* Weight-only product: y = x * dequant(W)^T + bias, x float rows x cols (ldx). Portable. */
void dq__gemm_w_f32_ref(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                        const float *bias, float *y, int64_t ldy);

/* The same for outputs [o_begin, o_end) only (columns of y, entries of bias). */
void dq__gemm_w_a_ref_rows(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                           int64_t ldy, int64_t o_begin, int64_t o_end);
void dq__gemm_w_f32_ref_rows(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                             const float *bias, float *y, int64_t ldy, int64_t o_begin,
                             int64_t o_end);

/* Decodes output row r of the repacked form: its cols signed codes (shifted space) into codes,
 * and per group the scale and zero point zw. The inverse of dq__wpack_store_row. */
void dq__wprep_unpack_row(const dq__wprep *w, int64_t r, int8_t *codes, float *scales,
                          int32_t *zeros);

/* Dispatched entry points: the fastest kernel this CPU supports, on ctx's threads (dq_pool.h;
 * NULL: the calling thread). Same results as the _ref versions (bit-identical for the integer path;
 * the weight-only product within float rounding, see dq_gemm_simd.h). */
void dq__quantize_tokens(const float *x, int64_t rows, int64_t cols, int64_t ldx, int32_t bits,
                         int32_t scheme, float clip, uint8_t *codes, int64_t code_ld,
                         float *scales, int32_t *zeros, const dq_context *ctx);
void dq__quantize_groups(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                         int64_t group_len, int32_t bits, int32_t scheme, float clip,
                         uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros,
                         const dq_context *ctx);
dq_status dq__gemm_w_a(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                       int64_t ldy, const dq_context *ctx);
void dq__gemm_w_f32(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                    const float *bias, float *y, int64_t ldy, const dq_context *ctx);

/* The integer product without allocating: work (DQ_ALIGN-aligned; NULL when the size is 0)
 * holds dq__gemm_w_a_workspace(w, rows) bytes for a->rows <= rows tokens, which grows with rows
 * (false: it overflows size_t). dq__gemm_w_a above allocates it once per call (DQ_ERR_NOMEM,
 * y untouched, when it cannot). */
bool dq__gemm_w_a_workspace(const dq__wprep *w, int64_t rows, size_t *bytes);
void dq__gemm_w_a_work(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                       int64_t ldy, const dq_context *ctx, void *work);

#endif
