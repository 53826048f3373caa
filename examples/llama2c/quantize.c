/* Calibration, plans, weight packing and quantized layers, all through the public API. */
#include "quantize.h"

#include <pthread.h>
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
    static const float clips[] = {1.0f, 0.95f, 0.9f, 0.85f};
    static const int32_t blocks[] = {16, 32, 64, 128};
    o->block_size = 0;     /* auto */
    o->hadamard_block = 0; /* auto */
    o->rot_steps = 256;
    o->perm_times = 1;
    o->dq_smooth = L2C_SMOOTH_AUTO;
    o->alpha = 0.5f;
    o->act_clip = 0; /* auto */
    o->n_act_clip_grid = (int32_t)(sizeof clips / sizeof clips[0]);
    memcpy(o->act_clip_grid, clips, sizeof clips);
    o->n_block_grid = (int32_t)(sizeof blocks / sizeof blocks[0]);
    memcpy(o->block_grid, blocks, sizeof blocks);
    o->w_clip = 1.0f;
    o->lwc_epochs = 20;
    o->lwc_lr = 1e-2f;
    o->lwc_batch = 128;
    o->lwc_quant_act = 0;
    o->seed = 0;
    o->full_width = 1;
    o->damp_grid[0] = 0.01f; /* the library's default */
    o->n_damp_grid = 1;
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

/* "auto" (0) or a whole number in [lo, hi]. */
static int auto_int_option(const char *value, int64_t lo, int64_t hi, int32_t *dst)
{
    if (strcmp(value, "auto") == 0) {
        *dst = 0;
        return 0;
    }
    return int_option(value, lo, hi, dst);
}

/* A comma-separated list of 1..L2C_MAX_GRID entries, each parsed by item (0 or -1) into
 * out[i]; repeated entries are refused (they would only cost time). */
