/* AVX-512 VNNI tile kernels of the integer product (layouts in dq_gemm_simd.h).
 *
 * A register tile is MR tokens x NB blocks of 16 outputs: MR * NB int32 accumulators fed by
 * vpdpbusd (activation codes broadcast 4 at a time, unsigned; weight codes signed). At the end
 * of every group the exact int32 sums get their zero-point corrections and go through the fixed
 * float epilogue into y, which therefore holds the running float sum between groups. */
#include <string.h>

#include "dq_gemm_simd.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#include <immintrin.h>

#define MAX_MR 8
#define MAX_NB 8
/* GEMV streams the weights from memory: bytes of each block's stream fetched ahead (about
 * 4-7 % more decode speed on a 7B-shaped model here, crossing 4 KiB pages early). */
#define PREFETCH_BYTES 1024

static DQ_GEMM_INLINE __m512i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* One register tile over the whole row: y[i][16 j + o] for i < mvalid, j < NB. last_mask
 * selects the valid outputs of block NB-1. */
static DQ_GEMM_INLINE void micro(const int MR, const int NB, const int bits8, const dq__wpack *wp,
                                 int64_t block, const dq__apack *ap, int64_t tile,
                                 const float *sx, const int32_t *zx, int mvalid,
                                 __mmask16 last_mask, const float *bias, float *y, int64_t ldy)
{
    /* Rows past the last token read token 0 again; their sums are never stored. */
    const uint8_t *at[MAX_MR];
    DQ_GEMM_UNROLL
    for (int i = 0; i < MR; i++)
        at[i] = ap->codes + (size_t)tile * (size_t)ap->tile_stride +
                (size_t)(i < mvalid ? i : 0) * (size_t)ap->token_stride;
    const int32_t *sums = ap->sums + (size_t)tile * (size_t)wp->groups * DQ_GEMM_TILE;
    const int64_t step_stride = ap->step_stride, half_stride = ap->half_stride;
    int64_t ak = 0;
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const uint8_t *wb[MAX_NB];
    const dq__gemm_meta *mb[MAX_NB];
    __mmask16 mask[MAX_NB];
    DQ_GEMM_UNROLL
    for (int j = 0; j < NB; j++) {
        wb[j] = wp->codes + (size_t)(block + j) * (size_t)wp->block_bytes;
        mb[j] = wp->meta + (size_t)(block + j) * (size_t)wp->groups;
        mask[j] = j == NB - 1 ? last_mask : (__mmask16)0xFFFF;
    }
    /* The running sum starts at the bias (or 0) in registers: y is written, never read, by
     * the first group. Masked accesses are slow on some cores: only the last block's tail
     * uses them. */
    __m512 init[MAX_NB];
    bool full[MAX_NB];
    DQ_GEMM_UNROLL
    for (int j = 0; j < NB; j++) {
        init[j] = bias ? _mm512_maskz_loadu_ps(mask[j], bias + 16 * j) : _mm512_setzero_ps();
        full[j] = mask[j] == (__mmask16)0xFFFF;
    }

    for (int64_t g = 0; g < wp->groups; g++) {
        const int64_t steps = g + 1 < wp->groups ? wp->group_steps : wp->last_steps;
        __m512i acc[MAX_MR][MAX_NB];
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++)
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_setzero_si512();
        for (int64_t s = 0; s < steps; s++) {
            __m512i wv[MAX_NB];
            if (MR == 1)
                DQ_GEMM_UNROLL
                for (int j = 0; j < NB; j++) /* an address that may lie past the codes */
                    _mm_prefetch((const char *)((uintptr_t)wb[j] + PREFETCH_BYTES), _MM_HINT_T0);
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                wv[j] = bits8 ? _mm512_loadu_si512(wb[j])
                              : _mm512_and_si512(_mm512_loadu_si512(wb[j]), nibble);
            DQ_GEMM_UNROLL
            for (int i = 0; i < MR; i++) {
                const __m512i u = bcast4(at[i] + ak);
                DQ_GEMM_UNROLL
                for (int j = 0; j < NB; j++)
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u, wv[j]);
            }
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                wv[j] = bits8 ? _mm512_loadu_si512(wb[j] + 64)
                              : _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(wb[j]), 4),
                                                 nibble);
            DQ_GEMM_UNROLL
            for (int i = 0; i < MR; i++) {
                const __m512i u = bcast4(at[i] + ak + half_stride);
                DQ_GEMM_UNROLL
                for (int j = 0; j < NB; j++)
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u, wv[j]);
            }
            ak += step_stride;
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++)
                wb[j] += wp->step_bytes;
        }
        /* Epilogue: exact corrections in int32, then y += (sx * sw) * (float)acc. */
        __m512 sw[MAX_NB];
        __m512i zw[MAX_NB], corr[MAX_NB];
        DQ_GEMM_UNROLL
        for (int j = 0; j < NB; j++) {
            sw[j] = _mm512_loadu_ps(mb[j][g].scale);
            zw[j] = _mm512_loadu_si512(mb[j][g].zero);
            corr[j] = _mm512_loadu_si512(mb[j][g].corr);
        }
        DQ_GEMM_UNROLL
        for (int i = 0; i < MR; i++) {
            if (i >= mvalid)
                continue;
            const __m512i su = _mm512_set1_epi32(sums[g * DQ_GEMM_TILE + i]);
            const int64_t ai = i * ap->act_token + g * ap->act_group;
            const __m512i zi = _mm512_set1_epi32(zx[ai]);
            const __m512 si = _mm512_set1_ps(sx[ai]);
            float *yi = y + (size_t)i * (size_t)ldy;
            DQ_GEMM_UNROLL
            for (int j = 0; j < NB; j++) {
                __m512i a = _mm512_sub_epi32(acc[i][j], _mm512_mullo_epi32(zw[j], su));
                a = _mm512_sub_epi32(a, _mm512_mullo_epi32(zi, corr[j]));
                const __m512 term = _mm512_mul_ps(_mm512_mul_ps(si, sw[j]), _mm512_cvtepi32_ps(a));
                float *yp = yi + 16 * j;
                if (full[j]) {
                    const __m512 prev = g == 0 ? init[j] : _mm512_loadu_ps(yp);
                    _mm512_storeu_ps(yp, _mm512_add_ps(prev, term));
                } else {
                    const __m512 prev = g == 0 ? init[j] : _mm512_maskz_loadu_ps(mask[j], yp);
                    _mm512_mask_storeu_ps(yp, mask[j], _mm512_add_ps(prev, term));
                }
            }
        }
    }
}

