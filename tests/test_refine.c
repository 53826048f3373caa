/* Rotation refinement: DFRot (weighted Procrustes) and DartQuant (whip loss, QR
 * parametrisation). Objectives are recomputed here in double, independently of the library. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

#define ROWS 48

static float *make_x(int64_t rows, int64_t cols, uint64_t seed)
{
    test_rng r = {seed};
    float *x = malloc((size_t)(rows * cols) * sizeof *x);
    test_fill_activations(&r, x, rows, cols, cols, 1);
    /* One token with massive activations, as in real models. */
    for (int64_t j = 0; j < cols; j += 5)
        x[(rows / 2) * cols + j] *= 30.0f;
    return x;
}

static dq_rotation *make_start(int32_t method, uint32_t flags, int32_t bs, const float *x,
                               int64_t rows, int64_t cols)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    p.method = method;
    p.flags = flags;
    p.block_size = bs;
    p.max_steps = 16;
    p.seed = 7;
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, &p, x, rows, cols, cols, &r), DQ_OK);
    return r;
}

/* The dense channel transform blockdiag(R) as cols x cols doubles. */
static double *dense(const dq_rotation *r)
{
    int64_t cols, nb;
    int32_t bs;
    ck_assert_int_eq(dq_rotation_layout(r, &cols, &bs, &nb, NULL), DQ_OK);
    double *g = calloc((size_t)(cols * cols), sizeof *g);
    float *m = malloc((size_t)bs * (size_t)bs * sizeof *m);
    for (int64_t b = 0; b < nb; b++) {
        int32_t n;
        int64_t mi;
        ck_assert_int_eq(dq_rotation_block(r, b, &n, &mi), DQ_OK);
        ck_assert_int_eq(dq_rotation_matrix(r, mi, m, n, NULL), DQ_OK);
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n; j++)
                g[(b * bs + i) * cols + b * bs + j] = m[i * n + j];
    }
    free(m);
    return g;
}

static double orthogonality_error(const dq_rotation *r)
{
    int64_t nm;
    ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, NULL, &nm), DQ_OK);
    double worst = 0;
    for (int64_t mi = 0; mi < nm; mi++) {
        int32_t n;
        ck_assert_int_eq(dq_rotation_matrix(r, mi, NULL, 0, &n), DQ_OK);
        float *m = malloc((size_t)n * (size_t)n * sizeof *m);
        ck_assert_int_eq(dq_rotation_matrix(r, mi, m, n, NULL), DQ_OK);
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < n; j++) {
                double s = 0;
                for (int32_t k = 0; k < n; k++)
                    s += (double)m[k * n + i] * m[k * n + j];
                worst = fmax(worst, fabs(s - (i == j)));
            }
        free(m);
    }
    return worst;
}

/* y = x * blockdiag(R) in double. */
static double *rotate(const dq_rotation *r, const float *x, int64_t rows, int64_t cols)
{
    double *g = dense(r), *y = calloc((size_t)(rows * cols), sizeof *y);
    for (int64_t t = 0; t < rows; t++)
        for (int64_t k = 0; k < cols; k++)
            for (int64_t j = 0; j < cols; j++)
                y[t * cols + j] += (double)x[t * cols + k] * g[k * cols + j];
    free(g);
    return y;
}

