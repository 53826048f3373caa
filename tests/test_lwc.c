/* Learnable weight clipping: loss goes down, STE gradients against finite differences of the
 * surrogate, resume and stop, parameters, export to dq_qmatrix_pack, bad input, allocation
 * failures. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

typedef struct layer {
    int64_t rows, cols, tokens;
    float *w, *x;
} layer;

static layer make_layer(uint64_t seed, int64_t rows, int64_t cols, int64_t tokens)
{
    layer l = {rows, cols, tokens, malloc((size_t)(rows * cols) * sizeof(float)),
               malloc((size_t)(tokens * cols) * sizeof(float))};
    test_rng r = {seed};
    /* Heavy-tailed (Laplace) weights: over 100 or more values per group a clip below 1 lowers
     * the error, the more so the wider the group. (A single huge outlier per row, or small
     * groups, would not: there the best clip is 1 and the straight-through gradient, biased
     * towards smaller scales, cannot beat the start; dq_lwc_best then keeps the start.) */
    for (int64_t i = 0; i < rows * cols; i++)
        l.w[i] = (float)(0.02 * test_rng_laplace(&r));
    test_fill_activations(&r, l.x, tokens, cols, cols, 0);
    return l;
}

static void free_layer(layer *l)
{
    free(l->w);
    free(l->x);
}

static dq_quant_params weight_params(int32_t bits, int32_t scheme, int32_t group)
{
    dq_quant_params q;
    dq_quant_params_init(&q, sizeof q);
    q.bits = bits;
    q.scheme = scheme;
    q.group_size = group;
    return q;
}

static dq_lwc *create_lwc(const layer *l, const dq_lwc_params *p, const dq_quant_params *q)
{
    dq_lwc *o = NULL;
    ck_assert_int_eq(dq_lwc_create(NULL, p, q, l->w, l->rows, l->cols, l->cols, l->x, l->tokens,
                                   l->cols, &o),
                     DQ_OK);
    return o;
}

typedef struct epoch_log {
    int32_t calls;
    int32_t stop_at[4];
    float loss[256];
} epoch_log;

static int32_t record_epoch(void *user, int32_t epoch, float loss)
{
    epoch_log *e = user;
    ck_assert_int_eq(epoch, e->calls + 1);
    if (e->calls < 256)
        e->loss[e->calls] = loss;
    e->calls++;
    for (int k = 0; k < 4; k++)
        if (e->stop_at[k] == epoch)
            return 1;
    return 0;
}

START_TEST(params_defaults)
{
    dq_lwc_params p;
    memset(&p, 0xFF, sizeof p);
    ck_assert_int_eq(dq_lwc_params_init(&p, sizeof p), DQ_OK);
    ck_assert_uint_eq(p.struct_size, sizeof p);
    ck_assert_uint_eq(p.flags, 0);
    ck_assert_uint_eq(p.seed, 0);
    ck_assert_int_eq(p.epochs, 20);
    ck_assert_int_eq(p.batch_tokens, 128);
    ck_assert(p.learning_rate == 1e-2f);
    ck_assert(p.init_value == 4.0f);
    ck_assert_int_eq(p.act_bits, 4);
    ck_assert_int_eq(p.act_scheme, DQ_QUANT_ASYM);
    ck_assert(p.act_clip_ratio == 1.0f);
    ck_assert(p.on_epoch == NULL);
    ck_assert_ptr_null(p.on_epoch_user);
    ck_assert_int_eq(dq_lwc_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
}
END_TEST

/* Mean training loss per epoch goes down on average, and the full-batch loss ends below its
 * start, for weight-only and W4A4 losses, whole rows and groups. */
START_TEST(loss_decreases)
{
    const uint32_t flags[] = {0, DQ_LWC_F_QUANT_ACT, 0};
    const int32_t groups[] = {0, 0, 128};
    for (int k = 0; k < 3; k++) {
        layer l = make_layer(40 + (uint64_t)k, 16, 256, 256);
        epoch_log e = {0};
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.flags = flags[k];
        p.epochs = 30;
        p.batch_tokens = 32;
        p.on_epoch = record_epoch;
        p.on_epoch_user = &e;
        dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, groups[k]);
        dq_lwc *o = create_lwc(&l, &p, &q);
        float initial = 0, final = 0, last = 0;
        ck_assert_int_eq(dq_lwc_loss(o, &initial, NULL, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_lwc_train(o, &last), DQ_OK);
        ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &final), DQ_OK);
        ck_assert_int_eq(e.calls, 30);
        ck_assert(last == e.loss[29]);
        double first5 = 0, last5 = 0;
        for (int i = 0; i < 5; i++) {
            first5 += e.loss[i];
            last5 += e.loss[25 + i];
        }
        ck_assert_msg(last5 < first5 && final < initial,
                      "case %d: first 5 %.6g last 5 %.6g initial %.6g final %.6g", k, first5 / 5,
                      last5 / 5, (double)initial, (double)final);
        int32_t done = 0;
        ck_assert_int_eq(dq_lwc_layout(o, NULL, &done), DQ_OK);
        ck_assert_int_eq(done, 30);
        dq_lwc_free(o);
        free_layer(&l);
    }
}
END_TEST

/* ---- gradient check ----
 * The STE loss is piecewise constant in the parameters, so finite differences of the real loss
 * say nothing. The surrogate it differentiates is smooth: freeze, at the base point, each
 * element's rounding residual round(w/s) - w/s, the rounded zero point zr (a constant in
 * OmniQuant's backward pass) and every clamp decision, then
 *   code in range:  w^ = w/s * s + residual * s = w + residual * s
 *   clamped to B:   w^ = (B - zr) * s      (SYM: B * s)
 * with s the continuous function of gamma and beta. Its value equals the real loss at the
 * base point, its derivatives are exactly the STE gradient, and no code can flip however large
 * the step (nothing is re-rounded), so central differences (step 1e-3, error O(h^2) on a
 * smooth function) computed in double are a clean oracle. */
typedef struct surrogate {
    const layer *l;
    int32_t bits, scheme;
    int64_t group_len, groups;
    const float *xin;      /* activations the quantized product reads */
    double *residual;      /* rows x cols */
    signed char *clamped;  /* -1 low bound, +1 high bound, 0 in range */
    double *z_residual;    /* per group: the frozen rounded zero point */
} surrogate;

static double sig(double v)
{
    return 1.0 / (1.0 + exp(-v));
}

static void group_range(const float *w, int64_t n, double *mn, double *mx)
{
    *mn = *mx = w[0];
    for (int64_t j = 1; j < n; j++) {
        *mn = fmin(*mn, w[j]);
        *mx = fmax(*mx, w[j]);
    }
}

