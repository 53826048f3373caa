/* Fork-join of the integer kernels' parts (see dq_threads.h).
 *
 * Starting a thread costs 60-400 us on the machines we measured, as much as a whole GEMV, so
 * the parts run on a process-wide set of workers started on first use and stopped when the
 * library is unloaded. One call uses them at a time; a concurrent call (another application
 * thread) starts its own threads instead, and so does a forked child. A worker spins briefly
 * after each part, so that back-to-back calls (layer after layer) find it awake, then sleeps. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "dq_threads.h"

#define MAX_THREADS 64
/* Polls before a waiting thread sleeps: some tens of microseconds. */
#define SPIN_POLLS 4000

static inline void cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#endif
}

/* glibc reads /sys for the online CPU count on every sysconf call: ask once. */
static pthread_once_t online_once = PTHREAD_ONCE_INIT;
static long online_cpus = 1;
static void count_online(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    online_cpus = n > 0 ? n : 1;
}

int32_t dq__threads_resolve(int32_t n_threads, int64_t max_useful)
{
    int64_t n = n_threads;
    if (n <= 0) {
        pthread_once(&online_once, count_online);
        n = online_cpus;
    }
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    if (n > max_useful)
        n = max_useful;
    return n < 1 ? 1 : (int32_t)n;
}

typedef void part_fn(void *arg, int32_t w, int32_t n);

/* ---- threads started for one call ---- */

typedef struct part {
    part_fn *fn;
    void *arg;
    int32_t w, n;
} part;

static void *part_main(void *p)
{
    part *pt = p;
    pt->fn(pt->arg, pt->w, pt->n);
    return NULL;
}

static void run_fresh(int32_t n, part_fn *fn, void *arg)
{
    pthread_t threads[MAX_THREADS];
    part parts[MAX_THREADS];
    bool started[MAX_THREADS] = {false};
    for (int32_t w = 1; w < n; w++) {
        parts[w] = (part){fn, arg, w, n};
        started[w] = pthread_create(&threads[w], NULL, part_main, &parts[w]) == 0;
    }
    fn(arg, 0, n);
    /* A part whose thread could not start runs here: the split stays the same. */
    for (int32_t w = 1; w < n; w++) {
        if (started[w])
            pthread_join(threads[w], NULL);
        else
            fn(arg, w, n);
    }
}

/* ---- the shared workers ---- */

static struct {
    pthread_mutex_t user;  /* held by the call using the workers */
    pthread_mutex_t lock;  /* guards sleeping and waking */
    pthread_cond_t wake, done;
    pthread_t threads[MAX_THREADS];
    uint64_t first_seen[MAX_THREADS]; /* generation when each worker started */
    int32_t started;       /* workers 1..started run */
    pid_t pid;             /* process that started them */
    _Atomic uint64_t generation;
    _Atomic int32_t pending;
    _Atomic bool quit;
    part_fn *fn;
    void *arg;
    int32_t n;
} pool = {.user = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static void *worker_main(void *p)
{
    const int32_t id = (int32_t)(intptr_t)p;
    uint64_t seen = pool.first_seen[id];
    for (;;) {
        uint64_t g = atomic_load_explicit(&pool.generation, memory_order_acquire);
        for (int s = 0; g == seen && s < SPIN_POLLS && !atomic_load(&pool.quit); s++) {
            cpu_relax();
            g = atomic_load_explicit(&pool.generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool.lock);
            while ((g = atomic_load(&pool.generation)) == seen && !atomic_load(&pool.quit))
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        if (atomic_load(&pool.quit))
            return NULL;
        seen = g;
        if (id < pool.n)
            pool.fn(pool.arg, id, pool.n);
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

#if defined(__GNUC__)
/* Unloading the library must not leave threads running its code. */
__attribute__((destructor)) static void pool_stop(void)
{
    pthread_mutex_lock(&pool.user);
    if (pool.started > 0 && pool.pid == getpid()) {
        pthread_mutex_lock(&pool.lock);
        atomic_store(&pool.quit, true);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
        for (int32_t w = 1; w <= pool.started; w++)
            pthread_join(pool.threads[w], NULL);
        pool.started = 0;
    }
    pthread_mutex_unlock(&pool.user);
}
#define POOL_AVAILABLE 1
#else
#define POOL_AVAILABLE 0
#endif

/* Called with pool.user held: at least n - 1 workers, or false. */
static bool pool_grow(int32_t n)
{
    if (pool.started > 0 && pool.pid != getpid())
        return false; /* a forked child: the workers belong to the parent */
    if (atomic_load(&pool.quit))
        return false;
    pool.pid = getpid();
    while (pool.started < n - 1) {
        const int32_t id = pool.started + 1;
        /* Workers that start now skip the jobs already run. */
        pool.first_seen[id] = atomic_load(&pool.generation);
        if (pthread_create(&pool.threads[id], NULL, worker_main, (void *)(intptr_t)id) != 0)
            return false;
        pool.started = id;
    }
    return true;
}

void dq__parallel_run(int32_t n, void (*fn)(void *arg, int32_t w, int32_t n), void *arg)
{
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    if (n <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (!POOL_AVAILABLE || pthread_mutex_trylock(&pool.user) != 0) {
        run_fresh(n, fn, arg);
        return;
    }
    if (!pool_grow(n)) {
        pthread_mutex_unlock(&pool.user);
        run_fresh(n, fn, arg);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.n = n;
    atomic_store(&pool.pending, pool.started);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(arg, 0, n);
    for (int s = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0 &&
                    s < SPIN_POLLS;
         s++)
        cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (atomic_load(&pool.pending) > 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.user);
}
