/* Every error says why: one line at DQ_LOG_ERROR through the context's log callback, naming the
 * function, the offending argument or file key, and the values; one line per failure, not one
 * per layer it passes through. One test per status class and per source of errors. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"

typedef struct log_capture {
    int errors, others;
    char last[1024];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR) {
        c->others++;
        return;
    }
    c->errors++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static log_capture cap;
static int fail_allocs; /* allocations left before the allocator fails; < 0: never fails */

static void *test_alloc(void *user, size_t size, size_t align)
{
    (void)user;
    if (fail_allocs == 0)
        return NULL;
    if (fail_allocs > 0)
        fail_allocs--;
    return aligned_alloc(align, (size + align - 1) / align * align);
}

static void test_free(void *user, void *p)
{
    (void)user;
    free(p);
}

static dq_context *make_ctx(void)
{
    memset(&cap, 0, sizeof cap);
    fail_allocs = -1;
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.log = capture_log;
    p.log_user = &cap;
    p.alloc = test_alloc;
    p.free = test_free;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

/* Exactly one error line since the last call, containing every given fragment. */
#define EXPECT_LOG(...)                                                                        \
    do {                                                                                       \
        const char *frags_[] = {__VA_ARGS__};                                                  \
        ck_assert_msg(cap.errors == 1, "%d error lines (last: %s)", cap.errors, cap.last);     \
        for (size_t k_ = 0; k_ < sizeof frags_ / sizeof frags_[0]; k_++)                       \
            ck_assert_msg(strstr(cap.last, frags_[k_]) != NULL, "'%s' not in: %s", frags_[k_], \
                          cap.last);                                                           \
        cap.errors = 0;                                                                        \
        cap.last[0] = '\0';                                                                    \
    } while (0)

START_TEST(invalid_arg_names_the_argument)
{
    dq_context *ctx = make_ctx();
    ck_assert_int_eq(dq_calib_create(ctx, NULL, 8, NULL), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_calib_create", "out is NULL", "DQ_ERR_INVALID_ARG");
    dq_calib_params p;
    dq_calib_params_init(&p, sizeof p);
    p.sample_mode = 99;
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(ctx, &p, 8, &cal), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_calib_create", "sample_mode 99");
    /* A context's own parameters are reported through the callback it was given. */
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.log = capture_log;
    cp.log_user = &cap;
    cp.log_level = 7;
    dq_context *bad = (dq_context *)1;
    ck_assert_int_eq(dq_context_create(&cp, &bad), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(bad);
    EXPECT_LOG("dq_context_create", "log_level 7");
    dq_context_free(ctx);
}
END_TEST

START_TEST(shape_error_says_which_and_both_values)
{
    dq_context *ctx = make_ctx();
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(ctx, NULL, 4, &cal), DQ_OK);
    float x[16] = {0};
    ck_assert_int_eq(dq_calib_observe(cal, x, 2, 4, 3), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_calib_observe", "x: ld 3 < cols 4", "DQ_ERR_SHAPE");
    ck_assert_int_eq(dq_calib_observe(cal, x, 0, 4, 4), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_calib_observe", "rows 0");
    ck_assert_int_eq(dq_calib_observe(cal, x, 2, 3, 4), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_calib_observe", "cols 3", "4");
    ck_assert_int_eq(dq_calib_observe(cal, NULL, 2, 4, 4), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_calib_observe", "x: ptr is NULL");
    dq_calib_free(cal);
    dq_context_free(ctx);
}
END_TEST

START_TEST(struct_size_and_unsupported_name_the_params)
{
    dq_context *ctx = make_ctx();
    dq_calib_params p;
    dq_calib_params_init(&p, sizeof p);
    p.struct_size = 4;
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(ctx, &p, 8, &cal), DQ_ERR_STRUCT_SIZE);
    EXPECT_LOG("dq_calib_create", "params->struct_size 4");
    /* A newer caller's struct with a nonzero member this library does not know. */
    unsigned char big[sizeof p + 8];
    memset(big, 0, sizeof big);
    dq_calib_params_init(&p, sizeof p);
    memcpy(big, &p, sizeof p);
    uint32_t size = (uint32_t)sizeof big;
    memcpy(big, &size, sizeof size);
    big[sizeof p + 3] = 1;
    ck_assert_int_eq(dq_calib_create(ctx, (const dq_calib_params *)big, 8, &cal),
                     DQ_ERR_UNSUPPORTED);
    EXPECT_LOG("dq_calib_create", "unknown members must be zero");
    dq_context_free(ctx);
}
END_TEST

START_TEST(nonfinite_bad_state_and_overflow)
{
    dq_context *ctx = make_ctx();
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(ctx, NULL, 4, &cal), DQ_OK);
    float absmax[4];
    ck_assert_int_eq(dq_calib_absmax(cal, absmax, 4), DQ_ERR_BAD_STATE);
    EXPECT_LOG("dq_calib_absmax", "no token");
    float x[8] = {1, 2, 3, 4, 5, NAN, 7, 8};
    ck_assert_int_eq(dq_calib_observe(cal, x, 2, 4, 4), DQ_ERR_NONFINITE);
    EXPECT_LOG("dq_calib_observe", "non-finite", "DQ_ERR_NONFINITE");
    ck_assert_int_eq(dq_calib_observe(cal, x, INT64_MAX / 2, 4, 4), DQ_ERR_OVERFLOW);
    EXPECT_LOG("dq_calib_observe", "x: rows", "DQ_ERR_OVERFLOW");
    ck_assert_int_eq(dq_calib_absmax(cal, absmax, 5), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_calib_absmax", "n 5 != calibrator cols 4");
    dq_calib_free(cal);
    dq_context_free(ctx);
}
END_TEST

START_TEST(nomem_is_logged_once)
{
    dq_context *ctx = make_ctx();
    fail_allocs = 0;
    dq_calib *cal = (dq_calib *)1;
    ck_assert_int_eq(dq_calib_create(ctx, NULL, 4, &cal), DQ_ERR_NOMEM);
    ck_assert_ptr_null(cal);
    EXPECT_LOG("dq_calib_create", "bytes", "DQ_ERR_NOMEM");
    /* Every allocation failure of a file round trip says where, once. */
    fail_allocs = -1;
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    const float v[3] = {1, 2, 3};
    const int64_t n = 3;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 1, &n), DQ_OK);
    size_t size;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
    uint8_t *buf = malloc(size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, size, &size), DQ_OK);
    int failures = 0;
    for (int k = 0; k < 40; k++) {
        cap.errors = 0;
        fail_allocs = k;
        dq_file_reader *r = NULL;
        dq_status st = dq_file_reader_from_buffer(ctx, NULL, buf, size, &r);
        fail_allocs = -1;
        if (st == DQ_OK) {
            dq_file_reader_free(r);
            ck_assert_int_eq(cap.errors, 0);
            continue;
        }
        failures++;
        ck_assert_int_eq(st, DQ_ERR_NOMEM);
        EXPECT_LOG("DQ_ERR_NOMEM");
    }
    ck_assert_int_gt(failures, 2);
    free(buf);
    dq_file_writer_free(w);
    dq_context_free(ctx);
}
END_TEST

START_TEST(buffer_and_format_name_the_key)
{
    dq_context *ctx = make_ctx();
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    const float v[3] = {1, 2, 3};
    const int64_t n = 3;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 1, &n), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 1, &n), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("tensor name 't' is already used");
    const int64_t neg = -2;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "u", v, 1, &neg), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_file_writer_add_tensor_f32", "tensor 'u'", "shape[0] -2");
    size_t size;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
    uint8_t *buf = malloc(size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, 10, &size), DQ_ERR_BUFFER);
    EXPECT_LOG("dq_file_writer_to_buffer", "cap 10");
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, size, &size), DQ_OK);
    ck_assert_int_eq(cap.errors, 0);

    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, buf, size, &r), DQ_OK);
    float out[3];
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "t", out, 4), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_file_reader_get_tensor_f32", "tensor 't'", "n 4", "3 elements");
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "nope", out, 3), DQ_ERR_FORMAT);
    EXPECT_LOG("no tensor 'nope'");
    dq_plan *pl = (dq_plan *)1;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_ERR_FORMAT);
    EXPECT_LOG("dq_file_reader_get_plan", "'p.type'");
    dq_file_reader_free(r);

    /* A malformed header: the byte and what was expected, logged once on its way up. */
    uint8_t *bad = malloc(size);
    memcpy(bad, buf, size);
    char *json = (char *)bad + 8;
    char *colon = strchr(json, ':');
    ck_assert_ptr_nonnull(colon);
    *colon = ';';
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, bad, size, &r), DQ_ERR_FORMAT);
    EXPECT_LOG("JSON header byte", "DQ_ERR_FORMAT");
    /* Wrong data offsets: the tensor is named. */
    memcpy(bad, buf, size); /* the data section one byte short */
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, bad, size - 1, &r), DQ_ERR_FORMAT);
    EXPECT_LOG("tensor 't'", "past the");
    free(bad);
    free(buf);
    dq_file_writer_free(w);
    dq_context_free(ctx);
}
END_TEST

