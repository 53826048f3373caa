/* Calibration, plans, weight packing and quantized layers, all through the public API. */
#include "quantize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

#define DQ_SMOOTH_ROT (DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE)

const l2c_method l2c_methods[] = {
    {"fp32", 0, 0, 0, 0, 0, "float32 weights and activations", 0, 0},
    {"w8a8_rtn", 8, 8, 0, 0, 0, "8-bit round-to-nearest (sanity check)", 0, 0},
    {"rtn", 4, 4, 0, 0, 0, "4-bit round-to-nearest, no transform", 0, 0},
    {"smoothquant", 4, 4, DQ_PLAN_F_SMOOTH, 0, 0, "smoothing scales only", 0, 0},
    {"hadamard", 4, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_HADAMARD, 0,
     "block Walsh-Hadamard rotation (QuaRot-RTN style)", 0, 0},
    {"hadamard_full", 4, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_RANDOM_HADAMARD, 0,
     "full-width randomised Hadamard rotation of every input (QuaRot style)", 0, 0},
    {"duquant_ref", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_ROW_RULE, DQ_ROT_METHOD_GREEDY, 0,
     "DuQuant, reference mode: row rule, one R shared by the blocks", 0, 0},
    {"duquant", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY, 0,
     "DuQuant, column rule, one R per block", 0, 0},
    {"duquant_lwc", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY, 1,
     "DuQuant (column rule, per-block R) + learnable weight clipping", 0, 0},
    {"duquant_hb", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R | DQ_PLAN_F_HADAMARD_BASE,
     DQ_ROT_METHOD_GREEDY, 0,
     "DuQuant, per-block R, Hadamard base where power-of-two blocks fit", 0, 0},
    {"duquant_hb_lwc", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R | DQ_PLAN_F_HADAMARD_BASE,
     DQ_ROT_METHOD_GREEDY, 1, "duquant_hb + learnable weight clipping", 0, 0},
    {"w4a16_rtn", 4, 0, 0, 0, 0, "4-bit weights, float activations (reference point)", 0, 0},
    {"w4a16_duquant_lwc", 4, 0, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY, 1,
     "duquant_lwc with float activations (reference point)", 0, 0},
    {"duquant_dfrot", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY, 0,
     "DuQuant (column rule, per-block R), each R refined by DFRot", DQ_REFINE_DFROT, 0},
    {"duquant_dartquant", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY,
     0, "DuQuant (column rule, per-block R), each R refined by DartQuant", DQ_REFINE_DARTQUANT, 0},
    {"hadamard_dartquant", 4, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_HADAMARD, 0,
     "block Hadamard rotation refined by DartQuant", DQ_REFINE_DARTQUANT, 0},
    {"gptq", 4, 4, 0, 0, 0, "4-bit GPTQ weights, no transform", 0, 1},
    {"hadamard_gptq", 4, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_HADAMARD, 0,
     "block Walsh-Hadamard rotation, GPTQ weights", 0, 1},
    {"hadamard_full_gptq", 4, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_RANDOM_HADAMARD, 0,
     "full-width randomised Hadamard rotation, GPTQ weights", 0, 1},
    {"duquant_gptq", 4, 4, DQ_SMOOTH_ROT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY, 0,
     "DuQuant (column rule, per-block R), GPTQ weights", 0, 1},
    {"w4a16_gptq", 4, 0, 0, 0, 0, "GPTQ 4-bit weights, float activations", 0, 1},
};
const int32_t l2c_n_methods = (int32_t)(sizeof l2c_methods / sizeof l2c_methods[0]);

const l2c_method *l2c_method_find(const char *name)
{
    for (int32_t i = 0; i < l2c_n_methods; i++)
        if (strcmp(l2c_methods[i].name, name) == 0)
            return &l2c_methods[i];
    return NULL;
}

void l2c_quant_options_default(l2c_quant_options *o)
{
    memset(o, 0, sizeof *o);
    o->block_size = 32;
    o->hadamard_block = 64;
    o->rot_steps = 256;
    o->perm_times = 1;
    o->dq_smooth = 1;
    o->alpha = 0.5f;
    o->act_clip = 0.9f;
    o->w_clip = 1.0f;
    o->lwc_epochs = 20;
    o->lwc_lr = 1e-2f;
    o->lwc_batch = 128;
    o->lwc_quant_act = 0;
    o->seed = 0;
}

