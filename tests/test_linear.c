/* Quantized linear layer: the integer path against a float fake-quant oracle, weight-only and
 * 8-bit modes, workspace, ownership, bad input, allocation failures, concurrent forwards, and
 * layers made like another (dq_linear_create_like). */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "test_count_alloc.h"
#include "dq_check_run.h"

typedef struct config {
    int64_t tokens, in, out;
    int32_t w_bits, w_scheme, w_group;
    int32_t act_bits, act_scheme;
    float act_clip;
    int use_plan, use_bias;
} config;

/* One layer and its inputs, built from a config and a seed. */
typedef struct fixture {
    config c;
    float *x, *w, *bias; /* x: tokens x in (ld in + 3), w: out x in (already transformed) */
    int64_t ldx;
    dq_plan *plan;
    dq_qmatrix *q;
    dq_linear *lin;
} fixture;

static dq_plan *make_plan_in(dq_context *ctx, test_rng *r, int64_t cols, const float *w,
                             int64_t rows)
{
    float *sample = malloc((size_t)(32 * cols) * sizeof(float));
    test_fill_activations(r, sample, 32, cols, cols, 1);
    float *w_absmax = malloc((size_t)cols * sizeof(float));
    ck_assert_int_eq(dq_smooth_weight_absmax(w, rows, cols, cols, 0, w_absmax), DQ_OK);
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = cols >= 16 ? 16 : 2;
    pp.max_rotation_step = 8;
    dq_plan *plan = NULL;
    ck_assert_int_eq(
        dq_plan_build_from_sample(ctx, &pp, NULL, sample, 32, cols, cols, w_absmax, &plan),
        DQ_OK);
    free(sample);
    free(w_absmax);
    return plan;
}

static dq_plan *make_plan(test_rng *r, int64_t cols, const float *w, int64_t rows)
{
    return make_plan_in(NULL, r, cols, w, rows);
}

static void fixture_init(fixture *f, config c, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->c = c;
    test_rng r = {seed};
    f->ldx = c.in + 3;
    f->x = malloc((size_t)(c.tokens * f->ldx) * sizeof(float));
    test_fill_activations(&r, f->x, c.tokens, c.in, f->ldx, 1);
    f->w = malloc((size_t)(c.out * c.in) * sizeof(float));
    for (int64_t i = 0; i < c.out * c.in; i++)
        f->w[i] = (float)(0.05 * test_rng_normal(&r));
    if (c.use_bias) {
        f->bias = malloc((size_t)c.out * sizeof(float));
        for (int64_t i = 0; i < c.out; i++)
            f->bias[i] = (float)test_rng_normal(&r);
    }
    if (c.use_plan) {
        f->plan = make_plan(&r, c.in, f->w, c.out);
        ck_assert_int_eq(dq_plan_transform_weight(f->plan, f->w, c.out, c.in, c.in), DQ_OK);
    }
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.bits = c.w_bits;
    qp.scheme = c.w_scheme;
    qp.group_size = c.w_group;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &qp, f->w, c.out, c.in, c.in, NULL, NULL, &f->q),
                     DQ_OK);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = c.act_bits;
    lp.act_scheme = c.act_scheme;
    lp.act_clip_ratio = c.act_clip;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, f->plan, f->q, f->bias, &f->lin), DQ_OK);
}

static void fixture_free(fixture *f)
{
    dq_linear_free(f->lin);
    dq_qmatrix_free(f->q);
    dq_plan_free(f->plan);
    free(f->x);
    free(f->w);
    free(f->bias);
}

/* The float fake-quant path: plan, activations quantized and dequantized per token through
 * dq_qmatrix_pack (one group per row, the act params), weights dequantized, double matmul. */
static float *oracle(const fixture *f)
{
    const config *c = &f->c;
    float *xt = malloc((size_t)(c->tokens * c->in) * sizeof(float));
    if (f->plan) {
        ck_assert_int_eq(dq_plan_apply_act_to(f->plan, f->x, c->tokens, c->in, f->ldx, xt, c->in,
                                              NULL, 0),
                         DQ_OK);
    } else {
        for (int64_t t = 0; t < c->tokens; t++)
            memcpy(xt + t * c->in, f->x + t * f->ldx, (size_t)c->in * sizeof(float));
    }
    if (c->act_bits != 0) {
        dq_quant_params ap;
        dq_quant_params_init(&ap, sizeof ap);
        ap.bits = c->act_bits;
        ap.scheme = c->act_scheme;
        ap.clip_ratio = c->act_clip;
        dq_qmatrix *qa = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &ap, xt, c->tokens, c->in, c->in, NULL, NULL, &qa),
                         DQ_OK);
        ck_assert_int_eq(dq_qmatrix_dequantize(qa, xt, c->in), DQ_OK);
        dq_qmatrix_free(qa);
    }
    float *wd = malloc((size_t)(c->out * c->in) * sizeof(float));
    ck_assert_int_eq(dq_qmatrix_dequantize(f->q, wd, c->in), DQ_OK);
    float *y = malloc((size_t)(c->tokens * c->out) * sizeof(float));
    test_matmul_nt(xt, c->in, wd, c->in, y, c->out, c->tokens, c->out, c->in);
    if (f->bias)
        for (int64_t t = 0; t < c->tokens; t++)
            for (int64_t o = 0; o < c->out; o++)
                y[t * c->out + o] = (float)((double)y[t * c->out + o] + (double)f->bias[o]);
    free(xt);
    free(wd);
    return y;
}

