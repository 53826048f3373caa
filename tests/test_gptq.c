/* GPTQ: the Hessian accumulator (streaming, split and thread invariance, merge), the packed
 * result against a plain column-by-column oracle in this file (identical codes, scales and
 * zero points: both apply each column's update to every later element in the same order, in
 * double; only the factorizations are computed differently, so a code could differ only where
 * a weight lies within ~1e-12 of a rounding midpoint, which none does here), the layer-output
 * error on the calibration activations against RTN with the same quantization params (random
 * outlier-heavy layers and the golden layers; printed), plans and clip factors, bad input,
 * allocation failures. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_check_run.h"
#include "dq_golden.h"
#include "dq_quant_rule.h"
#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"

typedef struct layer {
    int64_t rows, cols, tokens;
    float *w, *x;
} layer;

/* Laplace weights with a few large ones; activations with outlier channels and massive
 * values (test_fill_activations). */
static layer make_layer(uint64_t seed, int64_t rows, int64_t cols, int64_t tokens)
{
    layer l = {rows, cols, tokens, malloc((size_t)(rows * cols) * sizeof(float)),
               malloc((size_t)(tokens * cols) * sizeof(float))};
    test_rng r = {seed};
    for (int64_t i = 0; i < rows * cols; i++)
        l.w[i] = (float)(0.02 * test_rng_laplace(&r));
    for (int64_t i = 0; i < rows; i++)
        l.w[i * cols + (i * 11 + 3) % cols] *= 8.0f;
    test_fill_activations(&r, l.x, tokens, cols, cols, 1);
    return l;
}

static void free_layer(layer *l)
{
    free(l->w);
    free(l->x);
}

static dq_quant_params qparams(int32_t bits, int32_t scheme, int32_t group)
{
    dq_quant_params q;
    dq_quant_params_init(&q, sizeof q);
    q.bits = bits;
    q.scheme = scheme;
    q.group_size = group;
    return q;
}

static dq_gptq_params gparams(uint32_t flags, int32_t block)
{
    dq_gptq_params g;
    dq_gptq_params_init(&g, sizeof g);
    g.flags = flags;
    g.block_size = block;
    return g;
}

static dq_hessian *hessian_of(dq_context *ctx, const dq_plan *plan, const float *x,
                              int64_t tokens, int64_t cols)
{
    dq_hessian *h = NULL;
    ck_assert_int_eq(dq_hessian_create(ctx, plan, cols, &h), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(h, x, tokens, cols, cols), DQ_OK);
    return h;
}

/* ||x w^T - x wq^T||_F in double. */
static double layer_error(const float *x, int64_t tokens, const float *w, const float *wq,
                          int64_t rows, int64_t cols)
{
    double s = 0.0;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t i = 0; i < rows; i++) {
            double d = 0.0;
            for (int64_t j = 0; j < cols; j++)
                d += (double)x[t * cols + j] *
                     ((double)w[i * cols + j] - (double)wq[i * cols + j]);
            s += d * d;
        }
    return sqrt(s);
}

static float *dequantized(const dq_qmatrix *q, int64_t rows, int64_t cols)
{
    float *out = malloc((size_t)(rows * cols) * sizeof(float));
    ck_assert_int_eq(dq_qmatrix_dequantize(q, out, cols), DQ_OK);
    return out;
}

/* ---- the oracle: plain GPTQ, one column at a time, in double ---- */

typedef struct oracle_out {
    int32_t *codes; /* rows x cols, original column order */
    float *scales, *zeros; /* rows x groups */
} oracle_out;

/* Scale and zero point with the clip search (candidates 1 - k / grid, first minimum). */
static void oracle_params(const dq_quant_params *qp, const dq_gptq_params *gp, const float *x,
                          int64_t n, float hi, float lo, float *scale, float *zero)
{
    float mn = x[0], mx = x[0];
    for (int64_t i = 1; i < n; i++) {
        mn = fminf(mn, x[i]);
        mx = fmaxf(mx, x[i]);
    }
    int32_t cand = (gp->flags & DQ_GPTQ_F_CLIP_SEARCH)
                       ? (int32_t)floorf(gp->clip_max_shrink * (float)gp->clip_grid)
                       : 1;
    if (cand < 1)
        cand = 1;
    double best = INFINITY;
    for (int32_t k = 0; k < cand; k++) {
        float p = 1.0f - (float)k / (float)gp->clip_grid, sc, zp;
        ck_assert(dq__qr_params(qp->bits, qp->scheme, mn, mx, hi * p, lo * p, &sc, &zp));
        double err = 0.0;
        for (int64_t i = 0; cand > 1 && i < n; i++) {
            int32_t c = dq__qr_code(qp->bits, qp->scheme, x[i], sc, zp);
            float dq = qp->scheme == DQ_QUANT_ASYM ? ((float)c - zp) * sc : (float)c * sc;
            err += pow(fabs((double)dq - (double)x[i]), (double)gp->clip_norm);
        }
        if (k == 0 || err < best) {
            best = err;
            *scale = sc;
            *zero = zp;
        }
    }
}

/* Length of group g of n columns in groups of gl (the last one may be shorter). */
static int64_t glen(int64_t n, int64_t gl, int64_t g)
{
    return n - g * gl < gl ? n - g * gl : gl;
}

