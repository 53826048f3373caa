/* AVX2 tile kernels of the integer product, 4-bit weights (layouts in dq_gemm_simd.h).
 *
 * vpmaddubsw multiplies unsigned activation codes by the stored weight codes (0..15) and adds
 * pairs into int16 (at most 2 * 255 * 15, no saturation), vpmaddwd with ones adds the pairs
 * into the int32 lanes: the same 4-code dot products as vpdpbusd. A register tile is MR tokens
 * x NB blocks, each block two 8-output halves. */
#include <string.h>

#include "dq_gemm_simd.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC target("avx2")
#endif
#include <immintrin.h>

#define MAX_MR 4
#define MAX_NB 4

static DQ_GEMM_INLINE __m256i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

static DQ_GEMM_INLINE __m256i dot4(__m256i acc, __m256i u, __m256i w, __m256i ones)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, w), ones));
}

/* y = prev + term on the valid outputs of an 8-lane half (valid < 8 only in the matrix's
 * last block), where prev is y itself, or for the first group the bias (0 when NULL): y is
 * written, never read, by the first group. */
static DQ_GEMM_INLINE void add_out(float *y, __m256 term, int valid, bool first,
                                   const float *bias)
{
    if (valid >= 8) {
        const __m256 prev = !first ? _mm256_loadu_ps(y)
                            : bias ? _mm256_loadu_ps(bias)
                                   : _mm256_setzero_ps();
        _mm256_storeu_ps(y, _mm256_add_ps(prev, term));
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, term);
    for (int o = 0; o < valid; o++)
        y[o] = (!first ? y[o] : bias ? bias[o] : 0.0f) + t[o];
}

/* Tokens i0 .. i0 + mvalid of the tile, blocks block .. block + NB; last_valid outputs of the
 * last block. */
static DQ_GEMM_INLINE void micro(const int MR, const int NB, const dq__wpack *wp, int64_t block,
                                 const dq__apack *ap, int64_t tile, int i0, const float *sx,
                                 const int32_t *zx, int mvalid, int last_valid,
                                 const float *bias, float *y, int64_t ldy)
{
    /* Rows past the last token read the first again; their sums are never stored. */
    const uint8_t *at[MAX_MR];
    DQ_GEMM_UNROLL
    for (int i = 0; i < MR; i++)
        at[i] = ap->codes + (size_t)tile * (size_t)ap->tile_stride +
                (size_t)(i0 + (i < mvalid ? i : 0)) * (size_t)ap->token_stride;
    const int32_t *sums = ap->sums + (size_t)tile * (size_t)wp->groups * DQ_GEMM_TILE;
    const int64_t step_stride = ap->step_stride, half_stride = ap->half_stride;
    int64_t ak = 0;
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *wb[MAX_NB];
    const dq__gemm_meta *mb[MAX_NB];
    int valid[MAX_NB];
    DQ_GEMM_UNROLL
    for (int j = 0; j < NB; j++) {
        wb[j] = wp->codes + (size_t)(block + j) * (size_t)wp->block_bytes;
        mb[j] = wp->meta + (size_t)(block + j) * (size_t)wp->groups;
        valid[j] = j == NB - 1 ? last_valid : DQ_GEMM_BLOCK;
    }
    for (int64_t g = 0; g < wp->groups; g++) {
        const int64_t steps = g + 1 < wp->groups ? wp->group_steps : wp->last_steps;
        __m256i acc[MAX_MR][MAX_NB][2];
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++)
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                acc[i][j][0] = acc[i][j][1] = _mm256_setzero_si256();
        for (int64_t s = 0; s < steps; s++) {
            DQ_GEMM_UNROLL
            for (int half = 0; half < 2; half++) {
                __m256i wv[MAX_NB][2];
                DQ_GEMM_UNROLL
                for (int j = 0; j < NB; j++)
                    DQ_GEMM_UNROLL
                    for (int h = 0; h < 2; h++) {
                        __m256i raw = _mm256_loadu_si256((const __m256i *)(wb[j] + 32 * h));
                        if (half)
                            raw = _mm256_srli_epi16(raw, 4);
                        wv[j][h] = _mm256_and_si256(raw, nibble);
                    }
                DQ_GEMM_UNROLL
                for (int i = 0; i < MR; i++) {
                    const __m256i u = bcast4(at[i] + ak + (half ? half_stride : 0));
                    DQ_GEMM_UNROLL
                    for (int j = 0; j < NB; j++)
                        DQ_GEMM_UNROLL
                        for (int h = 0; h < 2; h++)
                            acc[i][j][h] = dot4(acc[i][j][h], u, wv[j][h], ones);
                }
            }
            ak += step_stride;
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                wb[j] += wp->step_bytes;
        }
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++) {
            if (i >= mvalid)
                continue;
            const __m256i su = _mm256_set1_epi32(sums[g * DQ_GEMM_TILE + i0 + i]);
            const int64_t ai = i * ap->act_token + g * ap->act_group;
            const __m256i zi = _mm256_set1_epi32(zx[ai]);
            const __m256 si = _mm256_set1_ps(sx[ai]);
            float *yi = y + (size_t)i * (size_t)ldy;
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                DQ_GEMM_UNROLL
                for (int h = 0; h < 2; h++) {
                    const __m256 sw = _mm256_loadu_ps(mb[j][g].scale + 8 * h);
                    const __m256i zw = _mm256_loadu_si256((const __m256i *)(mb[j][g].zero + 8 * h));
                    const __m256i corr =
                        _mm256_loadu_si256((const __m256i *)(mb[j][g].corr + 8 * h));
                    __m256i a = _mm256_sub_epi32(acc[i][j][h], _mm256_mullo_epi32(zw, su));
                    a = _mm256_sub_epi32(a, _mm256_mullo_epi32(zi, corr));
                    const __m256 term =
                        _mm256_mul_ps(_mm256_mul_ps(si, sw), _mm256_cvtepi32_ps(a));
                    if (valid[j] > 8 * h)
                        add_out(yi + 16 * j + 8 * h, term, valid[j] - 8 * h, g == 0,
                                bias ? bias + 16 * j + 8 * h : NULL);
                }
        }
    }
}