static int parse_list(const char *s, void *out, size_t size, int32_t *n,
                      int (*item)(const char *, void *))
{
    unsigned char buf[L2C_MAX_GRID * 8];
    int32_t k = 0;
    for (const char *p = s;; k++) {
        size_t len = strcspn(p, ",");
        char one[64];
        if (len == 0 || len >= sizeof one || k == L2C_MAX_GRID)
            return -1;
        memcpy(one, p, len);
        one[len] = '\0';
        if (item(one, buf + (size_t)k * size))
            return -1;
        for (int32_t j = 0; j < k; j++)
            if (memcmp(buf + (size_t)j * size, buf + (size_t)k * size, size) == 0)
                return -1;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    memcpy(out, buf, (size_t)(k + 1) * size);
    *n = k + 1;
    return 0;
}

/* A clip ratio or a dampening: in (0, 1]. */
static int fraction_item(const char *s, void *out)
{
    float v;
    if (l2c_parse_float(s, 0, 1, &v) || !(v > 0))
        return -1;
    memcpy(out, &v, sizeof v);
    return 0;
}

static int block_item(const char *s, void *out)
{
    int32_t v;
    if (int_option(s, 2, 4096, &v))
        return -1;
    memcpy(out, &v, sizeof v);
    return 0;
}

int l2c_quant_option(l2c_quant_options *o, const char *key, const char *value, int *bad)
{
    int64_t n;
    if (strcmp(key, "--block") == 0)
        *bad = auto_int_option(value, 2, 4096, &o->block_size);
    else if (strcmp(key, "--hadamard-block") == 0)
        *bad = auto_int_option(value, 2, 4096, &o->hadamard_block);
    else if (strcmp(key, "--act-clip-grid") == 0)
        *bad = parse_list(value, o->act_clip_grid, sizeof(float), &o->n_act_clip_grid,
                          fraction_item);
    else if (strcmp(key, "--block-grid") == 0)
        *bad = parse_list(value, o->block_grid, sizeof(int32_t), &o->n_block_grid,
                          block_item);
    else if (strcmp(key, "--gptq-damp-grid") == 0)
        *bad = parse_list(value, o->damp_grid, sizeof(float), &o->n_damp_grid, fraction_item);
    else if (strcmp(key, "--rot-steps") == 0)
        *bad = int_option(value, 0, 65536, &o->rot_steps);
    else if (strcmp(key, "--perm-times") == 0)
        *bad = int_option(value, 1, 64, &o->perm_times);
    else if (strcmp(key, "--dq-smooth") == 0)
        *bad = strcmp(value, "auto") == 0 ? (o->dq_smooth = L2C_SMOOTH_AUTO, 0)
                                          : int_option(value, 0, 1, &o->dq_smooth);
    else if (strcmp(key, "--lwc-epochs") == 0)
        *bad = int_option(value, 0, 100000, &o->lwc_epochs);
    else if (strcmp(key, "--lwc-batch") == 0)
        *bad = int_option(value, 1, 1 << 24, &o->lwc_batch);
    else if (strcmp(key, "--full-width") == 0)
        *bad = int_option(value, 0, 1, &o->full_width);
    else if (strcmp(key, "--lwc-act") == 0)
        *bad = int_option(value, 0, 1, &o->lwc_quant_act);
    else if (strcmp(key, "--seed") == 0) {
        if ((*bad = l2c_parse_int(value, 0, INT64_MAX, &n)) == 0)
            o->seed = (uint64_t)n;
    } else if (strcmp(key, "--alpha") == 0)
        *bad = l2c_parse_float(value, 0, 1, &o->alpha);
    else if (strcmp(key, "--act-clip") == 0) {
        if (strcmp(value, "auto") == 0)
            o->act_clip = 0, *bad = 0;
        else
            *bad = l2c_parse_float(value, 1e-3, 1, &o->act_clip);
    }
    else if (strcmp(key, "--w-clip") == 0)
        *bad = l2c_parse_float(value, 1e-3, 1, &o->w_clip);
    else if (strcmp(key, "--groups") == 0)
        *bad = int_option(value, 0, 1 << 20, &o->groups);
    else if (strcmp(key, "--lwc-lr") == 0)
        *bad = l2c_parse_float(value, 1e-9, 10, &o->lwc_lr);
    else if (strcmp(key, "--block-choice") == 0) {
        *bad = 0;
        if (strcmp(value, "each") == 0)
            o->block_choice = L2C_BLOCK_EACH;
        else if (strcmp(value, "first") == 0)
            o->block_choice = L2C_BLOCK_FIRST;
        else
            *bad = -1;
    } else
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

/* Appends the rows of x outside [h0, h1) (the held-out ones) to the input's Hessian rows,
 * up to hess_tokens in all. */
static int keep_hessian_rows(l2c_calibration *c, int32_t layer, int32_t input, const float *x,
                             int64_t rows, int64_t cols, int64_t h0, int64_t h1)
{
    if (c->hess_tokens == 0)
        return 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t *n = &c->hess_rows[layer][input], *cap = &c->hess_cap[layer][input];
        if ((i >= h0 && i < h1) || (c->hess_tokens > 0 && *n >= c->hess_tokens))
            continue;
        if (*n == *cap) {
            int64_t more = *cap ? 2 * *cap : 1024;
            float *p = realloc(c->hess[layer][input], (size_t)(more * cols) * sizeof *p);
            if (!p) {
                fprintf(stderr, "out of memory for the Hessian rows\n");
                return -1;
            }
            c->hess[layer][input] = p;
            *cap = more;
        }
        memcpy(c->hess[layer][input] + *n * cols, x + i * cols, (size_t)cols * sizeof *x);
        (*n)++;
    }
    return 0;
}

/* Tokens [sample_tokens, sample_tokens + held_tokens) of each input are copied to the held-out
 * rows instead of being observed: nothing fitted sees them. */
int l2c_calibration_observe(void *user, int32_t layer, int32_t input, const float *x,
                            int64_t rows, int64_t cols)
{
    l2c_calibration *c = user;
    int64_t seen = c->seen[layer][input], lo = c->sample_tokens, hi = lo + c->held_tokens;
    int64_t from = seen > lo ? seen : lo, to = seen + rows < hi ? seen + rows : hi;
    c->seen[layer][input] = seen + rows;
    if (keep_hessian_rows(c, layer, input, x, rows, cols, from - seen, to - seen))
        return -1;
    if (to <= from)
        return check(dq_calib_observe(c->calib[layer][input], x, rows, cols, cols),
                     "dq_calib_observe", layer, l2c_input_name(input));
    memcpy(c->held[layer][input] + (from - lo) * cols, x + (from - seen) * cols,
           (size_t)((to - from) * cols) * sizeof *x);
    c->held_rows[layer][input] = to - lo;
    int64_t before = from - seen, after = seen + rows - to;
    return check(before > 0 ? dq_calib_observe(c->calib[layer][input], x, before, cols, cols)
                            : DQ_OK,
                 "dq_calib_observe", layer, l2c_input_name(input)) ||
           check(after > 0 ? dq_calib_observe(c->calib[layer][input], x + (to - seen) * cols,
                                              after, cols, cols)
                           : DQ_OK,
                 "dq_calib_observe", layer, l2c_input_name(input));
}

int l2c_calibration_init(const l2c_model *m, int64_t sample_tokens, l2c_calibration *out)
{
    int32_t L = m->c.n_layers;
    memset(out, 0, sizeof *out);
    out->n_layers = L;
    out->calib = calloc((size_t)L, sizeof *out->calib);
    out->w_absmax = calloc((size_t)L, sizeof *out->w_absmax);
    out->held = calloc((size_t)L, sizeof *out->held);
    out->held_rows = calloc((size_t)L, sizeof *out->held_rows);
    out->seen = calloc((size_t)L, sizeof *out->seen);
    out->hess = calloc((size_t)L, sizeof *out->hess);
    out->hess_rows = calloc((size_t)L, sizeof *out->hess_rows);
    out->hess_cap = calloc((size_t)L, sizeof *out->hess_cap);
    out->sample_tokens = sample_tokens;
    out->held_tokens = sample_tokens;
    if (!out->calib || !out->w_absmax || !out->held || !out->held_rows || !out->seen ||
        !out->hess || !out->hess_rows || !out->hess_cap)
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
                !(out->w_absmax[l][i] = calloc((size_t)cols, sizeof(float))) ||
                !(out->held[l][i] = malloc((size_t)(out->held_tokens * cols) * sizeof(float))))
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
                  int64_t sample_tokens, int64_t hess_tokens, l2c_calibration *out)
{
    int32_t L = m->c.n_layers;
    l2c_linear(*lin)[L2C_N_LINEARS] = NULL;
    l2c_window *w = NULL;
    float *logits = NULL;
    int rc = -1;
    if (l2c_calibration_init(m, sample_tokens, out))
        return -1;
    out->hess_tokens = hess_tokens;
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
            if (c->held)
                free(c->held[l][i]);
            if (c->hess)
                free(c->hess[l][i]);
        }
    free(c->calib);
    free(c->w_absmax);
    free(c->held);
    free(c->held_rows);
    free(c->seen);
    free(c->hess);
    free(c->hess_rows);
    free(c->hess_cap);
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