/* DFRot's objective (weights (|x_t| / mean)^gamma, per-token asymmetric 4-bit quantizer). */
static double dfrot_objective(const dq_rotation *r, const float *x, int64_t rows, int64_t cols,
                              double gamma)
{
    double *y = rotate(r, x, rows, cols), mean = 0, total = 0;
    double *norm = malloc((size_t)rows * sizeof *norm);
    for (int64_t t = 0; t < rows; t++) {
        double s = 0;
        for (int64_t j = 0; j < cols; j++)
            s += (double)x[t * cols + j] * x[t * cols + j];
        norm[t] = sqrt(s);
        mean += norm[t] / (double)rows;
    }
    for (int64_t t = 0; t < rows; t++) {
        float mn = (float)y[t * cols], mx = mn;
        for (int64_t j = 0; j < cols; j++) {
            mn = fminf(mn, (float)y[t * cols + j]);
            mx = fmaxf(mx, (float)y[t * cols + j]);
        }
        float scale = fminf(fmaxf((mx - mn) / 15.0f, 1e-5f), 1e4f);
        float zero = rintf(fminf(fmaxf(-mn / scale, -1e4f), 1e4f));
        double row = 0;
        for (int64_t j = 0; j < cols; j++) {
            float v = (float)y[t * cols + j];
            float q = fminf(fmaxf(rintf(v / scale) + zero, 0.0f), 15.0f);
            double d = (double)v - (double)((q - zero) * scale);
            row += d * d;
        }
        total += pow(norm[t] / mean, gamma) * row;
    }
    free(norm);
    free(y);
    return total;
}

/* DartQuant's whip loss summed over the matrices (mean over each matrix's block rows). */
static double whip_loss(const dq_rotation *r, const float *x, int64_t rows, int64_t cols)
{
    double *y = rotate(r, x, rows, cols);
    int64_t nb, nm;
    int32_t bs;
    ck_assert_int_eq(dq_rotation_layout(r, NULL, &bs, &nb, &nm), DQ_OK);
    double *sum = calloc((size_t)nm, sizeof *sum), total = 0;
    int64_t *count = calloc((size_t)nm, sizeof *count);
    for (int64_t b = 0; b < nb; b++) {
        int32_t n;
        int64_t mi;
        dq_rotation_block(r, b, &n, &mi);
        for (int64_t t = 0; t < rows; t++) {
            double sq = 0, s = 0;
            for (int32_t j = 0; j < n; j++)
                sq += (double)x[t * cols + b * bs + j] * x[t * cols + b * bs + j];
            double inv = sq > 0 ? 1.0 / sqrt(sq / n) : 0;
            for (int32_t j = 0; j < n; j++)
                s += exp(-fabs(y[t * cols + b * bs + j]) * inv);
            sum[mi] += s;
            count[mi]++;
        }
    }
    for (int64_t mi = 0; mi < nm; mi++) {
        int32_t n;
        dq_rotation_matrix(r, mi, NULL, 0, &n);
        if (n > 1)
            total += sum[mi] / (double)count[mi];
    }
    free(sum);
    free(count);
    free(y);
    return total;
}

/* Captured log lines at INFO. */
typedef struct log_capture {
    int lines;
    double values[256];
} log_capture;

static void capture(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    const char *colon = strrchr(msg, ':');
    if (level == DQ_LOG_INFO && colon && c->lines < 256) {
        const char *p = colon + 1;
        while (*p && (*p < '0' || *p > '9') && *p != '-')
            p++;
        c->values[c->lines++] = strtod(p, NULL);
    }
}

static dq_context *log_context(log_capture *c, int32_t threads)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.log = capture;
    p.log_user = c;
    p.log_level = DQ_LOG_INFO;
    p.n_threads = threads;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

static dq_refine_params params(int32_t method, int32_t iters)
{
    dq_refine_params p;
    dq_refine_params_init(&p, sizeof p);
    p.method = method;
    p.iterations = iters;
    return p;
}

/* Every matrix of a result either equals the start's (search record kept) or differs (record
 * dropped). */
static void check_trace(const dq_rotation *start, const dq_rotation *r)
{
    int64_t nm;
    dq_rotation_layout(r, NULL, NULL, NULL, &nm);
    for (int64_t mi = 0; mi < nm; mi++) {
        int32_t n;
        dq_rotation_matrix(r, mi, NULL, 0, &n);
        float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
        dq_rotation_matrix(r, mi, a, n, NULL);
        dq_rotation_matrix(start, mi, b, n, NULL);
        int same = memcmp(a, b, (size_t)n * n * sizeof *a) == 0;
        dq_status ts = dq_rotation_trace(r, mi, NULL, NULL, NULL, NULL, NULL, 0);
        dq_status t0 = dq_rotation_trace(start, mi, NULL, NULL, NULL, NULL, NULL, 0);
        ck_assert_int_eq(ts, same ? t0 : DQ_ERR_BAD_STATE);
        free(a);
        free(b);
    }
}