/* Fills w^ for parameters gamma/beta; with freeze, records residuals and clamps first. */
static void surrogate_weights(surrogate *s, const double *gamma, const double *beta, int freeze,
                              double *wq)
{
    const layer *l = s->l;
    const double levels = s->scheme == DQ_QUANT_ASYM ? (1 << s->bits) - 1
                                                     : (1 << (s->bits - 1)) - 1;
    for (int64_t i = 0; i < l->rows; i++)
        for (int64_t g = 0; g < s->groups; g++) {
            const int64_t gi = i * s->groups + g, j0 = g * s->group_len;
            const int64_t len = l->cols - j0 < s->group_len ? l->cols - j0 : s->group_len;
            const float *w = l->w + i * l->cols + j0;
            double mn, mx;
            group_range(w, len, &mn, &mx);
            double scale, z = 0, zr = 0;
            if (s->scheme == DQ_QUANT_ASYM) {
                const double xmin = mn * sig(beta[gi]);
                scale = (mx * sig(gamma[gi]) - xmin) / levels;
                z = -xmin / scale;
                if (freeze)
                    s->z_residual[gi] = nearbyint(z); /* the rounded zero point, frozen */
                zr = s->z_residual[gi];
            } else {
                scale = fmax(fabs(mx), fabs(mn)) * sig(gamma[gi]) / levels;
            }
            for (int64_t j = 0; j < len; j++) {
                const int64_t e = i * l->cols + j0 + j;
                const double v = w[j] / scale;
                if (freeze) {
                    const double r = nearbyint(v);
                    const double code = s->scheme == DQ_QUANT_ASYM ? r + nearbyint(z) : r;
                    const double lo = s->scheme == DQ_QUANT_ASYM ? 0 : -levels - 1;
                    s->clamped[e] = code < lo ? -1 : (code > levels ? 1 : 0);
                    s->residual[e] = r - v;
                }
                double out;
                if (s->clamped[e] == 0) {
                    out = w[j] + s->residual[e] * scale;
                } else {
                    const double lo = s->scheme == DQ_QUANT_ASYM ? 0 : -levels - 1;
                    const double bound = s->clamped[e] < 0 ? lo : levels;
                    out = (bound - zr) * scale;
                }
                wq[e] = out;
            }
        }
}

static double surrogate_loss(surrogate *s, const double *gamma, const double *beta, int freeze)
{
    const layer *l = s->l;
    double *wq = malloc((size_t)(l->rows * l->cols) * sizeof(double));
    surrogate_weights(s, gamma, beta, freeze, wq);
    double sum = 0;
    for (int64_t t = 0; t < l->tokens; t++)
        for (int64_t o = 0; o < l->rows; o++) {
            double a = 0, b = 0;
            for (int64_t j = 0; j < l->cols; j++) {
                a += (double)s->xin[t * l->cols + j] * wq[o * l->cols + j];
                b += (double)l->x[t * l->cols + j] * (double)l->w[o * l->cols + j];
            }
            sum += (a - b) * (a - b);
        }
    free(wq);
    return sum / (double)(l->tokens * l->rows);
}

static void gradient_case(int32_t bits, int32_t scheme, int32_t group, uint32_t flags,
                          uint64_t seed)
{
    layer l = make_layer(seed, 3, 10, 12);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.flags = flags;
    dq_quant_params q = weight_params(bits, scheme, group);
    dq_lwc *o = create_lwc(&l, &p, &q);
    int64_t n = 0;
    ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
    float *gf = malloc((size_t)n * sizeof(float)), *bf = malloc((size_t)n * sizeof(float));
    double *gd = malloc((size_t)n * sizeof(double)), *bd = malloc((size_t)n * sizeof(double));
    /* Parameters where sigmoid' is not tiny and both clamp branches occur. */
    test_rng r = {seed * 3 + 1};
    for (int64_t i = 0; i < n; i++) {
        gd[i] = 0.3 + 2.0 * test_rng_uniform(&r);
        bd[i] = 0.3 + 2.0 * test_rng_uniform(&r);
        gf[i] = (float)gd[i];
        bf[i] = (float)bd[i];
        gd[i] = gf[i];
        bd[i] = bf[i];
    }
    ck_assert_int_eq(dq_lwc_set_params(o, gf, bf, n), DQ_OK);
    float loss = 0;
    float *gg = malloc((size_t)n * sizeof(float)), *gb = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(dq_lwc_loss(o, &loss, gg, gb, n), DQ_OK);

    float *xq = malloc((size_t)(l.tokens * l.cols) * sizeof(float));
    memcpy(xq, l.x, (size_t)(l.tokens * l.cols) * sizeof(float));
    if (flags & DQ_LWC_F_QUANT_ACT) {
        dq_quant_params ap = weight_params(p.act_bits, p.act_scheme, 0);
        dq_qmatrix *qa = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &ap, l.x, l.tokens, l.cols, l.cols, NULL, NULL,
                                         &qa),
                         DQ_OK);
        ck_assert_int_eq(dq_qmatrix_dequantize(qa, xq, l.cols), DQ_OK);
        dq_qmatrix_free(qa);
    }
    const int64_t group_len = group == 0 || group > l.cols ? l.cols : group;
    surrogate s = {&l,
                   bits,
                   scheme,
                   group_len,
                   (l.cols + group_len - 1) / group_len,
                   xq,
                   malloc((size_t)(l.rows * l.cols) * sizeof(double)),
                   malloc((size_t)(l.rows * l.cols)),
                   calloc((size_t)n, sizeof(double))};
    const double base = surrogate_loss(&s, gd, bd, 1);
    ck_assert_msg(fabs(base - loss) <= 1e-5 * base, "loss %.9g surrogate %.9g", (double)loss,
                  base);
    int64_t clamped = 0, inside = 0;
    for (int64_t e = 0; e < l.rows * l.cols; e++)
        *(s.clamped[e] ? &clamped : &inside) += 1;
    ck_assert(clamped > 0 && inside > 0);

    const double h = 1e-3;
    double *fd_g = malloc((size_t)n * sizeof(double)), *fd_b = malloc((size_t)n * sizeof(double));
    double top = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int which = 0; which < 2; which++) {
            double *par = which ? bd : gd;
            const double keep = par[i];
            par[i] = keep + h;
            const double up = surrogate_loss(&s, gd, bd, 0);
            par[i] = keep - h;
            const double down = surrogate_loss(&s, gd, bd, 0);
            par[i] = keep;
            (which ? fd_b : fd_g)[i] = (up - down) / (2 * h);
        }
        top = fmax(top, fmax(fabs(fd_g[i]), fabs(fd_b[i])));
    }
    ck_assert(top > 0);
    for (int64_t i = 0; i < n; i++) {
        /* 1e-3 relative; entries far below the largest one (SYM's beta: exactly 0) are
         * compared against 1e-3 of the largest instead. */
        const double floor_g = fmax(fabs(fd_g[i]), 1e-2 * top);
        const double floor_b = fmax(fabs(fd_b[i]), 1e-2 * top);
        ck_assert_msg(fabs(gg[i] - fd_g[i]) <= 1e-3 * floor_g,
                      "bits %d scheme %d group %d flags %u: gamma[%lld] %.9g vs fd %.9g", bits,
                      scheme, group, flags, (long long)i, (double)gg[i], fd_g[i]);
        ck_assert_msg(fabs(gb[i] - fd_b[i]) <= 1e-3 * floor_b,
                      "bits %d scheme %d group %d flags %u: beta[%lld] %.9g vs fd %.9g", bits,
                      scheme, group, flags, (long long)i, (double)gb[i], fd_b[i]);
    }
    free(fd_g);
    free(fd_b);
    free(s.residual);
    free(s.clamped);
    free(s.z_residual);
    free(xq);
    free(gg);
    free(gb);
    free(gf);
    free(bf);
    free(gd);
    free(bd);
    dq_lwc_free(o);
    free_layer(&l);
}

