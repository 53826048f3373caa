/* The context's threads: the same bits for every thread count and for an engine's own parallel
 * loop; no library thread with the engine's loop or a NULL context; the pool joined when the
 * context and its last object are freed; a context freed before its objects; concurrent
 * forwards on one context. A plain program (no Check fork machinery) so that ThreadSanitizer
 * sees every access. Exit 0 on success, 1 on any failure. */
#include "dq_test.h"

#include <dirent.h>
#include <duquant.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_online.h"

/* Sizes large enough that the kernels split their work: the integer product runs on two parts
 * from 2^27 multiply-adds, the fused transform on one tile per thread. */
enum { TOKENS = 128, COLS = 1024, OUT = 1024, BLOCK = 64, STEPS = 12, ENGINE_THREADS = 3 };
enum { N_MATS = COLS / BLOCK };

static int failures;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

/* Threads of this process, from /proc/self/task. */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A joined thread may linger in /proc for an instant after pthread_join returns. */
static int settled_thread_count(int want)
{
    int n = thread_count();
    for (int i = 0; i < 100000 && n != want; i++) {
        sched_yield();
        n = thread_count();
    }
    return n;
}

/* ---- an engine's parallel loop: its own persistent threads, tasks taken last first ---- */

typedef struct engine {
    pthread_mutex_t call; /* one loop at a time; others wait their turn */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pthread_t threads[ENGINE_THREADS];
    uint64_t generation;
    bool quit;
    dq_task_fn fn;
    void *arg;
    int32_t n, next, finished;
    atomic_long loops, tasks;
} engine;

static _Thread_local bool in_engine_worker;

/* Runs tasks until none is left; called with e->lock held. */
static void engine_drain(engine *e)
{
    while (e->next < e->n) {
        const int32_t t = e->n - 1 - e->next++; /* out of order: last task first */
        dq_task_fn fn = e->fn;
        void *arg = e->arg;
        const int32_t n = e->n;
        pthread_mutex_unlock(&e->lock);
        fn(arg, t, n);
        atomic_fetch_add(&e->tasks, 1);
        pthread_mutex_lock(&e->lock);
        if (++e->finished == e->n)
            pthread_cond_broadcast(&e->done);
    }
}

static void *engine_main(void *p)
{
    engine *e = p;
    in_engine_worker = true;
    uint64_t seen = 0;
    pthread_mutex_lock(&e->lock);
    for (;;) {
        while (!e->quit && e->generation == seen)
            pthread_cond_wait(&e->wake, &e->lock);
        if (e->quit)
            break;
        seen = e->generation;
        engine_drain(e);
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static void engine_parallel_for(void *user, dq_task_fn fn, void *task_arg, int32_t n_tasks)
{
    engine *e = user;
    atomic_fetch_add(&e->loops, 1);
    if (in_engine_worker) { /* a loop inside a task: run it here */
        for (int32_t t = n_tasks - 1; t >= 0; t--)
            fn(task_arg, t, n_tasks);
        return;
    }
    pthread_mutex_lock(&e->call);
    pthread_mutex_lock(&e->lock);
    e->fn = fn;
    e->arg = task_arg;
    e->n = n_tasks;
    e->next = e->finished = 0;
    e->generation++;
    pthread_cond_broadcast(&e->wake);
    engine_drain(e);
    while (e->finished < e->n)
        pthread_cond_wait(&e->done, &e->lock);
    pthread_mutex_unlock(&e->lock);
    pthread_mutex_unlock(&e->call);
}

static int engine_start(engine *e)
{
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->call, NULL);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->done, NULL);
    for (int i = 0; i < ENGINE_THREADS; i++)
        if (pthread_create(&e->threads[i], NULL, engine_main, e) != 0)
            return -1;
    return 0;
}

static void engine_stop(engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->quit = true;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < ENGINE_THREADS; i++)
        pthread_join(e->threads[i], NULL);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->done);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->call);
}

/* ---- everything the library parallelises, run on one context ---- */

typedef struct inputs {
    float *x;        /* TOKENS x COLS */
    float *w;        /* OUT x COLS */
    float *w_absmax; /* COLS */
} inputs;