/* The plan blocks to try on input in of width: the input's fixed block (input_block), the
 * fixed setting (one), or each grid entry that gives a new block no wider than the input.
 * 0: the plan has no block (no rotation). Returns the count (0: no grid entry fits). */
static int32_t block_candidates(const l2c_method *method, const l2c_quant_options *o,
                                int32_t in, int64_t width, int32_t *out)
{
    if (!(method->plan_flags & DQ_PLAN_F_ROTATE)) {
        out[0] = 0;
        return 1;
    }
    if (method->rot_method == DQ_ROT_METHOD_RANDOM_HADAMARD) {
        out[0] = (int32_t)width; /* one block: the whole input */
        return 1;
    }
    int had = method->rot_method == DQ_ROT_METHOD_HADAMARD;
    if (o->input_block[in] != 0) {
        out[0] = o->input_block[in];
        return 1;
    }
    int32_t fixed = had ? o->hadamard_block : o->block_size, n = 0;
    if (fixed > 0) {
        out[0] = had ? hadamard_block(width, fixed) : fixed;
        return 1;
    }
    for (int32_t i = 0; i < o->n_block_grid; i++) {
        int32_t b = had ? hadamard_block(width, o->block_grid[i]) : o->block_grid[i];
        int fresh = b >= 2 && b <= width;
        for (int32_t j = 0; fresh && j < n; j++)
            fresh = out[j] != b;
        if (fresh)
            out[n++] = b;
    }
    /* DuQuant's smoothing before one full-width randomised Hadamard rotation is a candidate
     * too (-width): on some inputs it beats every block of greedy rotations. */
    if (o->full_width && method->rot_method == DQ_ROT_METHOD_GREEDY && n > 0 &&
        width <= 4096)
        out[n++] = -(int32_t)width;
    return n;
}

/* The smoothing settings to try on an input: DuQuant's with and without smoothing (auto) or
 * the one fixed; -1 (the method's own flags) for the others. Returns the count. */
static int32_t smooth_candidates(const l2c_method *method, const l2c_quant_options *o,
                                 int32_t *out)
{
    if (method->rot_method != DQ_ROT_METHOD_GREEDY || !(method->plan_flags & DQ_PLAN_F_ROTATE) ||
        !(method->plan_flags & DQ_PLAN_F_SMOOTH)) {
        out[0] = -1;
        return 1;
    }
    if (o->dq_smooth != L2C_SMOOTH_AUTO) {
        out[0] = o->dq_smooth != 0;
        return 1;
    }
    out[0] = 1; /* first: ties keep DuQuant's smoothing */
    out[1] = 0;
    return 2;
}

