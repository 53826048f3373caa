/* AVX2 + FMA kernels of the weight-only product (arithmetic in dq_gemm_simd.h, "weight-only
 * kernels"): the AVX-512 kernels' FMA chains on 8-output halves of a block, so the same bits.
 * A register tile is MR tokens x NB blocks, each block two halves. */
#include "dq_gemm_simd.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>

#define MAX_MR 4
#define MAX_NB 2

#define MAGIC_BITS 0x4B000000 /* 2^23: a 4-bit code in the mantissa reads as 2^23 + code */

/* Position r (0..7) of a step for one half, as floats c - zw (see the AVX-512 kernels). */
static DQ_GEMM_INLINE __m256 decode(const int bits8, __m256i lo, __m256i hi, const int r,
                                    __m256 zf)
{
    if (bits8) {
        const __m256i v = r < 4 ? lo : hi;
        const int b = r & 3;
        const __m256i s = _mm256_srai_epi32(b == 3 ? v : _mm256_slli_epi32(v, 24 - 8 * b), 24);
        return _mm256_sub_ps(_mm256_cvtepi32_ps(s), zf);
    }
    const int shift = r < 4 ? 8 * r : 8 * (r - 4) + 4;
    const __m256i t = shift ? _mm256_srli_epi32(lo, shift) : lo;
    const __m256i f = _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0xF)),
                                      _mm256_set1_epi32(MAGIC_BITS));
    return _mm256_sub_ps(_mm256_castsi256_ps(f), zf);
}

/* Lanes below valid set (valid 0..8). */
static DQ_GEMM_INLINE __m256i lane_mask(int valid)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Position r of a step: one decoded weight vector per half, MR FMAs each. */
static DQ_GEMM_INLINE void step_pos(const int MR, const int NB, const int bits8,
                                    const __m256i *lo, const __m256i *hi, const int r,
                                    const __m256 *zf, const float *const *xt, int64_t k,
                                    __m256 (*acc)[2 * MAX_NB])
{
    DQ_GEMM_UNROLL
    for (int h = 0; h < 2 * NB; h++) {
        const __m256 wv = decode(bits8, lo[h], hi[h], r, zf[h]);
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++)
            acc[i][h] = _mm256_fmadd_ps(_mm256_set1_ps(xt[i][k + r]), wv, acc[i][h]);
    }
}

/* Tokens 0 .. mvalid of x, blocks block .. block + NB; last_valid outputs of the last block. */
static DQ_GEMM_INLINE void micro(const int MR, const int NB, const int bits8,
                                 const dq__wprep *w, int64_t block, const float *x,
                                 int64_t ldx, int mvalid, int last_valid, const float *bias,
                                 float *y, int64_t ldy)
{
    const dq__wpack *wp = w->kernel;
    enum { NH = 2 * MAX_NB };
    const float *xt[MAX_MR];
    DQ_GEMM_UNROLL
    for (int i = 0; i < MR; i++)
        xt[i] = x + (size_t)(i < mvalid ? i : 0) * (size_t)ldx;
    const uint8_t *wb[MAX_NB];
    const dq__gemm_meta *mb[MAX_NB];
    int valid[NH];
    DQ_GEMM_UNROLL
    for (int j = 0; j < NB; j++) {
        wb[j] = wp->codes + (size_t)(block + j) * (size_t)wp->block_bytes;
        mb[j] = wp->meta + (size_t)(block + j) * (size_t)wp->groups;
        const int v = j == NB - 1 ? last_valid : DQ_GEMM_BLOCK;
        valid[2 * j] = v < 8 ? v : 8;
        valid[2 * j + 1] = v > 8 ? v - 8 : 0;
    }
    const __m256 magic = _mm256_set1_ps(bits8 ? 0.0f : 8388608.0f);

    for (int64_t g = 0; g < wp->groups; g++) {
        const int64_t x0 = g * w->group_len;
        const int64_t len = g + 1 < wp->groups ? w->group_len : w->cols - x0;
        /* Kept in memory: registers go to the accumulators. */
        __m256 zf[NH];
        DQ_GEMM_UNROLL
        for (int h = 0; h < 2 * NB; h++)
            zf[h] = _mm256_add_ps(
                _mm256_cvtepi32_ps(_mm256_loadu_si256(
                    (const __m256i *)(const void *)(mb[h / 2][g].zero + 8 * (h & 1)))),
                magic);
        __m256 acc[MAX_MR][NH];
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++)
            DQ_GEMM_UNROLL
            for (int h = 0; h < 2 * NB; h++)
                acc[i][h] = _mm256_setzero_ps();
        for (int64_t k = 0; k < len; k += DQ_GEMM_STEP) {
            const int64_t left = len - k;
            const int n = left < DQ_GEMM_STEP ? (int)left : DQ_GEMM_STEP;
            __m256i lo[NH], hi[NH];
            DQ_GEMM_UNROLL
            for (int h = 0; h < 2 * NB; h++) {
                const uint8_t *p = wb[h / 2] + 32 * (h & 1);
                lo[h] = _mm256_loadu_si256((const __m256i *)(const void *)p);
                hi[h] = bits8 ? _mm256_loadu_si256((const __m256i *)(const void *)(p + 64))
                              : lo[h];
            }
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                wb[j] += wp->step_bytes;
            if (n == DQ_GEMM_STEP) {
                DQ_GEMM_UNROLL
                for (int r = 0; r < DQ_GEMM_STEP; r++)
                    step_pos(MR, NB, bits8, lo, hi, r, zf, xt, x0 + k, acc);
            } else {
                DQ_GEMM_UNROLL
                for (int r = 0; r < DQ_GEMM_STEP; r++)
                    if (r < n)
                        step_pos(MR, NB, bits8, lo, hi, r, zf, xt, x0 + k, acc);
            }
        }
        DQ_GEMM_UNROLL
        for (int h = 0; h < 2 * NB; h++) {
            if (!valid[h])
                continue;
            const int o = 16 * (h / 2) + 8 * (h & 1);
            const __m256 sw = _mm256_loadu_ps(mb[h / 2][g].scale + 8 * (h & 1));
            const __m256i m = lane_mask(valid[h]);
            DQ_GEMM_UNROLL
            for (int i = 0; i < MR; i++) {
                if (i >= mvalid)
                    continue;
                float *yp = y + (size_t)i * (size_t)ldy + o;
                __m256 prev;
                if (g > 0)
                    prev = valid[h] == 8 ? _mm256_loadu_ps(yp) : _mm256_maskload_ps(yp, m);
                else if (bias)
                    prev = valid[h] == 8 ? _mm256_loadu_ps(bias + o)
                                         : _mm256_maskload_ps(bias + o, m);
                else
                    prev = _mm256_setzero_ps();
                const __m256 out = _mm256_fmadd_ps(sw, acc[i][h], prev);
                if (valid[h] == 8)
                    _mm256_storeu_ps(yp, out);
                else
                    _mm256_maskstore_ps(yp, m, out);
            }
        }
    }
}