typedef struct outputs {
    uint8_t *plan_file; /* the plan as the file writer serialises it */
    size_t plan_bytes;
    float *rot;         /* the greedy rotation's matrices, N_MATS x BLOCK x BLOCK */
    float *act;         /* dq_plan_apply_act_to(x) */
    float *fused, *unfused, *forward; /* layer outputs, TOKENS x OUT */
    float *gamma, *beta;
    float loss;
} outputs;

static void outputs_free(outputs *o)
{
    free(o->plan_file);
    free(o->rot);
    free(o->act);
    free(o->fused);
    free(o->unfused);
    free(o->forward);
    free(o->gamma);
    free(o->beta);
    memset(o, 0, sizeof *o);
}

static dq_status plan_file(dq_context *ctx, const dq_plan *plan, outputs *o)
{
    dq_file_writer *fw = NULL;
    dq_status st = dq_file_writer_create(ctx, &fw);
    if (st == DQ_OK)
        st = dq_file_writer_add_plan(fw, "p", plan);
    if (st == DQ_OK)
        st = dq_file_writer_to_buffer(fw, NULL, 0, &o->plan_bytes); /* the size */
    if (st == DQ_OK && !(o->plan_file = malloc(o->plan_bytes)))
        st = DQ_ERR_NOMEM;
    if (st == DQ_OK)
        st = dq_file_writer_to_buffer(fw, o->plan_file, o->plan_bytes, &o->plan_bytes);
    dq_file_writer_free(fw);
    return st;
}

static dq_status layer_outputs(const dq_linear *lin, const float *x, outputs *o)
{
    const size_t bytes = sizeof(float) * TOKENS * OUT;
    o->fused = malloc(bytes);
    o->unfused = malloc(bytes);
    o->forward = malloc(bytes);
    if (!o->fused || !o->unfused || !o->forward)
        return DQ_ERR_NOMEM;
    dq_status st = dq__linear_forward_route(lin, DQ__ROUTE_FUSED, x, TOKENS, COLS, COLS,
                                            o->fused, OUT, NULL, 0);
    if (st == DQ_OK)
        st = dq__linear_forward_route(lin, DQ__ROUTE_UNFUSED, x, TOKENS, COLS, COLS, o->unfused,
                                      OUT, NULL, 0);
    if (st == DQ_OK)
        st = dq_linear_forward(lin, x, TOKENS, COLS, COLS, o->forward, OUT, NULL, 0);
    return st;
}

