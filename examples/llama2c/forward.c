/* The transformer: RMSNorm, rotary attention with grouped key/value heads, SwiGLU FFN. */
#include "forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int32_t l2c_input_of(int32_t which)
{
    static const int32_t inputs[L2C_N_LINEARS] = {L2C_IN_QKV, L2C_IN_QKV, L2C_IN_QKV, L2C_IN_WO,
                                                  L2C_IN_W13, L2C_IN_W2,  L2C_IN_W13};
    return inputs[which];
}

const char *l2c_input_name(int32_t input)
{
    static const char *names[L2C_N_INPUTS] = {"qkv", "wo", "w13", "w2"};
    return names[input];
}

void l2c_net_init_fp32(l2c_net *net, const l2c_model *m, l2c_linear (*lin)[L2C_N_LINEARS])
{
    memset(net, 0, sizeof *net);
    net->m = m;
    net->lin = lin;
    for (int32_t l = 0; l < m->c.n_layers; l++)
        for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
            lin[l][k].w = l2c_model_weight(m, l, k, &lin[l][k].out_dim, &lin[l][k].in_dim);
            lin[l][k].q = NULL;
        }
}

/* y[t, o] = sum_i x[t, i] w[o, i]; four partial sums let the compiler keep several in flight. */
static void matmul_wt(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                      float *y)
{
    for (int64_t t = 0; t < rows; t++) {
        const float *xt = x + t * in;
        for (int64_t o = 0; o < out; o++) {
            const float *wo = w + o * in;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t i = 0;
            for (; i + 4 <= in; i += 4) {
                s0 += xt[i] * wo[i];
                s1 += xt[i + 1] * wo[i + 1];
                s2 += xt[i + 2] * wo[i + 2];
                s3 += xt[i + 3] * wo[i + 3];
            }
            for (; i < in; i++)
                s0 += xt[i] * wo[i];
            y[t * out + o] = (s0 + s1) + (s2 + s3);
        }
    }
}

static int linear(const l2c_linear *lin, const float *x, int64_t rows, float *y)
{
    if (!lin->q) {
        matmul_wt(x, rows, lin->in_dim, lin->w, lin->out_dim, y);
        return 0;
    }
    dq_status st = dq_linear_forward(lin->q, x, rows, lin->in_dim, lin->in_dim, y, lin->out_dim,
                                     NULL, 0);
    if (st != DQ_OK) {
        fprintf(stderr, "dq_linear_forward: %s\n", dq_status_name(st));
        return -1;
    }
    return 0;
}

/* RMSNorm: o = w * x / sqrt(mean(x^2) + eps) (eps 1e-5 in run.c). */
static void rmsnorm(float *o, const float *x, const float *w, int64_t rows, int64_t dim,
                    float eps)
{
    for (int64_t t = 0; t < rows; t++) {
        float ss = 0;
        for (int64_t i = 0; i < dim; i++)
            ss += x[t * dim + i] * x[t * dim + i];
        ss = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++)
            o[t * dim + i] = w[i] * (ss * x[t * dim + i]);
    }
}

/* Rotary angles: cs[2 (t * half + i)] = cos, + 1 = sin of position pos0 + t, pair i of a head, with
 * frequency theta^(-2i / head_size). llama2.c files keep run.c's float arithmetic; Hugging
 * Face models compute the angles in double. */
static void rope_table(const l2c_model *m, int64_t pos0, int64_t rows, float *cs)
{
    int32_t hs = m->head_size, half = hs / 2;
    for (int64_t t = 0; t < rows; t++)
        for (int32_t i = 0; i < half; i++) {
            float *p = cs + 2 * (t * half + i);
            if (m->rope_style == L2C_ROPE_INTERLEAVED) {
                float freq = 1.0f / powf((float)m->rope_theta, (float)(2 * i) / (float)hs);
                float angle = (float)(pos0 + t) * freq;
                p[0] = cosf(angle), p[1] = sinf(angle);
            } else {
                double angle =
                    (double)(pos0 + t) * pow(m->rope_theta, -(double)(2 * i) / (double)hs);
                p[0] = (float)cos(angle), p[1] = (float)sin(angle);
            }
        }
}

/* Rotary embedding of every head of a [rows, width] matrix: on interleaved pairs (2i, 2i+1)
 * or on the pairs (i, i + head_size / 2) of rotate_half. */
static void rope(const l2c_model *m, const float *cs, float *v, int64_t rows, int64_t width)
{
    int32_t hs = m->head_size, half = hs / 2;
    int interleaved = m->rope_style == L2C_ROPE_INTERLEAVED;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t h = 0; h < width; h += hs)
            for (int32_t i = 0; i < half; i++) {
                float c = cs[2 * (t * half + i)], s = cs[2 * (t * half + i) + 1];
                float *a = v + t * width + h + (interleaved ? 2 * i : i);
                float *b = interleaved ? a + 1 : a + half;
                float x = *a, y = *b;
                *a = x * c - y * s;
                *b = x * s + y * c;
            }
}

