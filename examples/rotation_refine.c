/* Rotation refinement side by side: greedy DuQuant, + DFRot, + DartQuant, Hadamard and
 * Hadamard + DartQuant, each as a full plan (smoothing, rotation, zigzag, rotation for the
 * greedy rows; smoothing and one Hadamard rotation for the Hadamard rows).
 *
 * For every layer the program prints the relative W4A4 output error
 *     ||x W^T - Q(x G) Q(W G^-T)^T||_F / ||x W^T||_F
 * with activations quantized per token and weights per output row, both 4-bit asymmetric with
 * clip 1.0, and the time the plan took to build (search + refinement).
 *
 * Layers come from
 *  - reference cases: folders holding manifest.json, X.f32 and W.f32 (the project's golden
 *    vectors); the plan is built and evaluated on the same tokens, as the reference does;
 *  - a calibration dump of the llama2.c engine (`duquant-eval --dump-calib DIR`:
 *    DIR/layer<L>_{qkv,wo,w13,w2}.npy) together with the model checkpoint the weights come
 *    from; the plan is built on the first half of each sample's tokens and evaluated on the
 *    second half (held out);
 *  - otherwise a synthetic outlier-heavy layer.
 *
 * usage: rotation_refine [--golden DIR] [--calib DIR --model stories260K.bin]
 *                        [--dfrot-iters N] [--dfrot-gamma F] [--dart-iters N] [--dart-lr F]
 *                        [--block N] [--per-block] (one matrix per block)
 *                        [--hadamard-base] (greedy searches with the Hadamard base where
 *                        power-of-two blocks cover the width)
 *                        [--lwc-epochs N] (LWC training epochs, default 20)
 *                        [--verbose]   (each refinement iteration's objective to stderr)
 *        (--golden defaults to $DUQUANT_GOLDEN_DIR) */
#define _POSIX_C_SOURCE 200809L /* opendir, strdup, clock_gettime */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "case_files.h"
#include "duquant.h"

typedef struct layer {
    char name[64];
    int64_t cal_rows, eval_rows, c, out;
    int32_t block, hadamard_block, steps;
    float alpha;
    float *cal, *eval, *w; /* cal / eval may alias (in-sample evaluation) */
} layer;

typedef struct options {
    int32_t dfrot_iters, dart_iters, block, per_block, hadamard_base, lwc_epochs;
    float dart_lr, dfrot_gamma;
    dq_context *ctx; /* with --verbose: logs each refinement iteration to stderr */
} options;

/* ---- input ---- */

/* A plain reference case (no smoothing applied beforehand, no caller-given Q'). */
static int load_case(const char *dir, const char *name, layer *l)
{
    char path[4096];
    long size = 0;
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *m = case_read_file(path, &size);
    double t, c, bs, steps, alpha, smooth;
    if (!m || case_manifest_number(m, "T", &t) || case_manifest_number(m, "C", &c) ||
        case_manifest_number(m, "block_size", &bs) ||
        case_manifest_number(m, "max_rotation_step", &steps) ||
        case_manifest_number(m, "smooth_alpha", &alpha) ||
        case_manifest_number(m, "smooth_applied", &smooth) || smooth != 0 ||
        strstr(m, "\"q_prime\": \"given\"")) {
        free(m);
        return -1;
    }
    free(m);
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "case %s", name);
    l->cal_rows = l->eval_rows = (int64_t)t;
    l->c = (int64_t)c;
    l->block = l->hadamard_block = (int32_t)bs;
    l->steps = (int32_t)steps;
    l->alpha = (float)alpha;
    snprintf(path, sizeof path, "%s/W.f32", dir);
    free(case_read_file(path, &size));
    l->out = size / (long)sizeof(float) / l->c;
    l->cal = l->eval = case_read_f32(dir, "X", l->cal_rows * l->c);
    l->w = case_read_f32(dir, "W", l->out * l->c);
    return l->cal && l->w ? 0 : -1;
}

