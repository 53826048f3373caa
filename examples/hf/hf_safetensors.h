/* Tensors of a Hugging Face checkpoint folder: model.safetensors, or the shards that
 * model.safetensors.index.json names. Every file is memory-mapped; its header is parsed with
 * jansson and each tensor's byte range is checked against the file before anything is read.
 * F32, F16 and BF16 tensors convert to float one tensor at a time. */
#ifndef HF_SAFETENSORS_H
#define HF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define HF_MAX_DIMS 8

typedef enum hf_dtype {
    HF_DTYPE_F32,
    HF_DTYPE_F16,
    HF_DTYPE_BF16,
    HF_DTYPE_OTHER /* a valid safetensors dtype the engine cannot convert */
} hf_dtype;

typedef struct hf_tensor {
    char *name;
    char dtype_name[12]; /* as the header spells it */
    hf_dtype dtype;
    int32_t shard;       /* index into hf_checkpoint.shards */
    int32_t n_dims;
    int64_t shape[HF_MAX_DIMS];
    int64_t numel;
    uint64_t offset, nbytes; /* byte range in the shard file */
} hf_tensor;

typedef struct hf_shard {
    char *path;
    const unsigned char *map; /* the whole file, read-only */
    size_t size;
} hf_shard;

typedef struct hf_checkpoint {
    char *origin; /* model.safetensors or the index: the file named when a tensor is missing */
    hf_shard *shards;
    int32_t n_shards;
    hf_tensor *tensors; /* sorted by name */
    int64_t n_tensors;
} hf_checkpoint;

/* Opens dir/model.safetensors, else dir/model.safetensors.index.json and its shards. On
 * failure returns -1, leaves ck empty and writes a message naming the file (and the tensor or
 * key) to err. */
int hf_checkpoint_open(const char *dir, hf_checkpoint *ck, char *err, size_t err_len);
void hf_checkpoint_close(hf_checkpoint *ck);

/* The tensor called name, or NULL. */
const hf_tensor *hf_checkpoint_find(const hf_checkpoint *ck, const char *name);

/* Checks that tensor `name` exists, has shape shape[0..n_dims) and dtype F32, F16 or BF16.
 * Returns 0, or -1 with a message naming the file and the tensor. */
int hf_checkpoint_check(const hf_checkpoint *ck, const char *name, int32_t n_dims,
                        const int64_t *shape, char *err, size_t err_len);

/* Converts tensor `name` to float into dst (numel floats) after checking that it exists, that
 * its shape is shape[0..n_dims) and that its dtype is F32, F16 or BF16. The mapped pages are
 * released afterwards, so reading a model tensor by tensor keeps little of it resident.
 * Returns 0, or -1 with a message naming the file and the tensor. */
int hf_checkpoint_read(const hf_checkpoint *ck, const char *name, int32_t n_dims,
                       const int64_t *shape, float *dst, char *err, size_t err_len);

/* Element conversions (little-endian bytes in). */
float hf_f16_to_float(uint16_t h);
float hf_bf16_to_float(uint16_t b);

#endif