/* w: rows x cols float weights in the Hessian's space; hmat: the accumulated H. */
static oracle_out oracle(const dq_gptq_params *gp, const dq_quant_params *qp, const double *hmat,
                         const float *w_in, int64_t rows, int64_t n, const float *clip_hi,
                         const float *clip_lo, int per_row_clip)
{
    /* Where the group size does not divide n the last group is shorter. */
    const int64_t gl = qp->group_size ? qp->group_size : n, groups = (n + gl - 1) / gl;
    const int act = (gp->flags & DQ_GPTQ_F_ACT_ORDER) != 0;
    const int dynamic = groups > 1 && !act && !(gp->flags & DQ_GPTQ_F_STATIC_GROUPS);
    oracle_out o = {malloc((size_t)(rows * n) * sizeof(int32_t)),
                    malloc((size_t)(rows * groups) * sizeof(float)),
                    malloc((size_t)(rows * groups) * sizeof(float))};
    double *h = malloc((size_t)(n * n) * sizeof(double));
    double *hp = malloc((size_t)(n * n) * sizeof(double));
    double *u = calloc((size_t)(n * n), sizeof(double));
    double *wd = malloc((size_t)(rows * n) * sizeof(double));
    float *w = malloc((size_t)(rows * n) * sizeof(float));
    int64_t *perm = malloc((size_t)n * sizeof(int64_t));
    memcpy(h, hmat, (size_t)(n * n) * sizeof(double));
    memcpy(w, w_in, (size_t)(rows * n) * sizeof(float));
    for (int64_t j = 0; j < n; j++)
        if (h[j * n + j] == 0.0) {
            h[j * n + j] = 1.0;
            for (int64_t i = 0; i < rows; i++)
                w[i * n + j] = 0.0f;
        }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t g = 0; g < groups; g++) {
            int64_t ci = per_row_clip ? i : i * groups + g;
            oracle_params(qp, gp, w + i * n + g * gl, glen(n, gl, g), clip_hi ? clip_hi[ci] : 1.0f,
                          clip_lo ? clip_lo[ci] : 1.0f, &o.scales[i * groups + g],
                          &o.zeros[i * groups + g]);
        }
    for (int64_t j = 0; j < n; j++)
        perm[j] = j;
    if (act) /* insertion sort: descending diagonal, ties by index */
        for (int64_t a = 1; a < n; a++)
            for (int64_t b = a;
                 b > 0 && h[perm[b] * n + perm[b]] > h[perm[b - 1] * n + perm[b - 1]]; b--) {
                int64_t t = perm[b];
                perm[b] = perm[b - 1];
                perm[b - 1] = t;
            }
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++)
        mean += h[j * n + j];
    mean /= (double)n;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++)
            hp[a * n + b] = h[perm[a] * n + perm[b]] + (a == b ? (double)gp->damp * mean : 0.0);
    /* H^-1 column by column from the Cholesky factor (stored in h), then its upper factor. */
    for (int64_t j = 0; j < n; j++) {
        double s = hp[j * n + j];
        for (int64_t k = 0; k < j; k++)
            s -= h[j * n + k] * h[j * n + k];
        ck_assert(s > 0.0);
        h[j * n + j] = sqrt(s);
        for (int64_t i = j + 1; i < n; i++) {
            double t = hp[i * n + j];
            for (int64_t k = 0; k < j; k++)
                t -= h[i * n + k] * h[j * n + k];
            h[i * n + j] = t / h[j * n + j];
        }
    }
    for (int64_t c = 0; c < n; c++) { /* hp column c = H^-1 e_c */
        double *y = malloc((size_t)n * sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            double t = i == c ? 1.0 : 0.0;
            for (int64_t k = 0; k < i; k++)
                t -= h[i * n + k] * y[k];
            y[i] = t / h[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) {
            double t = y[i];
            for (int64_t k = i + 1; k < n; k++)
                t -= h[k * n + i] * hp[k * n + c];
            hp[i * n + c] = t / h[i * n + i];
        }
        free(y);
    }
    for (int64_t j = 0; j < n; j++) { /* H^-1 = U^T U */
        double s = hp[j * n + j];
        for (int64_t k = 0; k < j; k++)
            s -= u[k * n + j] * u[k * n + j];
        ck_assert(s > 0.0);
        u[j * n + j] = sqrt(s);
        for (int64_t c = j + 1; c < n; c++) {
            double t = hp[j * n + c];
            for (int64_t k = 0; k < j; k++)
                t -= u[k * n + j] * u[k * n + c];
            u[j * n + c] = t / u[j * n + j];
        }
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < n; j++)
            wd[i * n + j] = (double)w[i * n + perm[j]];
    for (int64_t j = 0; j < n; j++) {
        const int64_t col = perm[j], g = col / gl;
        for (int64_t i = 0; i < rows; i++) {
            double *wr = wd + i * n;
            if (dynamic && j % gl == 0) {
                float fx[4096];
                for (int64_t c = 0; c < glen(n, gl, g); c++)
                    fx[c] = (float)wr[j + c];
                int64_t ci = per_row_clip ? i : i * groups + g;
                oracle_params(qp, gp, fx, glen(n, gl, g), clip_hi ? clip_hi[ci] : 1.0f,
                              clip_lo ? clip_lo[ci] : 1.0f, &o.scales[i * groups + g],
                              &o.zeros[i * groups + g]);
            }
            float sc = o.scales[i * groups + g], zp = o.zeros[i * groups + g];
            int32_t code = dq__qr_code(qp->bits, qp->scheme, (float)wr[j], sc, zp);
            o.codes[i * n + col] = code;
            float dq = qp->scheme == DQ_QUANT_ASYM ? ((float)code - zp) * sc : (float)code * sc;
            double err = (wr[j] - (double)dq) / u[j * n + j];
            for (int64_t c = j + 1; c < n; c++)
                wr[c] -= err * u[j * n + c];
        }
    }
    free(h);
    free(hp);
    free(u);
    free(wd);
    free(w);
    free(perm);
    return o;
}

