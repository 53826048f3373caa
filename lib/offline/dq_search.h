/* Private interface of the greedy rotation search (dq_search.c): the plain search, kept as the
 * oracle, and the exact pruned search that the library uses. Never installed. */
#ifndef DQ_SEARCH_H
#define DQ_SEARCH_H

#include "dq_transform.h"

/* The (tokens * blocks) x n view searched: row r = t * blocks + b holds token t of block b,
 * the n floats at x + t * ldx + b * stride. */
typedef struct dq__search_view {
    const float *x;
    int64_t ldx;
    int64_t tokens;
    int64_t blocks;
    int64_t stride;
    int32_t n;
} dq__search_view;

/* What a search records: steps + 1 entries each, and the kept prefix. */
typedef struct dq__search_record {
    int64_t *ids;
    int32_t *swapped;
    float *peaks;
    int32_t selected;
    int64_t rows_searched; /* view rows multiplied at every step (all of them when plain) */
} dq__search_record;

enum {
    DQ__SEARCH_PLAIN = 0,  /* every row at every step */
    DQ__SEARCH_PRUNED = 1, /* only the rows whose norm can reach the extremes */
};

/* Greedy search of base (n x n, n >= 2) on the view, steps steps, column rule or the
 * reference's row rule, on ctx's threads. r_out (n x n) receives the product of the step
 * matrices of the kept prefix. Both modes give the same record and the same bits in r_out. */
dq_status dq__greedy_search(const dq_context *ctx, int32_t mode,
                            const dq__search_view *v, const float *base, int32_t steps,
                            bool row_rule, float *r_out, dq__search_record *rec);

#endif /* DQ_SEARCH_H */
