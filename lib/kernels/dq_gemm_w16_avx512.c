/* AVX-512 kernels of the weight-only product y = x * dequant(W)^T + bias (float activations),
 * reading the repacked weights of dq_gemm_simd.h. Arithmetic in dq_gemm_simd.h ("weight-only
 * kernels"): every code is decoded to the exact float c - zw, then one FMA chain per output
 * and group; AVX2 computes the same chains, so both give the same bits.
 *
 * A register tile is MR tokens x NB blocks of 16 outputs: each decoded weight vector feeds MR
 * FMAs (activations broadcast one float at a time), and the MR * NB accumulators go through
 * y += sw * acc at the end of every group, so y holds the running sum between groups. */
#include "dq_gemm_simd.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl")
#endif
#include <immintrin.h>

#define MAX_MR 8
#define MAX_NB 8

/* 2^23: a 4-bit code OR-ed into its mantissa reads as the float 2^23 + code. */
#define MAGIC_BITS 0x4B000000

/* The weights of position r (0..7) of a step, as floats c - zw (exact: small integers).
 * 4-bit: lo holds the step's 64 bytes; zf = 2^23 + zero. 8-bit: lo and hi the two halves;
 * zf = zero. */
static DQ_GEMM_INLINE __m512 decode(const int bits8, __m512i lo, __m512i hi, const int r,
                                    __m512 zf)
{
    if (bits8) {
        const __m512i v = r < 4 ? lo : hi;
        const int b = r & 3;
        const __m512i s = _mm512_srai_epi32(b == 3 ? v : _mm512_slli_epi32(v, 24 - 8 * b), 24);
        return _mm512_sub_ps(_mm512_cvtepi32_ps(s), zf);
    }
    const int shift = r < 4 ? 8 * r : 8 * (r - 4) + 4;
    const __m512i t = shift ? _mm512_srli_epi32(lo, (unsigned)shift) : lo;
    /* (t & 0xF) | MAGIC in one instruction. */
    const __m512i f = _mm512_ternarylogic_epi32(t, _mm512_set1_epi32(0xF),
                                                _mm512_set1_epi32(MAGIC_BITS), 0xEA);
    return _mm512_sub_ps(_mm512_castsi512_ps(f), zf);
}

/* One register tile over the whole row: y[i][16 j + o] for i < mvalid, j < NB; last_mask
 * selects the valid outputs of block NB-1. Rows past the last token read token 0 again and
 * are never stored. */
