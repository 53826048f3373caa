/* duquant-eval: runs a llama2.c model (stories260K by default) or a Hugging Face folder in FP32
 * and quantized with libduquant, and prints perplexity, ratio to FP32 and quantization time per
 * method, plus one greedy sample per method. See --help and doc/results.md. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "duquant.h"
#include "forward.h"
#include "generate.h"
#include "model.h"
#include "perplexity.h"
#include "quantize.h"
#include "tokenizer.h"
#ifdef L2C_WITH_HF
#include "hf_model.h"
#include "hf_tokenizer.h"
#endif

#ifndef L2C_DATA_DIR
#define L2C_DATA_DIR "examples/data"
#endif

/* options.sequential besides 0 and 1: the GPTQ methods only; or those chosen on held-out
 * calibration text. */
enum { SEQ_GPTQ = -1, SEQ_AUTO = -2 };

typedef struct options {
    const char *model, *tokenizer, *calib, *eval, *methods, *format, *prompt, *dump_calib;
    int64_t window, max_windows, calib_tokens, sample_tokens, hess_tokens;
    int32_t steps, threads, settings, sequential;
    l2c_quant_options q;
    l2c_attn_quant attn;
} options;

/* What the samples are encoded and decoded with: a llama2.c tokenizer, or a folder's
 * tokenizer.json (then generation also stops at eos). */
typedef struct sampler {
    const l2c_tokenizer *tk;
#ifdef L2C_WITH_HF
    const hf_tokenizer *htk;
    int32_t eos;
#endif
} sampler;

typedef struct result {
    const l2c_method *method;
    double ppl, quantize_s;
    char sample[4096];
} result;

