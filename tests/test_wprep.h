/* Support for the suites of the integer and weight-only kernels: random prepared weights
 * (dq__wprep) and output buffers with canaries around the written area. */
#ifndef TEST_WPREP_H
#define TEST_WPREP_H

#include <stdint.h>

#include "dq_gemm_simd.h"
#include "dq_test.h"

/* Operand styles: uniform random, and extreme (codes and zero points at their limits, scales
 * over many decades, as outlier-heavy layers produce). */
enum { WPREP_PLAIN = 0, WPREP_EXTREME = 1 };

/* lo..hi inclusive, and a positive scale drawn for the style. */
int32_t test_rand_int(test_rng *r, int32_t lo, int32_t hi);
float test_rand_scale(test_rng *r, int style);

/* Prepared weights built directly from random codes (every field the kernels read), then
 * repacked for the SIMD kernels. Zero points live in the shifted code space: 0 when sym, else
 * in the code range or (extreme style, odd groups) clamped ones far outside it. The unpacked
 * fields stay set: the tests' own oracles read them. Aborts the test when the weights were not
 * repacked. */
dq__wprep *test_random_wprep(test_rng *r, int64_t rows, int64_t cols, int32_t bits,
                             int64_t group_len, int style, int sym);
void test_free_wprep(dq__wprep *w);

/* A rows x ldy float buffer plus a 16-float margin, all set to a canary value; the check
 * asserts that columns cols..ldy-1 of every row and the margin still hold it. */
float *test_new_output(int64_t rows, int64_t ldy);
void test_check_canaries(const float *y, int64_t rows, int64_t cols, int64_t ldy);

/* A context running the kernels on n threads (0: the host's count), kept until exit. */
const dq_context *test_threads(int32_t n);

#endif
