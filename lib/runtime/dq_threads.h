/* Fork-join over a few threads for the integer kernels: no state between calls, nothing global.
 * Results never depend on how work is split, so fewer threads than asked for (thread creation
 * failed) only costs time. */
#ifndef DQ_THREADS_H
#define DQ_THREADS_H

#include <stdbool.h>
#include <stdint.h>

/* The thread count a call should use: n_threads from the context (0 = online CPUs), at most
 * max_useful, at least 1. */
int32_t dq__threads_resolve(int32_t n_threads, int64_t max_useful);

/* Calls fn(arg, w, n) for w = 0..n-1, w = 0 on the calling thread, and returns when all are
 * done. */
void dq__parallel_run(int32_t n, void (*fn)(void *arg, int32_t w, int32_t n), void *arg);

/* [begin, end) of part w when count items are split evenly into n parts. */
static inline void dq__split(int64_t count, int32_t w, int32_t n, int64_t *begin, int64_t *end)
{
    *begin = count * w / n;
    *end = count * (w + 1) / n;
}

#endif