static void oracle_free(oracle_out *o)
{
    free(o->codes);
    free(o->scales);
    free(o->zeros);
}

/* Codes, scales and zero points of q equal the oracle's (count of differing codes returned). */
static long compare_oracle(const dq_qmatrix *q, const oracle_out *o, const dq_quant_params *qp,
                           int64_t rows, int64_t cols)
{
    const int64_t gl = qp->group_size ? qp->group_size : cols, groups = (cols + gl - 1) / gl;
    int32_t *codes = malloc((size_t)(rows * cols) * sizeof(int32_t));
    ck_assert_int_eq(dq_qmatrix_unpack_codes(q, codes, cols), DQ_OK);
    const float *scales, *zeros;
    ck_assert_int_eq(dq_qmatrix_view(q, NULL, NULL, &scales, &zeros), DQ_OK);
    long diff = 0;
    for (int64_t k = 0; k < rows * cols; k++)
        diff += codes[k] != o->codes[k];
    for (int64_t k = 0; k < rows * groups; k++) {
        ck_assert_msg(scales[k] == o->scales[k], "scale %lld: %g vs oracle %g", (long long)k,
                      (double)scales[k], (double)o->scales[k]);
        if (qp->scheme == DQ_QUANT_ASYM)
            ck_assert(zeros[k] == o->zeros[k]);
    }
    free(codes);
    return diff;
}

/* ---- the accumulator ---- */

