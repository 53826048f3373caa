/* AVX-512 block product of the fused online path (dq_online.h): register tiles of up to 6
 * tokens x 64 columns (2 x 128 for one or two tokens, where the matrix, not the arithmetic,
 * limits), one fused multiply-add per term in increasing k, so the bits equal the portable
 * product's. The matrix is float or half precision (widened exactly as it is loaded). */
#include "dq_online.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,fma"))), \
                             apply_to = function)
#define UNROLL _Pragma("unroll")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,fma")
#define UNROLL _Pragma("GCC unroll 16")
#endif
#include <immintrin.h>

#define INLINE inline __attribute__((always_inline))
#define MR 6            /* token rows of the wide tile */
#define MAX_NV 8        /* vectors of 16 columns in the narrow tile */
#define PREFETCH_ROWS 8 /* matrix rows ahead (4 KiB at n = 128) */

/* The lanes below left. */
static INLINE __mmask16 lane_mask(int32_t left)
{
    if (left >= 16)
        return (__mmask16)0xFFFF;
    return left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* 16 matrix elements from p (floats, or halves when half), masked lanes 0. */
static INLINE __m512 load_row(const void *p, int half, __mmask16 mask)
{
    if (half)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
    return _mm512_maskz_loadu_ps(mask, p);
}

/* out[r][j0 .. j0 + 16 nv) for r < nr; masks cover the columns that exist. gathered: 0 reads
 * in[r * ldi + k], 1 in[r * ldi + idx[k]], 2 in[r * ldi + idx[r * idx_ld + k]]. m holds
 * floats, or halves when half. nr, nv, gathered and half are constants in every call, so the
 * accumulators stay in registers. */
static INLINE void tile(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                        int gathered, int nr, int nv, const void *m, int half, int32_t n,
                        int32_t j0, const __mmask16 *mask, float *out, int64_t ldo)
{
    const size_t elem = half ? sizeof(uint16_t) : sizeof(float);
    __m512 acc[MR][MAX_NV];
    const float *row[MR];
    const int32_t *ri[MR];
    UNROLL
    for (int r = 0; r < MR; r++) {
        row[r] = in + (size_t)(r < nr ? r : 0) * (size_t)ldi;
        ri[r] = gathered == 2 ? idx + (size_t)(r < nr ? r : 0) * (size_t)idx_ld : idx;
        UNROLL
        for (int q = 0; q < MAX_NV; q++)
            acc[r][q] = _mm512_setzero_ps();
    }
    const char *mj = (const char *)m + (size_t)j0 * elem;
    for (int32_t k = 0; k < n; k++) {
        const size_t off = gathered == 1 ? (size_t)idx[k] : (size_t)k;
        const char *mk = mj + (size_t)k * (size_t)n * elem;
        /* Few tokens: memory-bound on the matrix, so fetch whole rows ahead (past the last
         * row too: a prefetch never faults). */
        if (nv == MAX_NV) {
            /* an address, not a pointer into the matrix: it may lie past its end */
            const uintptr_t ahead = (uintptr_t)mk + PREFETCH_ROWS * (size_t)n * elem;
            UNROLL
            for (int q = 0; q < MAX_NV; q++)
                if (!half || q < MAX_NV / 2) /* a row of halves is half the lines */
                    _mm_prefetch((const char *)(ahead + 64 * (uintptr_t)q), _MM_HINT_T0);
        }
        __m512 b[MAX_NV];
        UNROLL
        for (int q = 0; q < MAX_NV; q++)
            if (q < nv)
                b[q] = load_row(mk + 16 * (size_t)q * elem, half, mask[q]);
        UNROLL
        for (int r = 0; r < MR; r++) {
            if (r >= nr)
                continue;
            const size_t at = gathered == 2 ? (size_t)ri[r][k] : off;
            const __m512 a = _mm512_set1_ps(row[r][at]);
            UNROLL
            for (int q = 0; q < MAX_NV; q++)
                if (q < nv)
                    acc[r][q] = _mm512_fmadd_ps(a, b[q], acc[r][q]);
        }
    }
    UNROLL
    for (int r = 0; r < MR; r++) {
        if (r >= nr)
            continue;
        float *o = out + (size_t)r * (size_t)ldo + j0;
        UNROLL
        for (int q = 0; q < MAX_NV; q++)
            if (q < nv)
                _mm512_mask_storeu_ps(o + 16 * q, mask[q], acc[r][q]);
    }
}

#define TILE_CASE(NR, NV)                                                                      \
    case NR:                                                                                   \
        if (idx && idx_ld)                                                                     \
            tile(a, ldi, idx + r0 * idx_ld, idx_ld, 2, NR, NV, m, half, n, j0, mask, o, ldo);  \
        else if (idx)                                                                          \
            tile(a, ldi, idx, 0, 1, NR, NV, m, half, n, j0, mask, o, ldo);                     \
        else                                                                                   \
            tile(a, ldi, NULL, 0, 0, NR, NV, m, half, n, j0, mask, o, ldo);                    \
        break;

static INLINE void block(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                         int64_t rows, const void *m, int half, int32_t n, float *out,
                         int64_t ldo)
{
    /* Few tokens: wide column tiles keep more independent accumulators per token. */
    const bool narrow = rows <= 2;
    const int32_t step = narrow ? 16 * MAX_NV : 64;
    for (int32_t j0 = 0; j0 < n; j0 += step) {
        __mmask16 mask[MAX_NV];
        for (int q = 0; q < MAX_NV; q++)
            mask[q] = lane_mask(n - j0 - 16 * q);
        for (int64_t r0 = 0; r0 < rows; r0 += narrow ? 2 : MR) {
            const float *a = in + (size_t)r0 * (size_t)ldi;
            float *o = out + (size_t)r0 * (size_t)ldo;
            const int64_t left = rows - r0;
            if (narrow) {
                switch (left) {
                    TILE_CASE(1, 8)
                default:
                    TILE_CASE(2, 8)
                }
            } else {
                switch (left < MR ? left : MR) {
                    TILE_CASE(1, 4)
                    TILE_CASE(2, 4)
                    TILE_CASE(3, 4)
                    TILE_CASE(4, 4)
                    TILE_CASE(5, 4)
                default:
                    TILE_CASE(6, 4)
                }
            }
        }
    }
}

void dq__online_block_avx512(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                             int64_t rows, const float *m, int32_t n, float *out, int64_t ldo)
{
    block(in, ldi, idx, idx_ld, rows, m, 0, n, out, ldo);
}

void dq__online_block16_avx512(const float *in, int64_t ldi, const int32_t *idx,
                               int64_t idx_ld, int64_t rows, const uint16_t *m, int32_t n,
                               float *out, int64_t ldo)
{
    block(in, ldi, idx, idx_ld, rows, m, 1, n, out, ldo);
}

void dq__online_divide_avx512(const float *in, int64_t ldi, const float *s, int64_t rows,
                              int64_t cols, float *out, int64_t ldo)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * (size_t)ldi;
        float *o = out + (size_t)r * (size_t)ldo;
        for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 m = lane_mask(cols - c > 16 ? 16 : (int32_t)(cols - c));
            const __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, a + c),
                                           _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), m, s + c));
            _mm512_mask_storeu_ps(o + c, m, v);
        }
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__online_block_avx512(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                             int64_t rows, const float *m, int32_t n, float *out, int64_t ldo)
{
    dq__online_block_portable(in, ldi, idx, idx_ld, rows, m, n, out, ldo);
}

void dq__online_block16_avx512(const float *in, int64_t ldi, const int32_t *idx,
                               int64_t idx_ld, int64_t rows, const uint16_t *m, int32_t n,
                               float *out, int64_t ldo)
{
    dq__online_block16_portable(in, ldi, idx, idx_ld, rows, m, n, out, ldo);
}

void dq__online_divide_avx512(const float *in, int64_t ldi, const float *s, int64_t rows,
                              int64_t cols, float *out, int64_t ldo)
{
    dq__online_divide_portable(in, ldi, s, rows, cols, out, ldo);
}

#endif