/* ---- by construction: orthogonal, never worse than the start ---- */

START_TEST(test_dfrot_shared_remainder)
{
    const int64_t cols = 72; /* 4 blocks of 16 + one of 8 */
    float *x = make_x(ROWS, cols, 11);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 16, x, ROWS, cols), *r = NULL;
    log_capture lc = {0};
    dq_context *ctx = log_context(&lc, 0);
    dq_refine_params p = params(DQ_REFINE_DFROT, 6);
    p.weight_exponent = 2.0f;
    ck_assert_int_eq(dq_rotation_refine(ctx, &p, start, x, ROWS, cols, cols, &r), DQ_OK);
    ck_assert_double_le(orthogonality_error(r), 1e-5);
    double e0 = dfrot_objective(start, x, ROWS, cols, 2.0);
    double e1 = dfrot_objective(r, x, ROWS, cols, 2.0);
    ck_assert_double_le(e1, e0 * (1 + 1e-6));
    /* One objective line per iterate (start + 6), the start's matching the oracle. */
    ck_assert_int_eq(lc.lines, 7);
    ck_assert_double_eq_tol(lc.values[0], e0, 1e-4 * e0);
    double best = lc.values[0];
    for (int i = 1; i < lc.lines; i++)
        best = fmin(best, lc.values[i]);
    ck_assert_double_eq_tol(e1, best, 1e-4 * best);
    check_trace(start, r);
    printf("dfrot shared: objective %.6g -> %.6g\n", e0, e1);
    dq_rotation_free(r);
    dq_rotation_free(start);
    dq_context_free(ctx);
    free(x);
}
END_TEST

START_TEST(test_dartquant_per_block_hadamard)
{
    const int64_t cols = 72;
    float *x = make_x(ROWS, cols, 12);
    dq_rotation *start = make_start(DQ_ROT_METHOD_HADAMARD, DQ_ROT_F_PER_BLOCK, 16, x, ROWS,
                                    cols),
                *r = NULL;
    log_capture lc = {0};
    dq_context *ctx = log_context(&lc, 0);
    dq_refine_params p = params(DQ_REFINE_DARTQUANT, 10);
    p.learning_rate = 5e-3f;
    ck_assert_int_eq(dq_rotation_refine(ctx, &p, start, x, ROWS, cols, cols, &r), DQ_OK);
    ck_assert_double_le(orthogonality_error(r), 1e-5);
    double l0 = whip_loss(start, x, ROWS, cols), l1 = whip_loss(r, x, ROWS, cols);
    ck_assert_double_le(l1, l0 * (1 + 1e-6));
    ck_assert_int_eq(lc.lines, 11); /* the loss curve: start + 10 iterations */
    ck_assert_double_eq_tol(lc.values[0], l0, 1e-5 * l0);
    printf("dartquant per block: whip loss %.6g -> %.6g\n", l0, l1);
    dq_rotation_free(r);
    dq_rotation_free(start);
    dq_context_free(ctx);
    free(x);
}
END_TEST

/* With a correct gradient a first Adam step this small (each entry moves by 1e-6 against its
 * gradient's sign) must lower the loss. */
START_TEST(test_dartquant_first_step_descends)
{
    const int64_t cols = 64;
    float *x = make_x(ROWS, cols, 13);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 32, x, ROWS, cols), *r = NULL;
    log_capture lc = {0};
    dq_context *ctx = log_context(&lc, 0);
    dq_refine_params p = params(DQ_REFINE_DARTQUANT, 1);
    p.learning_rate = 1e-6f;
    ck_assert_int_eq(dq_rotation_refine(ctx, &p, start, x, ROWS, cols, cols, &r), DQ_OK);
    ck_assert_int_eq(lc.lines, 2);
    ck_assert_double_lt(lc.values[1], lc.values[0]);
    dq_rotation_free(r);
    dq_rotation_free(start);
    dq_context_free(ctx);
    free(x);
}
END_TEST