START_TEST(hessian_is_split_and_thread_invariant)
{
    layer l = make_layer(1, 4, 40, 50);
    const int64_t n = l.cols;
    double *ref = calloc((size_t)(n * n), sizeof(double));
    for (int64_t t = 0; t < l.tokens; t++) /* naive sum in token order */
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                ref[i * n + j] += (double)l.x[t * n + i] * (double)l.x[t * n + j];
    double *got = malloc((size_t)(n * n) * sizeof(double));
    dq_hessian *h = hessian_of(NULL, NULL, l.x, l.tokens, n);
    ck_assert_int_eq(dq_hessian_matrix(h, got, n), DQ_OK);
    ck_assert(memcmp(ref, got, (size_t)(n * n) * sizeof(double)) == 0);

    /* Batches of 1, 7 and the rest, on a 3-thread context: the same bits. */
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = 3;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
    dq_hessian *s = NULL;
    ck_assert_int_eq(dq_hessian_create(ctx, NULL, n, &s), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(s, l.x, 1, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(s, l.x + n, 7, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(s, l.x + 8 * n, l.tokens - 8, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_matrix(s, got, n), DQ_OK);
    ck_assert(memcmp(ref, got, (size_t)(n * n) * sizeof(double)) == 0);
    int64_t tokens = 0;
    ck_assert_int_eq(dq_hessian_tokens(s, &tokens), DQ_OK);
    ck_assert_int_eq(tokens, l.tokens);

    /* Merge: two halves give the whole up to one rounding per element. */
    dq_hessian *a = hessian_of(NULL, NULL, l.x, 20, n), *b = hessian_of(NULL, NULL, l.x + 20 * n,
                                                                        l.tokens - 20, n);
    ck_assert_int_eq(dq_hessian_merge(a, b), DQ_OK);
    ck_assert_int_eq(dq_hessian_tokens(a, &tokens), DQ_OK);
    ck_assert_int_eq(tokens, l.tokens);
    ck_assert_int_eq(dq_hessian_matrix(a, got, n), DQ_OK);
    /* Each sum is off by at most tokens * eps * sum |terms| <= tokens * eps * sqrt(H_ii H_jj). */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            ck_assert(fabs(got[i * n + j] - ref[i * n + j]) <=
                      2.0 * (double)l.tokens * DBL_EPSILON *
                          sqrt(ref[i * n + i] * ref[j * n + j]));
    dq_hessian_free(a);
    dq_hessian_free(b);
    dq_hessian_free(s);
    dq_hessian_free(h);
    dq_context_free(ctx);
    free(ref);
    free(got);
    free_layer(&l);
}
END_TEST

/* ---- against the oracle ---- */

typedef struct config {
    const char *name;
    int32_t bits, scheme, group;
    uint32_t flags;
} config;

static const config configs[] = {
    {"row asym4", 4, DQ_QUANT_ASYM, 0, 0},
    {"row sym4", 4, DQ_QUANT_SYM, 0, 0},
    {"row asym8", 8, DQ_QUANT_ASYM, 0, 0},
    {"g32 asym4", 4, DQ_QUANT_ASYM, 32, 0},
    {"g32 static", 4, DQ_QUANT_ASYM, 32, DQ_GPTQ_F_STATIC_GROUPS},
    {"row act-order", 4, DQ_QUANT_ASYM, 0, DQ_GPTQ_F_ACT_ORDER},
    {"g32 act-order", 4, DQ_QUANT_ASYM, 32, DQ_GPTQ_F_ACT_ORDER},
    {"g16 sym act-order", 4, DQ_QUANT_SYM, 16, DQ_GPTQ_F_ACT_ORDER},
    {"row clip-search", 4, DQ_QUANT_ASYM, 0, DQ_GPTQ_F_CLIP_SEARCH},
    {"g32 clip-search", 4, DQ_QUANT_ASYM, 32, DQ_GPTQ_F_CLIP_SEARCH},
    {"g32 act-order clip", 4, DQ_QUANT_ASYM, 32, DQ_GPTQ_F_ACT_ORDER | DQ_GPTQ_F_CLIP_SEARCH},
    /* Groups that do not divide the 96 columns: two of 40 and a last one of 16. */
    {"g40 asym4", 4, DQ_QUANT_ASYM, 40, 0},
    {"g40 static", 4, DQ_QUANT_ASYM, 40, DQ_GPTQ_F_STATIC_GROUPS},
    {"g40 act-order clip", 4, DQ_QUANT_ASYM, 40, DQ_GPTQ_F_ACT_ORDER | DQ_GPTQ_F_CLIP_SEARCH},
};
#define N_CONFIGS (sizeof configs / sizeof configs[0])

/* The lazy-block result equals the oracle's codes, scales and zero points; block sizes and
 * thread counts change no bit. */
START_TEST(matches_oracle)
{
    layer l = make_layer(2, 24, 96, 200);
    const int64_t n = l.cols;
    dq_hessian *h = hessian_of(NULL, NULL, l.x, l.tokens, n);
    double *hm = malloc((size_t)(n * n) * sizeof(double));
    ck_assert_int_eq(dq_hessian_matrix(h, hm, n), DQ_OK);
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = 3;
    dq_context *ctx3 = NULL;
    ck_assert_int_eq(dq_context_create(&cp, &ctx3), DQ_OK);
    for (size_t c = 0; c < N_CONFIGS; c++) {
        const config *cf = &configs[c];
        dq_quant_params qp = qparams(cf->bits, cf->scheme, cf->group);
        dq_gptq_params gp = gparams(cf->flags, 128);
        oracle_out o = oracle(&gp, &qp, hm, l.w, l.rows, n, NULL, NULL, 0);
        dq_qmatrix *ref = NULL;
        ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &ref),
                         DQ_OK);
        long diff = compare_oracle(ref, &o, &qp, l.rows, n);
        ck_assert_msg(diff == 0, "%s: %ld codes differ from the oracle", cf->name, diff);
        const uint8_t *pr;
        const float *sr;
        size_t nb;
        ck_assert_int_eq(dq_qmatrix_view(ref, &pr, &nb, &sr, NULL), DQ_OK);
        const int32_t blocks[] = {1, 5, 32, 200};
        for (size_t b = 0; b < 4; b++) {
            dq_gptq_params g2 = gparams(cf->flags, blocks[b]);
            dq_qmatrix *q = NULL;
            ck_assert_int_eq(dq_gptq_pack(b & 1 ? ctx3 : NULL, &g2, &qp, h, l.w, l.rows, n, n,
                                          NULL, NULL, 0, &q),
                             DQ_OK);
            const uint8_t *pq;
            const float *sq;
            ck_assert_int_eq(dq_qmatrix_view(q, &pq, NULL, &sq, NULL), DQ_OK);
            ck_assert_msg(memcmp(pq, pr, nb) == 0, "%s, block %d: codes differ", cf->name,
                          (int)blocks[b]);
            const int64_t groups = cf->group ? (n + cf->group - 1) / cf->group : 1;
            ck_assert(memcmp(sq, sr, sizeof(float) * (size_t)(l.rows * groups)) == 0);
            dq_qmatrix_free(q);
        }
        dq_qmatrix_free(ref);
        oracle_free(&o);
    }
    dq_context_free(ctx3);
    dq_hessian_free(h);
    free(hm);
    free_layer(&l);
}
END_TEST

/* Wide enough for the factorization's steps to run in parallel parts: the same bits on one
 * thread and on four. */
START_TEST(thread_count_changes_no_bit)
{
    layer l = make_layer(3, 8, 384, 64);
    const int64_t n = l.cols;
    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 32);
    dq_gptq_params gp = gparams(DQ_GPTQ_F_ACT_ORDER, 128);
    dq_qmatrix *q[2] = {NULL, NULL};
    double *hm[2];
    for (int k = 0; k < 2; k++) {
        dq_context_params cp;
        dq_context_params_init(&cp, sizeof cp);
        cp.n_threads = k ? 4 : 1;
        dq_context *ctx = NULL;
        ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
        dq_hessian *h = hessian_of(ctx, NULL, l.x, l.tokens, n);
        hm[k] = malloc((size_t)(n * n) * sizeof(double));
        ck_assert_int_eq(dq_hessian_matrix(h, hm[k], n), DQ_OK);
        ck_assert_int_eq(dq_gptq_pack(ctx, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &q[k]),
                         DQ_OK);
        dq_hessian_free(h);
        dq_context_free(ctx);
    }
    ck_assert(memcmp(hm[0], hm[1], (size_t)(n * n) * sizeof(double)) == 0);
    const uint8_t *p0, *p1;
    const float *s0, *s1, *z0, *z1;
    size_t nb;
    ck_assert_int_eq(dq_qmatrix_view(q[0], &p0, &nb, &s0, &z0), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(q[1], &p1, NULL, &s1, &z1), DQ_OK);
    ck_assert(memcmp(p0, p1, nb) == 0);
    ck_assert(memcmp(s0, s1, (size_t)(l.rows * n / 32) * sizeof(float)) == 0);
    ck_assert(memcmp(z0, z1, (size_t)(l.rows * n / 32) * sizeof(float)) == 0);
    oracle_out o = oracle(&gp, &qp, hm[0], l.w, l.rows, n, NULL, NULL, 0);
    ck_assert_int_eq(compare_oracle(q[0], &o, &qp, l.rows, n), 0);
    oracle_free(&o);
    for (int k = 0; k < 2; k++) {
        dq_qmatrix_free(q[k]);
        free(hm[k]);
    }
    free_layer(&l);
}
END_TEST