int l2c_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int l2c_parse_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi))
        return -1;
    *out = (float)v;
    return 0;
}

static int int_option(const char *value, int64_t lo, int64_t hi, int32_t *dst)
{
    int64_t n;
    if (l2c_parse_int(value, lo, hi, &n) != 0)
        return -1;
    *dst = (int32_t)n;
    return 0;
}

int l2c_quant_option(l2c_quant_options *o, const char *key, const char *value, int *bad)
{
    int64_t n;
    if (strcmp(key, "--block") == 0)
        *bad = int_option(value, 2, 4096, &o->block_size);
    else if (strcmp(key, "--hadamard-block") == 0)
        *bad = int_option(value, 2, 4096, &o->hadamard_block);
    else if (strcmp(key, "--rot-steps") == 0)
        *bad = int_option(value, 0, 65536, &o->rot_steps);
    else if (strcmp(key, "--perm-times") == 0)
        *bad = int_option(value, 1, 64, &o->perm_times);
    else if (strcmp(key, "--dq-smooth") == 0)
        *bad = int_option(value, 0, 1, &o->dq_smooth);
    else if (strcmp(key, "--lwc-epochs") == 0)
        *bad = int_option(value, 0, 100000, &o->lwc_epochs);
    else if (strcmp(key, "--lwc-batch") == 0)
        *bad = int_option(value, 1, 1 << 24, &o->lwc_batch);
    else if (strcmp(key, "--lwc-act") == 0)
        *bad = int_option(value, 0, 1, &o->lwc_quant_act);
    else if (strcmp(key, "--seed") == 0) {
        if ((*bad = l2c_parse_int(value, 0, INT64_MAX, &n)) == 0)
            o->seed = (uint64_t)n;
    } else if (strcmp(key, "--alpha") == 0)
        *bad = l2c_parse_float(value, 0, 1, &o->alpha);
    else if (strcmp(key, "--act-clip") == 0)
        *bad = l2c_parse_float(value, 1e-3, 1, &o->act_clip);
    else if (strcmp(key, "--w-clip") == 0)
        *bad = l2c_parse_float(value, 1e-3, 1, &o->w_clip);
    else if (strcmp(key, "--lwc-lr") == 0)
        *bad = l2c_parse_float(value, 1e-9, 10, &o->lwc_lr);
    else
        return 0;
    return 1;
}

int l2c_attn_option(l2c_attn_quant *a, const char *key, const char *value, int *bad)
{
    int64_t n = 0;
    if (strcmp(key, "--kv-bits") == 0) {
        *bad = l2c_parse_int(value, 4, 16, &n) || (n != 4 && n != 8 && n != 16) ? -1 : 0;
        if (!*bad)
            a->kv_bits = (int32_t)n;
    } else if (strcmp(key, "--qk-bits") == 0) {
        *bad = l2c_parse_int(value, 4, 16, &n) || (n != 4 && n != 16) ? -1 : 0;
        if (!*bad)
            a->qk_bits = (int32_t)n;
    } else
        return 0;
    return 1;
}

/* ---- key and value clip ratios ---- */

const float l2c_kv_clip_grid[] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f};
const int32_t l2c_kv_clip_grid_n = (int32_t)(sizeof l2c_kv_clip_grid / sizeof l2c_kv_clip_grid[0]);

typedef struct kv_calib {
    const l2c_model *m;
    int32_t bits, rotate;
    double *err; /* [n_layers][2 (keys, values)][grid] */
} kv_calib;

