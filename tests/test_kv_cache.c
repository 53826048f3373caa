/* The example engine's key/value cache against the full recompute: for a few sequences, fed to
 * the cache in chunks of varying sizes (prompt-like runs and single tokens), the logits of
 * every position equal those of l2c_forward on the whole sequence. Float model: within 1e-5
 * of the row's largest logit; quantized (rtn, duquant): the same bound, activations being
 * quantized per token. The full forward gives the same bits on 1 and 3 engine threads
 * (l2c_net.n_threads). Attention in fewer bits (a half-precision, 8-bit or 4-bit key/value
 * cache, 4-bit queries) keeps both properties: each token's heads are stored on their own.
 * The half-precision conversion against the compiler's _Float16 where it has one. On stories260K (examples/data) always, and on tinystories-656k from
 * the models folder when present (skipped, saying so, when not).
 * usage: test_kv_cache DATA_DIR MODELS_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"
#include "dq_test.h"
#include "forward.h"
#include "hf_model.h"
#include "model.h"
#include "perplexity.h"
#include "quantize.h"
#include "tokenizer.h"

static int failures;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                              \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

/* Compares the cached path with the full recompute on n_seq sequences of length len; returns
 * the largest relative difference seen (and counts bitwise-identical rows in *same). */
static double compare(const l2c_net *net, const char *what, int64_t len, uint64_t seed,
                      int64_t *rows, int64_t *same)
{
    const l2c_model *m = net->m;
    int64_t vocab = m->c.vocab_size;
    int32_t *tok = malloc((size_t)len * sizeof *tok);
    float *full = malloc((size_t)(len * vocab) * sizeof *full);
    float *step = malloc((size_t)(len * vocab) * sizeof *step);
    l2c_kv_cache kv;
    double worst = 0;
    test_rng r = {seed};
    CHECK(tok && full && step && l2c_kv_cache_init_net(&kv, net, len) == 0, "%s: allocation",
          what);
    if (!tok || !full || !step || (!kv.k && !kv.kq))
        goto out;
    tok[0] = 1; /* BOS */
    for (int64_t i = 1; i < len; i++)
        tok[i] = (int32_t)(test_rng_u64(&r) % (uint64_t)vocab);
    CHECK(l2c_forward(net, tok, len, full) == 0, "%s: full forward", what);
    /* Chunks: a prompt of 1 + seed % 5 tokens, then singles, with a run of 7 now and then. */
    int64_t pos = 0, chunk = 1 + (int64_t)(seed % 5);
    while (pos < len) {
        int64_t n = chunk < len - pos ? chunk : len - pos;
        int rc = l2c_forward_cached(net, &kv, tok + pos, n, step + pos * vocab, 0);
        CHECK(rc == 0 && kv.len == pos + n, "%s: cached step at %lld", what, (long long)pos);
        if (rc)
            goto out;
        pos += n;
        chunk = pos % 23 == 0 ? 7 : 1;
    }
    for (int64_t t = 0; t < len; t++) {
        const float *a = step + t * vocab, *b = full + t * vocab;
        double mx = 0, d = 0;
        for (int64_t j = 0; j < vocab; j++) {
            mx = fabs(b[j]) > mx ? fabs(b[j]) : mx;
            d = fabs((double)a[j] - b[j]) > d ? fabs((double)a[j] - b[j]) : d;
        }
        double rel = d / (mx > 0 ? mx : 1);
        worst = rel > worst ? rel : worst;
        *same += memcmp(a, b, (size_t)vocab * sizeof *a) == 0;
        ++*rows;
        CHECK(rel <= 1e-5, "%s: position %lld of %lld: cached logits differ by %.3g of the "
              "largest", what, (long long)t, (long long)len, rel);
    }
    /* A full cache refuses one more token; last_only writes only the last row. */
    float *one = malloc((size_t)vocab * sizeof *one);
    if (one && kv.cap == len) {
        CHECK(l2c_forward_cached(net, &kv, tok, 1, one, 1) != 0 && kv.len == len,
              "%s: a token past the cache's capacity is refused", what);
        kv.len = 0;
        CHECK(l2c_forward_cached(net, &kv, tok, len, one, 1) == 0 &&
                  memcmp(one, step + (len - 1) * vocab, (size_t)vocab * sizeof *one) == 0,
              "%s: last_only equals the last row", what);
    }
    free(one);
out:
    l2c_kv_cache_free(&kv);
    free(tok);
    free(full);
    free(step);
    return worst;
}

/* The full forward over the whole context on 1 and on 3 engine threads (parts of uneven size;
 * the context of tinystories-656k is long enough for its attention and float products to be
 * split): the same bits. */