START_TEST(io_error_names_path_and_reason)
{
    dq_context *ctx = make_ctx();
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_open(ctx, NULL, "/nonexistent-dq/model.safetensors", &r),
                     DQ_ERR_IO);
    EXPECT_LOG("dq_file_reader_open", "/nonexistent-dq/model.safetensors", "No such file",
               "DQ_ERR_IO");
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_save(w, "/nonexistent-dq/model.safetensors"), DQ_ERR_IO);
    EXPECT_LOG("dq_file_writer_save", "/nonexistent-dq/model.safetensors", "No such file");
    ck_assert_int_eq(dq_file_writer_save(w, "/dev/null"), DQ_ERR_IO);
    EXPECT_LOG("dq_file_writer_save", "/dev/null", "not a regular file");
    dq_file_writer_free(w);
    dq_context_free(ctx);
}
END_TEST

START_TEST(offline_objects_name_their_fields)
{
    dq_context *ctx = make_ctx();
    float w[16], x[32];
    for (int i = 0; i < 16; i++)
        w[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i % 7) - 3.0f;
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.epochs = 0;
    dq_lwc *l = NULL;
    ck_assert_int_eq(dq_lwc_create(ctx, &lp, NULL, w, 4, 4, 4, x, 8, 4, &l), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_lwc_create", "params->epochs 0");
    dq_lwc_params_init(&lp, sizeof lp);
    ck_assert_int_eq(dq_lwc_create(ctx, &lp, NULL, w, 4, 4, 3, x, 8, 4, &l), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_lwc_create", "w: ld 3 < cols 4");
    ck_assert_int_eq(dq_lwc_create(ctx, &lp, NULL, w, 4, 4, 4, x, 8, 4, &l), DQ_OK);
    float g[64];
    ck_assert_int_eq(dq_lwc_get_params(l, g, g, 3), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_lwc_get_params", "n 3 !=");
    dq_lwc_free(l);

    dq_refine_params rp;
    dq_refine_params_init(&rp, sizeof rp);
    rp.act_bits = 5;
    dq_rotation *out = NULL;
    ck_assert_int_eq(dq_rotation_refine(ctx, &rp, NULL, x, 8, 4, 4, &out), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_rotation_refine", "act_bits", "act_bits 5");
    dq_context_free(ctx);

    /* Pure functions have no context: nothing is logged, the status still says what. */
    float s[4];
    const float a[4] = {1, 1, 1, 1};
    ck_assert_int_eq(dq_smooth_factors(a, a, 4, 2.0f, s), DQ_ERR_INVALID_ARG);
    int64_t perm[4];
    ck_assert_int_eq(dq_permutation_zigzag(a, 4, 0, perm), DQ_ERR_INVALID_ARG);
    int32_t codes[2] = {1, 99};
    uint8_t packed[1];
    ck_assert_int_eq(dq_int4_pack(codes, 2, packed, 1), DQ_ERR_INVALID_ARG);
}
END_TEST

START_TEST(log_level_does_not_hide_errors_and_null_ctx_is_silent)
{
    /* Errors are delivered at every log level (DQ_LOG_ERROR is the lowest). */
    memset(&cap, 0, sizeof cap);
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.log = capture_log;
    p.log_user = &cap;
    p.log_level = DQ_LOG_ERROR;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    ck_assert_int_eq(dq_calib_create(ctx, NULL, 0, NULL), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_calib_create");
    dq_context_free(ctx);
    /* Without a context nothing is logged and nothing breaks. */
    dq_calib *cal = NULL;
    ck_assert_int_eq(dq_calib_create(NULL, NULL, 0, &cal), DQ_ERR_SHAPE);
    ck_assert_int_eq(cap.errors, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, invalid_arg_names_the_argument);
    tcase_add_test(tc, shape_error_says_which_and_both_values);
    tcase_add_test(tc, struct_size_and_unsupported_name_the_params);
    tcase_add_test(tc, nonfinite_bad_state_and_overflow);
    tcase_add_test(tc, nomem_is_logged_once);
    tcase_add_test(tc, buffer_and_format_name_the_key);
    tcase_add_test(tc, io_error_names_path_and_reason);
    tcase_add_test(tc, offline_objects_name_their_fields);
    tcase_add_test(tc, log_level_does_not_hide_errors_and_null_ctx_is_silent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