static void usage(FILE *f, const options *o)
{
    fprintf(f,
            "usage: duquant-eval [options]\n"
            "  --model FILE|DIR     llama2.c checkpoint, or a Hugging Face LLaMA-family folder\n"
            "                       (config.json, model.safetensors or shards; default %s)\n"
            "  --tokenizer FILE     llama2.c tokenizer (default %s; not used with a folder:\n"
            "                       its tokenizer.json encodes the texts and the samples)\n"
            "  --calib TEXT         calibration stories (default %s)\n"
            "  --eval TEXT          evaluation stories (default %s)\n"
            "                       TEXT: plain text, stories separated by lines <|endoftext|>,\n"
            "                       or token ids FILE.tok (int32 little-endian, each story\n"
            "                       starting with BOS)\n"
            "  --methods LIST       comma-separated (default all):",
            o->model, o->tokenizer, o->calib, o->eval);
    for (int32_t i = 0; i < l2c_n_methods; i++)
        fprintf(f, "%s%s", i ? "," : " ", l2c_methods[i].name);
    fprintf(f,
            "\n"
            "  --format table|tsv   output (default table; tsv: header method, ppl,\n"
            "                       ratio_to_fp32, quantize_s, samples on stderr)\n"
            "  --window N           evaluation window in tokens (default %lld)\n"
            "  --max-windows N      evaluate the first N windows only (default 0 = all)\n"
            "  --calib-tokens N     calibration tokens run through the model (default 0 = all)\n"
            "  --sample-tokens N    calibration sample rows for the rotation search, LWC,\n"
            "                       GPTQ and the clip choice (default %lld); the next N\n"
            "                       calibration tokens are held out to judge block sizes\n"
            "  --sequential auto|gptq|0|1|2  each layer (1) or each linear input (2) calibrated\n"
            "                       on the model quantized up to the one before, for every\n"
            "                       method; none (0); per layer for the GPTQ methods (gptq); or\n"
            "                       (default auto) the GPTQ methods quantized in the modes 1\n"
            "                       and 0, the one with the lower perplexity on the held-out\n"
            "                       calibration tokens kept (both printed on stderr)\n"
            "  --hessian-tokens all|N  calibration tokens of GPTQ's Hessians (default all: every\n"
            "                       calibration token but the held-out ones; 0: the sample)\n"
            "  --block auto|N       DuQuant rotation block (default auto: per linear input the\n"
            "                       --block-grid entry with the lowest layer-output error on\n"
            "                       held-out calibration tokens)\n"
            "  --hadamard-block auto|N  largest Hadamard block (per input the largest power of\n"
            "                       two <= N dividing the width; default auto: as --block)\n"
            "  --block-grid LIST    block candidates (default 16,32,64,128; those wider than\n"
            "                       an input are skipped)\n"
            "  --block-choice each|first  blocks chosen in every layer, or in layer 0 and\n"
            "                       reused by the later layers (clips stay per layer;\n"
            "                       default each)\n"
            "  --rot-steps N        greedy rotation steps (default %d)\n"
            "  --perm-times N       zigzag passes (default %d)\n"
            "  --dq-smooth 0|1|auto DuQuant methods smooth before rotating (default auto: per\n"
            "                       linear input with and without, judged as the blocks)\n"
            "  --full-width 0|1     DuQuant methods choosing blocks also try one full-width\n"
            "                       randomised Hadamard rotation (default %d)\n"
            "  --alpha A            smoothing strength (default %.2f)\n"
            "  --act-clip auto|R    W4A4 per-token activation clip ratio (default auto: per\n"
            "                       linear input the --act-clip-grid entry with the lowest\n"
            "                       layer-output error on the calibration sample)\n"
            "  --act-clip-grid LIST clip candidates in (0, 1] (default 1,0.95,0.9,0.85)\n",
            (long long)o->window, (long long)o->sample_tokens, o->q.rot_steps,
            o->q.perm_times, o->q.full_width, (double)o->q.alpha);
    fprintf(f,
            "  --gptq-damp-grid LIST  GPTQ dampenings in (0, 1] (default 0.01): the first packs\n"
            "                       every candidate; with more, each linear input keeps the one\n"
            "                       with the lowest layer-output error on held-out calibration\n"
            "                       tokens\n"
            "  --groups N           weights and activations per group of N input channels\n"
            "                       (default 0: per row and per token)\n"
            "  --settings 0|1       print the chosen block and clip of every linear input\n"
            "                       (tab-separated lines \"settings\", on stderr; default 0)\n"
            "  --w-clip R           W4A4 fixed weight clip ratio without LWC (default %.2f)\n"
            "  --lwc-epochs N       LWC epochs per layer (default %d)\n"
            "  --lwc-lr R           LWC learning rate (default %g)\n"
            "  --lwc-batch N        LWC tokens per step (default %d)\n"
            "  --lwc-act 0|1        LWC loss with 4-bit activations (default %d)\n"
            "  --seed N             seed of every random choice (default %llu)\n"
            "  --threads N          library threads (default 0: host decides)\n"
            "  --prompt TEXT        prompt of the greedy samples (default \"%s\")\n"
            "  --steps N            tokens generated per sample (default %d; 0 = none)\n"
            "  --dump-calib DIR     write each linear input's calibration sample as float32\n"
            "                       DIR/layer<L>_<qkv|wo|w13|w2>.npy and continue\n"
            "  --kv-bits 4|8|16     keys and values in 4 or 8 bits (per head per token, keys\n"
            "                       after a per-head Hadamard transform, clip ratios per layer\n"
            "                       chosen on the calibration text) or half precision\n"
            "                       (absent: float32)\n"
            "  --qk-bits 4|16       queries in 4 bits per head after the Hadamard transform\n"
            "                       (16: float; absent: float)\n",
            (double)o->q.w_clip, o->q.lwc_epochs,
            (double)o->q.lwc_lr, o->q.lwc_batch, o->q.lwc_quant_act,
            (unsigned long long)o->q.seed, o->prompt, o->steps);
}

