/* The context's thread pool and the parallel loop every kernel runs through (see dq_pool.h).
 *
 * Starting a thread costs 60-400 us on the machines we measured, as much as a whole GEMV, so a
 * context's workers start on its first parallel call and live until the context and every
 * object keeping it are released. One call uses them at a time; a concurrent call runs its
 * parts on its own thread, and so does a forked child (the workers belong to the parent). A
 * worker spins briefly after each part, so that back-to-back calls (layer after layer) find it
 * awake, then sleeps on a condition variable. */
#define _POSIX_C_SOURCE 200809L /* getpid */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "dq_pool.h"

/* Polls before a waiting thread sleeps: 0.2-0.5 ms, longer than the single-threaded stretches
 * between a decode step's products (norms, attention), so that the workers are still awake
 * for the next one (2000 polls: about 2 % fewer tokens/s on a 7B-shaped decode). */
#define SPIN_POLLS 8000

static inline void cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#endif
}

typedef struct worker {
    dq__pool *pool;
    pthread_t thread;
    int32_t id;
    uint64_t first_seen; /* generation when the worker started */
} worker;

struct dq__pool {
    dq_context alloc;      /* the allocator the pool was made with (its pool member NULL) */
    _Atomic int32_t refs;
    int32_t n_workers;     /* the most parts of one call; workers 1..n_workers-1 */
    pthread_mutex_t user;  /* held by the call using the workers */
    pthread_mutex_t lock;  /* guards sleeping and waking */
    pthread_cond_t wake, done;
    int32_t started;       /* workers 1..started run */
    bool broken;           /* a thread failed to start: no more tries */
    pid_t pid;             /* process that started them */
    _Atomic uint64_t generation;
    _Atomic int32_t pending;
    _Atomic bool quit;
    dq__part_fn *fn;
    void *arg;
    int32_t n;
    dq_context context;    /* the handle dq_context_create returns: one allocation for both */
    worker workers[];      /* n_workers entries, [0] unused */
};

static void *worker_main(void *p)
{
    worker *me = p;
    dq__pool *pool = me->pool;
    uint64_t seen = me->first_seen;
    for (;;) {
        uint64_t g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int s = 0; g == seen && s < SPIN_POLLS && !atomic_load(&pool->quit); s++) {
            cpu_relax();
            g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool->lock);
            while ((g = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->quit))
                pthread_cond_wait(&pool->wake, &pool->lock);
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->quit))
            return NULL;
        seen = g;
        if (me->id < pool->n)
            pool->fn(pool->arg, me->id, pool->n);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
}

dq_status dq__pool_create(const dq_context *ctx, int32_t n_workers, dq__pool **out)
{
    *out = NULL;
    dq__pool *pool = dq__calloc(ctx, 1, sizeof *pool + (size_t)n_workers * sizeof(worker));
    if (!pool)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "no memory for a pool of %d threads", (int)n_workers);
    pool->alloc = *ctx;
    pool->alloc.pool = NULL;
    pool->alloc.parallel_for = NULL;
    atomic_init(&pool->refs, 1);
    pool->n_workers = n_workers;
    pthread_mutex_init(&pool->user, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->quit, false);
    *out = pool;
    return DQ_OK;
}

dq_context *dq__pool_context(dq__pool *pool)
{
    return &pool->context;
}

void dq__pool_retain(dq__pool *pool)
{
    atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
}

void dq__pool_release(dq__pool *pool)
{
    if (atomic_fetch_sub_explicit(&pool->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* The last holder: no call can be running on the pool. */
    if (pool->started > 0 && pool->pid == getpid()) {
        pthread_mutex_lock(&pool->lock);
        atomic_store(&pool->quit, true);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
        for (int32_t w = 1; w <= pool->started; w++)
            pthread_join(pool->workers[w].thread, NULL);
    }
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->user);
    dq_context c = pool->alloc;
    dq__free(&c, pool);
}

/* Called with pool->user held: true when workers 1..n-1 run. */
static bool pool_grow(dq__pool *pool, int32_t n)
{
    if (pool->started > 0 && pool->pid != getpid())
        return false; /* a forked child: the workers belong to the parent */
    if (pool->started >= n - 1)
        return true;
    if (pool->broken)
        return false;
    pool->pid = getpid();
    while (pool->started < n - 1) {
        worker *w = &pool->workers[pool->started + 1];
        /* Workers that start now skip the jobs already run. */
        *w = (worker){pool, w->thread, pool->started + 1, atomic_load(&pool->generation)};
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pool->broken = true;
            return false;
        }
        pool->started++;
    }
    return true;
}

static void run_here(int32_t n, dq__part_fn *fn, void *arg)
{
    for (int32_t p = 0; p < n; p++)
        fn(arg, p, n);
}

int32_t dq__threads(const dq_context *ctx, int64_t max_useful)
{
    int64_t n = dq__ctx(ctx)->n_threads;
    if (n > max_useful)
        n = max_useful;
    return n < 1 ? 1 : (int32_t)n;
}

void dq__parallel(const dq_context *ctx, int32_t n, dq__part_fn *fn, void *arg)
{
    ctx = dq__ctx(ctx);
    if (n <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (ctx->parallel_for) {
        ctx->parallel_for(ctx->parallel_user, fn, arg, n);
        return;
    }
    dq__pool *pool = ctx->pool;
    if (!pool || n > pool->n_workers || pthread_mutex_trylock(&pool->user) != 0) {
        run_here(n, fn, arg);
        return;
    }
    if (!pool_grow(pool, n)) {
        pthread_mutex_unlock(&pool->user);
        run_here(n, fn, arg);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    atomic_store(&pool->pending, pool->started);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    fn(arg, 0, n);
    for (int s = 0; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0 &&
                    s < SPIN_POLLS;
         s++)
        cpu_relax();
    pthread_mutex_lock(&pool->lock);
    while (atomic_load(&pool->pending) > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->user);
}
