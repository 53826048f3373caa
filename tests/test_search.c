/* The pruned greedy search against the plain one (its oracle): identical records and
 * bit-identical products on random, outlier-heavy, outlier-free, tied and golden inputs, block
 * lengths 2..256, steps 0..512, shared and per-block matrices, remainder blocks, both exchange
 * rules, any thread count; and through a whole R1, zigzag, R2 chain, the same permutation. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_golden.h"
#include "dq_search.h"
#include "dq_test.h"
#include "test_alloc.h"
#include "test_wprep.h"
#include "dq_check_run.h"

enum { DATA_OUTLIERS, DATA_GAUSSIAN, DATA_TIES, DATA_MASSIVE };

static float *new_data(uint64_t seed, int64_t rows, int64_t cols, int kind)
{
    test_rng rng = {seed};
    float *x = malloc((size_t)(rows * cols) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    if (kind == DATA_OUTLIERS) {
        test_fill_activations(&rng, x, rows, cols, cols, 1);
    } else if (kind == DATA_GAUSSIAN) {
        for (int64_t i = 0; i < rows * cols; i++)
            x[i] = (float)test_rng_normal(&rng);
    } else if (kind == DATA_TIES) { /* small integers: exact ties everywhere */
        for (int64_t i = 0; i < rows * cols; i++)
            x[i] = (float)((int)(test_rng_uniform(&rng) * 7.0) - 3);
        x[(rows / 2) * cols + cols / 3] = 40.0f;
        x[(rows / 3) * cols + cols / 2] = -40.0f;
    } else { /* a few tokens with huge values in fixed channels, as in large models */
        for (int64_t i = 0; i < rows * cols; i++)
            x[i] = (float)test_rng_laplace(&rng);
        for (int64_t t = 0; t < rows; t += 11)
            for (int64_t j = 1; j < cols; j += cols / 3 + 1)
                x[t * cols + j] =
                    (float)((t & 1 ? -1 : 1) * (1000.0 + 500.0 * test_rng_uniform(&rng)));
    }
    return x;
}

typedef struct outcome {
    int64_t ids[513];
    int32_t swapped[513];
    float peaks[513];
    int32_t selected;
    int64_t rows_searched;
    float *r;
} outcome;

static void run_search(int32_t mode, int32_t threads, const dq__search_view *v, const float *base,
                       int32_t steps, bool row_rule, outcome *o)
{
    o->r = malloc((size_t)v->n * (size_t)v->n * sizeof(float));
    dq__search_record rec = {o->ids, o->swapped, o->peaks, -1, -1};
    ck_assert_int_eq(dq__greedy_search(test_threads(threads), mode, v, base, steps, row_rule,
                                       o->r, &rec),
                     DQ_OK);
    o->selected = rec.selected;
    o->rows_searched = rec.rows_searched;
}

static void assert_same(const outcome *a, const outcome *b, int32_t steps, int32_t n)
{
    for (int32_t k = 0; k <= steps; k++) {
        ck_assert_int_eq(a->ids[k], b->ids[k]);
        ck_assert_int_eq(a->swapped[k], b->swapped[k]);
        ck_assert(memcmp(&a->peaks[k], &b->peaks[k], sizeof(float)) == 0);
    }
    ck_assert_int_eq(a->selected, b->selected);
    ck_assert(memcmp(a->r, b->r, (size_t)n * (size_t)n * sizeof(float)) == 0);
}

/* Both searches on one view; returns the rows the pruned search multiplied. */
static int64_t compare_view(const dq__search_view *v, const float *base, int32_t steps,
                            bool row_rule, int32_t threads)
{
    outcome plain, pruned;
    run_search(DQ__SEARCH_PLAIN, 1, v, base, steps, row_rule, &plain);
    run_search(DQ__SEARCH_PRUNED, threads, v, base, steps, row_rule, &pruned);
    assert_same(&plain, &pruned, steps, v->n);
    ck_assert_int_eq(plain.rows_searched, v->tokens * v->blocks);
    ck_assert_int_le(pruned.rows_searched, v->tokens * v->blocks);
    free(plain.r);
    free(pruned.r);
    return pruned.rows_searched;
}