START_TEST(gradient_matches_finite_differences)
{
    gradient_case(4, DQ_QUANT_ASYM, 0, 0, 1);
    gradient_case(4, DQ_QUANT_ASYM, 4, 0, 2);  /* 10 = 4 + 4 + 2 */
    gradient_case(4, DQ_QUANT_ASYM, 5, DQ_LWC_F_QUANT_ACT, 3);
    gradient_case(8, DQ_QUANT_ASYM, 0, 0, 4);
    gradient_case(4, DQ_QUANT_SYM, 0, 0, 5);
    gradient_case(4, DQ_QUANT_SYM, 3, DQ_LWC_F_QUANT_ACT, 6);
}
END_TEST

static void train_params(const layer *l, dq_lwc_params *p, float *gamma, float *beta, int64_t n,
                         int32_t calls)
{
    dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 16);
    dq_lwc *o = create_lwc(l, p, &q);
    for (int32_t c = 0; c < calls; c++)
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, gamma, beta, n), DQ_OK);
    dq_lwc_free(o);
}

/* 2 epochs, stop, then 3 more = 5 epochs in one call, bit for bit; another seed differs. */
START_TEST(resume_equals_one_run)
{
    layer l = make_layer(9, 8, 48, 100);
    const int64_t n = 8 * 3;
    float g5[24], b5[24], g23[24], b23[24], gs[24], bs[24];
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 5;
    p.batch_tokens = 16;
    p.seed = 77;
    train_params(&l, &p, g5, b5, n, 1);
    epoch_log e = {.stop_at = {2, 5}};
    p.on_epoch = record_epoch;
    p.on_epoch_user = &e;
    dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 16);
    dq_lwc *o = create_lwc(&l, &p, &q);
    int32_t done = -1;
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_layout(o, NULL, &done), DQ_OK);
    ck_assert_int_eq(done, 2);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_layout(o, NULL, &done), DQ_OK);
    ck_assert_int_eq(done, 5);
    ck_assert_int_eq(e.calls, 5);
    ck_assert_int_eq(dq_lwc_get_params(o, g23, b23, n), DQ_OK);
    ck_assert(memcmp(g5, g23, sizeof g5) == 0 && memcmp(b5, b23, sizeof b5) == 0);
    dq_lwc_free(o);
    /* The seed decides the batches. */
    p.on_epoch = NULL;
    p.seed = 78;
    train_params(&l, &p, gs, bs, n, 1);
    ck_assert(memcmp(g5, gs, sizeof g5) != 0);
    free_layer(&l);
}
END_TEST

START_TEST(stop_callback)
{
    layer l = make_layer(10, 4, 16, 20);
    epoch_log e = {.stop_at = {3}};
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 10;
    p.on_epoch = record_epoch;
    p.on_epoch_user = &e;
    dq_lwc *o = create_lwc(&l, &p, NULL);
    float last = 0;
    ck_assert_int_eq(dq_lwc_train(o, &last), DQ_OK);
    ck_assert_int_eq(e.calls, 3);
    ck_assert(last == e.loss[2]);
    int32_t done = 0;
    int64_t n = 0;
    ck_assert_int_eq(dq_lwc_layout(o, &n, &done), DQ_OK);
    ck_assert_int_eq(done, 3);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(dq_lwc_layout(o, NULL, NULL), DQ_OK);
    dq_lwc_free(o);
    free_layer(&l);
}
END_TEST

typedef struct log_count {
    int info;
} log_count;

static void count_log(void *user, int32_t level, const char *msg)
{
    log_count *c = user;
    if (level == DQ_LOG_INFO && strstr(msg, "epoch"))
        c->info++;
}

START_TEST(epoch_loss_is_logged)
{
    layer l = make_layer(12, 4, 16, 20);
    log_count lc = {0};
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.log = count_log;
    cp.log_user = &lc;
    cp.log_level = DQ_LOG_INFO;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 4;
    dq_lwc *o = NULL;
    ck_assert_int_eq(dq_lwc_create(ctx, &p, NULL, l.w, 4, 16, 16, l.x, 20, 16, &o), DQ_OK);
    dq_context_free(ctx); /* the optimiser keeps its own copy */
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(lc.info, 4);
    dq_lwc_free(o);
    free_layer(&l);
}
END_TEST

/* set_params/get_params round trip; set_params resets Adam, so setting the initial values
 * again and training gives what a fresh optimiser gives. */