typedef void micro_fn(const dq__wpack *wp, int64_t block, const dq__apack *ap, int64_t tile,
                      const float *sx, const int32_t *zx, int mvalid, __mmask16 last_mask,
                      const float *bias, float *y, int64_t ldy);

#define MICRO(MR, NB, B8)                                                                       \
    static void micro_##MR##_##NB##_##B8(const dq__wpack *wp, int64_t block,                    \
                                         const dq__apack *ap, int64_t tile, const float *sx,    \
                                         const int32_t *zx, int mvalid, __mmask16 last_mask,    \
                                         const float *bias, float *y, int64_t ldy)              \
    {                                                                                           \
        micro(MR, NB, B8, wp, block, ap, tile, sx, zx, mvalid, last_mask, bias, y, ldy);        \
    }
#define MICRO_NB(MR, B8) MICRO(MR, 1, B8) MICRO(MR, 2, B8) MICRO(MR, 3, B8)
MICRO_NB(1, 0) MICRO_NB(2, 0) MICRO_NB(4, 0) MICRO_NB(8, 0)
MICRO_NB(1, 1) MICRO_NB(2, 1) MICRO_NB(4, 1) MICRO_NB(8, 1)
MICRO(1, 4, 0) MICRO(2, 4, 0) MICRO(4, 4, 0)
MICRO(1, 4, 1) MICRO(2, 4, 1) MICRO(4, 4, 1)
MICRO(1, 5, 0) MICRO(1, 6, 0) MICRO(1, 7, 0) MICRO(1, 8, 0)
MICRO(1, 5, 1) MICRO(1, 6, 1) MICRO(1, 7, 1) MICRO(1, 8, 1)

