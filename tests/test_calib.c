/* Calibrator: streaming statistics, samples, merging, bad input. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "test_transform.h"
#include "dq_check_run.h"

static dq_calib *new_calib(int32_t mode, int64_t tokens, int64_t cols)
{
    dq_calib_params p;
    dq_calib_params_init(&p, sizeof p);
    p.sample_mode = mode;
    p.sample_tokens = tokens;
    dq_calib *c = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, &p, cols, &c), DQ_OK);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Feeds x (rows x cols, ld) in uneven batches. */
static void feed(dq_calib *c, const float *x, int64_t rows, int64_t cols, int64_t ld)
{
    const int64_t sizes[] = {1, 7, 3, 16, 2};
    int64_t i = 0;
    for (int k = 0; i < rows; k++) {
        int64_t n = sizes[k % 5] < rows - i ? sizes[k % 5] : rows - i;
        ck_assert_int_eq(dq_calib_observe(c, x + i * ld, n, cols, ld), DQ_OK);
        i += n;
    }
}

START_TEST(statistics_match_naive)
{
    test_rng r = {1};
    const int64_t rows = 53, cols = 37, ld = 41;
    float *x = test_new_activations(&r, rows, cols, ld, 1);
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_FIRST, 16, cols);
    feed(c, x, rows, cols, ld);
    float absmax[37], mn[37], mx[37];
    int64_t tokens = 0;
    ck_assert_int_eq(dq_calib_tokens(c, &tokens), DQ_OK);
    ck_assert_int_eq(tokens, rows);
    ck_assert_int_eq(dq_calib_absmax(c, absmax, cols), DQ_OK);
    ck_assert_int_eq(dq_calib_minmax(c, mn, mx, cols), DQ_OK);
    for (int64_t j = 0; j < cols; j++) {
        float a = 0, lo = INFINITY, hi = -INFINITY;
        for (int64_t i = 0; i < rows; i++) {
            float v = x[i * ld + j];
            a = fmaxf(a, fabsf(v));
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        ck_assert_float_eq(absmax[j], a);
        ck_assert_float_eq(mn[j], lo);
        ck_assert_float_eq(mx[j], hi);
    }
    /* Either output of minmax may be omitted. */
    ck_assert_int_eq(dq_calib_minmax(c, NULL, mx, cols), DQ_OK);
    ck_assert_int_eq(dq_calib_minmax(c, mn, NULL, cols), DQ_OK);
    dq_calib_free(c);
    free(x);
}
END_TEST

START_TEST(first_tokens_sample)
{
    test_rng r = {2};
    const int64_t rows = 40, cols = 9, ld = 12;
    float *x = test_new_activations(&r, rows, cols, ld, 0);
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_FIRST, 25, cols);
    int64_t n = -1;
    ck_assert_int_eq(dq_calib_sample(c, NULL, 0, &n), DQ_OK);
    ck_assert_int_eq(n, 0);
    /* Fewer tokens than the budget: the sample is what was seen. */
    ck_assert_int_eq(dq_calib_observe(c, x, 10, cols, ld), DQ_OK);
    ck_assert_int_eq(dq_calib_sample(c, NULL, 0, &n), DQ_OK);
    ck_assert_int_eq(n, 10);
    feed(c, x + 10 * ld, rows - 10, cols, ld);
    ck_assert_int_eq(dq_calib_sample(c, NULL, 0, &n), DQ_OK);
    ck_assert_int_eq(n, 25);
    float *s = malloc(25 * 11 * sizeof *s);
    ck_assert_int_eq(dq_calib_sample(c, s, 11, &n), DQ_OK);
    for (int64_t i = 0; i < 25; i++)
        for (int64_t j = 0; j < cols; j++)
            ck_assert_float_eq(s[i * 11 + j], x[i * ld + j]);
    free(s);
    dq_calib_free(c);
    free(x);
}
END_TEST

