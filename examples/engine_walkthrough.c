/* How an inference engine uses libduquant, end to end (doc/api.md walks through this file).
 *
 * Offline, once per model: observe calibration activations, build one plan per layer input,
 * transform each weight with its plan, learn its clip factors (LWC), pack it to INT4, and save
 * plans and layers in one file. At run time: open the file, load the plan and the layers, and
 * run forward on new tokens.
 *
 * The "model" is two projections (q: 256 -> 256, k: 256 -> 128) reading one input whose
 * activations carry what real LLM inputs carry: a few channels that are large for every token
 * and a few tokens with massive values. Usage: engine_walkthrough [FILE] (default
 * walkthrough.safetensors). Exits non-zero when a call fails, when the layers loaded from the
 * file do not reproduce the in-memory ones bit for bit, or when DuQuant is not more accurate
 * than plain 4-bit round-to-nearest.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"

#define WIDTH 256
#define CALIB_TOKENS 512
#define CHUNK_TOKENS 64
#define TEST_TOKENS 64

typedef struct layer_def {
    const char *name;
    int64_t out;
    float *w, *bias;
} layer_def;

/* Stops the program with the failing call's status. */
#define CHECK(call)                                                                            \
    do {                                                                                       \
        dq_status st_ = (call);                                                                \
        if (st_ != DQ_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                       \
                    dq_status_string(st_));                                                    \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;

static float uniform(void) /* (0, 1) */
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return ((float)(rng_state >> 40) + 0.5f) / 16777216.0f;
}

static float gaussian(void)
{
    return sqrtf(-2.0f * logf(uniform())) * cosf(6.2831853f * uniform());
}

/* Tokens of the shared input: Gaussian, channels 7 and 100 x30 on every token, and one token
 * in 32 carrying values of several hundred in channels 3 and 200 (massive activations). */
static void make_tokens(float *x, int64_t tokens, int64_t first_token)
{
    for (int64_t t = 0; t < tokens; t++) {
        float *row = x + t * WIDTH;
        for (int64_t j = 0; j < WIDTH; j++)
            row[j] = gaussian();
        row[7] *= 30.0f, row[100] *= 30.0f;
        if ((first_token + t) % 32 == 0)
            row[3] = 400.0f + 100.0f * uniform(), row[200] = -300.0f - 100.0f * uniform();
    }
}

/* y = x W^T + b in double, the float model's output. */
static void reference_forward(const layer_def *l, const float *x, int64_t tokens, float *y)
{
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t o = 0; o < l->out; o++) {
            double s = l->bias[o];
            for (int64_t j = 0; j < WIDTH; j++)
                s += (double)x[t * WIDTH + j] * l->w[o * WIDTH + j];
            y[t * l->out + o] = (float)s;
        }
}

static double relative_error(const float *y, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++)
        num += (double)(y[i] - ref[i]) * (y[i] - ref[i]), den += (double)ref[i] * ref[i];
    return sqrt(num / den);
}

/* ---- offline: calibrate, plan, transform, LWC, pack, save ---- */

/* Transformed, LWC-clipped, packed weight of one layer. xt: the plan applied to the
 * calibration sample (rows tokens). */
static dq_qmatrix *quantize_layer(const layer_def *l, const dq_plan *plan, const float *xt,
                                  int64_t rows)
{
    float *wt = xmalloc((size_t)(l->out * WIDTH) * sizeof *wt);
    memcpy(wt, l->w, (size_t)(l->out * WIDTH) * sizeof *wt);
    CHECK(dq_plan_transform_weight(plan, wt, l->out, WIDTH, WIDTH)); /* W G^-T */

    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.flags = DQ_LWC_F_QUANT_ACT; /* learn against W4A4 outputs, as the layer will run */
    lp.epochs = 20;
    dq_lwc *lwc = NULL;
    CHECK(dq_lwc_create(NULL, &lp, NULL, wt, l->out, WIDTH, WIDTH, xt, rows, WIDTH, &lwc));
    CHECK(dq_lwc_train(lwc, NULL));
    float *hi = xmalloc((size_t)l->out * sizeof *hi), *lo = xmalloc((size_t)l->out * sizeof *lo);
    CHECK(dq_lwc_factors(lwc, hi, lo, l->out));
    dq_lwc_free(lwc);

    /* 4-bit asym, bound to the plan: layers refuse any other plan (DQ_ERR_MISMATCH). */
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    CHECK(dq_plan_fingerprint(plan, &qp.plan_fingerprint));
    dq_qmatrix *q = NULL;
    CHECK(dq_qmatrix_pack(NULL, &qp, wt, l->out, WIDTH, WIDTH, hi, lo, &q));
    free(hi), free(lo), free(wt);
    return q;
}