/* Causal attention of the queries q [n] at positions pos0..pos0+n-1 over the keys and values
 * k, v [pos0 + n] of positions 0..pos0+n-1: out[t, head h] = softmax(q_t . k_s / sqrt(hs),
 * s <= pos0 + t) v_s with the key and value head of h. att holds pos0 + n scores. */
static void attention(const l2c_model *m, const float *q, const float *k, const float *v,
                      int64_t pos0, int64_t n, float *att, float *out)
{
    int32_t hs = m->head_size, kv_dim = m->kv_dim, dim = m->q_dim;
    int32_t group = m->c.n_heads / m->c.n_kv_heads;
    float scale = 1.0f / sqrtf((float)hs);
    for (int64_t t = 0; t < n; t++)
        for (int32_t h = 0; h < m->c.n_heads; h++) {
            const float *qh = q + t * dim + h * hs;
            int64_t kv_off = (int64_t)(h / group) * hs, last = pos0 + t;
            float mx = -INFINITY;
            for (int64_t s = 0; s <= last; s++) {
                const float *ks = k + s * kv_dim + kv_off;
                float dot = 0;
                for (int32_t i = 0; i < hs; i++)
                    dot += qh[i] * ks[i];
                att[s] = dot * scale;
                mx = att[s] > mx ? att[s] : mx;
            }
            float sum = 0;
            for (int64_t s = 0; s <= last; s++) {
                att[s] = expf(att[s] - mx);
                sum += att[s];
            }
            float *oh = out + t * dim + h * hs;
            for (int32_t i = 0; i < hs; i++)
                oh[i] = 0;
            for (int64_t s = 0; s <= last; s++) {
                const float *vs = v + s * kv_dim + kv_off;
                float a = att[s] / sum;
                for (int32_t i = 0; i < hs; i++)
                    oh[i] += a * vs[i];
            }
        }
}

static int observe(const l2c_net *net, int32_t layer, int32_t input, const float *x, int64_t n,
                   int64_t cols)
{
    return net->observe ? net->observe(net->observe_user, layer, input, x, n, cols) : 0;
}

/* Block `l` of the net on the hidden states x [n, dim] of positions pos0..pos0+n-1, in place;
 * cs: the rotary table of those positions. Without a cache pos0 is 0 and the block attends
 * over its own keys and values; with one, the keys and values of the n positions are stored
 * in layer l's slots of the cache and the block attends over positions 0..pos0+n-1 there. */
static int block(const l2c_net *net, int32_t l, float *x, int64_t n, const float *cs,
                 int64_t pos0, l2c_kv_cache *cache)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim, hid = m->c.hidden_dim, kv = m->kv_dim, qd = m->q_dim;
    int64_t wide = qd > dim ? qd : dim;
    float *xb = malloc((size_t)(n * wide) * sizeof *xb);
    float *y = malloc((size_t)(n * dim) * sizeof *y);
    float *q = malloc((size_t)(n * qd) * sizeof *q);
    float *k = malloc((size_t)(n * kv) * sizeof *k);
    float *v = malloc((size_t)(n * kv) * sizeof *v);
    float *h1 = malloc((size_t)(n * hid) * sizeof *h1);
    float *h3 = malloc((size_t)(n * hid) * sizeof *h3);
    float *att = malloc((size_t)(pos0 + n) * sizeof *att);
    int rc = -1;
    if (!xb || !y || !q || !k || !v || !h1 || !h3 || !att) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    const l2c_linear *lin = net->lin[l];
    rmsnorm(xb, x, m->rms_att + l * dim, n, dim, m->norm_eps);
    if ((rc = observe(net, l, L2C_IN_QKV, xb, n, dim)) != 0)
        goto out;
    rc = -1;
    if (linear(&lin[L2C_WQ], xb, n, q) || linear(&lin[L2C_WK], xb, n, k) ||
        linear(&lin[L2C_WV], xb, n, v))
        goto out;
    rope(m, cs, q, n, qd);
    rope(m, cs, k, n, kv);
    if (cache) {
        int64_t slot = (int64_t)l * cache->cap * kv;
        float *ck = cache->k + slot, *cv = cache->v + slot;
        memcpy(ck + pos0 * kv, k, (size_t)(n * kv) * sizeof *k);
        memcpy(cv + pos0 * kv, v, (size_t)(n * kv) * sizeof *v);
        attention(m, q, ck, cv, pos0, n, att, xb);
    } else
        attention(m, q, k, v, 0, n, att, xb);
    if ((rc = observe(net, l, L2C_IN_WO, xb, n, qd)) != 0)
        goto out;
    rc = -1;
    if (linear(&lin[L2C_WO], xb, n, y))
        goto out;
    for (int64_t i = 0; i < n * dim; i++)
        x[i] += y[i];
    rmsnorm(xb, x, m->rms_ffn + l * dim, n, dim, m->norm_eps);
    if ((rc = observe(net, l, L2C_IN_W13, xb, n, dim)) != 0)
        goto out;
    rc = -1;
    if (linear(&lin[L2C_W1], xb, n, h1) || linear(&lin[L2C_W3], xb, n, h3))
        goto out;
    for (int64_t i = 0; i < n * hid; i++) /* SwiGLU: silu(w1 x) * (w3 x) */
        h1[i] = h1[i] / (1.0f + expf(-h1[i])) * h3[i];
    if ((rc = observe(net, l, L2C_IN_W2, h1, n, hid)) != 0)
        goto out;
    rc = -1;
    if (linear(&lin[L2C_W2], h1, n, y))
        goto out;
    for (int64_t i = 0; i < n * dim; i++)
        x[i] += y[i];
    rc = 0;
