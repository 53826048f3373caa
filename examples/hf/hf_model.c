/* Hugging Face tensor names and shapes onto the engine's model. */
#include "hf_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int hf_is_model_dir(const char *path)
{
    struct stat st;
    char *cfg = join(path, "config.json");
    int yes = cfg && stat(path, &st) == 0 && S_ISDIR(st.st_mode) && stat(cfg, &st) == 0;
    free(cfg);
    return yes;
}

void hf_model_shape(const hf_config *c, int32_t which, int64_t *out_dim, int64_t *in_dim)
{
    int64_t d = c->hidden_size, h = c->intermediate_size;
    int64_t q = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kv = (int64_t)c->num_key_value_heads * c->head_dim;
    switch (which) {
    case L2C_WQ: *out_dim = q, *in_dim = d; break;
    case L2C_WK:
    case L2C_WV: *out_dim = kv, *in_dim = d; break;
    case L2C_WO: *out_dim = d, *in_dim = q; break;
    case L2C_W2: *out_dim = d, *in_dim = h; break;
    default: *out_dim = h, *in_dim = d; break; /* W1 (gate), W3 (up) */
    }
}

/* Hugging Face name of linear `which` in block `layer`. */
static void linear_name(int32_t layer, int32_t which, char *buf, size_t len)
{
    static const char *names[L2C_N_LINEARS] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj",    "mlp.down_proj",    "mlp.up_proj",
    };
    snprintf(buf, len, "model.layers.%d.%s.weight", layer, names[which]);
}

/* Checks (read 0) or converts (read 1) the tensors the engine reads. */
typedef struct visit {
    const hf_model *hm;
    int read;
    char *err;
    size_t err_len;
} visit;

static int one(const visit *v, const char *name, int32_t n_dims, int64_t a, int64_t b,
               float *dst)
{
    int64_t shape[2] = {a, b};
    if (v->read)
        return hf_checkpoint_read(&v->hm->ck, name, n_dims, shape, dst, v->err, v->err_len);
    return hf_checkpoint_check(&v->hm->ck, name, n_dims, shape, v->err, v->err_len);
}

static int layer_tensors(const visit *v, int32_t layer, const hf_layer *dst)
{
    const hf_config *c = &v->hm->cfg;
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", layer);
    if (one(v, name, 1, c->hidden_size, 0, dst ? dst->rms_att : NULL))
        return -1;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", layer);
    if (one(v, name, 1, c->hidden_size, 0, dst ? dst->rms_ffn : NULL))
        return -1;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        int64_t out_dim, in_dim;
        hf_model_shape(c, k, &out_dim, &in_dim);
        linear_name(layer, k, name, sizeof name);
        if (one(v, name, 2, out_dim, in_dim, dst ? dst->w[k] : NULL))
            return -1;
    }
    return 0;
}

/* Biases the config rules out must not be in the checkpoint either. */
static int no_biases(const hf_model *hm, char *err, size_t err_len)
{
    for (int64_t i = 0; i < hm->ck.n_tensors; i++) {
        const hf_tensor *t = &hm->ck.tensors[i];
        size_t n = strlen(t->name);
        if (strncmp(t->name, "model.layers.", 13) == 0 && n > 5 &&
            strcmp(t->name + n - 5, ".bias") == 0) {
            snprintf(err, err_len,
                     "%s: tensor '%s': a bias, but config.json has no attention or MLP biases",
                     hm->ck.shards[t->shard].path, t->name);
            return -1;
        }
    }
    return 0;
}

/* The token embedding. With tied embeddings a checkpoint may store it only once, under either
 * name (transformers drops one of two shared tensors when it saves). */
static const char *embed_name(const hf_model *hm)
{
    if (hm->cfg.tie_word_embeddings && !hf_checkpoint_find(&hm->ck, "model.embed_tokens.weight") &&
        hf_checkpoint_find(&hm->ck, "lm_head.weight"))
        return "lm_head.weight";
    return "model.embed_tokens.weight";
}

int hf_model_open(const char *dir, hf_model *hm, char *err, size_t err_len)
{
    memset(hm, 0, sizeof *hm);
    char *cfg_path = join(dir, "config.json");
    if (!cfg_path) {
        snprintf(err, err_len, "%s: out of memory", dir);
        return -1;
    }
    int rc = hf_config_load(cfg_path, &hm->cfg, err, err_len);
    free(cfg_path);
    if (rc || hf_checkpoint_open(dir, &hm->ck, err, err_len))
        return -1;
    const hf_config *c = &hm->cfg;
    visit v = {hm, 0, err, err_len};
    rc = one(&v, embed_name(hm), 2, c->vocab_size, c->hidden_size, NULL) ||
         one(&v, "model.norm.weight", 1, c->hidden_size, 0, NULL) ||
         (!c->tie_word_embeddings &&
          one(&v, "lm_head.weight", 2, c->vocab_size, c->hidden_size, NULL)) ||
         no_biases(hm, err, err_len);
    for (int32_t l = 0; !rc && l < c->num_hidden_layers; l++)
        rc = layer_tensors(&v, l, NULL);
    if (rc) {
        hf_model_close(hm);
        return -1;
    }
    return 0;
}

void hf_model_close(hf_model *hm)
{
    hf_checkpoint_close(&hm->ck);
    memset(hm, 0, sizeof *hm);
}

int hf_model_read_layer(const hf_model *hm, int32_t layer, const hf_layer *dst, char *err,
                        size_t err_len)
{
    visit v = {hm, 1, err, err_len};
    return layer_tensors(&v, layer, dst);
}

