/* The quantization rule's bound (duquant.h, DQ_QUANT_ASYM): every value within the clipped
 * range comes back within scale / 2, scale no larger than the rule's stated bound, on the
 * cases the reference's clamps got wrong (constant groups, one-element last groups, narrow
 * ranges far from zero, tiny and huge ranges) and on random shapes with every group size, for
 * weights (pack + dequantize) and activations (each token quantizer against the scalar one,
 * and a layer's forward against a float product of the dequantized operands). Finite inputs
 * whose range or transform overflows are DQ_ERR_NONFINITE. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm_simd.h"
#include "dq_internal.h"
#include "dq_quant_rule.h"
#include "duquant.h"
#include "dq_test.h"
#include "test_wprep.h"
#include "dq_check_run.h"

static const int32_t isas[] = {DQ_GEMM_ISA_PORTABLE, DQ_GEMM_ISA_AVX2, DQ_GEMM_ISA_AVX512};

/* The documented bound on the scale of a group with values in [a, b] (clip 1), in double. */
static double scale_bound(int32_t bits, int32_t scheme, double a, double b)
{
    if (scheme == DQ_QUANT_ASYM) {
        const double top = (double)((1 << bits) - 1);
        return fmax(fmax((b - a) / top, fabs(a) / 1e4), (double)FLT_MIN);
    }
    const double top = (double)((1 << (bits - 1)) - 1);
    return fmax(fmax(fabs(a), fabs(b)) / top, (double)FLT_MIN);
}

/* |x - deq| within the bound's half step, plus float rounding of x / scale and the product. */
static void check_group(const float *x, const float *deq, int64_t n, int32_t bits, int32_t scheme,
                        const char *what, int64_t row, int64_t g)
{
    double a = x[0], b = x[0];
    for (int64_t j = 1; j < n; j++) {
        a = fmin(a, x[j]);
        b = fmax(b, x[j]);
    }
    const double s = scale_bound(bits, scheme, a, b);
    for (int64_t j = 0; j < n; j++) {
        const double err = fabs((double)x[j] - (double)deq[j]);
        const double tol = s / 2 * (1 + 1e-5) + fabs((double)x[j]) * 1e-6;
        ck_assert_msg(err <= tol,
                      "%s bits %d scheme %d row %lld group %lld (n %lld, [%g, %g]): x[%lld] %.9g "
                      "-> %.9g, error %g > %g",
                      what, bits, scheme, (long long)row, (long long)g, (long long)n, a, b,
                      (long long)j, (double)x[j], (double)deq[j], err, tol);
        if (a == b && !(scheme == DQ_QUANT_SYM && a != 0.0))
            ck_assert_msg(deq[j] == x[j], "%s: constant group %.9g -> %.9g", what, (double)x[j],
                          (double)deq[j]);
    }
}

/* Weights: pack, dequantize, every group within its bound. */
static void check_weights(const float *w, int64_t rows, int64_t cols, int32_t bits,
                          int32_t scheme, int32_t group)
{
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.bits = bits;
    p.scheme = scheme;
    p.group_size = group;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, rows, cols, cols, NULL, NULL, &q), DQ_OK);
    float *deq = malloc((size_t)(rows * cols) * sizeof *deq);
    ck_assert_int_eq(dq_qmatrix_dequantize(q, deq, cols), DQ_OK);
    const int64_t len = group == 0 || group > cols ? cols : group;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j0 = 0, g = 0; j0 < cols; j0 += len, g++) {
            const int64_t n = cols - j0 < len ? cols - j0 : len;
            check_group(w + i * cols + j0, deq + i * cols + j0, n, bits, scheme, "weights", i,
                        g);
        }
    free(deq);
    dq_qmatrix_free(q);
}

/* Row i of a test matrix, by kind: random, constant, near-constant, tiny, huge, one outlier. */
static void fill_row(test_rng *r, float *x, int64_t n, int kind)
{
    const float c = (float)(test_rng_normal(r) * 4.0);
    for (int64_t j = 0; j < n; j++) {
        const float u = (float)test_rng_normal(r);
        switch (kind % 8) {
        case 0: x[j] = u; break;
        case 1: x[j] = c; break;                                /* constant */
        case 2: x[j] = 1.0f + 1e-6f * u; break;                 /* narrow, far from 0 */
        case 3: x[j] = 1e-7f * u; break;                        /* tiny range */
        case 4: x[j] = 1e6f * u; break;                         /* range above 15e4 */
        case 5: x[j] = 0.0f; break;                             /* all zero */
        case 6: x[j] = -1000.0f + 1e-3f * u; break;             /* narrow, negative */
        default: x[j] = j == n / 2 ? 50.0f : 0.01f * u; break; /* one outlier */
        }
    }
}