/* ---- never worse than RTN ---- */

/* GPTQ and RTN (dq_qmatrix_pack, same params) errors on the calibration activations x of the
 * weights w (both in the Hessian's space). */
static void errors_vs_rtn(const char *label, const float *x, int64_t tokens, const float *w,
                          int64_t rows, int64_t cols, const dq_hessian *h, const config *cf,
                          double *e_gptq, double *e_rtn)
{
    dq_quant_params qp = qparams(cf->bits, cf->scheme, cf->group);
    dq_gptq_params gp = gparams(cf->flags, 128);
    dq_qmatrix *g = NULL, *r = NULL;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, w, rows, cols, cols, NULL, NULL, 0, &g),
                     DQ_OK);
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &qp, w, rows, cols, cols, NULL, NULL, &r), DQ_OK);
    float *wg = dequantized(g, rows, cols), *wr = dequantized(r, rows, cols);
    *e_gptq = layer_error(x, tokens, w, wg, rows, cols);
    *e_rtn = layer_error(x, tokens, w, wr, rows, cols);
    printf("%-14s %-20s GPTQ %10.4g  RTN %10.4g  ratio %.3f\n", label, cf->name, *e_gptq, *e_rtn,
           *e_gptq / *e_rtn);
    ck_assert_msg(*e_gptq < *e_rtn, "%s %s: GPTQ error %g not below RTN's %g", label, cf->name,
                  *e_gptq, *e_rtn);
    free(wg);
    free(wr);
    dq_qmatrix_free(g);
    dq_qmatrix_free(r);
}

START_TEST(random_layers_beat_rtn)
{
    for (uint64_t seed = 10; seed < 13; seed++) {
        layer l = make_layer(seed, 24, 96, 200);
        dq_hessian *h = hessian_of(NULL, NULL, l.x, l.tokens, l.cols);
        char label[32];
        snprintf(label, sizeof label, "random %d", (int)seed);
        for (size_t c = 0; c < N_CONFIGS; c++) {
            double eg, er;
            errors_vs_rtn(label, l.x, l.tokens, l.w, l.rows, l.cols, h, &configs[c], &eg, &er);
        }
        dq_hessian_free(h);
        free_layer(&l);
    }
}
END_TEST

START_TEST(golden_layers_beat_rtn)
{
    golden_case *cases = NULL;
    int absent = 0, n = golden_list(&cases, &absent);
    ck_assert_int_ge(n, 0);
    if (n == 0) {
        printf("golden vectors absent from %s: skipped\n", golden_dir());
        return;
    }
    const config used[] = {configs[0], configs[10]};
    for (int k = 0; k < n; k++)
        for (int space = 0; space < 2; space++) {
            const char *xn = space ? "Xt" : "X", *wn = space ? "Wt" : "W";
            /* The variants of a case (a_qrand, a_smooth, ...) share its X and W. */
            if (!golden_has(&cases[k], xn) || !golden_has(&cases[k], wn) ||
                (!space && strchr(cases[k].name, '_')))
                continue;
            float *x, *w;
            int64_t t, c, r, c2;
            ck_assert_int_eq(golden_load_f32(&cases[k], xn, &x, &t, &c), 0);
            ck_assert_int_eq(golden_load_f32(&cases[k], wn, &w, &r, &c2), 0);
            ck_assert_int_eq(c, c2);
            dq_hessian *h = hessian_of(NULL, NULL, x, t, c);
            char label[300];
            snprintf(label, sizeof label, "%.32s %s", cases[k].name, space ? "Xt/Wt" : "X/W");
            /* The 512-wide cases with the first config only: the test stays fast. */
            for (size_t i = 0; i < (c > 256 ? 1 : sizeof used / sizeof used[0]); i++) {
                double eg, er;
                errors_vs_rtn(label, x, t, w, r, c, h, &used[i], &eg, &er);
            }
            dq_hessian_free(h);
            free(x);
            free(w);
        }
    golden_free_cases(cases, n);
}
END_TEST

/* ---- plans, clip factors, singular and dead columns ---- */

/* A Hessian with a plan transforms the activations; the packed weights are the transformed
 * ones, carry the plan's fingerprint, load into a layer with that plan, and beat RTN of the
 * same transformed weights (dq_qmatrix_pack_transformed). */
