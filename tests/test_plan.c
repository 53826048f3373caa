/* Plans: invariance of the layer output, agreement with a naive product of the exported parts,
 * every composition (RTN, SmoothQuant, Hadamard, random, DuQuant variants), remainder widths,
 * workspaces, reentrancy, determinism across runs, threads and BLAS thread counts, bad input. */
#define _POSIX_C_SOURCE 200809L /* popen, setenv */
#include <check.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "test_transform.h"
#include "dq_check_run.h"

static const char *self_path; /* argv[0], to re-run this program with another environment */

typedef struct variant {
    const char *name;
    int32_t method;
    uint32_t flags;
    int32_t permutation_times;
} variant;

static const variant variants[] = {
    {"rtn", DQ_ROT_METHOD_GREEDY, 0, 1},
    {"smoothquant", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_SMOOTH, 1},
    {"hadamard", DQ_ROT_METHOD_HADAMARD, DQ_PLAN_F_ROTATE, 1},
    {"random", DQ_ROT_METHOD_RANDOM, DQ_PLAN_F_ROTATE | DQ_PLAN_F_SMOOTH, 1},
    {"random per block", DQ_ROT_METHOD_RANDOM, DQ_PLAN_F_ROTATE | DQ_PLAN_F_PER_BLOCK_R, 1},
    {"duquant", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT, 1},
    {"duquant reference", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_ROW_RULE, 1},
    {"duquant per block", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_PER_BLOCK_R, 1},
    {"duquant random Q'", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_RANDOM_QPRIME, 1},
    {"duquant twice", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT, 2},
    {"rotation only", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_ROTATE, 1},
    {"permutation only", DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_PERMUTE, 1},
    {"duquant Hadamard base", DQ_ROT_METHOD_GREEDY,
     DQ_PLAN_F_DEFAULT | DQ_PLAN_F_HADAMARD_BASE | DQ_PLAN_F_PER_BLOCK_R, 1},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

/* Variants whose every block length must be a power of two. */
static int hadamard_blocks(const variant *v)
{
    return v->method == DQ_ROT_METHOD_HADAMARD || (v->flags & DQ_PLAN_F_HADAMARD_BASE) != 0;
}

static dq_plan_params plan_params(const variant *v, int32_t bs, int32_t steps)
{
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    p.method = v->method;
    p.flags = v->flags;
    p.permutation_times = v->permutation_times;
    p.block_size = bs;
    p.max_rotation_step = steps;
    p.seed = 7;
    return p;
}

/* A calibrator that saw x (rows x cols, ld), keeping it all as the sample. */
static dq_calib *calib_of(const float *x, int64_t rows, int64_t cols, int64_t ld)
{
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_tokens = rows;
    dq_calib *c = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, &cp, cols, &c), DQ_OK);
    ck_assert_int_eq(dq_calib_observe(c, x, rows, cols, ld), DQ_OK);
    return c;
}

static dq_plan *build(const dq_plan_params *p, const dq_calib *c, const float *w_absmax,
                      int64_t cols)
{
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build(NULL, p, c, w_absmax, cols, &pl), DQ_OK);
    ck_assert_ptr_nonnull(pl);
    return pl;
}

