/* Quantizes a weight-like matrix to INT4 with libduquant and prints the error and packed size.
 * Build against an installed library with:
 *     cc quantize_demo.c $(pkg-config --cflags --libs duquant) -lm */
#include <duquant.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define ROWS 256
#define COLS 1024

/* A deterministic matrix with a few large input channels, like real LLM weights. */
static void fill(float *w)
{
    unsigned long long s = 42;
    for (int i = 0; i < ROWS * COLS; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(s >> 11) / 9007199254740992.0;
        w[i] = (float)((u - 0.5) * 0.04);
        if (i % COLS == 17 || i % COLS == 500)
            w[i] *= 8.0f;
    }
}

static int run(const char *label, const dq_quant_params *p, const float *w, float *back)
{
    dq_qmatrix *q = NULL;
    dq_status st = dq_qmatrix_pack(NULL, p, w, ROWS, COLS, COLS, NULL, NULL, &q);
    if (st != DQ_OK) {
        fprintf(stderr, "dq_qmatrix_pack: %s (%s)\n", dq_status_name(st), dq_status_string(st));
        return 1;
    }
    size_t nbytes = 0;
    int64_t groups = 0;
    dq_qmatrix_view(q, NULL, &nbytes, NULL, NULL);
    dq_qmatrix_layout(q, NULL, NULL, NULL, NULL, NULL, &groups, NULL);
    dq_qmatrix_dequantize(q, back, COLS);
    double num = 0, den = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        num += (double)(back[i] - w[i]) * (back[i] - w[i]);
        den += (double)w[i] * w[i];
    }
    size_t meta = (size_t)ROWS * (size_t)groups * (p->scheme == DQ_QUANT_ASYM ? 8 : 4);
    printf("%-28s rel. error %.4f   packed %7zu B + scales %6zu B  (float32: %zu B)\n", label,
           sqrt(num / den), nbytes, meta, sizeof(float) * ROWS * COLS);
    dq_qmatrix_free(q);
    return 0;
}

int main(void)
{
    printf("libduquant %s: INT4 quantization of a %dx%d matrix\n", dq_version_string(), ROWS,
           COLS);
    float *w = malloc(sizeof(float) * ROWS * COLS), *back = malloc(sizeof(float) * ROWS * COLS);
    if (!w || !back)
        return 1;
    fill(w);
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    int rc = run("asym per row", &p, w, back);
    p.clip_ratio = 0.8f;
    rc |= run("asym per row, clip 0.8", &p, w, back);
    p.clip_ratio = 1.0f;
    p.group_size = 128;
    rc |= run("asym groups of 128", &p, w, back);
    p.scheme = DQ_QUANT_SYM;
    rc |= run("sym groups of 128", &p, w, back);
    p.bits = 8;
    p.scheme = DQ_QUANT_ASYM;
    p.group_size = 0;
    rc |= run("8-bit asym per row", &p, w, back);
    free(w);
    free(back);
    return rc;
}