START_TEST(sequence_mean_sample)
{
    test_rng r = {3};
    const int64_t len = 6, seqs = 5, cols = 8, rows = len * seqs;
    float *x = test_new_activations(&r, rows, cols, cols, 1);
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_SEQ_MEAN, len, cols);
    /* Batches that straddle sequence boundaries. */
    feed(c, x, rows - 1, cols, cols);
    int64_t n = -1;
    float *s = malloc((size_t)(len * cols) * sizeof *s);
    ck_assert_int_eq(dq_calib_sample(c, NULL, 0, &n), DQ_OK);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(dq_calib_sample(c, s, cols, &n), DQ_ERR_BAD_STATE);
    ck_assert_int_eq(dq_calib_observe(c, x + (rows - 1) * cols, 1, cols, cols), DQ_OK);
    ck_assert_int_eq(dq_calib_sample(c, s, cols, &n), DQ_OK);
    ck_assert_int_eq(n, len);
    for (int64_t p = 0; p < len; p++)
        for (int64_t j = 0; j < cols; j++) {
            double m = 0;
            for (int64_t q = 0; q < seqs; q++)
                m += x[(q * len + p) * cols + j];
            m /= (double)seqs;
            ck_assert_double_eq_tol(s[p * cols + j], m, 1e-6 * fmax(1.0, fabs(m)));
        }
    free(s);
    dq_calib_free(c);
    free(x);
}
END_TEST

START_TEST(statistics_only)
{
    test_rng r = {4};
    float *x = test_new_activations(&r, 5, 4, 4, 0);
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_NONE, 0, 4);
    ck_assert_int_eq(dq_calib_observe(c, x, 5, 4, 4), DQ_OK);
    int64_t n = -1;
    ck_assert_int_eq(dq_calib_sample(c, NULL, 0, &n), DQ_OK);
    ck_assert_int_eq(n, 0);
    float out[20];
    ck_assert_int_eq(dq_calib_sample(c, out, 4, &n), DQ_ERR_BAD_STATE);
    dq_calib_free(c);
    free(x);
}
END_TEST

/* Two calibrators fed halves, merged, equal one calibrator fed everything. */
START_TEST(merge_equals_single_stream)
{
    test_rng r = {5};
    const int64_t len = 4, rows = 24, cols = 11;
    float *x = test_new_activations(&r, rows, cols, cols, 1);
    const int32_t modes[] = {DQ_CALIB_SAMPLE_FIRST, DQ_CALIB_SAMPLE_SEQ_MEAN};
    for (int k = 0; k < 2; k++) {
        int64_t budget = modes[k] == DQ_CALIB_SAMPLE_FIRST ? 15 : len;
        dq_calib *all = new_calib(modes[k], budget, cols);
        dq_calib *a = new_calib(modes[k], budget, cols);
        dq_calib *b = new_calib(modes[k], budget, cols);
        feed(all, x, rows, cols, cols);
        feed(a, x, 8, cols, cols);
        feed(b, x + 8 * cols, rows - 8, cols, cols);
        ck_assert_int_eq(dq_calib_merge(a, b), DQ_OK);
        int64_t ta = 0, tb = 0, na = 0, nall = 0;
        dq_calib_tokens(a, &ta);
        dq_calib_tokens(b, &tb);
        ck_assert_int_eq(ta, rows);
        ck_assert_int_eq(tb, rows - 8);
        float s1[15 * 11], s2[15 * 11], m1[11], m2[11], lo1[11], lo2[11], hi1[11], hi2[11];
        ck_assert_int_eq(dq_calib_absmax(a, m1, cols), DQ_OK);
        ck_assert_int_eq(dq_calib_absmax(all, m2, cols), DQ_OK);
        ck_assert_int_eq(dq_calib_minmax(a, lo1, hi1, cols), DQ_OK);
        ck_assert_int_eq(dq_calib_minmax(all, lo2, hi2, cols), DQ_OK);
        ck_assert_mem_eq(m1, m2, sizeof m1);
        ck_assert_mem_eq(lo1, lo2, sizeof lo1);
        ck_assert_mem_eq(hi1, hi2, sizeof hi1);
        ck_assert_int_eq(dq_calib_sample(a, s1, cols, &na), DQ_OK);
        ck_assert_int_eq(dq_calib_sample(all, s2, cols, &nall), DQ_OK);
        ck_assert_int_eq(na, nall);
        for (int64_t i = 0; i < na * cols; i++)
            ck_assert_double_eq_tol(s1[i], s2[i], 1e-6 * fmax(1.0, fabs(s2[i])));
        dq_calib_free(all);
        dq_calib_free(a);
        dq_calib_free(b);
    }
    free(x);
}
END_TEST

