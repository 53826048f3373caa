/* Contexts: defaults, custom allocator and log callback, bad parameters. */
#include <check.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

START_TEST(default_context)
{
    dq_context *ctx = (dq_context *)1;
    ck_assert_int_eq(dq_context_create(NULL, &ctx), DQ_OK);
    ck_assert_ptr_nonnull(ctx);
    dq_context_free(ctx);
    dq_context_free(NULL); /* no-op */
}
END_TEST

START_TEST(custom_allocator_is_used_and_balanced)
{
    test_alloc a = {0};
    dq_context *ctx = test_alloc_context(&a);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(a.live, 1); /* the context itself */
    float w[6] = {1, 2, 3, 4, 5, 6};
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, NULL, w, 2, 3, 3, NULL, NULL, &q), DQ_OK);
    ck_assert_int_gt(a.live, 1);
    /* Objects copy the context: freeing it first must be safe. */
    dq_context_free(ctx);
    dq_qmatrix_free(q);
    ck_assert_int_eq(a.live, 0);
}
END_TEST

START_TEST(allocator_failure_gives_nomem_without_leak)
{
    float w[6] = {1, 2, 3, 4, 5, 6};
    /* Fail each allocation of the pack in turn (the context is allocation 1). */
    for (long k = 2; k <= 6; k++) {
        test_alloc a = {0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = k;
        dq_qmatrix *q = (dq_qmatrix *)1;
        dq_status st = dq_qmatrix_pack(ctx, NULL, w, 2, 3, 3, NULL, NULL, &q);
        if (a.total >= k) {
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
            ck_assert_ptr_null(q);
        } else {
            ck_assert_int_eq(st, DQ_OK);
            dq_qmatrix_free(q);
        }
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
}
END_TEST

typedef struct {
    int calls;
    char last[256];
} log_sink;

static void sink(void *user, int32_t level, const char *msg)
{
    (void)level;
    log_sink *s = user;
    s->calls++;
    strncpy(s->last, msg, sizeof s->last - 1);
}

START_TEST(rejects_bad_params)
{
    dq_context_params p;
    dq_context *ctx = (dq_context *)1;
    ck_assert_int_eq(dq_context_create(NULL, NULL), DQ_ERR_INVALID_ARG);

    ck_assert_int_eq(dq_context_params_init(&p, sizeof p), DQ_OK);
    p.alloc = test_alloc_fn; /* alloc without free */
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(ctx);

    dq_context_params_init(&p, sizeof p);
    p.log_level = 7;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_ERR_INVALID_ARG);
    dq_context_params_init(&p, sizeof p);
    p.n_threads = -1;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_ERR_INVALID_ARG);
    /* Every bit but the known flags is refused. */
    for (int bit = 0; bit < 32; bit++) {
        if ((1u << bit) == DQ_CONTEXT_F_HALF_MATRICES)
            continue;
        dq_context_params_init(&p, sizeof p);
        p.flags = 1u << bit;
        ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_ERR_INVALID_ARG);
        ck_assert_ptr_null(ctx);
    }
    dq_context_params_init(&p, sizeof p);
    p.flags = DQ_CONTEXT_F_HALF_MATRICES;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    ck_assert_ptr_nonnull(ctx);
    dq_context_free(ctx);
}
END_TEST

START_TEST(log_callback_fields_are_kept)
{
    log_sink s = {0};
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    ck_assert_int_eq(p.log_level, DQ_LOG_WARN);
    ck_assert_int_eq(p.n_threads, 0);
    p.log = sink;
    p.log_user = &s;
    p.log_level = DQ_LOG_DEBUG;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    dq_context_free(ctx);
    ck_assert_int_eq(s.calls, 0); /* creating a context logs nothing */
}
END_TEST

/* An engine loop that runs the tasks last first on the calling thread and counts them. */
typedef struct loop_count {
    int loops, tasks;
} loop_count;

static void serial_loop(void *user, dq_task_fn fn, void *task_arg, int32_t n_tasks)
{
    loop_count *c = user;
    c->loops++;
    for (int32_t t = n_tasks - 1; t >= 0; t--) {
        fn(task_arg, t, n_tasks);
        c->tasks++;
    }
}

enum { BIG_TOKENS = 128, BIG_COLS = 1024, BIG_OUT = 1024 };