/* Every block length 2..256 (a sample of them), several data kinds and step counts. */
START_TEST(pruned_equals_plain_views)
{
    const int32_t lens[] = {2, 3, 5, 8, 17, 32, 63, 64, 100, 128, 256};
    const int32_t steps[] = {0, 1, 7, 64, 256, 512};
    long pruned_views = 0, views = 0;
    /* Under valgrind: blocks up to 128, searches longer than 64 steps on blocks up to 32. */
    const bool quick = test_under_valgrind();
    const int32_t long_steps_max_n = quick ? 32 : 64;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        const int32_t n = lens[li];
        if (quick && n > 128)
            continue;
        const int64_t blocks = n >= 128 ? 2 : 5, tokens = n >= 128 ? 24 : 40;
        float *base = malloc((size_t)n * (size_t)n * sizeof *base);
        ck_assert_int_eq(dq_rotation_base(n, NULL, base, n), DQ_OK);
        for (int kind = 0; kind < 4; kind++) {
            float *x = new_data(100 + (uint64_t)(li * 4 + (size_t)kind), tokens, blocks * n, kind);
            const dq__search_view v = {x, blocks * n, tokens, blocks, n, n};
            for (size_t si = 0; si < sizeof steps / sizeof *steps; si++) {
                if (steps[si] > 64 && n > long_steps_max_n && kind != DATA_MASSIVE)
                    continue; /* keep the suite fast: long searches on the outlier case */
                if (steps[si] > 64 && n > long_steps_max_n && quick)
                    continue;
                int64_t searched = compare_view(&v, base, steps[si], (si + li) % 2 == 1,
                                                1 + (int32_t)(si % 3));
                views++;
                pruned_views += searched < tokens * blocks;
            }
            free(x);
        }
        free(base);
    }
    /* Pruning must actually happen somewhere, or this suite tests nothing new. */
    printf("pruned_equals_plain_views: %ld of %ld views searched on fewer rows\n", pruned_views,
           views);
    ck_assert_int_gt(pruned_views, views / 4);
}
END_TEST

/* A view whose blocks are not adjacent in memory and do not start at column 0 (per-block and
 * remainder layouts), with a random base. */
START_TEST(pruned_equals_plain_strided)
{
    const int32_t n = 48;
    const int64_t tokens = 64, ldx = 5 * n + 7;
    float *x = new_data(7, tokens, ldx, DATA_OUTLIERS);
    float *q = malloc((size_t)(n - 1) * (size_t)(n - 1) * sizeof *q);
    float *base = malloc((size_t)n * (size_t)n * sizeof *base);
    ck_assert_int_eq(dq_rotation_random_orthogonal(n - 1, 3, q, n - 1), DQ_OK);
    ck_assert_int_eq(dq_rotation_base(n, q, base, n), DQ_OK);
    for (int64_t blocks = 1; blocks <= 4; blocks++) {
        const dq__search_view v = {x + 3, ldx, tokens, blocks, n + 2, n};
        compare_view(&v, base, 96, blocks % 2 == 0, 2);
    }
    free(x);
    free(q);
    free(base);
}
END_TEST

/* The Hadamard base (DQ_ROT_F_HADAMARD_BASE): every entry +-1/sqrt(n), so the norm bound is
 * loose; pruning must stay exact. */
START_TEST(pruned_equals_plain_hadamard_base)
{
    const int32_t lens[] = {2, 16, 64, 128};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        const int32_t n = lens[li];
        const int64_t blocks = 3, tokens = 32;
        float *base = malloc((size_t)n * (size_t)n * sizeof *base);
        ck_assert_int_eq(dq_rotation_hadamard(n, base, n), DQ_OK);
        for (int kind = 0; kind < 4; kind++) {
            float *x = new_data(300 + (uint64_t)(li * 4 + (size_t)kind), tokens, blocks * n, kind);
            const dq__search_view v = {x, blocks * n, tokens, blocks, n, n};
            compare_view(&v, base, 48, kind % 2 == 1, 2);
            free(x);
        }
        free(base);
    }
}
END_TEST

/* The same records and matrices for any worker count. */
START_TEST(thread_counts_agree)
{
    const int32_t n = 64;
    const int64_t tokens = 96, blocks = 4;
    float *x = new_data(11, tokens, blocks * n, DATA_MASSIVE);
    float *base = malloc((size_t)n * (size_t)n * sizeof *base);
    ck_assert_int_eq(dq_rotation_base(n, NULL, base, n), DQ_OK);
    const dq__search_view v = {x, blocks * n, tokens, blocks, n, n};
    outcome one;
    run_search(DQ__SEARCH_PRUNED, 1, &v, base, 128, false, &one);
    for (int32_t threads = 0; threads <= 4; threads++) {
        outcome many;
        run_search(DQ__SEARCH_PRUNED, threads, &v, base, 128, false, &many);
        assert_same(&one, &many, 128, n);
        ck_assert_int_eq(one.rows_searched, many.rows_searched);
        free(many.r);
    }
    free(one.r);
    free(x);
    free(base);
}
END_TEST

