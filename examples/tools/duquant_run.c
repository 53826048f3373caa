/* duquant-run: runs a quantized model file written by duquant-quantize (mapped, its layers
 * reading their weights in place), a Hugging Face LLaMA-family folder or a llama2.c file:
 * perplexity on a story file, greedy generation from a prompt, or tokenization of a story
 * file. See --help. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "duquant.h"
#include "quantize.h"
#include "tool_model.h"

typedef struct options {
    const char *model, *tokenizer, *eval, *format, *tokenize, *out, *prompt, *bench_float;
    const char *calib;
    int64_t window, steps;
    int32_t threads, bench, half_matrices;
    l2c_attn_quant attn;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duquant-run --model PATH [--eval FILE] [--prompt TEXT] [--tokenize TEXT --out FILE]\n"
            "                   [--bench [--bench-float PATH]] [--threads N] [--matrices M]\n"
            "                   [--kv-bits 4|8|16 [--calib TEXT]] [--qk-bits 4|16]\n"
            "  --model PATH         quantized model file (duquant-quantize), Hugging Face\n"
            "                       LLaMA-family folder, or llama2.c file (with --tokenizer)\n"
            "  --tokenizer FILE     llama2.c tokenizer\n"
            "  --eval FILE          perplexity on stories (text separated by lines\n"
            "                       <|endoftext|>, or token ids FILE.tok): windows of --window\n"
            "                       tokens from each story's start\n"
            "  --format table|tsv   perplexity output (tsv header: file, ppl, predicted_tokens)\n"
            "  --window N           evaluation window (default 256)\n"
            "  --prompt TEXT        greedy continuation, printed as it goes\n"
            "  --steps N            tokens generated (default 64)\n"
            "  --tokenize TEXT      write the ids of the stories of TEXT (int32 little-endian,\n"
            "  --out FILE           each story stripped and BOS first) to FILE\n"
            "  --bench              prefill tokens/s of a 512-token prompt (or the model's\n"
            "                       context) and decode tokens/s of 128 tokens with the\n"
            "                       key/value cache, best of 3, with the CPU and the load average\n"
            "  --bench-float PATH   also bench this float model (Hugging Face folder or\n"
            "                       llama2.c file), e.g. the quantized file's float original\n"
            "  --threads N          library threads (default 0: host decides)\n"
            "  --matrices half|float  precision the layers apply the plans' rotation\n"
            "                       matrices in (default half: half the bytes per token,\n"
            "                       each entry rounded to 11 significant bits; float gives\n"
            "                       duquant-eval's perplexities to the digit)\n"
            "  --kv-bits 4|8|16     keys and values in 4 or 8 bits (per head per token, keys\n"
            "                       after a per-head Hadamard transform) or half precision\n"
            "                       (absent: float32)\n"
            "  --calib TEXT         with --kv-bits 4|8: each layer's key and value clip ratio\n"
            "                       is chosen on these stories (without: ratio 1)\n"
            "  --qk-bits 4|16       queries in 4 bits per head after the Hadamard transform\n"
            "                       (16: float; absent: float)\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--help") == 0 || strcmp(k, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(k, "--bench") == 0) {
            o->bench = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: missing value (or unknown option)\n", k);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int bad = 0;
        if (l2c_attn_option(&o->attn, k, v, &bad)) {
            /* attention settings */
        } else if (strcmp(k, "--model") == 0)
            o->model = v;
        else if (strcmp(k, "--calib") == 0)
            o->calib = v;
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
        else if (strcmp(k, "--eval") == 0)
            o->eval = v;
        else if (strcmp(k, "--format") == 0)
            bad = strcmp(v, "table") != 0 && strcmp(v, "tsv") != 0, o->format = v;
        else if (strcmp(k, "--tokenize") == 0)
            o->tokenize = v;
        else if (strcmp(k, "--out") == 0)
            o->out = v;
        else if (strcmp(k, "--prompt") == 0)
            o->prompt = v;
        else if (strcmp(k, "--bench-float") == 0)
            o->bench_float = v, o->bench = 1;
        else if (strcmp(k, "--window") == 0)
            bad = l2c_parse_int(v, 2, 1 << 20, &o->window);
        else if (strcmp(k, "--steps") == 0)
            bad = l2c_parse_int(v, 0, 1 << 20, &o->steps);
        else if (strcmp(k, "--threads") == 0)
            bad = l2c_parse_int(v, 0, 1024, &n), o->threads = (int32_t)n;
        else if (strcmp(k, "--matrices") == 0)
            bad = strcmp(v, "float") != 0 && strcmp(v, "half") != 0,
            o->half_matrices = strcmp(v, "half") == 0;
        else {
            fprintf(stderr, "unknown option %s (see --help)\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "%s: bad value '%s'\n", k, v);
            return -1;
        }
    }
    if (!o->model) {
        fprintf(stderr, "--model is required (see --help)\n");
        return -1;
    }
    if (!o->tokenize != !o->out) {
        fprintf(stderr, "--tokenize and --out go together\n");
        return -1;
    }
    if (o->calib && o->attn.kv_bits != 4 && o->attn.kv_bits != 8) {
        fprintf(stderr, "--calib chooses the clip ratios of --kv-bits 4 or 8 only\n");
        return -1;
    }
    if (!o->eval && !o->prompt && !o->tokenize && !o->bench) {
        fprintf(stderr,
                "nothing to do: give --eval, --prompt, --tokenize or --bench (see --help)\n");
        return -1;
    }
    return 0;
}