/* Squared error of x [rows, kv_dim] through the layout at every clip of the grid. */
static int kv_errors(const kv_calib *c, const float *x, int64_t rows, double *err)
{
    const l2c_model *m = c->m;
    const int64_t kv = m->kv_dim;
    dq_kv_params p;
    dq_kv_params_init(&p, sizeof p);
    p.bits = c->bits;
    p.head_size = m->head_size;
    p.n_heads = m->c.n_kv_heads;
    size_t bytes = 0;
    dq_status st = dq_kv_size(&p, rows, &bytes);
    uint8_t *buf = st ? NULL : malloc(bytes);
    float *y = malloc((size_t)(rows * kv) * sizeof *y);
    if (!buf || !y) {
        fprintf(stderr, "key/value calibration: %s\n", st ? dq_status_name(st) : "out of memory");
        free(buf);
        free(y);
        return -1;
    }
    for (int32_t g = 0; g < l2c_kv_clip_grid_n && st == DQ_OK; g++) {
        p.clip_ratio = l2c_kv_clip_grid[g];
        st = dq_kv_quantize(&p, x, rows, kv, buf, bytes, 0);
        for (int32_t h = 0; h < p.n_heads && st == DQ_OK; h++)
            st = dq_kv_dequantize(&p, buf, bytes, h, 0, rows, y + (int64_t)h * p.head_size, kv);
        double e = 0;
        for (int64_t i = 0; i < rows * kv; i++)
            e += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        err[g] += e;
    }
    free(buf);
    free(y);
    if (st)
        fprintf(stderr, "key/value calibration: %s\n", dq_status_name(st));
    return st ? -1 : 0;
}

static int kv_calib_observe(void *user, int32_t layer, const float *k, const float *v,
                            int64_t rows, int64_t kv_dim)
{
    kv_calib *c = user;
    double *err = c->err + (int64_t)layer * 2 * l2c_kv_clip_grid_n;
    float *kr = malloc((size_t)(rows * kv_dim) * sizeof *kr);
    if (!kr) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    memcpy(kr, k, (size_t)(rows * kv_dim) * sizeof *kr);
    dq_kv_params p;
    dq_kv_params_init(&p, sizeof p);
    p.head_size = c->m->head_size;
    p.n_heads = c->m->c.n_kv_heads;
    dq_status st = c->rotate ? dq_kv_rotate(&p, kr, rows, kv_dim) : DQ_OK;
    int rc = st ? -1 : kv_errors(c, kr, rows, err);
    if (st)
        fprintf(stderr, "dq_kv_rotate: %s\n", dq_status_name(st));
    free(kr);
    return rc ? rc : kv_errors(c, v, rows, err + l2c_kv_clip_grid_n);
}

int l2c_kv_calibrate(const l2c_net *net, const l2c_text *text, int64_t window,
                     int64_t max_tokens, int32_t kv_bits, int32_t rotate, float *k_clip,
                     float *v_clip, int64_t *tokens)
{
    const l2c_model *m = net->m;
    const int32_t L = m->c.n_layers;
    kv_calib c = {m, kv_bits, rotate,
                  calloc((size_t)L * 2 * (size_t)l2c_kv_clip_grid_n, sizeof(double))};
    l2c_window *w = NULL;
    int64_t n_w = l2c_windows(text, window, 0, &w);
    float *logits = malloc((size_t)(window * m->c.vocab_size) * sizeof *logits);
    int rc = -1;
    *tokens = 0;
    if (!c.err || n_w < 0 || !logits) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    l2c_net run = *net;
    run.attn = NULL;
    run.observe = NULL;
    run.kv_observe = kv_calib_observe;
    run.kv_observe_user = &c;
    for (int64_t i = 0; i < n_w && (max_tokens <= 0 || *tokens < max_tokens); i++) {
        int64_t len = w[i].len;
        if (max_tokens > 0 && len > max_tokens - *tokens)
            len = max_tokens - *tokens;
        if (l2c_forward(&run, text->tokens + w[i].start, len, logits))
            goto out;
        *tokens += len;
    }
    if (*tokens == 0) {
        fprintf(stderr, "key/value calibration: no calibration token\n");
        goto out;
    }
    for (int32_t l = 0; l < L; l++)
        for (int32_t kvi = 0; kvi < 2; kvi++) {
            const double *e = c.err + ((int64_t)l * 2 + kvi) * l2c_kv_clip_grid_n;
            int32_t best = 0;
            for (int32_t g = 1; g < l2c_kv_clip_grid_n; g++)
                best = e[g] < e[best] ? g : best;
            (kvi ? v_clip : k_clip)[l] = l2c_kv_clip_grid[best];
        }
    rc = 0;
out:
    free(c.err);
    free(w);
    free(logits);
    return rc;
}

static int check(dq_status st, const char *what, int32_t layer, const char *name)
{
    if (st == DQ_OK)
        return 0;
    fprintf(stderr, "%s (layer %d, %s): %s\n", what, layer, name, dq_status_name(st));
    return -1;
}

/* ---- calibration ---- */