START_TEST(set_and_get_params)
{
    layer l = make_layer(13, 6, 24, 40);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 3;
    p.batch_tokens = 8;
    dq_lwc *o = create_lwc(&l, &p, NULL);
    float g[6], b[6], g2[6], b2[6], fresh_g[6], fresh_b[6];
    ck_assert_int_eq(dq_lwc_get_params(o, g, b, 6), DQ_OK);
    for (int i = 0; i < 6; i++)
        ck_assert(g[i] == 4.0f && b[i] == 4.0f);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, g2, NULL, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, NULL, b2, 6), DQ_OK);
    ck_assert(memcmp(g, g2, sizeof g) != 0);
    memcpy(fresh_g, g2, sizeof g2);
    memcpy(fresh_b, b2, sizeof b2);
    /* back to the start, Adam state forgotten */
    ck_assert_int_eq(dq_lwc_set_params(o, g, b, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, g2, b2, 6), DQ_OK);
    ck_assert(memcmp(g, g2, sizeof g) == 0 && memcmp(b, b2, sizeof b) == 0);
    /* epochs_done keeps counting (it picks the batch order), so compare with a fresh
     * optimiser that also starts at epoch 3 by training it first and resetting it. */
    dq_lwc *f = create_lwc(&l, &p, NULL);
    ck_assert_int_eq(dq_lwc_train(f, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_set_params(f, g, b, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_train(f, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, g2, b2, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(f, fresh_g, fresh_b, 6), DQ_OK);
    ck_assert(memcmp(fresh_g, g2, sizeof g2) == 0 && memcmp(fresh_b, b2, sizeof b2) == 0);
    /* factors are the sigmoids of the best parameters */
    float hi[6], lo[6], bg[6], bb[6], best_loss = 0, loss_at_best = 0;
    ck_assert_int_eq(dq_lwc_factors(o, hi, lo, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_best(o, bg, bb, 6, &best_loss), DQ_OK);
    for (int i = 0; i < 6; i++) {
        ck_assert_float_eq_tol(hi[i], 1.0 / (1.0 + exp(-(double)bg[i])), 1e-6);
        ck_assert_float_eq_tol(lo[i], 1.0 / (1.0 + exp(-(double)bb[i])), 1e-6);
    }
    /* the best loss is the full-batch loss at the best parameters, and no later iterate of
     * this call is better */
    ck_assert_int_eq(dq_lwc_set_params(f, bg, bb, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_loss(f, &loss_at_best, NULL, NULL, 0), DQ_OK);
    ck_assert_float_eq_tol(best_loss, loss_at_best, 1e-6 * loss_at_best);
    float current = 0;
    ck_assert_int_eq(dq_lwc_loss(o, &current, NULL, NULL, 0), DQ_OK);
    ck_assert(best_loss <= current);
    /* before training (after set_params) best = current */
    ck_assert_int_eq(dq_lwc_best(f, g2, b2, 6, &current), DQ_OK);
    ck_assert(memcmp(g2, bg, sizeof bg) == 0 && memcmp(b2, bb, sizeof bb) == 0);
    ck_assert(current == loss_at_best);
    ck_assert_int_eq(dq_lwc_best(NULL, NULL, NULL, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_best(o, bg, NULL, 5, NULL), DQ_ERR_SHAPE);
    /* very negative parameters still give valid (positive) factors */
    float neg[6] = {-200, -200, -200, -200, -200, -200};
    ck_assert_int_eq(dq_lwc_set_params(o, neg, neg, 6), DQ_OK);
    ck_assert_int_eq(dq_lwc_factors(o, hi, lo, 6), DQ_OK);
    dq_qmatrix *qm = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, l.w, 6, 24, 24, hi, lo, &qm), DQ_OK);
    dq_qmatrix_free(qm);
    dq_lwc_free(f);
    dq_lwc_free(o);
    free_layer(&l);
}
END_TEST

/* The exported factors, given to dq_qmatrix_pack, reproduce the optimiser's own (best)
 * loss. */
START_TEST(factors_reproduce_loss_through_pack)
{
    const int32_t schemes[] = {DQ_QUANT_ASYM, DQ_QUANT_SYM};
    for (int k = 0; k < 2; k++) {
        layer l = make_layer(14 + (uint64_t)k, 10, 40, 64);
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.epochs = 10;
        p.batch_tokens = 16;
        p.learning_rate = 5e-2f;
        dq_quant_params q = weight_params(4, schemes[k], 12);
        dq_lwc *o = create_lwc(&l, &p, &q);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
        int64_t n = 0;
        ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
        ck_assert_int_eq(n, 10 * 4);
        float *hi = malloc((size_t)n * sizeof(float)), *lo = malloc((size_t)n * sizeof(float));
        ck_assert_int_eq(dq_lwc_factors(o, hi, lo, n), DQ_OK);
        dq_qmatrix *qm = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &q, l.w, 10, 40, 40, hi, lo, &qm), DQ_OK);
        float *wd = malloc(400 * sizeof(float));
        ck_assert_int_eq(dq_qmatrix_dequantize(qm, wd, 40), DQ_OK);
        double sum = 0;
        for (int64_t t = 0; t < l.tokens; t++)
            for (int64_t o2 = 0; o2 < 10; o2++) {
                double d = 0;
                for (int64_t j = 0; j < 40; j++)
                    d += (double)l.x[t * 40 + j] * ((double)wd[o2 * 40 + j] - l.w[o2 * 40 + j]);
                sum += d * d;
            }
        const double oracle_loss = sum / (double)(l.tokens * 10);
        float loss = 0;
        ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &loss), DQ_OK);
        ck_assert_msg(fabs(loss - oracle_loss) <= 1e-5 * oracle_loss, "%.9g vs %.9g",
                      (double)loss, oracle_loss);
        /* and they differ from the starting factors: training moved them */
        float start_loss_hi = 0;
        for (int64_t i = 0; i < n; i++)
            start_loss_hi = fmaxf(start_loss_hi, fabsf(hi[i] - 0.98201376f));
        ck_assert(start_loss_hi > 1e-3f);
        free(wd);
        dq_qmatrix_free(qm);
        free(hi);
        free(lo);
        dq_lwc_free(o);
        free_layer(&l);
    }
}
END_TEST

static dq_status create_err(const dq_lwc_params *p, const dq_quant_params *q, const float *w,
                            int64_t rows, int64_t cols, int64_t ldw, const float *x,
                            int64_t tokens, int64_t ldx)
{
    dq_lwc *o = (dq_lwc *)(uintptr_t)1;
    dq_status st = dq_lwc_create(NULL, p, q, w, rows, cols, ldw, x, tokens, ldx, &o);
    ck_assert_ptr_null(o);
    return st;
}

START_TEST(bad_create_arguments)
{
    layer l = make_layer(15, 4, 8, 6);
    const float *w = l.w, *x = l.x;
    ck_assert_int_eq(dq_lwc_create(NULL, NULL, NULL, w, 4, 8, 8, x, 6, 8, NULL),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(create_err(NULL, NULL, NULL, 4, 8, 8, x, 6, 8), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 8, NULL, 6, 8), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(create_err(NULL, NULL, w, 0, 8, 8, x, 6, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 0, 8, x, 6, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 7, x, 6, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 8, x, 0, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 8, x, 6, 7), DQ_ERR_SHAPE);
    ck_assert_int_eq(create_err(NULL, NULL, w, INT64_MAX / 2, 8, 8, x, 6, 8), DQ_ERR_OVERFLOW);
    l.w[5] = NAN;
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 8, x, 6, 8), DQ_ERR_NONFINITE);
    l.w[5] = 0.0f;
    l.x[13] = INFINITY;
    ck_assert_int_eq(create_err(NULL, NULL, w, 4, 8, 8, x, 6, 8), DQ_ERR_NONFINITE);
    l.x[13] = 0.0f;

    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    dq_lwc_params b;