static int build_plan(dq_context *ctx, const l2c_calibration *cal, int32_t l, int32_t in,
                      const l2c_method *method, const l2c_quant_options *o, int32_t block,
                      int32_t smooth, dq_plan **out)
{
    *out = NULL;
    if (method->plan_flags == 0)
        return 0;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = method->plan_flags;
    if (smooth == 0)
        pp.flags &= ~(uint32_t)DQ_PLAN_F_SMOOTH;
    pp.method = method->rot_method;
    if (block < 0) { /* the full-width candidate: smoothing (as the method), one rotation */
        pp.flags &= DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE;
        pp.method = DQ_ROT_METHOD_RANDOM_HADAMARD;
        block = -block;
    }
    pp.seed = o->seed;
    pp.smooth_alpha = o->alpha;
    pp.max_rotation_step = o->rot_steps;
    pp.permutation_times = o->perm_times;
    if (block > 0)
        pp.block_size = block;
    /* DFRot keeps its default 20 iterations; DartQuant's small Adam steps need more. */
    dq_refine_params rp;
    dq_refine_params_init(&rp, sizeof rp);
    if (method->refine != DQ_REFINE_NONE && pp.method == DQ_ROT_METHOD_GREEDY) {
        rp.method = method->refine;
        rp.seed = o->seed;
        if (method->refine == DQ_REFINE_DARTQUANT)
            rp.iterations = 100;
        pp.refine = &rp;
    }
    if (block > 0 && pp.block_size < 2) {
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
        lp.act_clip_ratio = o->act_clip > 0 ? o->act_clip : 1.0f; /* auto: chosen later */
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

/* The Hessian of input in of layer l for GPTQ, taken through the plan as the layer sees it:
 * from the kept Hessian rows (every calibration token but the held-out ones), or without
 * them from the calibration sample the plan's rotation search and LWC read. */
static int build_hessian(dq_context *ctx, const l2c_calibration *cal, const dq_plan *plan,
                         int32_t l, int32_t in, dq_hessian **out)
{
    int64_t tokens = cal->hess_rows[l][in], cols = cal->width[in];
    float *x = tokens > 0 ? cal->hess[l][in] : calib_sample(cal->calib[l][in], cols, &tokens);
    *out = NULL;
    if (!x) {
        fprintf(stderr, "layer %d, %s: no calibration sample\n", l, l2c_input_name(in));
        return -1;
    }
    int rc = check(dq_hessian_create(ctx, plan, cols, out), "dq_hessian_create", l,
                   l2c_input_name(in)) ||
             check(dq_hessian_observe(*out, x, tokens, cols, cols), "dq_hessian_observe", l,
                   l2c_input_name(in));
    if (x != cal->hess[l][in])
        free(x);
    if (rc) {
        dq_hessian_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Transforms and packs (round-to-nearest, or GPTQ with hs) weight k of layer l. */
static int pack_weight(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                       const dq_plan *plan, const dq_hessian *hs, float damp, int32_t l,
                       int32_t k, const l2c_method *method, const l2c_quant_options *o,
                       dq_qmatrix **qm)
{
    int64_t rows, cols;
    const float *w0 = l2c_model_weight(m, l, k, &rows, &cols);
    int32_t in = l2c_input_of(k);
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    float *hi = malloc((size_t)rows * sizeof *hi), *lo = malloc((size_t)rows * sizeof *lo);
    int rc = -1;
    *qm = NULL;
    if (!w || !hi || !lo) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    memcpy(w, w0, (size_t)(rows * cols) * sizeof *w);
    /* Groups wider than the input are whole rows; where a group does not divide the width
     * (a 172-wide w2 in groups of 32) the last one is shorter, for GPTQ as for RTN. */
    const int32_t group = o->groups > 0 && o->groups < cols ? o->groups : 0;
    if (method->lwc && group > 0) {
        fprintf(stderr, "--groups: learned clipping is per row only\n");
        goto out;
    }
    /* GPTQ transforms the original weights itself (the Hessian holds the plan). */
    if (plan && !hs && check(dq_plan_transform_weight(plan, w, rows, cols, cols),
                      "dq_plan_transform_weight", l, l2c_input_name(in)))
        goto out;
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    wq.bits = method->w_bits;
    wq.scheme = DQ_QUANT_ASYM;
    wq.clip_ratio = method->w_bits == 4 ? o->w_clip : 1.0f;
    wq.group_size = group;
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
        gp.damp = damp;
        if (check(dq_gptq_pack(ctx, &gp, &wq, hs, w, rows, cols, cols, NULL, NULL, 0, qm),
                  "dq_gptq_pack", l, l2c_input_name(in)))
            goto out;
    } else if (check(dq_qmatrix_pack(ctx, &wq, w, rows, cols, cols, learned ? hi : NULL,
                                     learned ? lo : NULL, qm),
                     "dq_qmatrix_pack", l, l2c_input_name(in)))
        goto out;
    rc = 0;
out:
    free(w);
    free(hi);
    free(lo);
    return rc;
}

/* The activation settings of method's layers over qm at clip. */
static void linear_params(const dq_qmatrix *qm, const l2c_method *method, float clip,
                          dq_linear_params *lp)
{
    dq_linear_params_init(lp, sizeof *lp);
    lp->act_bits = method->a_bits;
    lp->act_scheme = DQ_QUANT_ASYM;
    lp->act_clip_ratio = method->a_bits == 4 ? clip : 1.0f;
    /* Grouped weights (--groups): the activations take the same groups. */
    int32_t group = 0;
    if (method->a_bits > 0 && dq_qmatrix_layout(qm, NULL, NULL, NULL, NULL, &group, NULL,
                                                NULL) == DQ_OK)
        lp->act_group_size = group;
}

static int make_linear(dq_context *ctx, const dq_plan *plan, const dq_qmatrix *qm,
                       const l2c_method *method, float clip, int32_t l, int32_t in,
                       dq_linear **out)
{
    dq_linear_params lp;
    linear_params(qm, method, clip, &lp);
    return check(dq_linear_create(ctx, &lp, plan, qm, NULL, out), "dq_linear_create", l,
                 l2c_input_name(in));
}

/* One candidate for an input: its plan and the packed weights of the layers reading it, and
 * those layers at clip 1.0 (each clip tried is a layer made like them: no repacking). */
typedef struct candidate {
    dq_plan *plan;
    dq_hessian *hs; /* GPTQ methods: the input's Hessian through the plan */
    dq_qmatrix *qm[L2C_N_LINEARS];
    dq_linear *lin[L2C_N_LINEARS];
} candidate;

/* Frees the packed weights and layers of c (not its plan or Hessian). */
static void candidate_weights_free(candidate *c)
{
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        dq_qmatrix_free(c->qm[k]);
        dq_linear_free(c->lin[k]);
        c->qm[k] = NULL;
        c->lin[k] = NULL;
    }
}

static void candidate_free(candidate *c)
{
    dq_plan_free(c->plan);
    dq_hessian_free(c->hs);
    candidate_weights_free(c);
    memset(c, 0, sizeof *c);
}

/* Rows of input data and the float layers' outputs on them (the reference of the error). */
typedef struct probe {
    const float *x;
    int64_t rows;
    float *y[L2C_N_LINEARS]; /* rows x out of layer k, or NULL */
} probe;

static void probe_free(probe *p)
{
    for (int32_t k = 0; k < L2C_N_LINEARS; k++)
        free(p->y[k]);
}

static int probe_init(const l2c_model *m, int32_t l, int32_t in, const float *x, int64_t rows,
                      int32_t threads, probe *p)
{
    memset(p, 0, sizeof *p);
    p->x = x;
    p->rows = rows;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        if (l2c_input_of(k) != in)
            continue;
        int64_t out_dim, cols;
        const float *w = l2c_model_weight(m, l, k, &out_dim, &cols);
        if (!(p->y[k] = malloc((size_t)(rows * out_dim) * sizeof(float)))) {
            fprintf(stderr, "out of memory\n");
            probe_free(p);
            return -1;
        }
        /* The float net's own product: fast on 7B-sized layers, and the reference is then
         * what the float model computes. */
        if (l2c_matmul(threads, x, rows, cols, w, out_dim, p->y[k])) {
            probe_free(p);
            return -1;
        }
    }
    return 0;
}

/* The layer-output error of candidate c at activation clip on the probe's rows. */
static int output_error(dq_context *ctx, const l2c_model *m, const candidate *c,
                        const l2c_method *method, float clip, int32_t l, int32_t in,
                        const probe *p, double *err)
{
    double num = 0, den = 0;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        if (!p->y[k])
            continue;
        int64_t out_dim, cols;
        l2c_model_weight(m, l, k, &out_dim, &cols);
        dq_linear *lin = NULL;
        float *y = malloc((size_t)(p->rows * out_dim) * sizeof *y);
        dq_linear_params lp;
        linear_params(c->qm[k], method, clip, &lp);
        int rc = !y ||
                 check(dq_linear_create_like(ctx, &lp, c->lin[k], &lin),
                       "dq_linear_create_like", l, l2c_input_name(in)) ||
                 check(dq_linear_forward(lin, p->x, p->rows, cols, cols, y, out_dim, NULL, 0),
                       "dq_linear_forward", l, l2c_input_name(in));
        for (int64_t i = 0; !rc && i < p->rows * out_dim; i++) {
            double d = (double)y[i] - p->y[k][i];
            num += d * d;
            den += (double)p->y[k][i] * p->y[k][i];
        }
        dq_linear_free(lin);
        free(y);
        if (rc)
            return -1;
    }
    *err = den > 0 ? num / den : num;
    return 0;
}

