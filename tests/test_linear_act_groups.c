/* Layers with activation groups (dq_linear_params.act_group_size): the output equals a float
 * simulation (each token's groups and the weights' groups quantized and dequantized, then a
 * float product) within float rounding; the fused and unfused routes, thread counts and
 * shared-input groups give the same bits; every bad value is refused with its error. Links
 * the library's objects for the unfused route. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_online.h"
#include "dq_quant_rule.h"
#include "dq_test.h"
#include "duquant.h"
#include "dq_check_run.h"

static dq_context *threads_ctx(int32_t n)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.n_threads = n;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

static dq_qmatrix *make_weights(test_rng *r, const dq_plan *plan, int64_t out, int64_t in,
                                int32_t group, int32_t scheme, float **w_out)
{
    float *w = malloc((size_t)(out * in) * sizeof(float));
    for (int64_t i = 0; i < out * in; i++)
        w[i] = (float)(0.05 * test_rng_normal(r));
    if (plan)
        ck_assert_int_eq(dq_plan_transform_weight(plan, w, out, in, in), DQ_OK);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.scheme = scheme;
    qp.group_size = group;
    if (plan)
        ck_assert_int_eq(dq_plan_fingerprint(plan, &qp.plan_fingerprint), DQ_OK);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &qp, w, out, in, in, NULL, NULL, &q), DQ_OK);
    if (w_out)
        *w_out = w;
    else
        free(w);
    return q;
}

static dq_linear *make_layer(dq_context *ctx, const dq_plan *plan, const dq_qmatrix *q,
                             int32_t act_group, int32_t act_scheme, float clip)
{
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_scheme = act_scheme;
    lp.act_clip_ratio = clip;
    lp.act_group_size = act_group;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, &lp, plan, q, NULL, &lin), DQ_OK);
    return lin;
}

/* Channels with outliers, so that per-group scales differ from the token's. */
static float *make_input(test_rng *r, int64_t rows, int64_t in, int64_t ldx)
{
    float *x = malloc((size_t)(rows * ldx) * sizeof(float));
    test_fill_activations(r, x, rows, in, ldx, 1);
    return x;
}

/* The simulation: per token and group, the quantization rule's scale and zero point, each
 * value to its code and back to float; weights dequantized by the library; products summed in
 * double. *mag gets sum |x_dq * w_dq| per output, the scale of the rounding allowed. */
static void simulate(const dq_qmatrix *q, const float *x, int64_t rows, int64_t in,
                     int64_t ldx, int64_t gl, int32_t scheme, float clip, double *y,
                     double *mag)
{
    int64_t out = 0;
    ck_assert_int_eq(dq_qmatrix_layout(q, &out, NULL, NULL, NULL, NULL, NULL, NULL), DQ_OK);
    float *wd = malloc((size_t)(out * in) * sizeof(float));
    float *xd = malloc((size_t)in * sizeof(float));
    ck_assert_int_eq(dq_qmatrix_dequantize(q, wd, in), DQ_OK);
    for (int64_t t = 0; t < rows; t++) {
        const float *xt = x + t * ldx;
        for (int64_t j0 = 0; j0 < in; j0 += gl) {
            const int64_t len = j0 + gl < in ? gl : in - j0;
            float mn = xt[j0], mx = xt[j0];
            for (int64_t j = j0; j < j0 + len; j++) {
                mn = fminf(mn, xt[j]);
                mx = fmaxf(mx, xt[j]);
            }
            float scale, zero;
            ck_assert(dq__qr_params(4, scheme, mn, mx, clip, clip, &scale, &zero));
            for (int64_t j = j0; j < j0 + len; j++) {
                const int32_t c = dq__qr_code(4, scheme, xt[j], scale, zero);
                xd[j] = ((float)c - zero) * scale;
            }
        }
        for (int64_t o = 0; o < out; o++) {
            double s = 0.0, m = 0.0;
            for (int64_t j = 0; j < in; j++) {
                const double p = (double)xd[j] * (double)wd[o * in + j];
                s += p;
                m += fabs(p);
            }
            y[t * out + o] = s;
            mag[t * out + o] = m;
        }
    }
    free(wd);
    free(xd);
}

/* Groups of 32, 64 and 128 (and 32 on a 172-wide input: a short last group), ASYM and SYM
 * activations, with a clip: the layer equals the simulation within float rounding, and
 * differs from the per-token layer on the same weights by far more than that. */