static float *copy_of(const float *x, int64_t n)
{
    float *y = malloc((size_t)n * sizeof *y);
    memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

/* (x G)(W G^-T)^T equals x W^T, x G equals the naive product of the exported parts, and all
 * rotation blocks are orthogonal, for every variant and width. */
static void check_invariance(int64_t cols, int32_t bs, int outliers, uint64_t seed)
{
    test_rng r = {seed};
    const int64_t t = 48, out = 24, ld = cols + 3, ldw = cols + 1;
    float *x = test_new_activations(&r, t, cols, ld, outliers);
    float *w = test_new_weights(&r, out, cols, ldw);
    float *w_absmax = malloc((size_t)cols * sizeof *w_absmax);
    float *y = malloc((size_t)(t * out) * sizeof *y), *yt = malloc((size_t)(t * out) * sizeof *yt);
    ck_assert_int_eq(dq_smooth_weight_absmax(w, out, cols, ldw, 0, w_absmax), DQ_OK);
    dq_calib *c = calib_of(x, t, cols, ld);
    test_matmul_nt(x, ld, w, ldw, y, out, t, out, cols);
    for (size_t k = 0; k < N_VARIANTS; k++) {
        dq_plan_params p = plan_params(&variants[k], bs, 40);
        dq_plan *pl = NULL;
        dq_status st = dq_plan_build(NULL, &p, c, w_absmax, cols, &pl);
        if (hadamard_blocks(&variants[k]) && cols % bs != 0 &&
            ((cols % bs) & (cols % bs - 1)) != 0) {
            ck_assert_int_eq(st, DQ_ERR_UNSUPPORTED); /* never silently */
            continue;
        }
        ck_assert_msg(st == DQ_OK, "%s: %s", variants[k].name, dq_status_name(st));
        float *xt = copy_of(x, t * ld), *wt = copy_of(w, out * ldw);
        ck_assert_int_eq(dq_plan_apply_act(pl, xt, t, cols, ld, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_plan_transform_weight(pl, wt, out, cols, ldw), DQ_OK);
        test_matmul_nt(xt, ld, wt, ldw, yt, out, t, out, cols);
        double err = test_rel_err(yt, out, y, out, t, out);
        ck_assert_msg(err <= 1e-5, "%s, width %lld: invariance error %g", variants[k].name,
                      (long long)cols, err);
        float *xn = copy_of(x, t * ld), *wn = copy_of(w, out * ldw);
        test_plan_naive(pl, xn, t, cols, ld, 0);
        test_plan_naive(pl, wn, out, cols, ldw, 1);
        ck_assert_double_le(test_rel_err(xt, ld, xn, ld, t, cols), 1e-6);
        ck_assert_double_le(test_rel_err(wt, ldw, wn, ldw, out, cols), 1e-6);
        for (int64_t i = 0; i < t; i++) /* padding never written */
            for (int64_t j = cols; j < ld; j++)
                ck_assert(isnan(xt[i * ld + j]));
        int32_t n_rot = 0;
        dq_plan_layout(pl, NULL, &n_rot);
        for (int32_t i = 0; i < n_rot; i++) {
            const dq_rotation *rot = NULL;
            ck_assert_int_eq(dq_plan_rotation(pl, i, &rot), DQ_OK);
            if (rot)
                ck_assert_double_le(test_rotation_orth_error(rot), 1e-5);
        }
        free(xt);
        free(wt);
        free(xn);
        free(wn);
        dq_plan_free(pl);
    }
    dq_calib_free(c);
    free(x);
    free(w);
    free(w_absmax);
    free(y);
    free(yt);
}

START_TEST(invariance_random_inputs)
{
    check_invariance(256, 64, 0, 101);
}
END_TEST

START_TEST(invariance_outlier_inputs)
{
    check_invariance(256, 64, 1, 102);
}
END_TEST

START_TEST(invariance_remainder_widths)
{
    check_invariance(172, 64, 1, 103); /* blocks 64, 64, 44 */
    check_invariance(300, 128, 1, 104); /* blocks 128, 128, 44 */
    check_invariance(192, 128, 1, 105); /* 128 + 64: Hadamard still applies */
    check_invariance(40, 64, 1, 106);  /* narrower than one block */
}
END_TEST

/* A wide layer like LLaMA's MLP (5632 = 44 x 128): still exact, quickly. */
START_TEST(invariance_wide)
{
    test_rng r = {107};
    const int64_t t = 16, out = 8, cols = 5632;
    float *x = test_new_activations(&r, t, cols, cols, 1);
    float *w = test_new_weights(&r, out, cols, cols);
    float *w_absmax = malloc((size_t)cols * sizeof *w_absmax);
    float *y = malloc((size_t)(t * out) * sizeof *y), *yt = malloc((size_t)(t * out) * sizeof *yt);
    dq_smooth_weight_absmax(w, out, cols, cols, 0, w_absmax);
    dq_calib *c = calib_of(x, t, cols, cols);
    dq_plan_params p = plan_params(&variants[5], 128, 16);
    dq_plan *pl = build(&p, c, w_absmax, cols);
    float *xt = copy_of(x, t * cols), *wt = copy_of(w, out * cols);
    ck_assert_int_eq(dq_plan_apply_act(pl, xt, t, cols, cols, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_plan_transform_weight(pl, wt, out, cols, cols), DQ_OK);
    test_matmul_nt(x, cols, w, cols, y, out, t, out, cols);
    test_matmul_nt(xt, cols, wt, cols, yt, out, t, out, cols);
    ck_assert_double_le(test_rel_err(yt, out, y, out, t, out), 1e-5);
    dq_plan_free(pl);
    dq_calib_free(c);
    free(x);
    free(w);
    free(w_absmax);
    free(y);
    free(yt);
    free(xt);
    free(wt);
}
END_TEST

/* Layers sharing an input share one plan built from the max absmax over all of them; the
 * exported smoothing scales are exactly dq_smooth_factors of those statistics. */
START_TEST(shared_input_layers)
{
    test_rng r = {108};
    const int64_t t = 32, cols = 128, outs[3] = {16, 8, 8};
    float *x = test_new_activations(&r, t, cols, cols, 1);
    float *w[3], w_absmax[128], act[128], s_ref[128], s[128];
    for (int k = 0; k < 3; k++) {
        w[k] = test_new_weights(&r, outs[k], cols, cols);
        ck_assert_int_eq(dq_smooth_weight_absmax(w[k], outs[k], cols, cols, k > 0, w_absmax),
                         DQ_OK);
    }
    dq_calib *c = calib_of(x, t, cols, cols);
    dq_plan_params p = plan_params(&variants[5], 64, 32);
    p.smooth_alpha = 0.5f;
    dq_plan *pl = build(&p, c, w_absmax, cols);
    ck_assert_int_eq(dq_calib_absmax(c, act, cols), DQ_OK);
    ck_assert_int_eq(dq_smooth_factors(act, w_absmax, cols, 0.5f, s_ref), DQ_OK);
    ck_assert_int_eq(dq_plan_smooth_scales(pl, s, cols), DQ_OK);
    ck_assert_mem_eq(s, s_ref, sizeof s);
    float *xt = copy_of(x, t * cols);
    ck_assert_int_eq(dq_plan_apply_act(pl, xt, t, cols, cols, NULL, 0), DQ_OK);
    for (int k = 0; k < 3; k++) {
        float *wt = copy_of(w[k], outs[k] * cols);
        float *y = malloc((size_t)(t * outs[k]) * sizeof *y);
        float *yt = malloc((size_t)(t * outs[k]) * sizeof *yt);
        ck_assert_int_eq(dq_plan_transform_weight(pl, wt, outs[k], cols, cols), DQ_OK);
        test_matmul_nt(x, cols, w[k], cols, y, outs[k], t, outs[k], cols);
        test_matmul_nt(xt, cols, wt, cols, yt, outs[k], t, outs[k], cols);
        ck_assert_double_le(test_rel_err(yt, outs[k], y, outs[k], t, outs[k]), 1e-5);
        free(wt);
        free(y);
        free(yt);
        free(w[k]);
    }
    /* Without smoothing the exported scales are all one. */
    dq_plan_params q = plan_params(&variants[0], 64, 0);
    dq_plan *rtn = build(&q, c, NULL, cols);
    int32_t has = -1, n_rot = -1;
    ck_assert_int_eq(dq_plan_layout(rtn, &has, &n_rot), DQ_OK);
    ck_assert_int_eq(has, 0);
    ck_assert_int_eq(n_rot, 0);
    ck_assert_int_eq(dq_plan_smooth_scales(rtn, s, cols), DQ_OK);
    for (int64_t j = 0; j < cols; j++)
        ck_assert_float_eq(s[j], 1.0f);
    dq_plan_free(rtn);
    dq_plan_free(pl);
    dq_calib_free(c);
    free(x);
    free(xt);
}
END_TEST

/* The sample-based builder equals the calibrator-based one for the same data. */
START_TEST(build_from_sample_equals_calibrator)
{
    test_rng r = {109};
    const int64_t t = 40, cols = 172, ld = 180;
    float *x = test_new_activations(&r, t, cols, ld, 1);
    float w_absmax[172];
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = 0.05f + 0.001f * (float)j;
    dq_calib *c = calib_of(x, t, cols, ld);
    for (size_t k = 0; k < N_VARIANTS; k++) {
        if (hadamard_blocks(&variants[k])) /* width 172: blocks 64, 64, 44 */
            continue;
        dq_plan_params p = plan_params(&variants[k], 64, 24);
        dq_plan *a = build(&p, c, w_absmax, cols), *b = NULL;
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, t, cols, ld, w_absmax, &b),
                         DQ_OK);
        ck_assert_msg(test_plan_digest(a) == test_plan_digest(b), "%s", variants[k].name);
        dq_plan_free(a);
        dq_plan_free(b);
    }
    dq_calib_free(c);
    free(x);
}
END_TEST

START_TEST(workspace_and_out_of_place)
{
    test_rng r = {110};
    const int64_t t = 600, cols = 192, ld = 200;
    float *x = test_new_activations(&r, t, cols, ld, 1);
    dq_calib *c = calib_of(x, 64, cols, ld);
    float w_absmax[192];
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = 0.1f;
    dq_plan_params p = plan_params(&variants[5], 64, 16);
    dq_plan *pl = build(&p, c, w_absmax, cols);
    size_t need = 0;
    ck_assert_int_eq(dq_plan_workspace_size(pl, t, &need), DQ_OK);
    ck_assert_uint_gt(need, 0);
    float *a = copy_of(x, t * ld), *b = copy_of(x, t * ld);
    ck_assert_int_eq(dq_plan_apply_act(pl, a, t, cols, ld, NULL, 0), DQ_OK);
    char *work = malloc(need + 1);
    /* A misaligned caller workspace works too. */
    ck_assert_int_eq(dq_plan_apply_act(pl, b, t, cols, ld, work + 1, need), DQ_OK);
    ck_assert_mem_eq(a, b, (size_t)(t * ld) * sizeof *a);
    float *before = copy_of(b, t * ld);
    ck_assert_int_eq(dq_plan_apply_act(pl, b, t, cols, ld, work, need - 1), DQ_ERR_BUFFER);
    ck_assert_mem_eq(b, before, (size_t)(t * ld) * sizeof *b);
    /* Out of place: y <- x G, x untouched, the same bits as in place. */
    float *x0 = copy_of(x, t * ld), *y = malloc((size_t)(t * cols) * sizeof *y);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, t, cols, ld, y, cols, work, need), DQ_OK);
    ck_assert_mem_eq(x, x0, (size_t)(t * ld) * sizeof *x);
    /* Another leading dimension may give BLAS other shapes: equal to rounding. */
    ck_assert_double_le(test_rel_err(y, cols, a, ld, t, cols), 1e-6);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x0, t, cols, ld, x0, ld, NULL, 0), DQ_OK);
    ck_assert_mem_eq(x0, a, (size_t)(t * ld) * sizeof *a);
    /* A plan with nothing to multiply needs no workspace. */
    dq_plan_params q = plan_params(&variants[1], 64, 0);
    dq_plan *sq = build(&q, c, w_absmax, cols);
    ck_assert_int_eq(dq_plan_workspace_size(sq, t, &need), DQ_OK);
    ck_assert_uint_eq(need, 0);
    int64_t width = 0;
    ck_assert_int_eq(dq_plan_width(sq, &width), DQ_OK);
    ck_assert_int_eq(width, cols);
    dq_plan_free(sq);
    dq_plan_free(pl);
    dq_calib_free(c);
    free(x);
    free(a);
    free(b);
    free(before);
    free(x0);
    free(y);
    free(work);
}
END_TEST

