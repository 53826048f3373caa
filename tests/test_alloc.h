/* A counting allocator with failure injection, for leak and out-of-memory tests. */
#ifndef TEST_ALLOC_H
#define TEST_ALLOC_H

#include <stdlib.h>

#include "duquant.h"

typedef struct test_alloc {
    long live;      /* allocations not yet freed */
    long total;     /* allocations made */
    long fail_at;   /* fail the allocation with this 1-based number; 0 = never */
} test_alloc;

static void *test_alloc_fn(void *user, size_t size, size_t align)
{
    test_alloc *a = user;
    if (a->fail_at > 0 && a->total + 1 == a->fail_at) {
        a->total++;
        return NULL;
    }
    size_t rounded = (size + align - 1) / align * align;
    void *p = aligned_alloc(align, rounded);
    if (p) {
        a->live++;
        a->total++;
    }
    return p;
}

static void test_free_fn(void *user, void *p)
{
    test_alloc *a = user;
    a->live--;
    free(p);
}

/* A context with the given dq_context_params.flags that allocates through a; free it with
 * dq_context_free (that frees through a too). */
static inline dq_context *test_alloc_context_flags(test_alloc *a, uint32_t flags)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = test_alloc_fn;
    p.free = test_free_fn;
    p.alloc_user = a;
    p.flags = flags;
    dq_context *ctx = NULL;
    if (dq_context_create(&p, &ctx) != DQ_OK)
        return NULL;
    return ctx;
}

/* The same with no flags. */
static inline dq_context *test_alloc_context(test_alloc *a)
{
    return test_alloc_context_flags(a, 0);
}

#endif
