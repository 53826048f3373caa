/* The quantization pipeline through libduquant's public API: calibrate each linear input on
 * the FP32 model, build one transform plan per input (q/k/v share one, w1/w3 share one),
 * transform and pack the weights, and create the quantized layers. */
#ifndef L2C_QUANTIZE_H
#define L2C_QUANTIZE_H

#include <stdint.h>
#include <stdio.h>

#include "duquant.h"
#include "forward.h"
#include "perplexity.h"

/* Most values a settings grid (--act-clip-grid, --block-grid) holds. */
#define L2C_MAX_GRID 16

typedef struct l2c_quant_options {
    int32_t block_size;     /* DuQuant rotation block; 0 = chosen per input from block_grid */
    int32_t hadamard_block; /* largest Hadamard block; per input the largest power of two
                               <= this that divides the width; 0 = chosen per input from
                               block_grid */
    int32_t rot_steps;      /* greedy steps per search */
    int32_t perm_times;     /* zigzag passes */
    int32_t dq_smooth;      /* DuQuant methods smooth first: 1, 0, or L2C_SMOOTH_AUTO (with
                               and without tried per input, judged as the blocks are) */
    float alpha;            /* smoothing strength */
    float act_clip;         /* per-token activation clip ratio of the W4A4 methods; 0 = chosen
                               per input from act_clip_grid */
    float act_clip_grid[L2C_MAX_GRID];
    int32_t n_act_clip_grid;
    int32_t block_grid[L2C_MAX_GRID];
    int32_t n_block_grid;
    float w_clip;           /* fixed weight clip ratio of the W4A4 methods without LWC */
    int32_t lwc_epochs;
    float lwc_lr;
    int32_t lwc_batch;
    int32_t lwc_quant_act;  /* LWC loss with quantized activations (W4A4), else W4A16 */
    uint64_t seed;
    int32_t block_choice;   /* L2C_BLOCK_EACH: blocks chosen in every layer; L2C_BLOCK_FIRST:
                               each input's block chosen in layer 0, reused by later layers */
    int32_t input_block[L2C_N_INPUTS]; /* > 0: that input's plan block, fixed (set by
                               l2c_quantize or a block-by-block caller for L2C_BLOCK_FIRST) */
    int32_t threads;        /* threads of the float reference products (0 or 1: one) */
    int32_t groups;         /* > 0: weights and (W4A4) activations quantized per group of this
                               many input channels (0: per row and per token) */
    int32_t full_width;     /* DuQuant methods choosing blocks also try smoothing with one
                               full-width randomised Hadamard rotation (block -width) */
    float damp_grid[L2C_MAX_GRID]; /* GPTQ dampenings: the first packs every candidate; with
                               more, the chosen candidate is packed with each and the one with
                               the lowest held-out layer-output error kept */
    int32_t n_damp_grid;
} l2c_quant_options;

enum { L2C_BLOCK_EACH, L2C_BLOCK_FIRST };
enum { L2C_SMOOTH_AUTO = 2 };

void l2c_quant_options_default(l2c_quant_options *o);

/* Command-line values: 0 when s is a whole number (a float) within [lo, hi], else -1. */
int l2c_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out);
int l2c_parse_float(const char *s, double lo, double hi, float *out);
/* The quantization settings every program takes (--block, --hadamard-block, --rot-steps,
 * --perm-times, --dq-smooth, --lwc-epochs, --lwc-batch, --lwc-act, --seed, --alpha,
 * --act-clip, --w-clip, --lwc-lr, --act-clip-grid, --block-grid, --block-choice each|first,
 * --groups N, --gptq-damp-grid;
 * --block, --hadamard-block
 * and --act-clip also take "auto"): returns 1 when key is one of them (*bad set to -1 when value
 * is out of range, o unchanged then), 0 when it is not. */
int l2c_quant_option(l2c_quant_options *o, const char *key, const char *value, int *bad);

/* --kv-bits 4|8|16 and --qk-bits 4|16 (absent: float32 attention): returns 1 when key is one
 * of them (*bad set to -1 for any other value, a unchanged then), 0 when it is not. */
