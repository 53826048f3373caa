/* The example engine's Hugging Face reader (examples/hf).
 *
 *   test_hf_model errors             bad folders built in a temporary directory: each load
 *                                    fails with a message naming the file and the key/tensor
 *   test_hf_model perplexity MODELS  MODELS/tinystories-656k: FP32 dev perplexity 16.9958
 *                                    (../shared/models/README.md), and the same model written
 *                                    here as BF16, F16 and two F32 shards; exit 77 when absent
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forward.h"
#include "hf_model.h"
#include "perplexity.h"

static int failures;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            printf("FAILED (%s:%d): ", __FILE__, __LINE__);                                       \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

static char *fmt(const char *f, ...)
{
    static char buf[8][1024];
    static int at;
    char *b = buf[at++ % 8];
    va_list ap;
    va_start(ap, f);
    vsnprintf(b, sizeof buf[0], f, ap);
    va_end(ap);
    return b;
}

/* ---- fixtures ---- */

typedef struct tensor {
    char name[96];
    const char *dtype; /* F32, F16, BF16 */
    int32_t n_dims;
    int64_t shape[2];
    float *data;
} tensor;

static uint16_t float_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u, e = (u >> 23) & 0xff, man = u & 0x7fffffu;
    if (e == 0xff)
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    int32_t ex = (int32_t)e - 127 + 15;
    if (ex >= 31)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t mant, shift;
    if (ex <= 0) { /* subnormal half: keep man * 2^(ex - 1) with the hidden bit */
        if (ex < -10)
            return (uint16_t)sign;
        mant = man | 0x800000u;
        shift = (uint32_t)(14 - ex);
    } else {
        mant = man;
        shift = 13;
    }
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    /* A carry out of the mantissa moves into the exponent, as it should. */
    return (uint16_t)(sign | (ex <= 0 ? q : ((uint32_t)ex << 10) + q));
}

static int write_bytes(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* A safetensors file of the tensors (values converted to each tensor's dtype). */
static int write_safetensors(const char *path, const tensor *t, int32_t n)
{
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t numel = 1;
        json_t *shape = json_array();
        for (int32_t d = 0; d < t[i].n_dims; d++) {
            json_array_append_new(shape, json_integer(t[i].shape[d]));
            numel *= t[i].shape[d];
        }
        uint64_t bytes = (uint64_t)numel * (strcmp(t[i].dtype, "F32") == 0 ? 4 : 2);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(t[i].dtype));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets",
                            json_pack("[I, I]", (json_int_t)off, (json_int_t)(off + bytes)));
        json_object_set_new(hdr, t[i].name, e);
        off += bytes;
    }
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    char *text = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    FILE *f = fopen(path, "wb");
    int rc = !f || write_bytes(f, le, 8) || write_bytes(f, text, len) ||
             write_bytes(f, "        ", padded - len);
    free(text);
    for (int32_t i = 0; !rc && i < n; i++) {
        int64_t numel = t[i].n_dims == 1 ? t[i].shape[0] : t[i].shape[0] * t[i].shape[1];
        for (int64_t j = 0; !rc && j < numel; j++) {
            uint32_t u;
            memcpy(&u, &t[i].data[j], sizeof u);
            unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8),
                                  (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
            if (strcmp(t[i].dtype, "F32") == 0) {
                rc = write_bytes(f, b, 4);
            } else if (strcmp(t[i].dtype, "BF16") == 0) {
                rc = write_bytes(f, b + 2, 2);
            } else {
                uint16_t h = float_to_f16(t[i].data[j]);
                unsigned char hb[2] = {(unsigned char)h, (unsigned char)(h >> 8)};
                rc = write_bytes(f, hb, 2);
            }
        }
    }
    if (f && fclose(f))
        rc = 1;
    return rc ? -1 : 0;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    int rc = !f || write_bytes(f, text, strlen(text));
    if (f && fclose(f))
        rc = 1;
    return rc ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- a small synthetic model ---- */

enum { S_D = 8, S_H = 16, S_HEADS = 2, S_KV = 1, S_HD = 4, S_V = 16, S_L = 2 };

static json_t *small_config(void)
{
    return json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:i, s:i, s:n, "
                     "s:b, s:b, s:i}",
                     "model_type", "llama", "hidden_act", "silu", "hidden_size", S_D,
                     "intermediate_size", S_H, "num_hidden_layers", S_L, "num_attention_heads",
                     S_HEADS, "num_key_value_heads", S_KV, "vocab_size", S_V, "rms_norm_eps",
                     1e-6, "rope_theta", 10000.0, "tie_word_embeddings", 1, "bos_token_id", 1,
                     "eos_token_id", 2, "rope_scaling", "attention_bias", 0, "mlp_bias", 0,
                     "max_position_embeddings", 64);
}

static float small_values[2048];

/* The tensors of the small model with heads of hd channels; the tensor called bad_name gets
 * bad_rows rows. */