/* NumPy .npy (format 1.x / 2.x), little-endian float32, C order, two dimensions. */
static float *read_npy(const char *path, int64_t *rows, int64_t *cols)
{
    long size = 0;
    char *buf = case_read_file(path, &size);
    if (!buf)
        return NULL;
    float *x = NULL;
    if (size < 12 || memcmp(buf, "\x93NUMPY", 6) != 0)
        goto out;
    const unsigned char *u = (const unsigned char *)buf;
    long hlen = u[6] == 1 ? (long)(u[8] | u[9] << 8) : (long)(u[8] | u[9] << 8 | u[10] << 16);
    long hstart = u[6] == 1 ? 10 : 12;
    if (hstart + hlen > size)
        goto out;
    char *hdr = buf + hstart, saved = hdr[hlen];
    hdr[hlen] = '\0';
    const char *shape = strstr(hdr, "'shape':");
    long long r = 0, c = 0;
    int ok = strstr(hdr, "'descr': '<f4'") && strstr(hdr, "'fortran_order': False") && shape &&
             sscanf(shape, "'shape': (%lld, %lld)", &r, &c) == 2 && r > 0 && c > 0 &&
             (long long)(size - hstart - hlen) == r * c * (long long)sizeof(float);
    hdr[hlen] = saved;
    if (!ok || !(x = malloc((size_t)(r * c) * sizeof *x)))
        goto out;
    memcpy(x, buf + hstart + hlen, (size_t)(r * c) * sizeof *x);
    *rows = r;
    *cols = c;
out:
    free(buf);
    return x;
}

/* The linear weights of a llama2.c checkpoint (run.c's layout), out x in each. */
typedef struct model {
    int32_t dim, hidden, layers, heads, kv_heads;
    float *data;
    const float *wq, *wk, *wv, *wo, *w1, *w2, *w3;
} model;

static int load_model(const char *path, model *m)
{
    long size = 0;
    char *buf = case_read_file(path, &size);
    memset(m, 0, sizeof *m);
    if (!buf || size < 28) {
        free(buf);
        return -1;
    }
    int32_t h[7];
    memcpy(h, buf, sizeof h);
    m->dim = h[0], m->hidden = h[1], m->layers = h[2], m->heads = h[3], m->kv_heads = h[4];
    int64_t d = h[0], hid = h[1], L = h[2], vocab = h[5] < 0 ? -(int64_t)h[5] : h[5];
    if (d <= 0 || hid <= 0 || L <= 0 || h[3] <= 0 || h[4] <= 0 || d % h[3]) {
        free(buf);
        return -1;
    }
    int64_t kv = d / h[3] * h[4];
    int64_t need = vocab * d + L * (d + d * d + 2 * kv * d + d * d + d + 3 * hid * d);
    if ((size - 28) / (long)sizeof(float) < need) {
        free(buf);
        return -1;
    }
    m->data = malloc((size_t)need * sizeof(float));
    memcpy(m->data, buf + 28, (size_t)need * sizeof(float));
    free(buf);
    const float *p = m->data + vocab * d + L * d; /* after the embedding and rms_att */
    m->wq = p, p += L * d * d;
    m->wk = p, p += L * kv * d;
    m->wv = p, p += L * kv * d;
    m->wo = p, p += L * d * d;
    p += L * d; /* rms_ffn */
    m->w1 = p, p += L * hid * d;
    m->w2 = p, p += L * d * hid;
    m->w3 = p;
    return 0;
}

/* The largest power of two <= limit that divides width (Hadamard blocks must be powers of
 * two); the remainder rule would otherwise reject most real widths. */
static int32_t pow2_block(int64_t width, int32_t limit)
{
    int32_t b = 1;
    while (b * 2 <= limit && width % (b * 2) == 0)
        b *= 2;
    return b;
}

