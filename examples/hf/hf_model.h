/* A Hugging Face LLaMA-family folder (config.json, model.safetensors or shards) as the
 * engine's model (examples/llama2c/model.h): rotary pairs by rotate_half, grouped key/value
 * heads, the config's RMSNorm epsilon and rotary base. */
#ifndef HF_MODEL_H
#define HF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "hf_config.h"
#include "hf_safetensors.h"
#include "model.h"
#include "perplexity.h"

typedef struct hf_model {
    hf_config cfg;
    hf_checkpoint ck;
} hf_model;

/* One transformer block's float weights in the engine's order (L2C_W*: q, k, v, o, gate,
 * down, up) and its two norms, in buffers the caller owns (sizes from hf_model_shape). */
typedef struct hf_layer {
    float *w[L2C_N_LINEARS];
    float *rms_att, *rms_ffn;
} hf_layer;

/* 1 when path is a folder holding config.json. */
int hf_is_model_dir(const char *path);

/* Reads dir/config.json, maps the checkpoint and checks that every tensor the engine needs is
 * there with the shape the config implies and a dtype it converts (F32, F16, BF16). Nothing
 * is converted yet. On failure returns -1 with a message naming the file and the key or
 * tensor in err. */
int hf_model_open(const char *dir, hf_model *hm, char *err, size_t err_len);
void hf_model_close(hf_model *hm);

/* [out, in] of linear `which` (L2C_W*). */
void hf_model_shape(const hf_config *c, int32_t which, int64_t *out_dim, int64_t *in_dim);

/* Converts block `layer` to float into dst. */
int hf_model_read_layer(const hf_model *hm, int32_t layer, const hf_layer *dst, char *err,
                        size_t err_len);

/* The engine model's shape fields (config, head and kv widths, RoPE style, base and norm
 * epsilon) from a Hugging Face config; weights are left alone. */
void hf_model_set_shape(const hf_config *c, l2c_model *m);

/* The whole model as floats in m (freed by l2c_model_free), converted one block at a time;
 * cfg (optional) receives the config. */
int hf_model_load(const char *dir, l2c_model *m, hf_config *cfg, char *err, size_t err_len);

/* A token file (little-endian int32 ids, each story starting with bos) as stories for the
 * perplexity protocol. Ids must lie in [0, vocab). */
int hf_tokens_load(const char *path, int32_t bos, int32_t vocab, l2c_text *out, char *err,
                   size_t err_len);

#endif