static dq_status run_all(dq_context *ctx, const inputs *in, outputs *o)
{
    memset(o, 0, sizeof *o);
    dq_plan_params pp;
    dq_rotation_params rp;
    dq_lwc_params lp;
    dq_plan *plan = NULL;
    dq_rotation *rot = NULL;
    dq_qmatrix *q = NULL;
    dq_linear *lin = NULL;
    dq_lwc *lwc = NULL;
    float *wt = malloc(sizeof(float) * OUT * COLS);
    o->rot = malloc(sizeof(float) * N_MATS * BLOCK * BLOCK);
    o->act = malloc(sizeof(float) * TOKENS * COLS);
    dq_status st = DQ_ERR_NOMEM;
    if (!wt || !o->rot || !o->act)
        goto out;
    memcpy(wt, in->w, sizeof(float) * OUT * COLS);
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = BLOCK;
    pp.max_rotation_step = STEPS;
    dq_rotation_params_init(&rp, sizeof rp);
    rp.block_size = BLOCK;
    rp.max_steps = STEPS;
    rp.flags |= DQ_ROT_F_PER_BLOCK;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.epochs = 2;
    lp.batch_tokens = 32;
    lp.flags = DQ_LWC_F_QUANT_ACT;
    if ((st = dq_plan_build_from_sample(ctx, &pp, NULL, in->x, TOKENS, COLS, COLS, in->w_absmax,
                                        &plan)) != DQ_OK ||
        (st = plan_file(ctx, plan, o)) != DQ_OK ||
        (st = dq_plan_apply_act_to(plan, in->x, TOKENS, COLS, COLS, o->act, COLS, NULL, 0)) !=
            DQ_OK ||
        (st = dq_rotation_create(ctx, &rp, in->x, TOKENS, COLS, COLS, &rot)) != DQ_OK ||
        (st = dq_plan_transform_weight(plan, wt, OUT, COLS, COLS)) != DQ_OK ||
        (st = dq_qmatrix_pack(ctx, NULL, wt, OUT, COLS, COLS, NULL, NULL, &q)) != DQ_OK ||
        (st = dq_linear_create(ctx, NULL, plan, q, NULL, &lin)) != DQ_OK ||
        (st = layer_outputs(lin, in->x, o)) != DQ_OK ||
        (st = dq_lwc_create(ctx, &lp, NULL, wt, 64, COLS, COLS, o->act, TOKENS, COLS, &lwc)) !=
            DQ_OK)
        goto out;
    for (int64_t m = 0; m < N_MATS; m++) {
        int32_t size = 0;
        st = dq_rotation_matrix(rot, m, o->rot + m * BLOCK * BLOCK, BLOCK, &size);
        if (st != DQ_OK)
            goto out;
    }
    int64_t groups = 0;
    if ((st = dq_lwc_train(lwc, NULL)) != DQ_OK ||
        (st = dq_lwc_layout(lwc, &groups, NULL)) != DQ_OK)
        goto out;
    o->gamma = malloc(sizeof(float) * (size_t)groups);
    o->beta = malloc(sizeof(float) * (size_t)groups);
    st = DQ_ERR_NOMEM;
    if (!o->gamma || !o->beta)
        goto out;
    if ((st = dq_lwc_get_params(lwc, o->gamma, o->beta, groups)) == DQ_OK)
        st = dq_lwc_loss(lwc, &o->loss, NULL, NULL, 0);
out:
    dq_lwc_free(lwc);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
    dq_rotation_free(rot);
    dq_plan_free(plan);
    free(wt);
    return st;
}

static bool same_outputs(const outputs *a, const outputs *b, int64_t groups, const char *what)
{
    const size_t act = sizeof(float) * TOKENS * COLS, y = sizeof(float) * TOKENS * OUT;
    const struct {
        const char *name;
        const void *p, *q;
        size_t bytes;
    } parts[] = {
        {"plan", a->plan_file, b->plan_file, a->plan_bytes},
        {"rotation", a->rot, b->rot, sizeof(float) * N_MATS * BLOCK * BLOCK},
        {"plan_apply_act", a->act, b->act, act},
        {"forward fused", a->fused, b->fused, y},
        {"forward unfused", a->unfused, b->unfused, y},
        {"forward", a->forward, b->forward, y},
        {"lwc gamma", a->gamma, b->gamma, sizeof(float) * (size_t)groups},
        {"lwc beta", a->beta, b->beta, sizeof(float) * (size_t)groups},
        {"lwc loss", &a->loss, &b->loss, sizeof a->loss},
    };
    bool ok = a->plan_bytes == b->plan_bytes;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (!parts[i].p || !parts[i].q || memcmp(parts[i].p, parts[i].q, parts[i].bytes) != 0) {
            fprintf(stderr, "%s: %s differs from one thread\n", what, parts[i].name);
            ok = false;
        }
    return ok;
}

static dq_context *context_with(int32_t n_threads, engine *e)
{
    dq_context_params p;
    dq_context *ctx = NULL;
    if (dq_context_params_init(&p, sizeof p) != DQ_OK)
        return NULL;
    p.n_threads = n_threads;
    if (e) {
        p.parallel_for = engine_parallel_for;
        p.parallel_user = e;
    }
    return dq_context_create(&p, &ctx) == DQ_OK ? ctx : NULL;
}

/* ---- the engine's own loops on the context's threads (dq_context_parallel) ---- */

enum { MAX_TASKS = 100 };

typedef struct task_log {
    atomic_int calls[MAX_TASKS];
    atomic_int bad_n;                 /* calls that saw another n_tasks */
    pthread_t who[MAX_TASKS];         /* the thread that ran each task */
    const dq_context *ctx;            /* the context of the nested loops */
    int nest;                         /* each task runs an inner loop of 5 tasks on ctx */
    atomic_int inner_calls;
} task_log;

