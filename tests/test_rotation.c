/* Block rotations: base matrices, Hadamard, random orthogonal, the greedy search against a
 * naive oracle, remainder blocks, per-block search, bad input. */
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

static dq_rotation_params rot_params(int32_t method, uint32_t flags, int32_t bs, int32_t steps)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    p.method = method;
    p.flags = flags;
    p.block_size = bs;
    p.max_steps = steps;
    return p;
}

static dq_rotation *new_rotation(const dq_rotation_params *p, const float *x, int64_t rows,
                                 int64_t cols, int64_t ld)
{
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, p, x, rows, cols, ld, &r), DQ_OK);
    ck_assert_ptr_nonnull(r);
    return r;
}

static float *matrix_of(const dq_rotation *r, int64_t m, int32_t *n)
{
    ck_assert_int_eq(dq_rotation_matrix(r, m, NULL, 0, n), DQ_OK);
    float *a = malloc((size_t)*n * (size_t)*n * sizeof *a);
    ck_assert_int_eq(dq_rotation_matrix(r, m, a, *n, NULL), DQ_OK);
    return a;
}

/* Rot_n by its definition: I, left-multiplied by each Givens rotation as a row operation on the
 * whole matrix, then rows and columns 0 and n-1 exchanged. */
static void rot_oracle(int32_t n, double *m)
{
    for (int32_t i = 0; i < n * n; i++)
        m[i] = i % (n + 1) == 0 ? 1.0 : 0.0;
    for (int32_t i = 0; i + 1 < n; i++) {
        double c = 1.0 / sqrt(i + 2.0), s = sqrt(i + 1.0) / sqrt(i + 2.0);
        for (int32_t j = 0; j < n; j++) {
            double a = m[i * n + j], b = m[(i + 1) * n + j];
            m[i * n + j] = c * a - s * b;
            m[(i + 1) * n + j] = s * a + c * b;
        }
    }
    for (int32_t j = 0; j < n; j++) {
        double t = m[j];
        m[j] = m[(n - 1) * n + j];
        m[(n - 1) * n + j] = t;
    }
    for (int32_t i = 0; i < n; i++) {
        double t = m[i * n];
        m[i * n] = m[i * n + n - 1];
        m[i * n + n - 1] = t;
    }
}

START_TEST(base_matches_givens_product)
{
    const int32_t sizes[] = {2, 3, 5, 16, 44, 64, 127, 128, 172};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int32_t n = sizes[k];
        double *ref = malloc((size_t)n * n * sizeof *ref);
        float *mine = malloc((size_t)n * (n + 3) * sizeof *mine);
        rot_oracle(n, ref);
        ck_assert_int_eq(dq_rotation_base(n, NULL, mine, n + 3), DQ_OK);
        double diff = 0;
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n; j++)
                diff = fmax(diff, fabs(mine[i * (n + 3) + j] - ref[i * n + j]));
        ck_assert_double_le(diff, 1e-7);
        ck_assert_double_le(test_orth_error(mine, n, n + 3), 1e-6);
        for (int32_t j = 0; j < n; j++) /* row 0 is uniform */
            ck_assert_double_eq_tol(mine[j], 1.0 / sqrt(n), 1e-7);
        free(ref);
        free(mine);
    }
}
END_TEST

START_TEST(base_times_qprime)
{
    const int32_t sizes[] = {2, 7, 64};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int32_t n = sizes[k], m = n - 1;
        double *rot = malloc((size_t)n * n * sizeof *rot);
        float *q = malloc((size_t)m * m * sizeof *q), *mine = malloc((size_t)n * n * sizeof *mine);
        rot_oracle(n, rot);
        ck_assert_int_eq(dq_rotation_random_orthogonal(m, 77 + k, q, m), DQ_OK);
        ck_assert_int_eq(dq_rotation_base(n, q, mine, n), DQ_OK);
        double diff = 0;
        for (int32_t i = 0; i < n; i++) {
            diff = fmax(diff, fabs(mine[i * n] - rot[i * n]));
            for (int32_t j = 1; j < n; j++) {
                double s = 0;
                for (int32_t l = 1; l < n; l++)
                    s += rot[i * n + l] * q[(l - 1) * m + (j - 1)];
                diff = fmax(diff, fabs(mine[i * n + j] - s));
            }
        }
        ck_assert_double_le(diff, 1e-6);
        ck_assert_double_le(test_orth_error(mine, n, n), 1e-5);
        free(rot);
        free(q);
        free(mine);
    }
}
END_TEST