static int32_t small_tensors_hd(tensor *t, const char *dtype, const char *bad_name,
                                int64_t bad_rows, int32_t hd)
{
    int32_t n = 0;
    float *v = small_values;
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof small_values / sizeof small_values[0]; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = (float)((int32_t)(s >> 24) - 128) / 256.0f; /* exact in BF16 and F16 */
    }
#define ADD(nm, nd, a, b)                                                                         \
    do {                                                                                          \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                          \
        t[n].dtype = dtype, t[n].n_dims = nd, t[n].shape[0] = a, t[n].shape[1] = b;               \
        if (bad_name && strcmp(t[n].name, bad_name) == 0)                                         \
            t[n].shape[0] = bad_rows;                                                             \
        t[n].data = v;                                                                            \
        n++;                                                                                      \
    } while (0)
    ADD("model.embed_tokens.weight", 2, S_V, S_D);
    for (int32_t l = 0; l < S_L; l++) {
        ADD(fmt("model.layers.%d.input_layernorm.weight", l), 1, S_D, 0);
        ADD(fmt("model.layers.%d.self_attn.q_proj.weight", l), 2, S_HEADS * hd, S_D);
        ADD(fmt("model.layers.%d.self_attn.k_proj.weight", l), 2, S_KV * hd, S_D);
        ADD(fmt("model.layers.%d.self_attn.v_proj.weight", l), 2, S_KV * hd, S_D);
        ADD(fmt("model.layers.%d.self_attn.o_proj.weight", l), 2, S_D, S_HEADS * hd);
        ADD(fmt("model.layers.%d.post_attention_layernorm.weight", l), 1, S_D, 0);
        ADD(fmt("model.layers.%d.mlp.gate_proj.weight", l), 2, S_H, S_D);
        ADD(fmt("model.layers.%d.mlp.up_proj.weight", l), 2, S_H, S_D);
        ADD(fmt("model.layers.%d.mlp.down_proj.weight", l), 2, S_D, S_H);
    }
    ADD("model.norm.weight", 1, S_D, 0);
#undef ADD
    return n;
}

static int32_t small_tensors(tensor *t, const char *dtype, const char *bad_name, int64_t bad_rows)
{
    return small_tensors_hd(t, dtype, bad_name, bad_rows, S_HD);
}

/* ---- an independent float64 forward pass (Hugging Face LlamaForCausalLM) ---- */

static void ref_matvec(const float *w, int64_t out, int64_t in, const double *x, double *y)
{
    for (int64_t o = 0; o < out; o++) {
        double s = 0;
        for (int64_t i = 0; i < in; i++)
            s += (double)w[o * in + i] * x[i];
        y[o] = s;
    }
}

static void ref_rmsnorm(const double *x, const float *w, int64_t d, double eps, double *y)
{
    double ss = 0;
    for (int64_t i = 0; i < d; i++)
        ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / (double)d + eps);
    for (int64_t i = 0; i < d; i++)
        y[i] = x[i] * r * (double)w[i];
}

/* q * cos + rotate_half(q) * sin on every head, rotate_half(q) = [-q2, q1]. */
static void ref_rope(double *v, int64_t heads, int64_t hd, int64_t pos, double theta)
{
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < hd / 2; i++) {
            double a = (double)pos * pow(theta, -(double)(2 * i) / (double)hd);
            double *p = v + h * hd, x1 = p[i], x2 = p[i + hd / 2];
            p[i] = x1 * cos(a) - x2 * sin(a);
            p[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
        }
}