static void log_inner(void *arg, int32_t t, int32_t n)
{
    task_log *l = arg;
    if (n != 5 || t < 0 || t >= 5)
        atomic_fetch_add(&l->bad_n, 1);
    atomic_fetch_add(&l->inner_calls, 1);
}

static int32_t logged_n;

static void log_task(void *arg, int32_t t, int32_t n)
{
    task_log *l = arg;
    if (n != logged_n || t < 0 || t >= n)
        atomic_fetch_add(&l->bad_n, 1);
    else {
        atomic_fetch_add(&l->calls[t], 1);
        l->who[t] = pthread_self();
    }
    if (l->nest && dq_context_parallel(l->ctx, log_inner, l, 5) != DQ_OK)
        atomic_fetch_add(&l->bad_n, 1);
}

/* Every task exactly once with the right count, for several counts, plain and nested; the
 * distinct threads that ran them (parts of a call run on distinct threads). */
static void check_engine_loops(const dq_context *ctx, int32_t want_threads, const char *what)
{
    const int32_t counts[] = {0, 1, 2, 3, 7, MAX_TASKS};
    for (int nest = 0; nest < 2; nest++)
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            task_log *l = calloc(1, sizeof *l);
            l->ctx = ctx;
            l->nest = nest;
            logged_n = counts[ci];
            CHECK(dq_context_parallel(ctx, log_task, l, counts[ci]) == DQ_OK);
            int ok = atomic_load(&l->bad_n) == 0, distinct = 0;
            for (int32_t t = 0; t < counts[ci]; t++) {
                ok &= atomic_load(&l->calls[t]) == 1;
                bool seen = false;
                for (int32_t u = 0; u < t; u++)
                    seen |= pthread_equal(l->who[u], l->who[t]) != 0;
                distinct += !seen;
            }
            ok &= atomic_load(&l->inner_calls) == (nest ? 5 * counts[ci] : 0);
            /* Nested loops find the pool busy and may run anywhere; plain ones spread. */
            const int32_t want = counts[ci] < want_threads ? counts[ci] : want_threads;
            if (!nest)
                ok &= distinct == want;
            if (!ok)
                fprintf(stderr, "%s: %d tasks%s: a task ran other than once, or on %d threads "
                        "(expected %d)\n", what, (int)counts[ci], nest ? " nested" : "",
                        distinct, (int)want);
            CHECK(ok);
            free(l);
        }
}

/* ---- concurrent forwards on one context ---- */

typedef struct fwd_job {
    const dq_linear *lin;
    const float *x, *want;
    int failures;
} fwd_job;

static void *fwd_main(void *p)
{
    fwd_job *j = p;
    float *y = malloc(sizeof(float) * TOKENS * OUT);
    for (int r = 0; r < 2 && y; r++)
        if (dq_linear_forward(j->lin, j->x, TOKENS, COLS, COLS, y, OUT, NULL, 0) != DQ_OK ||
            memcmp(y, j->want, sizeof(float) * TOKENS * OUT) != 0)
            j->failures++;
    if (!y)
        j->failures++;
    free(y);
    return NULL;
}