START_TEST(hadamard_blocks)
{
    for (int32_t n = 1; n <= 256; n *= 2) {
        float *h = malloc((size_t)n * n * sizeof *h);
        ck_assert_int_eq(dq_rotation_hadamard(n, h, n), DQ_OK);
        ck_assert_double_le(test_orth_error(h, n, n), 1e-6);
        for (int32_t i = 0; i < n * n; i++)
            ck_assert_double_eq_tol(fabs(h[i]), 1.0 / sqrt(n), 1e-7);
        /* Sylvester order: H_2n = [[H, H], [H, -H]] / sqrt(2). */
        if (n >= 2) {
            int32_t k = n / 2;
            for (int32_t i = 0; i < k; i++)
                for (int32_t j = 0; j < k; j++) {
                    float a = h[i * n + j];
                    ck_assert_float_eq(h[i * n + j + k], a);
                    ck_assert_float_eq(h[(i + k) * n + j], a);
                    ck_assert_float_eq(h[(i + k) * n + j + k], -a);
                }
        }
        free(h);
    }
    float h[9];
    ck_assert_int_eq(dq_rotation_hadamard(3, h, 3), DQ_ERR_UNSUPPORTED);
}
END_TEST

START_TEST(random_orthogonal_blocks)
{
    const int32_t sizes[] = {1, 2, 3, 17, 128, 257};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int32_t n = sizes[k];
        float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
        ck_assert_int_eq(dq_rotation_random_orthogonal(n, 5, a, n), DQ_OK);
        ck_assert_double_le(test_orth_error(a, n, n), 1e-5);
        ck_assert_int_eq(dq_rotation_random_orthogonal(n, 5, b, n), DQ_OK);
        ck_assert_mem_eq(a, b, (size_t)n * n * sizeof *a);
        if (n > 1) {
            ck_assert_int_eq(dq_rotation_random_orthogonal(n, 6, b, n), DQ_OK);
            ck_assert(memcmp(a, b, (size_t)n * n * sizeof *a) != 0);
        }
        free(a);
        free(b);
    }
}
END_TEST

/* The greedy search written out naively: sequential flat argmax/argmin, step matrices applied
 * with double accumulation, the product of the best prefix in double (of the first `prefix`
 * steps instead when prefix >= 0). The base is Rot_n, or the Hadamard matrix with
 * hadamard_base. */