/* Max |a - b| over max |b|: every element within 1e-5 of the output's scale. */
static double max_rel(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

static void check_against_oracle(config c, uint64_t seed)
{
    fixture f;
    fixture_init(&f, c, seed);
    const int64_t ldy = c.out + 2;
    float *y = malloc((size_t)(c.tokens * ldy) * sizeof(float));
    ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y, ldy, NULL, 0), DQ_OK);
    float *ref = oracle(&f);
    double frob = test_rel_err(y, ldy, ref, c.out, c.tokens, c.out);
    float *packed = malloc((size_t)(c.tokens * c.out) * sizeof(float));
    for (int64_t t = 0; t < c.tokens; t++)
        memcpy(packed + t * c.out, y + t * ldy, (size_t)c.out * sizeof(float));
    double elem = max_rel(packed, ref, c.tokens * c.out);
    ck_assert_msg(frob <= 1e-5 && elem <= 1e-5,
                  "in %lld out %lld w%d/%d g%d a%d/%d clip %g plan %d: rel %.3g max %.3g",
                  (long long)c.in, (long long)c.out, c.w_bits, c.w_scheme, c.w_group, c.act_bits,
                  c.act_scheme, (double)c.act_clip, c.use_plan, frob, elem);
    free(packed);
    free(ref);
    free(y);
    fixture_free(&f);
}

START_TEST(integer_path_equals_fake_quant)
{
    const int64_t widths[] = {1, 7, 33, 172};
    const int32_t act_bits[] = {4, 8, 0};
    const int32_t schemes[] = {DQ_QUANT_ASYM, DQ_QUANT_SYM};
    uint64_t seed = 100;
    for (size_t wi = 0; wi < 4; wi++) {
        const int64_t in = widths[wi];
        /* whole rows, a group dividing the width (where one exists), one that does not */
        const int32_t groups[] = {0, in % 4 == 0 ? 4 : 1, in > 5 ? 5 : 0, in > 64 ? 64 : 3};
        for (size_t gi = 0; gi < 4; gi++)
            for (size_t ai = 0; ai < 3; ai++)
                for (size_t si = 0; si < 2; si++) {
                    config c = {.tokens = 1 + (int64_t)(seed % 9),
                                .in = in,
                                .out = 1 + (int64_t)(seed % 23),
                                .w_bits = (seed % 3 == 0) ? 8 : 4,
                                .w_scheme = schemes[(si + gi) % 2],
                                .w_group = groups[gi],
                                .act_bits = act_bits[ai],
                                .act_scheme = schemes[si],
                                .act_clip = (seed % 4 == 1) ? 0.9f : 1.0f,
                                .use_plan = in >= 7 && (seed % 2 == 0),
                                .use_bias = seed % 5 != 0};
                    check_against_oracle(c, seed++);
                }
    }
}
END_TEST

START_TEST(larger_layers_with_plan)
{
    config c = {.tokens = 37, .in = 172, .out = 64, .w_bits = 4, .w_scheme = DQ_QUANT_ASYM,
                .w_group = 0, .act_bits = 4, .act_scheme = DQ_QUANT_ASYM, .act_clip = 1.0f,
                .use_plan = 1, .use_bias = 1};
    check_against_oracle(c, 1);
    c.act_scheme = DQ_QUANT_SYM;
    c.w_scheme = DQ_QUANT_SYM;
    c.w_group = 32;
    check_against_oracle(c, 2);
    c.act_bits = 8;
    c.w_bits = 8;
    c.tokens = 1;
    check_against_oracle(c, 3);
}
END_TEST

START_TEST(workspace_is_exact)
{
    const int32_t act_bits[] = {4, 0};
    for (int plan = 0; plan < 2; plan++)
        for (int a = 0; a < 2; a++) {
            config c = {.tokens = 9, .in = 33, .out = 10, .w_bits = 4, .w_group = 0,
                        .act_bits = act_bits[a], .act_clip = 1.0f, .use_plan = plan,
                        .use_bias = 1};
            fixture f;
            fixture_init(&f, c, 7);
            size_t ws = 0;
            ck_assert_int_eq(dq_linear_workspace_size(f.lin, c.tokens, &ws), DQ_OK);
            float *y0 = malloc((size_t)(c.tokens * c.out) * sizeof(float));
            float *y1 = malloc((size_t)(c.tokens * c.out) * sizeof(float));
            ck_assert_int_eq(
                dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y0, c.out, NULL, 0), DQ_OK);
            if (ws == 0) {
                /* Nothing to keep: weight-only without a plan reads x directly. */
                ck_assert(a == 1 && plan == 0);
                ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y1, c.out,
                                                   y1, 0),
                                 DQ_OK);
                ck_assert(memcmp(y0, y1, (size_t)(c.tokens * c.out) * sizeof(float)) == 0);
            } else {
                unsigned char *work = malloc(ws + 1);
                /* exact size, deliberately misaligned */
                ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y1, c.out,
                                                   work + 1, ws),
                                 DQ_OK);
                ck_assert(memcmp(y0, y1, (size_t)(c.tokens * c.out) * sizeof(float)) == 0);
                memset(y1, 0x5A, (size_t)(c.tokens * c.out) * sizeof(float));
                ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y1, c.out,
                                                   work, ws - 1),
                                 DQ_ERR_BUFFER);
                for (int64_t i = 0; i < c.tokens * c.out; i++) {
                    uint32_t bits;
                    memcpy(&bits, &y1[i], sizeof bits);
                    ck_assert_uint_eq(bits, 0x5A5A5A5Au);
                }
                free(work);
            }
            /* Fewer rows never need more. */
            size_t ws1 = 0;
            ck_assert_int_eq(dq_linear_workspace_size(f.lin, 1, &ws1), DQ_OK);
            ck_assert_uint_le(ws1, ws);
            free(y0);
            free(y1);
            fixture_free(&f);
        }
}
END_TEST