/* Input `in` of layer l from a dump: activations, and the weights that read them stacked. */
static int load_dump_layer(const char *dir, const model *m, int32_t l, int in, const options *o,
                           layer *out)
{
    static const char *const names[4] = {"qkv", "wo", "w13", "w2"};
    char path[4096];
    snprintf(path, sizeof path, "%s/layer%d_%s.npy", dir, l, names[in]);
    int64_t rows, cols;
    float *x = read_npy(path, &rows, &cols);
    if (!x)
        return -1;
    const int64_t d = m->dim, hid = m->hidden, kv = d / m->heads * m->kv_heads;
    const float *parts[3];
    int64_t outs[3], np = 0, in_dim = in == 3 ? hid : d;
    switch (in) {
    case 0:
        parts[0] = m->wq + l * d * d, outs[0] = d;
        parts[1] = m->wk + l * kv * d, outs[1] = kv;
        parts[2] = m->wv + l * kv * d, outs[2] = kv;
        np = 3;
        break;
    case 1: parts[0] = m->wo + l * d * d, outs[0] = d, np = 1; break;
    case 2:
        parts[0] = m->w1 + l * hid * d, outs[0] = hid;
        parts[1] = m->w3 + l * hid * d, outs[1] = hid;
        np = 2;
        break;
    default: parts[0] = m->w2 + l * d * hid, outs[0] = d, np = 1; break;
    }
    if (cols != in_dim || rows < 4) {
        fprintf(stderr, "%s: %lld x %lld, expected width %lld\n", path, (long long)rows,
                (long long)cols, (long long)in_dim);
        free(x);
        return -1;
    }
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "layer %d %s input", l, names[in]);
    out->c = cols;
    out->cal = x;
    out->cal_rows = rows / 2;
    out->eval = x + out->cal_rows * cols;
    out->eval_rows = rows - out->cal_rows;
    out->block = o->block;
    out->hadamard_block = pow2_block(cols, o->block);
    out->steps = 256;
    out->alpha = 0.6f;
    for (int64_t i = 0; i < np; i++)
        out->out += outs[i];
    out->w = malloc((size_t)(out->out * cols) * sizeof(float));
    float *w = out->w;
    for (int64_t i = 0; i < np; i++) {
        memcpy(w, parts[i], (size_t)(outs[i] * cols) * sizeof(float));
        w += outs[i] * cols;
    }
    return 0;
}

/* Laplace activations with a few 40x channels and massive values; Gaussian weights. */
static void synthetic_layer(layer *l)
{
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "synthetic layer");
    l->cal_rows = l->eval_rows = 128;
    l->c = 512;
    l->out = 256;
    l->block = l->hadamard_block = 128;
    l->steps = 256;
    l->alpha = 0.6f;
    l->cal = l->eval = malloc((size_t)(l->cal_rows * l->c) * sizeof(float));
    l->w = malloc((size_t)(l->out * l->c) * sizeof(float));
    case_synthetic_layer(l->cal, l->cal_rows, l->c, l->w, l->out);
}

static void free_layer(layer *l)
{
    free(l->cal);
    free(l->w);
}

/* ---- evaluation ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Fake-quantized copy (4-bit asymmetric per row) through the library's packing; clip factors
 * per row (NULL: 1.0). */
static int fake_quant(const float *x, int64_t rows, int64_t cols, const float *hi,
                      const float *lo, float *out)
{
    dq_qmatrix *q = NULL;
    int rc = dq_qmatrix_pack(NULL, NULL, x, rows, cols, cols, hi, lo, &q) ||
             dq_qmatrix_dequantize(q, out, cols);
    dq_qmatrix_free(q);
    return rc ? -1 : 0;
}

/* LWC clip factors (hi, lo: out values each) for the transformed weight wt, trained on the
 * transformed calibration tokens with 4-bit activations in the loss. -1 on failure. */
static int lwc_factors(const layer *l, const dq_plan *pl, const options *o, const float *wt,
                       float *hi, float *lo)
{
    const int64_t t = l->cal_rows, c = l->c;
    float *xc = malloc((size_t)(t * c) * sizeof *xc);
    dq_lwc *lw = NULL;
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.flags = DQ_LWC_F_QUANT_ACT;
    lp.epochs = o->lwc_epochs;
    int rc = !xc || dq_plan_apply_act_to(pl, l->cal, t, c, c, xc, c, NULL, 0) ||
             dq_lwc_create(o->ctx, &lp, NULL, wt, l->out, c, c, xc, t, c, &lw) ||
             dq_lwc_train(lw, NULL) || dq_lwc_factors(lw, hi, lo, l->out);
    dq_lwc_free(lw);
    free(xc);
    return rc ? -1 : 0;
}

/* W4A4 relative output error of plan pl on the evaluation tokens, weights clipped at 1.0 or
 * (lwc) by LWC; -1 on failure. *lwc_secs: LWC training time. */