/* Short blocks: width below the block size, and a one-channel last block. */
START_TEST(test_short_blocks)
{
    const int64_t widths[] = {12, 33};
    for (int w = 0; w < 2; w++) {
        const int64_t cols = widths[w];
        float *x = make_x(ROWS, cols, 14 + (uint64_t)w);
        for (int method = DQ_REFINE_DFROT; method <= DQ_REFINE_DARTQUANT; method++)
            for (uint32_t flags = 0; flags <= DQ_ROT_F_PER_BLOCK; flags += DQ_ROT_F_PER_BLOCK) {
                dq_rotation *start = make_start(DQ_ROT_METHOD_RANDOM, flags, 16, x, ROWS, cols);
                dq_rotation *r = NULL;
                dq_refine_params p = params(method, 4);
                ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                                 DQ_OK);
                ck_assert_double_le(orthogonality_error(r), 1e-5);
                if (method == DQ_REFINE_DFROT)
                    ck_assert_double_le(dfrot_objective(r, x, ROWS, cols, 1.0),
                                        dfrot_objective(start, x, ROWS, cols, 1.0) * (1 + 1e-6));
                else
                    ck_assert_double_le(whip_loss(r, x, ROWS, cols),
                                        whip_loss(start, x, ROWS, cols) * (1 + 1e-6));
                dq_rotation_free(r);
                dq_rotation_free(start);
            }
        free(x);
    }
}
END_TEST

START_TEST(test_none_and_zero_iterations_copy)
{
    const int64_t cols = 40;
    float *x = make_x(ROWS, cols, 15);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 16, x, ROWS, cols);
    dq_refine_params ps[3] = {params(DQ_REFINE_NONE, 5), params(DQ_REFINE_DFROT, 0),
                              params(DQ_REFINE_DARTQUANT, 0)};
    double *g0 = dense(start);
    for (int i = 0; i < 3; i++) {
        dq_rotation *r = NULL;
        ck_assert_int_eq(dq_rotation_refine(NULL, &ps[i], start, x, ROWS, cols, cols, &r),
                         DQ_OK);
        double *g = dense(r);
        ck_assert_int_eq(memcmp(g, g0, (size_t)(cols * cols) * sizeof *g), 0);
        check_trace(start, r);
        free(g);
        dq_rotation_free(r);
    }
    free(g0);
    dq_rotation_free(start);
    free(x);
}
END_TEST

/* ---- determinism ---- */

START_TEST(test_deterministic)
{
    const int64_t cols = 72;
    float *x = make_x(ROWS, cols, 16);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, DQ_ROT_F_PER_BLOCK, 16, x, ROWS, cols);
    for (int method = DQ_REFINE_DFROT; method <= DQ_REFINE_DARTQUANT; method++) {
        dq_refine_params p = params(method, 5);
        p.batch_rows = method == DQ_REFINE_DARTQUANT ? 20 : 0;
        p.seed = 99;
        double *g[3];
        for (int run = 0; run < 3; run++) {
            log_capture lc = {0};
            dq_context *ctx = log_context(&lc, run == 2 ? 2 : 0);
            dq_rotation *r = NULL;
            ck_assert_int_eq(dq_rotation_refine(ctx, &p, start, x, ROWS, cols, cols, &r), DQ_OK);
            g[run] = dense(r);
            dq_rotation_free(r);
            dq_context_free(ctx);
        }
        ck_assert_int_eq(memcmp(g[0], g[1], (size_t)(cols * cols) * sizeof(double)), 0);
        ck_assert_int_eq(memcmp(g[0], g[2], (size_t)(cols * cols) * sizeof(double)), 0);
        for (int run = 0; run < 3; run++)
            free(g[run]);
    }
    dq_rotation_free(start);
    free(x);
}
END_TEST