/* Largest |logit - reference| / (1 + |reference|) over T tokens. */
static double ref_compare(const l2c_model *m, const int32_t *tok, int64_t T)
{
    int64_t d = m->c.dim, hd = m->head_size, H = m->c.n_heads, KV = m->c.n_kv_heads;
    int64_t hid = m->c.hidden_dim, V = m->c.vocab_size, qd = H * hd, kd = KV * hd;
    enum { MAXT = 8, MAXW = 192 };
    static double x[MAXT][MAXW], q[MAXT][MAXW], k[MAXT][MAXW], v[MAXT][MAXW];
    double xn[MAXW], att[MAXW], o[MAXW], g[MAXW], u[MAXW];
    static float logits[MAXT * MAXW];
    if (T > MAXT || d > MAXW || qd > MAXW || hid > MAXW || V > MAXW)
        return INFINITY;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < d; i++)
            x[t][i] = m->tok_emb[tok[t] * d + i];
    for (int32_t l = 0; l < m->c.n_layers; l++) {
        int64_t r, c;
        for (int64_t t = 0; t < T; t++) {
            ref_rmsnorm(x[t], m->rms_att + l * d, d, m->norm_eps, xn);
            ref_matvec(l2c_model_weight(m, l, L2C_WQ, &r, &c), qd, d, xn, q[t]);
            ref_matvec(l2c_model_weight(m, l, L2C_WK, &r, &c), kd, d, xn, k[t]);
            ref_matvec(l2c_model_weight(m, l, L2C_WV, &r, &c), kd, d, xn, v[t]);
            ref_rope(q[t], H, hd, t, m->rope_theta);
            ref_rope(k[t], KV, hd, t, m->rope_theta);
        }
        for (int64_t t = 0; t < T; t++) {
            double a[MAXW];
            for (int64_t h = 0; h < H; h++) {
                int64_t kh = h / (H / KV);
                double mx = -INFINITY, sum = 0;
                for (int64_t s2 = 0; s2 <= t; s2++) {
                    double dot = 0;
                    for (int64_t i = 0; i < hd; i++)
                        dot += q[t][h * hd + i] * k[s2][kh * hd + i];
                    att[s2] = dot / sqrt((double)hd);
                    mx = att[s2] > mx ? att[s2] : mx;
                }
                for (int64_t s2 = 0; s2 <= t; s2++)
                    sum += att[s2] = exp(att[s2] - mx);
                for (int64_t i = 0; i < hd; i++) {
                    a[h * hd + i] = 0;
                    for (int64_t s2 = 0; s2 <= t; s2++)
                        a[h * hd + i] += att[s2] / sum * v[s2][kh * hd + i];
                }
            }
            ref_matvec(l2c_model_weight(m, l, L2C_WO, &r, &c), d, qd, a, o);
            for (int64_t i = 0; i < d; i++)
                x[t][i] += o[i];
        }
        for (int64_t t = 0; t < T; t++) {
            ref_rmsnorm(x[t], m->rms_ffn + l * d, d, m->norm_eps, xn);
            ref_matvec(l2c_model_weight(m, l, L2C_W1, &r, &c), hid, d, xn, g);
            ref_matvec(l2c_model_weight(m, l, L2C_W3, &r, &c), hid, d, xn, u);
            for (int64_t i = 0; i < hid; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            ref_matvec(l2c_model_weight(m, l, L2C_W2, &r, &c), d, hid, g, o);
            for (int64_t i = 0; i < d; i++)
                x[t][i] += o[i];
        }
    }
    l2c_linear lin[S_L][L2C_N_LINEARS];
    l2c_net net;
    if (m->c.n_layers > S_L)
        return INFINITY;
    l2c_net_init_fp32(&net, m, lin);
    if (l2c_forward(&net, tok, T, logits))
        return INFINITY;
    double worst = 0;
    for (int64_t t = 0; t < T; t++) {
        ref_rmsnorm(x[t], m->rms_final, d, m->norm_eps, xn);
        ref_matvec(m->wcls, V, d, xn, o);
        for (int64_t j = 0; j < V; j++) {
            double e = fabs((double)logits[t * V + j] - o[j]) / (1 + fabs(o[j]));
            worst = e > worst ? e : worst;
        }
    }
    return worst;
}

/* A folder with the small model: config edited by the caller, tensors as given. */
static void make_small(const char *dir, json_t *cfg, const tensor *t, int32_t n)
{
    mkdir(dir, 0700);
    CHECK(json_dump_file(cfg, fmt("%s/config.json", dir), JSON_INDENT(2)) == 0, "config");
    json_decref(cfg);
    if (t)
        CHECK(write_safetensors(fmt("%s/model.safetensors", dir), t, n) == 0, "safetensors");
}

/* The load fails, and the message names every one of the strings. */
static void expect_fail(const char *what, const char *dir, const char *a, const char *b)
{
    l2c_model m;
    char err[1024] = "";
    int rc = hf_model_load(dir, &m, NULL, err, sizeof err);
    CHECK(rc != 0, "%s: loaded", what);
    CHECK(strstr(err, a) != NULL, "%s: message does not name '%s': %s", what, a, err);
    CHECK(!b || strstr(err, b) != NULL, "%s: message does not name '%s': %s", what, b, err);
    if (rc == 0)
        l2c_model_free(&m);
    else
        printf("ok: %s: %s\n", what, err);
}