/* Returns 0, 1 (help shown) or -1 (bad usage). */
static int parse_args(int argc, char **argv, options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--help") == 0 || strcmp(k, "-h") == 0) {
            usage(stdout, o);
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: missing value (or unknown option)\n", k);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int bad = 0;
        if (l2c_quant_option(&o->q, k, v, &bad) || l2c_attn_option(&o->attn, k, v, &bad)) {
            /* a quantization setting */
        } else if (strcmp(k, "--model") == 0)
            o->model = v;
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
        else if (strcmp(k, "--calib") == 0)
            o->calib = v;
        else if (strcmp(k, "--eval") == 0)
            o->eval = v;
        else if (strcmp(k, "--methods") == 0)
            o->methods = v;
        else if (strcmp(k, "--format") == 0)
            bad = strcmp(v, "table") != 0 && strcmp(v, "tsv") != 0, o->format = v;
        else if (strcmp(k, "--prompt") == 0)
            o->prompt = v;
        else if (strcmp(k, "--dump-calib") == 0)
            o->dump_calib = v;
        else if (strcmp(k, "--window") == 0)
            bad = l2c_parse_int(v, 2, 1 << 20, &o->window);
        else if (strcmp(k, "--max-windows") == 0)
            bad = l2c_parse_int(v, 0, INT64_MAX, &o->max_windows);
        else if (strcmp(k, "--calib-tokens") == 0)
            bad = l2c_parse_int(v, 0, INT64_MAX, &o->calib_tokens);
        else if (strcmp(k, "--sample-tokens") == 0)
            bad = l2c_parse_int(v, 1, 1 << 24, &o->sample_tokens);
        else if (strcmp(k, "--sequential") == 0) {
            if (strcmp(v, "gptq") == 0)
                o->sequential = SEQ_GPTQ;
            else if (strcmp(v, "auto") == 0)
                o->sequential = SEQ_AUTO;
            else
                bad = l2c_parse_int(v, 0, 2, &n), o->sequential = (int32_t)n;
        } else if (strcmp(k, "--hessian-tokens") == 0) {
            if (strcmp(v, "all") == 0)
                o->hess_tokens = -1;
            else
                bad = l2c_parse_int(v, 0, INT64_MAX, &o->hess_tokens);
        } else if (strcmp(k, "--steps") == 0)
            bad = l2c_parse_int(v, 0, 1 << 20, &n), o->steps = (int32_t)n;
        else if (strcmp(k, "--threads") == 0)
            bad = l2c_parse_int(v, 0, 1024, &n), o->threads = (int32_t)n;
        else if (strcmp(k, "--settings") == 0)
            bad = l2c_parse_int(v, 0, 1, &n), o->settings = (int32_t)n;
        else {
            fprintf(stderr, "unknown option %s (see --help)\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "%s: bad value '%s'\n", k, v);
            return -1;
        }
    }
    return 0;
}

/* The requested methods in table order; duplicates and unknown names are errors. */
static int pick_methods(const char *list, const l2c_method **out, int32_t *n)
{
    *n = 0;
    if (!list) {
        for (int32_t i = 0; i < l2c_n_methods; i++)
            out[(*n)++] = &l2c_methods[i];
        return 0;
    }
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        char name[64];
        if (len == 0 || len >= sizeof name) {
            fprintf(stderr, "--methods: bad list '%s'\n", list);
            return -1;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        const l2c_method *m = l2c_method_find(name);
        for (int32_t i = 0; m && i < *n; i++)
            if (out[i] == m)
                m = NULL;
        if (!m) {
            fprintf(stderr, "--methods: unknown or repeated method '%s' (see --help)\n", name);
            return -1;
        }
        out[(*n)++] = m;
        p += len + (p[len] == ',');
    }
    return *n > 0 ? 0 : -1;
}

static int is_token_file(const char *path)
{
    size_t n = strlen(path);
    return n > 4 && strcmp(path + n - 4, ".tok") == 0;
}

#ifdef L2C_WITH_HF
/* Text through a folder's tokenizer.json, as the token files of a folder are made: each story
 * stripped of surrounding white space and encoded with BOS first. */