/* ---- through the plan ---- */

START_TEST(test_plan_invariance)
{
    const int64_t cols = 72, out = 24;
    float *x = make_x(ROWS, cols, 17);
    float *w = malloc((size_t)(out * cols) * sizeof *w), *wabs = malloc(cols * sizeof *wabs);
    test_rng rng = {18};
    for (int64_t i = 0; i < out * cols; i++)
        w[i] = (float)(0.05 * test_rng_normal(&rng));
    ck_assert_int_eq(dq_smooth_weight_absmax(w, out, cols, cols, 0, wabs), DQ_OK);
    float *y = malloc((size_t)(ROWS * out) * sizeof *y);
    float *yt = malloc((size_t)(ROWS * out) * sizeof *yt);
    test_matmul_nt(x, cols, w, cols, y, out, ROWS, out, cols);
    const int32_t methods[] = {DQ_ROT_METHOD_GREEDY, DQ_ROT_METHOD_HADAMARD};
    for (int mi = 0; mi < 2; mi++)
        for (int method = DQ_REFINE_DFROT; method <= DQ_REFINE_DARTQUANT; method++) {
            dq_refine_params rp = params(method, 4);
            dq_plan_params pp;
            dq_plan_params_init(&pp, sizeof pp);
            pp.method = methods[mi];
            pp.block_size = 16;
            pp.max_rotation_step = 8;
            pp.refine = &rp;
            dq_plan *pl = NULL, *plain = NULL;
            ck_assert_int_eq(
                dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, wabs, &pl), DQ_OK);
            pp.refine = NULL;
            ck_assert_int_eq(
                dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, wabs, &plain),
                DQ_OK);
            int32_t nrot;
            dq_plan_layout(pl, NULL, &nrot);
            ck_assert_int_eq(nrot, 2);
            int changed = 0;
            for (int32_t s = 0; s < nrot; s++) {
                const dq_rotation *r, *r0;
                ck_assert_int_eq(dq_plan_rotation(pl, s, &r), DQ_OK);
                ck_assert_int_eq(dq_plan_rotation(plain, s, &r0), DQ_OK);
                ck_assert_double_le(orthogonality_error(r), 1e-5);
                double *a = dense(r), *b = dense(r0);
                changed += memcmp(a, b, (size_t)(cols * cols) * sizeof *a) != 0;
                free(a);
                free(b);
            }
            float *xt = malloc((size_t)(ROWS * cols) * sizeof *xt);
            float *wt = malloc((size_t)(out * cols) * sizeof *wt);
            memcpy(xt, x, (size_t)(ROWS * cols) * sizeof *xt);
            memcpy(wt, w, (size_t)(out * cols) * sizeof *wt);
            ck_assert_int_eq(dq_plan_apply_act(pl, xt, ROWS, cols, cols, NULL, 0), DQ_OK);
            ck_assert_int_eq(dq_plan_transform_weight(pl, wt, out, cols, cols), DQ_OK);
            test_matmul_nt(xt, cols, wt, cols, yt, out, ROWS, out, cols);
            double e = test_rel_err(yt, out, y, out, ROWS, out);
            printf("plan %s + %s: %d of 2 slots changed, invariance error %.3g\n",
                   mi ? "hadamard" : "greedy", method == DQ_REFINE_DFROT ? "dfrot" : "dartquant",
                   changed, e);
            ck_assert_double_lt(e, 1e-5);
            free(xt);
            free(wt);
            dq_plan_free(pl);
            dq_plan_free(plain);
        }
    free(x);
    free(w);
    free(wabs);
    free(y);
    free(yt);
}
END_TEST

/* A plan built with refinement equals the plan assembled from a plain plan's parts with the
 * first slot refined by hand on the smoothed sample. */