START_TEST(matches_float_simulation)
{
    const int64_t shapes[][2] = {{256, 32}, {256, 64}, {384, 128}, {172, 32}};
    const int64_t rows = 7, out = 40;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++) {
            const int64_t in = shapes[k][0], gl = shapes[k][1], ldx = in + 3;
            const float clip = scheme == DQ_QUANT_ASYM ? 0.9f : 1.0f;
            test_rng r = {100 + k * 2 + (uint64_t)scheme};
            dq_qmatrix *q = make_weights(&r, NULL, out, in, (int32_t)gl, DQ_QUANT_ASYM, NULL);
            dq_linear *lin = make_layer(NULL, NULL, q, (int32_t)gl, scheme, clip);
            dq_linear *tok = make_layer(NULL, NULL, q, 0, scheme, clip);
            float *x = make_input(&r, rows, in, ldx);
            float *y = malloc((size_t)(rows * out) * sizeof(float));
            float *yt = malloc((size_t)(rows * out) * sizeof(float));
            double *ys = malloc((size_t)(rows * out) * sizeof(double));
            double *mag = malloc((size_t)(rows * out) * sizeof(double));
            ck_assert_int_eq(dq_linear_forward(lin, x, rows, in, ldx, y, out, NULL, 0), DQ_OK);
            ck_assert_int_eq(dq_linear_forward(tok, x, rows, in, ldx, yt, out, NULL, 0), DQ_OK);
            simulate(q, x, rows, in, ldx, gl, scheme, clip, ys, mag);
            double far = 0.0;
            for (int64_t i = 0; i < rows * out; i++) {
                const double tol = 1e-5 * mag[i] + 1e-7;
                ck_assert_msg(fabs((double)y[i] - ys[i]) <= tol,
                              "in %lld groups %lld scheme %d: y[%lld] = %.9g, simulated %.9g",
                              (long long)in, (long long)gl, (int)scheme, (long long)i,
                              (double)y[i], ys[i]);
                far = fmax(far, fabs((double)yt[i] - ys[i]) / (tol * 10.0));
            }
            ck_assert_msg(far > 1.0, "per-token and grouped outputs agree (in %lld)",
                          (long long)in);
            free(x);
            free(y);
            free(yt);
            free(ys);
            free(mag);
            dq_linear_free(lin);
            dq_linear_free(tok);
            dq_qmatrix_free(q);
        }
}
END_TEST

static dq_plan *make_plan(test_rng *r, int64_t cols)
{
    const int64_t rows = 48;
    float *sample = malloc((size_t)(rows * cols) * sizeof(float));
    float *w_absmax = malloc((size_t)cols * sizeof(float));
    test_fill_activations(r, sample, rows, cols, cols, 1);
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = (float)(0.05 + test_rng_uniform(r));
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = 32;
    pp.max_rotation_step = 6;
    dq_plan *plan = NULL;
    ck_assert_int_eq(
        dq_plan_build_from_sample(NULL, &pp, NULL, sample, rows, cols, cols, w_absmax, &plan),
        DQ_OK);
    free(sample);
    free(w_absmax);
    return plan;
}

/* With a plan, on both routes (the fused one transforms, then quantizes per group; the
 * unfused one applies the plan through CBLAS, so the two differ by float rounding only): the
 * same bits on 1 to 4 threads for odd token counts; a shared-input group equals separate
 * forwards. */
