/* The idea behind DuQuant's rotations, worked by hand on a 3x4 activation.
 *
 * Channel 0 holds an outlier column. A 45-degree Givens rotation G of channels 0 and 1 is
 * orthogonal, so (x G)(W G)^T = x W^T: the layer output is unchanged, but the outlier's
 * magnitude is shared between two channels and the per-token INT4 step size shrinks.
 * Quantization goes through libduquant (per-token rows, 4 bits); the rotation is written out
 * here so that every number can be checked by hand.
 *
 * Build against an installed library with:
 *     cc givens_example.c $(pkg-config --cflags --libs duquant) -lm */
#include <duquant.h>
#include <math.h>
#include <stdio.h>

#define T 3 /* tokens */
#define C 4 /* channels */

static void print_matrix(const char *title, const float *m)
{
    printf("%s\n", title);
    for (int i = 0; i < T; i++) {
        printf("   ");
        for (int j = 0; j < C; j++)
            printf(" %8.4f", m[i * C + j]);
        printf("\n");
    }
}

/* Quantize every token (row) with the given scheme and return ||x - dequant(x)||_F. */
static int quant_error(const float *x, int32_t scheme, float *back, double *err)
{
    dq_quant_params p;
    dq_qmatrix *q = NULL;
    dq_status st = dq_quant_params_init(&p, sizeof p);
    if (st == DQ_OK) {
        p.bits = 4;
        p.scheme = scheme;
        st = dq_qmatrix_pack(NULL, &p, x, T, C, C, NULL, NULL, &q);
    }
    if (st == DQ_OK)
        st = dq_qmatrix_dequantize(q, back, C);
    dq_qmatrix_free(q);
    if (st != DQ_OK) {
        fprintf(stderr, "quantization failed: %s\n", dq_status_string(st));
        return 1;
    }
    double s = 0;
    for (int i = 0; i < T * C; i++)
        s += (double)(x[i] - back[i]) * (x[i] - back[i]);
    *err = sqrt(s);
    return 0;
}

static void rotate_channels_01(const float *x, float *out, double angle)
{
    const double c = cos(angle), s = sin(angle);
    for (int i = 0; i < T; i++) {
        const double a = x[i * C], b = x[i * C + 1];
        for (int j = 0; j < C; j++)
            out[i * C + j] = x[i * C + j];
        out[i * C] = (float)(c * a + s * b);     /* column 0 of G = ( c, s, 0, 0) */
        out[i * C + 1] = (float)(-s * a + c * b); /* column 1 of G = (-s, c, 0, 0) */
    }
}

int main(void)
{
    const float x[T * C] = {
        10.0f, 0.3f, -0.6f, 0.4f, /* token 0: the outlier 10.0 */
        -0.5f, 0.8f, 0.2f, -0.4f,
        0.7f, -0.3f, 0.5f, 0.9f,
    };
    /* One output channel, to show that the product is preserved. */
    const float w[C] = {0.25f, -0.5f, 0.75f, 1.0f};
    const double angle = 3.14159265358979323846 / 4;
    float xr[T * C], wr[C], back[T * C];

    rotate_channels_01(x, xr, angle);
    {
        /* W G: the weight row is a 1 x C matrix and takes the same rotation. */
        const double c = cos(angle), s = sin(angle);
        for (int j = 0; j < C; j++)
            wr[j] = w[j];
        wr[0] = (float)(c * w[0] + s * w[1]);
        wr[1] = (float)(-s * w[0] + c * w[1]);
    }

    print_matrix("activation x (tokens x channels):", x);
    print_matrix("x G, channels 0 and 1 rotated by 45 degrees:", xr);

    printf("\nlayer output y = x w^T before and after the rotation (must agree):\n");
    for (int i = 0; i < T; i++) {
        double y = 0, yr = 0;
        for (int j = 0; j < C; j++) {
            y += (double)x[i * C + j] * w[j];
            yr += (double)xr[i * C + j] * wr[j];
        }
        printf("    token %d: %9.5f  %9.5f\n", i, y, yr);
        if (fabs(y - yr) > 1e-5 * (1 + fabs(y))) {
            fprintf(stderr, "the rotation changed the output of token %d\n", i);
            return 1;
        }
    }

    printf("\nper-token INT4 quantization error ||x - Q(x)||_F:\n");
    const struct {
        const char *name;
        int32_t scheme;
    } schemes[] = {{"symmetric ", DQ_QUANT_SYM}, {"asymmetric", DQ_QUANT_ASYM}};
    for (int k = 0; k < 2; k++) {
        double before, after;
        if (quant_error(x, schemes[k].scheme, back, &before) ||
            quant_error(xr, schemes[k].scheme, back, &after))
            return 1;
        printf("    %s  before %.4f  after %.4f\n", schemes[k].name, before, after);
    }
    printf("\nA single 2x2 rotation only shares the outlier with one neighbour. DuQuant's block\n"
           "rotations spread it over a whole block (first row uniform), the zigzag permutation\n"
           "balances blocks, and a second rotation smooths what is left.\n");
    return 0;
}
