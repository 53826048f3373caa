/* Random prepared weights and canary-guarded outputs for the kernel suites (test_wprep.h). */
#include "test_wprep.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

int32_t test_rand_int(test_rng *r, int32_t lo, int32_t hi)
{
    return lo + (int32_t)(test_rng_u64(r) % (uint64_t)(hi - lo + 1));
}

float test_rand_scale(test_rng *r, int style)
{
    double e = style == WPREP_EXTREME ? test_rng_uniform(r) * 8.0 - 5.0
                                      : test_rng_uniform(r) - 1.5;
    return (float)(pow(10.0, e) * (test_rng_uniform(r) + 0.5));
}

dq__wprep *test_random_wprep(test_rng *r, int64_t rows, int64_t cols, int32_t bits,
                             int64_t group_len, int style, int sym)
{
    dq__wprep *w = calloc(1, sizeof *w);
    ck_assert_ptr_nonnull(w);
    w->ctx = dq__default_context;
    w->rows = rows;
    w->cols = cols;
    w->bits = bits;
    w->group_len = group_len <= 0 || group_len > cols ? cols : group_len;
    w->groups = (cols + w->group_len - 1) / w->group_len;
    w->code_ld = (cols + 63) / 64 * 64;
    w->codes = calloc((size_t)(rows * w->code_ld), 1);
    w->scales = calloc((size_t)(rows * w->groups), sizeof(float));
    w->zeros = calloc((size_t)(rows * w->groups), sizeof(int32_t));
    w->code_sums = calloc((size_t)(rows * w->groups), sizeof(int32_t));
    ck_assert(w->codes && w->scales && w->zeros && w->code_sums);
    const int32_t lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            int32_t c = test_rand_int(r, lo, hi);
            if (style == WPREP_EXTREME)
                c = test_rng_uniform(r) < 0.5 ? (c & 1 ? lo : hi) : c;
            w->codes[i * w->code_ld + j] = (int8_t)c;
        }
        for (int64_t g = 0; g < w->groups; g++) {
            int64_t k = i * w->groups + g;
            w->scales[k] = test_rand_scale(r, style);
            w->zeros[k] = sym                                   ? 0
                          : style == WPREP_EXTREME && (g & 1) ? test_rand_int(r, -1000, 1000)
                                                                : test_rand_int(r, lo, hi);
            int32_t s = 0;
            for (int64_t j = g * w->group_len; j < cols && j < (g + 1) * w->group_len; j++)
                s += w->codes[i * w->code_ld + j];
            w->code_sums[k] = s;
        }
    }
    dq__gemm_prepare(w);
    ck_assert(w->kernel); /* every kernel, the portable ones too, reads the repacked form */
    return w;
}

void test_free_wprep(dq__wprep *w)
{
    if (w->kernel_free)
        w->kernel_free(&w->ctx, w->kernel);
    free(w->codes);
    free(w->scales);
    free(w->zeros);
    free(w->code_sums);
    free(w);
}

#define CANARY (-12345.0f)

float *test_new_output(int64_t rows, int64_t ldy)
{
    float *y = malloc((size_t)(rows * ldy + 16) * sizeof *y);
    ck_assert_ptr_nonnull(y);
    for (int64_t i = 0; i < rows * ldy + 16; i++)
        y[i] = CANARY;
    return y;
}

void test_check_canaries(const float *y, int64_t rows, int64_t cols, int64_t ldy)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = cols; j < ldy; j++)
            ck_assert_float_eq(y[i * ldy + j], CANARY);
    for (int64_t i = rows * ldy; i < rows * ldy + 16; i++)
        ck_assert_float_eq(y[i], CANARY);
}

/* One context per thread count asked for, freed at exit. */
#define TEST_MAX_CONTEXTS 65
static dq_context *test_contexts[TEST_MAX_CONTEXTS];

static void test_free_contexts(void)
{
    for (int i = 0; i < TEST_MAX_CONTEXTS; i++) {
        dq_context_free(test_contexts[i]);
        test_contexts[i] = NULL;
    }
}

const dq_context *test_threads(int32_t n)
{
    ck_assert(n >= 0 && n < TEST_MAX_CONTEXTS);
    if (!test_contexts[n]) {
        static int registered;
        if (!registered++)
            atexit(test_free_contexts);
        dq_context_params p;
        ck_assert_int_eq(dq_context_params_init(&p, sizeof p), DQ_OK);
        p.n_threads = n;
        ck_assert_int_eq(dq_context_create(&p, &test_contexts[n]), DQ_OK);
    }
    return test_contexts[n];
}
