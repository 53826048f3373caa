/* Helpers shared by the test programs (not part of the library). */
#ifndef DQ_TEST_H
#define DQ_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Deterministic generator (splitmix64), so every test is reproducible from its seed. */
typedef struct test_rng {
    uint64_t s;
} test_rng;

static inline uint64_t test_rng_u64(test_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double test_rng_uniform(test_rng *r)
{
    return (double)(test_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Whether the suite runs under valgrind (its meson test setup sets DQ_TEST_VALGRIND): tests
 * whose cases cost minutes there run a documented subset; the plain and sanitizer builds run
 * them all. */
static inline int test_under_valgrind(void)
{
    const char *v = getenv("DQ_TEST_VALGRIND");
    return v && v[0] && v[0] != '0';
}

/* Standard normal (Box-Muller). */
static inline double test_rng_normal(test_rng *r)
{
    double u = test_rng_uniform(r), v = test_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

/* Laplace(0, 1): heavier tails, like real activations. */
static inline double test_rng_laplace(test_rng *r)
{
    double u = test_rng_uniform(r) - 0.5;
    return (u < 0 ? 1.0 : -1.0) * log(1.0 - 2.0 * fabs(u));
}

/* Fills a rows x cols (ld) matrix with Laplace noise plus optional outliers: whole channels
 * scaled by `channel_gain` every `channel_every` columns, and a few massive values. */
static inline void test_fill_activations(test_rng *r, float *x, int64_t rows, int64_t cols,
                                         int64_t ld, int with_outliers)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            x[i * ld + j] = (float)test_rng_laplace(r);
    if (!with_outliers)
        return;
    for (int64_t j = 3; j < cols; j += 37)
        for (int64_t i = 0; i < rows; i++)
            x[i * ld + j] *= 40.0f;
    for (int64_t k = 0; k < 3 && k < rows; k++)
        x[(k * 7 % rows) * ld + (k * 13 + 5) % cols] = (k & 1 ? -1.0f : 1.0f) * 900.0f;
}

/* ||a - b||_F / ||b||_F in double over a rows x cols region. */
static inline double test_rel_err(const float *a, int64_t lda, const float *b, int64_t ldb,
                                  int64_t rows, int64_t cols)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            double d = (double)a[i * lda + j] - (double)b[i * ldb + j];
            num += d * d;
            den += (double)b[i * ldb + j] * (double)b[i * ldb + j];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* c (m x n) = a (m x k) * b^T (n x k), naive double accumulation: the no-BLAS oracle. */
static inline void test_matmul_nt(const float *a, int64_t lda, const float *b, int64_t ldb,
                                  float *c, int64_t ldc, int64_t m, int64_t n, int64_t k)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t t = 0; t < k; t++)
                s += (double)a[i * lda + t] * (double)b[j * ldb + t];
            c[i * ldc + j] = (float)s;
        }
}

#endif