/* [token class][NB - 1][8-bit]; 8 tokens take at most 3 blocks (24 accumulators), 2 or 4
 * tokens 4 blocks, one token up to 8 (gemv_blocks). */
static micro_fn *const micros[4][MAX_NB][2] = {
    {{micro_1_1_0, micro_1_1_1}, {micro_1_2_0, micro_1_2_1}, {micro_1_3_0, micro_1_3_1},
     {micro_1_4_0, micro_1_4_1}, {micro_1_5_0, micro_1_5_1}, {micro_1_6_0, micro_1_6_1},
     {micro_1_7_0, micro_1_7_1}, {micro_1_8_0, micro_1_8_1}},
    {{micro_2_1_0, micro_2_1_1}, {micro_2_2_0, micro_2_2_1}, {micro_2_3_0, micro_2_3_1},
     {micro_2_4_0, micro_2_4_1}},
    {{micro_4_1_0, micro_4_1_1}, {micro_4_2_0, micro_4_2_1}, {micro_4_3_0, micro_4_3_1},
     {micro_4_4_0, micro_4_4_1}},
    {{micro_8_1_0, micro_8_1_1}, {micro_8_2_0, micro_8_2_1}, {micro_8_3_0, micro_8_3_1},
     {NULL, NULL}},
};

static int64_t gemv_blocks = DQ_GEMM_GEMV_BLOCKS_AVX512;

void dq__gemm_set_gemv_blocks_avx512(int64_t blocks)
{
    gemv_blocks = blocks >= 1 && blocks <= MAX_NB ? blocks : DQ_GEMM_GEMV_BLOCKS_AVX512;
}

static int token_class(int64_t mvalid)
{
    return mvalid > 4 ? 3 : (mvalid > 2 ? 2 : (mvalid > 1 ? 1 : 0));
}

void dq__gemm_tiles_avx512(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                           const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                           int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    const dq__wpack *wp = w->kernel;
    const int b8 = wp->bits == 8;
    /* Panels of 3 blocks when full tiles come, else 4 (small batches) or gemv_blocks. */
    const int64_t first_tile_rows = ap->rows - tile_begin * DQ_GEMM_TILE;
    const int64_t panel = tile_end - tile_begin > 1 || first_tile_rows > 4 ? 3
                          : first_tile_rows > 1                           ? 4
                                                                          : gemv_blocks;
    const int64_t tail = w->rows - (wp->blocks - 1) * DQ_GEMM_BLOCK;
    for (int64_t b = block_begin; b < block_end; b += panel) {
        const int64_t nb = block_end - b < panel ? block_end - b : panel;
        const __mmask16 last_mask =
            b + nb == wp->blocks ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
        const int64_t o0 = b * DQ_GEMM_BLOCK;
        for (int64_t t = tile_begin; t < tile_end; t++) {
            const int64_t t0 = t * DQ_GEMM_TILE;
            const int64_t left = ap->rows - t0;
            const int mvalid = left < DQ_GEMM_TILE ? (int)left : DQ_GEMM_TILE;
            const int64_t ai = t0 * ap->act_token;
            micros[token_class(mvalid)][nb - 1][b8](wp, b, ap, t, a->scales + ai, a->zeros + ai,
                                                    mvalid, last_mask, bias ? bias + o0 : NULL,
                                                    y + (size_t)t0 * (size_t)ldy + o0, ldy);
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__gemm_tiles_avx512(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                           const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                           int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    (void)w, (void)ap, (void)a, (void)bias, (void)y, (void)ldy, (void)tile_begin;
    (void)tile_end, (void)block_begin, (void)block_end;
}

void dq__gemm_set_gemv_blocks_avx512(int64_t blocks)
{
    (void)blocks;
}

#endif
