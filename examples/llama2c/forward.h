/* FP32 forward pass of a llama2.c model over a whole window of tokens (causal attention),
 * with each linear layer either a float weight or a libduquant quantized layer. */
#ifndef L2C_FORWARD_H
#define L2C_FORWARD_H

#include <stdint.h>

#include "duquant.h"
#include "model.h"

/* Linear inputs of a layer; layers reading the same input share one transform plan. */
enum { L2C_IN_QKV, L2C_IN_WO, L2C_IN_W13, L2C_IN_W2, L2C_N_INPUTS };

/* The input each weight (L2C_W*) reads. */
int32_t l2c_input_of(int32_t which);
/* Short file-name-friendly name of an input: "qkv", "wo", "w13", "w2". */
const char *l2c_input_name(int32_t input);

typedef struct l2c_linear {
    const float *w; /* [out, in] float weight, used when q is NULL */
    const dq_linear *q;
    int64_t in_dim, out_dim;
} l2c_linear;

/* Called with every linear input (rows tokens x cols channels) before it is used; a non-zero
 * return stops the forward pass with that value. */
typedef int (*l2c_observe_fn)(void *user, int32_t layer, int32_t input, const float *x,
                              int64_t rows, int64_t cols);

/* Called with the keys (after the rotary embedding) and values [rows, kv_dim] of every block
 * before they are stored or attended to; a non-zero return stops the forward pass with that
 * value. */
typedef int (*l2c_kv_observe_fn)(void *user, int32_t layer, const float *k, const float *v,
                                 int64_t rows, int64_t kv_dim);

/* How attention keeps its keys, values and queries. The default (no l2c_attn_quant, or
 * kv_bits 0) is float32 throughout. */
typedef struct l2c_attn_quant {
    int32_t kv_bits;             /* 0: float32 cache; 16: half precision (round to nearest
                                    even); 4, 8: libduquant's packed layout (dq_kv_quantize),
                                    each head of each token asymmetric, keys after the per-head
                                    Walsh-Hadamard transform */
    int32_t qk_bits;             /* 0 or 16: float queries; 4: each head of each query token
                                    quantized to 4 bits (asymmetric, no clip) after the
                                    Hadamard transform (keys are rotated then too) */
    const float *k_clip, *v_clip; /* [n_layers] clip ratios of the 4/8-bit keys and values;
                                    NULL: 1 */
} l2c_attn_quant;

/* True when keys and queries go through the per-head Hadamard transform. */
int l2c_attn_rotates(const l2c_attn_quant *a);

/* Half precision: the nearest binary16 value (ties to even; beyond 65504 infinite), and back. */
uint16_t l2c_half_from_float(float f);
float l2c_half_to_float(uint16_t h);

typedef struct l2c_net {
    const l2c_model *m;
    l2c_linear (*lin)[L2C_N_LINEARS]; /* [n_layers] */
    l2c_observe_fn observe;           /* optional */
    void *observe_user;
    int32_t n_threads; /* threads of the engine's own loops (attention, float products); 0 or 1:
                          the calling thread only. The quantized layers use their context's. */
    const l2c_attn_quant *attn; /* NULL: float32 attention */
    l2c_kv_observe_fn kv_observe; /* optional */
    void *kv_observe_user;
    /* Optional: the engine's loops run on this context's threads (dq_context_parallel), so a
     * loop costs no thread start and small ones (one token's attention) split too; NULL:
     * threads started per loop. */
    const dq_context *pool;
} l2c_net;

/* Fills net with the model's float weights (lin must hold n_layers entries). */
void l2c_net_init_fp32(l2c_net *net, const l2c_model *m, l2c_linear (*lin)[L2C_N_LINEARS]);

/* y [rows, out] = x [rows, in] w^T (w [out, in]) with the engine's float product (float sums,
 * the same bits for any n_threads; 0 or 1: the calling thread only). Returns 0 or -1 (out of
 * memory, message printed). */
int l2c_matmul(int32_t n_threads, const float *x, int64_t rows, int64_t in, const float *w,
               int64_t out, float *y);

/* Logits [n, vocab] for tokens[0..n) at positions 0..n-1. Returns 0, -1 (out of memory or
 * a failed quantized layer; a message is printed) or the observer's non-zero value. */
int l2c_forward(const l2c_net *net, const int32_t *tokens, int64_t n, float *logits);

/* The token embeddings of tokens[0..n) into x [n, dim]. */
void l2c_embed(const l2c_model *m, const int32_t *tokens, int64_t n, float *x);

/* Block `layer` of the net on the hidden states x [n, dim] of positions 0..n-1, in place
 * (the observer sees its linear inputs). l2c_forward is l2c_embed, every block, then the final
 * norm and the head, with the same arithmetic. Returns as l2c_forward. */
int l2c_forward_block(const l2c_net *net, int32_t layer, float *x, int64_t n);

/* Keys and values (after the rotary embedding) of every layer for positions 0..len-1, so that
 * a generation step computes only its new tokens. */
typedef struct l2c_kv_cache {
    float *k, *v;       /* float32: v [n_layers, cap, kv_dim]; k [n_layers, n_kv_heads]
                         * blocks of cap rounded up to 64 positions: channel-major in blocks of 16
                         * positions, as attention reads them (forward.c) */
    uint8_t *kq, *vq;   /* other formats: [n_layers, cap] tokens of token_bytes each */
    size_t token_bytes;
    int64_t cap;        /* positions it holds */
    int64_t len;        /* positions filled: the next token's position */
    int32_t n_layers, kv_dim;
    int32_t kv_bits;    /* the format, as l2c_attn_quant.kv_bits */
} l2c_kv_cache;

/* An empty float32 cache of cap positions (cap <= 0 or beyond the context length: the context
 * length) for model m. Returns 0 or -1 (out of memory, message printed). */
int l2c_kv_cache_init(l2c_kv_cache *c, const l2c_model *m, int64_t cap);
/* The same in the format of net's attention settings (the cache of l2c_forward_cached with
 * that net). */
int l2c_kv_cache_init_net(l2c_kv_cache *c, const l2c_net *net, int64_t cap);
void l2c_kv_cache_free(l2c_kv_cache *c);

/* Runs tokens[0..n) at positions c->len..c->len+n-1: appends their keys and values to the
 * cache, attends over the cache, and writes the logits [n, vocab] (last_only: only the last
 * token's [vocab]). The logits of each position are those l2c_forward computes for the whole
 * sequence so far, with the same arithmetic. Returns as l2c_forward (-1 also when the tokens
 * do not fit the cache); on failure c->len is unchanged. */
int l2c_forward_cached(const l2c_net *net, l2c_kv_cache *c, const int32_t *tokens, int64_t n,
                       float *logits, int32_t last_only);

#endif