START_TEST(d5_cases_weights)
{
    /* 129 columns in groups of 128: the last group is one element. */
    float w[2 * 129];
    test_rng r = {3};
    for (int i = 0; i < 2 * 129; i++)
        w[i] = (float)test_rng_normal(&r);
    w[128] = 0.5f;
    w[129 + 128] = -0.5f;
    for (int32_t bits = 4; bits <= 8; bits += 4)
        for (int32_t scheme = 0; scheme <= 1; scheme++) {
            check_weights(w, 2, 129, bits, scheme, 128);
            dq_quant_params p;
            dq_quant_params_init(&p, sizeof p);
            p.bits = bits;
            p.scheme = scheme;
            p.group_size = 128;
            dq_qmatrix *q = NULL;
            ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 2, 129, 129, NULL, NULL, &q), DQ_OK);
            float deq[2 * 129];
            ck_assert_int_eq(dq_qmatrix_dequantize(q, deq, 129), DQ_OK);
            if (scheme == DQ_QUANT_ASYM) {
                ck_assert_float_eq(deq[128], 0.5f);
                ck_assert_float_eq(deq[129 + 128], -0.5f);
            } else {
                ck_assert_float_eq_tol(deq[128], 0.5f, 1e-6f);
                ck_assert_float_eq_tol(deq[129 + 128], -0.5f, 1e-6f);
            }
            dq_qmatrix_free(q);
        }
    /* A constant row of 5.0 (and of -5.0 and 0). */
    float c[3 * 16];
    for (int j = 0; j < 16; j++) {
        c[j] = 5.0f;
        c[16 + j] = -5.0f;
        c[32 + j] = 0.0f;
    }
    for (int32_t scheme = 0; scheme <= 1; scheme++)
        check_weights(c, 3, 16, 4, scheme, 0);
}
END_TEST

START_TEST(random_weights_every_group_size)
{
    const int32_t groups[] = {1, 2, 3, 7, 64, 127, 128, 129, 0};
    const int64_t widths[] = {1, 5, 129, 300};
    test_rng r = {11};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int64_t cols = widths[wi], rows = 16;
        float *w = malloc((size_t)(rows * cols) * sizeof *w);
        for (int64_t i = 0; i < rows; i++)
            fill_row(&r, w + i * cols, cols, (int)i);
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
            for (int32_t bits = 4; bits <= 8; bits += 4)
                for (int32_t scheme = 0; scheme <= 1; scheme++)
                    check_weights(w, rows, cols, bits, scheme, groups[g]);
        free(w);
    }
}
END_TEST

/* Per-token quantization: every ISA bit-identical to the scalar quantizer, and the scalar one
 * within the bound. */
START_TEST(tokens_within_bound_and_identical)
{
    const int64_t widths[] = {1, 2, 3, 7, 64, 127, 128, 129};
    test_rng r = {5};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int64_t cols = widths[wi], rows = 16, ld = cols + 3;
        float *x = malloc((size_t)(rows * ld) * sizeof *x), *deq = malloc((size_t)cols * 4);
        uint8_t *want = malloc((size_t)(rows * ld)), *got = malloc((size_t)(rows * ld));
        float ws[16], gs[16];
        int32_t wz[16], gz[16];
        for (int64_t i = 0; i < rows; i++)
            fill_row(&r, x + i * ld, cols, (int)i);
        for (int32_t bits = 4; bits <= 8; bits += 4)
            for (int32_t scheme = 0; scheme <= 1; scheme++) {
                dq__quantize_tokens_ref(x, rows, cols, ld, bits, scheme, 1.0f, want, ld, ws, wz);
                for (int64_t i = 0; i < rows; i++) {
                    for (int64_t j = 0; j < cols; j++)
                        deq[j] = ((float)want[i * ld + j] - (float)wz[i]) * ws[i];
                    check_group(x + i * ld, deq, cols, bits, scheme, "tokens", i, 0);
                }
                for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
                    if (!dq__gemm_isa_supported(isas[v]))
                        continue;
                    memset(got, 0xA5, (size_t)(rows * ld));
                    dq__quantize_tokens_isa(isas[v], x, rows, cols, ld, bits, scheme, 1.0f, got,
                                            ld, gs, gz, test_threads(1));
                    ck_assert_msg(memcmp(want, got, (size_t)(rows * ld)) == 0,
                                  "isa %d codes differ, cols %lld", (int)isas[v],
                                  (long long)cols);
                    ck_assert(memcmp(ws, gs, sizeof ws) == 0);
                    ck_assert(memcmp(wz, gz, sizeof wz) == 0);
                }
            }
        free(x);
        free(deq);
        free(want);
        free(got);
    }
}
END_TEST