START_TEST(plan_composes)
{
    layer l = make_layer(20, 24, 96, 200);
    const int64_t n = l.cols;
    float *wmax = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(dq_smooth_weight_absmax(l.w, l.rows, n, n, 0, wmax), DQ_OK);
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = 32;
    pp.max_rotation_step = 16;
    dq_plan *plan = NULL;
    ck_assert_int_eq(
        dq_plan_build_from_sample(NULL, &pp, NULL, l.x, l.tokens, n, n, wmax, &plan), DQ_OK);
    dq_hessian *h = NULL;
    ck_assert_int_eq(dq_hessian_create(NULL, plan, n, &h), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(h, l.x, l.tokens, n, n), DQ_OK);
    float *xt = malloc((size_t)(l.tokens * n) * sizeof(float));
    float *wt = malloc((size_t)(l.rows * n) * sizeof(float));
    ck_assert_int_eq(dq_plan_apply_act_to(plan, l.x, l.tokens, n, n, xt, n, NULL, 0), DQ_OK);
    memcpy(wt, l.w, (size_t)(l.rows * n) * sizeof(float));
    ck_assert_int_eq(dq_plan_transform_weight(plan, wt, l.rows, n, n), DQ_OK);
    /* The Hessian is that of the transformed activations, bit for bit. */
    dq_hessian *ht = hessian_of(NULL, NULL, xt, l.tokens, n);
    double *h1 = malloc((size_t)(n * n) * sizeof(double));
    double *h2 = malloc((size_t)(n * n) * sizeof(double));
    ck_assert_int_eq(dq_hessian_matrix(h, h1, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_matrix(ht, h2, n), DQ_OK);
    ck_assert(memcmp(h1, h2, (size_t)(n * n) * sizeof(double)) == 0);
    /* Batches of 1, 7 and the rest give the same bits here too. */
    dq_hessian *hb = NULL;
    ck_assert_int_eq(dq_hessian_create(NULL, plan, n, &hb), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(hb, l.x, 1, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(hb, l.x + n, 7, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(hb, l.x + 8 * n, l.tokens - 8, n, n), DQ_OK);
    ck_assert_int_eq(dq_hessian_matrix(hb, h2, n), DQ_OK);
    ck_assert(memcmp(h1, h2, (size_t)(n * n) * sizeof(double)) == 0);
    dq_hessian_free(hb);

    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 0);
    dq_gptq_params gp = gparams(DQ_GPTQ_F_ACT_ORDER, 128);
    dq_qmatrix *g = NULL, *r = NULL, *g_plain = NULL;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &g),
                     DQ_OK);
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, ht, wt, l.rows, n, n, NULL, NULL, 0, &g_plain),
                     DQ_OK);
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(NULL, &qp, plan, l.w, l.rows, n, n, NULL, NULL, &r), DQ_OK);
    uint64_t fp_plan, fp_g, fp_plain;
    ck_assert_int_eq(dq_plan_fingerprint(plan, &fp_plan), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(g, &fp_g), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(g_plain, &fp_plain), DQ_OK);
    ck_assert(fp_g == fp_plan && fp_plain == 0);
    const uint8_t *p1, *p2;
    size_t nb;
    ck_assert_int_eq(dq_qmatrix_view(g, &p1, &nb, NULL, NULL), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(g_plain, &p2, NULL, NULL, NULL), DQ_OK);
    ck_assert(memcmp(p1, p2, nb) == 0);
    float *wg = dequantized(g, l.rows, n), *wr = dequantized(r, l.rows, n);
    double eg = layer_error(xt, l.tokens, wt, wg, l.rows, n);
    double er = layer_error(xt, l.tokens, wt, wr, l.rows, n);
    printf("plan (DuQuant)  row act-order        GPTQ %10.4g  RTN %10.4g  ratio %.3f\n", eg, er,
           eg / er);
    ck_assert(eg < er);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, plan, g, NULL, &lin), DQ_OK);
    dq_linear_free(lin);
    /* Another plan's fingerprint in the quant params is refused. */
    qp.plan_fingerprint = fp_plan ^ 1;
    dq_qmatrix *bad = NULL;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &bad),
                     DQ_ERR_MISMATCH);
    ck_assert_ptr_null(bad);
    free(wg);
    free(wr);
    free(h1);
    free(h2);
    free(xt);
    free(wt);
    free(wmax);
    dq_qmatrix_free(g);
    dq_qmatrix_free(g_plain);
    dq_qmatrix_free(r);
    dq_hessian_free(h);
    dq_hessian_free(ht);
    dq_plan_free(plan);
    free_layer(&l);
}
END_TEST

/* Per-row (LWC-style) clip factors: the per-row scales are dq_qmatrix_pack_clipped's on the
 * same weights, the codes the oracle's with those factors. */
START_TEST(clip_factors_compose)
{
    layer l = make_layer(21, 24, 96, 200);
    const int64_t n = l.cols;
    float hi[24], lo[24];
    for (int i = 0; i < 24; i++) {
        hi[i] = 0.8f + 0.008f * (float)i;
        lo[i] = 0.95f - 0.005f * (float)i;
    }
    dq_hessian *h = hessian_of(NULL, NULL, l.x, l.tokens, n);
    double *hm = malloc((size_t)(n * n) * sizeof(double));
    ck_assert_int_eq(dq_hessian_matrix(h, hm, n), DQ_OK);
    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 0);
    dq_gptq_params gp = gparams(DQ_GPTQ_F_ACT_ORDER, 128);
    dq_qmatrix *g = NULL, *r = NULL;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, hi, lo, 24, &g), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &qp, l.w, l.rows, n, n, hi, lo, 24, &r),
                     DQ_OK);
    const float *sg, *sr;
    ck_assert_int_eq(dq_qmatrix_view(g, NULL, NULL, &sg, NULL), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(r, NULL, NULL, &sr, NULL), DQ_OK);
    ck_assert(memcmp(sg, sr, 24 * sizeof(float)) == 0);
    oracle_out o = oracle(&gp, &qp, hm, l.w, l.rows, n, hi, lo, 1);
    ck_assert_int_eq(compare_oracle(g, &o, &qp, l.rows, n), 0);
    oracle_free(&o);
    dq_qmatrix_free(g);
    dq_qmatrix_free(r);
    dq_hessian_free(h);
    free(hm);
    free_layer(&l);
}
END_TEST

/* Fewer tokens than columns: H is singular; dampening makes it positive definite (and GPTQ
 * still beats RTN), without dampening it is refused. A dead channel quantizes its weights as
 * zeros. */