void hf_model_set_shape(const hf_config *c, l2c_model *m)
{
    l2c_config *lc = &m->c;
    lc->dim = c->hidden_size, lc->hidden_dim = c->intermediate_size;
    lc->n_layers = c->num_hidden_layers, lc->n_heads = c->num_attention_heads;
    lc->n_kv_heads = c->num_key_value_heads, lc->vocab_size = c->vocab_size;
    lc->seq_len = c->max_position_embeddings;
    m->head_size = c->head_dim;
    m->kv_dim = c->num_key_value_heads * c->head_dim;
    m->q_dim = c->num_attention_heads * c->head_dim;
    m->rope_style = L2C_ROPE_HALF;
    m->rope_theta = c->rope_theta;
    m->norm_eps = (float)c->rms_norm_eps;
}

int hf_model_load(const char *dir, l2c_model *m, hf_config *cfg, char *err, size_t err_len)
{
    memset(m, 0, sizeof *m);
    hf_model hm;
    if (hf_model_open(dir, &hm, err, err_len))
        return -1;
    const hf_config *c = &hm.cfg;
    const l2c_config *lc = &m->c;
    hf_model_set_shape(c, m);

    /* The layout of a llama2.c file, so that l2c_model_weight and l2c_model_free apply. */
    int64_t d = lc->dim, h = lc->hidden_dim, L = lc->n_layers, v = lc->vocab_size;
    int64_t kv = m->kv_dim, q = m->q_dim;
    int64_t per_layer = 2 * d + 2 * q * d + 2 * kv * d + 3 * h * d;
    int64_t n = v * d + L * per_layer + d + (c->tie_word_embeddings ? 0 : v * d);
    float *p = malloc((size_t)n * sizeof *p);
    if (!p) {
        snprintf(err, err_len, "%s: out of memory for %lld floats", dir, (long long)n);
        hf_model_close(&hm);
        return -1;
    }
    m->data = p;
    float *emb = p, *rms_att, *rms_ffn, *rms_final, *w[L2C_N_LINEARS];
    p += v * d;
    rms_att = p, p += L * d;
    w[L2C_WQ] = p, p += L * q * d;
    w[L2C_WK] = p, p += L * kv * d;
    w[L2C_WV] = p, p += L * kv * d;
    w[L2C_WO] = p, p += L * d * q;
    rms_ffn = p, p += L * d;
    w[L2C_W1] = p, p += L * h * d;
    w[L2C_W2] = p, p += L * d * h;
    w[L2C_W3] = p, p += L * h * d;
    rms_final = p, p += d;
    float *cls = c->tie_word_embeddings ? emb : p;
    int64_t shape[2] = {v, d};
    int rc = hf_checkpoint_read(&hm.ck, embed_name(&hm), 2, shape, emb, err, err_len) ||
             hf_checkpoint_read(&hm.ck, "model.norm.weight", 1, shape + 1, rms_final, err,
                                err_len) ||
             (!c->tie_word_embeddings &&
              hf_checkpoint_read(&hm.ck, "lm_head.weight", 2, shape, cls, err, err_len));
    for (int32_t l = 0; !rc && l < L; l++) {
        hf_layer dst;
        dst.rms_att = rms_att + l * d;
        dst.rms_ffn = rms_ffn + l * d;
        for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
            int64_t out_dim, in_dim;
            hf_model_shape(c, k, &out_dim, &in_dim);
            dst.w[k] = w[k] + l * out_dim * in_dim;
        }
        rc = hf_model_read_layer(&hm, l, &dst, err, err_len);
    }
    if (cfg)
        *cfg = hm.cfg;
    hf_model_close(&hm);
    if (rc) {
        l2c_model_free(m);
        return -1;
    }
    m->tok_emb = emb, m->rms_att = rms_att, m->rms_ffn = rms_ffn, m->rms_final = rms_final;
    m->wcls = cls;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++)
        m->w[k] = w[k];
    return 0;
}

int hf_tokens_load(const char *path, int32_t bos, int32_t vocab, l2c_text *out, char *err,
                   size_t err_len)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open", path);
        return -1;
    }
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size <= 0 || size % 4 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(err, err_len, "%s: %ld bytes, expected a positive multiple of 4 (int32 ids)",
                 path, size);
        return -1;
    }
    int64_t n = size / 4, stories = 0;
    unsigned char *raw = malloc((size_t)size);
    out->tokens = malloc((size_t)n * sizeof *out->tokens);
    out->story_start = malloc((size_t)(n + 1) * sizeof *out->story_start);
    int rc = -1;
    if (!raw || !out->tokens || !out->story_start) {
        snprintf(err, err_len, "%s: out of memory", path);
        goto out;
    }
    if (fread(raw, 1, (size_t)size, f) != (size_t)size) {
        snprintf(err, err_len, "%s: cannot read", path);
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *b = raw + 4 * i;
        int32_t id = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                               (uint32_t)b[3] << 24);
        if (id < 0 || id >= vocab) {
            snprintf(err, err_len, "%s: token %lld: id %d outside the vocabulary [0, %d)", path,
                     (long long)i, id, vocab);
            goto out;
        }
        if (i == 0 || id == bos)
            out->story_start[stories++] = i;
        out->tokens[i] = id;
    }
    out->story_start[stories] = n;
    out->n_stories = stories;
    out->n_tokens = n;
    rc = 0;
out:
    fclose(f);
    free(raw);
    if (rc)
        l2c_text_free(out);
    return rc;
}