START_TEST(routes_threads_and_shared_input)
{
    const int64_t in = 192, gl = 32, ldx = in + 1;
    const int64_t outs[3] = {48, 17, 33};
    test_rng r = {7};
    dq_plan *plan = make_plan(&r, in);
    dq_context *ctx[5] = {NULL};
    for (int32_t n = 1; n <= 4; n++)
        ctx[n] = threads_ctx(n);
    dq_qmatrix *q[3];
    for (int i = 0; i < 3; i++)
        q[i] = make_weights(&r, plan, outs[i], in, (int32_t)gl,
                            i == 1 ? DQ_QUANT_SYM : DQ_QUANT_ASYM, NULL);
    const int64_t tokens[] = {1, 3, 9, 131};
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t rows = tokens[ti];
        float *x = make_input(&r, rows, in, ldx);
        const size_t ny = (size_t)(rows * outs[0]);
        float *want = malloc(2 * ny * sizeof(float));
        float *got = malloc(ny * sizeof(float));
        dq_linear *l1 = make_layer(ctx[1], plan, q[0], (int32_t)gl, DQ_QUANT_ASYM, 0.95f);
        for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++)
            ck_assert_int_eq(dq__linear_forward_route(l1, route, x, rows, in, ldx,
                                                      want + (size_t)route * ny, outs[0], NULL,
                                                      0),
                             DQ_OK);
        for (size_t i = 0; i < ny; i++)
            ck_assert_msg(fabsf(want[i] - want[ny + i]) <= 1e-3f * (1.0f + fabsf(want[i])),
                          "routes differ beyond rounding: %.9g vs %.9g", (double)want[i],
                          (double)want[ny + i]);
        for (int32_t n = 1; n <= 4; n++) {
            dq_linear *ln = make_layer(ctx[n], plan, q[0], (int32_t)gl, DQ_QUANT_ASYM, 0.95f);
            for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++) {
                memset(got, 0, (size_t)(rows * outs[0]) * sizeof(float));
                ck_assert_int_eq(dq__linear_forward_route(ln, route, x, rows, in, ldx, got,
                                                          outs[0], NULL, 0),
                                 DQ_OK);
                ck_assert_msg(memcmp(got, want + (size_t)route * ny, ny * sizeof(float)) == 0,
                              "route %d, %d threads, %lld tokens", (int)route, (int)n,
                              (long long)rows);
            }
            dq_linear_free(ln);
        }
        /* q, k, v-like group on 2 threads. */
        dq_linear *layers[3];
        float *ys[3], *yg[3];
        int64_t ld[3];
        for (int i = 0; i < 3; i++) {
            layers[i] = make_layer(ctx[2], plan, q[i], (int32_t)gl, DQ_QUANT_ASYM, 0.95f);
            ld[i] = outs[i];
            ys[i] = malloc((size_t)(rows * outs[i]) * sizeof(float));
            yg[i] = malloc((size_t)(rows * outs[i]) * sizeof(float));
            ck_assert_int_eq(dq_linear_forward(layers[i], x, rows, in, ldx, ys[i], ld[i], NULL,
                                               0),
                             DQ_OK);
        }
        ck_assert_int_eq(dq_linear_forward_group((const dq_linear *const *)layers, 3, x, rows,
                                                 in, ldx, yg, ld, 3, NULL, 0),
                         DQ_OK);
        for (int i = 0; i < 3; i++) {
            ck_assert(memcmp(ys[i], yg[i], (size_t)(rows * outs[i]) * sizeof(float)) == 0);
            free(ys[i]);
            free(yg[i]);
            dq_linear_free(layers[i]);
        }
        dq_linear_free(l1);
        free(x);
        free(want);
        free(got);
    }
    for (int i = 0; i < 3; i++)
        dq_qmatrix_free(q[i]);
    for (int32_t n = 1; n <= 4; n++)
        dq_context_free(ctx[n]);
    dq_plan_free(plan);
}
END_TEST

static dq_status try_create(const dq_qmatrix *q, int32_t act_bits, int32_t act_group)
{
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = act_bits;
    lp.act_group_size = act_group;
    dq_linear *lin = NULL;
    dq_status st = dq_linear_create(NULL, &lp, NULL, q, NULL, &lin);
    ck_assert(st == DQ_OK || lin == NULL);
    dq_linear_free(lin);
    return st;
}

/* Each bad value with its error; the values around them are accepted. */
START_TEST(bad_values_refused)
{
    test_rng r = {11};
    dq_qmatrix *g32 = make_weights(&r, NULL, 16, 96, 32, DQ_QUANT_ASYM, NULL);
    dq_qmatrix *rows = make_weights(&r, NULL, 16, 96, 0, DQ_QUANT_ASYM, NULL);
    dq_qmatrix *g100 = make_weights(&r, NULL, 16, 96, 100, DQ_QUANT_ASYM, NULL);
    ck_assert_int_eq(try_create(g32, 4, 32), DQ_OK);
    ck_assert_int_eq(try_create(g32, 8, 32), DQ_OK);
    ck_assert_int_eq(try_create(g32, 4, 0), DQ_OK);
    ck_assert_int_eq(try_create(g32, 4, -32), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(try_create(g32, 0, 32), DQ_ERR_INVALID_ARG);
    /* Not the weights' groups. */
    ck_assert_int_eq(try_create(g32, 4, 64), DQ_ERR_SHAPE);
    ck_assert_int_eq(try_create(g32, 4, 16), DQ_ERR_SHAPE);
    ck_assert_int_eq(try_create(rows, 4, 32), DQ_ERR_SHAPE);
    /* Above in_features (the weights treat such groups as whole rows). */
    ck_assert_int_eq(try_create(g100, 4, 100), DQ_ERR_SHAPE);
    /* Shared-input groups need the same activation groups. */
    dq_linear *a = NULL, *b = NULL;
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_group_size = 32;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, g32, NULL, &a), DQ_OK);
    lp.act_group_size = 0;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, g32, NULL, &b), DQ_OK);
    const dq_linear *pair[2] = {a, b};
    size_t bytes = 0;
    ck_assert_int_eq(dq_linear_group_workspace_size(pair, 2, 4, &bytes), DQ_ERR_MISMATCH);
    /* Files have no field for activation groups: refused rather than read back per token. */
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &fw), DQ_OK);
    lp.act_group_size = 32;
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l", &lp, NULL, g32, NULL),
                     DQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "l", a, NULL), DQ_ERR_UNSUPPORTED);
    lp.act_group_size = 0;
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l", &lp, NULL, g32, NULL), DQ_OK);
    dq_file_writer_free(fw);
    dq_linear_free(a);
    dq_linear_free(b);
    dq_qmatrix_free(g32);
    dq_qmatrix_free(rows);
    dq_qmatrix_free(g100);
}
END_TEST