START_TEST(weights_and_bias_are_copied_plan_borrowed)
{
    config c = {.tokens = 4, .in = 33, .out = 6, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f,
                .use_plan = 1, .use_bias = 1};
    fixture f;
    fixture_init(&f, c, 11);
    float *y0 = malloc((size_t)(c.tokens * c.out) * sizeof(float));
    float *y1 = malloc((size_t)(c.tokens * c.out) * sizeof(float));
    ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y0, c.out, NULL, 0),
                     DQ_OK);
    float *expected = oracle(&f);
    /* The caller's packed weights and bias may go away or change. */
    dq_qmatrix_free(f.q);
    f.q = NULL;
    for (int64_t o = 0; o < c.out; o++)
        f.bias[o] = 1e6f;
    ck_assert_int_eq(dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, y1, c.out, NULL, 0),
                     DQ_OK);
    ck_assert(memcmp(y0, y1, (size_t)(c.tokens * c.out) * sizeof(float)) == 0);
    ck_assert(test_rel_err(y0, c.out, expected, c.out, c.tokens, c.out) < 1e-5);
    /* x is not modified. */
    fixture g;
    fixture_init(&g, c, 11);
    for (int64_t t = 0; t < c.tokens; t++)
        ck_assert(memcmp(f.x + t * f.ldx, g.x + t * g.ldx, (size_t)c.in * sizeof(float)) == 0);
    int64_t in = 0, out = 0;
    ck_assert_int_eq(dq_linear_layout(f.lin, &in, &out), DQ_OK);
    ck_assert_int_eq(in, c.in);
    ck_assert_int_eq(out, c.out);
    ck_assert_int_eq(dq_linear_layout(f.lin, NULL, NULL), DQ_OK);
    fixture_free(&g);
    free(expected);
    free(y0);
    free(y1);
    fixture_free(&f);
}
END_TEST

START_TEST(params_defaults)
{
    dq_linear_params p;
    memset(&p, 0xFF, sizeof p);
    ck_assert_int_eq(dq_linear_params_init(&p, sizeof p), DQ_OK);
    ck_assert_uint_eq(p.struct_size, sizeof p);
    ck_assert_uint_eq(p.flags, 0);
    ck_assert_int_eq(p.act_bits, 4);
    ck_assert_int_eq(p.act_scheme, DQ_QUANT_ASYM);
    ck_assert(p.act_clip_ratio == 1.0f);
    ck_assert_int_eq(dq_linear_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
    /* NULL params: the defaults (W4A4 asymmetric) */
    config c = {.tokens = 3, .in = 7, .out = 5, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f};
    fixture f;
    fixture_init(&f, c, 3);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, f.q, NULL, &lin), DQ_OK);
    float y0[15], y1[15];
    ck_assert_int_eq(dq_linear_forward(lin, f.x, 3, 7, f.ldx, y0, 5, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(f.lin, f.x, 3, 7, f.ldx, y1, 5, NULL, 0), DQ_OK);
    ck_assert(memcmp(y0, y1, sizeof y0) == 0);
    dq_linear_free(lin);
    dq_linear_free(NULL);
    fixture_free(&f);
}
END_TEST

static dq_status create_with(const dq_linear_params *p, const dq_plan *plan, const dq_qmatrix *q,
                             const float *bias)
{
    dq_linear *lin = (dq_linear *)(uintptr_t)1;
    dq_status st = dq_linear_create(NULL, p, plan, q, bias, &lin);
    ck_assert_ptr_null(lin);
    return st;
}

