/* Randomised Hadamard rotations of any width: which construction each width gets, orthogonality,
 * Hadamard entries, seeding, one full-width block inside a plan, bad input. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

/* The widths of the specification with the construction each must get. */
static const struct {
    int32_t n, kind;
    int64_t order;
} widths[] = {
    {8, DQ_HADAMARD_SYLVESTER, 1},       {12, DQ_HADAMARD_PALEY1, 12},
    {20, DQ_HADAMARD_PALEY1, 20},        {24, DQ_HADAMARD_PALEY1, 12},
    {28, DQ_HADAMARD_PALEY2, 28},        {36, DQ_HADAMARD_PALEY2, 36},
    {172, DQ_HADAMARD_RANDOM_ORTHOGONAL, 172}, {256, DQ_HADAMARD_SYLVESTER, 1},
    {1, DQ_HADAMARD_SYLVESTER, 1},       {3, DQ_HADAMARD_RANDOM_ORTHOGONAL, 3},
};

static float *random_hadamard(int32_t n, uint64_t seed, int32_t *kind)
{
    float *a = malloc((size_t)n * (size_t)n * sizeof *a);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(dq_rotation_random_hadamard(n, seed, a, n, kind), DQ_OK);
    return a;
}

/* max |A A^T - I| in double. */
static double orthogonality_error(const float *a, int32_t n, int64_t lda)
{
    double worst = 0.0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++) {
            double d = 0.0;
            for (int32_t k = 0; k < n; k++)
                d += (double)a[i * lda + k] * (double)a[j * lda + k];
            worst = fmax(worst, fabs(d - (i == j ? 1.0 : 0.0)));
        }
    return worst;
}

START_TEST(construction_per_width)
{
    for (size_t t = 0; t < sizeof widths / sizeof widths[0]; t++) {
        int32_t kind = -1;
        int64_t order = -1;
        ck_assert_int_eq(dq_rotation_hadamard_kind(widths[t].n, &kind, &order), DQ_OK);
        ck_assert_msg(kind == widths[t].kind && order == widths[t].order,
                      "width %d: kind %d order %lld", (int)widths[t].n, (int)kind,
                      (long long)order);
        int32_t used = -1;
        float *a = random_hadamard(widths[t].n, 7, &used);
        ck_assert_int_eq(used, kind);
        free(a);
    }
}
END_TEST

START_TEST(orthonormal_every_width)
{
    for (size_t t = 0; t < sizeof widths / sizeof widths[0]; t++) {
        int32_t n = widths[t].n;
        float *a = random_hadamard(n, 11, NULL);
        double err = orthogonality_error(a, n, n);
        ck_assert_msg(err < 1e-5, "width %d: max |A A^T - I| = %g", (int)n, err);
        free(a);
    }
    /* Every width up to 300 is orthonormal whichever construction it gets. */
    for (int32_t n = 1; n <= 300; n++) {
        float *a = random_hadamard(n, (uint64_t)n, NULL);
        double err = orthogonality_error(a, n, n);
        ck_assert_msg(err < 1e-5, "width %d: max |A A^T - I| = %g", (int)n, err);
        free(a);
    }
}
END_TEST

START_TEST(hadamard_entries_where_constructed)
{
    for (int32_t n = 1; n <= 300; n++) {
        int32_t kind;
        float *a = random_hadamard(n, 3, &kind);
        const float h = (float)(1.0 / sqrt((double)n));
        int64_t off = 0;
        for (int64_t i = 0; i < (int64_t)n * n; i++)
            off += fabsf(a[i]) != h;
        /* Hadamard matrices exist only for orders 1, 2 and multiples of 4. */
        if (n > 2 && n % 4 != 0)
            ck_assert_int_eq(kind, DQ_HADAMARD_RANDOM_ORTHOGONAL);
        if ((n & (n - 1)) == 0)
            ck_assert_int_eq(kind, DQ_HADAMARD_SYLVESTER);
        if (kind == DQ_HADAMARD_RANDOM_ORTHOGONAL)
            ck_assert_msg(off > 0, "width %d: random fallback has Hadamard entries", (int)n);
        else
            ck_assert_msg(off == 0, "width %d (kind %d): %lld entries not +-1/sqrt(n)", (int)n,
                          (int)kind, (long long)off);
        free(a);
    }
}
END_TEST

START_TEST(signs_are_seeded)
{
    const int32_t ns[] = {8, 12, 28, 172};
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        int32_t n = ns[t];
        size_t bytes = (size_t)n * (size_t)n * sizeof(float);
        float *a = random_hadamard(n, 42, NULL), *b = random_hadamard(n, 42, NULL);
        float *c = random_hadamard(n, 43, NULL);
        ck_assert_msg(memcmp(a, b, bytes) == 0, "width %d: same seed, other matrix", (int)n);
        ck_assert_msg(memcmp(a, c, bytes) != 0, "width %d: seed ignored", (int)n);
        free(a), free(b), free(c);
    }
}
END_TEST