static double w4a4_error(const layer *l, const dq_plan *pl, const options *o, int lwc,
                         double *lwc_secs)
{
    const int64_t t = l->eval_rows, c = l->c, n = l->out;
    float *xt = malloc((size_t)(t * c) * sizeof *xt), *wt = malloc((size_t)(n * c) * sizeof *wt);
    float *hi = malloc((size_t)n * sizeof *hi), *lo = malloc((size_t)n * sizeof *lo);
    double num = 0, den = 0, err = -1;
    *lwc_secs = 0;
    if (!xt || !wt || !hi || !lo || dq_plan_apply_act_to(pl, l->eval, t, c, c, xt, c, NULL, 0))
        goto out;
    memcpy(wt, l->w, (size_t)(n * c) * sizeof *wt);
    if (dq_plan_transform_weight(pl, wt, n, c, c))
        goto out;
    if (lwc) {
        double t0 = now();
        int rc = lwc_factors(l, pl, o, wt, hi, lo);
        *lwc_secs = now() - t0;
        if (rc) {
            err = rc;
            goto out;
        }
    }
    if (fake_quant(xt, t, c, NULL, NULL, xt) ||
        fake_quant(wt, n, c, lwc ? hi : NULL, lwc ? lo : NULL, wt))
        goto out;
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < n; j++) {
            double y = 0, yq = 0;
            for (int64_t k = 0; k < c; k++) {
                y += (double)l->eval[i * c + k] * l->w[j * c + k];
                yq += (double)xt[i * c + k] * wt[j * c + k];
            }
            num += (y - yq) * (y - yq);
            den += y * y;
        }
    err = den > 0 ? sqrt(num / den) : 0;
out:
    free(xt);
    free(wt);
    free(hi);
    free(lo);
    return err;
}

typedef struct variant {
    const char *name;
    int32_t rot_method, refine_method;
} variant;