static DQ_GEMM_INLINE void micro(const int MR, const int NB, const int bits8,
                                 const dq__wprep *w, int64_t block, const float *x,
                                 int64_t ldx, int mvalid, __mmask16 last_mask,
                                 const float *bias, float *y, int64_t ldy)
{
    const dq__wpack *wp = w->kernel;
    const float *xt[MAX_MR];
    DQ_GEMM_UNROLL
    for (int i = 0; i < MR; i++)
        xt[i] = x + (size_t)(i < mvalid ? i : 0) * (size_t)ldx;
    const uint8_t *wb[MAX_NB];
    const dq__gemm_meta *mb[MAX_NB];
    __mmask16 mask[MAX_NB];
    __m512 init[MAX_NB];
    DQ_GEMM_UNROLL
    for (int j = 0; j < NB; j++) {
        wb[j] = wp->codes + (size_t)(block + j) * (size_t)wp->block_bytes;
        mb[j] = wp->meta + (size_t)(block + j) * (size_t)wp->groups;
        mask[j] = j == NB - 1 ? last_mask : (__mmask16)0xFFFF;
        init[j] = bias ? _mm512_maskz_loadu_ps(mask[j], bias + 16 * j) : _mm512_setzero_ps();
    }
    const __m512 magic = _mm512_set1_ps(bits8 ? 0.0f : 8388608.0f);

    for (int64_t g = 0; g < wp->groups; g++) {
        const int64_t x0 = g * w->group_len;
        const int64_t len = g + 1 < wp->groups ? w->group_len : w->cols - x0;
        __m512 zf[MAX_NB];
        DQ_GEMM_UNROLL
        for (int j = 0; j < NB; j++)
            zf[j] = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(mb[j][g].zero)), magic);
        __m512 acc[MAX_MR][MAX_NB];
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++)
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_setzero_ps();
        /* Whole steps, then the group's last (partial) step position by position: padding
         * positions are skipped, never multiplied. */
        for (int64_t k = 0; k < len; k += DQ_GEMM_STEP) {
            const int64_t left = len - k;
            __m512i lo[MAX_NB], hi[MAX_NB];
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++) {
                lo[j] = _mm512_loadu_si512(wb[j]);
                hi[j] = bits8 ? _mm512_loadu_si512(wb[j] + 64) : lo[j];
                wb[j] += wp->step_bytes;
            }
            if (left >= DQ_GEMM_STEP) {
                DQ_GEMM_UNROLL
                for (int r = 0; r < DQ_GEMM_STEP; r++) {
                    DQ_GEMM_UNROLL
                    for (int j = 0; j < NB; j++) {
                        const __m512 wv = decode(bits8, lo[j], hi[j], r, zf[j]);
                        DQ_GEMM_UNROLL
                        for (int i = 0; i < MR; i++)
                            acc[i][j] = _mm512_fmadd_ps(_mm512_set1_ps(xt[i][x0 + k + r]), wv,
                                                        acc[i][j]);
                    }
                }
            } else {
                DQ_GEMM_UNROLL
                for (int r = 0; r < DQ_GEMM_STEP; r++) {
                    if (r >= left)
                        break;
                    DQ_GEMM_UNROLL
                    for (int j = 0; j < NB; j++) {
                        const __m512 wv = decode(bits8, lo[j], hi[j], r, zf[j]);
                        DQ_GEMM_UNROLL
                        for (int i = 0; i < MR; i++)
                            acc[i][j] = _mm512_fmadd_ps(_mm512_set1_ps(xt[i][x0 + k + r]), wv,
                                                        acc[i][j]);
                    }
                }
            }
        }
        DQ_GEMM_UNROLL
        for (int j = 0; j < NB; j++) {
            const __m512 sw = _mm512_loadu_ps(mb[j][g].scale);
            DQ_GEMM_UNROLL
            for (int i = 0; i < MR; i++) {
                if (i >= mvalid)
                    continue;
                float *yp = y + (size_t)i * (size_t)ldy + 16 * j;
                if (mask[j] == (__mmask16)0xFFFF) {
                    const __m512 prev = g == 0 ? init[j] : _mm512_loadu_ps(yp);
                    _mm512_storeu_ps(yp, _mm512_fmadd_ps(sw, acc[i][j], prev));
                } else {
                    const __m512 prev = g == 0 ? init[j] : _mm512_maskz_loadu_ps(mask[j], yp);
                    _mm512_mask_storeu_ps(yp, mask[j], _mm512_fmadd_ps(sw, acc[i][j], prev));
                }
            }
        }
    }
}

typedef void micro_fn(const dq__wprep *w, int64_t block, const float *x, int64_t ldx,
                      int mvalid, __mmask16 last_mask, const float *bias, float *y,
                      int64_t ldy);

#define MICRO(MR, NB, B8)                                                                     \
    static void micro_##MR##_##NB##_##B8(const dq__wprep *w, int64_t block, const float *x,  \
                                         int64_t ldx, int mvalid, __mmask16 last_mask,        \
                                         const float *bias, float *y, int64_t ldy)            \
    {                                                                                         \
        micro(MR, NB, B8, w, block, x, ldx, mvalid, last_mask, bias, y, ldy);                 \
    }
#define MICRO_B(MR, NB) MICRO(MR, NB, 0) MICRO(MR, NB, 1)
MICRO_B(1, 1) MICRO_B(1, 2) MICRO_B(1, 3) MICRO_B(1, 4)
MICRO_B(1, 5) MICRO_B(1, 6) MICRO_B(1, 7) MICRO_B(1, 8)
MICRO_B(2, 1) MICRO_B(2, 2) MICRO_B(2, 3) MICRO_B(2, 4)
MICRO_B(4, 1) MICRO_B(4, 2) MICRO_B(4, 3)
MICRO_B(8, 1) MICRO_B(8, 2)