START_TEST(singular_and_dead_columns)
{
    layer l = make_layer(22, 24, 96, 40);
    const int64_t n = l.cols;
    for (int64_t t = 0; t < l.tokens; t++)
        l.x[t * n + 7] = 0.0f; /* channel 7 never fires */
    dq_hessian *h = hessian_of(NULL, NULL, l.x, l.tokens, n);
    double eg, er;
    for (size_t c = 0; c < N_CONFIGS; c++)
        errors_vs_rtn("40 tokens", l.x, l.tokens, l.w, l.rows, n, h, &configs[c], &eg, &er);
    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 0);
    dq_gptq_params gp = gparams(0, 128);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &q),
                     DQ_OK);
    float *wq = dequantized(q, l.rows, n);
    const float *scales;
    ck_assert_int_eq(dq_qmatrix_view(q, NULL, NULL, &scales, NULL), DQ_OK);
    for (int64_t i = 0; i < l.rows; i++)
        ck_assert(fabsf(wq[i * n + 7]) <= 0.5f * scales[i] * 1.0001f);
    free(wq);
    dq_qmatrix_free(q);
    gp.damp = 0.0f;
    ck_assert_int_eq(dq_gptq_pack(NULL, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &q),
                     DQ_ERR_BAD_STATE);
    ck_assert_ptr_null(q);
    dq_hessian_free(h);
    free_layer(&l);
}
END_TEST

/* ---- bad input ---- */

START_TEST(bad_input)
{
    layer l = make_layer(30, 8, 96, 40);
    const int64_t n = l.cols;
    dq_hessian *h = NULL, *h2 = NULL, *empty = NULL;
    dq_qmatrix *q = (dq_qmatrix *)&q;
    /* Creation and observation. */
    ck_assert_int_eq(dq_hessian_create(NULL, NULL, n, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_create(NULL, NULL, 0, &h), DQ_ERR_SHAPE);
    ck_assert_ptr_null(h);
    ck_assert_int_eq(dq_hessian_create(NULL, NULL, n, &h), DQ_OK);
    ck_assert_int_eq(dq_hessian_create(NULL, NULL, n, &empty), DQ_OK);
    ck_assert_int_eq(dq_hessian_create(NULL, NULL, n - 1, &h2), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe(NULL, l.x, 4, n, n), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_observe(h, NULL, 4, n, n), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_observe(h, l.x, 4, n - 1, n), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_hessian_observe(h, l.x, 4, n, n - 1), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_hessian_observe(h, l.x, 0, n, n), DQ_ERR_SHAPE);
    float keep = l.x[5];
    l.x[5] = NAN;
    ck_assert_int_eq(dq_hessian_observe(h, l.x, 4, n, n), DQ_ERR_NONFINITE);
    l.x[5] = keep;
    int64_t tokens = -1;
    ck_assert_int_eq(dq_hessian_tokens(h, &tokens), DQ_OK);
    ck_assert_int_eq(tokens, 0);
    ck_assert_int_eq(dq_hessian_tokens(h, NULL), DQ_ERR_INVALID_ARG);
    double hm[4];
    ck_assert_int_eq(dq_hessian_matrix(h, hm, 1), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_hessian_matrix(h, NULL, n), DQ_ERR_INVALID_ARG);
    /* Zero tokens: nothing to quantize against. */
    ck_assert_int_eq(dq_gptq_pack(NULL, NULL, NULL, h, l.w, l.rows, n, n, NULL, NULL, 0, &q),
                     DQ_ERR_BAD_STATE);
    ck_assert_ptr_null(q);
    ck_assert_int_eq(dq_hessian_observe(h, l.x, l.tokens, n, n), DQ_OK);
    /* Merge. */
    ck_assert_int_eq(dq_hessian_merge(h, h), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_merge(NULL, h), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_merge(h, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_hessian_merge(h, h2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_hessian_merge(empty, h), DQ_OK); /* an empty one takes the tokens */
    /* Another handle type where a Hessian is expected. */
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, NULL, n, &cal), DQ_OK);
    ck_assert_int_eq(dq_hessian_observe((dq_hessian *)cal, l.x, 4, n, n), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_gptq_pack(NULL, NULL, NULL, (const dq_hessian *)cal, l.w, l.rows, n, n,
                                  NULL, NULL, 0, &q),
                     DQ_ERR_INVALID_ARG);
    dq_calib_free(cal);

    /* Pack arguments. */
    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 0);
    dq_gptq_params gp = gparams(0, 128);
#define PACK(gpp, qpp, hh, ww, cols, ld, hi, lo, nc, out)                                    \
    dq_gptq_pack(NULL, (gpp), (qpp), (hh), (ww), l.rows, (cols), (ld), (hi), (lo), (nc), (out))
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, NULL, NULL, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(PACK(&gp, &qp, NULL, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(PACK(&gp, &qp, h, NULL, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n - 1, n, NULL, NULL, 0, &q), DQ_ERR_SHAPE);
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n - 1, NULL, NULL, 0, &q), DQ_ERR_SHAPE);
    ck_assert_int_eq(PACK(&gp, &qp, h2, l.w, n - 1, n, NULL, NULL, 0, &q), DQ_ERR_BAD_STATE);
    const int32_t bad_groups[] = {192, 97, -1};
    const dq_status group_st[] = {DQ_ERR_SHAPE, DQ_ERR_SHAPE, DQ_ERR_INVALID_ARG};
    for (int k = 0; k < 3; k++) {
        dq_quant_params bq = qparams(4, DQ_QUANT_ASYM, bad_groups[k]);
        ck_assert_int_eq(PACK(&gp, &bq, h, l.w, n, n, NULL, NULL, 0, &q), group_st[k]);
    }
    dq_quant_params bq = qparams(3, DQ_QUANT_ASYM, 0);
    ck_assert_int_eq(PACK(&gp, &bq, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    dq_gptq_params bg = gp;
    const float bad_damp[] = {-0.1f, 1.5f, NAN};
    for (int k = 0; k < 3; k++) {
        bg = gp;
        bg.damp = bad_damp[k];
        ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    }
    bg = gp;
    bg.block_size = 0;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    bg = gp;
    bg.flags = 8u;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    bg = gp;
    bg.clip_grid = 0;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    bg = gp;
    bg.clip_max_shrink = 1.0f;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    bg = gp;
    bg.clip_norm = 0.5f;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_INVALID_ARG);
    bg = gp;
    bg.struct_size = 4;
    ck_assert_int_eq(PACK(&bg, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_STRUCT_SIZE);
    /* A newer caller's struct: accepted while its unknown tail is zero. */
    struct {
        dq_gptq_params known;
        uint32_t future;
    } fg;
    ck_assert_int_eq(dq_gptq_params_init(&fg.known, sizeof fg), DQ_OK);
    ck_assert_int_eq(PACK(&fg.known, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_OK);
    dq_qmatrix_free(q);
    fg.future = 1;
    ck_assert_int_eq(PACK(&fg.known, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_UNSUPPORTED);
    /* Clip factors: out of range, wrong count, a count without arrays. */
    float clip[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, clip, NULL, 7, &q), DQ_ERR_SHAPE);
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, NULL, NULL, 8, &q), DQ_ERR_SHAPE);
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, clip, NULL, -1, &q), DQ_ERR_INVALID_ARG);
    clip[3] = 0.0f;
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, clip, NULL, 8, &q), DQ_ERR_INVALID_ARG);
    clip[3] = 1.5f;
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, NULL, clip, 8, &q), DQ_ERR_INVALID_ARG);
    /* A NaN in the weights. */
    keep = l.w[17];
    l.w[17] = NAN;
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_ERR_NONFINITE);
    l.w[17] = keep;
    ck_assert_ptr_null(q);
    /* Still fine after all that. */
    ck_assert_int_eq(PACK(&gp, &qp, h, l.w, n, n, NULL, NULL, 0, &q), DQ_OK);
    dq_qmatrix_free(q);