static void greedy_oracle(const float *x, int64_t t, int64_t cols, int32_t n, int32_t steps,
                          int row_rule, int hadamard_base, int32_t prefix, int64_t *ids,
                          float *peaks, int32_t *selected, double *r)
{
    const int64_t rows = t * (cols / n), total = rows * n;
    float *v = malloc((size_t)total * sizeof *v), *base = malloc((size_t)n * n * sizeof *base);
    float *rk = malloc((size_t)n * n * sizeof *rk);
    double *acc = malloc((size_t)n * sizeof *acc), *cur = malloc((size_t)n * n * sizeof *cur);
    double *nxt = malloc((size_t)n * n * sizeof *nxt);
    memcpy(v, x, (size_t)total * sizeof *v);
    if (hadamard_base)
        ck_assert_int_eq(dq_rotation_hadamard(n, base, n), DQ_OK);
    else
        ck_assert_int_eq(dq_rotation_base(n, NULL, base, n), DQ_OK);
    for (int32_t i = 0; i < n * n; i++)
        cur[i] = r[i] = i % (n + 1) == 0 ? 1.0 : 0.0;
    float best = INFINITY;
    for (int32_t k = 0; k <= steps; k++) {
        int64_t imax = 0, imin = 0;
        for (int64_t i = 1; i < total; i++) {
            if (v[i] > v[imax])
                imax = i;
            if (v[i] < v[imin])
                imin = i;
        }
        peaks[k] = v[imax] - v[imin];
        int64_t pick = fabsf(v[imax]) > fabsf(v[imin]) ? imax : imin;
        ids[k] = row_rule ? pick / n : pick % n;
        int32_t c = (int32_t)(row_rule ? (pick / n) % n : pick % n);
        if (peaks[k] < best) {
            best = peaks[k];
            *selected = k;
            if (prefix < 0)
                memcpy(r, cur, (size_t)n * n * sizeof *r);
        }
        if (k == prefix)
            memcpy(r, cur, (size_t)n * n * sizeof *r);
        if (k == steps)
            break;
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n; j++) {
                int32_t si = i == 0 ? c : (i == c ? 0 : i), sj = j == 0 ? c : (j == c ? 0 : j);
                rk[i * n + j] = base[si * n + sj];
            }
        for (int64_t row = 0; row < rows; row++) {
            float *p = v + row * n;
            for (int32_t j = 0; j < n; j++) {
                acc[j] = 0;
                for (int32_t l = 0; l < n; l++)
                    acc[j] += (double)p[l] * rk[l * n + j];
            }
            for (int32_t j = 0; j < n; j++)
                p[j] = (float)acc[j];
        }
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n; j++) {
                double s = 0;
                for (int32_t l = 0; l < n; l++)
                    s += cur[i * n + l] * rk[l * n + j];
                nxt[i * n + j] = s;
            }
        memcpy(cur, nxt, (size_t)n * n * sizeof *cur);
    }
    free(v);
    free(base);
    free(rk);
    free(acc);
    free(cur);
    free(nxt);
}

START_TEST(greedy_matches_oracle)
{
    test_rng rng = {41};
    const int64_t t = 24, cols = 96;
    const int32_t n = 32, steps = 40;
    float *x = test_new_activations(&rng, t, cols, cols, 1);
    int64_t ids[41], ref_ids[41];
    float peaks[41], ref_peaks[41];
    int32_t swapped[41];
    double *ref_r = malloc((size_t)n * n * sizeof *ref_r);
    const uint32_t flags[] = {0, DQ_ROT_F_ROW_RULE, DQ_ROT_F_HADAMARD_BASE};
    for (int f = 0; f < 3; f++) {
        const int rule = (flags[f] & DQ_ROT_F_ROW_RULE) != 0;
        dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, flags[f], n, steps);
        dq_rotation *r = new_rotation(&p, x, t, cols, cols);
        int32_t got_steps = 0, sel = -1, ref_sel = -2;
        ck_assert_int_eq(dq_rotation_trace(r, 0, &got_steps, &sel, ids, swapped, peaks, 41),
                         DQ_OK);
        ck_assert_int_eq(got_steps, steps);
        const int hadamard_base = (flags[f] & DQ_ROT_F_HADAMARD_BASE) != 0;
        greedy_oracle(x, t, cols, n, steps, rule, hadamard_base, -1, ref_ids, ref_peaks,
                      &ref_sel, ref_r);
        ck_assert_mem_eq(ids, ref_ids, sizeof ids);
        for (int k = 0; k <= steps; k++) {
            ck_assert_int_eq(swapped[k], rule ? ids[k] % n : ids[k]);
            ck_assert_double_eq_tol(peaks[k], ref_peaks[k], 1e-5 * ref_peaks[k]);
        }
        if (hadamard_base && sel != ref_sel) {
            /* H is an involution: a step that picks the previous step's column undoes it, so
             * the peaks repeat exactly in exact arithmetic and rounding decides which copy of
             * the minimum comes first. Both picks must be minima; compare the matrix of ours. */
            ck_assert_double_le(peaks[sel], ref_peaks[ref_sel] * (1 + 1e-5));
            ck_assert_double_le(ref_peaks[sel], ref_peaks[ref_sel] * (1 + 1e-5));
            greedy_oracle(x, t, cols, n, steps, rule, hadamard_base, sel, ref_ids, ref_peaks,
                          &ref_sel, ref_r);
        } else {
            ck_assert_int_eq(sel, ref_sel);
        }
        ck_assert_int_gt(sel, 0); /* the data has outliers: rotating must help */
        ck_assert_float_lt(peaks[sel], peaks[0]);
        int32_t size = 0;
        float *mine = matrix_of(r, 0, &size);
        ck_assert_int_eq(size, n);
        for (int32_t i = 0; i < n * n; i++)
            ck_assert_double_eq_tol(mine[i], ref_r[i], 1e-5);
        free(mine);
        dq_rotation_free(r);
    }
    free(ref_r);
    free(x);
}
END_TEST

