/* Private declarations of dq_blockmul.c: the reproducible block product and the worker pool
 * that spreads it over threads. Used at run time (applying rotations) and offline (search,
 * refinement, plan building). Never installed. */
#ifndef DQ_BLOCKMUL_H
#define DQ_BLOCKMUL_H

#include "dq_internal.h"

/* Reproducible c (m x n, ldc) = a (m x k, lda) * b (k x n, ldb): the same bits for any CPU
 * variant, row blocking or thread split (dq_blockmul.c). */
void dq__block_product(const float *a, int64_t lda, int64_t m, int32_t k, const float *b,
                       int64_t ldb, int32_t n, float *c, int64_t ldc);
/* The portable loops alone (the oracle of the CPU variants). */
void dq__block_product_portable(const float *a, int64_t lda, int64_t m, int32_t k,
                                const float *b, int64_t ldb, int32_t n, float *c, int64_t ldc);

/* A fixed set of worker threads; dq__pool_run calls fn(arg, w, n) for w = 0..n-1 (w = 0 on the
 * calling thread) and returns when all are done. n_threads 1: no extra threads; 0: one worker
 * per online CPU (the context's "host decides"). */
typedef struct dq__pool dq__pool;
dq_status dq__pool_create(const dq_context *ctx, int32_t n_threads, dq__pool **out);
void dq__pool_run(dq__pool *pool, void (*fn)(void *arg, int32_t worker, int32_t n_workers),
                  void *arg);
int32_t dq__pool_workers(const dq__pool *pool);
void dq__pool_free(dq__pool *pool);
/* Rows [begin, end) of worker w of n for m rows. */
void dq__split_rows(int64_t m, int32_t w, int32_t n, int64_t *begin, int64_t *end);

#endif /* DQ_BLOCKMUL_H */
