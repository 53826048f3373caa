/* Contexts: allocator, log callback and thread policy, immutable once created. */
#define _POSIX_C_SOURCE 200809L /* sysconf */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "dq_handle.h"
#include "dq_internal.h"
#include "dq_pool.h"

/* The first released layout ends after n_threads. */
#define CONTEXT_PARAMS_MIN_SIZE (offsetof(dq_context_params, n_threads) + sizeof(int32_t))
/* n_threads 0: the online CPUs, at most this many. */
#define MAX_HOST_THREADS 64

/* A NULL context: single-threaded, no pool. */
const dq_context dq__default_context = {
    .tag = DQ__TAG_CONTEXT,
    .alloc = NULL, .free = NULL, .alloc_user = NULL,
    .log = NULL, .log_user = NULL, .log_level = DQ_LOG_WARN, .n_threads = 1,
};

void dq__context_keep(dq_context *dst, const dq_context *src)
{
    *dst = *dq__ctx(src);
    if (dst->pool)
        dq__pool_retain(dst->pool);
}

void dq__context_drop(dq_context *ctx)
{
    if (ctx && ctx->pool) {
        dq__pool_release(ctx->pool);
        ctx->pool = NULL;
    }
}

void *dq__alloc(const dq_context *ctx, size_t size)
{
    ctx = dq__ctx(ctx);
    if (size == 0)
        return NULL;
    if (ctx->alloc)
        return ctx->alloc(ctx->alloc_user, size, DQ_ALIGN);
    /* aligned_alloc wants a multiple of the alignment. */
    size_t rounded;
    if (!dq__add_size(size, DQ_ALIGN - 1, &rounded))
        return NULL;
    rounded &= ~(size_t)(DQ_ALIGN - 1);
    return aligned_alloc(DQ_ALIGN, rounded);
}

void *dq__calloc(const dq_context *ctx, size_t n, size_t elem)
{
    size_t size;
    if (!dq__mul_size(n, elem, &size))
        return NULL;
    void *p = dq__alloc(ctx, size);
    if (p)
        memset(p, 0, size);
    return p;
}

void dq__free(const dq_context *ctx, void *p)
{
    if (!p)
        return;
    ctx = dq__ctx(ctx);
    if (ctx->free)
        ctx->free(ctx->alloc_user, p);
    else
        free(p);
}

void dq__log(const dq_context *ctx, int32_t level, const char *fmt, ...)
{
    ctx = dq__ctx(ctx);
    if (!ctx->log || level > ctx->log_level)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->log(ctx->log_user, level, msg);
}

dq_status dq__fail(const dq_context *ctx, dq_status st, const char *func, const char *fmt, ...)
{
    ctx = dq__ctx(ctx);
    if (!ctx->log || ctx->log_level < DQ_LOG_ERROR)
        return st;
    char detail[448];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s (%s)", func, detail, dq_status_name(st));
    ctx->log(ctx->log_user, DQ_LOG_ERROR, msg);
    return st;
}