int l2c_attn_option(l2c_attn_quant *a, const char *key, const char *value, int *bad);

/* The clip ratios tried for the 4/8-bit keys and values, and how many. */
extern const float l2c_kv_clip_grid[];
extern const int32_t l2c_kv_clip_grid_n;

/* Chooses each layer's key and value clip ratios (k_clip, v_clip: n_layers each) for a
 * kv_bits cache (4 or 8; keys rotated as rotate says) on calibration text: net (its own
 * attention settings are ignored: float32 during the pass) runs the windows of text, up to
 * max_tokens tokens (0 = all); for every layer the ratio of l2c_kv_clip_grid with the least
 * squared reconstruction error of its keys (in the rotated domain) or values over those
 * tokens is kept (first minimum). Returns 0 or -1 (message printed); *tokens gets the count. */
int l2c_kv_calibrate(const l2c_net *net, const l2c_text *text, int64_t window,
                     int64_t max_tokens, int32_t kv_bits, int32_t rotate, float *k_clip,
                     float *v_clip, int64_t *tokens);

typedef struct l2c_method {
    const char *name;
    int32_t w_bits, a_bits; /* w_bits 0: fp32; a_bits 0: float activations */
    uint32_t plan_flags;    /* DQ_PLAN_F_*; 0 = no plan (RTN) */
    int32_t rot_method;     /* DQ_ROT_METHOD_* */
    int32_t lwc;            /* learnable weight clipping */
    const char *what;       /* one line for the docs and --help */
    int32_t refine;         /* DQ_REFINE_* applied to every rotation of the plan */
    int32_t gptq;           /* weights packed by GPTQ (l2c_gptq_params) instead of
                               round-to-nearest */
} l2c_method;

/* The GPTQ settings of the gptq methods: act-order and the per-row clip search on, the
 * library's default dampening; each input's Hessian comes from its calibration sample. */
void l2c_gptq_params(dq_gptq_params *gp);

extern const l2c_method l2c_methods[];
extern const int32_t l2c_n_methods;
const l2c_method *l2c_method_find(const char *name);

typedef struct l2c_calibration {
    int32_t n_layers;
    dq_calib *(*calib)[L2C_N_INPUTS];  /* [n_layers] */
    float *(*w_absmax)[L2C_N_INPUTS]; /* per-input-channel max |W| over the weights reading it */
    int64_t width[L2C_N_INPUTS]; /* channels of each input */
    int64_t tokens;
    /* The held-out rows: the held_tokens tokens right after the sample, kept apart from
     * everything fitted (statistics, rotation search, LWC, GPTQ, clip) to judge block sizes. */
    int64_t sample_tokens, held_tokens;
    float *(*held)[L2C_N_INPUTS];
    int64_t (*held_rows)[L2C_N_INPUTS];
    int64_t (*seen)[L2C_N_INPUTS]; /* tokens observed so far */
    /* GPTQ's Hessian rows: up to hess_tokens (-1: all) observed tokens of each input, the
     * held-out ones excepted, in stream order; 0 (the default of l2c_calibration_init):
     * none kept, the Hessian comes from the sample. Set before observing. */
    int64_t hess_tokens;
    float *(*hess)[L2C_N_INPUTS];
    int64_t (*hess_rows)[L2C_N_INPUTS], (*hess_cap)[L2C_N_INPUTS];
} l2c_calibration;

/* Runs the windows of text (up to max_tokens tokens, 0 = all) through the FP32 model and
 * observes every linear input; the first sample_tokens tokens are kept as the sample for the
 * rotation search, LWC, GPTQ and the clip choice, the next sample_tokens are held out (not
 * observed by the calibrators) to judge block sizes; up to hess_tokens (-1: all, 0: none)
 * of the others are kept for GPTQ's Hessians. */
int l2c_calibrate(const l2c_model *m, const l2c_text *text, int64_t window, int64_t max_tokens,
                  int64_t sample_tokens, int64_t hess_tokens, l2c_calibration *out);
void l2c_calibration_free(l2c_calibration *c);