static int load_text_hf(const char *path, const hf_tokenizer *htk, int32_t vocab,
                        l2c_text *out)
{
    char err[512];
    size_t len = 0, n = 0, n_stories = 0;
    int32_t *ids = NULL, bos = hf_tokenizer_bos(htk);
    char *text = l2c_read_file(path, &len);
    memset(out, 0, sizeof *out);
    if (!text) {
        fprintf(stderr, "%s: cannot read\n", path);
        return -1;
    }
    int e = hf_tokenizer_encode_stories(htk, text, len, &ids, &n, &n_stories, err, sizeof err);
    free(text);
    if (e) {
        fprintf(stderr, "%s: %s\n", path, err);
        return -1;
    }
    out->tokens = ids;
    out->n_tokens = (int64_t)n;
    out->story_start = malloc((n_stories + 1) * sizeof *out->story_start);
    if (!out->story_start) {
        fprintf(stderr, "%s: out of memory\n", path);
        l2c_text_free(out);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= vocab) {
            fprintf(stderr, "%s: token id %d beyond the model's vocabulary of %d: the "
                    "tokenizer does not fit the model\n", path, ids[i], vocab);
            l2c_text_free(out);
            return -1;
        }
        if (ids[i] == bos && (size_t)out->n_stories < n_stories)
            out->story_start[out->n_stories++] = (int64_t)i;
    }
    out->story_start[out->n_stories] = out->n_tokens;
    if ((size_t)out->n_stories != n_stories || (n > 0 && out->story_start[0] != 0)) {
        fprintf(stderr, "%s: the stories do not each start with BOS %d\n", path, bos);
        l2c_text_free(out);
        return -1;
    }
    return 0;
}
#endif

/* A story file: token ids when the name ends in .tok, else text through the model's
 * tokenizer (sp->tk NULL and no sp->htk: the model has none). */
