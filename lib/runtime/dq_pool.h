/* Parallel loops on the context's threads (dq_pool.c).
 *
 * Every parallel call of the library goes through dq__parallel: it runs fn(arg, p, n) once for
 * each part p of n and returns when all are done. Where the parts run is the context's choice:
 *   - a NULL context: one after another on the calling thread (no thread is ever created);
 *   - dq_context_params.parallel_for set: on the engine's threads, through that callback (the
 *     library creates no thread);
 *   - else the context's own pool: up to n_threads - 1 workers started on the first parallel
 *     call and joined when the context and every object keeping it are released. Part 0 runs on
 *     the calling thread. A call that finds the pool busy with another call (another
 *     application thread, or a parallel call made from inside a part) runs its parts on its own
 *     thread instead of starting threads.
 * Callers split work so that results never depend on the part count or on which thread runs a
 * part: the same bits for every thread count and for the engine's pool. */
#ifndef DQ_POOL_H
#define DQ_POOL_H

#include "dq_internal.h"

typedef void dq__part_fn(void *arg, int32_t part, int32_t n_parts);

/* The part count a call should use: the context's thread count (1 for a NULL context), at most
 * max_useful, at least 1. */
int32_t dq__threads(const dq_context *ctx, int64_t max_useful);

/* Calls fn(arg, p, n) for p = 0..n-1 and returns when all are done (see above). */
void dq__parallel(const dq_context *ctx, int32_t n, dq__part_fn *fn, void *arg);

/* [begin, end) of part w when count items are split evenly into n parts. */
static inline void dq__split(int64_t count, int32_t w, int32_t n, int64_t *begin, int64_t *end)
{
    *begin = count * w / n;
    *end = count * (w + 1) / n;
}

/* The pool shared by a context and the copies objects keep (dq_context.c): created with the
 * context (no thread yet), one reference per holder, joined and freed with the last one.
 * n_workers: the most parts one call runs (the resolved thread count). The pool's allocation
 * holds the context handle too (dq__pool_context), so that a context costs one allocation and
 * lives exactly as long as its pool. */
dq_status dq__pool_create(const dq_context *ctx, int32_t n_workers, dq__pool **out);
dq_context *dq__pool_context(dq__pool *pool);
void dq__pool_retain(dq__pool *pool);
void dq__pool_release(dq__pool *pool);

#endif /* DQ_POOL_H */
