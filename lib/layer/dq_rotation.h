/* Private declarations of the rotation object (the run-time side: dq_rotation.c,
 * dq_rotation_io.c), shared with the online kernels and the offline builders. Never installed. */
#ifndef DQ_ROTATION_H
#define DQ_ROTATION_H

#include "dq_handle.h"
#include "dq_blockmul.h"
#include "dq_internal.h"

/* Largest block (and base-matrix) length: the reference's "whole row" block is 4096. */
#define DQ_MAX_BLOCK 4096

/* Channel blocks: block b covers [b * bs, min((b + 1) * bs, cols)). */
static inline int64_t dq__n_blocks(int64_t cols, int32_t bs)
{
    return cols / bs + (cols % bs != 0);
}
static inline int32_t dq__block_len(int64_t cols, int32_t bs, int64_t b)
{
    int64_t left = cols - b * bs;
    return (int32_t)(left < bs ? left : bs);
}

/* Block-diagonal rotation. Block b is multiplied by matrix mat_of_block[b]. A matrix found by
 * the greedy search keeps its record: steps + 1 ids, swapped channels and peaks. */
struct dq_rotation {
    uint64_t tag; /* DQ__TAG_ROTATION (dq_handle.h) */
    dq_context ctx;
    int64_t cols;
    int32_t block_size;
    int32_t method;
    bool per_block;        /* one matrix per block, else shared by the full blocks */
    int64_t n_blocks;
    int64_t n_mats;
    int64_t *mat_of_block; /* n_blocks */
    int32_t *mat_size;     /* n_mats */
    size_t *mat_offset;    /* n_mats, float offsets into data */
    float *data;
    int32_t steps;         /* greedy steps per search (record length - 1) */
    int32_t *selected;     /* n_mats; -1 = matrix not found by a search */
    int64_t *ids;          /* n_mats * (steps + 1), NULL without a search */
    int32_t *swapped;      /* likewise */
    float *peaks;          /* likewise */
};
DQ__HANDLE_LAYOUT(struct dq_rotation);

/* Floats in data: the matrices lie back to back from offset 0, in matrix order, so matrix m
 * of a copy of data starts at mat_offset[m] too. */
static inline size_t dq__rotation_floats(const struct dq_rotation *r)
{
    const int64_t last = r->n_mats - 1;
    return r->mat_offset[last] + (size_t)r->mat_size[last] * (size_t)r->mat_size[last];
}

/* Allocates the object and lays out its matrices: per block, or one shared by the full blocks
 * plus one for a shorter last block. The matrices are left for the caller to fill; a greedy
 * method gets a zeroed search record of steps + 1 entries per matrix. */
dq_status dq__rotation_alloc(const dq_context *ctx, int64_t cols, int32_t bs, bool per_block,
                             int32_t method, int32_t steps, dq_rotation **out);
/* A deep copy allocated with ctx. */
dq_status dq__rotation_clone(const dq_context *ctx, const dq_rotation *src, dq_rotation **out);
/* dq_rotation_from_matrices without the NULL checks, failures logged once for func with the
 * data named what (e.g. a file's tensor); bad, when not DQ_OK, replaces DQ_ERR_SHAPE and
 * DQ_ERR_INVALID_ARG (a file's DQ_ERR_FORMAT). */
dq_status dq__rotation_from_matrices_at(const dq_context *ctx, const char *func,
                                        const char *what, dq_status bad, int64_t cols,
                                        int32_t block_size, int32_t per_block, const float *data,
                                        int64_t n_floats, dq_rotation **out);
/* The same keeping data itself (allocated with ctx, as large as the matrices) instead of a
 * copy: on DQ_OK the rotation owns it, on failure it is still the caller's. */
dq_status dq__rotation_take_matrices(const dq_context *ctx, const char *func, const char *what,
                                     dq_status bad, int64_t cols, int32_t block_size,
                                     int32_t per_block, float *data, int64_t n_floats,
                                     dq_rotation **out);
/* out = in * blockdiag(R) for rows rows through the reproducible product, on ctx's threads
 * (plan building); in and out must not overlap. */
dq_status dq__rotation_rows_exact(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                                  int64_t ldo, int64_t rows, const dq_context *ctx);
/* The same on the calling thread (applying plans and rotations): the same bits as
 * dq__rotation_rows_exact for any thread count, and no BLAS. */
dq_status dq__rotation_rows(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                            int64_t ldo, int64_t rows);

#endif /* DQ_ROTATION_H */