START_TEST(test_plan_matches_manual)
{
    const int64_t cols = 48;
    float *x = make_x(ROWS, cols, 19);
    dq_refine_params rp = params(DQ_REFINE_DFROT, 3);
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = DQ_PLAN_F_ROTATE; /* one slot, no smoothing: the slot sees x itself */
    pp.block_size = 16;
    pp.max_rotation_step = 8;
    dq_plan *plain = NULL, *pl = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, NULL, &plain),
                     DQ_OK);
    pp.refine = &rp;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, NULL, &pl),
                     DQ_OK);
    const dq_rotation *r0, *r1;
    dq_plan_rotation(plain, 0, &r0);
    dq_plan_rotation(pl, 0, &r1);
    dq_rotation *manual = NULL;
    ck_assert_int_eq(dq_rotation_refine(NULL, &rp, r0, x, ROWS, cols, cols, &manual), DQ_OK);
    double *a = dense(manual), *b = dense(r1);
    ck_assert_int_eq(memcmp(a, b, (size_t)(cols * cols) * sizeof *a), 0);
    free(a);
    free(b);
    dq_rotation_free(manual);
    dq_plan_free(plain);
    dq_plan_free(pl);
    free(x);
}
END_TEST

/* The calibrator path refines too: same sample, same plan; without a calibrator a refined
 * Hadamard plan (which needs a sample only for the refinement) is refused. */
