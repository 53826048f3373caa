/* Zigzag permutation: spreads the channels with the largest magnitudes evenly over the
 * rotation blocks, so that every block has a similar share of outliers. */
#include <math.h>
#include <stdlib.h>

#include "dq_transform.h"

typedef struct keyed {
    float key;
    int64_t index;
} keyed;

/* Descending by key, ascending by index among equal keys: a stable descending sort. */
static int by_key_desc(const void *pa, const void *pb)
{
    const keyed *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key > b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* The next block in the order 0, 1, ..., K-1, K-1, ..., 0, 0, 1, ... */
static void zigzag_step(int64_t *cur, bool *up, int64_t k)
{
    if (*up) {
        if (++*cur == k) {
            *cur = k - 1;
            *up = false;
        }
    } else if (--*cur < 0) {
        *cur = 0;
        *up = true;
    }
}

dq_status dq__zigzag(const dq_context *ctx, const float *key, int64_t n, int32_t block_size,
                     int64_t *perm)
{
    ctx = dq__ctx(ctx);
    const int64_t k = dq__n_blocks(n, block_size);
    keyed *sorted = dq__alloc(ctx, (size_t)n * sizeof *sorted);
    int64_t *fill = dq__calloc(ctx, (size_t)k, sizeof *fill);
    if (!sorted || !fill) {
        dq__free(ctx, sorted);
        dq__free(ctx, fill);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "sort of %lld keys", (long long)n);
    }
    for (int64_t j = 0; j < n; j++)
        sorted[j] = (keyed){key[j], j};
    qsort(sorted, (size_t)n, sizeof *sorted, by_key_desc);

    /* Deal in sorted order, skipping blocks already full (only a shorter last block fills
     * early; with equal blocks nothing is ever skipped). Each block receives its channels in
     * descending key order, which is also the stable sort of the block the reference does
     * afterwards, so positions follow the dealing order. */
    int64_t cur = 0;
    bool up = true;
    for (int64_t i = 0; i < n; i++) {
        while (fill[cur] == dq__block_len(n, block_size, cur))
            zigzag_step(&cur, &up, k);
        perm[cur * block_size + fill[cur]] = sorted[i].index;
        fill[cur]++;
        zigzag_step(&cur, &up, k);
    }
    dq__free(ctx, sorted);
    dq__free(ctx, fill);
    return DQ_OK;
}

DQ_API dq_status dq_permutation_zigzag(const float *key, int64_t n, int32_t block_size,
                                       int64_t *perm)
{
    if (!key || !perm)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !key ? "key" : "perm");
    if (block_size < 1)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "block_size %d, expected >= 1",
                       (int)block_size);
    if (n <= 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %lld, expected > 0", (long long)n);
    if ((uint64_t)n > SIZE_MAX / sizeof(keyed))
        return DQ_FAIL(NULL, DQ_ERR_OVERFLOW, "n %lld keys overflow size_t", (long long)n);
    for (int64_t j = 0; j < n; j++)
        if (!isfinite(key[j]))
            return DQ_FAIL(NULL, DQ_ERR_NONFINITE, "key[%lld] is not finite", (long long)j);
    return dq__zigzag(NULL, key, n, block_size, perm);
}