/* With a Hadamard base, one step on a single outlier at column c is H with rows and columns 0
 * and c exchanged: the outlier lands on H's uniform row and is spread evenly (same sign) over
 * the block, the other channels on the remaining rows. */
START_TEST(hadamard_base_step)
{
    const int32_t n = 16, c = 5;
    const int64_t t = 4;
    float x[4 * 16], h[16 * 16];
    for (int64_t i = 0; i < t * n; i++)
        x[i] = (float)((i * 7) % 5) - 2.0f;
    x[2 * n + c] = 400.0f;
    ck_assert_int_eq(dq_rotation_hadamard(n, h, n), DQ_OK);
    dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_HADAMARD_BASE, n, 1);
    dq_rotation *r = new_rotation(&p, x, t, n, n);
    int32_t sel = -1, size = 0;
    int32_t swapped[2];
    ck_assert_int_eq(dq_rotation_trace(r, 0, NULL, &sel, NULL, swapped, NULL, 2), DQ_OK);
    ck_assert_int_eq(sel, 1);
    ck_assert_int_eq(swapped[0], c);
    float *m = matrix_of(r, 0, &size);
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++) {
            int32_t si = i == 0 ? c : (i == c ? 0 : i), sj = j == 0 ? c : (j == c ? 0 : j);
            ck_assert_float_eq(m[i * n + j], h[si * n + sj]);
        }
    ck_assert_int_eq(dq_rotation_apply(r, x, t, n, n), DQ_OK);
    /* 400 / sqrt(16) = 100 everywhere, plus the other 15 entries (|x| <= 2) spread by +-1/4:
     * at most 7.5 either way (8 leaves room for rounding). */
    for (int32_t j = 0; j < n; j++)
        ck_assert_float_eq_tol(x[2 * n + j], 100.0f, 8.0f);
    free(m);
    dq_rotation_free(r);
}
END_TEST

static void assert_same_matrix(const dq_rotation *a, int64_t ma, const dq_rotation *b, int64_t mb)
{
    int32_t na = 0, nb = 0;
    float *x = matrix_of(a, ma, &na), *y = matrix_of(b, mb, &nb);
    ck_assert_int_eq(na, nb);
    ck_assert_mem_eq(x, y, (size_t)na * na * sizeof *x);
    free(x);
    free(y);
}

/* Width 172 with block 64: blocks 64, 64, 44. Shared mode: one matrix searched on both full
 * blocks and one on the last block; per-block mode: one per block. Each must be exactly the
 * search run on those columns alone. */
