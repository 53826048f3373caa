/* The models duquant-quantize and duquant-run read and write: a Hugging Face LLaMA-family
 * folder or a llama2.c file (float weights), or a quantized model file written by
 * duquant-quantize (doc/formats.md, "Quantized model files"), loaded into the example
 * engine (examples/llama2c) with its layers mapped from the file. */
#ifndef TOOL_MODEL_H
#define TOOL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "duquant.h"
#include "forward.h"
#include "hf_config.h"
#include "hf_model.h"
#include "hf_tokenizer.h"
#include "model.h"
#include "perplexity.h"
#include "tokenizer.h"

/* The index of a sharded model folder (duquant-quantize over MPI ranks, doc/formats.md). */
#define TOOL_INDEX_NAME "model.dq.index.json"

/* The metadata value of "duquant.model" in a quantized model file. */
#define TOOL_MODEL_KIND "llama-w4a4"

typedef struct tool_model {
    l2c_model m;           /* float tensors; float linear weights only for float models */
    int hf;                /* read from a Hugging Face folder */
    int quantized;         /* read from a quantized model file */
    int32_t bos, eos;
    int tied;              /* the head is the token embedding */
    char *tokenizer_json;  /* tokenizer.json (compact), or NULL */
    hf_tokenizer *htk;     /* from tokenizer_json */
    l2c_tokenizer ltk;     /* llama2.c tokenizer (--tokenizer) */
    int has_ltk;
    char *config_json;     /* config.json (compact), or NULL */
    dq_file_reader *reader; /* the model file, or the shard holding the float tables */
    dq_file_reader **shards; /* a sharded model's shards (n_shards), reader among them */
    char **shard_files;
    int32_t n_shards;
    int32_t *layer_shard;    /* [n_layers]: the shard of each block */
    l2c_linear (*lin)[L2C_N_LINEARS];       /* [n_layers]: the net's linears */
    dq_linear *(*layers)[L2C_N_LINEARS];    /* quantized layers of a model file */
    dq_plan *(*plans)[L2C_N_INPUTS];
    char method[64];       /* the model file's method */
    hf_model *hm;          /* a Hugging Face folder opened block by block */
    int32_t threads;       /* the engine's own loops (l2c_net.n_threads); 0 after loading */
    const l2c_attn_quant *attn; /* attention settings of its nets (l2c_net.attn); NULL after
                                   loading */
    const dq_context *pool;     /* its nets' loops run on this context's threads
                                   (l2c_net.pool); NULL after loading */
} tool_model;

/* One transformer block as a model of one block (n_layers 1, the embeddings and head those of
 * the whole model), for the block-by-block pipeline. */
typedef struct tool_block {
    l2c_model view;
    float *owned; /* the block's weights read from a checkpoint, or NULL */
} tool_block;

/* Names of the seven linears in a model file: "wq" "wk" "wv" "wo" "w1" "w2" "w3". */
const char *tool_linear_name(int32_t which);

/* Opens a Hugging Face folder, a llama2.c file (tokenizer: a llama2.c tokenizer file or NULL),
 * a quantized model file (by its content) or a folder of its shards (TOOL_INDEX_NAME).
 * Returns 0 or -1 with a message on stderr. */
int tool_model_load(const char *path, const char *tokenizer, dq_context *ctx, tool_model *tm);
void tool_model_free(tool_model *tm);

/* As tool_model_load for a float model, but the blocks of a Hugging Face folder stay in the
 * checkpoint (mapped): only the embeddings, the final norm and the head are read now, and
 * tool_model_block reads one block at a time. tm->lin is NULL for such a folder. */
int tool_model_open_blocks(const char *path, const char *tokenizer, dq_context *ctx,
                           tool_model *tm);
/* As tool_model_open_blocks without reading a Hugging Face folder's embeddings, final norm
 * and head (NULL): for a process that handles blocks only. */
int tool_model_open_layers(const char *path, const char *tokenizer, dq_context *ctx,
                           tool_model *tm);
/* Block l of a float model (converted from the checkpoint, or pointing into the model). */
int tool_model_block(const tool_model *tm, int32_t l, tool_block *b);
void tool_block_free(tool_block *b);

/* The thread count of a --threads value: n, or the online CPUs (at most 64) for 0, as the
 * library resolves dq_context_params.n_threads. */
int32_t tool_threads(int32_t requested);

/* A net over the model's linears (float or quantized), on tm->threads threads. */
void tool_model_net(tool_model *tm, l2c_net *net);

/* Stories for the perplexity protocol: token ids when the name ends in .tok, else text through
 * the model's tokenizer. An empty text is an error. Returns 0 or -1 (message printed). */
int tool_text_load(const tool_model *tm, const char *path, l2c_text *out);
/* 0 when every id indexes the model's embedding table, else -1 with a message naming what (a
 * tokenizer may know more tokens than the model has rows). */
int tool_check_ids(const tool_model *tm, const int32_t *ids, size_t n, const char *what);

/* Reads a whole file (NUL-terminated, *len without it); NULL with a message on failure. */
char *tool_read_file(const char *path, size_t *len);

/* A JSON file or text as compact JSON on one line (malloc'ed), or NULL with a message. */
char *tool_json_compact(const char *text, size_t len, const char *name);

/* FNV-1a 64-bit hash of n bytes. */
uint64_t tool_fnv1a64(const void *p, size_t n);

/* Peak resident set size of this process in MiB (0 when unknown). */
double tool_peak_rss_mib(void);
double tool_now_s(void);

#endif