/* Quantizes the layers and saves them to path; mem_ys[i] receives layer i's output on the
 * test tokens x, computed by the in-memory layer before saving. */
static void quantize_model(layer_def *layers, int n_layers, const char *path, const float *x,
                           float **mem_ys)
{
    /* 1. Calibrate: feed the input's activations as the float model produces them. */
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_tokens = CALIB_TOKENS; /* tokens kept for the rotation search and LWC */
    dq_calib *calib = NULL;
    CHECK(dq_calib_create(NULL, &cp, WIDTH, &calib));
    float *chunk = xmalloc((size_t)(CHUNK_TOKENS * WIDTH) * sizeof *chunk);
    for (int64_t t = 0; t < CALIB_TOKENS; t += CHUNK_TOKENS) {
        make_tokens(chunk, CHUNK_TOKENS, t);
        CHECK(dq_calib_observe(calib, chunk, CHUNK_TOKENS, WIDTH, WIDTH));
    }
    free(chunk);

    /* 2. One plan per input: smoothing sees the weights of every layer reading it. */
    float w_absmax[WIDTH];
    for (int i = 0; i < n_layers; i++)
        CHECK(dq_smooth_weight_absmax(layers[i].w, layers[i].out, WIDTH, WIDTH, i > 0, w_absmax));
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp); /* smoothing, rotation, zigzag, rotation */
    pp.block_size = 64;
    dq_plan *plan = NULL;
    CHECK(dq_plan_build(NULL, &pp, calib, w_absmax, WIDTH, &plan));

    /* 3. The transformed calibration sample trains every layer's clipping. */
    int64_t rows = 0;
    CHECK(dq_calib_sample(calib, NULL, WIDTH, &rows));
    float *xt = xmalloc((size_t)(rows * WIDTH) * sizeof *xt);
    CHECK(dq_calib_sample(calib, xt, WIDTH, &rows));
    CHECK(dq_plan_apply_act(plan, xt, rows, WIDTH, WIDTH, NULL, 0));
    dq_calib_free(calib);

    /* 4. Pack each layer and collect everything in one file. */
    dq_file_writer *fw = NULL;
    CHECK(dq_file_writer_create(NULL, &fw));
    CHECK(dq_file_writer_add_metadata(fw, "model", "engine_walkthrough"));
    CHECK(dq_file_writer_add_plan(fw, "attn_in", plan));
    for (int i = 0; i < n_layers; i++) {
        dq_qmatrix *q = quantize_layer(&layers[i], plan, xt, rows);
        CHECK(dq_file_writer_add_linear(fw, layers[i].name, NULL, "attn_in", q, layers[i].bias));
        dq_linear *lin = NULL;
        CHECK(dq_linear_create(NULL, NULL, plan, q, layers[i].bias, &lin));
        dq_qmatrix_free(q); /* the writer and the layer hold their own copies */
        CHECK(dq_linear_forward(lin, x, TEST_TOKENS, WIDTH, WIDTH, mem_ys[i], layers[i].out,
                                NULL, 0));
        dq_linear_free(lin);
    }
    CHECK(dq_file_writer_save(fw, path));
    dq_file_writer_free(fw);
    free(xt);
    dq_plan_free(plan);
}

/* ---- run time: load and forward ---- */

/* Loads the layers from path and runs them on x; returns the relative error of the worst one
 * and writes each layer's output to ys[i]. */
static double run_model(const layer_def *layers, int n_layers, const char *path,
                        const float *x, float **ys)
{
    dq_file_reader *fr = NULL;
    CHECK(dq_file_reader_open(NULL, NULL, path, &fr));
    char plan_prefix[64], key[64];
    snprintf(key, sizeof key, "%s.plan", layers[0].name);
    CHECK(dq_file_reader_metadata(fr, key, plan_prefix, sizeof plan_prefix, NULL));
    dq_plan *plan = NULL; /* shared by the layers, each keeps it alive: free it any time */
    CHECK(dq_file_reader_get_plan(fr, NULL, plan_prefix, &plan));

    double worst = 0;
    for (int i = 0; i < n_layers; i++) {
        dq_linear *lin = NULL;
        CHECK(dq_file_reader_get_linear(fr, NULL, layers[i].name, plan, &lin));
        size_t bytes = 0;
        CHECK(dq_linear_workspace_size(lin, TEST_TOKENS, &bytes));
        void *work = xmalloc(bytes ? bytes : 1); /* reused across calls in a real engine */
        CHECK(dq_linear_forward(lin, x, TEST_TOKENS, WIDTH, WIDTH, ys[i], layers[i].out, work,
                                bytes));
        free(work);
        dq_linear_free(lin);

        float *ref = xmalloc((size_t)(TEST_TOKENS * layers[i].out) * sizeof *ref);
        reference_forward(&layers[i], x, TEST_TOKENS, ref);
        double e = relative_error(ys[i], ref, TEST_TOKENS * layers[i].out);
        printf("  %-2s W4A4 DuQuant+LWC relative error %.4f\n", layers[i].name, e);
        worst = e > worst ? e : worst;
        free(ref);
    }
    dq_plan_free(plan);
    dq_file_reader_free(fr);
    return worst;
}

