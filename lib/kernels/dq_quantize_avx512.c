/* AVX-512 per-token quantization, bit-identical to dq__quantize_tokens_ref: the same min and
 * max (order does not matter for them), the same scalar scale and zero point, then per element
 * the same IEEE operations: a true division, rounding half to even, the float zero-point add
 * and clamp. */
#include <math.h>
#include <string.h>

#include "dq_gemm_simd.h"
#include "dq_quant_rule.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl")
#endif
#include <immintrin.h>

static void quantize_row(const float *x, int64_t cols, int32_t bits, int32_t scheme, float clip,
                         uint8_t *codes, float *scale_out, int32_t *zero_out)
{
    __m512 vmin = _mm512_set1_ps(x[0]), vmax = vmin;
    __mmask16 nan = 0;
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        const __m512 v = _mm512_loadu_ps(x + j);
        vmin = _mm512_min_ps(vmin, v);
        vmax = _mm512_max_ps(vmax, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    if (j < cols) {
        const __mmask16 m = (__mmask16)((1u << (cols - j)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        vmin = _mm512_mask_min_ps(vmin, m, vmin, v);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, v);
        nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
    }
    float mn = _mm512_reduce_min_ps(vmin), mx = _mm512_reduce_max_ps(vmax);

    float scale, zero, lo, hi, offset;
    if (!dq__qr_params(bits, scheme, nan || x[0] != x[0] ? NAN : mn, mx, clip, clip, &scale,
                       &zero)) {
        /* Not finite (the caller reports it): scale +Inf, zero point 0, codes 0. */
        *scale_out = scale;
        *zero_out = 0;
        memset(codes, 0, (size_t)cols);
        return;
    }
    if (scheme == DQ_QUANT_ASYM) {
        lo = 0.0f;
        hi = dq__qr_top(bits, scheme);
        offset = zero;
    } else {
        const float top = dq__qr_top(bits, scheme);
        zero = (float)(1 << (bits - 1));
        lo = -top - 1.0f;
        hi = top;
        offset = 0.0f;
    }
    *scale_out = scale;
    *zero_out = (int32_t)zero;

    /* SYM codes are stored shifted by 2^(bits-1), added after the clamp as an integer. */
    const __m512i shift = _mm512_set1_epi32(scheme == DQ_QUANT_ASYM ? 0 : 1 << (bits - 1));
    const __m512 vs = _mm512_set1_ps(scale), voff = _mm512_set1_ps(offset);
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (j = 0; j < cols; j += 16) {
        const __mmask16 m =
            cols - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - j)) - 1u);
        __m512 q = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + j), vs);
        q = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (scheme == DQ_QUANT_ASYM)
            q = _mm512_add_ps(q, voff);
        q = _mm512_min_ps(_mm512_max_ps(q, vlo), vhi);
        const __m512i c = _mm512_add_epi32(_mm512_cvttps_epi32(q), shift);
        _mm_mask_storeu_epi8(codes + j, m, _mm512_cvtepi32_epi8(c));
    }
}

void dq__quantize_tokens_avx512(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                                int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                                int64_t code_ld, float *scales, int32_t *zeros)
{
    for (int64_t i = 0; i < rows; i++) {
        uint8_t *row = codes + (size_t)i * (size_t)code_ld;
        quantize_row(x + (size_t)i * (size_t)ldx, cols, bits, scheme, clip, row, scales + i,
                     zeros + i);
        /* Like the reference: padding codes are 0. */
        if (code_ld > cols)
            memset(row + cols, 0, (size_t)(code_ld - cols));
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__quantize_tokens_avx512(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                                int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                                int64_t code_ld, float *scales, int32_t *zeros)
{
    (void)x, (void)rows, (void)cols, (void)ldx, (void)bits, (void)scheme, (void)clip;
    (void)codes, (void)code_ld, (void)scales, (void)zeros;
}

#endif