typedef struct apply_job {
    const dq_plan *pl;
    float *x;
    int64_t rows, cols;
    dq_status st;
} apply_job;

static void *apply_worker(void *arg)
{
    apply_job *j = arg;
    for (int rep = 0; rep < 3 && j->st == DQ_OK; rep++)
        j->st = dq_plan_apply_act(j->pl, j->x + rep * 0, j->rows, j->cols, j->cols, NULL, 0);
    return NULL;
}

/* Four threads apply one const plan at once; each result equals the serial one. */
START_TEST(concurrent_apply_on_one_plan)
{
    test_rng r = {111};
    const int64_t t = 300, cols = 256;
    float *x = test_new_activations(&r, t, cols, cols, 1);
    dq_calib *c = calib_of(x, 64, cols, cols);
    float w_absmax[256];
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = 0.2f;
    dq_plan_params p = plan_params(&variants[7], 64, 24);
    dq_plan *pl = build(&p, c, w_absmax, cols);
    apply_job jobs[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (apply_job){pl, test_new_activations(&r, t, cols, cols, k & 1), t, cols, DQ_OK};
    }
    float *serial[4];
    for (int k = 0; k < 4; k++) {
        serial[k] = copy_of(jobs[k].x, t * cols);
        for (int rep = 0; rep < 3; rep++)
            ck_assert_int_eq(dq_plan_apply_act(pl, serial[k], t, cols, cols, NULL, 0), DQ_OK);
    }
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(pthread_create(&th[k], NULL, apply_worker, &jobs[k]), 0);
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        ck_assert_int_eq(jobs[k].st, DQ_OK);
        ck_assert_mem_eq(jobs[k].x, serial[k], (size_t)(t * cols) * sizeof(float));
        free(jobs[k].x);
        free(serial[k]);
    }
    dq_plan_free(pl);
    dq_calib_free(c);
    free(x);
}
END_TEST

