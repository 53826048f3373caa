/* AVX2 block product of the fused online path (dq_online.h): register tiles of up to 5
 * tokens x 16 columns (2 x 32 for one or two tokens), one fused multiply-add per term in
 * increasing k, so the bits equal the portable product's. The matrix is float or half precision
 * (widened exactly by F16C as it is loaded). */
#include <string.h>

#include "dq_online.h"

#if defined(__GNUC__) && defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define UNROLL _Pragma("unroll")
#else
#pragma GCC target("avx2,fma,f16c")
#define UNROLL _Pragma("GCC unroll 16")
#endif
#include <immintrin.h>

#define INLINE inline __attribute__((always_inline))
#define MR 5      /* token rows of the wide tile */
#define MAX_NV 4  /* vectors of 8 columns in the narrow tile */

/* All ones in the lanes below left. */
static INLINE __m256i lane_mask(int32_t left)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), iota);
}

/* 8 matrix elements from p (floats, or halves when half); lanes at or past left are 0. */
static INLINE __m256 load_row(const void *p, int half, __m256i mask, int32_t left)
{
    if (!half)
        return _mm256_maskload_ps(p, mask);
    if (left >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128(p));
    /* The last columns of a block whose size is not a multiple of 8: no masked 16-bit load. */
    uint16_t part[8] = {0};
    if (left > 0)
        memcpy(part, p, (size_t)left * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const void *)part));
}

/* out[r][j0 .. j0 + 8 nv) for r < nr; masks cover the columns that exist. gathered: 0 reads
 * in[r * ldi + k], 1 in[r * ldi + idx[k]], 2 in[r * ldi + idx[r * idx_ld + k]]. m holds
 * floats, or halves when half. nr, nv, gathered and half are constants in every call, so the
 * accumulators stay in registers. */
static INLINE void tile(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                        int gathered, int nr, int nv, const void *m, int half, int32_t n,
                        int32_t j0, const __m256i *mask, float *out, int64_t ldo)
{
    const size_t elem = half ? sizeof(uint16_t) : sizeof(float);
    __m256 acc[MR][MAX_NV];
    const float *row[MR];
    const int32_t *ri[MR];
    UNROLL
    for (int r = 0; r < MR; r++) {
        row[r] = in + (size_t)(r < nr ? r : 0) * (size_t)ldi;
        ri[r] = gathered == 2 ? idx + (size_t)(r < nr ? r : 0) * (size_t)idx_ld : idx;
        UNROLL
        for (int q = 0; q < MAX_NV; q++)
            acc[r][q] = _mm256_setzero_ps();
    }
    const char *mj = (const char *)m + (size_t)j0 * elem;
    for (int32_t k = 0; k < n; k++) {
        const size_t off = gathered == 1 ? (size_t)idx[k] : (size_t)k;
        const char *mk = mj + (size_t)k * (size_t)n * elem;
        __m256 b[MAX_NV];
        UNROLL
        for (int q = 0; q < MAX_NV; q++)
            if (q < nv)
                b[q] = load_row(mk + 8 * (size_t)q * elem, half, mask[q], n - j0 - 8 * q);
        UNROLL
        for (int r = 0; r < MR; r++) {
            if (r >= nr)
                continue;
            const size_t at = gathered == 2 ? (size_t)ri[r][k] : off;
            const __m256 a = _mm256_set1_ps(row[r][at]);
            UNROLL
            for (int q = 0; q < MAX_NV; q++)
                if (q < nv)
                    acc[r][q] = _mm256_fmadd_ps(a, b[q], acc[r][q]);
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
                _mm256_maskstore_ps(o + 8 * q, mask[q], acc[r][q]);
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
    const int32_t step = narrow ? 8 * MAX_NV : 16;
    for (int32_t j0 = 0; j0 < n; j0 += step) {
        __m256i mask[MAX_NV];
        for (int q = 0; q < MAX_NV; q++)
            mask[q] = lane_mask(n - j0 - 8 * q);
        for (int64_t r0 = 0; r0 < rows; r0 += narrow ? 2 : MR) {
            const float *a = in + (size_t)r0 * (size_t)ldi;
            float *o = out + (size_t)r0 * (size_t)ldo;
            const int64_t left = rows - r0;
            if (narrow) {
                switch (left) {
                    TILE_CASE(1, 4)
                default:
                    TILE_CASE(2, 4)
                }
            } else {
                switch (left < MR ? left : MR) {
                    TILE_CASE(1, 2)
                    TILE_CASE(2, 2)
                    TILE_CASE(3, 2)
                    TILE_CASE(4, 2)
                default:
                    TILE_CASE(5, 2)
                }
            }
        }
    }
}

void dq__online_block_avx2(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                           int64_t rows, const float *m, int32_t n, float *out, int64_t ldo)
{
    block(in, ldi, idx, idx_ld, rows, m, 0, n, out, ldo);
}

void dq__online_block16_avx2(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                             int64_t rows, const uint16_t *m, int32_t n, float *out,
                             int64_t ldo)
{
    block(in, ldi, idx, idx_ld, rows, m, 1, n, out, ldo);
}

void dq__online_divide_avx2(const float *in, int64_t ldi, const float *s, int64_t rows,
                            int64_t cols, float *out, int64_t ldo)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * (size_t)ldi;
        float *o = out + (size_t)r * (size_t)ldo;
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
            _mm256_storeu_ps(o + c, _mm256_div_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(s + c)));
        for (; c < cols; c++)
            o[c] = a[c] / s[c];
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* Not an x86-64 GCC-compatible build: dispatch never selects this kernel. */
void dq__online_block_avx2(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                           int64_t rows, const float *m, int32_t n, float *out, int64_t ldo)
{
    dq__online_block_portable(in, ldi, idx, idx_ld, rows, m, n, out, ldo);
}

void dq__online_block16_avx2(const float *in, int64_t ldi, const int32_t *idx, int64_t idx_ld,
                             int64_t rows, const uint16_t *m, int32_t n, float *out,
                             int64_t ldo)
{
    dq__online_block16_portable(in, ldi, idx, idx_ld, rows, m, n, out, ldo);
}

void dq__online_divide_avx2(const float *in, int64_t ldi, const float *s, int64_t rows,
                            int64_t cols, float *out, int64_t ldo)
{
    dq__online_divide_portable(in, ldi, s, rows, cols, out, ldo);
}

#endif