START_TEST(remainder_and_per_block_layouts)
{
    test_rng rng = {42};
    const int64_t t = 20, cols = 172, ld = 180;
    const int32_t bs = 64;
    float *x = test_new_activations(&rng, t, cols, ld, 1);
    for (int per_block = 0; per_block < 2; per_block++) {
        dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY,
                                          per_block ? DQ_ROT_F_PER_BLOCK : 0, bs, 30);
        dq_rotation *r = new_rotation(&p, x, t, cols, ld);
        int64_t got_cols = 0, n_blocks = 0, n_mats = 0;
        int32_t got_bs = 0;
        ck_assert_int_eq(dq_rotation_layout(r, &got_cols, &got_bs, &n_blocks, &n_mats), DQ_OK);
        ck_assert_int_eq(got_cols, cols);
        ck_assert_int_eq(got_bs, bs);
        ck_assert_int_eq(n_blocks, 3);
        ck_assert_int_eq(n_mats, per_block ? 3 : 2);
        const int32_t sizes[3] = {64, 64, 44};
        const int64_t shared_of[3] = {0, 0, 1};
        for (int64_t b = 0; b < 3; b++) {
            int32_t size = 0;
            int64_t m = -1;
            ck_assert_int_eq(dq_rotation_block(r, b, &size, &m), DQ_OK);
            ck_assert_int_eq(size, sizes[b]);
            ck_assert_int_eq(m, per_block ? b : shared_of[b]);
        }
        ck_assert_double_le(test_rotation_orth_error(r), 1e-5);
        /* The same search on the columns alone. */
        dq_rotation_params q = rot_params(DQ_ROT_METHOD_GREEDY, 0, bs, 30);
        if (per_block) {
            for (int64_t b = 0; b < 3; b++) {
                dq_rotation *alone = new_rotation(&q, x + b * bs, t, sizes[b], ld);
                assert_same_matrix(r, b, alone, 0);
                dq_rotation_free(alone);
            }
        } else {
            dq_rotation *full = new_rotation(&q, x, t, 128, ld);
            dq_rotation *rest = new_rotation(&q, x + 128, t, 44, ld);
            assert_same_matrix(r, 0, full, 0);
            assert_same_matrix(r, 1, rest, 0);
            dq_rotation_free(full);
            dq_rotation_free(rest);
        }
        dq_rotation_free(r);
    }
    free(x);
}
END_TEST

START_TEST(wide_layouts)
{
    test_rng rng = {43};
    const int64_t widths[] = {5632, 300, 129};
    const int64_t blocks[] = {44, 3, 2}, mats[] = {1, 2, 2};
    for (int k = 0; k < 3; k++) {
        int64_t cols = widths[k];
        float *x = test_new_activations(&rng, 4, cols, cols, 1);
        dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 128, 8);
        dq_rotation *r = new_rotation(&p, x, 4, cols, cols);
        int64_t n_blocks = 0, n_mats = 0;
        dq_rotation_layout(r, NULL, NULL, &n_blocks, &n_mats);
        ck_assert_int_eq(n_blocks, blocks[k]);
        ck_assert_int_eq(n_mats, mats[k]);
        ck_assert_double_le(test_rotation_orth_error(r), 1e-5);
        if (cols == 129) { /* a one-channel block has nothing to search */
            int32_t n = 0;
            float one[1];
            ck_assert_int_eq(dq_rotation_matrix(r, 1, one, 1, &n), DQ_OK);
            ck_assert_int_eq(n, 1);
            ck_assert_float_eq(one[0], 1.0f);
            ck_assert_int_eq(dq_rotation_trace(r, 1, NULL, NULL, NULL, NULL, NULL, 0),
                             DQ_ERR_BAD_STATE);
        }
        dq_rotation_free(r);
        free(x);
    }
}
END_TEST

/* Many steps on outlier-heavy data, every mode: each block stays orthogonal. */
START_TEST(blocks_stay_orthogonal)
{
    test_rng rng = {44};
    const int64_t t = 32, cols = 256;
    float *x = test_new_activations(&rng, t, cols, cols, 1);
    const uint32_t flags[] = {0,
                              DQ_ROT_F_ROW_RULE,
                              DQ_ROT_F_PER_BLOCK,
                              DQ_ROT_F_RANDOM_QPRIME,
                              DQ_ROT_F_HADAMARD_BASE | DQ_ROT_F_PER_BLOCK,
                              DQ_ROT_F_HADAMARD_BASE | DQ_ROT_F_RANDOM_QPRIME};
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) {
        dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, flags[k], 64, 256);
        dq_rotation *r = new_rotation(&p, x, t, cols, cols);
        ck_assert_double_le(test_rotation_orth_error(r), 1e-5);
        dq_rotation_free(r);
    }
    for (int32_t method = DQ_ROT_METHOD_HADAMARD; method <= DQ_ROT_METHOD_RANDOM; method++) {
        dq_rotation_params p = rot_params(method, DQ_ROT_F_PER_BLOCK, 64, 0);
        dq_rotation *r = new_rotation(&p, NULL, 0, cols, 0);
        ck_assert_double_le(test_rotation_orth_error(r), 1e-5);
        ck_assert_int_eq(dq_rotation_trace(r, 0, NULL, NULL, NULL, NULL, NULL, 0),
                         DQ_ERR_BAD_STATE);
        dq_rotation_free(r);
    }
    free(x);
}
END_TEST