START_TEST(bad_create_arguments)
{
    config c = {.tokens = 2, .in = 33, .out = 4, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f,
                .use_plan = 1};
    fixture f;
    fixture_init(&f, c, 5);
    ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, f.q, NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(create_with(NULL, NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    dq_linear_params p;
    dq_linear_params_init(&p, sizeof p);
    const int32_t bad_bits[] = {-1, 1, 2, 3, 5, 16};
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        dq_linear_params b = p;
        b.act_bits = bad_bits[i];
        ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_INVALID_ARG);
    }
    const float bad_clip[] = {0.0f, -0.5f, 1.0001f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad_clip / sizeof bad_clip[0]; i++) {
        dq_linear_params b = p;
        b.act_clip_ratio = bad_clip[i];
        ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_INVALID_ARG);
    }
    dq_linear_params b = p;
    b.act_scheme = 2;
    ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_INVALID_ARG);
    b = p;
    b.flags = 1;
    ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_INVALID_ARG);
    b = p;
    b.struct_size = 4;
    ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_STRUCT_SIZE);
    b.struct_size = DQ_PARAMS_MAX_SIZE + 8;
    ck_assert_int_eq(create_with(&b, NULL, f.q, NULL), DQ_ERR_STRUCT_SIZE);
    /* A newer caller's larger struct: zero tail accepted, non-zero tail refused. */
    struct {
        dq_linear_params p;
        uint64_t future;
    } big;
    memset(&big, 0, sizeof big);
    dq_linear_params_init(&big.p, sizeof big.p);
    big.p.struct_size = sizeof big;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &big.p, NULL, f.q, NULL, &lin), DQ_OK);
    dq_linear_free(lin);
    big.future = 1;
    ck_assert_int_eq(create_with(&big.p, NULL, f.q, NULL), DQ_ERR_UNSUPPORTED);
    /* plan width differs from the weights' in_features */
    test_rng r = {9};
    dq_plan *other = make_plan(&r, 32, f.w, 1);
    ck_assert_int_eq(create_with(&p, other, f.q, NULL), DQ_ERR_SHAPE);
    dq_plan_free(other);
    float bias[4] = {0, 1, NAN, 2};
    ck_assert_int_eq(create_with(&p, f.plan, f.q, bias), DQ_ERR_NONFINITE);
    bias[2] = -INFINITY;
    ck_assert_int_eq(create_with(&p, f.plan, f.q, bias), DQ_ERR_NONFINITE);
    fixture_free(&f);
}
END_TEST

/* forward must fail with want and leave y as it was. */
static void expect_forward_error(const dq_linear *lin, const float *x, int64_t rows, int64_t cols,
                                 int64_t ldx, float *y, int64_t ldy, size_t ny, void *work,
                                 size_t work_size, dq_status want)
{
    if (y)
        for (size_t i = 0; i < ny; i++)
            y[i] = -7.25f;
    ck_assert_int_eq(dq_linear_forward(lin, x, rows, cols, ldx, y, ldy, work, work_size), want);
    if (y)
        for (size_t i = 0; i < ny; i++)
            ck_assert(y[i] == -7.25f);
}