out:
    free(xb);
    free(y);
    free(q);
    free(k);
    free(v);
    free(h1);
    free(h3);
    free(att);
    return rc;
}

void l2c_embed(const l2c_model *m, const int32_t *tokens, int64_t n, float *x)
{
    int64_t dim = m->c.dim;
    for (int64_t t = 0; t < n; t++)
        memcpy(x + t * dim, m->tok_emb + (int64_t)tokens[t] * dim, (size_t)dim * sizeof *x);
}

int l2c_forward_block(const l2c_net *net, int32_t layer, float *x, int64_t n)
{
    float *cs = malloc((size_t)(n * net->m->head_size) * sizeof *cs);
    if (!cs) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    rope_table(net->m, 0, n, cs);
    int rc = block(net, layer, x, n, cs, 0, NULL);
    free(cs);
    return rc;
}

int l2c_forward(const l2c_net *net, const int32_t *tokens, int64_t n, float *logits)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim;
    float *x = malloc((size_t)(n * dim) * sizeof *x);
    float *xb = malloc((size_t)(n * dim) * sizeof *xb);
    float *cs = malloc((size_t)(n * m->head_size) * sizeof *cs);
    int rc = -1;
    if (!x || !xb || !cs) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    rope_table(m, 0, n, cs);
    l2c_embed(m, tokens, n, x);
    for (int32_t l = 0; l < m->c.n_layers; l++)
        if ((rc = block(net, l, x, n, cs, 0, NULL)) != 0)
            goto out;
    rmsnorm(xb, x, m->rms_final, n, dim, m->norm_eps);
    matmul_wt(xb, n, dim, m->wcls, m->c.vocab_size, logits);
    rc = 0;
out:
    free(x);
    free(xb);
    free(cs);
    return rc;
}

int l2c_kv_cache_init(l2c_kv_cache *c, const l2c_model *m, int64_t cap)
{
    memset(c, 0, sizeof *c);
    if (cap <= 0 || cap > m->c.seq_len)
        cap = m->c.seq_len;
    size_t count = (size_t)((int64_t)m->c.n_layers * cap * m->kv_dim);
    c->k = malloc(count * sizeof *c->k);
    c->v = malloc(count * sizeof *c->v);
    if (!c->k || !c->v) {
        fprintf(stderr, "out of memory (key/value cache of %lld positions)\n", (long long)cap);
        l2c_kv_cache_free(c);
        return -1;
    }
    c->cap = cap;
    c->n_layers = m->c.n_layers;
    c->kv_dim = m->kv_dim;
    return 0;
}

void l2c_kv_cache_free(l2c_kv_cache *c)
{
    free(c->k);
    free(c->v);
    memset(c, 0, sizeof *c);
}

int l2c_forward_cached(const l2c_net *net, l2c_kv_cache *c, const int32_t *tokens, int64_t n,
                       float *logits, int32_t last_only)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim, pos0 = c->len;
    if (n <= 0 || n > c->cap - pos0 || c->n_layers != m->c.n_layers || c->kv_dim != m->kv_dim) {
        fprintf(stderr,
                "l2c_forward_cached: %lld tokens at position %lld do not fit a cache of %lld "
                "positions (%d layers, kv width %d) for this model\n",
                (long long)n, (long long)pos0, (long long)c->cap, (int)c->n_layers,
                (int)c->kv_dim);
        return -1;
    }
    float *x = malloc((size_t)(n * dim) * sizeof *x);
    float *xb = malloc((size_t)(n * dim) * sizeof *xb);
    float *cs = malloc((size_t)(n * m->head_size) * sizeof *cs);
    int rc = -1;
    if (!x || !xb || !cs) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    rope_table(m, pos0, n, cs);
    l2c_embed(m, tokens, n, x);
    for (int32_t l = 0; l < m->c.n_layers; l++)
        if ((rc = block(net, l, x, n, cs, pos0, c)) != 0)
            goto out;
    int64_t first = last_only ? n - 1 : 0;
    rmsnorm(xb, x + first * dim, m->rms_final, n - first, dim, m->norm_eps);
    matmul_wt(xb, n - first, dim, m->wcls, m->c.vocab_size, logits);
    c->len = pos0 + n;
    rc = 0;
out:
    free(x);
    free(xb);
    free(cs);
    return rc;
}