START_TEST(merge_errors)
{
    test_rng r = {6};
    float *x = test_new_activations(&r, 6, 8, 8, 0);
    dq_calib *a = new_calib(DQ_CALIB_SAMPLE_SEQ_MEAN, 4, 8);
    dq_calib *b = new_calib(DQ_CALIB_SAMPLE_SEQ_MEAN, 4, 8);
    dq_calib *other_len = new_calib(DQ_CALIB_SAMPLE_SEQ_MEAN, 3, 8);
    dq_calib *other_mode = new_calib(DQ_CALIB_SAMPLE_FIRST, 4, 8);
    dq_calib *other_cols = new_calib(DQ_CALIB_SAMPLE_SEQ_MEAN, 4, 7);
    ck_assert_int_eq(dq_calib_merge(NULL, b), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_merge(a, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_merge(a, a), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_merge(a, other_len), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_merge(a, other_mode), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_merge(a, other_cols), DQ_ERR_SHAPE);
    /* A partial sequence cannot be merged: its tokens would land at the wrong positions. */
    ck_assert_int_eq(dq_calib_observe(b, x, 6, 8, 8), DQ_OK);
    ck_assert_int_eq(dq_calib_merge(a, b), DQ_ERR_BAD_STATE);
    int64_t t = -1;
    dq_calib_tokens(a, &t);
    ck_assert_int_eq(t, 0);
    dq_calib_free(a);
    dq_calib_free(b);
    dq_calib_free(other_len);
    dq_calib_free(other_mode);
    dq_calib_free(other_cols);
    free(x);
}
END_TEST

START_TEST(no_tokens_is_bad_state)
{
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_FIRST, 8, 16);
    float v[16];
    ck_assert_int_eq(dq_calib_absmax(c, v, 16), DQ_ERR_BAD_STATE);
    ck_assert_int_eq(dq_calib_minmax(c, v, NULL, 16), DQ_ERR_BAD_STATE);
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    p.block_size = 8;
    float w_absmax[16];
    for (int j = 0; j < 16; j++)
        w_absmax[j] = 1.0f;
    dq_plan *pl = (dq_plan *)w_absmax; /* any non-NULL value: must be reset to NULL */
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 16, &pl), DQ_ERR_BAD_STATE);
    ck_assert_ptr_null(pl);
    /* Even a plan that needs no statistics refuses an empty calibrator. */
    p.flags = 0;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, NULL, 16, &pl), DQ_ERR_BAD_STATE);
    dq_calib_free(c);
}
END_TEST