START_TEST(zero_steps_is_identity)
{
    test_rng rng = {45};
    float *x = test_new_activations(&rng, 8, 64, 64, 1);
    dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, 0);
    dq_rotation *r = new_rotation(&p, x, 8, 64, 64);
    int32_t steps = -1, sel = -1, n = 0;
    int64_t ids[1];
    ck_assert_int_eq(dq_rotation_trace(r, 0, &steps, &sel, ids, NULL, NULL, 1), DQ_OK);
    ck_assert_int_eq(steps, 0);
    ck_assert_int_eq(sel, 0);
    float *m = matrix_of(r, 0, &n);
    for (int32_t i = 0; i < n * n; i++)
        ck_assert_float_eq(m[i], i % (n + 1) == 0 ? 1.0f : 0.0f);
    free(m);
    dq_rotation_free(r);
    free(x);
}
END_TEST

START_TEST(apply_matches_naive)
{
    test_rng rng = {46};
    const int64_t t = 300, cols = 172, ld = 175;
    float *x = test_new_activations(&rng, t, cols, ld, 1);
    float *y = malloc((size_t)(t * ld) * sizeof *y);
    const uint32_t flags[] = {0, DQ_ROT_F_PER_BLOCK};
    for (int k = 0; k < 2; k++) {
        dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, flags[k], 64, 20);
        dq_rotation *r = new_rotation(&p, x, 16, cols, ld);
        memcpy(y, x, (size_t)(t * ld) * sizeof *y);
        ck_assert_int_eq(dq_rotation_apply(r, y, t, cols, ld), DQ_OK);
        float *ref = malloc((size_t)(t * ld) * sizeof *ref);
        memcpy(ref, x, (size_t)(t * ld) * sizeof *ref);
        test_rotation_naive(r, ref, t, cols, ld);
        ck_assert_double_le(test_rel_err(y, ld, ref, ld, t, cols), 1e-6);
        for (int64_t i = 0; i < t; i++) /* padding untouched */
            for (int64_t j = cols; j < ld; j++)
                ck_assert(isnan(y[i * ld + j]));
        free(ref);
        dq_rotation_free(r);
    }
    free(x);
    free(y);
}
END_TEST

START_TEST(seeded_randomness_is_deterministic)
{
    test_rng rng = {47};
    float *x = test_new_activations(&rng, 16, 128, 128, 1);
    for (int k = 0; k < 2; k++) {
        dq_rotation_params p = k == 0
                                   ? rot_params(DQ_ROT_METHOD_RANDOM, DQ_ROT_F_PER_BLOCK, 64, 0)
                                   : rot_params(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_RANDOM_QPRIME, 64,
                                                16);
        p.seed = 99;
        dq_rotation *a = new_rotation(&p, x, 16, 128, 128);
        dq_rotation *b = new_rotation(&p, x, 16, 128, 128);
        p.seed = 100;
        dq_rotation *c = new_rotation(&p, x, 16, 128, 128);
        assert_same_matrix(a, 0, b, 0);
        int32_t n = 0;
        float *ma = matrix_of(a, 0, &n), *mc = matrix_of(c, 0, &n);
        ck_assert(memcmp(ma, mc, (size_t)n * n * sizeof *ma) != 0);
        free(ma);
        free(mc);
        dq_rotation_free(a);
        dq_rotation_free(b);
        dq_rotation_free(c);
    }
    free(x);
}
END_TEST

