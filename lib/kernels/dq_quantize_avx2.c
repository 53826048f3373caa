/* AVX2 per-token quantization, bit-identical to dq__quantize_tokens_ref: the same min and
 * max (order does not matter for them), the same scalar scale and zero point, then per element
 * the same IEEE operations: a true division, rounding half to even, the float zero-point add
 * and clamp. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "dq_gemm_simd.h"
#include "dq_quant_rule.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC target("avx2")
#endif
#include <immintrin.h>

static void quantize_row(const float *x, int64_t cols, int32_t bits, int32_t scheme, float clip,
                         uint8_t *codes, float *scale_out, int32_t *zero_out)
{
    __m256 vmin = _mm256_set1_ps(x[0]), vmax = vmin, vnan = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        vmin = _mm256_min_ps(vmin, v);
        vmax = _mm256_max_ps(vmax, v);
        vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    bool nan = x[0] != x[0] || _mm256_movemask_ps(vnan) != 0;
    float lanes_min[8], lanes_max[8];
    _mm256_storeu_ps(lanes_min, vmin);
    _mm256_storeu_ps(lanes_max, vmax);
    float mn = lanes_min[0], mx = lanes_max[0];
    for (int l = 1; l < 8; l++) {
        mn = lanes_min[l] < mn ? lanes_min[l] : mn;
        mx = lanes_max[l] > mx ? lanes_max[l] : mx;
    }
    for (; j < cols; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
        nan |= x[j] != x[j];
    }

    float scale, zero, lo, hi, offset;
    if (!dq__qr_params(bits, scheme, nan ? NAN : mn, mx, clip, clip, &scale, &zero)) {
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
    const int32_t shift = scheme == DQ_QUANT_ASYM ? 0 : 1 << (bits - 1);
    const __m256i vshift = _mm256_set1_epi32(shift);
    const __m256 vs = _mm256_set1_ps(scale), voff = _mm256_set1_ps(offset);
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1);
    for (j = 0; j + 8 <= cols; j += 8) {
        __m256 q = _mm256_div_ps(_mm256_loadu_ps(x + j), vs);
        q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (scheme == DQ_QUANT_ASYM)
            q = _mm256_add_ps(q, voff);
        q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
        /* Low byte of each int32 lane: 4 bytes per 128-bit half. */
        const __m256i c = _mm256_shuffle_epi8(
            _mm256_add_epi32(_mm256_cvttps_epi32(q), vshift), pick);
        const uint32_t lo4 = (uint32_t)_mm256_extract_epi32(c, 0);
        const uint32_t hi4 = (uint32_t)_mm256_extract_epi32(c, 4);
        memcpy(codes + j, &lo4, 4);
        memcpy(codes + j + 4, &hi4, 4);
    }
    for (; j < cols; j++) {
        float q = rintf(x[j] / scale);
        if (scheme == DQ_QUANT_ASYM)
            q = q + offset;
        codes[j] = (uint8_t)((int32_t)dq__qr_clamp(q, lo, hi) + shift);
    }
}

void dq__quantize_tokens_avx2(const float *x, int64_t rows, int64_t cols, int64_t ldx,
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
void dq__quantize_tokens_avx2(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                                int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                                int64_t code_ld, float *scales, int32_t *zeros)
{
    (void)x, (void)rows, (void)cols, (void)ldx, (void)bits, (void)scheme, (void)clip;
    (void)codes, (void)code_ld, (void)scales, (void)zeros;
}

#endif
