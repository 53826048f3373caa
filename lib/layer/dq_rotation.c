/* The rotation object (the run-time side): layout, accessors and applying a block-diagonal
 * rotation along the channel axis. Building one by search lives in
 * lib/offline/dq_rotation_search.c, from given matrices in dq_rotation_io.c. */
#include <string.h>

#include "dq_handle.h"
#include "dq_pool.h"
#include "dq_rotation.h"

/* Rows per product when applying rotations: small enough to keep the temporary in cache. */
#define APPLY_CHUNK_ROWS 256

DQ_API void dq_rotation_free(dq_rotation *r)
{
    if (!r)
        return;
    DQ_CHECK_HANDLE_FREE(r, DQ__H_ROTATION, "r");
    DQ_HANDLE_RETIRE(r, DQ__H_ROTATION);
    dq_context c = r->ctx;
    dq__free(&c, r->mat_of_block);
    dq__free(&c, r->mat_size);
    dq__free(&c, r->mat_offset);
    dq__free(&c, r->data);
    dq__free(&c, r->selected);
    dq__free(&c, r->ids);
    dq__free(&c, r->swapped);
    dq__free(&c, r->peaks);
    dq__free(&c, r);
    dq__context_drop(&c);
}

dq_status dq__rotation_alloc(const dq_context *ctx, int64_t cols, int32_t bs, bool per_block,
                             int32_t method, int32_t steps, dq_rotation **out)
{
    *out = NULL;
    /* Every size in closed form and checked before any loop or allocation: the matrices are
     * full blocks of bs x bs floats (one shared or one per block) and the shorter last one. */
    const int64_t n_blocks = dq__n_blocks(cols, bs), full = cols / bs, rem = cols % bs;
    const int64_t n_full = per_block ? full : (full > 0);
    const int64_t n_mats = n_full + (rem != 0);
    int64_t total_i = 0;
    size_t rec = 0, bytes = 0, blocks_bytes = 0, mats_bytes = 0;
    if (!dq__mul_i64(n_full, (int64_t)bs * bs, &total_i) ||
        !dq__add_i64(total_i, rem * rem, &total_i) ||
        !dq__array_bytes(total_i, sizeof(float), &bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "cols %lld, block_size %d, per_block %d: %lld "
                       "matrices of up to %d x %d floats overflow size_t", (long long)cols,
                       (int)bs, (int)per_block, (long long)n_mats, (int)bs, (int)bs);
    if (!dq__array_bytes(n_blocks, sizeof(int64_t), &blocks_bytes) ||
        !dq__array_bytes(n_mats, sizeof(size_t), &mats_bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "cols %lld, block_size %d: index arrays of %lld "
                       "blocks and %lld matrices overflow size_t", (long long)cols, (int)bs,
                       (long long)n_blocks, (long long)n_mats);
    if (method == DQ_ROT_METHOD_GREEDY &&
        !dq__mul_size((size_t)n_mats, (size_t)steps + 1, &rec))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "%lld matrices x %d record entries overflow size_t",
                       (long long)n_mats, (int)steps + 1);

    dq_rotation *r = dq__calloc(ctx, 1, sizeof *r);
    if (!r)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "rotation object");
    dq__context_keep(&r->ctx, ctx);
    r->tag = DQ__TAG_ROTATION;
    r->cols = cols;
    r->block_size = bs;
    r->method = method;
    r->per_block = per_block;
    r->n_blocks = n_blocks;
    r->n_mats = n_mats;
    r->steps = method == DQ_ROT_METHOD_GREEDY ? steps : 0;
    r->mat_of_block = dq__alloc(ctx, blocks_bytes);
    r->mat_size = dq__alloc(ctx, (size_t)n_mats * sizeof(int32_t));
    r->mat_offset = dq__alloc(ctx, mats_bytes);
    r->selected = dq__alloc(ctx, (size_t)n_mats * sizeof(int32_t));
    r->data = dq__alloc(ctx, bytes);
    bool ok = r->mat_of_block && r->mat_size && r->mat_offset && r->selected && r->data;
    if (ok && method == DQ_ROT_METHOD_GREEDY) {
        r->ids = dq__calloc(ctx, rec, sizeof(int64_t));
        r->swapped = dq__calloc(ctx, rec, sizeof(int32_t));
        r->peaks = dq__calloc(ctx, rec, sizeof(float));
        ok = r->ids && r->swapped && r->peaks;
    }
    if (!ok) {
        dq_rotation_free(r);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu bytes of matrices for %lld channels", bytes,
                       (long long)cols);
    }
    size_t off = 0;
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t len = per_block ? dq__block_len(cols, bs, m)
                                : (m == 0 && full > 0 ? bs : (int32_t)(cols % bs));
        r->mat_size[m] = len;
        r->mat_offset[m] = off;
        r->selected[m] = -1;
        off += (size_t)len * (size_t)len;
    }
    for (int64_t b = 0; b < n_blocks; b++)
        r->mat_of_block[b] = per_block ? b : (b < full ? 0 : (full > 0 ? 1 : 0));
    *out = r;
    return DQ_OK;
}