START_TEST(test_plan_from_calibrator)
{
    const int64_t cols = 48;
    float *x = make_x(ROWS, cols, 23);
    dq_refine_params rp = params(DQ_REFINE_DARTQUANT, 3);
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE;
    pp.block_size = 16;
    pp.max_rotation_step = 8;
    pp.refine = &rp;
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_tokens = ROWS;
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, &cp, cols, &cal), DQ_OK);
    ck_assert_int_eq(dq_calib_observe(cal, x, ROWS, cols, cols), DQ_OK);
    dq_plan *a = NULL, *b = NULL;
    ck_assert_int_eq(dq_plan_build(NULL, &pp, cal, NULL, cols, &a), DQ_OK);
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, NULL, &b),
                     DQ_OK);
    for (int32_t s = 0; s < 2; s++) {
        const dq_rotation *ra, *rb;
        dq_plan_rotation(a, s, &ra);
        dq_plan_rotation(b, s, &rb);
        double *ga = dense(ra), *gb = dense(rb);
        ck_assert_int_eq(memcmp(ga, gb, (size_t)(cols * cols) * sizeof *ga), 0);
        free(ga);
        free(gb);
    }
    dq_plan_free(a);
    dq_plan_free(b);
    pp.flags = DQ_PLAN_F_ROTATE;
    pp.method = DQ_ROT_METHOD_HADAMARD;
    a = (dq_plan *)1;
    ck_assert_int_eq(dq_plan_build(NULL, &pp, NULL, NULL, cols, &a), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(a);
    pp.refine = NULL; /* the same plan without refinement needs no calibrator */
    ck_assert_int_eq(dq_plan_build(NULL, &pp, NULL, NULL, cols, &a), DQ_OK);
    dq_plan_free(a);
    dq_calib_free(cal);
    free(x);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_bad_arguments)
{
    const int64_t cols = 32;
    float *x = make_x(ROWS, cols, 20);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 16, x, ROWS, cols);
    dq_rotation *r = (dq_rotation *)1;
    float ones[32];
    for (int j = 0; j < 32; j++)
        ones[j] = 1.0f;
    dq_refine_params p = params(DQ_REFINE_DFROT, 2);
    ck_assert_int_eq(dq_refine_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_refine_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
    p = params(DQ_REFINE_DFROT, 2);
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, NULL),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, NULL, x, ROWS, cols, cols, &r),
                     DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(r);
    r = (dq_rotation *)1;
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, NULL, ROWS, cols, cols, &r),
                     DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, 0, cols, cols, &r), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols - 1, &r),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS / 2, cols / 2, cols, &r),
                     DQ_ERR_SHAPE);
    float saved = x[5];
    x[5] = NAN;
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_NONFINITE);
    x[5] = INFINITY;
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_NONFINITE);
    x[5] = saved;
    ck_assert_ptr_null(r);

    {   /* the plan call used below succeeds with valid refinement params */
        dq_plan_params pp;
        dq_plan_params_init(&pp, sizeof pp);
        pp.block_size = 16;
        pp.refine = &p;
        dq_plan *pl = NULL;
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, ones, &pl),
                         DQ_OK);
        dq_plan_free(pl);
    }
    /* Each bad member on its own. */
    for (int k = 0; k < 12; k++) {
        p = params(DQ_REFINE_DFROT, 2);
        switch (k) {
        case 0: p.method = 3; break;
        case 1: p.method = -1; break;
        case 2: p.iterations = -1; break;
        case 3: p.iterations = 100001; break;
        case 4: p.learning_rate = 0.0f; break;
        case 5: p.learning_rate = NAN; break;
        case 6: p.weight_exponent = -1.0f; break;
        case 7: p.weight_exponent = NAN; break;
        case 8: p.act_bits = 3; break;
        case 9: p.act_clip_ratio = 0.0f; break;
        case 10: p.flags = 1; break;
        case 11: p.batch_rows = -1; break;
        }
        ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                         DQ_ERR_INVALID_ARG);
        /* The plan rejects the same params up front. */
        dq_plan_params pp;
        dq_plan_params_init(&pp, sizeof pp);
        pp.block_size = 16;
        pp.refine = &p;
        dq_plan *pl = (dq_plan *)1;
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, ones, &pl),
                         DQ_ERR_INVALID_ARG);
        ck_assert_ptr_null(pl);
    }
    {   /* refinement without rotations is refused, not ignored */
        dq_plan_params pp;
        dq_plan_params_init(&pp, sizeof pp);
        pp.flags = DQ_PLAN_F_SMOOTH | DQ_PLAN_F_PERMUTE;
        p = params(DQ_REFINE_DARTQUANT, 2);
        pp.refine = &p;
        dq_plan *pl = (dq_plan *)1;
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, ones, &pl),
                         DQ_ERR_INVALID_ARG);
        ck_assert_ptr_null(pl);
        p.method = DQ_REFINE_NONE;
        ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, x, ROWS, cols, cols, ones, &pl),
                         DQ_OK);
        dq_plan_free(pl);
    }
    p = params(DQ_REFINE_DFROT, 2);
    p.act_scheme = 5;
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_INVALID_ARG);
    /* Extensible struct: too small, or a larger one with a non-zero unknown tail. */
    struct {
        dq_refine_params p;
        uint64_t extra;
    } big;
    memset(&big, 0, sizeof big);
    ck_assert_int_eq(dq_refine_params_init(&big.p, sizeof big), DQ_OK);
    ck_assert_int_eq(dq_rotation_refine(NULL, &big.p, start, x, ROWS, cols, cols, &r), DQ_OK);
    dq_rotation_free(r);
    big.extra = 1;
    ck_assert_int_eq(dq_rotation_refine(NULL, &big.p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_UNSUPPORTED);
    p = params(DQ_REFINE_DFROT, 2);
    p.struct_size = 8;
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_STRUCT_SIZE);
    ck_assert_ptr_null(r);
    dq_rotation_free(start);
    free(x);
}
END_TEST

/* ---- allocation failures: every one reported, nothing leaked ---- */