/* Packs the weights of the layers reading input in into qm (GPTQ with c's Hessian and damp),
 * and makes their layers at clip 1.0 in lin. */
static int pack_input(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                      const candidate *c, float damp, int32_t l, int32_t in,
                      const l2c_method *method, const l2c_quant_options *o,
                      dq_qmatrix *qm[L2C_N_LINEARS], dq_linear *lin[L2C_N_LINEARS])
{
    for (int32_t k = 0; k < L2C_N_LINEARS; k++)
        if (l2c_input_of(k) == in &&
            (pack_weight(ctx, m, cal, c->plan, c->hs, damp, l, k, method, o, &qm[k]) ||
             make_linear(ctx, c->plan, qm[k], method, 1.0f, l, in, &lin[k])))
            return -1;
    return 0;
}

/* Plan and weights of input in for one block size (GPTQ: the grid's first dampening). */
static int build_candidate(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                           int32_t l, int32_t in, const l2c_method *method,
                           const l2c_quant_options *o, int32_t block, int32_t smooth,
                           candidate *c)
{
    memset(c, 0, sizeof *c);
    if (build_plan(ctx, cal, l, in, method, o, block, smooth, &c->plan) ||
        (method->gptq && build_hessian(ctx, cal, c->plan, l, in, &c->hs)) ||
        pack_input(ctx, m, cal, c, o->damp_grid[0], l, in, method, o, c->qm, c->lin)) {
        candidate_free(c);
        return -1;
    }
    /* Kept only to pack again with other dampenings: a Hessian is width^2 doubles. */
    if (o->n_damp_grid < 2) {
        dq_hessian_free(c->hs);
        c->hs = NULL;
    }
    return 0;
}

/* GPTQ: the chosen candidate c packed again with every other dampening of the grid; the
 * weights with the lowest layer-output error on the held-out rows at the chosen clip are
 * kept (the first on ties). */
static int choose_damp(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                       candidate *c, int32_t l, int32_t in, const l2c_method *method,
                       const l2c_quant_options *o, const probe *held, l2c_choice *ch)
{
    ch->damp = method->gptq ? o->damp_grid[0] : 0;
    ch->n_damps = method->gptq ? 1 : 0;
    for (int32_t d = 1; method->gptq && d < o->n_damp_grid; d++) {
        candidate t = {c->plan, NULL, {NULL}, {NULL}};
        double e;
        ch->n_damps++;
        if (pack_input(ctx, m, cal, c, o->damp_grid[d], l, in, method, o, t.qm, t.lin) ||
            output_error(ctx, m, &t, method, ch->act_clip, l, in, held, &e)) {
            candidate_weights_free(&t);
            return -1;
        }
        if (e < ch->held_err) {
            ch->held_err = e, ch->damp = o->damp_grid[d];
            candidate_weights_free(c);
            memcpy(c->qm, t.qm, sizeof t.qm);
            memcpy(c->lin, t.lin, sizeof t.lin);
        } else
            candidate_weights_free(&t);
    }
    return 0;
}

/* The clip of candidate c: fixed, or the grid's entry with the lowest layer-output error on
 * the sample (the first on ties, so the grid's order decides). */