typedef void micro_fn(const dq__wpack *wp, int64_t block, const dq__apack *ap, int64_t tile,
                      int i0, const float *sx, const int32_t *zx, int mvalid, int last_valid,
                      const float *bias, float *y, int64_t ldy);

#define MICRO(MR, NB)                                                                           \
    static void micro_##MR##_##NB(const dq__wpack *wp, int64_t block, const dq__apack *ap,      \
                                  int64_t tile, int i0, const float *sx, const int32_t *zx,     \
                                  int mvalid, int last_valid, const float *bias, float *y,      \
                                  int64_t ldy)                                                  \
    {                                                                                           \
        micro(MR, NB, wp, block, ap, tile, i0, sx, zx, mvalid, last_valid, bias, y, ldy);       \
    }
MICRO(1, 1) MICRO(1, 2) MICRO(1, 3) MICRO(1, 4) MICRO(2, 1) MICRO(2, 2) MICRO(4, 1)

void dq__gemm_tiles_avx2(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                         const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                         int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    const dq__wpack *wp = w->kernel;
    const int tail = (int)(w->rows - (wp->blocks - 1) * DQ_GEMM_BLOCK);
    /* One block per register tile of 4 tokens, two for 2 tokens, four for GEMV. */
    const int64_t first_tile_rows = ap->rows - tile_begin * DQ_GEMM_TILE;
    const int64_t panel = tile_end - tile_begin > 1 || first_tile_rows > 2 ? 1
                          : first_tile_rows > 1                           ? 2
                                                                          : 4;
    for (int64_t b = block_begin; b < block_end; b += panel) {
        const int64_t nb = block_end - b < panel ? block_end - b : panel;
        const int last_valid = b + nb == wp->blocks ? tail : DQ_GEMM_BLOCK;
        const int64_t o0 = b * DQ_GEMM_BLOCK;
        const float *bb = bias ? bias + o0 : NULL;
        for (int64_t t = tile_begin; t < tile_end; t++) {
            for (int i0 = 0; i0 < DQ_GEMM_TILE; i0 += 4) {
                const int64_t t0 = t * DQ_GEMM_TILE + i0;
                if (t0 >= ap->rows)
                    break;
                const int64_t left = ap->rows - t0;
                const int mvalid = left < 4 ? (int)left : 4;
                float *yt = y + (size_t)t0 * (size_t)ldy + o0;
                const float *sx = a->scales + t0 * ap->act_token;
                const int32_t *zx = a->zeros + t0 * ap->act_token;
                if (nb == 4)
                    micro_1_4(wp, b, ap, t, i0, sx, zx, mvalid, last_valid, bb, yt, ldy);
                else if (nb == 3)
                    micro_1_3(wp, b, ap, t, i0, sx, zx, mvalid, last_valid, bb, yt, ldy);
                else if (nb == 2)
                    (mvalid > 1 ? micro_2_2 : micro_1_2)(wp, b, ap, t, i0, sx, zx, mvalid,
                                                         last_valid, bb, yt, ldy);
                else if (mvalid > 2)
                    micro_4_1(wp, b, ap, t, i0, sx, zx, mvalid, last_valid, bb, yt, ldy);
                else
                    (mvalid > 1 ? micro_2_1 : micro_1_1)(wp, b, ap, t, i0, sx, zx, mvalid,
                                                         last_valid, bb, yt, ldy);
            }
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__gemm_tiles_avx2(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                         const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                         int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    (void)w, (void)ap, (void)a, (void)bias, (void)y, (void)ldy, (void)tile_begin;
    (void)tile_end, (void)block_begin, (void)block_end;
}

#endif