#define EXPECT_BAD(field, value, want)                                                         \
    do {                                                                                       \
        b = p;                                                                                 \
        b.field = value;                                                                       \
        ck_assert_int_eq(create_err(&b, NULL, w, 4, 8, 8, x, 6, 8), want);                     \
    } while (0)
    EXPECT_BAD(flags, 4u, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(epochs, 0, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(epochs, 100001, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(batch_tokens, 0, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(batch_tokens, (1 << 24) + 1, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(learning_rate, 0.0f, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(learning_rate, -1e-3f, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(learning_rate, NAN, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(learning_rate, INFINITY, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(init_value, NAN, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(struct_size, 4u, DQ_ERR_STRUCT_SIZE);
    EXPECT_BAD(struct_size, DQ_PARAMS_MAX_SIZE + 8u, DQ_ERR_STRUCT_SIZE);
    p.flags = DQ_LWC_F_QUANT_ACT;
    EXPECT_BAD(act_bits, 0, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(act_bits, 3, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(act_scheme, 7, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(act_clip_ratio, 0.0f, DQ_ERR_INVALID_ARG);
    EXPECT_BAD(act_clip_ratio, 1.5f, DQ_ERR_INVALID_ARG);
#undef EXPECT_BAD
    struct {
        dq_lwc_params p;
        uint64_t future;
    } big;
    memset(&big, 0, sizeof big);
    dq_lwc_params_init(&big.p, sizeof big.p);
    big.p.struct_size = sizeof big;
    big.future = 3;
    ck_assert_int_eq(create_err(&big.p, NULL, w, 4, 8, 8, x, 6, 8), DQ_ERR_UNSUPPORTED);

    dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 0);
    q.bits = 3;
    ck_assert_int_eq(create_err(NULL, &q, w, 4, 8, 8, x, 6, 8), DQ_ERR_INVALID_ARG);
    q = weight_params(4, 5, 0);
    ck_assert_int_eq(create_err(NULL, &q, w, 4, 8, 8, x, 6, 8), DQ_ERR_INVALID_ARG);
    q = weight_params(4, DQ_QUANT_ASYM, -1);
    ck_assert_int_eq(create_err(NULL, &q, w, 4, 8, 8, x, 6, 8), DQ_ERR_INVALID_ARG);
    q.group_size = 0;
    q.flags = 1;
    ck_assert_int_eq(create_err(NULL, &q, w, 4, 8, 8, x, 6, 8), DQ_ERR_INVALID_ARG);
    q.flags = 0;
    q.struct_size = 4;
    ck_assert_int_eq(create_err(NULL, &q, w, 4, 8, 8, x, 6, 8), DQ_ERR_STRUCT_SIZE);
    free_layer(&l);
}
END_TEST

START_TEST(bad_call_arguments)
{
    layer l = make_layer(16, 4, 8, 6);
    dq_lwc *o = create_lwc(&l, NULL, NULL);
    float v[4] = {1, 2, 3, 4}, loss, g[4];
    ck_assert_int_eq(dq_lwc_train(NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_loss(NULL, &loss, NULL, NULL, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_loss(o, NULL, NULL, NULL, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_loss(o, &loss, g, NULL, 3), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_lwc_loss(o, &loss, NULL, g, 5), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_lwc_layout(NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_get_params(NULL, v, v, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_get_params(o, v, v, 3), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_lwc_set_params(NULL, v, v, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_set_params(o, NULL, v, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_set_params(o, v, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_set_params(o, v, v, 5), DQ_ERR_SHAPE);
    float bad[4] = {1, NAN, 3, 4};
    ck_assert_int_eq(dq_lwc_set_params(o, bad, v, 4), DQ_ERR_NONFINITE);
    bad[1] = INFINITY;
    ck_assert_int_eq(dq_lwc_set_params(o, v, bad, 4), DQ_ERR_NONFINITE);
    /* nothing changed by the refused calls */
    float gg[4], bb[4];
    ck_assert_int_eq(dq_lwc_get_params(o, gg, bb, 4), DQ_OK);
    for (int i = 0; i < 4; i++)
        ck_assert(gg[i] == 4.0f && bb[i] == 4.0f);
    ck_assert_int_eq(dq_lwc_factors(NULL, v, v, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_factors(o, NULL, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_lwc_factors(o, v, v, 2), DQ_ERR_SHAPE);
    dq_lwc_free(o);
    dq_lwc_free(NULL);
    free_layer(&l);
}
END_TEST

/* Activations so large that the products overflow float: training reports it and keeps the
 * parameters of the last finite epoch. */
START_TEST(divergence_is_reported)
{
    layer l = make_layer(17, 4, 8, 6);
    for (int64_t i = 0; i < 6 * 8; i++)
        l.x[i] *= 1e20f;
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 3;
    dq_lwc *o = create_lwc(&l, &p, NULL);
    float last = 123.0f;
    ck_assert_int_eq(dq_lwc_train(o, &last), DQ_ERR_NONFINITE);
    ck_assert(last == 123.0f);
    float g[4], b[4];
    int32_t done = -1;
    ck_assert_int_eq(dq_lwc_get_params(o, g, b, 4), DQ_OK);
    ck_assert_int_eq(dq_lwc_layout(o, NULL, &done), DQ_OK);
    ck_assert_int_eq(done, 0);
    for (int i = 0; i < 4; i++)
        ck_assert(g[i] == 4.0f && b[i] == 4.0f);
    dq_lwc_free(o);
    free_layer(&l);
}
END_TEST

START_TEST(allocation_failures)
{
    layer l = make_layer(18, 6, 20, 30);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.flags = DQ_LWC_F_QUANT_ACT;
    p.epochs = 2;
    p.batch_tokens = 8;
    int done_ok = 0;
    for (long fail_at = 1; fail_at < 200 && !done_ok; fail_at++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.total + fail_at;
        dq_lwc *o = NULL;
        dq_status st = dq_lwc_create(ctx, &p, NULL, l.w, 6, 20, 20, l.x, 30, 20, &o);
        if (st == DQ_OK) {
            float g0[6], g1[6], loss = 0, grad[6];
            ck_assert_int_eq(dq_lwc_get_params(o, g0, NULL, 6), DQ_OK);
            st = dq_lwc_train(o, NULL);
            if (st == DQ_OK)
                st = dq_lwc_loss(o, &loss, grad, NULL, 6);
            if (st == DQ_OK) {
                done_ok = 1;
            } else {
                ck_assert_int_eq(st, DQ_ERR_NOMEM);
                int32_t done = 0;
                ck_assert_int_eq(dq_lwc_layout(o, NULL, &done), DQ_OK);
                if (done == 0) {
                    ck_assert_int_eq(dq_lwc_get_params(o, g1, NULL, 6), DQ_OK);
                    ck_assert(memcmp(g0, g1, sizeof g0) == 0);
                }
            }
            dq_lwc_free(o);
        } else {
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
            ck_assert_ptr_null(o);
        }
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
    ck_assert(done_ok);
    free_layer(&l);
}
END_TEST

/* ---- memory LWC allocates ----
 * Bytes allocated through the context, counted live and at their peak (each block's size kept
 * in a header in front of it). */
typedef struct byte_counter {
    size_t live, peak;
} byte_counter;

#define COUNT_HEAD 64

static void *count_alloc(void *user, size_t size, size_t align)
{
    byte_counter *c = user;
    if (align < COUNT_HEAD)
        align = COUNT_HEAD;
    unsigned char *p = aligned_alloc(align, (size + align + align - 1) / align * align);
    if (!p)
        return NULL;
    memcpy(p + align - 2 * sizeof(size_t), &size, sizeof size);
    memcpy(p + align - sizeof(size_t), &align, sizeof align);
    c->live += size;
    c->peak = c->live > c->peak ? c->live : c->peak;
    return p + align;
}

static void count_free(void *user, void *ptr)
{
    if (!ptr)
        return;
    byte_counter *c = user;
    unsigned char *q = ptr;
    size_t size, align;
    memcpy(&size, q - 2 * sizeof(size_t), sizeof size);
    memcpy(&align, q - sizeof(size_t), sizeof align);
    c->live -= size;
    free(q - align);
}

/* Creation, two epochs of training and a full-batch loss with gradients on a 256 x 688 layer
 * (LLaMA-2-7B's MLP proportions) hold at most: the copies of w and x (with QUANT_ACT also the
 * quantized x and the float outputs), one gathered batch, the product and gradient scratch of
 * a block of rows / 16 output rows (3 x block x cols floats and an error block of block
 * outputs per token), 16 floats per clip group (parameters, Adam moments, best parameters,
 * gradients, the epoch's snapshot) and the token order, plus 4 KiB. Weight-only, that is
 * below 1.75 x the weight's bytes, where scratch of full weight size (w^, its partials and the
 * gradient) takes over 4 x. */
START_TEST(peak_allocation_is_bounded)
{
    const int64_t rows = 256, cols = 688, tokens = 64, batch = 32, block = rows / 16;
    layer l = make_layer(31, rows, cols, tokens);
    const uint32_t flags[] = {0, DQ_LWC_F_QUANT_ACT, 0};
    const int32_t groups[] = {0, 0, 128};
    for (int k = 0; k < 3; k++) {
        byte_counter cnt = {0, 0};
        dq_context_params cp;
        dq_context_params_init(&cp, sizeof cp);
        cp.alloc = count_alloc;
        cp.free = count_free;
        cp.alloc_user = &cnt;
        dq_context *ctx = NULL;
        ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
        cnt.live = cnt.peak = 0;
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.flags = flags[k];
        p.epochs = 2;
        p.batch_tokens = (int32_t)batch;
        dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, groups[k]);
        dq_lwc *o = NULL;
        ck_assert_int_eq(dq_lwc_create(ctx, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_OK);
        int64_t n = 0;
        ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
        float loss = 0, before = 0;
        ck_assert_int_eq(dq_lwc_loss(o, &before, NULL, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
        float *gg = malloc((size_t)n * sizeof(float)), *gb = malloc((size_t)n * sizeof(float));
        ck_assert_int_eq(dq_lwc_loss(o, &loss, gg, gb, n), DQ_OK);
        ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &loss), DQ_OK);
        ck_assert(loss <= before);
        dq_lwc_free(o);
        ck_assert_uint_eq(cnt.live, 0);
        dq_context_free(ctx);

        const int qa = flags[k] != 0;
        const size_t f = sizeof(float);
        const size_t wbytes = (size_t)(rows * cols) * f, xbytes = (size_t)(tokens * cols) * f;
        size_t bound = wbytes + xbytes;
        if (qa)
            bound += xbytes + (size_t)(tokens * rows) * f;
        bound += (size_t)(batch * cols) * f * (qa ? 2 : 1) + (qa ? (size_t)(batch * rows) * f : 0);
        bound += 3 * (size_t)(block * cols) * f + (size_t)(tokens * block) * f;
        bound += 16 * (size_t)n * f + (size_t)tokens * sizeof(int64_t) + 4096;
        ck_assert_msg(cnt.peak <= bound, "case %d: peak %zu bytes > bound %zu (%.3f x w)", k,
                      cnt.peak, bound, (double)cnt.peak / (double)wbytes);
        if (!qa)
            ck_assert_msg((double)cnt.peak <= 1.75 * (double)wbytes, "case %d: peak %.3f x w", k,
                          (double)cnt.peak / (double)wbytes);
        free(gg);
        free(gb);
    }
    free_layer(&l);
}
END_TEST

/* The loss and gradient of a layer of several blocks of output rows (130 = 16 x 8 + 2)
 * against those of slices of it small enough for one block (the single-block path is checked
 * against finite differences above): a group's gradient is the slice's scaled by
 * slice rows / rows, the loss the row-weighted mean of the slices'. Weight-only and W4A4,
 * ASYM and SYM, rows and groups; slices at the start, across a block boundary and at the end. */
static void row_block_case(int32_t scheme, int32_t group, uint32_t flags, uint64_t seed)
{
    const int64_t rows = 130, cols = 40, tokens = 24;
    layer l = make_layer(seed, rows, cols, tokens);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.flags = flags;
    dq_quant_params q = weight_params(4, scheme, group);
    dq_lwc *o = create_lwc(&l, &p, &q);
    int64_t n = 0;
    ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
    const int64_t per_row = n / rows;
    float *par = malloc(2 * (size_t)n * sizeof(float)), *g = malloc(2 * (size_t)n * sizeof(float));
    test_rng r = {seed * 5 + 3};
    for (int64_t i = 0; i < 2 * n; i++)
        par[i] = (float)(0.3 + 2.0 * test_rng_uniform(&r));
    ck_assert_int_eq(dq_lwc_set_params(o, par, par + n, n), DQ_OK);
    float loss = 0;
    ck_assert_int_eq(dq_lwc_loss(o, &loss, g, g + n, n), DQ_OK);
    double top = 0;
    for (int64_t i = 0; i < 2 * n; i++)
        top = fmax(top, fabs(g[i]));
    ck_assert(top > 0);
    const int64_t starts[] = {0, 62, 127};
    for (int k = 0; k < 3; k++) {
        const int64_t r0 = starts[k], sr = 3;
        const int64_t sn = sr * per_row;
        dq_lwc *so = NULL;
        ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, l.w + r0 * cols, sr, cols, cols, l.x, tokens,
                                       cols, &so),
                         DQ_OK);
        float *sg = malloc(2 * (size_t)sn * sizeof(float));
        float *sp = malloc(2 * (size_t)sn * sizeof(float));
        memcpy(sp, par + r0 * per_row, (size_t)sn * sizeof(float));
        memcpy(sp + sn, par + n + r0 * per_row, (size_t)sn * sizeof(float));
        ck_assert_int_eq(dq_lwc_set_params(so, sp, sp + sn, sn), DQ_OK);
        float sloss = 0;
        ck_assert_int_eq(dq_lwc_loss(so, &sloss, sg, sg + sn, sn), DQ_OK);
        const double scale = (double)sr / (double)rows;
        for (int64_t i = 0; i < sn; i++)
            for (int which = 0; which < 2; which++) {
                const double whole = g[(which ? n : 0) + r0 * per_row + i];
                const double part = sg[(which ? sn : 0) + i] * scale;
                ck_assert_msg(fabs(whole - part) <= 1e-4 * fmax(fabs(part), 1e-2 * top),
                              "scheme %d group %d flags %u rows %lld+%lld: %s[%lld] %.9g vs "
                              "%.9g", scheme, group, flags, (long long)r0, (long long)i,
                              which ? "beta" : "gamma", (long long)i, whole, part);
            }
        ck_assert(sloss >= 0);
        dq_lwc_free(so);
        free(sg);
        free(sp);
    }
    free(par);
    free(g);
    dq_lwc_free(o);
    free_layer(&l);
}

START_TEST(gradient_across_row_blocks)
{
    row_block_case(DQ_QUANT_ASYM, 0, 0, 121);
    row_block_case(DQ_QUANT_ASYM, 16, DQ_LWC_F_QUANT_ACT, 122);
    row_block_case(DQ_QUANT_SYM, 16, 0, 123);
}
END_TEST

/* dq_lwc_loss gives the value training records for the same parameters, bit for bit, with
 * and without the gradient: a run that only makes the loss worse (a huge step) keeps the
 * start as its best, and dq_lwc_best reports exactly what dq_lwc_loss said there. */
START_TEST(loss_matches_recorded_start)
{
    const uint32_t flags[] = {0, DQ_LWC_F_QUANT_ACT};
    for (int k = 0; k < 2; k++) {
        layer l = make_layer(33 + (uint64_t)k, 150, 96, 100);
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.flags = flags[k];
        p.epochs = 2;
        p.batch_tokens = 32;
        p.learning_rate = 50.0f;
        dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 32);
        dq_lwc *o = create_lwc(&l, &p, &q);
        int64_t n = 0;
        ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
        float *g = malloc(2 * (size_t)n * sizeof(float));
        float start = 0, with_grad = 0, best = 0, after = 0;
        ck_assert_int_eq(dq_lwc_loss(o, &start, NULL, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_lwc_loss(o, &with_grad, g, g + n, n), DQ_OK);
        ck_assert_msg(memcmp(&start, &with_grad, sizeof start) == 0, "case %d: %.9g vs %.9g",
                      k, (double)start, (double)with_grad);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
        ck_assert_int_eq(dq_lwc_loss(o, &after, NULL, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &best), DQ_OK);
        ck_assert_msg(after > start, "case %d: the step did not make the loss worse", k);
        ck_assert_msg(memcmp(&start, &best, sizeof start) == 0, "case %d: start %.9g best %.9g",
                      k, (double)start, (double)best);
        free(g);
        dq_lwc_free(o);
        free_layer(&l);
    }
}
END_TEST

/* Training a layer of several row blocks: the loss goes down and beats fixed clipping (the
 * start), and the result does not depend on how the calls are split. */
START_TEST(row_blocks_train)
{
    layer l = make_layer(32, 150, 256, 128);
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = 10;
    p.batch_tokens = 32;
    dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 128);
    dq_lwc *o = create_lwc(&l, &p, &q);
    float initial = 0, final = 0;
    ck_assert_int_eq(dq_lwc_loss(o, &initial, NULL, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &final), DQ_OK);
    ck_assert_msg(final < initial, "initial %.6g final %.6g", (double)initial, (double)final);
    int64_t n = 0;
    ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(dq_lwc_get_params(o, a, NULL, n), DQ_OK);
    dq_lwc_free(o);
    p.epochs = 5;
    o = create_lwc(&l, &p, &q);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
    ck_assert_int_eq(dq_lwc_get_params(o, b, NULL, n), DQ_OK);
    ck_assert(memcmp(a, b, (size_t)n * sizeof(float)) == 0);
    dq_lwc_free(o);
    free(a);
    free(b);
    free_layer(&l);
}
END_TEST

/* DQ_LWC_F_BORROW reads the caller's w and x in place (here with row strides wider than the
 * rows) and gives the same bits as the copying path (the oracle): training losses, current and
 * best parameters, best loss, and a full-batch loss with gradients, on 130 rows (several row
 * blocks), weight-only and W4A4, ASYM and SYM, rows and groups. The caller's buffers are left
 * untouched. */
static void borrow_case(int32_t scheme, int32_t group, uint32_t flags, uint64_t seed)
{
    const int64_t rows = 130, cols = 72, tokens = 80, ldw = cols + 5, ldx = cols + 3;
    layer l = make_layer(seed, rows, cols, tokens);
    float *wp = malloc((size_t)(rows * ldw) * sizeof(float));
    float *xp = malloc((size_t)(tokens * ldx) * sizeof(float));
    for (int64_t i = 0; i < rows * ldw; i++)
        wp[i] = i % ldw < cols ? l.w[i / ldw * cols + i % ldw] : NAN;
    for (int64_t i = 0; i < tokens * ldx; i++)
        xp[i] = i % ldx < cols ? l.x[i / ldx * cols + i % ldx] : NAN;
    float *wsave = malloc((size_t)(rows * ldw) * sizeof(float));
    float *xsave = malloc((size_t)(tokens * ldx) * sizeof(float));
    memcpy(wsave, wp, (size_t)(rows * ldw) * sizeof(float));
    memcpy(xsave, xp, (size_t)(tokens * ldx) * sizeof(float));
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.flags = flags;
    p.epochs = 3;
    p.batch_tokens = 32;
    dq_quant_params q = weight_params(4, scheme, group);
    dq_lwc *copy = create_lwc(&l, &p, &q), *borrow = NULL;
    p.flags = flags | DQ_LWC_F_BORROW;
    ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, wp, rows, cols, ldw, xp, tokens, ldx, &borrow),
                     DQ_OK);
    int64_t n = 0;
    ck_assert_int_eq(dq_lwc_layout(copy, &n, NULL), DQ_OK);
    const size_t nb = 4 * (size_t)n * sizeof(float);
    float *a = malloc(nb), *b = malloc(nb);
    float la[4], lb[4];
    dq_lwc *o[2] = {copy, borrow};
    float *out[2] = {a, b}, *lo[2] = {la, lb};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(dq_lwc_loss(o[k], &lo[k][0], NULL, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_lwc_train(o[k], &lo[k][1]), DQ_OK);
        ck_assert_int_eq(dq_lwc_best(o[k], out[k], out[k] + n, n, &lo[k][2]), DQ_OK);
        ck_assert_int_eq(dq_lwc_loss(o[k], &lo[k][3], out[k] + 2 * n, out[k] + 3 * n, n), DQ_OK);
    }
    ck_assert_msg(memcmp(la, lb, sizeof la) == 0, "scheme %d group %d flags %u: losses %.9g "
                  "%.9g %.9g %.9g vs %.9g %.9g %.9g %.9g", scheme, group, flags, (double)la[0],
                  (double)la[1], (double)la[2], (double)la[3], (double)lb[0], (double)lb[1],
                  (double)lb[2], (double)lb[3]);
    ck_assert_msg(memcmp(a, b, nb) == 0, "scheme %d group %d flags %u: parameters or gradients "
                  "differ", scheme, group, flags);
    ck_assert(la[2] <= la[0]);
    ck_assert(memcmp(wsave, wp, (size_t)(rows * ldw) * sizeof(float)) == 0);
    ck_assert(memcmp(xsave, xp, (size_t)(tokens * ldx) * sizeof(float)) == 0);
    dq_lwc_free(copy);
    dq_lwc_free(borrow);
    free(a);
    free(b);
    free(wp);
    free(xp);
    free(wsave);
    free(xsave);
    free_layer(&l);
}

START_TEST(borrow_matches_copy)
{
    borrow_case(DQ_QUANT_ASYM, 0, 0, 141);
    borrow_case(DQ_QUANT_ASYM, 16, DQ_LWC_F_QUANT_ACT, 142);
    borrow_case(DQ_QUANT_SYM, 32, 0, 143);
}
END_TEST

/* With DQ_LWC_F_BORROW everything LWC allocates (creation, two epochs, a loss with gradients)
 * stays below half the weight's bytes on a 256 x 688 layer weight-only, below one weight's
 * bytes with QUANT_ACT (which keeps the quantized x and the float outputs): the caller's
 * weight plus LWC stays under 2 x the weight. */
START_TEST(borrow_peak_below_weight)
{
    const int64_t rows = 256, cols = 688, tokens = 64;
    layer l = make_layer(34, rows, cols, tokens);
    const uint32_t flags[] = {0, DQ_LWC_F_QUANT_ACT, 0};
    const int32_t groups[] = {0, 0, 128};
    const double limit[] = {0.5, 1.0, 0.5};
    const double wbytes = (double)(rows * cols) * sizeof(float);
    for (int k = 0; k < 3; k++) {
        byte_counter cnt = {0, 0};
        dq_context_params cp;
        dq_context_params_init(&cp, sizeof cp);
        cp.alloc = count_alloc;
        cp.free = count_free;
        cp.alloc_user = &cnt;
        dq_context *ctx = NULL;
        ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
        cnt.live = cnt.peak = 0;
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.flags = flags[k] | DQ_LWC_F_BORROW;
        p.epochs = 2;
        p.batch_tokens = 32;
        dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, groups[k]);
        dq_lwc *o = NULL;
        ck_assert_int_eq(dq_lwc_create(ctx, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_OK);
        int64_t n = 0;
        ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_OK);
        float *g = malloc(2 * (size_t)n * sizeof(float));
        float loss = 0;
        ck_assert_int_eq(dq_lwc_loss(o, &loss, g, g + n, n), DQ_OK);
        dq_lwc_free(o);
        ck_assert_uint_eq(cnt.live, 0);
        dq_context_free(ctx);
        ck_assert_msg((double)cnt.peak < limit[k] * wbytes, "case %d: peak %.3f x w", k,
                      (double)cnt.peak / wbytes);
        free(g);
    }
    free_layer(&l);
}
END_TEST

/* Finite but huge inputs whose ranges or products overflow float are DQ_ERR_NONFINITE, never
 * a non-finite scale, zero point or loss returned as DQ_OK: weights of +-3e38 (the range of a
 * row overflows: scale +Inf), weights of 1e30 with activations of 1e10 (finite scales, the
 * error products overflow), and with QUANT_ACT activations of +-3e38 (the token scales
 * overflow at creation). Copying and borrowing alike. */
START_TEST(huge_values_are_nonfinite)
{
    const int64_t rows = 20, cols = 32, tokens = 16;
    for (int borrow = 0; borrow < 2; borrow++) {
        const uint32_t bflag = borrow ? DQ_LWC_F_BORROW : 0u;
        dq_quant_params q = weight_params(4, DQ_QUANT_ASYM, 0);
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.epochs = 1;
        p.flags = bflag;
        /* 1. A row spanning [-3e38, 3e38]. */
        layer l = make_layer(51, rows, cols, tokens);
        l.w[3 * cols + 1] = 3e38f;
        l.w[3 * cols + 7] = -3e38f;
        dq_lwc *o = NULL;
        ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_OK);
        int64_t n = 0;
        ck_assert_int_eq(dq_lwc_layout(o, &n, NULL), DQ_OK);
        float *g = malloc(2 * (size_t)n * sizeof(float));
        float loss = 0.5f;
        ck_assert_int_eq(dq_lwc_loss(o, &loss, NULL, NULL, 0), DQ_ERR_NONFINITE);
        ck_assert_int_eq(dq_lwc_loss(o, &loss, g, g + n, n), DQ_ERR_NONFINITE);
        ck_assert(loss == 0.5f);
        ck_assert_int_eq(dq_lwc_best(o, NULL, NULL, 0, &loss), DQ_ERR_NONFINITE);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_ERR_NONFINITE);
        dq_lwc_free(o);
        /* 2. Finite scales, overflowing products. */
        for (int64_t i = 0; i < rows * cols; i++)
            l.w[i] = 1e30f * (float)((i * 7 % 13) - 6);
        for (int64_t i = 0; i < tokens * cols; i++)
            l.x[i] = 1e10f * (float)((i * 5 % 11) - 5);
        ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_OK);
        ck_assert_int_eq(dq_lwc_loss(o, &loss, NULL, NULL, 0), DQ_ERR_NONFINITE);
        ck_assert_int_eq(dq_lwc_loss(o, &loss, g, g + n, n), DQ_ERR_NONFINITE);
        ck_assert_int_eq(dq_lwc_train(o, NULL), DQ_ERR_NONFINITE);
        dq_lwc_free(o);
        free_layer(&l);
        /* 3. Activations spanning [-3e38, 3e38] with QUANT_ACT. */
        l = make_layer(52, rows, cols, tokens);
        l.x[5 * cols + 2] = 3e38f;
        l.x[5 * cols + 9] = -3e38f;
        p.flags = DQ_LWC_F_QUANT_ACT | bflag;
        o = (dq_lwc *)&p; /* must be reset to NULL */
        ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_ERR_NONFINITE);
        ck_assert_ptr_null(o);
        /* Without QUANT_ACT the same activations only overflow the error products. */
        p.flags = bflag;
        ck_assert_int_eq(dq_lwc_create(NULL, &p, &q, l.w, rows, cols, cols, l.x, tokens, cols,
                                       &o),
                         DQ_OK);
        const dq_status st = dq_lwc_loss(o, &loss, NULL, NULL, 0);
        ck_assert(st == DQ_ERR_NONFINITE || (st == DQ_OK && isfinite(loss)));
        dq_lwc_free(o);
        free(g);
        free_layer(&l);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lwc");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, params_defaults);
    tcase_add_test(tc, loss_decreases);
    tcase_add_test(tc, gradient_matches_finite_differences);
    tcase_add_test(tc, resume_equals_one_run);
    tcase_add_test(tc, stop_callback);
    tcase_add_test(tc, epoch_loss_is_logged);
    tcase_add_test(tc, set_and_get_params);
    tcase_add_test(tc, factors_reproduce_loss_through_pack);
    suite_add_tcase(s, tc);
    TCase *mem = tcase_create("memory");
    tcase_set_timeout(mem, 60);
    tcase_add_test(mem, peak_allocation_is_bounded);
    tcase_add_test(mem, gradient_across_row_blocks);
    tcase_add_test(mem, row_blocks_train);
    tcase_add_test(mem, loss_matches_recorded_start);
    tcase_add_test(mem, borrow_matches_copy);
    tcase_add_test(mem, borrow_peak_below_weight);
    tcase_add_test(mem, huge_values_are_nonfinite);
    suite_add_tcase(s, mem);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, bad_create_arguments);
    tcase_add_test(bad, bad_call_arguments);
    tcase_add_test(bad, divergence_is_reported);
    tcase_add_test(bad, allocation_failures);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
