/* Reproducible block products for building and applying plans.
 *
 * BLAS results may change with the BLAS thread count (OpenBLAS's do), so a plan built with
 * sgemm would depend on the host's threading. These products fix the arithmetic instead:
 * every element is 0 + a_0 b_0 + a_1 b_1 + ... in index order, each product and sum rounded
 * separately (C11 mode keeps the compiler from contracting them), and vector lanes never mix.
 * The bits are therefore the same for any SIMD width, row blocking or row split between
 * threads.
 *
 * The fused product (dq__block_product_fused) is the same loops with each step one fused
 * multiply-add, 0 + a_0 b_0 rounded once, then fma(a_1, b_1, that), ... in index order: again
 * the same bits for any SIMD width, blocking or thread split, but not the separate product's
 * bits. Used for every product of a search, it would keep the plain and the pruned search
 * bit-identical to each other; the searches do not use it, because it gains too little here:
 * on the CPU measured (doc/performance.md, bench_blockmul) the separate product already runs
 * at about 90 % of the FMA peak, the adds going to pipes the multiplies do not use. */
#include <math.h>
#include <stdbool.h>

#include "dq_blockmul.h"
#include "dq_cpu.h"

/* Register tile: ROWS rows x COLS columns of accumulators. */
#define TILE_ROWS 16
#define TILE_COLS 32

#if defined(__GNUC__)
#define DQ_INLINE inline __attribute__((always_inline)) /* into each CPU variant */
#else
#define DQ_INLINE inline
#endif

/* x86 builds carry AVX2 and AVX-512 variants, chosen per call from the CPU's features (no
 * IFUNC: resolvers run before sanitizer runtimes start). Lanes never mix, so every variant
 * gives the same bits. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DQ_X86_VARIANTS 1
#else
#define DQ_X86_VARIANTS 0
#endif

/* c[r][0..jn) = a[r][0..k) * b[0..k)[0..jn) for rows r < nr (nr <= TILE_ROWS,
 * jn <= TILE_COLS). */
static DQ_INLINE float madd(float acc, float a, float b, bool fused)
{
    return fused ? fmaf(a, b, acc) : acc + a * b;
}