static void check_threads(const l2c_net *net, const char *what)
{
    const l2c_model *m = net->m;
    const int64_t len = m->c.seq_len, vocab = m->c.vocab_size;
    int32_t *tok = malloc((size_t)len * sizeof *tok);
    float *one = malloc((size_t)(len * vocab) * sizeof *one);
    float *three = malloc((size_t)(len * vocab) * sizeof *three);
    CHECK(tok && one && three, "%s: allocation", what);
    if (tok && one && three) {
        test_rng r = {5};
        for (int64_t i = 0; i < len; i++)
            tok[i] = i == 0 ? 1 : (int32_t)(test_rng_u64(&r) % (uint64_t)vocab);
        l2c_net threaded = *net;
        threaded.n_threads = 1;
        CHECK(l2c_forward(&threaded, tok, len, one) == 0, "%s: forward on 1 thread", what);
        threaded.n_threads = 3;
        CHECK(l2c_forward(&threaded, tok, len, three) == 0, "%s: forward on 3 threads", what);
        CHECK(memcmp(one, three, (size_t)(len * vocab) * sizeof *one) == 0,
              "%s: logits of %lld positions differ between 1 and 3 engine threads", what,
              (long long)len);
        printf("%s: %lld positions on 1 and 3 engine threads: %s\n", what, (long long)len,
               memcmp(one, three, (size_t)(len * vocab) * sizeof *one) == 0 ? "identical"
                                                                            : "DIFFERENT");
    }
    free(tok);
    free(one);
    free(three);
}

static void check_net(const l2c_net *net, const char *what)
{
    check_threads(net, what);
    int64_t rows = 0, same = 0, ctx = net->m->c.seq_len;
    double worst = 0;
    const int64_t lens[3] = {37, 96, ctx < 200 ? ctx : 200};
    for (int i = 0; i < 3; i++) {
        double w = compare(net, what, lens[i] < ctx ? lens[i] : ctx, 11 + (uint64_t)i, &rows,
                           &same);
        worst = w > worst ? w : worst;
    }
    printf("%s: %lld positions, cached logits bitwise identical in %lld, largest difference "
           "%.3g of the row's largest logit\n",
           what, (long long)rows, (long long)same, worst);
}

/* The attention settings checked besides float32: half-precision cache; 8-bit cache with
 * clip ratios below 1; 4-bit cache and 4-bit queries. A float32 cache is refused by a net
 * that stores another format. */
static void check_attn(const l2c_net *net, const char *what)
{
    const int32_t L = net->m->c.n_layers;
    float *kc = malloc((size_t)L * sizeof *kc), *vc = malloc((size_t)L * sizeof *vc);
    CHECK(kc && vc, "allocation");
    for (int32_t l = 0; kc && vc && l < L; l++)
        kc[l] = 1.0f - 0.05f * (float)(l % 3), vc[l] = 0.9f;
    const l2c_attn_quant settings[3] = {{16, 0, NULL, NULL}, {8, 0, kc, vc}, {4, 4, kc, vc}};
    for (int i = 0; kc && vc && i < 3; i++) {
        l2c_net q = *net;
        q.attn = &settings[i];
        char name[160];
        snprintf(name, sizeof name, "%s kv%d qk%d", what, (int)settings[i].kv_bits,
                 (int)settings[i].qk_bits);
        check_net(&q, name);
        l2c_kv_cache kv;
        int32_t tok = 1;
        float *logits = malloc((size_t)net->m->c.vocab_size * sizeof *logits);
        if (logits && l2c_kv_cache_init(&kv, net->m, 4) == 0) {
            CHECK(l2c_forward_cached(&q, &kv, &tok, 1, logits, 1) != 0,
                  "%s: a float32 cache is refused", name);
            l2c_kv_cache_free(&kv);
        }
        free(logits);
    }
    free(kc);
    free(vc);
}

/* Every half-precision value converts to float and back to itself; floats round to the
 * nearest half (ties to even), as the compiler's _Float16 conversion does. */
static void check_half(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = l2c_half_to_float((uint16_t)h);
        const int nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
        bad += nan ? !isnan(f) : l2c_half_from_float(f) != h;
    }
    CHECK(bad == 0, "%d half values do not round-trip", bad);
