/* The engine's in-memory model. Loaded here from a llama2.c legacy checkpoint (header of 7
 * int32 fields, then float32 tensors); examples/hf fills it from a Hugging Face folder. */
#ifndef L2C_MODEL_H
#define L2C_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct l2c_config {
    int32_t dim;        /* model width */
    int32_t hidden_dim; /* FFN width */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads; /* key/value heads; query head h reads kv head h / (n_heads / n_kv_heads) */
    int32_t vocab_size;
    int32_t seq_len;
} l2c_config;

/* The seven linear weights of a layer, in the order the engine keeps them. */
enum { L2C_WQ, L2C_WK, L2C_WV, L2C_WO, L2C_W1, L2C_W2, L2C_W3, L2C_N_LINEARS };

/* Which channels of a head form the rotary pairs. */
enum {
    L2C_ROPE_INTERLEAVED, /* (2i, 2i + 1), llama2.c's run.c */
    L2C_ROPE_HALF         /* (i, i + head_size / 2), Hugging Face's rotate_half */
};

typedef struct l2c_model {
    l2c_config c;
    int32_t head_size, kv_dim;
    float *data; /* the whole file after the header */
    const float *tok_emb;   /* [vocab, dim] */
    const float *rms_att;   /* [layers, dim] */
    const float *rms_ffn;   /* [layers, dim] */
    const float *rms_final; /* [dim] */
    const float *wcls;      /* [vocab, dim]: tok_emb when the classifier is shared */
    const float *w[L2C_N_LINEARS]; /* [layers, out, in] each, y = W x */
    int32_t q_dim;      /* n_heads * head_size: wq's output and wo's input (dim for llama2.c) */
    int32_t rope_style; /* L2C_ROPE_* */
    double rope_theta;  /* rotary base (10000 for llama2.c) */
    float norm_eps;     /* RMSNorm epsilon (1e-5 for llama2.c) */
} l2c_model;

/* Loads path into m; on failure returns -1 and writes a message to err. */
int l2c_model_load(const char *path, l2c_model *m, char *err, size_t err_len);
void l2c_model_free(l2c_model *m);

/* Weight `which` (L2C_W*) of `layer`: pointer to its [out, in] row-major matrix. */
const float *l2c_model_weight(const l2c_model *m, int32_t layer, int32_t which, int64_t *out_dim,
                              int64_t *in_dim);

#endif