int l2c_calibration_observe(void *user, int32_t layer, int32_t input, const float *x,
                            int64_t rows, int64_t cols)
{
    l2c_calibration *c = user;
    return check(dq_calib_observe(c->calib[layer][input], x, rows, cols, cols),
                 "dq_calib_observe", layer, l2c_input_name(input));
}

int l2c_calibration_init(const l2c_model *m, int64_t sample_tokens, l2c_calibration *out)
{
    int32_t L = m->c.n_layers;
    memset(out, 0, sizeof *out);
    out->n_layers = L;
    out->calib = calloc((size_t)L, sizeof *out->calib);
    out->w_absmax = calloc((size_t)L, sizeof *out->w_absmax);
    if (!out->calib || !out->w_absmax)
        goto fail;
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_mode = DQ_CALIB_SAMPLE_FIRST;
    cp.sample_tokens = sample_tokens;
    for (int32_t i = 0; i < L2C_N_INPUTS; i++)
        out->width[i] = i == L2C_IN_W2   ? m->c.hidden_dim
                        : i == L2C_IN_WO ? m->q_dim
                                         : m->c.dim;
    for (int32_t l = 0; l < L; l++)
        for (int32_t i = 0; i < L2C_N_INPUTS; i++) {
            int64_t cols = out->width[i];
            if (check(dq_calib_create(NULL, &cp, cols, &out->calib[l][i]), "dq_calib_create", l,
                      l2c_input_name(i)) ||
                !(out->w_absmax[l][i] = calloc((size_t)cols, sizeof(float))))
                goto fail;
        }
    /* Smoothing needs max |W| per input channel over every weight that reads the input. */
    for (int32_t l = 0; l < L; l++) {
        int32_t seen[L2C_N_INPUTS] = {0};
        for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
            int32_t in = l2c_input_of(k);
            int64_t rows, cols;
            const float *wk = l2c_model_weight(m, l, k, &rows, &cols);
            if (check(dq_smooth_weight_absmax(wk, rows, cols, cols, seen[in]++ > 0,
                                              out->w_absmax[l][in]),
                      "dq_smooth_weight_absmax", l, l2c_input_name(in)))
                goto fail;
        }
    }
    return 0;
fail:
    fprintf(stderr, "calibration failed\n");
    l2c_calibration_free(out);
    return -1;
}

int l2c_calibrate(const l2c_model *m, const l2c_text *text, int64_t window, int64_t max_tokens,
                  int64_t sample_tokens, l2c_calibration *out)
{
    int32_t L = m->c.n_layers;
    l2c_linear(*lin)[L2C_N_LINEARS] = NULL;
    l2c_window *w = NULL;
    float *logits = NULL;
    int rc = -1;
    if (l2c_calibration_init(m, sample_tokens, out))
        return -1;
    lin = calloc((size_t)L, sizeof *lin);
    if (!lin)
        goto out;
    l2c_net net;
    l2c_net_init_fp32(&net, m, lin);
    net.observe = l2c_calibration_observe;
    net.observe_user = out;
    int64_t n_w = l2c_windows(text, window, 0, &w);
    logits = malloc((size_t)(window * m->c.vocab_size) * sizeof *logits);
    if (n_w < 0 || !logits)
        goto out;
    for (int64_t i = 0; i < n_w && (max_tokens <= 0 || out->tokens < max_tokens); i++) {
        int64_t len = w[i].len;
        if (max_tokens > 0 && len > max_tokens - out->tokens)
            len = max_tokens - out->tokens;
        if (l2c_forward(&net, text->tokens + w[i].start, len, logits))
            goto out;
        out->tokens += len;
    }
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "calibration failed\n");
    free(w);
    free(logits);
    free(lin);
    if (rc)
        l2c_calibration_free(out);
    return rc;
}

void l2c_calibration_free(l2c_calibration *c)
{
    for (int32_t l = 0; l < c->n_layers; l++)
        for (int32_t i = 0; i < L2C_N_INPUTS; i++) {
            if (c->calib)
                dq_calib_free(c->calib[l][i]);
            if (c->w_absmax)
                free(c->w_absmax[l][i]);
        }
    free(c->calib);
    free(c->w_absmax);
    memset(c, 0, sizeof *c);
}