#ifdef __FLT16_MAX__
    test_rng r = {77};
    int differ = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t x = (uint32_t)test_rng_u64(&r);
        if (i < 1000) /* around the subnormal, normal and overflow boundaries */
            x = (x & 0x80000000u) | ((i % 3 == 0 ? 0x33000000u : i % 3 == 1 ? 0x38800000u
                                                                           : 0x477fe000u) +
                                     (x & 0x3fffu) - 0x2000u);
        float f;
        memcpy(&f, &x, sizeof f);
        if (isnan(f))
            continue;
        __extension__ typedef _Float16 f16;
        const f16 want = (f16)f;
        uint16_t wb;
        memcpy(&wb, &want, sizeof wb);
        differ += l2c_half_from_float(f) != wb;
    }
    CHECK(differ == 0, "%d floats round to another half than _Float16's", differ);
    printf("half precision: 65536 values round-trip; 1e6 floats as _Float16 rounds them\n");
#else
    printf("half precision: 65536 values round-trip (no _Float16 to compare with)\n");
#endif
}

static void quantized(const l2c_model *m, const l2c_text *calib, const char *what)
{
    dq_context *ctx = NULL;
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = 1;
    CHECK(dq_context_create(&cp, &ctx) == DQ_OK, "context");
    l2c_calibration cal;
    if (!ctx || l2c_calibrate(m, calib, 128, 1024, 256, 0, &cal) != 0) {
        CHECK(0, "%s: calibration", what);
        dq_context_free(ctx);
        return;
    }
    l2c_quant_options o;
    l2c_quant_options_default(&o);
    o.rot_steps = 16;
    const char *methods[2] = {"rtn", "duquant"};
    for (int i = 0; i < 2; i++) {
        l2c_qmodel qm;
        const l2c_method *meth = l2c_method_find(methods[i]);
        CHECK(meth != NULL, "method %s", methods[i]);
        if (!meth || l2c_quantize(ctx, m, &cal, meth, &o, &qm) != 0) {
            CHECK(0, "%s: quantize %s", what, methods[i]);
            continue;
        }
        l2c_net net;
        memset(&net, 0, sizeof net);
        net.m = m;
        net.lin = qm.lin;
        char name[128];
        snprintf(name, sizeof name, "%s %s", what, methods[i]);
        check_net(&net, name);
        if (i == 0)
            check_attn(&net, name);
        l2c_qmodel_free(&qm);
    }
    l2c_calibration_free(&cal);
    dq_context_free(ctx);
}

static void float_net(const l2c_model *m, const char *what)
{
    l2c_linear(*lin)[L2C_N_LINEARS] = calloc((size_t)m->c.n_layers, sizeof *lin);
    CHECK(lin != NULL, "allocation");
    if (!lin)
        return;
    l2c_net net;
    l2c_net_init_fp32(&net, m, lin);
    check_net(&net, what);
    check_attn(&net, what);
    free(lin);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA_DIR MODELS_DIR\n", argv[0]);
        return 2;
    }
    char path[4096], tkp[4096], err[512];
    l2c_model m;
    l2c_tokenizer tk;
    l2c_text text;
    snprintf(path, sizeof path, "%s/stories260K.bin", argv[1]);
    snprintf(tkp, sizeof tkp, "%s/tok512.bin", argv[1]);
    if (l2c_model_load(path, &m, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", path, err);
        return 1;
    }
    check_half();
    float_net(&m, "stories260K fp32");
    snprintf(path, sizeof path, "%s/calib.txt", argv[1]);
    int tk_ok = l2c_tokenizer_load(tkp, m.c.vocab_size, &tk, err, sizeof err) == 0;
    CHECK(tk_ok, "%s: %s", tkp, err);
    if (tk_ok && l2c_text_load(path, &tk, &text) == 0) {
        quantized(&m, &text, "stories260K");
        l2c_text_free(&text);
    } else
        CHECK(0, "%s: calibration text", path);
    if (tk_ok)
        l2c_tokenizer_free(&tk);
    l2c_model_free(&m);

    snprintf(path, sizeof path, "%s/tinystories-656k", argv[2]);
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    FILE *f = fopen(cfg, "r");
    if (!f)
        printf("SKIP tinystories-656k: %s not found\n", cfg);
    else {
        fclose(f);
        if (hf_model_load(path, &m, NULL, err, sizeof err) != 0) {
            CHECK(0, "%s: %s", path, err);
        } else {
            float_net(&m, "tinystories-656k fp32");
            snprintf(cfg, sizeof cfg, "%s/calib.tok", path);
            if (hf_tokens_load(cfg, 1, m.c.vocab_size, &text, err, sizeof err) == 0) {
                quantized(&m, &text, "tinystories-656k");
                l2c_text_free(&text);
            } else
                CHECK(0, "%s: %s", cfg, err);
            l2c_model_free(&m);
        }
    }
    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    return failures ? 1 : 0;
}