static int choose_clip(dq_context *ctx, const l2c_model *m, const candidate *c,
                       const l2c_method *method, const l2c_quant_options *o, int32_t l,
                       int32_t in, const probe *sample, l2c_choice *ch)
{
    ch->act_clip = method->a_bits == 4 && o->act_clip > 0 ? o->act_clip : 1.0f;
    ch->n_clips = 0;
    ch->err = ch->err_clip1 = -1;
    if (!sample)
        return 0;
    if (method->a_bits == 4 && o->act_clip <= 0) {
        for (int32_t i = 0; i < o->n_act_clip_grid; i++) {
            double e;
            if (output_error(ctx, m, c, method, o->act_clip_grid[i], l, in, sample, &e))
                return -1;
            if (i == 0 || e < ch->err)
                ch->err = e, ch->act_clip = o->act_clip_grid[i];
            if (o->act_clip_grid[i] == 1.0f) /* the grid's own clip 1.0: not measured twice */
                ch->err_clip1 = e;
        }
        ch->n_clips = o->n_act_clip_grid;
    } else if (output_error(ctx, m, c, method, ch->act_clip, l, in, sample, &ch->err))
        return -1;
    else if (ch->act_clip == 1.0f)
        ch->err_clip1 = ch->err;
    return ch->err_clip1 >= 0
               ? 0
               : output_error(ctx, m, c, method, 1.0f, l, in, sample, &ch->err_clip1);
}

/* One candidate of an input (block size and smoothing in ch), built and judged: plan and
 * weights, the clip on the calibration sample, the error on the held-out rows. Candidates are
 * independent, so several run at once, each on its own context. */
typedef struct candidate_job {
    dq_context *ctx;
    const l2c_model *m;
    const l2c_calibration *cal;
    int32_t l, in;
    const l2c_method *method;
    const l2c_quant_options *o;
    const probe *sample, *judge; /* judge: NULL when nothing is chosen */
    l2c_choice ch;
    candidate cur;
    int rc;
} candidate_job;

static void *candidate_main(void *arg)
{
    candidate_job *j = arg;
    j->rc = -1;
    if (build_candidate(j->ctx, j->m, j->cal, j->l, j->in, j->method, j->o, j->ch.block,
                        j->ch.smooth, &j->cur))
        return NULL;
    if (choose_clip(j->ctx, j->m, &j->cur, j->method, j->o, j->l, j->in, j->sample, &j->ch) ||
        (j->judge && output_error(j->ctx, j->m, &j->cur, j->method, j->ch.act_clip, j->l, j->in,
                                  j->judge, &j->ch.held_err))) {
        candidate_free(&j->cur);
        return NULL;
    }
    j->rc = 0;
    return NULL;
}

/* Candidates judged at once: the threads of the float products, one candidate each, at most
 * MAX_CANDIDATE_JOBS. GPTQ on wide inputs keeps one at a time: each holds a width^2 Hessian. */
#define MAX_CANDIDATE_JOBS 8

static int32_t candidate_jobs(const l2c_method *method, const l2c_quant_options *o,
                              int64_t cols, int32_t n_c)
{
    int32_t n = o->threads < 1 ? 1 : o->threads;
    n = n < n_c ? n : n_c;
    n = n < MAX_CANDIDATE_JOBS ? n : MAX_CANDIDATE_JOBS;
    return method->gptq && cols > 4096 ? 1 : n;
}

/* Runs jobs [0, n) on threads of their own (job 0 on this one); a job whose thread cannot start
 * runs here. Each job's context has o->threads / n threads. */
static void run_candidate_jobs(candidate_job *jobs, int32_t n)
{
    pthread_t th[MAX_CANDIDATE_JOBS];
    int started[MAX_CANDIDATE_JOBS] = {0};
    for (int32_t i = 1; i < n; i++)
        started[i] = pthread_create(&th[i], NULL, candidate_main, &jobs[i]) == 0;
    candidate_main(&jobs[0]);
    for (int32_t i = 1; i < n; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            candidate_main(&jobs[i]);
    }
}

/* Quantizes the layers reading input in of layer l: per block candidate, plan and weights,
 * then the clip on the calibration sample; the block with the lowest error on the held-out
 * rows wins (the first on ties). */
