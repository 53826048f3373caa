/* Contexts: defaults, custom allocator and log callback, bad parameters. */
#include <check.h>
#include <string.h>

#include "duquant.h"
#include "test_alloc.h"

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
    dq_context_params_init(&p, sizeof p);
    p.flags = 1;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(ctx);
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

int main(void)
{
    Suite *s = suite_create("context");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, default_context);
    tcase_add_test(tc, custom_allocator_is_used_and_balanced);
    tcase_add_test(tc, allocator_failure_gives_nomem_without_leak);
    tcase_add_test(tc, rejects_bad_params);
    tcase_add_test(tc, log_callback_fields_are_kept);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