/* The plan every determinism check builds, on n_threads library threads. */
static uint64_t reference_plan_digest(int32_t n_threads)
{
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = n_threads;
    dq_context *ctx = NULL;
    if (dq_context_create(&cp, &ctx) != DQ_OK)
        return 0;
    test_rng r = {112};
    const int64_t t = 96, cols = 300;
    float *x = test_new_activations(&r, t, cols, cols, 1);
    float w_absmax[300];
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = 0.02f * (float)(1 + j % 7);
    dq_plan_params p = plan_params(&variants[8], 128, 48); /* random Q' too */
    p.permutation_times = 2;
    dq_plan *pl = NULL;
    uint64_t h = 0;
    if (dq_plan_build_from_sample(ctx, &p, NULL, x, t, cols, cols, w_absmax, &pl) == DQ_OK)
        h = test_plan_digest(pl);
    dq_plan_free(pl);
    dq_context_free(ctx);
    free(x);
    return h;
}

typedef struct digest_job {
    uint64_t h;
} digest_job;

static void *digest_worker(void *arg)
{
    ((digest_job *)arg)->h = reference_plan_digest(2);
    return NULL;
}

static uint64_t digest_in_child(const char *blas_threads)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=%s OMP_NUM_THREADS=%s '%s' --plan-digest",
             blas_threads, blas_threads, self_path);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    uint64_t h = 0;
    ck_assert_int_eq(fscanf(f, "%" SCNx64, &h), 1);
    ck_assert_int_eq(pclose(f), 0);
    return h;
}