static void concurrent_forwards(dq_context *ctx, const inputs *in, const float *want,
                                const char *what)
{
    enum { CALLERS = 4 };
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = BLOCK;
    pp.max_rotation_step = STEPS;
    dq_plan *plan = NULL;
    dq_qmatrix *q = NULL;
    dq_linear *lin = NULL;
    float *wt = malloc(sizeof(float) * OUT * COLS);
    CHECK(wt != NULL);
    if (!wt)
        return;
    memcpy(wt, in->w, sizeof(float) * OUT * COLS);
    CHECK(dq_plan_build_from_sample(ctx, &pp, NULL, in->x, TOKENS, COLS, COLS, in->w_absmax,
                                    &plan) == DQ_OK);
    CHECK(dq_plan_transform_weight(plan, wt, OUT, COLS, COLS) == DQ_OK);
    CHECK(dq_qmatrix_pack(ctx, NULL, wt, OUT, COLS, COLS, NULL, NULL, &q) == DQ_OK);
    CHECK(dq_linear_create(ctx, NULL, plan, q, NULL, &lin) == DQ_OK);
    pthread_t th[CALLERS];
    fwd_job jobs[CALLERS];
    for (int k = 0; k < CALLERS; k++) {
        jobs[k] = (fwd_job){lin, in->x, want, 0};
        CHECK(pthread_create(&th[k], NULL, fwd_main, &jobs[k]) == 0);
    }
    int bad = 0;
    for (int k = 0; k < CALLERS; k++) {
        pthread_join(th[k], NULL);
        bad += jobs[k].failures;
    }
    if (bad)
        fprintf(stderr, "%s: %d concurrent forwards differ\n", what, bad);
    CHECK(bad == 0);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
    dq_plan_free(plan);
    free(wt);
}