START_TEST(bad_forward_arguments)
{
    config c = {.tokens = 3, .in = 33, .out = 4, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f,
                .use_plan = 1};
    fixture f;
    fixture_init(&f, c, 6);
    float y[3 * 6];
    const size_t ny = sizeof y / sizeof y[0];
    const int64_t in = c.in, ldx = f.ldx;
    expect_forward_error(NULL, f.x, 3, in, ldx, y, 4, ny, NULL, 0, DQ_ERR_INVALID_ARG);
    expect_forward_error(f.lin, NULL, 3, in, ldx, y, 4, ny, NULL, 0, DQ_ERR_INVALID_ARG);
    expect_forward_error(f.lin, f.x, 3, in, ldx, NULL, 4, 0, NULL, 0, DQ_ERR_INVALID_ARG);
    expect_forward_error(f.lin, f.x, -1, in, ldx, y, 4, ny, NULL, 0, DQ_ERR_SHAPE);
    expect_forward_error(f.lin, f.x, 3, in - 1, ldx, y, 4, ny, NULL, 0, DQ_ERR_SHAPE);
    expect_forward_error(f.lin, f.x, 3, in + 1, ldx, y, 4, ny, NULL, 0, DQ_ERR_SHAPE);
    expect_forward_error(f.lin, f.x, 3, in, in - 1, y, 4, ny, NULL, 0, DQ_ERR_SHAPE);
    expect_forward_error(f.lin, f.x, 3, in, ldx, y, 3, ny, NULL, 0, DQ_ERR_SHAPE);
    expect_forward_error(f.lin, f.x, INT64_MAX / 2, in, ldx, y, 4, ny, NULL, 0,
                         DQ_ERR_OVERFLOW);
    /* One row with a leading dimension CBLAS cannot take: only cols elements are read. */
    expect_forward_error(f.lin, f.x, 1, in, (int64_t)INT_MAX + 1, y, 4, ny, NULL, 0,
                         DQ_ERR_BLAS);
    f.x[2 * ldx + 5] = NAN;
    expect_forward_error(f.lin, f.x, 3, in, ldx, y, 4, ny, NULL, 0, DQ_ERR_NONFINITE);
    f.x[2 * ldx + 5] = INFINITY;
    expect_forward_error(f.lin, f.x, 3, in, ldx, y, 4, ny, NULL, 0, DQ_ERR_NONFINITE);
    f.x[2 * ldx + 5] = 0.0f;
    size_t ws = 0;
    ck_assert_int_eq(dq_linear_workspace_size(f.lin, 3, &ws), DQ_OK);
    void *work = malloc(ws);
    expect_forward_error(f.lin, f.x, 3, in, ldx, y, 4, ny, work, ws - 1, DQ_ERR_BUFFER);
    expect_forward_error(f.lin, f.x, 3, in, ldx, y, 4, ny, work, 0, DQ_ERR_BUFFER);
    free(work);
    ck_assert_int_eq(dq_linear_workspace_size(NULL, 3, &ws), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_workspace_size(f.lin, 3, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_workspace_size(f.lin, -1, &ws), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_linear_workspace_size(f.lin, INT64_MAX, &ws), DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_linear_layout(NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    fixture_free(&f);
}
END_TEST

/* Layers on one plan share the form it is compiled to for the fused route: a second layer on
 * the plan holds less than a layer on an equal plan of its own, by at least the compiled
 * form's one permutation index, and all three give the same bits. */
START_TEST(layers_on_one_plan_share_its_compiled_form)
{
    const int64_t cols = 1024, rows = 16, tokens = 3;
    test_rng r = {21};
    float *w = malloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)(0.05 * test_rng_normal(&r));
    counter cnt = {0, 0, 0, 0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    test_rng r1 = {22}, r2 = {22};
    dq_plan *plan = make_plan_in(ctx, &r1, cols, w, rows);
    dq_plan *twin = make_plan_in(ctx, &r2, cols, w, rows);
    uint64_t fa, fb;
    ck_assert_int_eq(dq_plan_fingerprint(plan, &fa), DQ_OK);
    ck_assert_int_eq(dq_plan_fingerprint(twin, &fb), DQ_OK);
    ck_assert(fa == fb);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(NULL, &qp, plan, w, rows, cols, cols, NULL, NULL, &q),
        DQ_OK);
    dq_linear *lin[3] = {NULL, NULL, NULL};
    size_t held[3];
    for (int k = 0; k < 3; k++) {
        const size_t before = cnt.live;
        ck_assert_int_eq(dq_linear_create(ctx, NULL, k < 2 ? plan : twin, q, NULL, &lin[k]),
                         DQ_OK);
        held[k] = cnt.live - before;
    }
    ck_assert_msg(held[1] + (size_t)cols * sizeof(int32_t) <= held[2],
                  "first %zu, second on the same plan %zu, on an equal plan %zu bytes", held[0],
                  held[1], held[2]);
    float *x = malloc((size_t)(tokens * cols) * sizeof(float));
    float *y = malloc((size_t)(3 * tokens * rows) * sizeof(float));
    test_fill_activations(&r, x, tokens, cols, cols, 1);
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(dq_linear_forward(lin[k], x, tokens, cols, cols, y + k * tokens * rows,
                                           rows, NULL, 0),
                         DQ_OK);
    const size_t out_bytes = (size_t)(tokens * rows) * sizeof(float);
    ck_assert(memcmp(y, y + tokens * rows, out_bytes) == 0);
    ck_assert(memcmp(y, y + 2 * tokens * rows, out_bytes) == 0);
    /* The plans go first; the layers keep them, and their compiled form, alive. */
    dq_plan_free(plan);
    dq_plan_free(twin);
    ck_assert_int_eq(dq_linear_forward(lin[1], x, tokens, cols, cols, y, rows, NULL, 0), DQ_OK);
    ck_assert(memcmp(y, y + tokens * rows, out_bytes) == 0);
    for (int k = 0; k < 3; k++)
        dq_linear_free(lin[k]);
    dq_context_free(ctx);
    ck_assert_uint_eq(cnt.live, 0);
    dq_qmatrix_free(q);
    free(x);
    free(y);
    free(w);
}
END_TEST

typedef struct thread_job {
    const fixture *f;
    float *y;
    int use_work;
    int ok;
} thread_job;

static void *forward_many(void *arg)
{
    thread_job *j = arg;
    const config *c = &j->f->c;
    size_t ws = 0;
    j->ok = dq_linear_workspace_size(j->f->lin, c->tokens, &ws) == DQ_OK;
    void *work = j->use_work && ws ? malloc(ws) : NULL;
    for (int it = 0; it < 20 && j->ok; it++)
        j->ok = dq_linear_forward(j->f->lin, j->f->x, c->tokens, c->in, j->f->ldx, j->y, c->out,
                                  work, work ? ws : 0) == DQ_OK;
    free(work);
    return NULL;
}

START_TEST(concurrent_forwards_match_serial)
{
    const int32_t act_bits[] = {4, 0};
    for (int a = 0; a < 2; a++) {
        config c = {.tokens = 16, .in = 172, .out = 24, .w_bits = 4, .w_group = 64,
                    .act_bits = act_bits[a], .act_clip = 1.0f, .use_plan = 1, .use_bias = 1};
        fixture f;
        fixture_init(&f, c, 21);
        const size_t n = (size_t)(c.tokens * c.out);
        float *serial = malloc(n * sizeof(float));
        ck_assert_int_eq(
            dq_linear_forward(f.lin, f.x, c.tokens, c.in, f.ldx, serial, c.out, NULL, 0), DQ_OK);
        enum { THREADS = 8 };
        pthread_t th[THREADS];
        thread_job jobs[THREADS];
        for (int t = 0; t < THREADS; t++) {
            jobs[t] = (thread_job){&f, malloc(n * sizeof(float)), t % 2, 0};
            ck_assert_int_eq(pthread_create(&th[t], NULL, forward_many, &jobs[t]), 0);
        }
        for (int t = 0; t < THREADS; t++) {
            ck_assert_int_eq(pthread_join(th[t], NULL), 0);
            ck_assert(jobs[t].ok);
            ck_assert(memcmp(jobs[t].y, serial, n * sizeof(float)) == 0);
            free(jobs[t].y);
        }
        free(serial);
        fixture_free(&f);
    }
}
END_TEST

/* Weight-only mode never rounds the activations: a single-code weight reproduces x exactly. */
START_TEST(weight_only_keeps_activations)
{
    /* W = identity-like one-hot rows quantize exactly (codes 0 and 15, scale 1/15). */
    const int64_t in = 7, out = 3, tokens = 4;
    float w[3 * 7] = {0};
    for (int64_t o = 0; o < out; o++)
        w[o * in + o * 2] = 1.0f;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, out, in, in, NULL, NULL, &q), DQ_OK);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = 0;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, q, NULL, &lin), DQ_OK);
    test_rng r = {4};
    float x[4 * 7], y[4 * 3], y4[4 * 3];
    test_fill_activations(&r, x, tokens, in, in, 0);
    ck_assert_int_eq(dq_linear_forward(lin, x, tokens, in, in, y, out, NULL, 0), DQ_OK);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t o = 0; o < out; o++)
            ck_assert_float_eq_tol(y[t * out + o], x[t * in + o * 2],
                                   1e-6f * fabsf(x[t * in + o * 2]) + 1e-7f);
    /* with 4-bit activations the same layer does round them */
    dq_linear *lin4 = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin4), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(lin4, x, tokens, in, in, y4, out, NULL, 0), DQ_OK);
    ck_assert(test_rel_err(y4, out, y, out, tokens, out) > 1e-3);
    dq_linear_free(lin);
    dq_linear_free(lin4);
    dq_qmatrix_free(q);
}
END_TEST