START_TEST(same_seed_same_plan_everywhere)
{
    uint64_t h = reference_plan_digest(1);
    ck_assert_uint_ne(h, 0);
    ck_assert_uint_eq(reference_plan_digest(1), h);
    /* Any number of library threads. */
    for (int32_t n = 2; n <= 5; n++)
        ck_assert_uint_eq(reference_plan_digest(n), h);
    /* Built concurrently by several host threads. */
    digest_job jobs[3];
    pthread_t th[3];
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(pthread_create(&th[k], NULL, digest_worker, &jobs[k]), 0);
    for (int k = 0; k < 3; k++) {
        pthread_join(th[k], NULL);
        ck_assert_uint_eq(jobs[k].h, h);
    }
    /* In fresh processes with one and with two BLAS threads (OpenBLAS's own results differ
     * between the two; plans must not). */
    ck_assert_uint_eq(digest_in_child("1"), h);
    ck_assert_uint_eq(digest_in_child("2"), h);
}
END_TEST

START_TEST(other_seed_other_random_plan)
{
    test_rng r = {113};
    float *x = test_new_activations(&r, 16, 128, 128, 1);
    dq_plan_params p = plan_params(&variants[4], 64, 0);
    dq_plan *a = NULL, *b = NULL;
    ck_assert_int_eq(dq_plan_build(NULL, &p, NULL, NULL, 128, &a), DQ_OK); /* no calibrator */
    p.seed = 8;
    ck_assert_int_eq(dq_plan_build(NULL, &p, NULL, NULL, 128, &b), DQ_OK);
    ck_assert_uint_ne(test_plan_digest(a), test_plan_digest(b));
    dq_plan_free(a);
    dq_plan_free(b);
    free(x);
}
END_TEST

START_TEST(assembled_from_exported_parts)
{
    test_rng r = {114};
    const int64_t t = 32, cols = 172;
    float *x = test_new_activations(&r, t, cols, cols, 1);
    float w_absmax[172], s[172];
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = 0.05f;
    dq_calib *c = calib_of(x, t, cols, cols);
    dq_plan_params p = plan_params(&variants[9], 64, 16); /* R P R P R */
    dq_plan *pl = build(&p, c, w_absmax, cols);
    int32_t has = 0, n_rot = 0;
    ck_assert_int_eq(dq_plan_layout(pl, &has, &n_rot), DQ_OK);
    ck_assert_int_eq(has, 1);
    ck_assert_int_eq(n_rot, 3);
    const dq_rotation *rots[3];
    int64_t *perms_store = malloc(2 * (size_t)cols * sizeof *perms_store);
    const int64_t *perms[2] = {perms_store, perms_store + cols};
    for (int32_t i = 0; i < 3; i++)
        ck_assert_int_eq(dq_plan_rotation(pl, i, &rots[i]), DQ_OK);
    for (int32_t i = 0; i < 2; i++)
        ck_assert_int_eq(dq_plan_permutation(pl, i, perms_store + i * cols, cols), DQ_OK);
    ck_assert_int_eq(dq_plan_smooth_scales(pl, s, cols), DQ_OK);
    dq_plan *copy = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, s, 3, rots, perms, &copy), DQ_OK);
    dq_plan_free(pl); /* the copy owns its parts */
    float *a = copy_of(x, t * cols), *b = copy_of(x, t * cols);
    ck_assert_int_eq(dq_plan_apply_act(copy, a, t, cols, cols, NULL, 0), DQ_OK);
    test_plan_naive(copy, b, t, cols, cols, 0);
    ck_assert_double_le(test_rel_err(a, cols, b, cols, t, cols), 1e-6);
    dq_plan_free(copy);
    /* Identity slots: a permutation alone. */
    const dq_rotation *none[2] = {NULL, NULL};
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 2, none, perms, &copy), DQ_OK);
    memcpy(a, x, (size_t)(t * cols) * sizeof *a);
    ck_assert_int_eq(dq_plan_apply_act(copy, a, t, cols, cols, NULL, 0), DQ_OK);
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < cols; j++)
            ck_assert_float_eq(a[i * cols + j], x[i * cols + perms[0][j]]);
    const dq_rotation *got = rots[0];
    ck_assert_int_eq(dq_plan_rotation(copy, 0, &got), DQ_OK);
    ck_assert_ptr_null(got);
    dq_plan_free(copy);
    /* Bad parts. */
    perms_store[5] = perms_store[6];
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 2, none, perms, &copy), DQ_ERR_INVALID_ARG);
    perms_store[5] = cols;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 2, none, perms, &copy), DQ_ERR_INVALID_ARG);
    s[3] = 0.0f;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, s, 0, NULL, NULL, &copy), DQ_ERR_INVALID_ARG);
    s[3] = NAN;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, s, 0, NULL, NULL, &copy), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_plan_assemble(NULL, 0, NULL, 0, NULL, NULL, &copy), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, -1, NULL, NULL, &copy),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 1, NULL, NULL, &copy), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 0, NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    dq_rotation_params rp;
    dq_rotation_params_init(&rp, sizeof rp);
    rp.method = DQ_ROT_METHOD_RANDOM;
    dq_rotation *narrow = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, &rp, NULL, 0, 128, 0, &narrow), DQ_OK);
    const dq_rotation *wrong[1] = {narrow};
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, 1, wrong, NULL, &copy), DQ_ERR_SHAPE);
    ck_assert_ptr_null(copy);
    dq_rotation_free(narrow);
    dq_calib_free(c);
    free(perms_store);
    free(x);
    free(a);
    free(b);
}
END_TEST