static int quantize_input(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                          int32_t l, int32_t in, const l2c_method *method,
                          const l2c_quant_options *o, l2c_qmodel *out)
{
    int32_t blocks[L2C_MAX_GRID];
    int32_t n_b = block_candidates(method, o, in, cal->width[in], blocks);
    int32_t smooths[2], n_s = smooth_candidates(method, o, smooths), n_c = n_b * n_s;
    int64_t cols = cal->width[in], s_rows = 0;
    l2c_choice *ch = &out->choice[l][in];
    candidate best;
    probe sample, held;
    candidate_job jobs[MAX_CANDIDATE_JOBS];
    dq_context *job_ctx[MAX_CANDIDATE_JOBS] = {NULL};
    float *xs = NULL;
    int rc = -1, have_sample = 0, have_held = 0;
    int32_t n_jobs = 1;
    memset(&best, 0, sizeof best);
    memset(&sample, 0, sizeof sample);
    memset(&held, 0, sizeof held);
    if (n_b == 0) {
        fprintf(stderr, "layer %d, %s: no --block-grid entry fits width %lld\n", l,
                l2c_input_name(in), (long long)cols);
        return -1;
    }
    /* Errors only where something is chosen, plus the clip-1.0 reference for the report. */
    int choose = (method->a_bits == 4 && o->act_clip <= 0) || n_c > 1;
    if (choose) {
        if (!(xs = calib_sample(cal->calib[l][in], cols, &s_rows))) {
            fprintf(stderr, "layer %d, %s: no calibration sample\n", l, l2c_input_name(in));
            goto out;
        }
        if (probe_init(m, l, in, xs, s_rows, o->threads, &sample))
            goto out;
        have_sample = 1;
    }
    /* Held-out errors where blocks, smoothing or GPTQ's dampening are chosen. */
    const int judge = n_c > 1 || (method->gptq && o->n_damp_grid > 1);
    ch->held_on_sample = judge && cal->held_rows[l][in] == 0;
    if (judge && !have_sample) {
        if (!(xs = calib_sample(cal->calib[l][in], cols, &s_rows))) {
            fprintf(stderr, "layer %d, %s: no calibration sample\n", l, l2c_input_name(in));
            goto out;
        }
        if (probe_init(m, l, in, xs, s_rows, o->threads, &sample))
            goto out;
        have_sample = 1;
    }
    if (judge && !ch->held_on_sample) {
        if (probe_init(m, l, in, cal->held[l][in], cal->held_rows[l][in], o->threads,
                       &held))
            goto out;
        have_held = 1;
    }
    if (ch->held_on_sample && l == 0 && in == 0)
        fprintf(stderr, "no held-out calibration tokens (the calibration text ends within "
                        "the sample): block sizes judged on the calibration sample\n");
    ch->n_blocks = n_b;
    ch->n_smooth = n_s;
    /* In waves of n_jobs candidates; the winner is taken in candidate order (the first on
     * ties), so the choice does not depend on how many run at once. */
    n_jobs = candidate_jobs(method, o, cols, n_c);
    for (int32_t j = 0; n_jobs > 1 && j < n_jobs; j++) {
        dq_context_params cp;
        dq_context_params_init(&cp, sizeof cp);
        cp.n_threads = o->threads / n_jobs;
        if (dq_context_create(&cp, &job_ctx[j]) != DQ_OK) {
            fprintf(stderr, "layer %d, %s: cannot create a context for a candidate\n", l,
                    l2c_input_name(in));
            goto out;
        }
    }
    for (int32_t i0 = 0; i0 < n_c; i0 += n_jobs) {
        const int32_t wave = n_c - i0 < n_jobs ? n_c - i0 : n_jobs;
        for (int32_t j = 0; j < wave; j++) {
            candidate_job *cj = &jobs[j];
            *cj = (candidate_job){n_jobs > 1 ? job_ctx[j] : ctx, m, cal, l, in, method, o,
                                  have_sample ? &sample : NULL,
                                  judge ? (have_held ? &held : &sample) : NULL, *ch,
                                  {NULL, NULL, {NULL}, {NULL}}, -1};
            cj->ch.block = blocks[(i0 + j) / n_s];
            cj->ch.smooth = smooths[(i0 + j) % n_s];
            cj->ch.held_err = -1;
        }
        run_candidate_jobs(jobs, wave);
        int failed = 0;
        for (int32_t j = 0; j < wave; j++) {
            candidate_job *cj = &jobs[j];
            if (cj->rc || failed) {
                failed = 1;
                candidate_free(&cj->cur);
                continue;
            }
            if (i0 + j == 0 || cj->ch.held_err < ch->held_err) {
                candidate_free(&best);
                best = cj->cur;
                *ch = cj->ch;
            } else
                candidate_free(&cj->cur);
        }
        if (failed)
            goto out;
    }
    if (choose_damp(ctx, m, cal, &best, l, in, method, o, have_held ? &held : &sample, ch))
        goto out;
    out->plans[l][in] = best.plan;
    best.plan = NULL;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        if (l2c_input_of(k) != in)
            continue;
        /* Made afresh on ctx: best's layers may belong to a candidate's context, whose
         * threads the model should not keep. */
        if (make_linear(ctx, out->plans[l][in], best.qm[k], method, ch->act_clip, l, in,
                        &out->layers[l][k]))
            goto out;
        out->lin[l][k].q = out->layers[l][k];
    }
    rc = 0;
out:
    candidate_free(&best);
    probe_free(&sample);
    probe_free(&held);
    free(xs);
    for (int32_t j = 0; j < MAX_CANDIDATE_JOBS; j++)
        dq_context_free(job_ctx[j]); /* objects made with it keep what they need */
    return rc;
}

void l2c_keep_blocks(l2c_quant_options *o, const l2c_qmodel *q, int32_t l)
{
    for (int32_t in = 0; in < L2C_N_INPUTS; in++)
        if (o->input_block[in] <= 0)
            o->input_block[in] = q->choice[l][in].block;
}

static int qmodel_alloc(const l2c_model *m, l2c_qmodel *out)
{
    int32_t L = m->c.n_layers;
    memset(out, 0, sizeof *out);
    out->n_layers = L;
    out->lin = calloc((size_t)L, sizeof *out->lin);
    out->layers = calloc((size_t)L, sizeof *out->layers);
    out->plans = calloc((size_t)L, sizeof *out->plans);
    out->choice = calloc((size_t)L, sizeof *out->choice);
    if (!out->lin || !out->layers || !out->plans || !out->choice) {
        fprintf(stderr, "out of memory\n");
        l2c_qmodel_free(out);
        return -1;
    }
    l2c_net fp32;
    l2c_net_init_fp32(&fp32, m, out->lin);
    return 0;
}

