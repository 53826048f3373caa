/* Private safetensors container: a strict, bounded reader and a deterministic writer.
 * Layout: u64 little-endian header length N, N bytes of JSON (an object mapping tensor names to
 * {"dtype", "shape", "data_offsets"}, plus "__metadata__" with string values), then the tensor
 * data, contiguous and in offset order. doc/formats.md is the normative text. */
#ifndef DQ_SAFETENSORS_H
#define DQ_SAFETENSORS_H

#include "dq_internal.h"

/* Most dimensions one tensor may have. */
#define DQ__ST_MAX_DIMS 8
/* Default and hard upper bound of the JSON header length (bytes). */
#define DQ__ST_MAX_HEADER ((uint64_t)100 << 20)

/* Element types: the public DQ_DTYPE_* numbers (dq_file_reader_tensor_info reports them as
 * they are), safetensors spelling in dq__st_dtype_name. */
enum {
    DQ__ST_BOOL = DQ_DTYPE_BOOL,
    DQ__ST_U8 = DQ_DTYPE_U8,
    DQ__ST_I8 = DQ_DTYPE_I8,
    DQ__ST_U16 = DQ_DTYPE_U16,
    DQ__ST_I16 = DQ_DTYPE_I16,
    DQ__ST_F16 = DQ_DTYPE_F16,
    DQ__ST_BF16 = DQ_DTYPE_BF16,
    DQ__ST_U32 = DQ_DTYPE_U32,
    DQ__ST_I32 = DQ_DTYPE_I32,
    DQ__ST_F32 = DQ_DTYPE_F32,
    DQ__ST_U64 = DQ_DTYPE_U64,
    DQ__ST_I64 = DQ_DTYPE_I64,
    DQ__ST_F64 = DQ_DTYPE_F64,
    DQ__ST_N_DTYPES = DQ_DTYPE_F64 + 1
};

const char *dq__st_dtype_name(int32_t dtype);
size_t dq__st_dtype_size(int32_t dtype);

typedef struct dq__st_tensor {
    const char *name;     /* NUL-terminated UTF-8, no NUL inside, in the file's strings */
    const int64_t *shape; /* ndim dimensions, in the file's dimension array */
    int32_t dtype;
    int32_t ndim;
    size_t begin, end; /* byte range inside the data section */
} dq__st_tensor;

/* A metadata pair of the writer. */
typedef struct dq__st_meta {
    char *key;
    char *value;
} dq__st_meta;

/* A metadata pair of a parsed file: offsets of its NUL-terminated key and value in strs. */
typedef struct dq__st_pair {
    uint32_t key, value;
} dq__st_pair;

/* A parsed container. Tensors are sorted by name and metadata by key (both unique). The table
 * (tensors, their dimensions, metadata pairs, strings) is one allocation (block, alloc_bytes);
 * data is set by the caller and points into its buffer. */
typedef struct dq__st_file {
    dq__st_tensor *tensors;
    size_t n_tensors;
    dq__st_pair *meta;
    size_t n_meta;
    int64_t *dims;
    char *strs;
    size_t strs_size;
    void *block;
    size_t alloc_bytes;
    const uint8_t *data;
    size_t data_size;
} dq__st_file;

/* The JSON header length N from the first 8 bytes (head) of a container of size bytes:
 * DQ_ERR_FORMAT unless size >= 8, 2 <= N <= max_header (at most DQ__ST_MAX_HEADER) and
 * N <= size - 8. */
dq_status dq__st_header_length(const dq_context *ctx, const uint8_t *head, uint64_t size,
                               uint64_t max_header, uint64_t *n);
/* Parses and validates the JSON header (n bytes at header) of a container whose data section
 * holds data_size bytes: syntax, text, every tensor's dtype, shape and offsets (they must tile
 * the data section), unique names and keys. Reads nothing of the data; out->data is left NULL.
 * Allocates one block of at most about 2n bytes, refused with DQ_ERR_NOMEM when more than
 * max_alloc. On failure nothing is left allocated and *out is zeroed. DQ_ERR_FORMAT for any
 * malformed input. */
dq_status dq__st_parse_header(const dq_context *ctx, const uint8_t *header, size_t n,
                              uint64_t data_size, uint64_t max_alloc, dq__st_file *out);
/* Both steps on a whole container in buf (size bytes); out->data points into buf. */
dq_status dq__st_parse(const dq_context *ctx, const uint8_t *buf, size_t size,
                       uint64_t max_header, dq__st_file *out);
void dq__st_clear(const dq_context *ctx, dq__st_file *f);
const dq__st_tensor *dq__st_find(const dq__st_file *f, const char *name);
const char *dq__st_meta_find(const dq__st_file *f, const char *key);
/* Key i (sorted order) of a parsed file. */
static inline const char *dq__st_meta_key(const dq__st_file *f, size_t i)
{
    return f->strs + f->meta[i].key;
}

/* One tensor or metadata pair for the writer; bytes are already little-endian. */
typedef struct dq__st_entry {
    char *name;
    int32_t dtype;
    int32_t ndim;
    int64_t shape[DQ__ST_MAX_DIMS];
    uint8_t *bytes;
    size_t nbytes;
    /* A spooling file writer's entries have no bytes: they lie at this offset of its spool
     * file. Only dq__st_write_head accepts them. */
    uint64_t spool_offset;
} dq__st_entry;

/* The order of the data section: entries whose element size is dq__st_order_size(0), in the
 * given order, then those of dq__st_order_size(1), ... (8, 4, 2, 1 bytes). */
#define DQ__ST_N_PASSES 4
static inline size_t dq__st_order_size(int pass)
{
    return (size_t)8 >> pass;
}

/* Serialises entries (written in order of decreasing element size, stable) and metadata (in the
 * given order) into buf. buf NULL or cap too small: only *needed is set and DQ_ERR_BUFFER is
 * returned when buf is not NULL. */
dq_status dq__st_write(const dq_context *ctx, const dq__st_entry *entries, size_t n,
                       const dq__st_meta *meta, size_t n_meta, uint8_t *buf, size_t cap,
                       size_t *needed);
/* As dq__st_write, only the first *head bytes (length and JSON header, the data section
 * follows in the order above) into buf; *total is the whole file's size. buf NULL: sizes only;
 * cap < *head: DQ_ERR_BUFFER. The entries' bytes are not read. */
dq_status dq__st_write_head(const dq_context *ctx, const dq__st_entry *entries, size_t n,
                            const dq__st_meta *meta, size_t n_meta, uint8_t *buf, size_t cap,
                            size_t *head, size_t *total);

/* True when s (len bytes) is well-formed UTF-8 without control characters below 0x20. */
bool dq__st_text_ok(const char *s, size_t len);

/* Grows the array *arr of *cap elements (elem bytes each) to hold at least need, doubling;
 * the old contents are kept. DQ_ERR_NOMEM or DQ_ERR_OVERFLOW leave *arr and *cap unchanged. */
dq_status dq__st_grow(const dq_context *ctx, void **arr, size_t *cap, size_t elem, size_t need);

#endif /* DQ_SAFETENSORS_H */