/* What each kind of plan needs from the caller, and the errors when it is missing. */
START_TEST(build_requirements)
{
    test_rng r = {115};
    float *x = test_new_activations(&r, 16, 64, 64, 1);
    float w_absmax[64];
    for (int j = 0; j < 64; j++)
        w_absmax[j] = 1.0f;
    dq_plan *pl = (dq_plan *)x;
    dq_plan_params p = plan_params(&variants[5], 32, 8);
    ck_assert_int_eq(dq_plan_build(NULL, &p, NULL, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(pl);
    dq_calib *c = calib_of(x, 16, 64, 64);
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, NULL, 64, &pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 65, &pl), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 0, &pl), DQ_ERR_SHAPE);
    w_absmax[3] = -1.0f;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
    w_absmax[3] = INFINITY;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_NONFINITE);
    w_absmax[3] = 1.0f;
    /* Statistics only, no sample: a greedy plan cannot be built, a Hadamard one can. */
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_mode = DQ_CALIB_SAMPLE_NONE;
    dq_calib *stats = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, &cp, 64, &stats), DQ_OK);
    ck_assert_int_eq(dq_calib_observe(stats, x, 16, 64, 64), DQ_OK);
    ck_assert_int_eq(dq_plan_build(NULL, &p, stats, w_absmax, 64, &pl), DQ_ERR_BAD_STATE);
    dq_plan_params h = plan_params(&variants[2], 32, 0);
    h.flags |= DQ_PLAN_F_SMOOTH;
    ck_assert_int_eq(dq_plan_build(NULL, &h, stats, w_absmax, 64, &pl), DQ_OK);
    dq_plan_free(pl);
    /* An incomplete sequence gives no mean sample yet. */
    cp.sample_mode = DQ_CALIB_SAMPLE_SEQ_MEAN;
    cp.sample_tokens = 10;
    dq_calib *seq = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, &cp, 64, &seq), DQ_OK);
    ck_assert_int_eq(dq_calib_observe(seq, x, 16, 64, 64), DQ_OK);
    ck_assert_int_eq(dq_plan_build(NULL, &p, seq, w_absmax, 64, &pl), DQ_ERR_BAD_STATE);
    ck_assert_int_eq(dq_calib_observe(seq, x, 4, 64, 64), DQ_OK);
    ck_assert_int_eq(dq_plan_build(NULL, &p, seq, w_absmax, 64, &pl), DQ_OK);
    dq_plan_free(pl);
    /* Sample-free plans need no calibrator. */
    dq_plan_params q = plan_params(&variants[2], 32, 0);
    ck_assert_int_eq(dq_plan_build(NULL, &q, NULL, NULL, 64, &pl), DQ_OK);
    dq_plan_free(pl);
    q = plan_params(&variants[2], 48, 0); /* Hadamard needs powers of two */
    ck_assert_int_eq(dq_plan_build(NULL, &q, NULL, NULL, 96, &pl), DQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(pl);
    dq_calib_free(c);
    dq_calib_free(stats);
    dq_calib_free(seq);
    free(x);
}
END_TEST