static const variant variants[] = {
    {"DuQuant (greedy)", DQ_ROT_METHOD_GREEDY, DQ_REFINE_NONE},
    {"DuQuant + DFRot", DQ_ROT_METHOD_GREEDY, DQ_REFINE_DFROT},
    {"DuQuant + DartQuant", DQ_ROT_METHOD_GREEDY, DQ_REFINE_DARTQUANT},
    {"Hadamard", DQ_ROT_METHOD_HADAMARD, DQ_REFINE_NONE},
    {"Hadamard + DartQuant", DQ_ROT_METHOD_HADAMARD, DQ_REFINE_DARTQUANT},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

/* Errors without and with LWC (-2: not applicable, -1: failed) and seconds
 * (plan build, LWC training) of one variant on one layer. */
static void run_variant(const layer *l, const variant *v, const options *o, double err[2],
                        double secs[2])
{
    dq_refine_params rp;
    dq_refine_params_init(&rp, sizeof rp);
    rp.method = v->refine_method;
    rp.iterations = v->refine_method == DQ_REFINE_DFROT ? o->dfrot_iters : o->dart_iters;
    rp.learning_rate = o->dart_lr;
    rp.weight_exponent = o->dfrot_gamma;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.method = v->rot_method;
    pp.flags = v->rot_method == DQ_ROT_METHOD_GREEDY ? DQ_PLAN_F_DEFAULT
                                                     : DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE;
    if (o->per_block)
        pp.flags |= DQ_PLAN_F_PER_BLOCK_R;
    pp.block_size = v->rot_method == DQ_ROT_METHOD_GREEDY ? l->block : l->hadamard_block;
    if (o->hadamard_base && v->rot_method == DQ_ROT_METHOD_GREEDY)
        pp.flags |= DQ_PLAN_F_HADAMARD_BASE;
    pp.max_rotation_step = l->steps;
    pp.smooth_alpha = l->alpha;
    pp.refine = v->refine_method == DQ_REFINE_NONE ? NULL : &rp;
    float *w_absmax = malloc((size_t)l->c * sizeof *w_absmax);
    dq_plan *pl = NULL;
    err[0] = err[1] = -1;
    secs[0] = secs[1] = 0;
    if (!w_absmax || dq_smooth_weight_absmax(l->w, l->out, l->c, l->c, 0, w_absmax))
        goto out;
    if (pp.block_size < 2) {
        err[0] = err[1] = -2;
        goto out;
    }
    double t0 = now();
    dq_status st = dq_plan_build_from_sample(o->ctx, &pp, NULL, l->cal, l->cal_rows, l->c,
                                             l->c, w_absmax, &pl);
    if (st == DQ_ERR_UNSUPPORTED && (pp.flags & DQ_PLAN_F_HADAMARD_BASE)) {
        /* No power-of-two blocks cover this width: the Rot base instead. */
        pp.flags &= ~(uint32_t)DQ_PLAN_F_HADAMARD_BASE;
        st = dq_plan_build_from_sample(o->ctx, &pp, NULL, l->cal, l->cal_rows, l->c, l->c,
                                       w_absmax, &pl);
    }
    secs[0] = now() - t0;
    if (st == DQ_ERR_UNSUPPORTED) {
        err[0] = err[1] = -2;
    } else if (st == DQ_OK) {
        double unused;
        err[0] = w4a4_error(l, pl, o, 0, &unused);
        err[1] = w4a4_error(l, pl, o, 1, &secs[1]);
    } else {
        fprintf(stderr, "%s, %s: %s\n", l->name, v->name, dq_status_name(st));
    }
out:
    dq_plan_free(pl);
    free(w_absmax);
}

/* Prints one layer's table; returns the number of failed variants. sums accumulates the
 * errors for the summary. */
static void print_err(double e)
{
    if (e < 0)
        printf(" %10s", e == -2 ? "n/a" : "failed");
    else
        printf(" %10.5f", e);
}

static int print_layer(const layer *l, const options *o, double sums[][2], int counts[][2])
{
    int failed = 0;
    printf("%s: x %lld x %lld (built on %lld tokens, %s), W %lld x %lld, block %d "
           "(Hadamard %d)\n",
           l->name, (long long)l->eval_rows, (long long)l->c, (long long)l->cal_rows,
           l->cal == l->eval ? "evaluated on the same tokens" : "evaluated on the rest",
           (long long)l->out, (long long)l->c, l->block, l->hadamard_block);
    printf("  %-24s %10s %10s %10s %10s\n", "W4A4 relative error", "clip 1.0", "LWC",
           "build s", "LWC s");
    for (size_t v = 0; v < N_VARIANTS; v++) {
        double err[2], secs[2];
        run_variant(l, &variants[v], o, err, secs);
        printf("  %-24s", variants[v].name);
        print_err(err[0]);
        print_err(err[1]);
        if (err[0] == -2)
            printf(" %10s %10s\n", "-", "-");
        else
            printf(" %10.3f %10.3f\n", secs[0], secs[1]);
        for (int k = 0; k < 2; k++) {
            failed += err[k] == -1;
            if (err[k] >= 0) {
                sums[v][k] += err[k];
                counts[v][k]++;
            }
        }
    }
    printf("\n");
    return failed;
}

static void log_to_stderr(void *user, int32_t level, const char *msg)
{
    (void)user;
    (void)level;
    fprintf(stderr, "  [log] %s\n", msg);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_golden(const char *root, const options *o, double sums[][2], int counts[][2],
                      int *shown)
{
    DIR *d = root ? opendir(root) : NULL;
    if (!d)
        return 0;
    char *names[256];
    int n = 0, failed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256)
        if (e->d_name[0] != '.')
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    for (int i = 0; i < n; i++) {
        char dir[2048];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        layer l;
        memset(&l, 0, sizeof l);
        if (load_case(dir, names[i], &l) == 0) {
            failed += print_layer(&l, o, sums, counts);
            (*shown)++;
        }
        free_layer(&l);
        free(names[i]);
    }
    return failed;
}

static int run_dump(const char *dir, const char *model_path, const options *o,
                    double sums[][2], int counts[][2], int *shown)
{
    model m;
    if (load_model(model_path, &m) != 0) {
        fprintf(stderr, "%s: not a llama2.c checkpoint\n", model_path);
        return 1;
    }
    int failed = 0, found = 0;
    for (int32_t l = 0; l < m.layers; l++)
        for (int in = 0; in < 4; in++) {
            layer ly;
            if (load_dump_layer(dir, &m, l, in, o, &ly) != 0)
                continue;
            found++;
            failed += print_layer(&ly, o, sums, counts);
            (*shown)++;
            free_layer(&ly);
        }
    free(m.data);
    if (!found) {
        fprintf(stderr, "%s: no layer<L>_<input>.npy files matching the model\n", dir);
        return 1;
    }
    return failed;
}

static void print_summary(const char *title, double sums[][2], int counts[][2])
{
    printf("%s: mean W4A4 relative error over layers\n", title);
    printf("  %-24s %10s %10s\n", "", "clip 1.0", "LWC");
    for (size_t v = 0; v < N_VARIANTS; v++) {
        printf("  %-24s", variants[v].name);
        for (int k = 0; k < 2; k++)
            print_err(counts[v][k] ? sums[v][k] / counts[v][k] : -2);
        printf("  (%d layers)\n", counts[v][0]);
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    const char *golden = getenv("DUQUANT_GOLDEN_DIR"), *calib = NULL, *model_path = NULL;
    options o = {20, 100, 32, 0, 0, 20, 1e-3f, 1.0f, NULL};
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(k, "--verbose") == 0) {
            verbose = 1;
            continue;
        }
        if (strcmp(k, "--per-block") == 0) {
            o.per_block = 1;
            continue;
        }
        if (strcmp(k, "--hadamard-base") == 0) {
            o.hadamard_base = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "%s needs a value\n", k);
            return 2;
        }
        i++;
        if (strcmp(k, "--golden") == 0)
            golden = v;
        else if (strcmp(k, "--calib") == 0)
            calib = v;
        else if (strcmp(k, "--model") == 0)
            model_path = v;
        else if (strcmp(k, "--dfrot-iters") == 0)
            o.dfrot_iters = atoi(v);
        else if (strcmp(k, "--dart-iters") == 0)
            o.dart_iters = atoi(v);
        else if (strcmp(k, "--dfrot-gamma") == 0)
            o.dfrot_gamma = (float)atof(v);
        else if (strcmp(k, "--dart-lr") == 0)
            o.dart_lr = (float)atof(v);
        else if (strcmp(k, "--lwc-epochs") == 0)
            o.lwc_epochs = atoi(v);
        else if (strcmp(k, "--block") == 0)
            o.block = atoi(v);
        else {
            fprintf(stderr, "usage: %s [--golden DIR] [--calib DIR --model FILE] "
                            "[--dfrot-iters N] [--dfrot-gamma F] [--dart-iters N] [--dart-lr F] "
                            "[--block N] [--per-block] [--hadamard-base] [--lwc-epochs N] "
                            "[--verbose]\n",
                    argv[0]);
            return 2;
        }
    }
    if (verbose) {
        dq_context_params cp;
        dq_context_params_init(&cp, sizeof cp);
        cp.log = log_to_stderr;
        cp.log_level = DQ_LOG_INFO;
        if (dq_context_create(&cp, &o.ctx) != DQ_OK)
            return 1;
    }
    if (calib && !model_path) {
        fprintf(stderr, "--calib needs --model (the checkpoint the weights come from)\n");
        return 2;
    }
    printf("Rotation refinement: DFRot %d iterations (token weight exponent %g), DartQuant %d "
           "iterations (Adam lr %g); %s; W4A4 = 4-bit asymmetric per token / per output row, "
           "weights clipped at 1.0 or by LWC (%d epochs, W4A4 loss); all plans smooth (alpha "
           "from the case, 0.6 otherwise)\n\n",
           o.dfrot_iters, (double)o.dfrot_gamma, o.dart_iters, (double)o.dart_lr,
           o.per_block ? (o.hadamard_base ? "one matrix per block, Hadamard base"
                                          : "one matrix per block")
                       : (o.hadamard_base ? "one matrix shared by the full blocks, Hadamard base"
                                          : "one matrix shared by the full blocks"),
           o.lwc_epochs);
    int failed = 0, shown = 0;
    double sums[N_VARIANTS][2] = {{0}};
    int counts[N_VARIANTS][2] = {{0}};
    failed += run_golden(golden, &o, sums, counts, &shown);
    if (shown)
        print_summary("reference cases", sums, counts);
    if (calib) {
        double s2[N_VARIANTS][2] = {{0}};
        int c2[N_VARIANTS][2] = {{0}}, before = shown;
        failed += run_dump(calib, model_path, &o, s2, c2, &shown);
        if (shown > before)
            print_summary("calibration dump (held-out tokens)", s2, c2);
    }
    if (shown == 0) {
        layer l;
        synthetic_layer(&l);
        failed += print_layer(&l, &o, sums, counts);
        free_layer(&l);
    }
    dq_context_free(o.ctx);
    return failed ? 1 : 0;
}