#undef PACK
    dq_hessian_free(h);
    dq_hessian_free(h2);
    dq_hessian_free(empty);
    dq_hessian_free(NULL);
    free_layer(&l);
}
END_TEST

/* Every allocation failing in turn: DQ_ERR_NOMEM, no output, nothing leaked. */
START_TEST(allocation_failures)
{
    layer l = make_layer(31, 8, 32, 24);
    const int64_t n = l.cols;
    float *wmax = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(dq_smooth_weight_absmax(l.w, l.rows, n, n, 0, wmax), DQ_OK);
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = 16;
    pp.max_rotation_step = 4;
    dq_gptq_params gp = gparams(DQ_GPTQ_F_ACT_ORDER | DQ_GPTQ_F_CLIP_SEARCH, 8);
    dq_quant_params qp = qparams(4, DQ_QUANT_ASYM, 16);
    int done = 0;
    for (long fail_at = 1; fail_at < 400 && !done; fail_at++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        dq_plan *plan = NULL;
        ck_assert_int_eq(
            dq_plan_build_from_sample(ctx, &pp, NULL, l.x, l.tokens, n, n, wmax, &plan), DQ_OK);
        a.fail_at = a.total + fail_at;
        dq_hessian *h = NULL;
        dq_qmatrix *q = NULL;
        dq_status st = dq_hessian_create(ctx, plan, n, &h);
        if (st == DQ_OK)
            st = dq_hessian_observe(h, l.x, l.tokens, n, n);
        if (st == DQ_OK) {
            st = dq_gptq_pack(ctx, &gp, &qp, h, l.w, l.rows, n, n, NULL, NULL, 0, &q);
            if (st == DQ_OK)
                done = 1;
            else
                ck_assert_ptr_null(q);
        }
        if (!done) {
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
            int64_t tokens = -1;
            if (h) {
                ck_assert_int_eq(dq_hessian_tokens(h, &tokens), DQ_OK);
                ck_assert(tokens == 0 || tokens == l.tokens);
            }
        }
        dq_qmatrix_free(q);
        dq_hessian_free(h);
        dq_plan_free(plan);
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
    ck_assert(done);
    free(wmax);
    free_layer(&l);
}
END_TEST

START_TEST(params_defaults)
{
    dq_gptq_params p;
    ck_assert_int_eq(dq_gptq_params_init(&p, sizeof p), DQ_OK);
    ck_assert_uint_eq(p.struct_size, sizeof p);
    ck_assert_uint_eq(p.flags, 0);
    ck_assert(p.damp == 0.01f && p.block_size == 128 && p.clip_grid == 100);
    ck_assert(p.clip_max_shrink == 0.8f && p.clip_norm == 2.4f);
    ck_assert_int_eq(dq_gptq_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_gptq_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gptq");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, params_defaults);
    tcase_add_test(tc, hessian_is_split_and_thread_invariant);
    tcase_add_test(tc, matches_oracle);
    tcase_add_test(tc, thread_count_changes_no_bit);
    tcase_add_test(tc, plan_composes);
    tcase_add_test(tc, clip_factors_compose);
    tcase_add_test(tc, singular_and_dead_columns);
    suite_add_tcase(s, tc);
    TCase *rtn = tcase_create("versus_rtn");
    tcase_set_timeout(rtn, 60);
    tcase_add_test(rtn, random_layers_beat_rtn);
    tcase_add_test(rtn, golden_layers_beat_rtn);
    suite_add_tcase(s, rtn);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, bad_input);
    tcase_add_test(bad, allocation_failures);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