static void alloc_failures(int method, int use_plan)
{
    const int64_t cols = 40;
    float *x = make_x(ROWS, cols, 21);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 16, x, ROWS, cols);
    dq_refine_params p = params(method, 3);
    p.batch_rows = method == DQ_REFINE_DARTQUANT ? 30 : 0;
    int ok = 0;
    for (long fail = 1; fail < 400 && !ok; fail++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.total + fail; /* the fail-th allocation after the context's own */
        dq_status st;
        if (use_plan) {
            dq_plan_params pp;
            dq_plan_params_init(&pp, sizeof pp);
            pp.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE;
            pp.block_size = 16;
            pp.max_rotation_step = 4;
            pp.refine = &p;
            dq_plan *pl = (dq_plan *)1;
            st = dq_plan_build_from_sample(ctx, &pp, NULL, x, ROWS, cols, cols, NULL, &pl);
            ck_assert(st == DQ_OK ? pl != NULL : pl == NULL);
            dq_plan_free(pl);
        } else {
            dq_rotation *r = (dq_rotation *)1;
            st = dq_rotation_refine(ctx, &p, start, x, ROWS, cols, cols, &r);
            ck_assert(st == DQ_OK ? r != NULL : r == NULL);
            dq_rotation_free(r);
        }
        dq_context_free(ctx);
        ck_assert_msg(st == DQ_OK || st == DQ_ERR_NOMEM, "fail_at %ld: %s", fail,
                      dq_status_name(st));
        ck_assert_int_eq(a.live, 0);
        ok = st == DQ_OK;
    }
    ck_assert(ok);
    dq_rotation_free(start);
    free(x);
}

START_TEST(test_alloc_failures_dfrot)
{
    alloc_failures(DQ_REFINE_DFROT, 0);
    alloc_failures(DQ_REFINE_DFROT, 1);
}
END_TEST

START_TEST(test_alloc_failures_dartquant)
{
    alloc_failures(DQ_REFINE_DARTQUANT, 0);
    alloc_failures(DQ_REFINE_DARTQUANT, 1);
}
END_TEST

/* Finite but huge activations (a token spanning [-3e38, 3e38]): the rotated token's range
 * overflows float, so DFRot's per-token scale would be +Inf; refinement reports
 * DQ_ERR_NONFINITE instead of returning the start with DQ_OK. DartQuant, which computes no
 * scale, either refines to finite matrices or reports DQ_ERR_NONFINITE. */
START_TEST(test_huge_activations_nonfinite)
{
    const int64_t cols = 64;
    float *x = make_x(ROWS, cols, 17);
    dq_rotation *start = make_start(DQ_ROT_METHOD_GREEDY, 0, 16, x, ROWS, cols), *r = NULL;
    for (int64_t j = 0; j < cols; j++)
        x[7 * cols + j] = j % 2 ? 3e38f : -3e38f;
    dq_refine_params p = params(DQ_REFINE_DFROT, 3);
    r = (dq_rotation *)&p; /* must be reset to NULL */
    ck_assert_int_eq(dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r),
                     DQ_ERR_NONFINITE);
    ck_assert_ptr_null(r);
    p = params(DQ_REFINE_DARTQUANT, 3);
    const dq_status st = dq_rotation_refine(NULL, &p, start, x, ROWS, cols, cols, &r);
    ck_assert(st == DQ_OK || st == DQ_ERR_NONFINITE);
    if (st == DQ_OK) {
        int64_t nb = 0;
        ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, &nb, NULL), DQ_OK);
        float m[16 * 16];
        for (int64_t b = 0; b < nb; b++) {
            int32_t n;
            int64_t mi;
            ck_assert_int_eq(dq_rotation_block(r, b, &n, &mi), DQ_OK);
            ck_assert_int_eq(dq_rotation_matrix(r, mi, m, n, NULL), DQ_OK);
            for (int32_t i = 0; i < n * n; i++)
                ck_assert(isfinite(m[i]));
        }
    }
    dq_rotation_free(r);
    dq_rotation_free(start);
    free(x);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("refine");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dfrot_shared_remainder);
    tcase_add_test(tc, test_dartquant_per_block_hadamard);
    tcase_add_test(tc, test_dartquant_first_step_descends);
    tcase_add_test(tc, test_short_blocks);
    tcase_add_test(tc, test_none_and_zero_iterations_copy);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_plan_invariance);
    tcase_add_test(tc, test_plan_matches_manual);
    tcase_add_test(tc, test_plan_from_calibrator);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_huge_activations_nonfinite);
    tcase_add_test(tc, test_alloc_failures_dfrot);
    tcase_add_test(tc, test_alloc_failures_dartquant);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