START_TEST(bad_arguments)
{
    float x[12] = {0};
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_FIRST, 4, 3);
    dq_calib *out = (dq_calib *)c;
    ck_assert_int_eq(dq_calib_create(NULL, NULL, 3, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_create(NULL, NULL, 0, &out), DQ_ERR_SHAPE);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(dq_calib_create(NULL, NULL, -3, &out), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_calib_observe(NULL, x, 4, 3, 3), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_observe(c, NULL, 4, 3, 3), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_observe(c, x, 0, 3, 3), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_calib_observe(c, x, 4, 3, 2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_calib_observe(c, x, 3, 4, 4), DQ_ERR_SHAPE); /* width differs */
    ck_assert_int_eq(dq_calib_observe(c, x, INT64_MAX / 2, 3, INT64_MAX / 4), DQ_ERR_OVERFLOW);
    int64_t t;
    float v[3];
    ck_assert_int_eq(dq_calib_tokens(NULL, &t), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_tokens(c, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_observe(c, x, 4, 3, 3), DQ_OK);
    ck_assert_int_eq(dq_calib_absmax(NULL, v, 3), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_absmax(c, NULL, 3), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_absmax(c, v, 2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_calib_minmax(c, NULL, NULL, 3), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_minmax(c, v, v, 4), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_calib_sample(c, v, 3, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_sample(NULL, v, 3, &t), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_calib_sample(c, x, 2, &t), DQ_ERR_SHAPE);
    dq_calib_free(c);
    dq_calib_free(NULL);
}
END_TEST

/* Non-finite data is refused and leaves the statistics untouched. */
START_TEST(non_finite_is_all_or_nothing)
{
    float x[2 * 5] = {1, 2, 3, NAN, INFINITY, 4, 5, 6, 7, NAN}; /* ld 5, cols 3 */
    dq_calib *c = new_calib(DQ_CALIB_SAMPLE_FIRST, 4, 3);
    ck_assert_int_eq(dq_calib_observe(c, x, 2, 3, 5), DQ_OK); /* padding is never read */
    float bad[3] = {1, NAN, 2};
    ck_assert_int_eq(dq_calib_observe(c, bad, 1, 3, 3), DQ_ERR_NONFINITE);
    bad[1] = -INFINITY;
    ck_assert_int_eq(dq_calib_observe(c, bad, 1, 3, 3), DQ_ERR_NONFINITE);
    int64_t t = 0;
    dq_calib_tokens(c, &t);
    ck_assert_int_eq(t, 2);
    float v[3];
    ck_assert_int_eq(dq_calib_absmax(c, v, 3), DQ_OK);
    ck_assert_float_eq(v[0], 4.0f);
    ck_assert_float_eq(v[1], 5.0f);
    ck_assert_float_eq(v[2], 6.0f);
    dq_calib_free(c);
}
END_TEST

START_TEST(bad_params)
{
    dq_calib_params p;
    dq_calib *c = NULL;
    dq_calib_params_init(&p, sizeof p);
    p.sample_mode = 3;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 4, &c), DQ_ERR_INVALID_ARG);
    p.sample_mode = -1;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 4, &c), DQ_ERR_INVALID_ARG);
    dq_calib_params_init(&p, sizeof p);
    p.sample_tokens = 0;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 4, &c), DQ_ERR_INVALID_ARG);
    dq_calib_params_init(&p, sizeof p);
    p.flags = 1;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 4, &c), DQ_ERR_INVALID_ARG);
    dq_calib_params_init(&p, sizeof p);
    p.sample_tokens = INT64_MAX / 2;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 1 << 20, &c), DQ_ERR_OVERFLOW);
    dq_calib_params_init(&p, sizeof p);
    p.struct_size = 4;
    ck_assert_int_eq(dq_calib_create(NULL, &p, 4, &c), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_calib_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_calib_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    /* A newer caller's struct with a non-zero unknown tail. */
    struct {
        dq_calib_params p;
        unsigned char tail[8];
    } big;
    memset(&big, 0, sizeof big);
    ck_assert_int_eq(dq_calib_params_init(&big.p, sizeof big), DQ_OK);
    ck_assert_int_eq(dq_calib_create(NULL, &big.p, 4, &c), DQ_OK);
    dq_calib_free(c);
    big.tail[3] = 1;
    ck_assert_int_eq(dq_calib_create(NULL, &big.p, 4, &c), DQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    const int32_t modes[] = {DQ_CALIB_SAMPLE_FIRST, DQ_CALIB_SAMPLE_SEQ_MEAN};
    for (int k = 0; k < 2; k++) {
        int ok = 0;
        for (long fail = 1; fail < 20 && !ok; fail++) {
            test_alloc a = {0, 0, 0};
            dq_context *ctx = test_alloc_context(&a);
            ck_assert_ptr_nonnull(ctx);
            a.fail_at = a.total + fail; /* count from after the context itself */
            dq_calib_params p;
            dq_calib_params_init(&p, sizeof p);
            p.sample_mode = modes[k];
            p.sample_tokens = 4;
            dq_calib *c = (dq_calib *)ctx;
            dq_status st = dq_calib_create(ctx, &p, 16, &c);
            if (st == DQ_OK) {
                ok = 1;
                dq_calib_free(c);
            } else {
                ck_assert_int_eq(st, DQ_ERR_NOMEM);
                ck_assert_ptr_null(c);
            }
            dq_context_free(ctx);
            ck_assert_int_eq(a.live, 0);
        }
        ck_assert(ok);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("calib");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, statistics_match_naive);
    tcase_add_test(tc, first_tokens_sample);
    tcase_add_test(tc, sequence_mean_sample);
    tcase_add_test(tc, statistics_only);
    tcase_add_test(tc, merge_equals_single_stream);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, merge_errors);
    tcase_add_test(bad, no_tokens_is_bad_state);
    tcase_add_test(bad, bad_arguments);
    tcase_add_test(bad, non_finite_is_all_or_nothing);
    tcase_add_test(bad, bad_params);
    tcase_add_test(bad, allocation_failures_leak_nothing);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
