/* The random orthogonal matrices (dq__random_orthogonal: columns in groups, every CPU variant,
 * and the one-column path) against an oracle written here, modified Gram-Schmidt one column
 * at a time: the same bits for every size around the group width, for several seeds, with
 * redraws forced anywhere in a group, and no leak when an allocation fails. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "dq_transform.h"
#include "test_alloc.h"
#include "dq_check_run.h"

/* One column after the other: drawn, projected on every finished column in turn, drawn again
 * (at most 16 draws) while the remainder's norm is <= min_norm, normalised. */
static void oracle(int32_t n, uint64_t seed, double min_norm, float *out)
{
    double *q = malloc((size_t)n * (size_t)n * sizeof *q);
    ck_assert_ptr_nonnull(q);
    uint64_t state = seed;
    for (int32_t j = 0; j < n; j++) {
        double *v = q + (size_t)j * (size_t)n, norm = 0.0;
        for (int draw = 0; draw < 16 && !(norm > min_norm); draw++) {
            dq__gaussian_fill(&state, v, n);
            for (int32_t p = 0; p < j; p++) {
                const double *u = q + (size_t)p * (size_t)n;
                double d = 0.0;
                for (int32_t i = 0; i < n; i++)
                    d += u[i] * v[i];
                for (int32_t i = 0; i < n; i++)
                    v[i] -= d * u[i];
            }
            norm = 0.0;
            for (int32_t i = 0; i < n; i++)
                norm += v[i] * v[i];
            norm = sqrt(norm);
        }
        for (int32_t i = 0; i < n; i++)
            v[i] /= norm;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            out[(size_t)i * (size_t)n + (size_t)j] = (float)q[(size_t)j * (size_t)n + (size_t)i];
    free(q);
}

static void check_same(int32_t n, uint64_t seed, double min_norm)
{
    float *a = malloc((size_t)n * (size_t)n * sizeof *a);
    float *b = malloc((size_t)n * (size_t)n * sizeof *b);
    ck_assert(a && b);
    oracle(n, seed, min_norm, a);
    /* The CPU's variant through the plain entry point, then every path by name (the AVX2
     * one runs the AVX2 code where the CPU has it, the CPU's variant otherwise). */
    const int32_t paths[] = {-1, DQ__ORTH_GROUPS, DQ__ORTH_ONE_COLUMN, DQ__ORTH_GROUPS_PORTABLE,
                             DQ__ORTH_GROUPS_AVX2};
    for (size_t k = 0; k < sizeof paths / sizeof *paths; k++) {
        if (paths[k] < 0 && min_norm != 1e-6)
            continue;
        dq_status st = paths[k] < 0 ? dq__random_orthogonal(NULL, n, seed, b, n)
                                    : dq__random_orthogonal_with(NULL, n, seed, min_norm,
                                                                 paths[k], b, n);
        ck_assert_int_eq(st, DQ_OK);
        if (memcmp(a, b, (size_t)n * (size_t)n * sizeof *a) != 0)
            ck_abort_msg("n %d, seed %llu, min_norm %g, path %d: not the oracle's bits", (int)n,
                         (unsigned long long)seed, min_norm, (int)paths[k]);
    }
    free(a);
    free(b);
}

START_TEST(same_bits_as_one_column_at_a_time)
{
    /* Around the group width (32) and its lanes (8): partial, exact and one-past groups. */
    const int32_t sizes[] = {1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 130};
    const uint64_t seeds[] = {0, 5, 0x9E3779B97F4A7C15ull};
    for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++)
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
            check_same(sizes[k], seeds[s], 1e-6);
}
END_TEST

START_TEST(same_bits_with_redraws)
{
    /* A remainder after j projections has norm about sqrt(n - j): thresholds near sqrt(n)
     * make columns in every position of a group fail once, several times or all 16 draws. */
    const int32_t sizes[] = {9, 24, 41, 70};
    const double fractions[] = {0.6, 0.85, 1.0, 1.3};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (size_t f = 0; f < sizeof fractions / sizeof *fractions; f++)
            check_same(sizes[k], 11 + k, fractions[f] * sqrt((double)sizes[k]));
}
END_TEST

START_TEST(redraws_happen_at_these_thresholds)
{
    /* The redraw case above is not vacuous: with the threshold, some column needs more than
     * one draw, so the matrix differs from the one without it. */
    const int32_t n = 24;
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    ck_assert(a && b);
    ck_assert_int_eq(dq__random_orthogonal(NULL, n, 12, a, n), DQ_OK);
    ck_assert_int_eq(
        dq__random_orthogonal_with(NULL, n, 12, 0.6 * sqrt((double)n), DQ__ORTH_GROUPS, b, n),
        DQ_OK);
    ck_assert(memcmp(a, b, (size_t)n * n * sizeof *a) != 0);
    free(a);
    free(b);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    const int32_t n = 12;
    float out[12 * 12];
    int ok = 0;
    for (long fail = 1; fail < 10 && !ok; fail++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.total + fail;
        dq_status st = dq__random_orthogonal(ctx, n, 3, out, n);
        if (st == DQ_OK)
            ok = 1;
        else
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
    ck_assert(ok);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("random_orthogonal");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, same_bits_as_one_column_at_a_time);
    tcase_add_test(tc, same_bits_with_redraws);
    tcase_add_test(tc, redraws_happen_at_these_thresholds);
    tcase_add_test(tc, allocation_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