static int test_errors(void)
{
    char tmpl[] = "/tmp/hf_model_test.XXXXXX";
    const char *tmp = mkdtemp(tmpl);
    if (!tmp) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    static tensor t[64];
    int32_t n = small_tensors(t, "F32", NULL, 0);
    char err[1024];

    /* Element conversions. */
    CHECK(hf_f16_to_float(0x3c00) == 1.0f && hf_f16_to_float(0xc000) == -2.0f &&
              hf_f16_to_float(0x7bff) == 65504.0f && hf_f16_to_float(0x0001) == 0x1p-24f &&
              isinf(hf_f16_to_float(0x7c00)) && isnan(hf_f16_to_float(0x7e00)),
          "f16 conversions");
    CHECK(hf_bf16_to_float(0x3f80) == 1.0f && hf_bf16_to_float(0xc040) == -3.0f, "bf16");
    for (uint32_t h = 0; h < 0x7c00; h++)
        CHECK(float_to_f16(hf_f16_to_float((uint16_t)h)) == h, "f16 round trip %#x", h);

    /* Controls: the good folder loads, in F32, BF16, F16 and two shards, with the same values. */
    char good[1024];
    snprintf(good, sizeof good, "%s/good", tmp);
    make_small(good, small_config(), t, n);
    l2c_model m;
    int rc = hf_model_load(good, &m, NULL, err, sizeof err);
    CHECK(rc == 0, "good folder: %s", err);
    if (rc == 0) {
        CHECK(m.c.dim == S_D && m.q_dim == S_HEADS * S_HD && m.kv_dim == S_KV * S_HD &&
                  m.head_size == S_HD && m.rope_style == L2C_ROPE_HALF && m.norm_eps == 1e-6f &&
                  m.wcls == m.tok_emb && m.c.seq_len == 64,
              "good folder: config");
        CHECK(memcmp(m.tok_emb, small_values, S_V * S_D * sizeof(float)) == 0, "embedding");
        int64_t o, i;
        const float *wd = l2c_model_weight(&m, 1, L2C_W2, &o, &i);
        CHECK(o == S_D && i == S_H && memcmp(wd, small_values, (size_t)(o * i) * 4) == 0,
              "down_proj of layer 1");
        const int32_t tok[6] = {1, 5, 9, 3, 15, 0};
        double e = ref_compare(&m, tok, 6);
        printf("forward pass against the float64 reference: largest error %.2g\n", e);
        CHECK(e < 1e-5, "forward against the float64 reference: %g", e);
        l2c_model_free(&m);
    }
    for (int32_t k = 0; k < 2; k++) {
        const char *dtype = k ? "F16" : "BF16";
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/good_%s", tmp, dtype);
        static tensor t2[64];
        int32_t n2 = small_tensors(t2, dtype, NULL, 0);
        make_small(dir, small_config(), t2, n2);
        rc = hf_model_load(dir, &m, NULL, err, sizeof err);
        CHECK(rc == 0, "%s folder: %s", dtype, err);
        if (rc == 0) {
            int64_t o, i;
            const float *wq = l2c_model_weight(&m, 0, L2C_WQ, &o, &i);
            CHECK(memcmp(wq, small_values, (size_t)(o * i) * 4) == 0, "%s values", dtype);
            l2c_model_free(&m);
        }
    }

    /* config.json */
    json_t *c = small_config();
    json_object_del(c, "hidden_size");
    make_small(fmt("%s/no_hidden", tmp), c, t, n);
    expect_fail("config without hidden_size", fmt("%s/no_hidden", tmp), "config.json",
                "hidden_size");
    c = small_config();
    json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor",
                                                     2.0));
    make_small(fmt("%s/rope_scaling", tmp), c, t, n);
    expect_fail("rope_scaling set", fmt("%s/rope_scaling", tmp), "config.json", "rope_scaling");
    c = small_config();
    json_object_set_new(c, "model_type", json_string("gpt2"));
    make_small(fmt("%s/gpt2", tmp), c, t, n);
    expect_fail("model_type gpt2", fmt("%s/gpt2", tmp), "config.json", "model_type");
    c = small_config();
    json_object_set_new(c, "attention_bias", json_true());
    make_small(fmt("%s/attn_bias", tmp), c, t, n);
    expect_fail("attention_bias", fmt("%s/attn_bias", tmp), "config.json", "attention_bias");
    c = small_config();
    json_object_set_new(c, "mlp_bias", json_true());
    make_small(fmt("%s/mlp_bias", tmp), c, t, n);
    expect_fail("mlp_bias", fmt("%s/mlp_bias", tmp), "config.json", "mlp_bias");
    c = small_config();
    json_object_set_new(c, "hidden_act", json_string("gelu"));
    make_small(fmt("%s/gelu", tmp), c, t, n);
    expect_fail("hidden_act gelu", fmt("%s/gelu", tmp), "config.json", "hidden_act");
    c = small_config();
    json_object_set_new(c, "model_type", json_string("mistral"));
    json_object_set_new(c, "sliding_window", json_integer(4096));
    make_small(fmt("%s/sliding", tmp), c, t, n);
    expect_fail("mistral sliding_window", fmt("%s/sliding", tmp), "config.json",
                "sliding_window");
    c = small_config();
    json_object_set_new(c, "model_type", json_string("mistral"));
    json_object_set_new(c, "sliding_window", json_null());
    make_small(fmt("%s/mistral", tmp), c, t, n);
    rc = hf_model_load(fmt("%s/mistral", tmp), &m, NULL, err, sizeof err);
    CHECK(rc == 0, "mistral without a sliding window: %s", err);
    if (rc == 0)
        l2c_model_free(&m);
    /* head_dim given: queries 2 x 6 = 12 wide on a width of 8; heads of 6, theta 500000. */
    static tensor th[64];
    int32_t nh = small_tensors_hd(th, "F32", NULL, 0, 6);
    c = small_config();
    json_object_set_new(c, "head_dim", json_integer(6));
    json_object_set_new(c, "rope_theta", json_real(500000.0));
    make_small(fmt("%s/head_dim", tmp), c, th, nh);
    rc = hf_model_load(fmt("%s/head_dim", tmp), &m, NULL, err, sizeof err);
    CHECK(rc == 0, "head_dim 6: %s", err);
    if (rc == 0) {
        CHECK(m.q_dim == 12 && m.head_size == 6 && m.kv_dim == 6, "head_dim 6: widths");
        const int32_t tok[7] = {1, 4, 4, 2, 11, 7, 3};
        double e = ref_compare(&m, tok, 7);
        printf("head_dim 6 forward pass against the float64 reference: largest error %.2g\n", e);
        CHECK(e < 1e-5, "head_dim 6 forward against the float64 reference: %g", e);
        l2c_model_free(&m);
    }
    /* Heads of 88 = 64 + 16 + 8 channels: the engine's attention takes its widest value
     * chunks, a 16-channel vector and single channels, over 4 queries and then 3. */
    nh = small_tensors_hd(th, "F32", NULL, 0, 88);
    c = small_config();
    json_object_set_new(c, "head_dim", json_integer(88));
    make_small(fmt("%s/head_dim88", tmp), c, th, nh);
    rc = hf_model_load(fmt("%s/head_dim88", tmp), &m, NULL, err, sizeof err);
    CHECK(rc == 0, "head_dim 88: %s", err);
    if (rc == 0) {
        const int32_t tok[7] = {1, 4, 4, 2, 11, 7, 3};
        double e = ref_compare(&m, tok, 7);
        printf("head_dim 88 forward pass against the float64 reference: largest error %.2g\n",
               e);
        CHECK(e < 1e-5, "head_dim 88 forward against the float64 reference: %g", e);
        l2c_model_free(&m);
    }
    /* Token ids as lists or null, num_key_value_heads null (= heads). */
    c = small_config();
    json_object_set_new(c, "eos_token_id", json_pack("[i, i]", 2, 3));
    json_object_set_new(c, "bos_token_id", json_null());
    json_object_set_new(c, "num_key_value_heads", json_null());
    CHECK(json_dump_file(c, fmt("%s/ids.json", tmp), 0) == 0, "config");
    json_decref(c);
    hf_config hc;
    rc = hf_config_load(fmt("%s/ids.json", tmp), &hc, err, sizeof err);
    CHECK(rc == 0 && hc.eos_token_id == 2 && hc.bos_token_id == -1 &&
              hc.num_key_value_heads == S_HEADS && hc.head_dim == S_D / S_HEADS &&
              hc.tie_word_embeddings == 1 && hc.rms_norm_eps == 1e-6 && hc.rope_theta == 10000,
          "token ids as a list and null: %s", err);
    c = small_config();
    json_object_set_new(c, "num_key_value_heads", json_integer(3));
    make_small(fmt("%s/kv3", tmp), c, t, n);
    expect_fail("num_key_value_heads 3 of 2", fmt("%s/kv3", tmp), "config.json",
                "num_key_value_heads");
    c = small_config();
    json_object_set_new(c, "num_hidden_layers", json_string("2"));
    make_small(fmt("%s/str_layers", tmp), c, t, n);
    expect_fail("num_hidden_layers a string", fmt("%s/str_layers", tmp), "config.json",
                "num_hidden_layers");
    mkdir(fmt("%s/bad_json", tmp), 0700);
    write_text(fmt("%s/bad_json/config.json", tmp), "{\"model_type\": \"llama\",");
    expect_fail("config.json not JSON", fmt("%s/bad_json", tmp), "config.json", NULL);
    mkdir(fmt("%s/empty", tmp), 0700);
    expect_fail("no config.json", fmt("%s/empty", tmp), "config.json", NULL);

    /* Tensors */
    make_small(fmt("%s/no_weights", tmp), small_config(), NULL, 0);
    expect_fail("no safetensors", fmt("%s/no_weights", tmp), "model.safetensors", NULL);
    static tensor tb[64];
    int32_t nb = small_tensors(tb, "F32", "model.layers.1.self_attn.k_proj.weight", 5);
    make_small(fmt("%s/bad_shape", tmp), small_config(), tb, nb);
    expect_fail("k_proj shape", fmt("%s/bad_shape", tmp), "bad_shape/model.safetensors",
                "model.layers.1.self_attn.k_proj.weight");
    snprintf(t[0].name, sizeof t[0].name, "lm_head.weight");
    make_small(fmt("%s/tied_as_lm_head", tmp), small_config(), t, n);
    snprintf(t[0].name, sizeof t[0].name, "model.embed_tokens.weight");
    rc = hf_model_load(fmt("%s/tied_as_lm_head", tmp), &m, NULL, err, sizeof err);
    CHECK(rc == 0, "tied embedding stored as lm_head.weight: %s", err);
    if (rc == 0)
        l2c_model_free(&m);
    c = small_config();
    json_object_set_new(c, "tie_word_embeddings", json_false());
    make_small(fmt("%s/untied", tmp), c, t, n);
    expect_fail("untied without lm_head", fmt("%s/untied", tmp), "model.safetensors",
                "lm_head.weight");
    make_small(fmt("%s/missing_norm", tmp), small_config(), t, n - 1);
    expect_fail("model.norm missing", fmt("%s/missing_norm", tmp), "model.safetensors",
                "model.norm.weight");
    nb = small_tensors(tb, "F32", NULL, 0);
    snprintf(tb[nb].name, sizeof tb[nb].name, "model.layers.0.self_attn.q_proj.bias");
    tb[nb].dtype = "F32", tb[nb].n_dims = 1, tb[nb].shape[0] = S_HEADS * S_HD;
    tb[nb].data = small_values;
    make_small(fmt("%s/bias", tmp), small_config(), tb, nb + 1);
    expect_fail("a bias tensor", fmt("%s/bias", tmp), "model.safetensors",
                "model.layers.0.self_attn.q_proj.bias");

    /* A truncated file: the last tensor (model.norm.weight) runs past its end. */
    char trunc[1024];
    snprintf(trunc, sizeof trunc, "%s/truncated", tmp);
    make_small(trunc, small_config(), t, n);
    char st_path[1100];
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", trunc);
    struct stat st;
    CHECK(stat(st_path, &st) == 0 && truncate(st_path, st.st_size - 6) == 0, "truncate");
    expect_fail("truncated data", trunc, "truncated/model.safetensors", "model.norm.weight");
    CHECK(truncate(st_path, 100) == 0, "truncate");
    expect_fail("truncated header", trunc, "truncated/model.safetensors", "header length");
    CHECK(truncate(st_path, 3) == 0, "truncate");
    expect_fail("3-byte file", trunc, "truncated/model.safetensors", NULL);

    /* Hand-written headers: each refused when the checkpoint is opened or the tensor read. */
    static const struct {
        const char *header, *what, *named;
    } raw[] = {
        {"{\"a.weight\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}",
         "unknown dtype", "'a.weight': unknown dtype"},
        {"{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}",
         "byte count", "'a.weight': 16 bytes for 3"},
        {"{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         "overlap", "overlap"},
        {"{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
         "\"data_offsets\":[0,16]}}",
         "2^80 elements", "'a.weight': implausibly many"},
        {"{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,0]}}",
         "end before begin", "'a.weight': data_offsets [8, 0]"},
        {"{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[4]}}", "no data_offsets",
         "'a.weight': expected an object"},
        {"[1, 2]", "header not an object", "not a JSON object"},
        {"{\"a.weight\":", "header not JSON", "not valid JSON"},
        {"{\"a.weight\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
         "I32 tensor", "'a.weight': dtype I32"},
    };
    for (size_t r = 0; r < sizeof raw / sizeof raw[0]; r++) {
        char rd[1024];
        snprintf(rd, sizeof rd, "%s/raw%zu", tmp, r);
        mkdir(rd, 0700);
        size_t len = strlen(raw[r].header);
        unsigned char le[8] = {(unsigned char)len, (unsigned char)(len >> 8), 0, 0, 0, 0, 0, 0};
        unsigned char zeros[16] = {0};
        FILE *rf = fopen(fmt("%s/model.safetensors", rd), "wb");
        CHECK(rf && write_bytes(rf, le, 8) == 0 && write_bytes(rf, raw[r].header, len) == 0 &&
                  write_bytes(rf, zeros, sizeof zeros) == 0 && fclose(rf) == 0,
              "raw file");
        hf_checkpoint ck;
        float out4[4];
        int64_t four = 4;
        err[0] = '\0';
        rc = hf_checkpoint_open(rd, &ck, err, sizeof err);
        if (rc == 0) {
            rc = hf_checkpoint_read(&ck, "a.weight", 1, &four, out4, err, sizeof err);
            hf_checkpoint_close(&ck);
        }
        CHECK(rc != 0 && strstr(err, "model.safetensors") && strstr(err, raw[r].named),
              "%s: %s", raw[r].what, err);
        if (rc != 0)
            printf("ok: %s: %s\n", raw[r].what, err);
    }

    /* Shards: good, then an index naming a missing shard, then a tensor not in its shard. */
    char sh[1024];
    snprintf(sh, sizeof sh, "%s/sharded", tmp);
    make_small(sh, small_config(), NULL, 0);
    int32_t half = n / 2;
    CHECK(write_safetensors(fmt("%s/model-00001-of-00002.safetensors", sh), t, half) == 0 &&
              write_safetensors(fmt("%s/model-00002-of-00002.safetensors", sh), t + half,
                                n - half) == 0,
          "shards");
    json_t *map = json_object();
    for (int32_t i = 0; i < n; i++)
        json_object_set_new(map, t[i].name,
                            json_string(i < half ? "model-00001-of-00002.safetensors"
                                                 : "model-00002-of-00002.safetensors"));
    json_t *index = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", map);
    CHECK(json_dump_file(index, fmt("%s/model.safetensors.index.json", sh), JSON_INDENT(2)) == 0,
          "index");
    rc = hf_model_load(sh, &m, NULL, err, sizeof err);
    CHECK(rc == 0, "sharded folder: %s", err);
    if (rc == 0) {
        CHECK(memcmp(m.rms_final, small_values, S_D * sizeof(float)) == 0, "sharded values");
        l2c_model_free(&m);
    }
    char lost[1100];
    snprintf(lost, sizeof lost, "%s/model-00002-of-00002.safetensors", sh);
    CHECK(rename(lost, fmt("%s.away", lost)) == 0, "rename");
    expect_fail("index naming a missing shard", sh, "model.safetensors.index.json",
                "model-00002-of-00002.safetensors");
    CHECK(rename(fmt("%s.away", lost), lost) == 0, "rename");
    json_object_set_new(map, "model.norm.weight",
                        json_string("model-00001-of-00002.safetensors"));
    CHECK(json_dump_file(index, fmt("%s/model.safetensors.index.json", sh), 0) == 0, "index");
    expect_fail("tensor not in its shard", sh, "model.safetensors.index.json",
                "model.norm.weight");
    json_object_set_new(map, "model.norm.weight", json_string("../x.safetensors"));
    CHECK(json_dump_file(index, fmt("%s/model.safetensors.index.json", sh), 0) == 0, "index");
    expect_fail("shard outside the folder", sh, "model.safetensors.index.json",
                "model.norm.weight");
    json_decref(index);

    /* Token files */
    l2c_text text;
    write_text(fmt("%s/odd.tok", tmp), "abcde");
    CHECK(hf_tokens_load(fmt("%s/odd.tok", tmp), 1, S_V, &text, err, sizeof err) != 0 &&
              strstr(err, "odd.tok"),
          "5-byte token file: %s", err);
    const unsigned char ids[] = {1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0};
    FILE *f = fopen(fmt("%s/ok.tok", tmp), "wb");
    CHECK(f && write_bytes(f, ids, sizeof ids) == 0 && fclose(f) == 0, "write");
    rc = hf_tokens_load(fmt("%s/ok.tok", tmp), 1, S_V, &text, err, sizeof err);
    CHECK(rc == 0 && text.n_tokens == 5 && text.n_stories == 2 && text.story_start[1] == 2 &&
              text.story_start[2] == 5 && text.tokens[4] == 9,
          "token file: %s", err);
    if (rc == 0)
        l2c_text_free(&text);
    CHECK(hf_tokens_load(fmt("%s/ok.tok", tmp), 1, 8, &text, err, sizeof err) != 0 &&
              strstr(err, "ok.tok") && strstr(err, "token 4"),
          "id 9 of vocabulary 8: %s", err);

    rm_tree(tmp);
    printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}