dq_status dq__rotation_clone(const dq_context *ctx, const dq_rotation *src, dq_rotation **out)
{
    *out = NULL;
    ctx = dq__ctx(ctx);
    dq_rotation *r;
    dq_status st = dq__rotation_alloc(ctx, src->cols, src->block_size, src->per_block,
                                      src->method, src->steps, &r);
    if (st != DQ_OK)
        return st;
    memcpy(r->data, src->data, dq__rotation_floats(src) * sizeof(float));
    memcpy(r->selected, src->selected, (size_t)src->n_mats * sizeof(int32_t));
    if (src->ids) {
        size_t rec = (size_t)src->n_mats * ((size_t)src->steps + 1);
        memcpy(r->ids, src->ids, rec * sizeof(int64_t));
        memcpy(r->swapped, src->swapped, rec * sizeof(int32_t));
        memcpy(r->peaks, src->peaks, rec * sizeof(float));
    }
    *out = r;
    return DQ_OK;
}

typedef struct rows_job {
    const dq_rotation *r;
    const float *in;
    float *out;
    int64_t ldi, ldo, rows;
} rows_job;

static void rows_worker(void *arg, int32_t w, int32_t n_workers)
{
    const rows_job *j = arg;
    const dq_rotation *r = j->r;
    int64_t begin, end;
    dq__split(j->rows, w, n_workers, &begin, &end);
    for (int64_t b = 0; b < r->n_blocks && begin < end; b++) {
        const int64_t m = r->mat_of_block[b];
        const int32_t n = r->mat_size[m];
        const size_t col = (size_t)b * (size_t)r->block_size;
        dq__block_product(j->in + (size_t)begin * (size_t)j->ldi + col, j->ldi, end - begin, n,
                          r->data + r->mat_offset[m], n, n,
                          j->out + (size_t)begin * (size_t)j->ldo + col, j->ldo);
    }
}

dq_status dq__rotation_rows_exact(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                                  int64_t ldo, int64_t rows, const dq_context *ctx)
{
    rows_job job = {r, in, out, ldi, ldo, rows};
    dq__parallel(ctx, dq__threads(ctx, rows), rows_worker, &job);
    return DQ_OK;
}

dq_status dq__rotation_rows(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                            int64_t ldo, int64_t rows)
{
    /* The reproducible block product on the calling thread: no BLAS at run time, and the same
     * bits as plan building and as every build variant. */
    rows_job job = {r, in, out, ldi, ldo, rows};
    rows_worker(&job, 0, 1);
    return DQ_OK;
}

DQ_API dq_status dq_rotation_layout(const dq_rotation *r, int64_t *cols, int32_t *block_size,
                                    int64_t *n_blocks, int64_t *n_matrices)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_ROTATION, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    if (cols)
        *cols = r->cols;
    if (block_size)
        *block_size = r->block_size;
    if (n_blocks)
        *n_blocks = r->n_blocks;
    if (n_matrices)
        *n_matrices = r->n_mats;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_block(const dq_rotation *r, int64_t b, int32_t *size,
                                   int64_t *matrix)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_ROTATION, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    if (b < 0 || b >= r->n_blocks)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "block %lld outside [0, %lld)", (long long)b,
                       (long long)r->n_blocks);
    if (size)
        *size = dq__block_len(r->cols, r->block_size, b);
    if (matrix)
        *matrix = r->mat_of_block[b];
    return DQ_OK;
}