/* A token whose range overflows, or that holds a NaN anywhere, gets scale +Inf, zero point 0
 * and codes 0 from every quantizer; the rule says false. */
START_TEST(tokens_not_finite_marked)
{
    float s, z;
    ck_assert(!dq__qr_params(4, DQ_QUANT_ASYM, -3.4e38f, 3.4e38f, 1.0f, 1.0f, &s, &z));
    ck_assert(isinf(s) && z == 0.0f);
    ck_assert(!dq__qr_params(4, DQ_QUANT_ASYM, NAN, 1.0f, 1.0f, 1.0f, &s, &z));
    const int64_t cols = 37;
    float x[3 * 37];
    for (int j = 0; j < 3 * 37; j++)
        x[j] = (float)(j % 5) - 2.0f;
    x[3] = 3.4e38f;
    x[4] = -3.4e38f;
    x[37 + 20] = NAN; /* row 1: a NaN inside (skipped by min and max) */
    x[74] = NAN;      /* row 2: a NaN first */
    for (int32_t scheme = 0; scheme <= 1; scheme++)
        for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
            if (!dq__gemm_isa_supported(isas[v]))
                continue;
            uint8_t codes[3 * 40];
            float sc[3];
            int32_t zs[3];
            memset(codes, 0xA5, sizeof codes);
            dq__quantize_tokens_isa(isas[v], x, 3, cols, cols, 4, scheme, 1.0f, codes, 40, sc,
                                    zs, test_threads(1));
            for (int i = 0; i < 3; i++) {
                if (scheme == DQ_QUANT_SYM && i == 0)
                    continue; /* SYM: max|x| / 7 is finite */
                ck_assert_msg(isinf(sc[i]) && zs[i] == 0, "isa %d scheme %d row %d: %g %d",
                              (int)isas[v], scheme, i, (double)sc[i], (int)zs[i]);
                for (int j = 0; j < 40; j++)
                    ck_assert_uint_eq(codes[i * 40 + j], 0);
            }
        }
}
END_TEST

/* Weights whose group range overflows float are refused. */
START_TEST(weights_range_overflow)
{
    float w[8] = {3.4e38f, -3.4e38f, 1, 2, 3, 4, 5, 6};
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 1, 8, 8, NULL, NULL, &q), DQ_ERR_NONFINITE);
    ck_assert_ptr_null(q);
}
END_TEST

/* A float reference of the layer: dequantized weights times each token dequantized by the
 * scalar quantizer. */
static void reference_forward(const dq_qmatrix *q, const float *x, int64_t rows, int64_t in,
                              int64_t out, int32_t bits, int32_t scheme, double *y)
{
    float *wd = malloc((size_t)(out * in) * sizeof *wd), *xd = malloc((size_t)in * sizeof *xd);
    uint8_t *codes = malloc((size_t)in);
    ck_assert_int_eq(dq_qmatrix_dequantize(q, wd, in), DQ_OK);
    for (int64_t t = 0; t < rows; t++) {
        float s;
        int32_t z;
        dq__quantize_tokens_ref(x + t * in, 1, in, in, bits, scheme, 1.0f, codes, in, &s, &z);
        for (int64_t j = 0; j < in; j++)
            xd[j] = ((float)codes[j] - (float)z) * s;
        for (int64_t o = 0; o < out; o++) {
            double acc = 0;
            for (int64_t j = 0; j < in; j++)
                acc += (double)xd[j] * (double)wd[o * in + j];
            y[t * out + o] = acc;
        }
    }
    free(wd);
    free(xd);
    free(codes);
}

/* A constant token of 1.0 through a W8A4 layer without a plan gives x . Wdeq; so do the other
 * row kinds. */