/* ---- tinystories-656k ---- */

static double perplexity(const char *dir, const char *tok, int64_t *predicted)
{
    l2c_model m;
    hf_config cfg;
    l2c_text text;
    l2c_window *w = NULL;
    char err[1024];
    if (hf_model_load(dir, &m, &cfg, err, sizeof err)) {
        printf("FAILED: %s\n", err);
        failures++;
        return 0;
    }
    double nll = -1;
    *predicted = 0;
    if (hf_tokens_load(tok, cfg.bos_token_id, m.c.vocab_size, &text, err, sizeof err)) {
        printf("FAILED: %s\n", err);
        failures++;
        l2c_model_free(&m);
        return 0;
    }
    l2c_linear(*lin)[L2C_N_LINEARS] = calloc((size_t)m.c.n_layers, sizeof *lin);
    int64_t n_w = l2c_windows(&text, 256, 0, &w);
    if (lin && n_w > 0) {
        l2c_net net;
        l2c_net_init_fp32(&net, &m, lin);
        if (l2c_mean_nll(&net, &text, w, n_w, &nll, predicted))
            nll = -1;
    }
    CHECK(nll >= 0, "%s: evaluation failed", dir);
    CHECK(text.n_tokens == 6715 && text.n_stories == 45, "%s: %lld tokens, %lld stories", tok,
          (long long)text.n_tokens, (long long)text.n_stories);
    free(w);
    free(lin);
    l2c_text_free(&text);
    l2c_model_free(&m);
    return exp(nll);
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int rc = !a || !b;
    char buf[4096];
    size_t k;
    while (!rc && (k = fread(buf, 1, sizeof buf, a)) > 0)
        rc = fwrite(buf, 1, k, b) != k;
    if (a)
        fclose(a);
    if (b && fclose(b))
        rc = 1;
    return rc ? -1 : 0;
}