DQ_API dq_status dq_rotation_matrix(const dq_rotation *r, int64_t m, float *out, int64_t ldo,
                                    int32_t *size)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_ROTATION, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    if (m < 0 || m >= r->n_mats)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "matrix %lld outside [0, %lld)",
                       (long long)m, (long long)r->n_mats);
    if (!out && !size)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "out and size are both NULL");
    const int32_t n = r->mat_size[m];
    if (out) {
        if (ldo < n)
            return DQ_FAIL(&r->ctx, DQ_ERR_SHAPE, "ldo %lld < matrix size %d", (long long)ldo,
                           (int)n);
        /* (n - 1) * ldo + n floats must be addressable. */
        size_t span;
        if (!dq__array_bytes(ldo, sizeof(float), &span) ||
            !dq__mul_size(span, (size_t)n, &span))
            return DQ_FAIL(&r->ctx, DQ_ERR_OVERFLOW, "ldo %lld x matrix size %d spans more bytes "
                           "than addressable", (long long)ldo, (int)n);
        const float *src = r->data + r->mat_offset[m];
        for (int32_t i = 0; i < n; i++)
            memcpy(out + (size_t)i * (size_t)ldo, src + (size_t)i * (size_t)n,
                   (size_t)n * sizeof(float));
    }
    if (size)
        *size = n;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_trace(const dq_rotation *r, int64_t m, int32_t *steps,
                                   int32_t *selected, int64_t *ids, int32_t *swapped,
                                   float *peaks, int64_t cap)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_ROTATION, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    if (m < 0 || m >= r->n_mats)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "matrix %lld outside [0, %lld)",
                       (long long)m, (long long)r->n_mats);
    if (r->selected[m] < 0)
        return DQ_FAIL(&r->ctx, DQ_ERR_BAD_STATE, "matrix %lld was not found by a search",
                       (long long)m);
    if (steps)
        *steps = r->steps;
    const int64_t len = (int64_t)r->steps + 1;
    if ((ids || swapped || peaks) && cap < len)
        return DQ_FAIL(&r->ctx, DQ_ERR_BUFFER, "cap %lld < record length %lld", (long long)cap,
                       (long long)len);
    if (selected)
        *selected = r->selected[m];
    const size_t off = (size_t)m * (size_t)len;
    if (ids)
        memcpy(ids, r->ids + off, (size_t)len * sizeof(int64_t));
    if (swapped)
        memcpy(swapped, r->swapped + off, (size_t)len * sizeof(int32_t));
    if (peaks)
        memcpy(peaks, r->peaks + off, (size_t)len * sizeof(float));
    return DQ_OK;
}

DQ_API dq_status dq_rotation_apply(const dq_rotation *r, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_ROTATION, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    dq_status st = dq__check_matrix(&r->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != r->cols)
        return DQ_FAIL(&r->ctx, DQ_ERR_SHAPE, "cols %lld != rotation width %lld",
                       (long long)cols, (long long)r->cols);
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_FAIL(&r->ctx, DQ_ERR_NONFINITE, "x holds a NaN or infinity");
    const int64_t chunk = rows < APPLY_CHUNK_ROWS ? rows : APPLY_CHUNK_ROWS;
    size_t bytes;
    if (!dq__mul_size((size_t)chunk * sizeof(float), (size_t)cols, &bytes))
        return DQ_FAIL(&r->ctx, DQ_ERR_OVERFLOW, "%lld rows x %lld channels overflow size_t",
                       (long long)chunk, (long long)cols);
    float *tmp = dq__alloc(&r->ctx, bytes);
    if (!tmp)
        return DQ_FAIL(&r->ctx, DQ_ERR_NOMEM, "%zu bytes of temporary", bytes);
    for (int64_t r0 = 0; r0 < rows && st == DQ_OK; r0 += chunk) {
        int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        float *xr = x + (size_t)r0 * (size_t)ldx;
        st = dq__rotation_rows(r, xr, ldx, tmp, cols, m);
        /* Finite rows can overflow in the block sums: refused, not handed on as Inf. */
        if (st == DQ_OK && !dq__all_finite(tmp, m, cols, cols))
            st = DQ_FAIL(&r->ctx, DQ_ERR_NONFINITE,
                         "rows %lld..%lld of x * R (%lld channels) overflow float",
                         (long long)r0, (long long)(r0 + m - 1), (long long)cols);
        for (int64_t i = 0; i < m && st == DQ_OK; i++)
            memcpy(xr + (size_t)i * (size_t)ldx, tmp + (size_t)i * (size_t)cols,
                   (size_t)cols * sizeof(float));
    }
    dq__free(&r->ctx, tmp);
    return st;
}