/* The first half of l2c_calibrate: a calibrator per linear input of m and the weights' max |W|
 * per input channel, nothing observed yet (tokens 0). A caller that runs the model itself
 * (block by block) sets its net's observe to l2c_calibration_observe with the calibration as
 * user, and counts the tokens. */
int l2c_calibration_init(const l2c_model *m, int64_t sample_tokens, l2c_calibration *out);
int l2c_calibration_observe(void *user, int32_t layer, int32_t input, const float *x,
                            int64_t rows, int64_t cols);

/* Writes each calibration sample as float32 .npy: DIR/layer<L>_<input>.npy with input one of
 * qkv (attention norm output: q/k/v input), wo (attention output: wo input), w13 (FFN norm
 * output: w1/w3 input), w2 (silu(w1 x) * w3 x: w2 input). */
int l2c_calibration_dump(const l2c_calibration *c, const char *dir);

/* The settings chosen for one linear input and the layer-output errors they were chosen by:
 * sum over the layers reading the input of |y - y_fp32|^2 / sum |y_fp32|^2. */
typedef struct l2c_choice {
    int32_t block;      /* the plan's block (0: none), chosen from the grid when n_blocks > 1 */
    int32_t n_blocks;   /* candidates tried */
    float act_clip;     /* the layers' activation clip */
    int32_t n_clips;    /* clips tried (0: the clip was fixed) */
    double err;         /* on the calibration sample at act_clip */
    double err_clip1;   /* on the calibration sample at clip 1.0 (same plan and weights) */
    double held_err;    /* on the held-out rows (when n_blocks > 1) */
    int32_t held_on_sample; /* no held-out rows: the blocks were judged on the sample */
    int32_t smooth;     /* DuQuant's smoothing on (1) or off (0); -1: not a DuQuant plan */
    int32_t n_smooth;   /* smoothing settings tried (each with every block) */
    float damp;         /* GPTQ's dampening (0: not a GPTQ method) */
    int32_t n_damps;    /* dampenings tried */
} l2c_choice;

typedef struct l2c_qmodel {
    int32_t n_layers;
    l2c_linear (*lin)[L2C_N_LINEARS];
    dq_linear *(*layers)[L2C_N_LINEARS];
    dq_plan *(*plans)[L2C_N_INPUTS];
    l2c_choice (*choice)[L2C_N_INPUTS];
} l2c_qmodel;

/* Quantizes every linear layer of m with method; a setting left to "auto" (0 in o) is chosen
 * per linear input on calibration data only (l2c_choice; blocks in layer 0 only with
 * L2C_BLOCK_FIRST). Returns 0 or -1 (message
 * printed). */
int l2c_quantize(dq_context *ctx, const l2c_model *m, const l2c_calibration *cal,
                 const l2c_method *method, const l2c_quant_options *o, l2c_qmodel *out);
void l2c_qmodel_free(l2c_qmodel *q);

/* l2c_quantize with every layer's calibration taken from the model quantized up to the layer
 * before (one pass over text per layer, as l2c_calibrate runs it: windows of window tokens,
 * up to max_tokens, sample_tokens sampled and held out, hess_tokens kept for GPTQ); with
 * per_input, every input of a layer from the model quantized up to the input before (one
 * pass per input: q/k/v, wo, w1/w3, w2). */
int l2c_quantize_sequential(dq_context *ctx, const l2c_model *m, const l2c_text *text,
                            int64_t window, int64_t max_tokens, int64_t sample_tokens,
                            int64_t hess_tokens, int32_t per_input, const l2c_method *method,
                            const l2c_quant_options *o, l2c_qmodel *out);

/* Fixes each input's block in o (where not fixed yet) to the one layer l of q has: how
 * L2C_BLOCK_FIRST carries layer 0's blocks on. */
void l2c_keep_blocks(l2c_quant_options *o, const l2c_qmodel *q, int32_t l);

/* One tab-separated line per quantized linear input: "settings", method, layer (first + l),
 * input, block (-width: one full-width randomised Hadamard rotation), clip, err, err_clip1,
 * held_err (or "-"), candidates tried (and the smoothing chosen for DuQuant plans). */
void l2c_qmodel_report(FILE *f, const l2c_qmodel *q, const l2c_method *method, int32_t first);

#endif