static dq__rot_opts opts(int32_t bs, int32_t steps, bool row_rule, bool per_block, bool random_q,
                         bool plain)
{
    return (dq__rot_opts){.method = DQ_ROT_METHOD_GREEDY, .block_size = bs, .max_steps = steps,
                          .row_rule = row_rule, .per_block = per_block,
                          .random_qprime = random_q, .seed = 5, .qprime = NULL,
                          .plain_search = plain};
}

static void assert_same_rotation(const dq_rotation *a, const dq_rotation *b)
{
    ck_assert_int_eq(a->n_mats, b->n_mats);
    ck_assert_int_eq(a->steps, b->steps);
    const int64_t last = a->n_mats - 1;
    size_t total = a->mat_offset[last] + (size_t)a->mat_size[last] * (size_t)a->mat_size[last];
    ck_assert(memcmp(a->data, b->data, total * sizeof(float)) == 0);
    ck_assert(memcmp(a->selected, b->selected, (size_t)a->n_mats * sizeof(int32_t)) == 0);
    size_t rec = (size_t)a->n_mats * ((size_t)a->steps + 1);
    ck_assert(memcmp(a->ids, b->ids, rec * sizeof(int64_t)) == 0);
    ck_assert(memcmp(a->swapped, b->swapped, rec * sizeof(int32_t)) == 0);
    ck_assert(memcmp(a->peaks, b->peaks, rec * sizeof(float)) == 0);
}

/* Builds R pruned and plain on x; returns the pruned one. */
static dq_rotation *both_builds(const dq__rot_opts *o, const float *x, int64_t rows, int64_t cols)
{
    dq__rot_opts plain = *o, pruned = *o;
    plain.plain_search = true;
    pruned.plain_search = false;
    dq_rotation *a = NULL, *b = NULL;
    ck_assert_int_eq(dq__rotation_build(NULL, &plain, x, rows, cols, cols, &a), DQ_OK);
    ck_assert_int_eq(dq__rotation_build(NULL, &pruned, x, rows, cols, cols, &b), DQ_OK);
    assert_same_rotation(a, b);
    dq_rotation_free(a);
    return b;
}

/* Shared R with a remainder block, per-block R, random Q': whole rotations agree bit for bit,
 * and so do the zigzag permutation and the second rotation built on the first. */
START_TEST(rotation_chain_agrees)
{
    const int64_t rows = 48;
    const int64_t widths[] = {200, 256, 131};
    for (int wi = 0; wi < 3; wi++) {
        const int64_t cols = widths[wi];
        for (int variant = 0; variant < 4; variant++) {
            float *x = new_data(20 + (uint64_t)(wi * 4 + variant), rows, cols,
                                variant == 3 ? DATA_GAUSSIAN : DATA_MASSIVE);
            dq__rot_opts o = opts(32, 80, variant == 0, variant == 1, variant == 2, false);
            dq_rotation *r1 = both_builds(&o, x, rows, cols);
            /* Rotate, deal the channels, search again: what a plan build does. */
            float *y = malloc((size_t)(rows * cols) * sizeof *y);
            float *key = calloc((size_t)cols, sizeof *key);
            int64_t *perm = malloc((size_t)cols * sizeof *perm);
            ck_assert_int_eq(dq__rotation_rows_exact(r1, x, cols, y, cols, rows, test_threads(2)), DQ_OK);
            dq__col_absmax(y, rows, cols, cols, key);
            ck_assert_int_eq(dq__zigzag(NULL, key, cols, 32, perm), DQ_OK);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++)
                    x[i * cols + j] = y[i * cols + perm[j]];
            dq_rotation *r2 = both_builds(&o, x, rows, cols);
            dq_rotation_free(r1);
            dq_rotation_free(r2);
            free(x);
            free(y);
            free(key);
            free(perm);
        }
    }
}
END_TEST