/* Stories of text as ids, written to a temporary file renamed over out. */
static int tokenize(const tool_model *tm, const char *path, const char *out)
{
    if (!tm->htk) {
        fprintf(stderr, "--tokenize: the model has no tokenizer.json\n");
        return -1;
    }
    size_t len = 0, n_ids = 0, n_stories = 0;
    char *text = tool_read_file(path, &len), err[512], tmp[4200];
    int32_t *ids = NULL;
    if (!text)
        return -1;
    int e = hf_tokenizer_encode_stories(tm->htk, text, len, &ids, &n_ids, &n_stories, err,
                                        sizeof err);
    free(text);
    if (e) {
        fprintf(stderr, "%s: %s\n", path, err);
        return -1;
    }
    if (n_stories == 0) {
        fprintf(stderr, "%s: no story to tokenize (empty text)\n", path);
        free(ids);
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", out, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL;
    for (size_t i = 0; ok && i < n_ids; i++) {
        uint32_t u = (uint32_t)ids[i];
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8),
                              (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
        ok = fwrite(b, 1, 4, f) == 4;
    }
    if (f)
        ok = fclose(f) == 0 && ok;
    ok = ok && rename(tmp, out) == 0;
    if (!ok) {
        fprintf(stderr, "%s: cannot write the ids\n", out);
        remove(tmp);
    } else
        fprintf(stderr, "%s: %zu stories, %zu tokens\n", out, n_stories, n_ids);
    free(ids);
    return ok ? 0 : -1;
}

static int evaluate(tool_model *tm, const options *o)
{
    l2c_text text;
    l2c_window *w = NULL;
    int rc = -1;
    if (tool_text_load(tm, o->eval, &text))
        return -1;
    int64_t window = o->window < tm->m.c.seq_len ? o->window : tm->m.c.seq_len;
    int64_t n_w = l2c_windows(&text, window, 0, &w);
    if (n_w <= 0) {
        fprintf(stderr, "%s: no window to evaluate\n", o->eval);
        goto out;
    }
    l2c_net net;
    tool_model_net(tm, &net);
    double nll = 0, t0 = tool_now_s();
    int64_t predicted = 0;
    if (l2c_mean_nll(&net, &text, w, n_w, &nll, &predicted))
        goto out;
    if (strcmp(o->format, "tsv") == 0) {
        printf("file\tppl\tpredicted_tokens\n");
        printf("%s\t%.6f\t%lld\n", o->eval, exp(nll), (long long)predicted);
    } else {
        printf("model %s (%s)\n", o->model, tm->quantized ? tm->method : "float");
        printf("perplexity on %s: %.4f (%lld windows of at most %lld tokens, %lld predicted "
               "tokens, %.2f s)\n",
               o->eval, exp(nll), (long long)n_w, (long long)window, (long long)predicted,
               tool_now_s() - t0);
    }
    rc = 0;
out:
    free(w);
    l2c_text_free(&text);
    return rc;
}

/* A byte-fallback token (<0xNN>): it may be the first byte of a character that the next ones
 * complete. */
static int is_byte_token(const hf_tokenizer *t, int32_t id)
{
    const char *s = hf_tokenizer_token(t, id);
    return s && strlen(s) == 6 && strncmp(s, "<0x", 3) == 0 && s[5] == '>';
}

/* Prints the decoded text of ids[0..n) past the *shown bytes already printed. */
static int show_decoded(const hf_tokenizer *t, const int32_t *ids, size_t n, char **buf,
                        size_t *buf_cap, size_t *shown)
{
    char err[512];
    size_t len = 0;
    int e = hf_tokenizer_decode(t, ids, n, HF_DECODE_SKIP_SPECIAL, *buf, *buf_cap, &len, err,
                                sizeof err);
    if (e == HF_ERR_RANGE) {
        free(*buf);
        *buf_cap = len + 64;
        if (!(*buf = malloc(*buf_cap)))
            return -1;
        e = hf_tokenizer_decode(t, ids, n, HF_DECODE_SKIP_SPECIAL, *buf, *buf_cap, &len, err,
                                sizeof err);
    }
    if (e) {
        fprintf(stderr, "--prompt: %s\n", err);
        return -1;
    }
    if (len > *shown)
        fwrite(*buf + *shown, 1, len - *shown, stdout), *shown = len;
    return 0;
}

/* Greedy continuation: the prompt runs once into a key/value cache, then each step runs only
 * the token it appended. */
static int generate(tool_model *tm, const options *o)
{
    int64_t vocab = tm->m.c.vocab_size, max_len = tm->m.c.seq_len;
    size_t plen = strlen(o->prompt), cap = plen + 3 + (size_t)o->steps, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    l2c_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    char err[512], *buf = NULL;
    size_t shown = 0, buf_cap = 0;
    int rc = -1;
    if (!ids || !logits) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    if (tm->htk) {
        if (hf_tokenizer_encode(tm->htk, o->prompt, plen, HF_ENCODE_BOS, ids, cap, &n, err,
                                sizeof err)) {
            fprintf(stderr, "--prompt: %s\n", err);
            goto out;
        }
        if (tool_check_ids(tm, ids, n, "--prompt"))
            goto out;
    } else if (tm->has_ltk) {
        int64_t k = l2c_encode(&tm->ltk, o->prompt, 1, ids);
        if (k < 0)
            goto out;
        n = (size_t)k;
    } else {
        fprintf(stderr, "--prompt: the model has no tokenizer (--tokenizer for llama2.c)\n");
        goto out;
    }
    if ((int64_t)n > max_len) {
        fprintf(stderr, "--prompt: %zu tokens, beyond the model's context of %lld\n", n,
                (long long)max_len);
        goto out;
    }
    l2c_net net;
    tool_model_net(tm, &net);
    if (l2c_kv_cache_init_net(&kv, &net, (int64_t)cap < max_len ? (int64_t)cap : max_len))
        goto out;
    for (int64_t s = 0; s <= o->steps; s++) {
        /* The text so far, printed from where the last step stopped; after a byte token it
         * waits, since a partial character decodes to U+FFFD that the next bytes replace. */
        if (tm->htk) {
            if (!is_byte_token(tm->htk, ids[n - 1]) &&
                show_decoded(tm->htk, ids, n, &buf, &buf_cap, &shown))
                goto out;
        } else {
            char piece[512] = "";
            for (size_t i = shown ? n - 1 : 1; i < n; i++)
                l2c_decode_append(&tm->ltk, ids[i - 1], ids[i], piece, sizeof piece);
            fputs(piece, stdout);
            shown = n;
        }
        fflush(stdout);
        if (s == o->steps || (int64_t)n >= max_len)
            break;
        if (l2c_forward_cached(&net, &kv, ids + kv.len, (int64_t)n - kv.len, logits, 1))
            goto out;
        const float *z = logits;
        int32_t best = 0;
        for (int32_t j = 1; j < vocab; j++)
            best = z[j] > z[best] ? j : best;
        if (best == tm->bos || best == tm->eos)
            break;
        ids[n++] = best;
    }
    /* The text that waited after a last byte token. */
    if (tm->htk && show_decoded(tm->htk, ids, n, &buf, &buf_cap, &shown))
        goto out;
    printf("\n");
    rc = 0;
out:
    l2c_kv_cache_free(&kv);
    free(buf);
    free(ids);
    free(logits);
    return rc;
}

/* The first line of /proc/cpuinfo starting with key, after ": " (or "?"). */
static void cpu_field(const char *key, char *out, size_t cap)
{
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(out, cap, "?");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0 && strchr(line, ':')) {
            snprintf(out, cap, "%s", strchr(line, ':') + 2);
            out[strcspn(out, "\n")] = '\0';
            break;
        }
    if (f)
        fclose(f);
}