int l2c_quantize(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                 const l2c_method *method, const l2c_quant_options *o, l2c_qmodel *out)
{
    int32_t L = m->c.n_layers;
    if (qmodel_alloc(m, out))
        return -1;
    if (method->w_bits == 0)
        return 0;
    /* Input by input, so that at most one Hessian (width^2 doubles) is alive. */
    l2c_quant_options lo = *o;
    for (int32_t l = 0; l < L; l++) {
        for (int32_t in = 0; in < L2C_N_INPUTS; in++)
            if (quantize_input(ctx, m, cal, l, in, method, &lo, out)) {
                l2c_qmodel_free(out);
                return -1;
            }
        if (l == 0 && o->block_choice == L2C_BLOCK_FIRST)
            l2c_keep_blocks(&lo, out, 0);
    }
    return 0;
}

void l2c_qmodel_report(FILE *f, const l2c_qmodel *q, const l2c_method *method, int32_t first)
{
    for (int32_t l = 0; q->choice && method->w_bits && l < q->n_layers; l++)
        for (int32_t in = 0; in < L2C_N_INPUTS; in++) {
            const l2c_choice *c = &q->choice[l][in];
            fprintf(f, "settings\t%s\t%d\t%s\t%d\t%.4g\t", method->name, first + l,
                    l2c_input_name(in), c->block, (double)c->act_clip);
            if (c->err >= 0)
                fprintf(f, "%.6g\t%.6g\t", c->err, c->err_clip1);
            else
                fprintf(f, "-\t-\t");
            if (c->n_blocks * c->n_smooth > 1 || c->n_damps > 1)
                fprintf(f, "%.6g%s\t", c->held_err, c->held_on_sample ? " (sample)" : "");
            else
                fprintf(f, "-\t");
            fprintf(f, "%d blocks, %d clips", c->n_blocks, c->n_clips);
            if (c->n_damps > 0)
                fprintf(f, ", damp %.4g of %d", (double)c->damp, c->n_damps);
            if (c->smooth >= 0)
                fprintf(f, ", smoothing %s of %d", c->smooth ? "on" : "off", c->n_smooth);
            fputc('\n', f);
        }
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
    free(q->choice);
    memset(q, 0, sizeof *q);
}

/* Passes layer `layer`'s inputs (input `input` only when it is >= 0) on to the calibration,
 * nothing else. */
typedef struct one_layer {
    l2c_calibration *cal;
    int32_t layer, input;
} one_layer;

static int observe_one_layer(void *user, int32_t layer, int32_t input, const float *x,
                             int64_t rows, int64_t cols)
{
    const one_layer *u = user;
    return layer == u->layer && (u->input < 0 || input == u->input)
               ? l2c_calibration_observe(u->cal, layer, input, x, rows, cols)
               : 0;
}

int l2c_quantize_sequential(dq_context *ctx, const l2c_model *m, const l2c_text *text,
                            int64_t window, int64_t max_tokens, int64_t sample_tokens,
                            int64_t hess_tokens, int32_t per_input, const l2c_method *method,
                            const l2c_quant_options *o, l2c_qmodel *out)
{
    int32_t L = m->c.n_layers;
    l2c_window *w = NULL;
    float *logits = malloc((size_t)(window * m->c.vocab_size) * sizeof *logits);
    int64_t n_w = l2c_windows(text, window, 0, &w);
    l2c_quant_options lo = *o;
    l2c_calibration cal;
    memset(&cal, 0, sizeof cal);
    int rc = -1;
    if (qmodel_alloc(m, out))
        goto out;
    if (!logits || n_w < 0) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    for (int32_t l = 0; method->w_bits && l < L; l++) {
        /* Layer l's inputs as the model quantized up to layer l - 1 computes them, or (per
         * input) each input as the model quantized up to the input before computes it. */
        for (int32_t in0 = 0; in0 < L2C_N_INPUTS; in0 += per_input ? 1 : L2C_N_INPUTS) {
            if (l2c_calibration_init(m, sample_tokens, &cal))
                goto out;
            cal.hess_tokens = hess_tokens;
            one_layer u = {&cal, l, per_input ? in0 : -1};
            l2c_net net = {m, out->lin, observe_one_layer, &u, o->threads, NULL, NULL, NULL, NULL};
            for (int64_t i = 0; i < n_w && (max_tokens <= 0 || cal.tokens < max_tokens); i++) {
                int64_t len = w[i].len;
                if (max_tokens > 0 && len > max_tokens - cal.tokens)
                    len = max_tokens - cal.tokens;
                if (l2c_forward(&net, text->tokens + w[i].start, len, logits))
                    goto out;
                cal.tokens += len;
            }
            for (int32_t in = in0; in < (per_input ? in0 + 1 : L2C_N_INPUTS); in++)
                if (quantize_input(ctx, m, &cal, l, in, method, &lo, out))
                    goto out;
            l2c_calibration_free(&cal);
        }
        if (l == 0 && o->block_choice == L2C_BLOCK_FIRST)
            l2c_keep_blocks(&lo, out, 0);
    }
    rc = 0;
out:
    l2c_calibration_free(&cal);
    if (rc)
        l2c_qmodel_free(out);
    free(w);
    free(logits);
    return rc;
}
