/* Smoothing factors and per-input-channel weight absmax. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_transform.h"
#include "dq_check_run.h"

/* The formula with its clamps, written out independently in double. */
static double expected_factor(double a, double w, double alpha)
{
    double r = pow(a < 1e-5 ? 1e-5 : a, alpha) / pow(w < 1e-5 ? 1e-5 : w, 1.0 - alpha);
    r = (double)(float)(r < 1e-5 ? 1e-5 : r);
    return r < (double)1e-2f ? (double)1e-2f : r;
}

START_TEST(factors_follow_formula_and_clamps)
{
    /* Ordinary values, tiny activations or weights (input clamps), results below 1e-5 and
     * between 1e-5 and 1e-2 (both raised to 1e-2), zeros. */
    const float act[] = {3.5f, 120.0f, 1e-7f, 0.0f, 2.0f, 1e-6f, 0.5f, 1e-3f, 7.0f};
    const float w[] = {0.02f, 0.5f, 0.1f, 0.0f, 1e-9f, 50.0f, 0.02f, 40.0f, 0.0f};
    const float alphas[] = {0.0f, 0.5f, 0.6f, 1.0f};
    const int64_t n = sizeof act / sizeof act[0];
    float s[sizeof act / sizeof act[0]];
    int hit_floor = 0;
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(dq_smooth_factors(act, w, n, alphas[k], s), DQ_OK);
        for (int64_t j = 0; j < n; j++) {
            double e = expected_factor(act[j], w[j], alphas[k]);
            ck_assert_double_eq_tol(s[j], e, 1e-6 * e);
            ck_assert_float_ge(s[j], 1e-2f);
            hit_floor += s[j] == 1e-2f;
        }
    }
    ck_assert_int_gt(hit_floor, 0);
}
END_TEST

START_TEST(weight_absmax_over_shared_layers)
{
    test_rng r = {21};
    const int64_t cols = 19, ld = 23, rows[3] = {5, 11, 2};
    float *w[3];
    float acc[19], naive[19];
    for (int64_t j = 0; j < cols; j++)
        naive[j] = 0;
    for (int k = 0; k < 3; k++) {
        w[k] = test_new_weights(&r, rows[k], cols, ld);
        ck_assert_int_eq(dq_smooth_weight_absmax(w[k], rows[k], cols, ld, k > 0, acc), DQ_OK);
        for (int64_t i = 0; i < rows[k]; i++)
            for (int64_t j = 0; j < cols; j++)
                naive[j] = fmaxf(naive[j], fabsf(w[k][i * ld + j]));
        ck_assert_mem_eq(acc, naive, sizeof acc);
    }
    /* accumulate = 0 starts over. */
    ck_assert_int_eq(dq_smooth_weight_absmax(w[2], rows[2], cols, ld, 0, acc), DQ_OK);
    for (int64_t j = 0; j < cols; j++) {
        float m = 0;
        for (int64_t i = 0; i < rows[2]; i++)
            m = fmaxf(m, fabsf(w[2][i * ld + j]));
        ck_assert_float_eq(acc[j], m);
    }
    for (int k = 0; k < 3; k++)
        free(w[k]);
}
END_TEST

START_TEST(bad_input)
{
    float a[3] = {1, 2, 3}, w[3] = {1, 2, 3}, s[3];
    ck_assert_int_eq(dq_smooth_factors(NULL, w, 3, 0.5f, s), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_factors(a, NULL, 3, 0.5f, s), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, 0.5f, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_factors(a, w, 0, 0.5f, s), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_smooth_factors(a, w, -1, 0.5f, s), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, -0.1f, s), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, 1.5f, s), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, NAN, s), DQ_ERR_INVALID_ARG);
    a[1] = -1.0f;
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, 0.5f, s), DQ_ERR_INVALID_ARG);
    a[1] = NAN;
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, 0.5f, s), DQ_ERR_NONFINITE);
    a[1] = 2.0f;
    w[2] = INFINITY;
    ck_assert_int_eq(dq_smooth_factors(a, w, 3, 0.5f, s), DQ_ERR_NONFINITE);

    float m[6] = {1, 2, 3, 4, 5, 6}, out[3] = {0, 0, 0};
    ck_assert_int_eq(dq_smooth_weight_absmax(NULL, 2, 3, 3, 0, out), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 2, 3, 3, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 0, 3, 3, 0, out), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 2, 3, 2, 0, out), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_smooth_weight_absmax(m, INT64_MAX / 2, 3, INT64_MAX / 4, 0, out),
                     DQ_ERR_OVERFLOW);
    m[4] = NAN;
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 2, 3, 3, 0, out), DQ_ERR_NONFINITE);
    m[4] = 5;
    out[1] = NAN;
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 2, 3, 3, 1, out), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_smooth_weight_absmax(m, 2, 3, 3, 0, out), DQ_OK); /* starts over */
    ck_assert_float_eq(out[1], 5.0f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("smooth");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, factors_follow_formula_and_clamps);
    tcase_add_test(tc, weight_absmax_over_shared_layers);
    tcase_add_test(tc, bad_input);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