START_TEST(bad_params)
{
    test_rng r = {116};
    float *x = test_new_activations(&r, 16, 64, 64, 1);
    float w_absmax[64];
    for (int j = 0; j < 64; j++)
        w_absmax[j] = 1.0f;
    dq_calib *c = calib_of(x, 16, 64, 64);
    dq_plan *pl = NULL;
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    ck_assert_uint_eq(p.flags, DQ_PLAN_F_DEFAULT);
    ck_assert_int_eq(p.block_size, 128);
    ck_assert_int_eq(p.max_rotation_step, 256);
    ck_assert_int_eq(p.permutation_times, 1);
    ck_assert_float_eq(p.smooth_alpha, 0.6f);
    struct {
        int field;
        double value;
    } bad[] = {{0, 0x400}, {1, DQ_ROT_METHOD_RANDOM_HADAMARD + 1}, {1, -1}, {2, 1},
               {2, 4097}, {3, -1}, {3, 65537}, {4, 0}, {4, 65}, {5, -0.1}, {5, 1.5},
               {5, NAN}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        dq_plan_params_init(&p, sizeof p);
        p.block_size = 32;
        switch (bad[k].field) {
        case 0: p.flags = (uint32_t)bad[k].value; break;
        case 1: p.method = (int32_t)bad[k].value; break;
        case 2: p.block_size = (int32_t)bad[k].value; break;
        case 3: p.max_rotation_step = (int32_t)bad[k].value; break;
        case 4: p.permutation_times = (int32_t)bad[k].value; break;
        default: p.smooth_alpha = (float)bad[k].value; break;
        }
        ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, 16, 64, 64, w_absmax, &pl),
                         DQ_ERR_INVALID_ARG);
    }
    /* Search options with a method that does not search. */
    dq_plan_params_init(&p, sizeof p);
    p.method = DQ_ROT_METHOD_HADAMARD;
    p.block_size = 32;
    p.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_ROW_RULE;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
    p.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_RANDOM_QPRIME;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
    p.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_HADAMARD_BASE;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_INVALID_ARG);
    /* A Hadamard base needs power-of-two blocks, the last one included: never silently. */
    dq_plan_params_init(&p, sizeof p);
    p.flags |= DQ_PLAN_F_HADAMARD_BASE;
    p.block_size = 24;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(pl);
    p.flags &= ~(uint32_t)DQ_PLAN_F_ROTATE; /* no rotation: no base needed */
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_OK);
    dq_plan_free(pl);
    pl = NULL;
    dq_plan_params_init(&p, sizeof p);
    p.struct_size = 12;
    ck_assert_int_eq(dq_plan_build(NULL, &p, c, w_absmax, 64, &pl), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_plan_params_init(&p, 12), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_plan_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_build(NULL, NULL, c, w_absmax, 64, NULL), DQ_ERR_INVALID_ARG);
    /* Sample-based builder: its own argument checks. */
    dq_plan_params_init(&p, sizeof p);
    p.block_size = 32;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, NULL, 16, 64, 64, w_absmax, &pl),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, 16, 64, 64, NULL, &pl),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, 16, 64, 32, w_absmax, &pl),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, INT64_MAX / 2, 64,
                                               INT64_MAX / 4, w_absmax, &pl),
                     DQ_ERR_OVERFLOW);
    x[17] = NAN;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, 16, 64, 64, w_absmax, &pl),
                     DQ_ERR_NONFINITE);
    ck_assert_ptr_null(pl);
    dq_calib_free(c);
    free(x);
}
END_TEST