DQ_API dq_status dq_context_params_init(dq_context_params *p, size_t struct_size)
{
    const dq_context_params defaults = {
        .struct_size = sizeof defaults,
        .log_level = DQ_LOG_WARN,
    };
    return dq__params_init(p, struct_size, CONTEXT_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

DQ_API dq_status dq_context_create(const dq_context_params *p, dq_context **out)
{
    if (!out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_context_params prm;
    dq_context_params_init(&prm, sizeof prm);
    /* Until the context exists, the caller's log callback is the one to tell. */
    dq_context early = dq__default_context;
    if (p && p->struct_size >= offsetof(dq_context_params, log_level) + sizeof(int32_t)) {
        early.log = p->log;
        early.log_user = p->log_user;
        early.log_level = DQ_LOG_ERROR;
    }
    dq_status st = DQ_PARAMS_READ(&early, "p", &prm, sizeof prm, CONTEXT_PARAMS_MIN_SIZE, p);
    if (st != DQ_OK)
        return st;
    if (prm.flags & ~(uint32_t)DQ_CONTEXT_F_HALF_MATRICES)
        return DQ_FAIL(&early, DQ_ERR_INVALID_ARG, "p->flags 0x%x: unknown bits 0x%x",
                       (unsigned)prm.flags,
                       (unsigned)(prm.flags & ~(uint32_t)DQ_CONTEXT_F_HALF_MATRICES));
    if ((prm.alloc == NULL) != (prm.free == NULL))
        return DQ_FAIL(&early, DQ_ERR_INVALID_ARG, "p->alloc is %s but p->free is %s",
                       prm.alloc ? "set" : "NULL", prm.free ? "set" : "NULL");
    if (prm.log_level < DQ_LOG_ERROR || prm.log_level > DQ_LOG_DEBUG)
        return DQ_FAIL(&early, DQ_ERR_INVALID_ARG, "p->log_level %d outside [%d, %d]",
                       (int)prm.log_level, DQ_LOG_ERROR, DQ_LOG_DEBUG);
    if (prm.n_threads < 0 || prm.n_threads > 1024)
        return DQ_FAIL(&early, DQ_ERR_INVALID_ARG, "p->n_threads %d outside [0, 1024]",
                       (int)prm.n_threads);
    int32_t n = prm.n_threads;
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online < 1 ? 1 : online > MAX_HOST_THREADS ? MAX_HOST_THREADS : (int32_t)online;
    }
    dq_context tmp = {
        .tag = DQ__TAG_CONTEXT,
        .alloc = prm.alloc, .free = prm.free, .alloc_user = prm.alloc_user,
        .log = prm.log, .log_user = prm.log_user, .log_level = prm.log_level,
        .n_threads = n, .parallel_for = prm.parallel_for, .parallel_user = prm.parallel_user,
        .flags = prm.flags,
    };
    dq_context *ctx;
    if (!tmp.parallel_for && n > 1) {
        /* The handle lives in the pool's allocation and goes with its last reference. */
        if ((st = dq__pool_create(&tmp, n, &tmp.pool)) != DQ_OK)
            return st;
        ctx = dq__pool_context(tmp.pool);
    } else if (!(ctx = dq__alloc(&tmp, sizeof *ctx))) { /* one thread or the engine's loop */
        return DQ_FAIL(&tmp, DQ_ERR_NOMEM, "%zu bytes for the context", sizeof *ctx);
    }
    *ctx = tmp;
    *out = ctx;
    return DQ_OK;
}

DQ_API void dq_context_free(dq_context *ctx)
{
    if (!ctx)
        return;
    DQ_CHECK_HANDLE_FREE(ctx, DQ__H_CONTEXT, "ctx");
    DQ_HANDLE_RETIRE(ctx, DQ__H_CONTEXT);
    if (ctx->pool) {
        dq__pool_release(ctx->pool); /* frees ctx with the last reference */
        return;
    }
    dq_context copy = *ctx;
    dq__free(&copy, ctx);
}

typedef struct engine_loop {
    dq_task_fn fn;
    void *task_arg;
    int32_t n_tasks;
} engine_loop;

/* Part p of n runs its contiguous run of the engine's tasks. */
static void engine_part(void *arg, int32_t p, int32_t n)
{
    const engine_loop *e = arg;
    int64_t t0, t1;
    dq__split(e->n_tasks, p, n, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        e->fn(e->task_arg, (int32_t)t, e->n_tasks);
}

DQ_API dq_status dq_context_parallel(const dq_context *ctx, dq_task_fn fn, void *task_arg,
                                     int32_t n_tasks)
{
    DQ_CHECK_HANDLE(NULL, ctx, DQ__H_CONTEXT, "ctx");
    if (!fn)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "fn is NULL");
    if (n_tasks < 0)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "n_tasks %d, expected >= 0", (int)n_tasks);
    if (n_tasks == 0)
        return DQ_OK;
    engine_loop e = {fn, task_arg, n_tasks};
    dq__parallel(ctx, dq__threads(ctx, n_tasks), engine_part, &e);
    return DQ_OK;
}

/* ---- handle checks (dq_handle.h) ---- */

static const char *const handle_type_names[DQ__H_COUNT] = {
    [DQ__H_CONTEXT] = "dq_context",         [DQ__H_CALIB] = "dq_calib",
    [DQ__H_ROTATION] = "dq_rotation",       [DQ__H_PLAN] = "dq_plan",
    [DQ__H_QMATRIX] = "dq_qmatrix",         [DQ__H_LWC] = "dq_lwc",
    [DQ__H_LINEAR] = "dq_linear",           [DQ__H_FILE_WRITER] = "dq_file_writer",
    [DQ__H_FILE_READER] = "dq_file_reader", [DQ__H_HESSIAN] = "dq_hessian",
};

dq_status dq__handle_fail(const dq_context *log_ctx, const void *h, int32_t expected,
                          const char *func, const char *name)
{
    const uint64_t tag = dq__handle_tag(h);
    const uint64_t base = tag & ~(uint64_t)0xFF;
    const int32_t found = (int32_t)(tag & 0xFF);
    const bool known = found >= 1 && found < DQ__H_COUNT &&
                       (base == DQ__TAG_LIVE_BASE || base == DQ__TAG_FREED_BASE);
    const char *want = expected >= 1 && expected < DQ__H_COUNT ? handle_type_names[expected]
                                                               : "handle";
    /* The block holds what the library wrote only when the tag is one of ours. */
    if (!log_ctx && known)
        log_ctx = found == DQ__H_CONTEXT
                      ? (const dq_context *)h
                      : (const dq_context *)(const void *)((const char *)h +
                                                           DQ__HANDLE_CTX_OFFSET);
    if (known && base == DQ__TAG_LIVE_BASE)
        return dq__fail(log_ctx, DQ_ERR_INVALID_ARG, func,
                        "%s: a %s handle was passed where a %s is expected", name,
                        handle_type_names[found], want);
    if (known && found == expected)
        return dq__fail(log_ctx, DQ_ERR_INVALID_ARG, func,
                        "%s: a freed %s handle was passed (use after free or double free)",
                        name, want);
    if (known)
        return dq__fail(log_ctx, DQ_ERR_INVALID_ARG, func,
                        "%s: a freed %s handle was passed where a %s is expected", name,
                        handle_type_names[found], want);
    return dq__fail(log_ctx, DQ_ERR_INVALID_ARG, func,
                    "%s: not a live %s handle (tag 0x%016llx: a stray pointer, or a handle "
                    "already freed)",
                    name, want, (unsigned long long)tag);
}