/* The sample of a calibrator (malloc'ed rows x cols), or NULL. */
static float *calib_sample(const dq_calib *c, int64_t cols, int64_t *rows)
{
    float *x = NULL;
    if (dq_calib_sample(c, NULL, cols, rows) != DQ_OK || *rows <= 0 ||
        !(x = malloc((size_t)(*rows * cols) * sizeof *x)))
        return NULL;
    if (dq_calib_sample(c, x, cols, rows) != DQ_OK) {
        free(x);
        return NULL;
    }
    return x;
}

int l2c_calibration_dump(const l2c_calibration *c, const char *dir)
{
    for (int32_t l = 0; l < c->n_layers; l++)
        for (int32_t i = 0; i < L2C_N_INPUTS; i++) {
            char path[4096];
            int64_t rows = 0, cols = c->width[i];
            snprintf(path, sizeof path, "%s/layer%d_%s.npy", dir, l, l2c_input_name(i));
            float *x = calib_sample(c->calib[l][i], cols, &rows);
            int rc = x ? l2c_npy_write_f32(path, x, rows, cols) : -1;
            free(x);
            if (rc) {
                fprintf(stderr, "%s: cannot write the calibration sample\n", path);
                return -1;
            }
        }
    return 0;
}

/* ---- quantized model ---- */

/* The largest power of two <= limit that divides width (Hadamard blocks must be powers of
 * two and, in the library, cover the width exactly). */
static int32_t hadamard_block(int64_t width, int32_t limit)
{
    int32_t b = 1;
    while (b * 2 <= limit && width % (b * 2) == 0)
        b *= 2;
    return b;
}

static int build_plan(dq_context *ctx, const l2c_calibration *cal, int32_t l, int32_t in,
                      const l2c_method *method, const l2c_quant_options *o, dq_plan **out)
{
    *out = NULL;
    if (method->plan_flags == 0)
        return 0;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = method->plan_flags;
    if (method->rot_method == DQ_ROT_METHOD_GREEDY && (pp.flags & DQ_PLAN_F_ROTATE) &&
        !o->dq_smooth)
        pp.flags &= ~(uint32_t)DQ_PLAN_F_SMOOTH;
    pp.method = method->rot_method;
    pp.seed = o->seed;
    pp.smooth_alpha = o->alpha;
    pp.max_rotation_step = o->rot_steps;
    pp.permutation_times = o->perm_times;
    if (method->rot_method == DQ_ROT_METHOD_HADAMARD)
        pp.block_size = hadamard_block(cal->width[in], o->hadamard_block);
    else if (method->rot_method == DQ_ROT_METHOD_RANDOM_HADAMARD)
        pp.block_size = (int32_t)cal->width[in]; /* one block: the whole input */
    else
        pp.block_size = o->block_size;
    /* DFRot keeps its default 20 iterations; DartQuant's small Adam steps need more. */
    dq_refine_params rp;
    dq_refine_params_init(&rp, sizeof rp);
    if (method->refine != DQ_REFINE_NONE) {
        rp.method = method->refine;
        rp.seed = o->seed;
        if (method->refine == DQ_REFINE_DARTQUANT)
            rp.iterations = 100;
        pp.refine = &rp;
    }
    if (pp.block_size < 2) {
        fprintf(stderr, "layer %d, %s: no Hadamard block size fits width %lld\n", l,
                l2c_input_name(in), (long long)cal->width[in]);
        return -1;
    }
    if (method->rot_method == DQ_ROT_METHOD_RANDOM_HADAMARD && l == 0) {
        int32_t kind = -1;
        int64_t order = 0;
        static const char *const kinds[] = {"Sylvester", "Sylvester x Paley I",
                                            "Sylvester x Paley II", "random orthogonal"};
        if (dq_rotation_hadamard_kind(cal->width[in], &kind, &order) == DQ_OK)
            fprintf(stderr, "%s: width %lld, %s (Paley order %lld)\n", l2c_input_name(in),
                    (long long)cal->width[in], kinds[kind], (long long)order);
    }
    dq_status st = dq_plan_build(ctx, &pp, cal->calib[l][in], cal->w_absmax[l][in],
                                 cal->width[in], out);
    if (st == DQ_ERR_UNSUPPORTED && (pp.flags & DQ_PLAN_F_HADAMARD_BASE)) {
        /* No power-of-two blocks cover this width: that input keeps the Rot base. */
        pp.flags &= ~(uint32_t)DQ_PLAN_F_HADAMARD_BASE;
        st = dq_plan_build(ctx, &pp, cal->calib[l][in], cal->w_absmax[l][in], cal->width[in],
                           out);
    }
    return check(st, "dq_plan_build", l, l2c_input_name(in));
}