static int load_text(const char *path, const sampler *sp, int32_t bos, int32_t vocab,
                     l2c_text *out)
{
    if (is_token_file(path)) {
#ifdef L2C_WITH_HF
        char err[512];
        if (hf_tokens_load(path, bos, vocab, out, err, sizeof err) == 0)
            return 0;
        fprintf(stderr, "%s\n", err);
#else
        (void)bos, (void)vocab, (void)out;
        fprintf(stderr, "%s: token files need the Hugging Face reader (built without jansson)\n",
                path);
#endif
        return -1;
    }
#ifdef L2C_WITH_HF
    if (sp->htk)
        return load_text_hf(path, sp->htk, vocab, out);
#endif
    if (!sp->tk) {
        fprintf(stderr, "%s: the model has no tokenizer: give token ids (FILE.tok)\n", path);
        return -1;
    }
    return l2c_text_load(path, sp->tk, out);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int quantize(dq_context *ctx, const l2c_model *m, const l2c_text *calib,
                    const l2c_calibration *cal, const l2c_method *method, const options *o,
                    int seq, l2c_qmodel *qm)
{
    return seq ? l2c_quantize_sequential(ctx, m, calib, o->window, o->calib_tokens,
                                         o->sample_tokens, method->gptq ? o->hess_tokens : 0,
                                         seq == 2, method, &o->q, qm)
               : l2c_quantize(ctx, m, cal, method, &o->q, qm);
}

/* The sequential modes --sequential auto tries, in order (ties keep the earlier): per layer
 * (GPTQ's own protocol), none. Per input (2) is left out: the held-out text rarely chose it
 * for its 1.5 times the cost (doc/results.md). */
static const int32_t seq_modes[] = {1, 0};
static const char *const seq_names[] = {"not sequential", "per layer", "per input"};
#define N_SEQ_MODES ((int32_t)(sizeof seq_modes / sizeof seq_modes[0]))

/* The model quantized in every sequential mode, and the one whose perplexity on the held-out
 * calibration tokens (the rows after the sample, which no calibrator, search, Hessian or clip
 * choice reads: see l2c_calibrate) is lowest kept. Attention in float32 while judging: the
 * choice concerns the linear layers. */
static int choose_sequential(dq_context *ctx, const l2c_model *m, const l2c_text *calib,
                             const l2c_calibration *cal, const l2c_method *method,
                             const options *o, l2c_qmodel *out)
{
    l2c_window *w = NULL;
    int64_t n_w = l2c_windows(calib, o->window, 0, &w), tokens = 0;
    if (n_w < 0) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    /* The calibration's own windows, cut at --calib-tokens as l2c_calibrate cuts them. */
    int64_t n = 0;
    for (; n < n_w && (o->calib_tokens <= 0 || tokens < o->calib_tokens); n++) {
        if (o->calib_tokens > 0 && w[n].len > o->calib_tokens - tokens)
            w[n].len = o->calib_tokens - tokens;
        tokens += w[n].len;
    }
    l2c_qmodel q[N_SEQ_MODES];
    double nll[N_SEQ_MODES];
    int64_t predicted = 0;
    int32_t made = 0, pick = 0;
    int rc = -1;
    for (; made < N_SEQ_MODES; made++) {
        if (quantize(ctx, m, calib, cal, method, o, seq_modes[made], &q[made]))
            goto out;
        l2c_net net = {m, q[made].lin, NULL, NULL, o->threads, NULL, NULL, NULL, ctx};
        if (l2c_mean_nll_rows(&net, calib, w, n, cal->sample_tokens,
                              cal->sample_tokens + cal->held_tokens, &nll[made], &predicted)) {
            made++;
            goto out;
        }
        pick = nll[made] < nll[pick] ? made : pick;
    }
    if (predicted > 0) {
        fprintf(stderr, "%-18s held-out calibration perplexity over %lld tokens:", method->name,
                (long long)predicted);
        for (int32_t i = 0; i < N_SEQ_MODES; i++)
            fprintf(stderr, "%s %s %.4f", i ? "," : "", seq_names[seq_modes[i]], exp(nll[i]));
        fprintf(stderr, ": %s\n", seq_names[seq_modes[pick]]);
    } else {
        pick = 0;
        fprintf(stderr, "%-18s no held-out calibration tokens (the calibration text ends within "
                "the sample): %s\n", method->name, seq_names[seq_modes[0]]);
    }
    *out = q[pick];
    for (int32_t i = 0; i < made; i++)
        if (i != pick)
            l2c_qmodel_free(&q[i]);
    made = 0;
    rc = 0;
out:
    for (int32_t i = 0; i < made; i++)
        l2c_qmodel_free(&q[i]);
    free(w);
    return rc;
}

/* Perplexity and sample of one net. */
static int evaluate(const l2c_net *net, const sampler *sp, const l2c_text *text,
                    const l2c_window *w, int64_t n_w, const options *o, result *r)
{
    double nll = 0;
    int64_t predicted = 0;
    if (l2c_mean_nll(net, text, w, n_w, &nll, &predicted))
        return -1;
    r->ppl = exp(nll);
    r->sample[0] = '\0';
    if (o->steps <= 0)
        return 0;
#ifdef L2C_WITH_HF
    if (sp->htk) {
        char err[512];
        if (l2c_generate_hf(net, sp->htk, o->prompt, o->steps, sp->eos, r->sample,
                            sizeof r->sample, err, sizeof err) == 0)
            return 0;
        fprintf(stderr, "--prompt: %s\n", err);
        return -1;
    }
#endif
    return l2c_generate(net, sp->tk, o->prompt, o->steps, r->sample, sizeof r->sample);
}

/* Newlines in samples are shown as spaces so each sample stays on one line. */
static void print_sample(FILE *f, const result *r)
{
    fprintf(f, "[%s] ", r->method->name);
    for (const char *c = r->sample; *c; c++)
        fputc(*c == '\n' ? ' ' : *c, f);
    fputc('\n', f);
}

static void print_results(const options *o, const result *res, int32_t n, double fp32_ppl,
                          int64_t n_w, int64_t predicted, const l2c_calibration *cal,
                          double calib_s)
{
    int tsv = strcmp(o->format, "tsv") == 0;
    FILE *samples = tsv ? stderr : stdout;
    if (tsv) {
        printf("method\tppl\tratio_to_fp32\tquantize_s\n");
        for (int32_t i = 0; i < n; i++)
            printf("%s\t%.6f\t%.6f\t%.3f\n", res[i].method->name, res[i].ppl,
                   res[i].ppl / fp32_ppl, res[i].quantize_s);
    } else {
        printf("perplexity on %s: %lld windows of at most %lld tokens, %lld predicted tokens\n",
               o->eval, (long long)n_w, (long long)o->window, (long long)predicted);
        if (cal)
            printf("calibration: %lld tokens of %s in %.2f s (shared by all methods)\n",
                   (long long)cal->tokens, o->calib, calib_s);
        if (o->attn.kv_bits || o->attn.qk_bits)
            printf("attention: keys and values %s%s, queries %s\n",
                   o->attn.kv_bits == 16 ? "half precision"
                   : o->attn.kv_bits      ? (o->attn.kv_bits == 4 ? "4-bit" : "8-bit")
                                          : "float32",
                   o->attn.kv_bits == 4 || o->attn.kv_bits == 8
                       ? " (per head per token, clip per layer on the calibration text, in "
                         "quantize_s)"
                       : "",
                   o->attn.qk_bits == 4 ? "4-bit (per head per token, Hadamard-rotated)"
                                        : "float");
        printf("\n%-18s %10s %8s %11s  %s\n", "method", "perplexity", "ratio", "quantize_s",
               "what");
        for (int32_t i = 0; i < n; i++)
            printf("%-18s %10.4f %8.4f %11.2f  %s\n", res[i].method->name, res[i].ppl,
                   res[i].ppl / fp32_ppl, res[i].quantize_s, res[i].method->what);
        printf("\n");
    }
    if (o->steps > 0) {
        fprintf(samples, "greedy samples, prompt \"%s\", up to %d tokens:\n", o->prompt,
                o->steps);
        for (int32_t i = 0; i < n; i++)
            print_sample(samples, &res[i]);
    }
}

int main(int argc, char **argv)
{
    options o;
    memset(&o, 0, sizeof o);
    o.model = L2C_DATA_DIR "/stories260K.bin";
    o.tokenizer = L2C_DATA_DIR "/tok512.bin";
    o.calib = L2C_DATA_DIR "/calib.txt";
    o.eval = L2C_DATA_DIR "/dev.txt";
    o.format = "table";
    o.prompt = "Once upon a time";
    o.window = 256;
    o.sample_tokens = 512;
    o.hess_tokens = -1;
    o.sequential = SEQ_AUTO;
    o.steps = 48;
    l2c_quant_options_default(&o.q);
    const char *default_tokenizer = o.tokenizer;
    int pa = parse_args(argc, argv, &o);
    if (pa)
        return pa > 0 ? 0 : 2;
    const l2c_method *methods[64];
    int32_t n_methods = 0;
    if (pick_methods(o.methods, methods, &n_methods))
        return 2;

    int rc = 1, need_calib = o.dump_calib != NULL, hf = 0;
    int32_t bos = 1; /* llama2.c's BOS */
    char err[512];
    l2c_model model;
    l2c_tokenizer tk;
    sampler sp = {.tk = &tk};
    l2c_text eval, calib;
    l2c_calibration cal;
    l2c_window *w = NULL;
    dq_context *ctx = NULL;
    result *res = calloc((size_t)n_methods, sizeof *res);
    l2c_linear(*fp32_lin)[L2C_N_LINEARS] = NULL;
#ifdef L2C_WITH_HF
    hf_tokenizer *htk = NULL;
#endif
    memset(&model, 0, sizeof model);
    memset(&tk, 0, sizeof tk);
    memset(&eval, 0, sizeof eval);
    memset(&calib, 0, sizeof calib);
    memset(&cal, 0, sizeof cal);
    const int kv_calib = o.attn.kv_bits == 4 || o.attn.kv_bits == 8;
    float *k_clip = NULL, *v_clip = NULL;
    need_calib |= kv_calib;
    for (int32_t i = 0; i < n_methods; i++)
        need_calib |= methods[i]->w_bits != 0;
#ifdef L2C_WITH_HF
    hf = hf_is_model_dir(o.model);
    if (hf) {
        hf_config hcfg;
        if (o.tokenizer != default_tokenizer) {
            fprintf(stderr, "--tokenizer: a llama2.c tokenizer; %s is a Hugging Face folder\n",
                    o.model);
            goto out;
        }
        if (!res || hf_model_load(o.model, &model, &hcfg, err, sizeof err)) {
            fprintf(stderr, "%s\n", res ? err : "out of memory");
            goto out;
        }
        bos = hcfg.bos_token_id;
        sp.eos = hcfg.eos_token_id;
        sp.tk = NULL;
        if (o.steps > 0 || !is_token_file(o.eval) || (need_calib && !is_token_file(o.calib))) {
            /* The llama2.c tokenizer does not apply: the folder brings its own. */
            char path[4096];
            snprintf(path, sizeof path, "%s/tokenizer.json", o.model);
            int e = hf_tokenizer_load(path, &htk, err, sizeof err);
            if (e) {
                fprintf(stderr, "%s%s\n", err,
                        e == HF_ERR_IO ? " (it encodes the prompt and text files; with "
                                         "--steps 0 and FILE.tok files none is needed)"
                                       : "");
                goto out;
            }
            sp.htk = htk;
        }
    }
#else
    (void)default_tokenizer;
#endif
    if (!hf && (!res || l2c_model_load(o.model, &model, err, sizeof err) ||
                l2c_tokenizer_load(o.tokenizer, model.c.vocab_size, &tk, err, sizeof err))) {
        fprintf(stderr, "%s\n", res ? err : "out of memory");
        goto out;
    }
    if (o.window > model.c.seq_len) {
        fprintf(stderr, "--window: at most the model's context, %d\n", model.c.seq_len);
        goto out;
    }
    if (load_text(o.eval, &sp, bos, model.c.vocab_size, &eval) ||
        (need_calib && load_text(o.calib, &sp, bos, model.c.vocab_size, &calib)))
        goto out;
    int64_t n_w = l2c_windows(&eval, o.window, o.max_windows, &w);
    if (n_w <= 0) {
        fprintf(stderr, "%s: no window to evaluate\n", o.eval);
        goto out;
    }
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = o.threads;
    dq_status st = dq_context_create(&cp, &ctx);
    if (st) {
        fprintf(stderr, "dq_context_create: %s\n", dq_status_name(st));
        goto out;
    }
    fprintf(stderr, "model %s: dim %d, hidden %d, %d layers, %d heads, %d kv heads, vocab %d\n",
            o.model, model.c.dim, model.c.hidden_dim, model.c.n_layers, model.c.n_heads,
            model.c.n_kv_heads, model.c.vocab_size);

    /* FP32 first: every ratio is against it, listed or not. */
    fp32_lin = calloc((size_t)model.c.n_layers, sizeof *fp32_lin);
    k_clip = calloc((size_t)model.c.n_layers, sizeof *k_clip);
    v_clip = calloc((size_t)model.c.n_layers, sizeof *v_clip);
    if (!fp32_lin || !k_clip || !v_clip)
        goto out;
    l2c_net fp32;
    l2c_net_init_fp32(&fp32, &model, fp32_lin);
    fp32.n_threads = o.threads;
    fp32.pool = ctx; /* the engine's loops on the library's threads, as in duquant-run */
    double nll = 0;
    int64_t predicted = 0;
    if (l2c_mean_nll(&fp32, &eval, w, n_w, &nll, &predicted))
        goto out;
    double fp32_ppl = exp(nll), calib_s = 0;
    fprintf(stderr, "fp32 perplexity %.4f over %lld predicted tokens\n", fp32_ppl,
            (long long)predicted);
    if (need_calib) {
        double t0 = now_s();
        int gptq = 0;
        for (int32_t i = 0; i < n_methods; i++)
            gptq |= methods[i]->gptq;
        if (l2c_calibrate(&model, &calib, o.window, o.calib_tokens, o.sample_tokens,
                          gptq ? o.hess_tokens : 0, &cal))
            goto out;
        calib_s = now_s() - t0;
        fprintf(stderr, "calibrated on %lld tokens in %.2f s\n", (long long)cal.tokens, calib_s);
        if (o.dump_calib && l2c_calibration_dump(&cal, o.dump_calib))
            goto out;
    }
    o.q.threads = o.threads;
    for (int32_t i = 0; i < n_methods; i++) {
        l2c_qmodel qm;
        double t0 = now_s();
        res[i].method = methods[i];
        int seq = o.sequential < 0 ? methods[i]->gptq : o.sequential;
        if (o.sequential == SEQ_AUTO && methods[i]->gptq
                ? choose_sequential(ctx, &model, &calib, &cal, methods[i], &o, &qm)
                : quantize(ctx, &model, &calib, &cal, methods[i], &o, seq, &qm))
            goto out;
        res[i].quantize_s = methods[i]->w_bits ? now_s() - t0 : 0;
        if (o.settings)
            l2c_qmodel_report(stderr, &qm, methods[i], 0);
        l2c_net net = {&model, qm.lin, NULL, NULL, o.threads, NULL, NULL, NULL, ctx};
        l2c_attn_quant attn = o.attn;
        int64_t kv_tokens = 0;
        if (kv_calib) {
            /* The clip ratios of this method's keys and values, from its own (float
             * attention) pass over the calibration text. */
            t0 = now_s();
            if (l2c_kv_calibrate(&net, &calib, o.window, o.calib_tokens, o.attn.kv_bits,
                                 l2c_attn_rotates(&o.attn), k_clip, v_clip, &kv_tokens)) {
                l2c_qmodel_free(&qm);
                goto out;
            }
            res[i].quantize_s += now_s() - t0;
            attn.k_clip = k_clip, attn.v_clip = v_clip;
            fprintf(stderr, "%-18s key/value clip ratios on %lld tokens:", methods[i]->name,
                    (long long)kv_tokens);
            for (int32_t l = 0; l < model.c.n_layers; l++)
                fprintf(stderr, " %.2f/%.2f", (double)k_clip[l], (double)v_clip[l]);
            fprintf(stderr, "\n");
        }
        net.attn = o.attn.kv_bits || o.attn.qk_bits ? &attn : NULL;
        int e = evaluate(&net, &sp, &eval, w, n_w, &o, &res[i]);
        l2c_qmodel_free(&qm);
        if (e)
            goto out;
        fprintf(stderr, "%-18s ppl %.4f (quantized in %.2f s)\n", methods[i]->name, res[i].ppl,
                res[i].quantize_s);
    }
    print_results(&o, res, n_methods, fp32_ppl, n_w, predicted, need_calib ? &cal : NULL,
                  calib_s);
    rc = 0;
out:
    l2c_calibration_free(&cal);
    dq_context_free(ctx);
    free(w);
    free(res);
    free(fp32_lin);
    free(k_clip);
    free(v_clip);
    l2c_text_free(&eval);
    l2c_text_free(&calib);
    l2c_tokenizer_free(&tk);
#ifdef L2C_WITH_HF
    hf_tokenizer_free(htk);
#endif
    l2c_model_free(&model);
    return rc;
}