/* The reference cases: both searches of each, from the reference's own inputs. */
START_TEST(golden_inputs_agree)
{
    golden_case *cases;
    int absent;
    int n = golden_list(&cases, &absent);
    ck_assert_int_ge(n, 0);
    if (n == 0) {
        printf("golden_inputs_agree: no golden cases in %s, skipped\n", golden_dir());
        return;
    }
    for (int i = 0; i < n; i++) {
        double t, c, bs, steps, smooth;
        ck_assert_int_eq(golden_number(&cases[i], "params", "T", &t), 0);
        ck_assert_int_eq(golden_number(&cases[i], "params", "C", &c), 0);
        ck_assert_int_eq(golden_number(&cases[i], "params", "block_size", &bs), 0);
        ck_assert_int_eq(golden_number(&cases[i], "params", "max_rotation_step", &steps), 0);
        ck_assert_int_eq(golden_number(&cases[i], "params", "smooth_applied", &smooth), 0);
        const char *inputs[2] = {smooth != 0 ? "X_in" : "X", "X_rot1"};
        for (int k = 0; k < 2; k++) {
            float *x = NULL;
            int64_t r, cc;
            ck_assert_int_eq(golden_load_f32(&cases[i], inputs[k], &x, &r, &cc), 0);
            ck_assert_int_eq(r * cc, (int64_t)t * (int64_t)c);
            for (int rule = 0; rule < 2; rule++) {
                dq__rot_opts o = opts((int32_t)bs, (int32_t)steps, rule == 0, false, false, false);
                dq_rotation_free(both_builds(&o, x, (int64_t)t, (int64_t)c));
            }
            free(x);
        }
        printf("golden_inputs_agree: case %s ok\n", cases[i].name);
    }
    golden_free_cases(cases, n);
}
END_TEST

/* The product the searches use gives the portable loops' bits on this CPU, for edge sizes and
 * leading dimensions too. */
START_TEST(block_product_matches_portable)
{
    test_rng rng = {71};
    const int32_t dims[] = {1, 2, 3, 15, 16, 17, 33, 64, 65, 127, 128, 130, 256};
    const int64_t rows[] = {1, 5, 6, 7, 13, 40};
    for (size_t ki = 0; ki < sizeof dims / sizeof *dims; ki += 2)
        for (size_t ni = 0; ni < sizeof dims / sizeof *dims; ni++)
            for (size_t mi = 0; mi < sizeof rows / sizeof *rows; mi++) {
                const int32_t k = dims[ki], n = dims[ni];
                const int64_t m = rows[mi], lda = k + 3, ldb = n + 1, ldc = n + 5;
                float *a = malloc((size_t)(m * lda) * sizeof *a);
                float *b = malloc((size_t)(k * ldb) * sizeof *b);
                float *c1 = calloc((size_t)(m * ldc), sizeof *c1);
                float *c2 = calloc((size_t)(m * ldc), sizeof *c2);
                for (int64_t i = 0; i < m * lda; i++)
                    a[i] = (float)test_rng_laplace(&rng);
                for (int64_t i = 0; i < k * ldb; i++)
                    b[i] = (float)test_rng_normal(&rng);
                dq__block_product(a, lda, m, k, b, ldb, n, c1, ldc);
                dq__block_product_portable(a, lda, m, k, b, ldb, n, c2, ldc);
                ck_assert(memcmp(c1, c2, (size_t)(m * ldc) * sizeof *c1) == 0);
                dq__block_product_fused(a, lda, m, k, b, ldb, n, c1, ldc);
                dq__block_product_fused_portable(a, lda, m, k, b, ldb, n, c2, ldc);
                ck_assert(memcmp(c1, c2, (size_t)(m * ldc) * sizeof *c1) == 0);
                free(a);
                free(b);
                free(c1);
                free(c2);
            }
}
END_TEST

/* Step 0 of either search records the extremes of the whole view: checked against a plain
 * loop over the view in order (first index on ties), on tied, outlier-heavy and Gaussian data,
 * with extremes in any block of the extremes scan. */
START_TEST(first_extremes_match_plain_loop)
{
    const int32_t n = 64;
    const int64_t tokens = 37, blocks = 3;
    const int kinds[] = {DATA_TIES, DATA_OUTLIERS, DATA_GAUSSIAN, DATA_MASSIVE};
    float *base = malloc((size_t)n * (size_t)n * sizeof *base);
    ck_assert_int_eq(dq_rotation_base(n, NULL, base, n), DQ_OK);
    for (size_t ki = 0; ki < sizeof kinds / sizeof *kinds; ki++)
        for (uint64_t seed = 1; seed <= 6; seed++) {
            float *x = new_data(seed * 97 + ki, tokens, blocks * n, kinds[ki]);
            /* The plain loop, in view order: row r = t * blocks + b. */
            float vmax = -INFINITY, vmin = INFINITY;
            int64_t rmax = 0, rmin = 0, cmax = 0, cmin = 0;
            for (int64_t t = 0; t < tokens; t++)
                for (int64_t b = 0; b < blocks; b++)
                    for (int32_t j = 0; j < n; j++) {
                        float v = x[t * blocks * n + b * n + j];
                        if (v > vmax) {
                            vmax = v;
                            rmax = t * blocks + b;
                            cmax = j;
                        }
                        if (v < vmin) {
                            vmin = v;
                            rmin = t * blocks + b;
                            cmin = j;
                        }
                    }
            const bool take_max = fabsf(vmax) > fabsf(vmin);
            const dq__search_view v = {x, blocks * n, tokens, blocks, n, n};
            for (int32_t mode = 0; mode < 2; mode++)
                for (int rule = 0; rule < 2; rule++) {
                    outcome o;
                    run_search(mode == 0 ? DQ__SEARCH_PLAIN : DQ__SEARCH_PRUNED, 1, &v, base, 1,
                               rule == 1, &o);
                    ck_assert(o.peaks[0] == vmax - vmin);
                    ck_assert_int_eq(o.ids[0], rule == 1 ? (take_max ? rmax : rmin)
                                                         : (take_max ? cmax : cmin));
                    free(o.r);
                }
            free(x);
        }
    free(base);
}
END_TEST

