/* A counting allocator for a context's alloc/free hooks: bytes live and their peak, and an
 * allocation made to fail by its number. Shared by the tests that bound what the library
 * allocates. */
#ifndef TEST_COUNT_ALLOC_H
#define TEST_COUNT_ALLOC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"

typedef struct counter {
    size_t live, peak;
    long fail_at; /* fail the allocation with this 1-based number; 0 = never */
    long calls;
} counter;

#define HEAD 64 /* size and alignment kept in front of each block */

static void *count_alloc(void *user, size_t size, size_t align)
{
    counter *c = user;
    c->calls++;
    if (c->fail_at > 0 && c->calls == c->fail_at)
        return NULL;
    if (align < HEAD)
        align = HEAD;
    uint8_t *p = aligned_alloc(align, (size + align + align - 1) / align * align);
    if (!p)
        return NULL;
    memcpy(p + align - 2 * sizeof(size_t), &size, sizeof size);
    memcpy(p + align - sizeof(size_t), &align, sizeof align);
    c->live += size;
    c->peak = c->live > c->peak ? c->live : c->peak;
    return p + align;
}

static void count_free(void *user, void *ptr)
{
    if (!ptr)
        return;
    counter *c = user;
    uint8_t *q = ptr;
    size_t size, align;
    memcpy(&size, q - 2 * sizeof(size_t), sizeof size);
    memcpy(&align, q - sizeof(size_t), sizeof align);
    c->live -= size;
    free(q - align);
}

/* A context allocating through c (free it with dq_context_free); NULL when it cannot be made. */
static inline dq_context *count_context(counter *c)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = count_alloc;
    p.free = count_free;
    p.alloc_user = c;
    dq_context *ctx = NULL;
    return dq_context_create(&p, &ctx) == DQ_OK ? ctx : NULL;
}

#endif