/* Wall and processor (all threads) seconds of one timed run. */
typedef struct bench_time {
    double wall, cpu;
} bench_time;

static double cpu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Keeps the fastest wall time and, apart, the least processor time of the runs: the other
 * jobs of a shared machine stretch the first and disturb the second less. */
static void bench_keep(bench_time *best, int run, double wall, double cpu)
{
    best->wall = run == 0 || wall < best->wall ? wall : best->wall;
    best->cpu = run == 0 || cpu < best->cpu ? cpu : best->cpu;
}

/* Prefill: n_pre tokens from an empty cache (the last token's logits, as generation does).
 * Decode: n_dec greedy steps of one token each after BOS. Best of 3 runs each. */
static int bench_model(tool_model *tm, int64_t n_pre, int64_t n_dec, bench_time *pre,
                       bench_time *dec)
{
    int64_t vocab = tm->m.c.vocab_size;
    int32_t *ids = malloc((size_t)n_pre * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    l2c_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    int rc = -1;
    l2c_net net;
    tool_model_net(tm, &net);
    if (!ids || !logits || l2c_kv_cache_init_net(&kv, &net, n_pre > n_dec + 1 ? n_pre : n_dec + 1)) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    for (int64_t i = 0; i < n_pre; i++) /* BOS, then a fixed spread of ids */
        ids[i] = i == 0 ? (tm->bos >= 0 ? tm->bos : 0) : (int32_t)((i * 7919) % vocab);
    for (int r = 0; r < 3; r++) {
        kv.len = 0;
        double t0 = tool_now_s(), c0 = cpu_now_s();
        if (l2c_forward_cached(&net, &kv, ids, n_pre, logits, 1))
            goto out;
        bench_keep(pre, r, tool_now_s() - t0, cpu_now_s() - c0);
    }
    for (int r = 0; r < 3; r++) {
        kv.len = 0;
        int32_t tok = ids[0];
        if (l2c_forward_cached(&net, &kv, &tok, 1, logits, 1))
            goto out;
        double t0 = tool_now_s(), c0 = cpu_now_s();
        for (int64_t s = 0; s < n_dec; s++) {
            int32_t best = 0;
            for (int32_t j = 1; j < vocab; j++)
                best = logits[j] > logits[best] ? j : best;
            tok = best;
            if (l2c_forward_cached(&net, &kv, &tok, 1, logits, 1))
                goto out;
        }
        bench_keep(dec, r, tool_now_s() - t0, cpu_now_s() - c0);
    }
    rc = 0;
out:
    l2c_kv_cache_free(&kv);
    free(ids);
    free(logits);
    return rc;
}

static int bench(tool_model *tm, const options *o, dq_context *ctx)
{
    int64_t ctx_len = tm->m.c.seq_len;
    int64_t n_pre = ctx_len < 512 ? ctx_len : 512, n_dec = ctx_len - 1 < 128 ? ctx_len - 1 : 128;
    char model_name[256], family[32], model_no[32];
    double load[3] = {0, 0, 0};
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f || fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
        load[0] = -1;
    if (f)
        fclose(f);
    cpu_field("model name", model_name, sizeof model_name);
    cpu_field("cpu family", family, sizeof family);
    cpu_field("model\t", model_no, sizeof model_no);
    printf("cpu: %s (family %s, model %s), threads %d (0: host decides), load average %.2f, "
           "%s rotation matrices\n",
           model_name, family, model_no, o->threads, load[0], o->half_matrices ? "half" : "float");
    printf("prefill: a %lld-token prompt%s; decode: %lld tokens after BOS with the "
           "key/value cache; best of 3 each (tokens/s: the fastest wall time; cpu_s: the least "
           "processor time of the runs, all threads)\n",
           (long long)n_pre, n_pre == 512 ? "" : " (the model's context length, under 512)",
           (long long)n_dec);
    printf("%-10s %-14s %14s %14s %14s %14s\n", "model", "method", "prefill_tok_s",
           "decode_tok_s", "prefill_cpu_s", "decode_cpu_s");
    bench_time pre, dec;
    if (bench_model(tm, n_pre, n_dec, &pre, &dec))
        return -1;
    printf("%-10s %-14s %14.1f %14.1f %14.3f %14.3f\n", tm->quantized ? "quantized" : "float",
           tm->quantized ? tm->method : "fp32", (double)n_pre / pre.wall,
           (double)n_dec / dec.wall, pre.cpu, dec.cpu);
    if (!o->bench_float) {
        if (tm->quantized)
            printf("float row skipped: the quantized file holds no float weights "
                   "(--bench-float PATH names the float model)\n");
        return 0;
    }
    tool_model fm;
    if (tool_model_load(o->bench_float, NULL, ctx, &fm))
        return -1;
    fm.threads = tm->threads;
    fm.pool = tm->pool;
    int rc = -1;
    if (fm.quantized)
        fprintf(stderr, "--bench-float %s: a quantized model file, not a float model\n",
                o->bench_float);
    else if (fm.m.c.seq_len < n_pre || fm.m.c.seq_len < n_dec + 1)
        fprintf(stderr, "--bench-float %s: context %d shorter than the benchmark's\n",
                o->bench_float, (int)fm.m.c.seq_len);
    else if (bench_model(&fm, n_pre, n_dec, &pre, &dec) == 0) {
        printf("%-10s %-14s %14.1f %14.1f %14.3f %14.3f\n", "float", "fp32",
               (double)n_pre / pre.wall, (double)n_dec / dec.wall, pre.cpu, dec.cpu);
        rc = 0;
    }
    tool_model_free(&fm);
    return rc;
}

/* The attention settings of the model's nets; for a 4/8-bit cache the clip ratios of every
 * layer, chosen on --calib (float attention over its windows) or 1. */
static int attn_setup(tool_model *tm, const options *o, l2c_attn_quant *attn, float **k_clip,
                      float **v_clip)
{
    if (!attn->kv_bits && !attn->qk_bits)
        return 0;
    tm->attn = attn;
    if (attn->kv_bits != 4 && attn->kv_bits != 8)
        return 0;
    const int32_t L = tm->m.c.n_layers;
    *k_clip = malloc((size_t)L * sizeof **k_clip);
    *v_clip = malloc((size_t)L * sizeof **v_clip);
    if (!*k_clip || !*v_clip) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    for (int32_t l = 0; l < L; l++)
        (*k_clip)[l] = (*v_clip)[l] = 1.0f;
    attn->k_clip = *k_clip, attn->v_clip = *v_clip;
    if (!o->calib) {
        fprintf(stderr, "key/value clip ratios 1 (no --calib)\n");
        return 0;
    }
    l2c_text text;
    if (tool_text_load(tm, o->calib, &text))
        return -1;
    l2c_net net;
    tool_model_net(tm, &net);
    int64_t window = o->window < tm->m.c.seq_len ? o->window : tm->m.c.seq_len, tokens = 0;
    double t0 = tool_now_s();
    int rc = l2c_kv_calibrate(&net, &text, window, 0, attn->kv_bits, l2c_attn_rotates(attn),
                              *k_clip, *v_clip, &tokens);
    l2c_text_free(&text);
    if (rc)
        return -1;
    fprintf(stderr, "key/value clip ratios (keys/values per layer) on %lld tokens of %s in "
            "%.2f s:", (long long)tokens, o->calib, tool_now_s() - t0);
    for (int32_t l = 0; l < L; l++)
        fprintf(stderr, " %.2f/%.2f", (double)(*k_clip)[l], (double)(*v_clip)[l]);
    fprintf(stderr, "\n");
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    memset(&o, 0, sizeof o);
    o.format = "table";
    o.window = 256;
    o.steps = 64;
    /* Half matrices by default: decode reads the rotations on every token, and rounding them
     * moves a 4-bit model's perplexity less than the choice of seed does (doc/performance.md). */
    o.half_matrices = 1;
    int pa = parse_args(argc, argv, &o);
    if (pa)
        return pa > 0 ? 0 : 2;
    dq_context *ctx = NULL;
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = o.threads;
    cp.flags = o.half_matrices ? DQ_CONTEXT_F_HALF_MATRICES : 0;
    dq_status st = dq_context_create(&cp, &ctx);
    if (st) {
        fprintf(stderr, "dq_context_create: %s\n", dq_status_name(st));
        return 1;
    }
    tool_model tm;
    int rc = 1;
    if (tool_model_load(o.model, o.tokenizer, ctx, &tm)) {
        dq_context_free(ctx);
        return 1;
    }
    tm.threads = tool_threads(o.threads);
    tm.pool = ctx; /* the engine's loops on the library's threads */
    l2c_attn_quant attn = o.attn;
    float *k_clip = NULL, *v_clip = NULL;
    if (attn_setup(&tm, &o, &attn, &k_clip, &v_clip))
        goto out;
    if ((!o.tokenize || tokenize(&tm, o.tokenize, o.out) == 0) &&
        (!o.eval || evaluate(&tm, &o) == 0) && (!o.prompt || generate(&tm, &o) == 0) &&
        (!o.bench || bench(&tm, &o, ctx) == 0))
        rc = 0;
out:
    free(k_clip);
    free(v_clip);
    tool_model_free(&tm);
    dq_context_free(ctx);
    return rc;
}