/* Learned clip factors for weight w (rows x cols, already transformed) on the input's
 * calibration sample, transformed by the plan. */
static int learn_clip(dq_context *ctx, const l2c_calibration *cal, const dq_plan *plan,
                      int32_t l, int32_t in, const dq_quant_params *wq, const float *w,
                      int64_t rows, int64_t cols, const l2c_quant_options *o, float *hi,
                      float *lo, int32_t a_bits)
{
    int64_t tokens = 0;
    float *x = calib_sample(cal->calib[l][in], cols, &tokens);
    dq_lwc *lwc = NULL;
    int rc = -1;
    if (!x) {
        fprintf(stderr, "layer %d, %s: no calibration sample\n", l, l2c_input_name(in));
        return -1;
    }
    if (plan && check(dq_plan_apply_act(plan, x, tokens, cols, cols, NULL, 0),
                      "dq_plan_apply_act", l, l2c_input_name(in)))
        goto out;
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.seed = o->seed;
    lp.epochs = o->lwc_epochs;
    lp.learning_rate = o->lwc_lr;
    lp.batch_tokens = o->lwc_batch;
    /* w and x outlive the trainer: it reads them in place instead of copying them. */
    lp.flags = DQ_LWC_F_BORROW;
    if (o->lwc_quant_act && a_bits > 0) {
        lp.flags |= DQ_LWC_F_QUANT_ACT;
        lp.act_bits = a_bits;
        lp.act_scheme = DQ_QUANT_ASYM;
        lp.act_clip_ratio = o->act_clip;
    }
    if (check(dq_lwc_create(ctx, &lp, wq, w, rows, cols, cols, x, tokens, cols, &lwc),
              "dq_lwc_create", l, l2c_input_name(in)) ||
        check(dq_lwc_train(lwc, NULL), "dq_lwc_train", l, l2c_input_name(in)) ||
        check(dq_lwc_factors(lwc, hi, lo, rows), "dq_lwc_factors", l, l2c_input_name(in)))
        goto out;
    rc = 0;
out:
    dq_lwc_free(lwc);
    free(x);
    return rc;
}

void l2c_gptq_params(dq_gptq_params *gp)
{
    dq_gptq_params_init(gp, sizeof *gp);
    gp->flags = DQ_GPTQ_F_ACT_ORDER | DQ_GPTQ_F_CLIP_SEARCH;
}

/* The Hessian of input in of layer l for GPTQ, from the same calibration sample the plan's
 * rotation search and LWC read, taken through the plan as the layer sees it. */