/* A plan with block_size = width applies one rotation of the full width: x * G = x * M. */
START_TEST(plan_rotates_full_width_block)
{
    const int64_t widths_used[] = {64, 172, 12};
    for (size_t t = 0; t < 3; t++) {
        const int64_t n = widths_used[t], rows = 5;
        dq_plan_params pp;
        dq_plan_params_init(&pp, sizeof pp);
        pp.flags = DQ_PLAN_F_ROTATE;
        pp.method = DQ_ROT_METHOD_RANDOM_HADAMARD;
        pp.block_size = (int32_t)n;
        pp.seed = 9;
        dq_plan *pl = NULL;
        ck_assert_int_eq(dq_plan_build(NULL, &pp, NULL, NULL, n, &pl), DQ_OK);
        const dq_rotation *r = NULL;
        ck_assert_int_eq(dq_plan_rotation(pl, 0, &r), DQ_OK);
        int64_t n_blocks = 0;
        ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, &n_blocks, NULL), DQ_OK);
        ck_assert_int_eq(n_blocks, 1);
        float *m = malloc((size_t)(n * n) * sizeof *m);
        float *x = malloc((size_t)(rows * n) * sizeof *x);
        float *y = malloc((size_t)(rows * n) * sizeof *y);
        ck_assert_int_eq(dq_rotation_matrix(r, 0, m, n, NULL), DQ_OK);
        ck_assert(orthogonality_error(m, (int32_t)n, n) < 1e-5);
        for (int64_t i = 0; i < rows * n; i++)
            x[i] = (float)sin(0.37 * (double)i) + (i % 17 == 0 ? 8.0f : 0.0f);
        memcpy(y, x, (size_t)(rows * n) * sizeof *y);
        ck_assert_int_eq(dq_plan_apply_act(pl, y, rows, n, n, NULL, 0), DQ_OK);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < n; j++) {
                double want = 0.0;
                for (int64_t k = 0; k < n; k++)
                    want += (double)x[i * n + k] * (double)m[k * n + j];
                ck_assert_double_eq_tol(y[i * n + j], want, 1e-4);
            }
        free(m), free(x), free(y);
        dq_plan_free(pl);
    }
}
END_TEST

/* Block lengths that differ (12, 12, 6) each get their own construction. */
START_TEST(rotation_blocks_of_any_length)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    p.method = DQ_ROT_METHOD_RANDOM_HADAMARD;
    p.block_size = 12;
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 30, 0, &r), DQ_OK);
    int64_t n_mats = 0;
    ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, NULL, &n_mats), DQ_OK);
    for (int64_t k = 0; k < n_mats; k++) {
        int32_t n = 0;
        ck_assert_int_eq(dq_rotation_matrix(r, k, NULL, 0, &n), DQ_OK);
        float *a = malloc((size_t)n * (size_t)n * sizeof *a);
        ck_assert_int_eq(dq_rotation_matrix(r, k, a, n, NULL), DQ_OK);
        ck_assert(orthogonality_error(a, n, n) < 1e-5);
        free(a);
    }
    dq_rotation_free(r);
}
END_TEST

START_TEST(bad_widths)
{
    float one[4];
    int32_t kind;
    int64_t order;
    ck_assert_int_eq(dq_rotation_random_hadamard(0, 0, one, 1, NULL), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_hadamard(-4, 0, one, 1, NULL), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_hadamard(INT32_MAX, 0, one, INT32_MAX, NULL),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_hadamard(65537, 0, one, 65537, NULL), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_hadamard(2, 0, one, 1, NULL), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_hadamard(2, 0, NULL, 2, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_hadamard_kind(0, &kind, &order), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_hadamard_kind(-1, &kind, &order), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_hadamard_kind(INT64_MAX, &kind, &order), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_hadamard_kind(8, NULL, NULL), DQ_ERR_INVALID_ARG);
    /* A width above 4096 with no construction: refused before anything is written. */
    int32_t n = 4097;
    while (dq_rotation_hadamard_kind(n, &kind, NULL) == DQ_OK &&
           kind != DQ_HADAMARD_RANDOM_ORTHOGONAL)
        n++;
    ck_assert_int_eq(dq_rotation_random_hadamard(n, 0, one, n, NULL), DQ_ERR_UNSUPPORTED);
    /* The plan's block limit (4096) keeps 11008-wide inputs from one block. */
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = DQ_PLAN_F_ROTATE;
    pp.method = DQ_ROT_METHOD_RANDOM_HADAMARD;
    pp.block_size = 11008;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build(NULL, &pp, NULL, NULL, 11008, &pl), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(pl);
    pp.method = 4;
    pp.block_size = 8;
    ck_assert_int_eq(dq_plan_build(NULL, &pp, NULL, NULL, 8, &pl), DQ_ERR_INVALID_ARG);
}
END_TEST

/* Every allocation of a full-width block (the fallback's scratch included) may fail: the
 * error is DQ_ERR_NOMEM and nothing leaks. */
START_TEST(allocation_failures)
{
    const int64_t ns[] = {172, 12};
    for (size_t t = 0; t < 2; t++) {
        for (long fail = 1;; fail++) {
            test_alloc a = {0, 0, 0};
            dq_context *ctx = test_alloc_context(&a);
            ck_assert_ptr_nonnull(ctx);
            a.fail_at = a.total + fail;
            dq_rotation_params p;
            dq_rotation_params_init(&p, sizeof p);
            p.method = DQ_ROT_METHOD_RANDOM_HADAMARD;
            p.block_size = (int32_t)ns[t];
            dq_rotation *r = NULL;
            dq_status st = dq_rotation_create(ctx, &p, NULL, 0, ns[t], 0, &r);
            dq_rotation_free(r);
            dq_context_free(ctx);
            ck_assert_int_eq(a.live, 0);
            if (st == DQ_OK)
                break;
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("random_hadamard");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, construction_per_width);
    tcase_add_test(tc, orthonormal_every_width);
    tcase_add_test(tc, hadamard_entries_where_constructed);
    tcase_add_test(tc, signs_are_seeded);
    tcase_add_test(tc, plan_rotates_full_width_block);
    tcase_add_test(tc, rotation_blocks_of_any_length);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, bad_widths);
    tcase_add_test(bad, allocation_failures);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