int main(void)
{
    test_rng rng = {77};
    inputs in = {malloc(sizeof(float) * TOKENS * COLS), malloc(sizeof(float) * OUT * COLS),
                 malloc(sizeof(float) * COLS)};
    if (!in.x || !in.w || !in.w_absmax)
        return 1;
    test_fill_activations(&rng, in.x, TOKENS, COLS, COLS, 1);
    for (int64_t i = 0; i < OUT * COLS; i++)
        in.w[i] = (float)(0.05 * test_rng_normal(&rng));
    CHECK(dq_smooth_weight_absmax(in.w, OUT, COLS, COLS, 0, in.w_absmax) == DQ_OK);
    const int start = thread_count();
    CHECK(start >= 1);

    /* The oracle: one thread. */
    dq_context *one = context_with(1, NULL);
    outputs ref;
    CHECK(one && run_all(one, &in, &ref) == DQ_OK);
    dq_context_free(one);
    int64_t groups = 0;
    {
        dq_lwc_params lp;
        dq_lwc_params_init(&lp, sizeof lp);
        dq_lwc *l = NULL;
        CHECK(dq_lwc_create(NULL, &lp, NULL, in.w, 64, COLS, COLS, in.x, TOKENS, COLS, &l) ==
              DQ_OK);
        CHECK(dq_lwc_layout(l, &groups, NULL) == DQ_OK);
        dq_lwc_free(l);
    }
    CHECK(settled_thread_count(start) == start);

    /* A NULL context runs everything on the calling thread. */
    {
        outputs o;
        CHECK(run_all(NULL, &in, &o) == DQ_OK);
        CHECK(same_outputs(&ref, &o, groups, "NULL context"));
        CHECK(thread_count() == start);
        outputs_free(&o);
    }

    /* The context's own pool, several sizes: the pool starts on the first parallel call and
     * is joined when the context goes. */
    for (int32_t n = 2; n <= 4; n++) {
        dq_context *ctx = context_with(n, NULL);
        CHECK(ctx != NULL);
        outputs o;
        CHECK(run_all(ctx, &in, &o) == DQ_OK);
        char what[32];
        snprintf(what, sizeof what, "%d threads", (int)n);
        CHECK(same_outputs(&ref, &o, groups, what));
        /* Workers 1..n-1 run until the context is freed (objects hold it alive too). */
        CHECK(thread_count() == start + n - 1);
        if (n == 2)
            concurrent_forwards(ctx, &in, ref.forward, what);
        CHECK(thread_count() == start + n - 1); /* concurrent callers start no threads */
        dq_context_free(ctx);
        CHECK(settled_thread_count(start) == start);
        outputs_free(&o);
    }

    /* The context freed first: its objects keep the pool, which goes with the last one. */
    {
        dq_context *ctx = context_with(3, NULL);
        dq_qmatrix *q = NULL;
        dq_linear *lin = NULL;
        CHECK(ctx && dq_qmatrix_pack(ctx, NULL, in.w, OUT, COLS, COLS, NULL, NULL, &q) == DQ_OK);
        CHECK(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin) == DQ_OK);
        dq_context_free(ctx);
        dq_qmatrix_free(q);
        float *y = malloc(sizeof(float) * TOKENS * OUT);
        CHECK(y && dq_linear_forward(lin, in.x, TOKENS, COLS, COLS, y, OUT, NULL, 0) == DQ_OK);
        CHECK(thread_count() > start); /* the freed context's pool still runs */
        dq_linear_free(lin);
        CHECK(settled_thread_count(start) == start);
        free(y);
    }

    /* The engine's loop: the same bits, and the library starts no thread. */
    {
        engine e;
        CHECK(engine_start(&e) == 0);
        const int with_engine = thread_count();
        CHECK(with_engine == start + ENGINE_THREADS);
        dq_context *ctx = context_with(4, &e);
        CHECK(ctx != NULL);
        outputs o;
        CHECK(run_all(ctx, &in, &o) == DQ_OK);
        CHECK(same_outputs(&ref, &o, groups, "engine loop"));
        CHECK(thread_count() == with_engine);
        const long loops = atomic_load(&e.loops), tasks = atomic_load(&e.tasks);
        printf("engine loop: %ld loops, %ld tasks\n", loops, tasks);
        CHECK(loops > 0 && tasks > loops); /* the work really went through the engine */
        concurrent_forwards(ctx, &in, ref.forward, "engine loop");
        CHECK(thread_count() == with_engine);
        dq_context_free(ctx);
        CHECK(thread_count() == with_engine);
        engine_stop(&e);
        outputs_free(&o);
    }

    /* The engine's own loops: on the calling thread for a NULL or one-thread context, on the
     * pool's threads (none started per call), through parallel_for when set; bad arguments
     * refused. */
    {
        check_engine_loops(NULL, 1, "engine loops, NULL context");
        dq_context *ctx = context_with(1, NULL);
        CHECK(ctx != NULL);
        check_engine_loops(ctx, 1, "engine loops, one thread");
        dq_context_free(ctx);
        ctx = context_with(3, NULL);
        CHECK(ctx != NULL);
        check_engine_loops(ctx, 3, "engine loops, 3 threads");
        CHECK(thread_count() == start + 2);
        check_engine_loops(ctx, 3, "engine loops, 3 threads again");
        CHECK(thread_count() == start + 2);
        task_log l;
        memset(&l, 0, sizeof l);
        CHECK(dq_context_parallel(ctx, NULL, &l, 3) == DQ_ERR_INVALID_ARG);
        CHECK(dq_context_parallel(ctx, log_task, &l, -1) == DQ_ERR_INVALID_ARG);
        uint64_t not_a_context[8] = {0};
        CHECK(dq_context_parallel((const dq_context *)(const void *)not_a_context, log_task, &l,
                                  3) == DQ_ERR_INVALID_ARG);
        CHECK(atomic_load(&l.calls[0]) == 0);
        dq_context_free(ctx);
        CHECK(settled_thread_count(start) == start);

        engine e;
        CHECK(engine_start(&e) == 0);
        ctx = context_with(4, &e);
        CHECK(ctx != NULL);
        const long loops = atomic_load(&e.loops);
        logged_n = 7;
        task_log *lt = calloc(1, sizeof *lt);
        CHECK(dq_context_parallel(ctx, log_task, lt, 7) == DQ_OK);
        int once = 1;
        for (int t = 0; t < 7; t++)
            once &= atomic_load(&lt->calls[t]) == 1;
        CHECK(once && atomic_load(&lt->bad_n) == 0);
        CHECK(atomic_load(&e.loops) == loops + 1); /* through the engine's loop */
        free(lt);
        dq_context_free(ctx);
        engine_stop(&e);
    }

    /* n_threads 0: the online CPUs at creation; still the same bits. */
    {
        dq_context *ctx = context_with(0, NULL);
        outputs o;
        CHECK(ctx && run_all(ctx, &in, &o) == DQ_OK);
        CHECK(same_outputs(&ref, &o, groups, "host threads"));
        dq_context_free(ctx);
        CHECK(settled_thread_count(start) == start);
        outputs_free(&o);
    }

    outputs_free(&ref);
    free(in.x);
    free(in.w);
    free(in.w_absmax);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
