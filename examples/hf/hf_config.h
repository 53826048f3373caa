/* config.json of a Hugging Face LLaMA-family checkpoint (model_type llama or mistral). */
#ifndef HF_CONFIG_H
#define HF_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct hf_config {
    char model_type[16];           /* "llama" or "mistral" */
    int32_t hidden_size;           /* model width */
    int32_t intermediate_size;     /* FFN width */
    int32_t num_hidden_layers;
    int32_t num_attention_heads;
    int32_t num_key_value_heads;   /* num_attention_heads when absent */
    int32_t head_dim;              /* hidden_size / num_attention_heads when absent */
    int32_t vocab_size;
    int32_t max_position_embeddings; /* 2048 when absent */
    int32_t tie_word_embeddings;   /* 1: lm_head is model.embed_tokens (false when absent) */
    int32_t bos_token_id;          /* -1 when null; 1 when absent */
    int32_t eos_token_id;          /* the first when a list; -1 when null; 2 when absent */
    double rms_norm_eps;
    double rope_theta;             /* 10000 when absent */
} hf_config;

/* Reads and checks path (a config.json). Anything the engine cannot honour (rope_scaling,
 * attention or MLP biases, a sliding window, an activation other than silu, another
 * model_type) is an error. On failure returns -1 and writes a message naming the file and the
 * field to err. */
int hf_config_load(const char *path, hf_config *c, char *err, size_t err_len);

#endif