/* A group whose range max - min overflows float (only the last token's second group here) is
 * DQ_ERR_NONFINITE with y untouched, as a token's is without groups. */
START_TEST(overflowing_group_refused)
{
    test_rng r = {13};
    dq_qmatrix *q = make_weights(&r, NULL, 16, 96, 32, DQ_QUANT_ASYM, NULL);
    dq_linear *lin = make_layer(NULL, NULL, q, 32, DQ_QUANT_ASYM, 1.0f);
    float x[3 * 96], y[3 * 16];
    test_fill_activations(&r, x, 3, 96, 96, 0);
    x[2 * 96 + 40] = 3e38f;
    x[2 * 96 + 41] = -3e38f;
    memset(y, 0x5A, sizeof y);
    ck_assert_int_eq(dq_linear_forward(lin, x, 3, 96, 96, y, 16, NULL, 0), DQ_ERR_NONFINITE);
    for (size_t i = 0; i < sizeof y / sizeof y[0]; i++) {
        uint32_t bits;
        memcpy(&bits, &y[i], sizeof bits);
        ck_assert_uint_eq(bits, 0x5A5A5A5Au);
    }
    x[2 * 96 + 41] = 3e38f; /* the same group, now of one sign: finite */
    ck_assert_int_eq(dq_linear_forward(lin, x, 3, 96, 96, y, 16, NULL, 0), DQ_OK);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
}
END_TEST

/* The 1.0 layout (ending at act_clip_ratio) is still accepted and means per-token
 * activations, whatever lies beyond it in the caller's memory. */
START_TEST(older_struct_size)
{
    const size_t old_size = offsetof(dq_linear_params, act_clip_ratio) + sizeof(float);
    ck_assert_uint_lt(old_size, sizeof(dq_linear_params));
    test_rng r = {12};
    dq_qmatrix *q = make_weights(&r, NULL, 16, 64, 32, DQ_QUANT_ASYM, NULL);
    unsigned char buf[sizeof(dq_linear_params)];
    memset(buf, 0x7F, sizeof buf);
    dq_linear_params *p = (dq_linear_params *)(void *)buf;
    ck_assert_int_eq(dq_linear_params_init(p, old_size), DQ_OK);
    /* init wrote nothing past the old size. */
    for (size_t i = old_size; i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], 0x7F);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, p, NULL, q, NULL, &lin), DQ_OK);
    dq_linear_params full;
    dq_linear_params_init(&full, sizeof full);
    ck_assert_int_eq(full.act_group_size, 0);
    dq_linear *ref = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &full, NULL, q, NULL, &ref), DQ_OK);
    float x[3 * 64], y0[3 * 16], y1[3 * 16];
    test_fill_activations(&r, x, 3, 64, 64, 1);
    ck_assert_int_eq(dq_linear_forward(lin, x, 3, 64, 64, y0, 16, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(ref, x, 3, 64, 64, y1, 16, NULL, 0), DQ_OK);
    ck_assert(memcmp(y0, y1, sizeof y0) == 0);
    dq_linear_free(lin);
    dq_linear_free(ref);
    dq_qmatrix_free(q);
}
END_TEST

static Suite *act_groups_suite(void)
{
    Suite *s = suite_create("linear_act_groups");
    TCase *tc = tcase_create("layer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, matches_float_simulation);
    tcase_add_test(tc, routes_threads_and_shared_input);
    tcase_add_test(tc, bad_values_refused);
    tcase_add_test(tc, overflowing_group_refused);
    tcase_add_test(tc, older_struct_size);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(act_groups_suite(), 0);
}
