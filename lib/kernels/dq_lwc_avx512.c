/* LWC's fake quantization, 16 weights at a time: the portable pass's operations in the same
 * order (division, round to nearest even, add, compare-and-select clamps), so the bits match. */
#include "dq_lwc_kernels.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f"))) void dq__lwc_fake_quant_avx512(const float *src, int64_t len,
                                                                 float scale, float zero,
                                                                 float bottom, float top,
                                                                 bool asym, float *dst,
                                                                 float *part)
{
    const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero);
    const __m512 lo = _mm512_set1_ps(bottom), hi = _mm512_set1_ps(top);
    for (int64_t j = 0; j < len; j += 16) {
        const __mmask16 m = len - j >= 16 ? (__mmask16)0xFFFF
                                          : (__mmask16)((1u << (unsigned)(len - j)) - 1u);
        const __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, src + j), vs);
        const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 code = asym ? _mm512_add_ps(r, vz) : r;
        /* clampf: below bottom -> bottom, else above top -> top, else code itself (keeps the
         * sign of a zero code, which min/max would not). */
        __m512 q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(code, lo, _CMP_LT_OQ), code, lo);
        q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(code, hi, _CMP_GT_OQ), q, hi);
        const __m512 level = asym ? _mm512_sub_ps(q, vz) : q;
        _mm512_mask_storeu_ps(dst + j, m, _mm512_mul_ps(level, vs));
        if (part) {
            const __mmask16 inside = _mm512_cmp_ps_mask(code, q, _CMP_EQ_OQ);
            _mm512_mask_storeu_ps(part + j, m,
                                  _mm512_mask_blend_ps(inside, level, _mm512_sub_ps(r, v)));
        }
    }
}

#else

void dq__lwc_fake_quant_avx512(const float *src, int64_t len, float scale, float zero,
                               float bottom, float top, bool asym, float *dst, float *part)
{
    dq__lwc_fake_quant_portable(src, len, scale, zero, bottom, top, asym, dst, part);
}

#endif
