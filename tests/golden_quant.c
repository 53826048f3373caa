/* Golden runner for INT4 quantization: reproduces the reference's fake-quantized activations
 * (per token, clip lac or 1.0) and weights (per output channel, clip swc or 1.0) from the
 * transformed matrices Xt and Wt of every case in $DUQUANT_GOLDEN_DIR. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dq_golden.h"
#include "dq_test.h"
#include "duquant.h"

#define SCALE_TOL 1e-6
#define VALUE_TOL 1e-6

typedef struct {
    const char *prefix; /* Xq_lac, ... */
    const char *source; /* Xt or Wt */
    const char *clip_key; /* params key of the clip factor, NULL = 1.0 */
} quant_check;

static const quant_check checks[] = {
    {"Xq_lac", "Xt", "lac"},
    {"Xq_plain", "Xt", NULL},
    {"Wq_swc", "Wt", "swc"},
    {"Wq_plain", "Wt", NULL},
};

static double max_rel(const float *a, const float *b, int64_t n)
{
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / fmax(fabs((double)b[i]), 1e-30);
        worst = d > worst ? d : worst;
    }
    return worst;
}

/* Returns the number of failed comparisons, or -1 when a file is malformed. */
static int run_check(const golden_case *gc, const quant_check *qc)
{
    char name[64];
    float *src = NULL, *ref = NULL, *ref_scale = NULL, *ref_zp = NULL, *deq = NULL;
    int32_t *ref_codes = NULL, *codes = NULL;
    dq_qmatrix *q = NULL;
    int64_t rows, cols, r2, c2, rs, cs, rz, cz, rc, cc;
    int failures = -1;
    double clip = 1.0;
    if (qc->clip_key && golden_number(gc, "params", qc->clip_key, &clip) != 0) {
        fprintf(stderr, "%s: params.%s missing\n", gc->name, qc->clip_key);
        goto out;
    }
    if (golden_load_f32(gc, qc->source, &src, &rows, &cols) != 0 ||
        golden_load_f32(gc, qc->prefix, &ref, &r2, &c2) != 0)
        goto out;
    snprintf(name, sizeof name, "%s_scale", qc->prefix);
    if (golden_load_f32(gc, name, &ref_scale, &rs, &cs) != 0)
        goto out;
    snprintf(name, sizeof name, "%s_zp", qc->prefix);
    if (golden_load_f32(gc, name, &ref_zp, &rz, &cz) != 0)
        goto out;
    snprintf(name, sizeof name, "%s_codes", qc->prefix);
    if (golden_load_i32(gc, name, &ref_codes, &rc, &cc) != 0)
        goto out;
    if (r2 != rows || c2 != cols || rc != rows || cc != cols || rs * cs != rows ||
        rz * cz != rows) {
        fprintf(stderr, "%s: %s: shapes disagree with %s\n", gc->name, qc->prefix, qc->source);
        goto out;
    }

    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.clip_ratio = (float)clip;
    dq_status st = dq_qmatrix_pack(NULL, &p, src, rows, cols, cols, NULL, NULL, &q);
    codes = malloc((size_t)(rows * cols) * sizeof *codes);
    deq = malloc((size_t)(rows * cols) * sizeof *deq);
    if (st != DQ_OK || !codes || !deq) {
        fprintf(stderr, "%s: %s: pack failed: %s\n", gc->name, qc->prefix, dq_status_name(st));
        goto out;
    }
    dq_qmatrix_unpack_codes(q, codes, cols);
    dq_qmatrix_dequantize(q, deq, cols);
    const float *scales, *zeros;
    dq_qmatrix_view(q, NULL, NULL, &scales, &zeros);

    int64_t code_mismatch = 0;
    for (int64_t i = 0; i < rows * cols; i++)
        code_mismatch += codes[i] != ref_codes[i];
    double scale_err = max_rel(scales, ref_scale, rows);
    double zp_err = max_rel(zeros, ref_zp, rows);
    double value_err = test_rel_err(deq, cols, ref, cols, rows, cols);
    failures = (code_mismatch != 0) + (scale_err > SCALE_TOL) + (zp_err > SCALE_TOL) +
               (value_err > VALUE_TOL);
    printf("  %-9s from %s (%lldx%lld, clip %.2f): codes %lld/%lld differ, scale max rel %.2e, "
           "zero max rel %.2e, dequantized rel %.2e (tol %.0e) %s\n",
           qc->prefix, qc->source, (long long)rows, (long long)cols, clip,
           (long long)code_mismatch, (long long)(rows * cols), scale_err, zp_err, value_err,
           VALUE_TOL, failures ? "FAIL" : "ok");
out:
    dq_qmatrix_free(q);
    free(src);
    free(ref);
    free(ref_scale);
    free(ref_zp);
    free(ref_codes);
    free(codes);
    free(deq);
    return failures;
}

int main(void)
{
    golden_case *cases;
    int absent;
    int n = golden_list(&cases, &absent);
    if (n < 0)
        return 1;
    if (n == 0) {
        printf("SKIP: no golden cases in %s (%s); set DUQUANT_GOLDEN_DIR\n", golden_dir(),
               absent ? "directory absent" : "empty");
        return GOLDEN_SKIP;
    }
    int failed = 0, compared = 0;
    for (int c = 0; c < n; c++) {
        printf("case %s (%s)\n", cases[c].name, cases[c].dir);
        for (size_t k = 0; k < sizeof checks / sizeof checks[0]; k++) {
            int f = run_check(&cases[c], &checks[k]);
            if (f < 0) {
                printf("  %s: MALFORMED\n", checks[k].prefix);
                failed++;
            } else {
                failed += f;
            }
            compared++;
        }
    }
    golden_free_cases(cases, n);
    printf("%d cases, %d quantizations compared, %d failed checks\n", n, compared, failed);
    return failed ? 1 : 0;
}
