/* Golden runner for the quantized linear layer and LWC on the reference's transformed
 * activations and weights (Xt, Wt) of every case in $DUQUANT_GOLDEN_DIR:
 *  1. the integer path of dq_linear equals the float fake-quant path (activations quantized
 *     and dequantized per token, weights dequantized, double products) within 1e-5, for
 *     ASYM/SYM, 4/8-bit activations, weight-only, whole rows and groups of 48;
 *  2. LWC trained on (Xt, Wt) reaches a lower layer reconstruction error
 *     ||Xt Wt^T - Xt Q(Wt)^T||_F / ||Xt Wt^T||_F than clip 1.0 and than the fixed ratio 0.8,
 *     with Q the dq_qmatrix_pack of the learned factors (dq_lwc_factors: the best full-batch
 *     iterate); the training loss per epoch is printed and must fall on average (mean of the
 *     last 5 epochs below the first 5). */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_golden.h"
#include "dq_test.h"
#include "duquant.h"

#define TOL_INTEGER 1e-5
#define LWC_EPOCHS 60
#define LWC_BATCH 8

static int failures;

static void report(const char *what, double err, double tol)
{
    bool ok = err <= tol;
    printf("  %-52s %.3e (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
    failures += !ok;
}

static double max_rel(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

/* Fake-quant oracle of one layer configuration. */
static float *fake_quant_output(const float *x, int64_t t, int64_t c, const dq_qmatrix *q,
                                int64_t out, int32_t act_bits, int32_t act_scheme)
{
    float *xq = malloc((size_t)(t * c) * sizeof(float));
    float *wd = malloc((size_t)(out * c) * sizeof(float));
    float *y = malloc((size_t)(t * out) * sizeof(float));
    if (!xq || !wd || !y)
        abort();
    memcpy(xq, x, (size_t)(t * c) * sizeof(float));
    if (act_bits) {
        dq_quant_params ap;
        dq_quant_params_init(&ap, sizeof ap);
        ap.bits = act_bits;
        ap.scheme = act_scheme;
        dq_qmatrix *qa = NULL;
        if (dq_qmatrix_pack(NULL, &ap, x, t, c, c, NULL, NULL, &qa) != DQ_OK ||
            dq_qmatrix_dequantize(qa, xq, c) != DQ_OK)
            abort();
        dq_qmatrix_free(qa);
    }
    if (dq_qmatrix_dequantize(q, wd, c) != DQ_OK)
        abort();
    test_matmul_nt(xq, c, wd, c, y, out, t, out, c);
    free(xq);
    free(wd);
    return y;
}

static void check_integer_path(const float *x, int64_t t, int64_t c, const float *w, int64_t out)
{
    const int32_t schemes[] = {DQ_QUANT_ASYM, DQ_QUANT_SYM};
    const int32_t act_bits[] = {4, 8, 0};
    const int32_t groups[] = {0, 48};
    for (int s = 0; s < 2; s++)
        for (int a = 0; a < 3; a++)
            for (int g = 0; g < 2; g++) {
                dq_quant_params wq;
                dq_quant_params_init(&wq, sizeof wq);
                wq.scheme = schemes[s];
                wq.group_size = groups[g];
                dq_qmatrix *q = NULL;
                dq_linear *lin = NULL;
                dq_linear_params lp;
                dq_linear_params_init(&lp, sizeof lp);
                lp.act_bits = act_bits[a];
                lp.act_scheme = schemes[s];
                float *y = malloc((size_t)(t * out) * sizeof(float));
                if (!y || dq_qmatrix_pack(NULL, &wq, w, out, c, c, NULL, NULL, &q) != DQ_OK ||
                    dq_linear_create(NULL, &lp, NULL, q, NULL, &lin) != DQ_OK ||
                    dq_linear_forward(lin, x, t, c, c, y, out, NULL, 0) != DQ_OK) {
                    printf("  integer path: a call failed FAIL\n");
                    failures++;
                } else {
                    float *ref = fake_quant_output(x, t, c, q, out, act_bits[a], schemes[s]);
                    char what[128];
                    snprintf(what, sizeof what, "integer vs fake-quant %s A%d group %d",
                             schemes[s] == DQ_QUANT_ASYM ? "asym" : "sym",
                             act_bits[a] ? act_bits[a] : 16, groups[g]);
                    report(what, max_rel(y, ref, t * out), TOL_INTEGER);
                    free(ref);
                }
                free(y);
                dq_linear_free(lin);
                dq_qmatrix_free(q);
            }
}

/* ||x w^T - x Q(w)^T||_F / ||x w^T||_F in double. */
static double reconstruction_error(const float *x, int64_t t, int64_t c, const float *w,
                                   int64_t out, const float *clip_hi, const float *clip_lo,
                                   float fixed)
{
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    wq.clip_ratio = fixed;
    dq_qmatrix *q = NULL;
    float *wd = malloc((size_t)(out * c) * sizeof(float));
    if (!wd || dq_qmatrix_pack(NULL, &wq, w, out, c, c, clip_hi, clip_lo, &q) != DQ_OK ||
        dq_qmatrix_dequantize(q, wd, c) != DQ_OK)
        abort();
    double num = 0, den = 0;
    for (int64_t i = 0; i < t; i++)
        for (int64_t o = 0; o < out; o++) {
            double yf = 0, yq = 0;
            for (int64_t j = 0; j < c; j++) {
                yf += (double)x[i * c + j] * (double)w[o * c + j];
                yq += (double)x[i * c + j] * (double)wd[o * c + j];
            }
            num += (yf - yq) * (yf - yq);
            den += yf * yf;
        }
    dq_qmatrix_free(q);
    free(wd);
    return sqrt(num / den);
}

typedef struct curve {
    int32_t n;
    float loss[LWC_EPOCHS];
} curve;

static int32_t record(void *user, int32_t epoch, float loss)
{
    curve *cv = user;
    if (epoch >= 1 && epoch <= LWC_EPOCHS)
        cv->loss[epoch - 1] = loss;
    cv->n = epoch;
    return 0;
}

static void check_lwc(const float *x, int64_t t, int64_t c, const float *w, int64_t out)
{
    curve cv = {0};
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.epochs = LWC_EPOCHS;
    p.batch_tokens = LWC_BATCH;
    p.on_epoch = record;
    p.on_epoch_user = &cv;
    dq_lwc *l = NULL;
    float *hi = malloc((size_t)out * sizeof(float)), *lo = malloc((size_t)out * sizeof(float));
    float initial = 0, final = 0;
    if (!hi || !lo || dq_lwc_create(NULL, &p, NULL, w, out, c, c, x, t, c, &l) != DQ_OK ||
        dq_lwc_loss(l, &initial, NULL, NULL, 0) != DQ_OK || dq_lwc_train(l, NULL) != DQ_OK ||
        dq_lwc_best(l, NULL, NULL, 0, &final) != DQ_OK ||
        dq_lwc_factors(l, hi, lo, out) != DQ_OK) {
        printf("  lwc: a call failed FAIL\n");
        failures++;
    } else {
        printf("  lwc loss curve (epoch: mean training loss; full-batch %.6g before, best %.6g)\n",
               (double)initial, (double)final);
        for (int32_t e = 0; e < cv.n; e++)
            printf("%s%3d: %.6g", e % 5 == 0 ? "   " : "  ", e + 1, (double)cv.loss[e]);
        printf("\n");
        double mean_first = 0, mean_last = 0;
        for (int e = 0; e < 5; e++) {
            mean_first += cv.loss[e] / 5.0;
            mean_last += cv.loss[LWC_EPOCHS - 5 + e] / 5.0;
        }
        const double e10 = reconstruction_error(x, t, c, w, out, NULL, NULL, 1.0f);
        const double e08 = reconstruction_error(x, t, c, w, out, NULL, NULL, 0.8f);
        const double elwc = reconstruction_error(x, t, c, w, out, hi, lo, 1.0f);
        double mh = 0, ml = 0;
        for (int64_t o = 0; o < out; o++) {
            mh += hi[o] / (double)out;
            ml += lo[o] / (double)out;
        }
        printf("  reconstruction error W4 per row: clip 1.0 %.4e, clip 0.8 %.4e, LWC %.4e"
               " (mean factors hi %.3f lo %.3f)\n", e10, e08, elwc, mh, ml);
        report("lwc mean loss, last 5 epochs / first 5", mean_last / mean_first, 1.0);
        report("lwc best full-batch loss / before", (double)final / (double)initial, 1.0);
        report("lwc error / clip 1.0 error", elwc / e10, 1.0);
        report("lwc error / clip 0.8 error", elwc / e08, 1.0);
    }
    free(hi);
    free(lo);
    dq_lwc_free(l);
}

int main(void)
{
    golden_case *cases = NULL;
    int absent = 0;
    int n = golden_list(&cases, &absent);
    if (n < 0) {
        fprintf(stderr, "golden_linear: cannot read %s\n", golden_dir());
        return 1;
    }
    if (n == 0) {
        printf("golden_linear: no reference vectors in %s: skipped\n", golden_dir());
        return GOLDEN_SKIP;
    }
    for (int k = 0; k < n; k++) {
        const golden_case *gc = &cases[k];
        printf("case %s\n", gc->name);
        float *x = NULL, *w = NULL;
        int64_t t, c, out, wc;
        if (golden_load_f32(gc, "Xt", &x, &t, &c) != 0 ||
            golden_load_f32(gc, "Wt", &w, &out, &wc) != 0 || wc != c) {
            printf("  malformed case (Xt/Wt missing or of different widths) FAIL\n");
            failures++;
        } else {
            check_integer_path(x, t, c, w, out);
            check_lwc(x, t, c, w, out);
        }
        free(x);
        free(w);
    }
    golden_free_cases(cases, n);
    printf("golden_linear: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