START_TEST(bad_apply_input)
{
    test_rng r = {117};
    float *x = test_new_activations(&r, 16, 64, 64, 1);
    float w_absmax[64];
    for (int j = 0; j < 64; j++)
        w_absmax[j] = 1.0f;
    dq_calib *c = calib_of(x, 16, 64, 64);
    dq_plan_params p = plan_params(&variants[5], 32, 8);
    dq_plan *pl = build(&p, c, w_absmax, 64);
    float *before = copy_of(x, 16 * 64);
    size_t need;
    int64_t cols;
    ck_assert_int_eq(dq_plan_apply_act(NULL, x, 16, 64, 64, NULL, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_apply_act(pl, NULL, 16, 64, 64, NULL, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 0, 64, 64, NULL, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 16, 32, 64, NULL, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 16, 64, 60, NULL, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_apply_act(pl, x, INT64_MAX / 2, 64, INT64_MAX / 4, NULL, 0),
                     DQ_ERR_OVERFLOW);
    /* One row with a leading dimension CBLAS cannot take: refused before any write. */
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 1, 64, (int64_t)INT_MAX + 1, NULL, 0),
                     DQ_ERR_BLAS);
    ck_assert_int_eq(dq_plan_transform_weight(pl, x, 1, 64, (int64_t)INT_MAX + 1), DQ_ERR_BLAS);
    x[100] = NAN;
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 16, 64, 64, NULL, 0), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_plan_transform_weight(pl, x, 16, 64, 64), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 16, 64, 64, before, 64, NULL, 0),
                     DQ_ERR_NONFINITE);
    x[100] = before[100];
    ck_assert_mem_eq(x, before, 16 * 64 * sizeof *x);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 16, 64, 64, NULL, 64, NULL, 0),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 16, 64, 64, before, 63, NULL, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_transform_weight(NULL, x, 16, 64, 64), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_transform_weight(pl, x, 16, 65, 65), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_workspace_size(NULL, 4, &need), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_workspace_size(pl, 4, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_workspace_size(pl, 0, &need), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_width(NULL, &cols), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_width(pl, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_layout(NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_smooth_scales(pl, w_absmax, 63), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_smooth_scales(pl, NULL, 64), DQ_ERR_INVALID_ARG);
    const dq_rotation *rot;
    int64_t perm[64];
    ck_assert_int_eq(dq_plan_rotation(pl, 2, &rot), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_rotation(pl, -1, &rot), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_rotation(pl, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_permutation(pl, 1, perm, 64), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_permutation(pl, 0, perm, 63), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_plan_permutation(pl, 0, NULL, 64), DQ_ERR_INVALID_ARG);
    dq_plan_free(pl);
    dq_plan_free(NULL);
    dq_calib_free(c);
    free(x);
    free(before);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    test_rng r = {118};
    float *x = test_new_activations(&r, 16, 100, 100, 1);
    float w_absmax[100];
    for (int j = 0; j < 100; j++)
        w_absmax[j] = 0.5f;
    dq_calib *c = calib_of(x, 16, 100, 100);
    const size_t which[] = {6, 9, 3};
    for (int k = 0; k < 3; k++) {
        int ok = 0;
        for (long fail = 1; fail < 200 && !ok; fail++) {
            test_alloc a = {0, 0, 0};
            dq_context *ctx = test_alloc_context(&a);
            ck_assert_ptr_nonnull(ctx);
            a.fail_at = a.total + fail; /* count from after the context itself */
            dq_plan_params p = plan_params(&variants[which[k]], 32, 6);
            dq_plan *pl = (dq_plan *)x;
            dq_status st = dq_plan_build(ctx, &p, c, w_absmax, 100, &pl);
            if (st == DQ_OK) {
                /* Applying with an internal workspace can fail too, leaving x intact. */
                float *y = copy_of(x, 16 * 100);
                dq_status st2 = dq_plan_apply_act(pl, y, 16, 100, 100, NULL, 0);
                ok = st2 == DQ_OK;
                if (!ok) {
                    ck_assert_int_eq(st2, DQ_ERR_NOMEM);
                    ck_assert_mem_eq(y, x, 16 * 100 * sizeof *y);
                }
                free(y);
                dq_plan_free(pl);
            } else {
                ck_assert_int_eq(st, DQ_ERR_NOMEM);
                ck_assert_ptr_null(pl);
            }
            dq_context_free(ctx);
            ck_assert_int_eq(a.live, 0);
        }
        ck_assert(ok);
    }
    dq_calib_free(c);
    free(x);
}
END_TEST

/* A smoothing factor far below its channel's values overflowed the division of the sample,
 * and the greedy search then read Inf and NaN: a NULL dereference in the pruned search
 * (found by fuzz_numeric). Now DQ_ERR_NONFINITE. */
START_TEST(smoothed_sample_overflow_is_nonfinite)
{
    enum { COLS = 16 };
    float sample[COLS], act[COLS], wabs[COLS];
    for (int j = 0; j < COLS; j++) {
        sample[j] = j == 0 ? 3e38f : (float)(j % 5) - 2.0f;
        act[j] = 1e-30f;
        wabs[j] = 1.0f;
    }
    dq_plan_params p;
    ck_assert_int_eq(dq_plan_params_init(&p, sizeof p), DQ_OK);
    p.block_size = 16;
    p.max_rotation_step = 2;
    p.smooth_alpha = 0.5f;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, act, sample, 1, COLS, COLS, wabs, &pl),
                     DQ_ERR_NONFINITE);
    ck_assert_ptr_null(pl);
    sample[0] = 1.0f; /* 1 / s fits */
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, act, sample, 1, COLS, COLS, wabs, &pl),
                     DQ_OK);
    dq_plan_free(pl);
}
END_TEST

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc > 1 && strcmp(argv[1], "--plan-digest") == 0) {
        printf("%016" PRIx64 "\n", reference_plan_digest(1));
        return 0;
    }
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, invariance_random_inputs);
    tcase_add_test(tc, invariance_outlier_inputs);
    tcase_add_test(tc, invariance_remainder_widths);
    tcase_add_test(tc, invariance_wide);
    tcase_add_test(tc, shared_input_layers);
    tcase_add_test(tc, build_from_sample_equals_calibrator);
    tcase_add_test(tc, workspace_and_out_of_place);
    tcase_add_test(tc, concurrent_apply_on_one_plan);
    tcase_add_test(tc, same_seed_same_plan_everywhere);
    tcase_add_test(tc, other_seed_other_random_plan);
    tcase_add_test(tc, assembled_from_exported_parts);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, build_requirements);
    tcase_add_test(bad, bad_params);
    tcase_add_test(bad, bad_apply_input);
    tcase_add_test(bad, allocation_failures_leak_nothing);
    tcase_add_test(bad, smoothed_sample_overflow_is_nonfinite);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