typedef void micro_fn(const dq__wprep *w, int64_t block, const float *x, int64_t ldx,
                      int mvalid, int last_valid, const float *bias, float *y, int64_t ldy);

#define MICRO(MR, NB, B8)                                                                     \
    static void micro_##MR##_##NB##_##B8(const dq__wprep *w, int64_t block, const float *x,  \
                                         int64_t ldx, int mvalid, int last_valid,             \
                                         const float *bias, float *y, int64_t ldy)            \
    {                                                                                         \
        micro(MR, NB, B8, w, block, x, ldx, mvalid, last_valid, bias, y, ldy);                \
    }
MICRO(1, 1, 0) MICRO(1, 2, 0) MICRO(2, 1, 0) MICRO(2, 2, 0) MICRO(4, 1, 0)
MICRO(1, 1, 1) MICRO(1, 2, 1) MICRO(2, 1, 1) MICRO(2, 2, 1) MICRO(4, 1, 1)

/* [token class][NB - 1][8-bit]: 4 tokens x 1 block (8 accumulators), fewer tokens 2 blocks. */
static micro_fn *const micros[3][MAX_NB][2] = {
    {{micro_1_1_0, micro_1_1_1}, {micro_1_2_0, micro_1_2_1}},
    {{micro_2_1_0, micro_2_1_1}, {micro_2_2_0, micro_2_2_1}},
    {{micro_4_1_0, micro_4_1_1}, {NULL, NULL}},
};
static const int64_t panel_of[3] = {2, 2, 1};

void dq__gemm_w16_avx2(const dq__wprep *w, const float *x, int64_t tokens, int64_t ldx,
                       const float *bias, float *y, int64_t ldy, int64_t block_begin,
                       int64_t block_end)
{
    const dq__wpack *wp = w->kernel;
    const int b8 = wp->bits == 8;
    const int tail = (int)(w->rows - (wp->blocks - 1) * DQ_GEMM_BLOCK);
    const int64_t chunk = dq__gemm_w16_chunk(w->cols);
    for (int64_t c0 = 0; c0 < tokens; c0 += chunk) {
        const int64_t c1 = tokens - c0 < chunk ? tokens : c0 + chunk;
        /* Panels outside, tokens inside (see the AVX-512 kernels). */
        const int64_t first = c1 - c0;
        const int64_t panel = panel_of[first > 2 ? 2 : (first > 1 ? 1 : 0)];
        for (int64_t b = block_begin; b < block_end; b += panel) {
            const int64_t nb = block_end - b < panel ? block_end - b : panel;
            const int64_t o0 = b * DQ_GEMM_BLOCK;
            for (int64_t t0 = c0; t0 < c1; t0 += MAX_MR) {
                const int64_t left = c1 - t0;
                const int mvalid = left < MAX_MR ? (int)left : MAX_MR;
                const int cls = mvalid > 2 ? 2 : (mvalid > 1 ? 1 : 0);
                for (int64_t p = 0; p < nb; p += panel_of[cls]) {
                    const int64_t n = nb - p < panel_of[cls] ? nb - p : panel_of[cls];
                    const int last_valid = b + p + n == wp->blocks ? tail : DQ_GEMM_BLOCK;
                    micros[cls][n - 1][b8](w, b + p, x + (size_t)t0 * (size_t)ldx, ldx, mvalid,
                                           last_valid, bias ? bias + o0 + 16 * p : NULL,
                                           y + (size_t)t0 * (size_t)ldy + o0 + 16 * p, ldy);
                }
            }
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__gemm_w16_avx2(const dq__wprep *w, const float *x, int64_t tokens, int64_t ldx,
                       const float *bias, float *y, int64_t ldy, int64_t block_begin,
                       int64_t block_end)
{
    (void)w, (void)x, (void)tokens, (void)ldx, (void)bias, (void)y, (void)ldy;
    (void)block_begin, (void)block_end;
}

#endif