/* Weight-only layers sum x * (c - zw) over a group in float before the group's scale: huge
 * finite activations on tiny weights once overflowed there and returned DQ_OK with y = inf
 * (found by fuzz_numeric). Now DQ_ERR_NONFINITE with y untouched; ordinary values still run. */
START_TEST(weight_only_huge_activations_are_nonfinite)
{
    enum { COLS = 64, OUTS = 2 };
    float w[OUTS * COLS], x[COLS], y[OUTS];
    for (int j = 0; j < OUTS * COLS; j++)
        w[j] = j % COLS == 5 ? -1e-30f : 1e-30f;
    for (int j = 0; j < COLS; j++)
        x[j] = 1e37f;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, OUTS, COLS, COLS, NULL, NULL, &q), DQ_OK);
    dq_linear_params p;
    ck_assert_int_eq(dq_linear_params_init(&p, sizeof p), DQ_OK);
    p.act_bits = 0;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &p, NULL, q, NULL, &lin), DQ_OK);
    y[0] = y[1] = 42.0f;
    ck_assert_int_eq(dq_linear_forward(lin, x, 1, COLS, COLS, y, OUTS, NULL, 0),
                     DQ_ERR_NONFINITE);
    ck_assert(y[0] == 42.0f && y[1] == 42.0f);
    for (int j = 0; j < COLS; j++)
        x[j] = 1e20f; /* x * W ~ 6e-9: far from any overflow */
    ck_assert_int_eq(dq_linear_forward(lin, x, 1, COLS, COLS, y, OUTS, NULL, 0), DQ_OK);
    ck_assert(isfinite(y[0]) && fabsf(y[0] - 62e-10f) < 1e-9f);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
}
END_TEST


/* ---- dq_linear_create_like: other activation settings over shared weights ---- */

static void forward_into(const dq_linear *lin, const fixture *f, float *y)
{
    ck_assert_int_eq(
        dq_linear_forward(lin, f->x, f->c.tokens, f->c.in, f->ldx, y, f->c.out, NULL, 0), DQ_OK);
}

/* For every activation setting, per-row and grouped weights: the layer made like f.lin gives
 * the bits of a layer created afresh with those settings, also once f.lin (and the caller's
 * plan) are gone. */
START_TEST(create_like_equals_a_fresh_layer)
{
    const struct {
        int32_t bits, scheme, group;
        float clip;
    } acts[] = {{4, DQ_QUANT_ASYM, 0, 0.85f}, {4, DQ_QUANT_SYM, 0, 1.0f},
                {8, DQ_QUANT_ASYM, 0, 0.9f},  {0, DQ_QUANT_ASYM, 0, 1.0f},
                {4, DQ_QUANT_ASYM, 32, 0.9f}, {4, DQ_QUANT_ASYM, 0, 1.0f}};
    const int32_t w_groups[] = {0, 32};
    for (size_t g = 0; g < 2; g++)
        for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
            if (acts[a].group > 0 && acts[a].group != w_groups[g])
                continue;
            config c = {.tokens = 9, .in = 70, .out = 13, .w_bits = 4, .w_group = w_groups[g],
                        .act_bits = 4, .act_clip = 1.0f, .use_plan = 1, .use_bias = 1};
            fixture f;
            fixture_init(&f, c, 40 + a);
            dq_linear_params lp;
            dq_linear_params_init(&lp, sizeof lp);
            lp.act_bits = acts[a].bits;
            lp.act_scheme = acts[a].scheme;
            lp.act_clip_ratio = acts[a].clip;
            lp.act_group_size = acts[a].group;
            dq_linear *like = NULL, *fresh = NULL;
            ck_assert_int_eq(dq_linear_create_like(NULL, &lp, f.lin, &like), DQ_OK);
            ck_assert_int_eq(dq_linear_create(NULL, &lp, f.plan, f.q, f.bias, &fresh), DQ_OK);
            const size_t n = (size_t)(c.tokens * c.out);
            float *want = malloc(n * sizeof *want), *y = malloc(n * sizeof *y);
            forward_into(fresh, &f, want);
            forward_into(like, &f, y);
            ck_assert(memcmp(y, want, n * sizeof *y) == 0);
            int64_t in = 0, out = 0;
            ck_assert_int_eq(dq_linear_layout(like, &in, &out), DQ_OK);
            ck_assert_int_eq(in, c.in);
            ck_assert_int_eq(out, c.out);
            /* Alternately the source or the new layer goes first; the other keeps working. */
            if (a % 2 == 0) {
                dq_linear_free(f.lin);
                f.lin = NULL;
                dq_plan_free(f.plan);
                f.plan = NULL;
                memset(y, 0, n * sizeof *y);
                forward_into(like, &f, y);
                ck_assert(memcmp(y, want, n * sizeof *y) == 0);
            } else {
                dq_linear_free(like);
                like = NULL;
                forward_into(f.lin, &f, y);
            }
            dq_linear_free(like);
            dq_linear_free(fresh);
            free(want);
            free(y);
            fixture_free(&f);
        }
}
END_TEST