/* The fused product rounds each multiply-add once: with rows (1, 1 + 2^-12) and columns
 * (-1, 1 + 2^-12), fma gives 2^-11 + 2^-24 exactly, where a rounded product then a sum gives
 * 2^-11. Checked for the full register tile and the edges, on both entry points. */
START_TEST(fused_product_is_fused)
{
    const float e = 1.0f + 0x1p-12f;
    const int64_t rows[] = {1, 6, 7, 12};
    const int32_t cols[] = {1, 17, 64, 65};
    for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++)
        for (size_t ci = 0; ci < sizeof cols / sizeof *cols; ci++) {
            const int64_t m = rows[ri];
            const int32_t n = cols[ci];
            float *a = malloc((size_t)(2 * m) * sizeof *a);
            float *b = malloc((size_t)(2 * n) * sizeof *b);
            float *c = malloc((size_t)(m * n) * sizeof *c);
            for (int64_t i = 0; i < m; i++) {
                a[2 * i] = 1.0f;
                a[2 * i + 1] = e;
            }
            for (int32_t j = 0; j < n; j++) {
                b[j] = -1.0f;
                b[n + j] = e;
            }
            for (int variant = 0; variant < 3; variant++) {
                if (variant == 0)
                    dq__block_product_fused(a, 2, m, 2, b, n, n, c, n);
                else if (variant == 1)
                    dq__block_product_fused_portable(a, 2, m, 2, b, n, n, c, n);
                else
                    dq__block_product(a, 2, m, 2, b, n, n, c, n);
                const float want = variant < 2 ? 0x1p-11f + 0x1p-24f : 0x1p-11f;
                for (int64_t i = 0; i < m * n; i++)
                    ck_assert_float_eq(c[i], want);
            }
            free(a);
            free(b);
            free(c);
        }
}
END_TEST

/* Out of memory anywhere in the pruned search: DQ_ERR_NOMEM, nothing leaked. */
START_TEST(allocation_failures_leak_nothing)
{
    const int32_t n = 32;
    float *x = new_data(31, 40, 3 * n, DATA_MASSIVE);
    float *base = malloc((size_t)n * (size_t)n * sizeof *base), *r = malloc((size_t)n * n * 4);
    ck_assert_int_eq(dq_rotation_base(n, NULL, base, n), DQ_OK);
    const dq__search_view v = {x, 3 * n, 40, 3, n, n};
    int64_t ids[65];
    int32_t swapped[65];
    float peaks[65];
    int ok = 0;
    for (long fail = 1; fail < 400 && !ok; fail++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.total + fail;
        dq__search_record rec = {ids, swapped, peaks, 0, 0};
        dq_status st = dq__greedy_search(ctx, DQ__SEARCH_PRUNED, &v, base, 64, false, r, &rec);
        if (st == DQ_OK)
            ok = 1;
        else
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
    ck_assert(ok);
    free(x);
    free(base);
    free(r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("search");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, pruned_equals_plain_views);
    tcase_add_test(tc, pruned_equals_plain_strided);
    tcase_add_test(tc, pruned_equals_plain_hadamard_base);
    tcase_add_test(tc, thread_counts_agree);
    tcase_add_test(tc, rotation_chain_agrees);
    tcase_add_test(tc, golden_inputs_agree);
    tcase_add_test(tc, block_product_matches_portable);
    tcase_add_test(tc, fused_product_is_fused);
    tcase_add_test(tc, first_extremes_match_plain_loop);
    tcase_add_test(tc, allocation_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
