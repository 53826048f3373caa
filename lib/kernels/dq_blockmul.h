/* Private declarations of dq_blockmul.c: the reproducible block product (spread over threads
 * by its callers through dq_pool.h). Used at run time (applying rotations) and offline (search,
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

/* The same product with one fused multiply-add per step (dq_blockmul.c): again the same bits
 * for any CPU variant, row blocking or thread split, but not dq__block_product's bits. Not
 * used by the searches (measured too small a gain: doc/performance.md). */
void dq__block_product_fused(const float *a, int64_t lda, int64_t m, int32_t k, const float *b,
                             int64_t ldb, int32_t n, float *c, int64_t ldc);
/* Its portable loops alone (fmaf; the oracle of the CPU variants). */
void dq__block_product_fused_portable(const float *a, int64_t lda, int64_t m, int32_t k,
                                      const float *b, int64_t ldb, int32_t n, float *c,
                                      int64_t ldc);

#endif /* DQ_BLOCKMUL_H */