/* The weights are shared, not copied: the new layer allocates less than a quarter of the
 * packed codes' bytes, where a fresh layer allocates at least them. */
START_TEST(create_like_does_not_copy_the_weights)
{
    config c = {.tokens = 2, .in = 256, .out = 64, .w_bits = 4, .act_bits = 4,
                .act_clip = 1.0f, .use_bias = 1};
    fixture f;
    fixture_init(&f, c, 21);
    const size_t codes = (size_t)(c.out * c.in) / 2;
    counter cnt = {0, 0, 0, 0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_clip_ratio = 0.9f;
    size_t before = cnt.live;
    dq_linear *like = NULL, *fresh = NULL;
    ck_assert_int_eq(dq_linear_create_like(ctx, &lp, f.lin, &like), DQ_OK);
    const size_t like_bytes = cnt.live - before;
    before = cnt.live;
    ck_assert_int_eq(dq_linear_create(ctx, &lp, NULL, f.q, f.bias, &fresh), DQ_OK);
    const size_t fresh_bytes = cnt.live - before;
    ck_assert_uint_lt(like_bytes, codes / 4);
    ck_assert_uint_ge(fresh_bytes, codes);
    dq_linear_free(like);
    dq_linear_free(fresh);
    dq_context_free(ctx);
    ck_assert_uint_eq(cnt.live, 0);
    fixture_free(&f);
}
END_TEST

static dq_status create_like_with(const dq_linear_params *p, const dq_linear *src)
{
    dq_linear *lin = (dq_linear *)(uintptr_t)1;
    dq_status st = dq_linear_create_like(NULL, p, src, &lin);
    ck_assert_ptr_null(lin);
    return st;
}

/* Every bad argument refused with the status dq_linear_create gives for it, nothing made. */
START_TEST(create_like_bad_arguments)
{
    config c = {.tokens = 2, .in = 70, .out = 4, .w_bits = 4, .w_group = 32, .act_bits = 4,
                .act_clip = 1.0f, .use_plan = 1};
    fixture f;
    fixture_init(&f, c, 6);
    dq_linear_params p;
    dq_linear_params_init(&p, sizeof p);
    ck_assert_int_eq(create_like_with(&p, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_create_like(NULL, &p, f.lin, NULL), DQ_ERR_INVALID_ARG);
    const struct {
        int32_t bits, scheme, group;
        float clip;
        uint32_t flags, size;
        dq_status want;
    } bad[] = {
        {5, DQ_QUANT_ASYM, 0, 1.0f, 0, 0, DQ_ERR_INVALID_ARG},
        {4, 2, 0, 1.0f, 0, 0, DQ_ERR_INVALID_ARG},
        {4, DQ_QUANT_ASYM, 0, 0.0f, 0, 0, DQ_ERR_INVALID_ARG},
        {4, DQ_QUANT_ASYM, 0, NAN, 0, 0, DQ_ERR_INVALID_ARG},
        {4, DQ_QUANT_ASYM, 0, 1.0f, 1, 0, DQ_ERR_INVALID_ARG},
        {4, DQ_QUANT_ASYM, -1, 1.0f, 0, 0, DQ_ERR_INVALID_ARG},
        {0, DQ_QUANT_ASYM, 32, 1.0f, 0, 0, DQ_ERR_INVALID_ARG},
        {4, DQ_QUANT_ASYM, 16, 1.0f, 0, 0, DQ_ERR_SHAPE},  /* not the weights' groups */
        {4, DQ_QUANT_ASYM, 71, 1.0f, 0, 0, DQ_ERR_SHAPE},  /* wider than the input */
        {4, DQ_QUANT_ASYM, 0, 1.0f, 0, 4, DQ_ERR_STRUCT_SIZE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dq_linear_params b = p;
        b.act_bits = bad[i].bits;
        b.act_scheme = bad[i].scheme;
        b.act_group_size = bad[i].group;
        b.act_clip_ratio = bad[i].clip;
        b.flags = bad[i].flags;
        if (bad[i].size)
            b.struct_size = bad[i].size;
        ck_assert_int_eq(create_like_with(&b, f.lin), bad[i].want);
        ck_assert_int_eq(create_with(&b, f.plan, f.q, NULL), bad[i].want);
    }
    /* Grouped activations over per-row weights. */
    config r = c;
    r.w_group = 0;
    fixture g;
    fixture_init(&g, r, 7);
    dq_linear_params b = p;
    b.act_group_size = 32;
    ck_assert_int_eq(create_like_with(&b, g.lin), DQ_ERR_SHAPE);
    fixture_free(&g);
    fixture_free(&f);
}
END_TEST

typedef dq_status (*layer_maker)(dq_context *ctx, const fixture *f, dq_linear **out);

static dq_status make_fresh(dq_context *ctx, const fixture *f, dq_linear **out)
{
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    return dq_linear_create(ctx, &lp, f->plan, f->q, f->bias, out);
}

static dq_status make_like(dq_context *ctx, const fixture *f, dq_linear **out)
{
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    return dq_linear_create_like(ctx, &lp, f->lin, out);
}

/* Each allocation failure while make builds a layer on a counting context, or while that
 * layer's first forward takes its workspace: DQ_ERR_NOMEM, nothing made, nothing leaked, no
 * partial output, the fixture's own layer intact; a late enough failure point lets every
 * allocation succeed, with the fixture layer's bits. */
static void check_allocation_failures(layer_maker make)
{
    config c = {.tokens = 5, .in = 33, .out = 7, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f,
                .use_plan = 1, .use_bias = 1};
    fixture f;
    fixture_init(&f, c, 8);
    const size_t n = (size_t)(c.tokens * c.out);
    float *want = malloc(n * sizeof *want), *y = malloc(n * sizeof *y);
    forward_into(f.lin, &f, want);
    int succeeded = 0;
    for (long fail_at = 1; fail_at < 100 && !succeeded; fail_at++) {
        test_alloc a = {0, 0, 0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.total + fail_at;
        dq_linear *lin = (dq_linear *)(uintptr_t)1;
        dq_status st = make(ctx, &f, &lin);
        if (st == DQ_OK) {
            for (size_t i = 0; i < n; i++)
                y[i] = 3.5f;
            /* NULL work: the workspace comes from the new layer's allocator, and may fail. */
            st = dq_linear_forward(lin, f.x, c.tokens, c.in, f.ldx, y, c.out, NULL, 0);
            if (st == DQ_OK) {
                ck_assert(memcmp(y, want, n * sizeof *y) == 0);
                succeeded = 1;
            } else {
                ck_assert_int_eq(st, DQ_ERR_NOMEM);
                for (size_t i = 0; i < n; i++)
                    ck_assert(y[i] == 3.5f);
            }
            dq_linear_free(lin);
        } else {
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
            ck_assert_ptr_null(lin);
        }
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
        forward_into(f.lin, &f, y);
        ck_assert(memcmp(y, want, n * sizeof *y) == 0);
    }
    ck_assert(succeeded);
    free(want);
    free(y);
    fixture_free(&f);
}

START_TEST(allocation_failures)
{
    check_allocation_failures(make_fresh);
}
END_TEST

START_TEST(create_like_allocation_failures)
{
    check_allocation_failures(make_like);
}
END_TEST

static void *free_layer(void *lin)
{
    dq_linear_free(lin);
    return NULL;
}

/* Two layers sharing weights freed at once from two threads: the weights are freed once
 * (ASan and TSan runs check it). */
START_TEST(create_like_layers_freed_concurrently)
{
    config c = {.tokens = 2, .in = 40, .out = 9, .w_bits = 4, .act_bits = 4, .act_clip = 1.0f};
    fixture f;
    fixture_init(&f, c, 12);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    for (int i = 0; i < 200; i++) {
        dq_linear *a = NULL, *b = NULL;
        ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, f.q, NULL, &a), DQ_OK);
        ck_assert_int_eq(dq_linear_create_like(NULL, &lp, a, &b), DQ_OK);
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, free_layer, a), 0);
        free_layer(b);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
    }
    fixture_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linear");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, integer_path_equals_fake_quant);
    tcase_add_test(tc, larger_layers_with_plan);
    tcase_add_test(tc, workspace_is_exact);
    tcase_add_test(tc, weights_and_bias_are_copied_plan_borrowed);
    tcase_add_test(tc, params_defaults);
    tcase_add_test(tc, weight_only_keeps_activations);
    tcase_add_test(tc, concurrent_forwards_match_serial);
    tcase_add_test(tc, layers_on_one_plan_share_its_compiled_form);
    tcase_add_test(tc, create_like_equals_a_fresh_layer);
    tcase_add_test(tc, create_like_does_not_copy_the_weights);
    tcase_add_test(tc, create_like_layers_freed_concurrently);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, bad_create_arguments);
    tcase_add_test(bad, bad_forward_arguments);
    tcase_add_test(bad, allocation_failures);
    tcase_add_test(bad, create_like_bad_arguments);
    tcase_add_test(bad, create_like_allocation_failures);
    tcase_add_test(bad, weight_only_huge_activations_are_nonfinite);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
