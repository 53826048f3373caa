/* Rotations from given block matrices: how saved plans come back to life. */
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_rotation.h"

static int32_t matrix_len(int64_t cols, int32_t bs, bool per_block, int64_t m)
{
    int64_t full = cols / bs;
    if (per_block)
        return dq__block_len(cols, bs, m);
    return m == 0 && full > 0 ? bs : (int32_t)(cols % bs);
}

DQ_API dq_status dq_rotation_from_matrices(dq_context *ctx, int64_t cols, int32_t block_size,
                                           int32_t per_block, const float *data,
                                           int64_t n_floats, dq_rotation **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!data)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "data is NULL");
    return dq__rotation_from_matrices_at(ctx, __func__, "data", DQ_OK, cols, block_size,
                                         per_block, data, n_floats, out);
}

/* dq__rotation_from_matrices_at; owned, when not NULL, is data itself, which the rotation then
 * keeps instead of a copy. */
static dq_status from_matrices(const dq_context *ctx, const char *func, const char *what,
                               dq_status bad, int64_t cols, int32_t block_size,
                               int32_t per_block, const float *data, float *owned,
                               int64_t n_floats, dq_rotation **out)
{
    /* Logged once, for func; bad (when not DQ_OK) replaces the shape and value statuses. */
#define FAIL(st_, ...) \
    dq__fail(ctx, bad != DQ_OK && ((st_) == DQ_ERR_SHAPE || (st_) == DQ_ERR_INVALID_ARG) ? bad \
                                                                                   : (st_), \
             func, __VA_ARGS__)
    *out = NULL;
    if (cols <= 0)
        return FAIL(DQ_ERR_SHAPE, "cols %lld, expected > 0", (long long)cols);
    if (block_size < 2 || block_size > DQ_MAX_BLOCK)
        return FAIL(DQ_ERR_SHAPE, "block_size %d, expected 2..%d", (int)block_size,
                    DQ_MAX_BLOCK);
    if (n_floats <= 0)
        return FAIL(DQ_ERR_SHAPE, "n_floats %lld, expected > 0", (long long)n_floats);
    const bool pb = per_block != 0;
    const int64_t n_blocks = dq__n_blocks(cols, block_size), full = cols / block_size;
    const int64_t n_mats = pb ? n_blocks : (full > 0) + (cols % block_size != 0);
    /* The float count in closed form, checked, and compared with n_floats before any loop
     * over the matrices or the data: full blocks of block_size^2 floats (one shared or one per
     * block) and the shorter last one. */
    const int64_t rem = cols % block_size, n_full = pb ? full : (full > 0);
    int64_t total_i = 0;
    size_t total = 0, blocks_bytes = 0, mats_bytes = 0, bytes = 0;
    if (!dq__mul_i64(n_full, (int64_t)block_size * block_size, &total_i) ||
        !dq__add_i64(total_i, rem * rem, &total_i) ||
        !dq__array_bytes(total_i, sizeof(float), &bytes))
        return FAIL(DQ_ERR_SHAPE, "%s: n_floats %lld, but cols %lld, block_size %d, "
                    "per_block %d need %lld matrices whose floats overflow size_t", what,
                    (long long)n_floats, (long long)cols, (int)block_size, (int)pb,
                    (long long)n_mats);
    if (n_floats != total_i)
        return FAIL(DQ_ERR_SHAPE,
                    "%s: n_floats %lld, expected %lld (%lld matrices for cols %lld, block_size "
                    "%d, per_block %d)",
                    what, (long long)n_floats, (long long)total_i, (long long)n_mats,
                    (long long)cols, (int)block_size, (int)pb);
    total = (size_t)total_i;
    if (!dq__array_bytes(n_blocks, sizeof(int64_t), &blocks_bytes) ||
        !dq__array_bytes(n_mats, sizeof(size_t), &mats_bytes))
        return FAIL(DQ_ERR_OVERFLOW, "%s: cols %lld, block_size %d: index arrays of %lld blocks "
                    "and %lld matrices overflow size_t", what, (long long)cols, (int)block_size,
                    (long long)n_blocks, (long long)n_mats);
    for (size_t i = 0; i < total; i++)
        if (!isfinite(data[i]))
            return FAIL(DQ_ERR_NONFINITE, "%s[%zu] = %g", what, i, (double)data[i]);
    /* A cheap guard against garbage: every row of an orthogonal matrix has unit norm. */
    const float *src = data;
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t len = matrix_len(cols, block_size, pb, m);
        for (int32_t i = 0; i < len; i++, src += len) {
            double s = 0.0;
            for (int32_t j = 0; j < len; j++)
                s += (double)src[j] * src[j];
            if (fabs(sqrt(s) - 1.0) > 1e-3)
                return FAIL(DQ_ERR_INVALID_ARG,
                            "%s: matrix %lld row %d has norm %g, expected 1 (orthogonal)",
                            what, (long long)m, (int)i, sqrt(s));
        }
    }

    const dq_context *c = dq__ctx(ctx);
    dq_rotation *r = dq__calloc(c, 1, sizeof *r);
    if (!r)
        return FAIL(DQ_ERR_NOMEM, "rotation object");
    dq__context_keep(&r->ctx, c);
    r->tag = DQ__TAG_ROTATION;
    r->cols = cols;
    r->block_size = block_size;
    r->method = DQ_ROT_METHOD_RANDOM; /* given matrices: no search record to keep */
    r->per_block = pb;
    r->n_blocks = n_blocks;
    r->n_mats = n_mats;
    r->steps = 0;
    r->mat_of_block = dq__alloc(c, blocks_bytes);
    r->mat_size = dq__alloc(c, (size_t)n_mats * sizeof(int32_t));
    r->mat_offset = dq__alloc(c, mats_bytes);
    r->selected = dq__alloc(c, (size_t)n_mats * sizeof(int32_t));
    r->data = owned ? owned : dq__alloc(c, bytes);
    if (!r->mat_of_block || !r->mat_size || !r->mat_offset || !r->selected || !r->data) {
        if (owned)
            r->data = NULL; /* still the caller's */
        dq_rotation_free(r);
        return FAIL(DQ_ERR_NOMEM, "%zu bytes of matrices for %lld channels", bytes,
                    (long long)cols);
    }
    size_t off = 0;
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t len = matrix_len(cols, block_size, pb, m);
        r->mat_size[m] = len;
        r->mat_offset[m] = off;
        r->selected[m] = -1;
        off += (size_t)len * (size_t)len;
    }
    for (int64_t b = 0; b < n_blocks; b++)
        r->mat_of_block[b] = pb ? b : (b < full ? 0 : (full > 0 ? 1 : 0));
    if (!owned)
        memcpy(r->data, data, bytes);
    *out = r;
    return DQ_OK;
#undef FAIL
}

dq_status dq__rotation_from_matrices_at(const dq_context *ctx, const char *func,
                                        const char *what, dq_status bad, int64_t cols,
                                        int32_t block_size, int32_t per_block, const float *data,
                                        int64_t n_floats, dq_rotation **out)
{
    return from_matrices(ctx, func, what, bad, cols, block_size, per_block, data, NULL,
                         n_floats, out);
}

dq_status dq__rotation_take_matrices(const dq_context *ctx, const char *func, const char *what,
                                     dq_status bad, int64_t cols, int32_t block_size,
                                     int32_t per_block, float *data, int64_t n_floats,
                                     dq_rotation **out)
{
    return from_matrices(ctx, func, what, bad, cols, block_size, per_block, data, data,
                         n_floats, out);
}
