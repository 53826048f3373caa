/* Reads a llama2.c legacy checkpoint (run.c's format) into memory. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t err_len, const char *msg, const char *path)
{
    snprintf(err, err_len, "%s: %s", path, msg);
    return -1;
}

static void shape(const l2c_model *m, int32_t which, int64_t *out_dim, int64_t *in_dim)
{
    const l2c_config *c = &m->c;
    static const int by_which[L2C_N_LINEARS] = {0, 1, 1, 0, 2, 3, 2};
    if (which == L2C_WQ || which == L2C_WO) {
        *out_dim = which == L2C_WQ ? m->q_dim : c->dim;
        *in_dim = which == L2C_WQ ? c->dim : m->q_dim;
        return;
    }
    switch (by_which[which]) {
    case 0: *out_dim = c->dim, *in_dim = c->dim; break;
    case 1: *out_dim = m->kv_dim, *in_dim = c->dim; break;
    case 2: *out_dim = c->hidden_dim, *in_dim = c->dim; break;
    default: *out_dim = c->dim, *in_dim = c->hidden_dim; break;
    }
}

int l2c_model_load(const char *path, l2c_model *m, char *err, size_t err_len)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, err_len, "cannot open", path);
    int32_t hdr[7];
    long size = -1;
    if (fread(hdr, sizeof hdr[0], 7, f) == 7 && fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, (long)sizeof hdr, SEEK_SET) != 0) {
        fclose(f);
        return fail(err, err_len, "cannot read the header", path);
    }
    l2c_config *c = &m->c;
    c->dim = hdr[0], c->hidden_dim = hdr[1], c->n_layers = hdr[2], c->n_heads = hdr[3];
    c->n_kv_heads = hdr[4], c->seq_len = hdr[6];
    int shared = hdr[5] > 0;
    c->vocab_size = shared ? hdr[5] : -hdr[5];
    /* Bounds keep every size product below far below overflow. */
    if (c->dim <= 0 || c->dim > 65536 || c->hidden_dim <= 0 || c->hidden_dim > 262144 ||
        c->n_layers <= 0 || c->n_layers > 1024 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads || c->dim % c->n_heads ||
        (c->dim / c->n_heads) % 2 || c->vocab_size <= 0 || c->vocab_size > 1 << 20 ||
        c->seq_len <= 0 || c->seq_len > 1 << 20) {
        fclose(f);
        return fail(err, err_len, "implausible header", path);
    }
    m->head_size = c->dim / c->n_heads;
    m->kv_dim = c->dim / c->n_heads * c->n_kv_heads;
    m->q_dim = c->dim;
    m->rope_style = L2C_ROPE_INTERLEAVED;
    m->rope_theta = 10000.0;
    m->norm_eps = 1e-5f;
    int64_t d = c->dim, h = c->hidden_dim, L = c->n_layers, v = c->vocab_size, kv = m->kv_dim;
    int64_t per_layer = d + d * d + 2 * kv * d + d * d + d + 3 * h * d;
    int64_t freq = (int64_t)c->seq_len * (m->head_size / 2) * 2;
    int64_t n = v * d + L * per_layer + d + freq + (shared ? 0 : v * d);
    if ((int64_t)size - (int64_t)sizeof hdr != n * (int64_t)sizeof(float)) {
        fclose(f);
        return fail(err, err_len, "size does not match the header", path);
    }
    m->data = malloc((size_t)n * sizeof(float));
    if (!m->data || fread(m->data, sizeof(float), (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(m->data);
        m->data = NULL;
        return fail(err, err_len, "cannot read the weights", path);
    }
    fclose(f);
    const float *p = m->data;
    m->tok_emb = p, p += v * d;
    m->rms_att = p, p += L * d;
    m->w[L2C_WQ] = p, p += L * d * d;
    m->w[L2C_WK] = p, p += L * kv * d;
    m->w[L2C_WV] = p, p += L * kv * d;
    m->w[L2C_WO] = p, p += L * d * d;
    m->rms_ffn = p, p += L * d;
    m->w[L2C_W1] = p, p += L * h * d;
    m->w[L2C_W2] = p, p += L * d * h;
    m->w[L2C_W3] = p, p += L * h * d;
    m->rms_final = p, p += d;
    p += freq; /* legacy rotary tables: the angles are recomputed */
    m->wcls = shared ? m->tok_emb : p;
    return 0;
}

void l2c_model_free(l2c_model *m)
{
    free(m->data);
    memset(m, 0, sizeof *m);
}

const float *l2c_model_weight(const l2c_model *m, int32_t layer, int32_t which, int64_t *out_dim,
                              int64_t *in_dim)
{
    shape(m, which, out_dim, in_dim);
    return m->w[which] + (int64_t)layer * *out_dim * *in_dim;
}