static int build_hessian(dq_context *ctx, const l2c_calibration *cal, const dq_plan *plan,
                         int32_t l, int32_t in, dq_hessian **out)
{
    int64_t tokens = 0, cols = cal->width[in];
    float *x = calib_sample(cal->calib[l][in], cols, &tokens);
    *out = NULL;
    if (!x) {
        fprintf(stderr, "layer %d, %s: no calibration sample\n", l, l2c_input_name(in));
        return -1;
    }
    int rc = check(dq_hessian_create(ctx, plan, cols, out), "dq_hessian_create", l,
                   l2c_input_name(in)) ||
             check(dq_hessian_observe(*out, x, tokens, cols, cols), "dq_hessian_observe", l,
                   l2c_input_name(in));
    free(x);
    if (rc) {
        dq_hessian_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Transforms, packs (round-to-nearest, or GPTQ with hs) and wraps weight k of layer l. */
static int quantize_linear(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                           const dq_plan *plan, const dq_hessian *hs, int32_t l, int32_t k,
                           const l2c_method *method, const l2c_quant_options *o,
                           dq_linear **out)
{
    int64_t rows, cols;
    const float *w0 = l2c_model_weight(m, l, k, &rows, &cols);
    int32_t in = l2c_input_of(k);
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    float *hi = malloc((size_t)rows * sizeof *hi), *lo = malloc((size_t)rows * sizeof *lo);
    dq_qmatrix *qm = NULL;
    int rc = -1;
    if (!w || !hi || !lo) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    memcpy(w, w0, (size_t)(rows * cols) * sizeof *w);
    /* GPTQ transforms the original weights itself (the Hessian holds the plan). */
    if (plan && !hs && check(dq_plan_transform_weight(plan, w, rows, cols, cols),
                      "dq_plan_transform_weight", l, l2c_input_name(in)))
        goto out;
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    wq.bits = method->w_bits;
    wq.scheme = DQ_QUANT_ASYM;
    wq.clip_ratio = method->w_bits == 4 ? o->w_clip : 1.0f;
    /* Bound to the plan that transformed them: the layer refuses any other. */
    if (plan && check(dq_plan_fingerprint(plan, &wq.plan_fingerprint), "dq_plan_fingerprint", l,
                      l2c_input_name(in)))
        goto out;
    int learned = method->lwc && o->lwc_epochs > 0;
    if (learned && learn_clip(ctx, cal, plan, l, in, &wq, w, rows, cols, o, hi, lo,
                              method->a_bits))
        goto out;
    if (hs) {
        dq_gptq_params gp;
        l2c_gptq_params(&gp);
        if (check(dq_gptq_pack(ctx, &gp, &wq, hs, w, rows, cols, cols, NULL, NULL, 0, &qm),
                  "dq_gptq_pack", l, l2c_input_name(in)))
            goto out;
    } else if (check(dq_qmatrix_pack(ctx, &wq, w, rows, cols, cols, learned ? hi : NULL,
                                     learned ? lo : NULL, &qm),
                     "dq_qmatrix_pack", l, l2c_input_name(in)))
        goto out;
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = method->a_bits;
    lp.act_scheme = DQ_QUANT_ASYM;
    lp.act_clip_ratio = method->a_bits == 4 ? o->act_clip : 1.0f;
    if (check(dq_linear_create(ctx, &lp, plan, qm, NULL, out), "dq_linear_create", l,
              l2c_input_name(in)))
        goto out;
    rc = 0;
out:
    dq_qmatrix_free(qm);
    free(w);
    free(hi);
    free(lo);
    return rc;
}

int l2c_quantize(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                 const l2c_method *method, const l2c_quant_options *o, l2c_qmodel *out)
{
    int32_t L = m->c.n_layers;
    memset(out, 0, sizeof *out);
    out->n_layers = L;
    out->lin = calloc((size_t)L, sizeof *out->lin);
    out->layers = calloc((size_t)L, sizeof *out->layers);
    out->plans = calloc((size_t)L, sizeof *out->plans);
    if (!out->lin || !out->layers || !out->plans) {
        fprintf(stderr, "out of memory\n");
        l2c_qmodel_free(out);
        return -1;
    }
    l2c_net fp32;
    l2c_net_init_fp32(&fp32, m, out->lin);
    dq_hessian *hs = NULL;
    if (method->w_bits == 0)
        return 0;
    for (int32_t l = 0; l < L; l++) {
        for (int32_t in = 0; in < L2C_N_INPUTS; in++)
            if (build_plan(ctx, cal, l, in, method, o, &out->plans[l][in]))
                goto fail;
        /* Input by input, so that at most one Hessian (width^2 doubles) is alive. */
        for (int32_t in = 0; in < L2C_N_INPUTS; in++) {
            const dq_plan *plan = out->plans[l][in];
            if (method->gptq && build_hessian(ctx, cal, plan, l, in, &hs))
                goto fail;
            for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
                if (l2c_input_of(k) != in)
                    continue;
                if (quantize_linear(ctx, m, cal, plan, hs, l, k, method, o,
                                    &out->layers[l][k]))
                    goto fail;
                out->lin[l][k].q = out->layers[l][k];
            }
            dq_hessian_free(hs);
            hs = NULL;
        }
    }
    return 0;
fail:
    dq_hessian_free(hs);
    l2c_qmodel_free(out);
    return -1;
}

void l2c_qmodel_free(l2c_qmodel *q)
{
    for (int32_t l = 0; l < q->n_layers; l++) {
        for (int32_t k = 0; q->layers && k < L2C_N_LINEARS; k++)
            dq_linear_free(q->layers[l][k]);
        for (int32_t in = 0; q->plans && in < L2C_N_INPUTS; in++)
            dq_plan_free(q->plans[l][in]); /* the layers held their own references */
    }
    free(q->lin);
    free(q->layers);
    free(q->plans);
    memset(q, 0, sizeof *q);
}