/* [token class][NB - 1][8-bit]: 8 tokens take 2 blocks (16 accumulators, room for the
 * decoded weights), 4 tokens 3, fewer tokens 4 (decoding dominates; more streams in flight). */
static micro_fn *const micros[4][MAX_NB][2] = {
    {{micro_1_1_0, micro_1_1_1}, {micro_1_2_0, micro_1_2_1}, {micro_1_3_0, micro_1_3_1},
     {micro_1_4_0, micro_1_4_1}, {micro_1_5_0, micro_1_5_1}, {micro_1_6_0, micro_1_6_1},
     {micro_1_7_0, micro_1_7_1}, {micro_1_8_0, micro_1_8_1}},
    {{micro_2_1_0, micro_2_1_1}, {micro_2_2_0, micro_2_2_1}, {micro_2_3_0, micro_2_3_1},
     {micro_2_4_0, micro_2_4_1}},
    {{micro_4_1_0, micro_4_1_1}, {micro_4_2_0, micro_4_2_1}, {micro_4_3_0, micro_4_3_1},
     {NULL, NULL}},
    {{micro_8_1_0, micro_8_1_1}, {micro_8_2_0, micro_8_2_1}, {NULL, NULL}, {NULL, NULL}},
};
static const int64_t panel_of[4] = {8, 4, 3, 2};

static int token_class(int64_t mvalid)
{
    return mvalid > 4 ? 3 : (mvalid > 2 ? 2 : (mvalid > 1 ? 1 : 0));
}

void dq__gemm_w16_avx512(const dq__wprep *w, const float *x, int64_t tokens, int64_t ldx,
                         const float *bias, float *y, int64_t ldy, int64_t block_begin,
                         int64_t block_end)
{
    const dq__wpack *wp = w->kernel;
    const int b8 = wp->bits == 8;
    const int64_t tail = w->rows - (wp->blocks - 1) * DQ_GEMM_BLOCK;
    const int64_t chunk = dq__gemm_w16_chunk(w->cols);
    for (int64_t c0 = 0; c0 < tokens; c0 += chunk) {
        const int64_t c1 = tokens - c0 < chunk ? tokens : c0 + chunk;
        /* Panels outside, tokens inside: a panel's weights stay in cache for the chunk, whose
         * activations stay in L2. The first tile is the chunk's largest. */
        const int cls0 = token_class(c1 - c0 < MAX_MR ? c1 - c0 : MAX_MR);
        const int64_t panel = panel_of[cls0];
        for (int64_t b = block_begin; b < block_end; b += panel) {
            const int64_t nb = block_end - b < panel ? block_end - b : panel;
            const __mmask16 last_mask =
                b + nb == wp->blocks ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
            const int64_t o0 = b * DQ_GEMM_BLOCK;
            for (int64_t t0 = c0; t0 < c1; t0 += MAX_MR) {
                const int64_t left = c1 - t0;
                const int mvalid = left < MAX_MR ? (int)left : MAX_MR;
                const int cls = token_class(mvalid);
                /* A class with a narrower panel (the chunk's last tokens) takes it in parts. */
                for (int64_t p = 0; p < nb; p += panel_of[cls]) {
                    const int64_t n = nb - p < panel_of[cls] ? nb - p : panel_of[cls];
                    const __mmask16 m = p + n == nb ? last_mask : (__mmask16)0xFFFF;
                    micros[cls][n - 1][b8](w, b + p, x + (size_t)t0 * (size_t)ldx, ldx, mvalid,
                                           m, bias ? bias + o0 + 16 * p : NULL,
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
void dq__gemm_w16_avx512(const dq__wprep *w, const float *x, int64_t tokens, int64_t ldx,
                         const float *bias, float *y, int64_t ldy, int64_t block_begin,
                         int64_t block_end)
{
    (void)w, (void)x, (void)tokens, (void)ldx, (void)bias, (void)y, (void)ldy;
    (void)block_begin, (void)block_end;
}

#endif
