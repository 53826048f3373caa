/* Handle type tags: misuse detection for the opaque objects of duquant.h.
 *
 * Every handle struct begins with `uint64_t tag` followed by its `dq_context ctx` (the context
 * handle itself has just the tag first). The creator sets the live tag of the type; every
 * public function taking the handle compares it on entry (one load and one compare, the
 * failure path out of line), so a handle of another type passed by a cast, a freed handle or
 * a stray pointer is DQ_ERR_INVALID_ARG instead of a silent wrong result; the *_free
 * functions check it too and write the type's freed tag before the memory goes back to the
 * allocator, so a second free is reported and does nothing.
 *
 * Where the tag sits, and why at offset 0: it gives every handle type the same place to look,
 * so the failure path can name the type it found ("pl: a dq_qmatrix handle was passed where a
 * dq_plan is expected"). After a real release the first bytes of a block belong to the
 * allocator: glibc keeps its free-list links in the first 16 bytes of a freed chunk (tcache
 * `next` and `key`, or a bin's fd/bk), so a handle freed through malloc's free reads back with
 * a pointer where the tag was: not a live tag of any type, hence still rejected (as "not a
 * live handle"), but the freed tag itself is only seen where the allocator leaves the block
 * alone (a quarantining or pooling allocator in the context, as the tests use). The tag values
 * have ASCII in their top bytes (>= 2^62): no user-space address (< 2^57 on 64-bit Linux,
 * 5-level paging included), hence no free-list link, even one mangled by glibc's safe-linking (an address
 * XORed with another shifted right by 12), can equal one, nor can a size or small integer.
 * Reading a freed block is outside what C defines: detection of use after free is best effort
 * (reliable with an allocator that keeps freed blocks; a block reused for another object of
 * the same type reads as live), type confusion and a double free through a kept block are
 * caught every time.
 *
 * Logging a misuse: through the function's context argument when it has one (non-NULL), else
 * through the context recorded in the handle found when its tag is one of ours (live or freed:
 * the block then still holds what the library wrote), else nowhere (a stray pointer's memory
 * is never trusted beyond its first word). */
#ifndef DQ_HANDLE_H
#define DQ_HANDLE_H

#include <stddef.h>
#include <stdint.h>

#include "dq_internal.h"

enum {
    DQ__H_CONTEXT = 1,
    DQ__H_CALIB,
    DQ__H_ROTATION,
    DQ__H_PLAN,
    DQ__H_QMATRIX,
    DQ__H_LWC,
    DQ__H_LINEAR,
    DQ__H_FILE_WRITER,
    DQ__H_FILE_READER,
    DQ__H_HESSIAN,
    DQ__H_COUNT
};

/* "DQHLIVE" and "DQHFREE" in the high bytes (ASCII), the type in the low byte. */
#define DQ__TAG_LIVE_BASE UINT64_C(0x4451484C49564500)
#define DQ__TAG_FREED_BASE UINT64_C(0x4451484652454500)
#define DQ__TAG(type) (DQ__TAG_LIVE_BASE | (uint64_t)(type))
#define DQ__TAG_FREED(type) (DQ__TAG_FREED_BASE | (uint64_t)(type))

#define DQ__TAG_CONTEXT DQ__TAG(DQ__H_CONTEXT)
#define DQ__TAG_CALIB DQ__TAG(DQ__H_CALIB)
#define DQ__TAG_ROTATION DQ__TAG(DQ__H_ROTATION)
#define DQ__TAG_PLAN DQ__TAG(DQ__H_PLAN)
#define DQ__TAG_QMATRIX DQ__TAG(DQ__H_QMATRIX)
#define DQ__TAG_LWC DQ__TAG(DQ__H_LWC)
#define DQ__TAG_LINEAR DQ__TAG(DQ__H_LINEAR)
#define DQ__TAG_FILE_WRITER DQ__TAG(DQ__H_FILE_WRITER)
#define DQ__TAG_FILE_READER DQ__TAG(DQ__H_FILE_READER)
#define DQ__TAG_HESSIAN DQ__TAG(DQ__H_HESSIAN)

/* Offset of the context copy in every handle but the context itself. */
#define DQ__HANDLE_CTX_OFFSET 8

/* Put after a handle struct's definition: the tag first, the context copy right after. */
#define DQ__HANDLE_LAYOUT(type)                                                              \
    _Static_assert(offsetof(type, tag) == 0 && offsetof(type, ctx) == DQ__HANDLE_CTX_OFFSET, \
                   #type ": the tag must come first, then the context")

/* The tag of handle h (its first member; h not NULL). */
static inline uint64_t dq__handle_tag(const void *h)
{
    return *(const uint64_t *)h;
}

/* The failure path of the checks below (out of line): logs "func: name: ..." saying what was
 * found (another type's handle, a freed handle, no handle) and returns DQ_ERR_INVALID_ARG.
 * log_ctx: the function's own context argument, or NULL (see above). */
dq_status dq__handle_fail(const dq_context *log_ctx, const void *h, int32_t expected,
                          const char *func, const char *name);

/* Entry check of a public function returning dq_status: h NULL passes (the function's own
 * NULL check decides), else its tag must be the live tag of type. */
#define DQ_CHECK_HANDLE(log_ctx, h, type, name)                                        \
    do {                                                                               \
        if ((h) != NULL && __builtin_expect(dq__handle_tag(h) != DQ__TAG(type), 0))    \
            return dq__handle_fail((log_ctx), (h), (type), __func__, (name));          \
    } while (0)

/* The same in a creator: *out (out not NULL) is set to NULL first, as on any failure. */
#define DQ_CHECK_HANDLE_OUT(log_ctx, h, type, name, out)                               \
    do {                                                                               \
        if ((h) != NULL && __builtin_expect(dq__handle_tag(h) != DQ__TAG(type), 0)) {  \
            if ((out) != NULL)                                                         \
                *(out) = NULL;                                                         \
            return dq__handle_fail((log_ctx), (h), (type), __func__, (name));          \
        }                                                                              \
    } while (0)

/* The same for a *_free: a wrong or freed tag is logged and the call does nothing. */
#define DQ_CHECK_HANDLE_FREE(h, type, name)                                            \
    do {                                                                               \
        if ((h) != NULL && __builtin_expect(dq__handle_tag(h) != DQ__TAG(type), 0)) {  \
            (void)dq__handle_fail(NULL, (h), (type), __func__, (name));                \
            return;                                                                    \
        }                                                                              \
    } while (0)

/* In a *_free, after the check and before the memory is released. */
#define DQ_HANDLE_RETIRE(h, type) ((h)->tag = DQ__TAG_FREED(type))

#endif /* DQ_HANDLE_H */