static int test_perplexity(const char *models)
{
    char dir[1024], dev[1100];
    snprintf(dir, sizeof dir, "%s/tinystories-656k", models);
    snprintf(dev, sizeof dev, "%s/dev.tok", dir);
    if (access(fmt("%s/config.json", dir), R_OK) != 0 ||
        access(fmt("%s/model.safetensors", dir), R_OK) != 0 ||
        access(fmt("%s/dev.tok", dir), R_OK) != 0) {
        printf("skipped: %s (config.json, model.safetensors, dev.tok) is absent\n", dir);
        return 77;
    }
    int64_t predicted = 0;
    double fp32 = perplexity(dir, dev, &predicted);
    printf("tinystories-656k FP32 dev perplexity %.6f over %lld predicted tokens\n", fp32,
           (long long)predicted);
    CHECK(fabs(fp32 - 16.9958) < 0.5e-4, "FP32 perplexity %.6f, expected 16.9958", fp32);
    CHECK(predicted == 6669, "predicted %lld, expected 6669", (long long)predicted);

    /* The same model written here as BF16, F16 and two F32 shards. */
    hf_checkpoint ck;
    char err[1024];
    if (hf_checkpoint_open(dir, &ck, err, sizeof err)) {
        printf("FAILED: %s\n", err);
        return 1;
    }
    char tmpl[] = "/tmp/hf_model_656k.XXXXXX";
    const char *tmp = mkdtemp(tmpl);
    tensor *t = calloc((size_t)ck.n_tensors, sizeof *t);
    if (!tmp || !t) {
        printf("FAILED: temporary directory or memory\n");
        hf_checkpoint_close(&ck);
        free(t);
        return 1;
    }
    int32_t n = (int32_t)ck.n_tensors;
    int64_t not_bf16 = 0;
    for (int32_t i = 0; i < n; i++) {
        const hf_tensor *s = &ck.tensors[i];
        snprintf(t[i].name, sizeof t[i].name, "%s", s->name);
        t[i].n_dims = s->n_dims;
        t[i].shape[0] = s->shape[0];
        t[i].shape[1] = s->n_dims > 1 ? s->shape[1] : 0;
        t[i].data = malloc((size_t)s->numel * sizeof(float));
        if (!t[i].data || hf_checkpoint_read(&ck, s->name, s->n_dims, s->shape, t[i].data, err,
                                             sizeof err)) {
            printf("FAILED: %s\n", err);
            failures++;
            n = i + 1;
            break;
        }
        for (int64_t j = 0; j < s->numel; j++) {
            uint32_t u;
            memcpy(&u, &t[i].data[j], sizeof u);
            not_bf16 += (u & 0xffff) != 0;
        }
    }
    hf_checkpoint_close(&ck);
    CHECK(not_bf16 == 0, "%lld values are not exactly BF16", (long long)not_bf16);
    static const char *dtypes[] = {"BF16", "F16", "F32"};
    for (int32_t k = 0; k < 3 && !failures; k++) {
        char out[1024];
        snprintf(out, sizeof out, "%s/%s", tmp, k == 2 ? "shards" : dtypes[k]);
        mkdir(out, 0700);
        CHECK(copy_file(fmt("%s/config.json", dir), fmt("%s/config.json", out)) == 0, "copy");
        for (int32_t i = 0; i < n; i++)
            t[i].dtype = dtypes[k];
        if (k < 2) {
            CHECK(write_safetensors(fmt("%s/model.safetensors", out), t, n) == 0, "write");
        } else {
            int32_t half = n / 2;
            json_t *map = json_object();
            for (int32_t i = 0; i < n; i++)
                json_object_set_new(map, t[i].name, json_string(i < half ? "a.safetensors"
                                                                          : "b.safetensors"));
            json_t *index = json_pack("{s:o}", "weight_map", map);
            CHECK(write_safetensors(fmt("%s/a.safetensors", out), t, half) == 0 &&
                      write_safetensors(fmt("%s/b.safetensors", out), t + half, n - half) == 0 &&
                      json_dump_file(index, fmt("%s/model.safetensors.index.json", out), 0) == 0,
                  "write shards");
            json_decref(index);
        }
        int64_t pred = 0;
        double ppl = perplexity(out, dev, &pred);
        printf("%s copy: perplexity %.6f\n", k == 2 ? "two F32 shards" : dtypes[k], ppl);
        /* BF16 and the shards hold exactly the same floats; F16 has fewer exponent bits. */
        if (k == 1)
            CHECK(fabs(ppl - fp32) < 0.5e-4, "F16 perplexity %.6f, FP32 %.6f", ppl, fp32);
        else
            CHECK(ppl == fp32, "%s perplexity %.6f, FP32 %.6f", dtypes[k], ppl, fp32);
    }
    for (int32_t i = 0; i < n; i++)
        free(t[i].data);
    free(t);
    rm_tree(tmp);
    printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "errors") == 0)
        return test_errors();
    if (argc >= 3 && strcmp(argv[1], "perplexity") == 0)
        return test_perplexity(argv[2]);
    fprintf(stderr, "usage: test_hf_model errors | perplexity MODELS_DIR\n");
    return 2;
}