/* A W4A4 layer large enough that its product runs as several tasks (2^27 multiply-adds). */
static void big_forward(dq_context *ctx, float *y)
{
    float *w = malloc(sizeof(float) * BIG_OUT * BIG_COLS);
    float *x = malloc(sizeof(float) * BIG_TOKENS * BIG_COLS);
    ck_assert(w && x);
    for (int64_t i = 0; i < BIG_OUT * BIG_COLS; i++)
        w[i] = (float)((i * 37 % 101) - 50) * 0.01f;
    for (int64_t i = 0; i < BIG_TOKENS * BIG_COLS; i++)
        x[i] = (float)((i * 53 % 97) - 48) * 0.1f;
    dq_qmatrix *q = NULL;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, NULL, w, BIG_OUT, BIG_COLS, BIG_COLS, NULL, NULL, &q),
                     DQ_OK);
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), DQ_OK);
    dq_qmatrix_free(q);
    ck_assert_int_eq(dq_linear_forward(lin, x, BIG_TOKENS, BIG_COLS, BIG_COLS, y, BIG_OUT, NULL,
                                       0),
                     DQ_OK);
    dq_linear_free(lin);
    free(w);
    free(x);
}

START_TEST(engine_loop_runs_the_tasks)
{
    loop_count c = {0, 0};
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    ck_assert(p.parallel_for == NULL); /* default: the context's own pool */
    ck_assert_ptr_null(p.parallel_user);
    p.parallel_for = serial_loop;
    p.parallel_user = &c;
    p.n_threads = 4;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    float *y = malloc(sizeof(float) * BIG_TOKENS * BIG_OUT);
    float *want = malloc(sizeof(float) * BIG_TOKENS * BIG_OUT);
    ck_assert(y && want);
    big_forward(ctx, y);
    dq_context_free(ctx);
    ck_assert_int_gt(c.loops, 0);
    ck_assert_int_gt(c.tasks, c.loops); /* at least one loop of several tasks */
    big_forward(NULL, want);
    ck_assert(memcmp(y, want, sizeof(float) * BIG_TOKENS * BIG_OUT) == 0);
    free(y);
    free(want);
}
END_TEST

START_TEST(params_of_the_first_layout_still_work)
{
    /* A caller compiled against 1.0 passes a struct ending after n_threads. */
    dq_context_params p;
    memset(&p, 0xFF, sizeof p); /* the tail must never be read */
    const size_t old = offsetof(dq_context_params, n_threads) + sizeof(int32_t);
    ck_assert_int_eq(dq_context_params_init(&p, old), DQ_OK);
    p.n_threads = 2;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    float *y = malloc(sizeof(float) * BIG_TOKENS * BIG_OUT);
    ck_assert_ptr_nonnull(y);
    big_forward(ctx, y);
    dq_context_free(ctx);
    free(y);
}
END_TEST

START_TEST(threaded_context_freed_before_its_objects)
{
    test_alloc a = {0};
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = test_alloc_fn;
    p.free = test_free_fn;
    p.alloc_user = &a;
    p.n_threads = 3;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    ck_assert_int_eq(a.live, 1); /* the context and its (not yet started) pool: one block */
    float w[6] = {1, 2, 3, 4, 5, 6}, x[3] = {1, -1, 0.5f}, y[2];
    dq_qmatrix *q = NULL;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, NULL, w, 2, 3, 3, NULL, NULL, &q), DQ_OK);
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), DQ_OK);
    dq_context_free(ctx);
    dq_qmatrix_free(q);
    ck_assert_int_gt(a.live, 1); /* the layer keeps the context's block */
    ck_assert_int_eq(dq_linear_forward(lin, x, 1, 3, 3, y, 2, NULL, 0), DQ_OK);
    dq_linear_free(lin);
    ck_assert_int_eq(a.live, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("context");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, default_context);
    tcase_add_test(tc, custom_allocator_is_used_and_balanced);
    tcase_add_test(tc, allocator_failure_gives_nomem_without_leak);
    tcase_add_test(tc, rejects_bad_params);
    tcase_add_test(tc, log_callback_fields_are_kept);
    tcase_add_test(tc, engine_loop_runs_the_tasks);
    tcase_add_test(tc, params_of_the_first_layout_still_work);
    tcase_add_test(tc, threaded_context_freed_before_its_objects);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