/* The same layers quantized with no transform and no clipping (plain RTN), for comparison. */
static double rtn_error(const layer_def *layers, int n_layers, const float *x)
{
    double worst = 0;
    for (int i = 0; i < n_layers; i++) {
        dq_qmatrix *q = NULL;
        dq_linear *lin = NULL;
        CHECK(dq_qmatrix_pack(NULL, NULL, layers[i].w, layers[i].out, WIDTH, WIDTH, NULL, NULL,
                              &q));
        CHECK(dq_linear_create(NULL, NULL, NULL, q, layers[i].bias, &lin));
        dq_qmatrix_free(q);
        float *y = xmalloc((size_t)(TEST_TOKENS * layers[i].out) * sizeof *y);
        float *ref = xmalloc((size_t)(TEST_TOKENS * layers[i].out) * sizeof *ref);
        CHECK(dq_linear_forward(lin, x, TEST_TOKENS, WIDTH, WIDTH, y, layers[i].out, NULL, 0));
        reference_forward(&layers[i], x, TEST_TOKENS, ref);
        double e = relative_error(y, ref, TEST_TOKENS * layers[i].out);
        printf("  %-2s W4A4 RTN relative error          %.4f\n", layers[i].name, e);
        worst = e > worst ? e : worst;
        free(y), free(ref);
        dq_linear_free(lin);
    }
    return worst;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "walkthrough.safetensors";
    layer_def layers[] = {{"q", 256, NULL, NULL}, {"k", 128, NULL, NULL}};
    const int n_layers = 2;
    for (int i = 0; i < n_layers; i++) {
        layers[i].w = xmalloc((size_t)(layers[i].out * WIDTH) * sizeof(float));
        layers[i].bias = xmalloc((size_t)layers[i].out * sizeof(float));
        for (int64_t k = 0; k < layers[i].out * WIDTH; k++)
            layers[i].w[k] = 0.05f * gaussian();
        for (int64_t k = 0; k < layers[i].out; k++)
            layers[i].bias[k] = 0.1f * gaussian();
    }

    float *x = xmalloc((size_t)(TEST_TOKENS * WIDTH) * sizeof *x);
    make_tokens(x, TEST_TOKENS, 1); /* new tokens, massive ones included (token 31) */
    float *ys[2], *mem_ys[2];
    for (int i = 0; i < n_layers; i++) {
        ys[i] = xmalloc((size_t)(TEST_TOKENS * layers[i].out) * sizeof(float));
        mem_ys[i] = xmalloc((size_t)(TEST_TOKENS * layers[i].out) * sizeof(float));
    }

    quantize_model(layers, n_layers, path, x, mem_ys);
    printf("saved plan 'attn_in' and layers q, k to %s\n", path);
    printf("loaded from %s, forward on %d new tokens:\n", path, TEST_TOKENS);
    double dq_err = run_model(layers, n_layers, path, x, ys);
    double rtn_err = rtn_error(layers, n_layers, x);

    /* The file holds everything a layer needs: loaded layers reproduce the saved ones. */
    int same = 1;
    for (int i = 0; i < n_layers; i++)
        same &= memcmp(ys[i], mem_ys[i], (size_t)(TEST_TOKENS * layers[i].out) * sizeof(float)) == 0;

    int ok = same && dq_err < rtn_err;
    printf("worst layer: DuQuant+LWC %.4f, RTN %.4f; loaded = saved bit for bit: %s -> %s\n", dq_err,
           rtn_err, same ? "yes" : "NO", ok ? "ok" : "FAILED");
    for (int i = 0; i < n_layers; i++)
        free(layers[i].w), free(layers[i].bias), free(ys[i]), free(mem_ys[i]);
    free(x);
    return ok ? 0 : 1;
}