START_TEST(trace_and_export_errors)
{
    test_rng rng = {48};
    float *x = test_new_activations(&rng, 8, 64, 64, 0);
    dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, 10);
    dq_rotation *r = new_rotation(&p, x, 8, 64, 64);
    int64_t ids[11];
    float peaks[11], m[32 * 32];
    int32_t steps = 0, n = 0;
    ck_assert_int_eq(dq_rotation_trace(r, 0, &steps, NULL, ids, NULL, peaks, 10), DQ_ERR_BUFFER);
    ck_assert_int_eq(steps, 10);
    ck_assert_int_eq(dq_rotation_trace(r, 0, NULL, NULL, NULL, NULL, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_rotation_trace(r, 1, NULL, NULL, ids, NULL, NULL, 11), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_trace(NULL, 0, NULL, NULL, ids, NULL, NULL, 11),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_matrix(r, 0, m, 31, &n), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_matrix(r, 0, NULL, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_matrix(r, -1, m, 32, &n), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_block(r, 2, &n, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_block(NULL, 0, &n, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_layout(NULL, NULL, NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_apply(NULL, x, 8, 64, 64), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_apply(r, NULL, 8, 64, 64), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_apply(r, x, 8, 63, 64), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_apply(r, x, 8, 64, 63), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_apply(r, x, INT64_MAX / 2, 64, INT64_MAX / 4), DQ_ERR_OVERFLOW);
    x[70] = NAN;
    ck_assert_int_eq(dq_rotation_apply(r, x, 8, 64, 64), DQ_ERR_NONFINITE);
    ck_assert(isnan(x[70]) && x[0] == x[0]);
    dq_rotation_free(r);
    dq_rotation_free(NULL);
    free(x);
}
END_TEST

START_TEST(bad_create_input)
{
    float x[64 * 4] = {0}, q[31 * 31] = {0};
    dq_rotation *r = (dq_rotation *)x;
    dq_rotation_params p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 0, 64, 64, &r), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 60, &r), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, INT64_MAX / 2, 64, INT64_MAX / 4, &r),
                     DQ_ERR_OVERFLOW);
    x[5] = INFINITY;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_NONFINITE);
    x[5] = 0;
    /* Parameters. */
    const int32_t bad_bs[] = {1, 0, -4, 4097};
    for (int k = 0; k < 4; k++) {
        p = rot_params(DQ_ROT_METHOD_GREEDY, 0, bad_bs[k], 4);
        ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    }
    p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, -1);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_RANDOM_HADAMARD + 1, 0, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_GREEDY, 0x100, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_HADAMARD, DQ_ROT_F_ROW_RULE, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 64, 0, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_RANDOM, DQ_ROT_F_HADAMARD_BASE, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 64, 0, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_RANDOM, 0, 32, 4);
    p.qprime = q;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 64, 0, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_RANDOM_QPRIME, 32, 4);
    p.qprime = q;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_INVALID_ARG);
    p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, 4);
    p.qprime = q;
    q[40] = NAN;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_NONFINITE);
    /* Hadamard needs power-of-two block lengths, the last one included: never silently. */
    p = rot_params(DQ_ROT_METHOD_HADAMARD, 0, 48, 0);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 96, 0, &r), DQ_ERR_UNSUPPORTED);
    p = rot_params(DQ_ROT_METHOD_HADAMARD, 0, 64, 0);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 172, 0, &r), DQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 0, 0, &r), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 192, 0, &r), DQ_OK); /* 64+64+64 */
    dq_rotation_free(r);
    /* So does a Hadamard base for the greedy search. */
    p = rot_params(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_HADAMARD_BASE, 24, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 48, 64, &r), DQ_ERR_UNSUPPORTED);
    p = rot_params(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_HADAMARD_BASE | DQ_ROT_F_PER_BLOCK, 32, 4);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 60, 64, &r), DQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 48, 64, &r), DQ_OK); /* 32+16 */
    dq_rotation_free(r);
    p = rot_params(DQ_ROT_METHOD_GREEDY, 0, 32, 4);
    p.struct_size = 8;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, 4, 64, 64, &r), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_rotation_params_init(&p, 3), DQ_ERR_STRUCT_SIZE);
    /* Base-matrix functions. */
    float m[16];
    ck_assert_int_eq(dq_rotation_base(4, NULL, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_base(1, NULL, m, 4), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_base(4, NULL, m, 3), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_base(4097, NULL, m, 4097), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_base(4, q + 38, m, 4), DQ_ERR_NONFINITE); /* q[40] is NaN */
    ck_assert_int_eq(dq_rotation_hadamard(4, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_hadamard(0, m, 4), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_hadamard(4, m, 2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_orthogonal(4, 1, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_random_orthogonal(0, 1, m, 4), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_random_orthogonal(4, 1, m, 3), DQ_ERR_SHAPE);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    test_rng rng = {49};
    float *x = test_new_activations(&rng, 8, 100, 100, 1);
    const int32_t methods[] = {DQ_ROT_METHOD_GREEDY, DQ_ROT_METHOD_RANDOM};
    const uint32_t flags[] = {DQ_ROT_F_RANDOM_QPRIME, DQ_ROT_F_PER_BLOCK};
    for (int k = 0; k < 2; k++) {
        int ok = 0;
        for (long fail = 1; fail < 60 && !ok; fail++) {
            test_alloc a = {0, 0, 0};
            dq_context *ctx = test_alloc_context(&a);
            ck_assert_ptr_nonnull(ctx);
            a.fail_at = a.total + fail; /* count from after the context itself */
            dq_rotation_params p = rot_params(methods[k], flags[k], 32, 6);
            dq_rotation *r = (dq_rotation *)x;
            dq_status st = dq_rotation_create(ctx, &p, x, 8, 100, 100, &r);
            if (st == DQ_OK) {
                ok = 1;
                dq_rotation_free(r);
            } else {
                ck_assert_int_eq(st, DQ_ERR_NOMEM);
                ck_assert_ptr_null(r);
            }
            dq_context_free(ctx);
            ck_assert_int_eq(a.live, 0);
        }
        ck_assert(ok);
    }
    free(x);
}
END_TEST

/* Finite rows whose block sums overflow once came back as Inf with DQ_OK (found by
 * fuzz_numeric): now DQ_ERR_NONFINITE, and a single chunk of rows is left untouched. */
START_TEST(apply_overflow_is_nonfinite)
{
    dq_rotation_params p;
    ck_assert_int_eq(dq_rotation_params_init(&p, sizeof p), DQ_OK);
    p.method = DQ_ROT_METHOD_HADAMARD;
    p.block_size = 2;
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 4, 0, &r), DQ_OK);
    float x[8] = {1.0f, 2.0f, 3.0f, 4.0f, 3e38f, 3e38f, 1.0f, 1.0f};
    float keep[8];
    memcpy(keep, x, sizeof x);
    ck_assert_int_eq(dq_rotation_apply(r, x, 2, 4, 4), DQ_ERR_NONFINITE);
    ck_assert(memcmp(x, keep, sizeof x) == 0);
    x[4] = x[5] = 1e38f; /* (1e38 + 1e38) / sqrt(2) fits */
    ck_assert_int_eq(dq_rotation_apply(r, x, 2, 4, 4), DQ_OK);
    for (int j = 0; j < 8; j++)
        ck_assert(isfinite(x[j]));
    dq_rotation_free(r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rotation");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, base_matches_givens_product);
    tcase_add_test(tc, base_times_qprime);
    tcase_add_test(tc, hadamard_blocks);
    tcase_add_test(tc, random_orthogonal_blocks);
    tcase_add_test(tc, greedy_matches_oracle);
    tcase_add_test(tc, hadamard_base_step);
    tcase_add_test(tc, remainder_and_per_block_layouts);
    tcase_add_test(tc, wide_layouts);
    tcase_add_test(tc, blocks_stay_orthogonal);
    tcase_add_test(tc, zero_steps_is_identity);
    tcase_add_test(tc, apply_matches_naive);
    tcase_add_test(tc, seeded_randomness_is_deterministic);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, trace_and_export_errors);
    tcase_add_test(bad, bad_create_input);
    tcase_add_test(bad, allocation_failures_leak_nothing);
    tcase_add_test(bad, apply_overflow_is_nonfinite);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
