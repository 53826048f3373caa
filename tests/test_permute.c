/* Zigzag permutation: the reference's dealing on equal blocks, remainder blocks, bad input. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dq_test.h"
#include "duquant.h"
#include "dq_check_run.h"

/* The reference's procedure for equal blocks, written out the slow way: repeatedly pick the
 * largest remaining key (first index on ties), deal it to the zigzag block, then sort each
 * block by key, descending, keeping the dealing order among equal keys (insertion sort). */
static void zigzag_oracle(const float *key, int64_t n, int32_t bs, int64_t *perm)
{
    int64_t k = n / bs, cur = 0;
    int up = 1;
    char *used = calloc((size_t)n, 1);
    int64_t *fill = calloc((size_t)k, sizeof *fill);
    for (int64_t i = 0; i < n; i++) {
        int64_t best = -1;
        for (int64_t j = 0; j < n; j++)
            if (!used[j] && (best < 0 || key[j] > key[best]))
                best = j;
        used[best] = 1;
        perm[cur * bs + fill[cur]++] = best;
        if (up) {
            if (++cur == k) {
                cur = k - 1;
                up = 0;
            }
        } else if (--cur < 0) {
            cur = 0;
            up = 1;
        }
    }
    for (int64_t b = 0; b < k; b++)
        for (int64_t i = 1; i < bs; i++)
            for (int64_t j = i; j > 0 && key[perm[b * bs + j]] > key[perm[b * bs + j - 1]]; j--) {
                int64_t t = perm[b * bs + j];
                perm[b * bs + j] = perm[b * bs + j - 1];
                perm[b * bs + j - 1] = t;
            }
    free(used);
    free(fill);
}

static void assert_permutation(const int64_t *perm, int64_t n)
{
    char *seen = calloc((size_t)n, 1);
    for (int64_t j = 0; j < n; j++) {
        ck_assert(perm[j] >= 0 && perm[j] < n);
        ck_assert(!seen[perm[j]]);
        seen[perm[j]] = 1;
    }
    free(seen);
}

START_TEST(matches_reference_dealing)
{
    test_rng r = {31};
    const int64_t sizes[][2] = {{16, 4}, {64, 16}, {256, 64}, {96, 32}, {7, 7}, {30, 3}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s][0];
        int32_t bs = (int32_t)sizes[s][1];
        float *key = malloc((size_t)n * sizeof *key);
        int64_t *mine = malloc((size_t)n * sizeof *mine), *ref = malloc((size_t)n * sizeof *ref);
        for (int tie = 0; tie < 2; tie++) {
            /* With tie = 1 keys repeat a lot: only a stable sort gets the order right. */
            for (int64_t j = 0; j < n; j++)
                key[j] = tie ? (float)(test_rng_u64(&r) % 5) : (float)fabs(test_rng_laplace(&r));
            ck_assert_int_eq(dq_permutation_zigzag(key, n, bs, mine), DQ_OK);
            zigzag_oracle(key, n, bs, ref);
            ck_assert_mem_eq(mine, ref, (size_t)n * sizeof *mine);
        }
        free(key);
        free(mine);
        free(ref);
    }
}
END_TEST

/* A shorter last block is filled to its own length; every block spans a wide range of keys. */
START_TEST(remainder_block)
{
    const int64_t sizes[][2] = {{172, 64}, {300, 128}, {5, 4}, {3, 8}, {129, 128}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s][0];
        int32_t bs = (int32_t)sizes[s][1];
        float *key = malloc((size_t)n * sizeof *key);
        int64_t *perm = malloc((size_t)n * sizeof *perm);
        for (int64_t j = 0; j < n; j++)
            key[j] = (float)((j * 37) % n); /* distinct keys 0..n-1 */
        ck_assert_int_eq(dq_permutation_zigzag(key, n, bs, perm), DQ_OK);
        assert_permutation(perm, n);
        int64_t blocks = (n + bs - 1) / bs;
        for (int64_t b = 0; b < blocks; b++) {
            int64_t len = n - b * bs < bs ? n - b * bs : bs;
            for (int64_t i = 1; i < len; i++)
                ck_assert_float_gt(key[perm[b * bs + i - 1]], key[perm[b * bs + i]]);
        }
        /* The K largest keys go one to each block, in order. */
        for (int64_t b = 0; b < blocks; b++)
            ck_assert_float_eq(key[perm[b * bs]], (float)(n - 1 - b));
        free(key);
        free(perm);
    }
}
END_TEST

START_TEST(bad_input)
{
    float key[4] = {1, 2, 3, 4};
    int64_t perm[4];
    ck_assert_int_eq(dq_permutation_zigzag(NULL, 4, 2, perm), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_permutation_zigzag(key, 4, 2, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_permutation_zigzag(key, 4, 0, perm), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_permutation_zigzag(key, 0, 2, perm), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_permutation_zigzag(key, INT64_MAX, 2, perm), DQ_ERR_OVERFLOW);
    key[2] = NAN;
    ck_assert_int_eq(dq_permutation_zigzag(key, 4, 2, perm), DQ_ERR_NONFINITE);
    key[2] = -INFINITY;
    ck_assert_int_eq(dq_permutation_zigzag(key, 4, 2, perm), DQ_ERR_NONFINITE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("permute");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, matches_reference_dealing);
    tcase_add_test(tc, remainder_block);
    tcase_add_test(tc, bad_input);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