static DQ_INLINE void tile(const float *a, int64_t lda, int nr, int32_t k, const float *b,
                           int64_t ldb, int jn, float *c, int64_t ldc, bool fused)
{
    /* Plain loops (no memset/memcpy) let the compiler keep acc in registers. */
    float acc[TILE_ROWS][TILE_COLS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int j = 0; j < TILE_COLS; j++)
            acc[r][j] = 0.0f;
    if (nr == TILE_ROWS && jn == TILE_COLS) {
        for (int32_t kk = 0; kk < k; kk++) {
            const float *bk = b + (size_t)kk * (size_t)ldb;
            for (int r = 0; r < TILE_ROWS; r++) {
                const float av = a[(size_t)r * (size_t)lda + (size_t)kk];
                for (int j = 0; j < TILE_COLS; j++)
                    acc[r][j] = madd(acc[r][j], av, bk[j], fused);
            }
        }
    } else {
        for (int32_t kk = 0; kk < k; kk++) {
            const float *bk = b + (size_t)kk * (size_t)ldb;
            for (int r = 0; r < nr; r++) {
                const float av = a[(size_t)r * (size_t)lda + (size_t)kk];
                for (int j = 0; j < jn; j++)
                    acc[r][j] = madd(acc[r][j], av, bk[j], fused);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int j = 0; j < jn; j++)
            c[(size_t)r * (size_t)ldc + (size_t)j] = acc[r][j];
}

static DQ_INLINE void product(const float *a, int64_t lda, int64_t m, int32_t k,
                              const float *b, int64_t ldb, int32_t n, float *c, int64_t ldc,
                              bool fused)
{
    for (int64_t i = 0; i < m; i += TILE_ROWS) {
        int nr = m - i < TILE_ROWS ? (int)(m - i) : TILE_ROWS;
        for (int32_t j = 0; j < n; j += TILE_COLS) {
            int jn = n - j < TILE_COLS ? n - j : TILE_COLS;
            tile(a + (size_t)i * (size_t)lda, lda, nr, k, b + j, ldb, jn,
                 c + (size_t)i * (size_t)ldc + (size_t)j, ldc, fused);
        }
    }
}

#if DQ_X86_VARIANTS
#include <immintrin.h>

/* AVX-512: a register tile of AVX512_ROWS rows x up to 4 vectors of 16 columns; each lane does
 * exactly the portable arithmetic (a rounded product, then a rounded sum, in k order), so the
 * bits are the portable product's. */
#define AVX512_ROWS 6

static __mmask16 lane_mask(int32_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* One step of an accumulator: a rounded product then a rounded sum, or one fused
 * multiply-add. */
__attribute__((target("avx512f"))) static DQ_INLINE __m512 madd512(__m512 acc, __m512 a,
                                                                   __m512 b, bool fused)
{
    return fused ? _mm512_fmadd_ps(a, b, acc) : _mm512_add_ps(acc, _mm512_mul_ps(a, b));
}

/* The hot case: AVX512_ROWS rows x 64 columns, every accumulator in a named register
 * variable (an array indexed in loops ends up on the stack at -O2). */
#define ROW_DECL(r) __m512 c##r##0 = z, c##r##1 = z, c##r##2 = z, c##r##3 = z
#define ROW_STEP(r)                                                                          \
    do {                                                                                     \
        __m512 av = _mm512_set1_ps(a[(size_t)(r) * (size_t)lda + (size_t)kk]);               \
        c##r##0 = madd512(c##r##0, av, b0, fused);                                           \
        c##r##1 = madd512(c##r##1, av, b1, fused);                                           \
        c##r##2 = madd512(c##r##2, av, b2, fused);                                           \
        c##r##3 = madd512(c##r##3, av, b3, fused);                                           \
    } while (0)
#define ROW_STORE(r)                                                                         \
    do {                                                                                     \
        float *cr = c + (size_t)(r) * (size_t)ldc;                                           \
        _mm512_storeu_ps(cr, c##r##0);                                                       \
        _mm512_storeu_ps(cr + 16, c##r##1);                                                  \
        _mm512_storeu_ps(cr + 32, c##r##2);                                                  \
        _mm512_storeu_ps(cr + 48, c##r##3);                                                  \
    } while (0)

__attribute__((target("avx512f"))) static DQ_INLINE void
tile512_full(const float *a, int64_t lda, int32_t k, const float *b, int64_t ldb, float *c,
             int64_t ldc, bool fused)
{
    const __m512 z = _mm512_setzero_ps();
    ROW_DECL(0);
    ROW_DECL(1);
    ROW_DECL(2);
    ROW_DECL(3);
    ROW_DECL(4);
    ROW_DECL(5);
    for (int32_t kk = 0; kk < k; kk++) {
        const float *bk = b + (size_t)kk * (size_t)ldb;
        __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);
        __m512 b2 = _mm512_loadu_ps(bk + 32), b3 = _mm512_loadu_ps(bk + 48);
        ROW_STEP(0);
        ROW_STEP(1);
        ROW_STEP(2);
        ROW_STEP(3);
        ROW_STEP(4);
        ROW_STEP(5);
    }
    ROW_STORE(0);
    ROW_STORE(1);
    ROW_STORE(2);
    ROW_STORE(3);
    ROW_STORE(4);
    ROW_STORE(5);
}
#undef ROW_DECL
#undef ROW_STEP
#undef ROW_STORE

/* Edges: fewer rows or columns, one row at a time, masked vectors. */
__attribute__((target("avx512f"))) static DQ_INLINE void
tile512_edge(const float *a, int64_t lda, int nr, int32_t k, const float *b, int64_t ldb,
             int32_t jn, float *c, int64_t ldc, bool fused)
{
    for (int r = 0; r < nr; r++) {
        const float *ar = a + (size_t)r * (size_t)lda;
        for (int32_t j = 0; j < jn; j += 16) {
            __mmask16 mk = lane_mask(jn - j);
            __m512 acc = _mm512_setzero_ps();
            for (int32_t kk = 0; kk < k; kk++)
                acc = madd512(acc, _mm512_set1_ps(ar[kk]),
                              _mm512_maskz_loadu_ps(mk, b + (size_t)kk * (size_t)ldb + j), fused);
            _mm512_mask_storeu_ps(c + (size_t)r * (size_t)ldc + j, mk, acc);
        }
    }
}

__attribute__((target("avx512f"))) static DQ_INLINE void
product_avx512(const float *a, int64_t lda, int64_t m, int32_t k, const float *b, int64_t ldb,
               int32_t n, float *c, int64_t ldc, bool fused)
{
    for (int32_t j = 0; j < n; j += 64) {
        int32_t jn = n - j < 64 ? n - j : 64;
        for (int64_t i = 0; i < m; i += AVX512_ROWS) {
            int nr = m - i < AVX512_ROWS ? (int)(m - i) : AVX512_ROWS;
            const float *ai = a + (size_t)i * (size_t)lda;
            float *ci = c + (size_t)i * (size_t)ldc + (size_t)j;
            if (nr == AVX512_ROWS && jn == 64)
                tile512_full(ai, lda, k, b + j, ldb, ci, ldc, fused);
            else
                tile512_edge(ai, lda, nr, k, b + j, ldb, jn, ci, ldc, fused);
        }
    }
}

__attribute__((target("avx512f"))) static void product_avx512_sep(const float *a, int64_t lda,
                                                                 int64_t m, int32_t k,
                                                                 const float *b, int64_t ldb,
                                                                 int32_t n, float *c,
                                                                 int64_t ldc)
{
    product_avx512(a, lda, m, k, b, ldb, n, c, ldc, false);
}

__attribute__((target("avx512f"))) static void product_avx512_fused(const float *a, int64_t lda,
                                                                   int64_t m, int32_t k,
                                                                   const float *b, int64_t ldb,
                                                                   int32_t n, float *c,
                                                                   int64_t ldc)
{
    product_avx512(a, lda, m, k, b, ldb, n, c, ldc, true);
}

__attribute__((target("avx2"))) static void product_avx2(const float *a, int64_t lda, int64_t m,
                                                         int32_t k, const float *b, int64_t ldb,
                                                         int32_t n, float *c, int64_t ldc)
{
    product(a, lda, m, k, b, ldb, n, c, ldc, false);
}

__attribute__((target("avx2,fma"))) static void product_avx2_fused(const float *a, int64_t lda,
                                                                  int64_t m, int32_t k,
                                                                  const float *b, int64_t ldb,
                                                                  int32_t n, float *c,
                                                                  int64_t ldc)
{
    product(a, lda, m, k, b, ldb, n, c, ldc, true);
}
#endif

void dq__block_product_portable(const float *a, int64_t lda, int64_t m, int32_t k,
                                const float *b, int64_t ldb, int32_t n, float *c, int64_t ldc)
{
    product(a, lda, m, k, b, ldb, n, c, ldc, false);
}

void dq__block_product(const float *a, int64_t lda, int64_t m, int32_t k, const float *b,
                       int64_t ldb, int32_t n, float *c, int64_t ldc)
{
#if DQ_X86_VARIANTS
    const uint32_t cpu = dq__cpu_features();
    if (cpu & DQ_CPU_AVX512F) {
        product_avx512_sep(a, lda, m, k, b, ldb, n, c, ldc);
        return;
    }
    if (cpu & DQ_CPU_AVX2) {
        product_avx2(a, lda, m, k, b, ldb, n, c, ldc);
        return;
    }
#endif
    product(a, lda, m, k, b, ldb, n, c, ldc, false);
}

void dq__block_product_fused_portable(const float *a, int64_t lda, int64_t m, int32_t k,
                                      const float *b, int64_t ldb, int32_t n, float *c,
                                      int64_t ldc)
{
    product(a, lda, m, k, b, ldb, n, c, ldc, true);
}

void dq__block_product_fused(const float *a, int64_t lda, int64_t m, int32_t k, const float *b,
                             int64_t ldb, int32_t n, float *c, int64_t ldc)
{
#if DQ_X86_VARIANTS
    const uint32_t cpu = dq__cpu_features();
    if (cpu & DQ_CPU_AVX512F) {
        product_avx512_fused(a, lda, m, k, b, ldb, n, c, ldc);
        return;
    }
    if ((cpu & DQ_CPU_AVX2) && (cpu & DQ_CPU_FMA)) {
        product_avx2_fused(a, lda, m, k, b, ldb, n, c, ldc);
        return;
    }
#endif
    product(a, lda, m, k, b, ldb, n, c, ldc, true);
}