START_TEST(forward_against_float_reference)
{
    const int64_t in = 64, out = 5, rows = 8;
    float w[5 * 64], x[8 * 64], y[8 * 5];
    double ref[8 * 5];
    test_rng r = {9};
    for (int i = 0; i < out * in; i++)
        w[i] = (float)test_rng_normal(&r);
    for (int64_t t = 0; t < rows; t++)
        fill_row(&r, x + t * in, in, (int)t);
    for (int j = 0; j < in; j++)
        x[j] = 1.0f; /* token 0: the constant 1.0 */
    for (int32_t scheme = 0; scheme <= 1; scheme++) {
        dq_quant_params p;
        dq_quant_params_init(&p, sizeof p);
        p.bits = 8;
        dq_qmatrix *q = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, out, in, in, NULL, NULL, &q), DQ_OK);
        dq_linear_params lp;
        dq_linear_params_init(&lp, sizeof lp);
        lp.act_bits = 4;
        lp.act_scheme = scheme;
        dq_linear *lin = NULL;
        ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, q, NULL, &lin), DQ_OK);
        ck_assert_int_eq(dq_linear_forward(lin, x, rows, in, in, y, out, NULL, 0), DQ_OK);
        reference_forward(q, x, rows, in, out, 4, scheme, ref);
        for (int64_t t = 0; t < rows; t++)
            for (int64_t o = 0; o < out; o++) {
                double mag = 0;
                for (int64_t j = 0; j < in; j++)
                    mag += fabs((double)x[t * in + j]) * 8.0;
                ck_assert_msg(fabs((double)y[t * out + o] - ref[t * out + o]) <= 1e-5 * mag,
                              "scheme %d token %lld out %lld: %.9g vs %.9g", scheme,
                              (long long)t, (long long)o, (double)y[t * out + o],
                              ref[t * out + o]);
            }
        if (scheme == DQ_QUANT_ASYM) {
            /* token 0 exactly 1.0: y[0] = sum of the dequantized weight row */
            float wd[5 * 64];
            ck_assert_int_eq(dq_qmatrix_dequantize(q, wd, in), DQ_OK);
            double sum = 0;
            for (int j = 0; j < in; j++)
                sum += wd[j];
            ck_assert_double_eq_tol(y[0], sum, 1e-4);
        }
        dq_linear_free(lin);
        dq_qmatrix_free(q);
    }
}
END_TEST

/* Finite activations of +-3.4e38 through a smoothing plan: the transform overflows. */
START_TEST(plan_overflow_nonfinite)
{
    const int64_t c = 32;
    float smooth[32], x[2 * 32], w[4 * 32], y[2 * 4];
    for (int j = 0; j < c; j++) {
        smooth[j] = 0.5f;
        x[j] = j % 2 ? 3.4e38f : -3.4e38f;
        x[c + j] = 1.0f;
    }
    for (int i = 0; i < 4 * c; i++)
        w[i] = (float)(i % 7) - 3.0f;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, c, smooth, 0, NULL, NULL, &pl), DQ_OK);
    float xa[2 * 32];
    memcpy(xa, x, sizeof x);
    ck_assert_int_eq(dq_plan_apply_act(pl, xa, 2, c, c, NULL, 0), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 2, c, c, xa, c, NULL, 0), DQ_ERR_NONFINITE);
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 4, c, c, NULL, NULL, &q), DQ_OK);
    for (int32_t act_bits = 0; act_bits <= 8; act_bits += 4) {
        dq_linear_params lp;
        dq_linear_params_init(&lp, sizeof lp);
        lp.act_bits = act_bits;
        dq_linear *lin = NULL;
        ck_assert_int_eq(dq_linear_create(NULL, &lp, pl, q, NULL, &lin), DQ_OK);
        for (int i = 0; i < 8; i++)
            y[i] = 7.0f;
        ck_assert_int_eq(dq_linear_forward(lin, x, 2, c, c, y, 4, NULL, 0), DQ_ERR_NONFINITE);
        for (int i = 0; i < 8; i++)
            ck_assert_float_eq(y[i], 7.0f); /* untouched */
        dq_linear_free(lin);
    }
    /* Without a plan the range max - min of the token overflows. */
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, NULL, q, NULL, &lin), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(lin, x, 2, c, c, y, 4, NULL, 0), DQ_ERR_NONFINITE);
    for (int i = 0; i < 8; i++)
        ck_assert_float_eq(y[i], 7.0f);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
    dq_plan_free(pl);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("quant_rule");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, d5_cases_weights);
    tcase_add_test(tc, random_weights_every_group_size);
    tcase_add_test(tc, tokens_within_bound_and_identical);
    tcase_add_test(tc, tokens_not_finite_marked);
    tcase_add_test(tc, weights_range_overflow);
    tcase_add_test(tc, forward_against_float_reference);
    tcase_add_test(tc, plan_overflow_nonfinite);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(suite(), 0);
}
