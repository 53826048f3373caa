/* Hostile sizes and counts: channel counts near the limits of int64_t and size_t, indices at
 * INT32_MAX, shapes whose products overflow. Each call must fail at once with a status and one
 * error line naming the argument, never write out of bounds, read out of bounds or loop over
 * the claimed count. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_check_run.h"
#include "duquant.h"

#define BIG_COLS (((int64_t)1 << 62) + 2)

typedef struct log_capture {
    int errors;
    char last[1024];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR)
        return;
    c->errors++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static log_capture cap;
static dq_context *ctx;

static void setup(void)
{
    memset(&cap, 0, sizeof cap);
    dq_context_params p;
    ck_assert_int_eq(dq_context_params_init(&p, sizeof p), DQ_OK);
    p.log = capture_log;
    p.log_user = &cap;
    p.n_threads = 1;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
}

static void teardown(void)
{
    dq_context_free(ctx);
    ctx = NULL;
}

/* Exactly one error line since setup, naming what. */
static void expect_logged(const char *what)
{
    ck_assert_int_eq(cap.errors, 1);
    ck_assert_msg(strstr(cap.last, what) != NULL, "'%s' not in '%s'", what, cap.last);
    cap.errors = 0;
}

static const float identity2[4] = {1.0f, 0.0f, 0.0f, 1.0f};

static dq_status create(int32_t method, uint32_t flags, int64_t cols, dq_rotation **r)
{
    dq_rotation_params p;
    ck_assert_int_eq(dq_rotation_params_init(&p, sizeof p), DQ_OK);
    p.method = method;
    p.block_size = 2;
    p.flags = flags;
    return dq_rotation_create(ctx, &p, NULL, 0, cols, 0, r);
}

/* 2^61 + 1 blocks: the block index array's byte count wraps to 8 bytes without a check. */
START_TEST(create_block_count_overflow)
{
    const int32_t methods[] = {DQ_ROT_METHOD_RANDOM, DQ_ROT_METHOD_HADAMARD};
    for (size_t k = 0; k < sizeof methods / sizeof *methods; k++) {
        dq_rotation *r = (dq_rotation *)1;
        dq_status st = create(methods[k], 0, BIG_COLS, &r);
        ck_assert_msg(st == DQ_ERR_OVERFLOW || st == DQ_ERR_SHAPE, "method %d: %s",
                      (int)methods[k], dq_status_name(st));
        ck_assert_ptr_null(r);
        expect_logged("cols 4611686018427387906");
    }
}
END_TEST

START_TEST(from_matrices_block_count_overflow)
{
    dq_rotation *r = (dq_rotation *)1;
    dq_status st = dq_rotation_from_matrices(NULL, BIG_COLS, 2, 0, identity2, 4, &r);
    ck_assert_msg(st == DQ_ERR_OVERFLOW || st == DQ_ERR_SHAPE, "%s", dq_status_name(st));
    ck_assert_ptr_null(r);
    r = (dq_rotation *)1;
    st = dq_rotation_from_matrices(ctx, BIG_COLS, 2, 0, identity2, 4, &r);
    ck_assert_msg(st == DQ_ERR_OVERFLOW || st == DQ_ERR_SHAPE, "%s", dq_status_name(st));
    ck_assert_ptr_null(r);
    expect_logged("cols 4611686018427387906");
}
END_TEST

/* One matrix per block for ~4.6e18 blocks: the count is compared with n_floats before any
 * loop over the matrices (a loop would not finish within the test's timeout). */
START_TEST(from_matrices_per_block_huge_count)
{
    const int64_t cols[] = {INT64_MAX, INT64_MAX - 1, BIG_COLS, (int64_t)1 << 40};
    for (size_t k = 0; k < sizeof cols / sizeof *cols; k++) {
        dq_rotation *r = (dq_rotation *)1;
        dq_status st = dq_rotation_from_matrices(ctx, cols[k], 2, 1, identity2, 4, &r);
        ck_assert_msg(st == DQ_ERR_SHAPE || st == DQ_ERR_OVERFLOW, "cols %lld: %s",
                      (long long)cols[k], dq_status_name(st));
        ck_assert_ptr_null(r);
        expect_logged("n_floats 4");
    }
    /* The shared matrix with a 1-channel tail: 4 + 1 floats, not 4. */
    dq_rotation *r = (dq_rotation *)1;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, INT64_MAX, 2, 0, identity2, 4, &r),
                     DQ_ERR_SHAPE);
    ck_assert_ptr_null(r);
    expect_logged("n_floats 4");
}
END_TEST

START_TEST(create_per_block_huge_count)
{
    const int64_t cols[] = {INT64_MAX, INT64_MAX - 1, BIG_COLS};
    for (size_t k = 0; k < sizeof cols / sizeof *cols; k++) {
        dq_rotation *r = (dq_rotation *)1;
        dq_status st = create(DQ_ROT_METHOD_RANDOM, DQ_ROT_F_PER_BLOCK, cols[k], &r);
        ck_assert_msg(st == DQ_ERR_OVERFLOW || st == DQ_ERR_SHAPE, "cols %lld: %s",
                      (long long)cols[k], dq_status_name(st));
        ck_assert_ptr_null(r);
        expect_logged("cols ");
    }
}
END_TEST

/* The closed-form float count agrees with the layouts that exist: shared and per block, with
 * and without a shorter last block. */
START_TEST(from_matrices_small_layouts_still_load)
{
    float data[32];
    struct {
        int64_t cols;
        int32_t bs, per_block;
        int64_t n_floats, n_mats;
    } cases[] = {
        {5, 2, 0, 5, 2}, {5, 2, 1, 9, 3}, {4, 2, 0, 4, 1}, {4, 2, 1, 8, 2},
        {1, 2, 0, 1, 1}, {1, 2, 1, 1, 1}, {7, 3, 1, 19, 3}, {7, 3, 0, 10, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        /* identity matrices: full blocks of bs, then the shorter last block */
        const int64_t cols = cases[k].cols, bs = cases[k].bs, full = cols / bs;
        int64_t off = 0;
        for (int64_t m = 0; m < cases[k].n_mats; m++) {
            int64_t len = cases[k].per_block ? (cols - m * bs < bs ? cols - m * bs : bs)
                                             : (m == 0 && full > 0 ? bs : cols % bs);
            for (int64_t i = 0; i < len; i++)
                for (int64_t j = 0; j < len; j++)
                    data[off + i * len + j] = i == j ? 1.0f : 0.0f;
            off += len * len;
        }
        ck_assert_int_eq(off, cases[k].n_floats);
        dq_rotation *r = NULL;
        ck_assert_msg(dq_rotation_from_matrices(ctx, cols, (int32_t)bs, cases[k].per_block, data,
                                                cases[k].n_floats, &r) == DQ_OK,
                      "case %zu: %s", k, cap.last);
        int64_t n_mats = 0;
        ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, NULL, &n_mats), DQ_OK);
        ck_assert_int_eq(n_mats, cases[k].n_mats);
        dq_rotation_free(r);
        /* one float more or less is a shape error */
        ck_assert_int_eq(dq_rotation_from_matrices(ctx, cols, (int32_t)bs, cases[k].per_block,
                                                   data, cases[k].n_floats - 1, &r),
                         DQ_ERR_SHAPE);
        ck_assert_ptr_null(r);
        cap.errors = 0;
    }
}
END_TEST

/* A row stride whose span wraps size_t is refused before the first row is copied. */
START_TEST(rotation_matrix_huge_stride)
{
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 2, 2, 0, identity2, 4, &r), DQ_OK);
    float out[4] = {0};
    const int64_t ldo[] = {INT64_MAX, (int64_t)1 << 62, ((int64_t)1 << 61) + 1};
    for (size_t k = 0; k < sizeof ldo / sizeof *ldo; k++) {
        int32_t size = -1;
        ck_assert_int_eq(dq_rotation_matrix(r, 0, out, ldo[k], &size), DQ_ERR_OVERFLOW);
        ck_assert_int_eq(size, -1);
        expect_logged("ldo ");
    }
    ck_assert_int_eq(dq_rotation_matrix(r, 0, out, 2, NULL), DQ_OK);
    ck_assert(out[0] == 1.0f && out[1] == 0.0f && out[2] == 0.0f && out[3] == 1.0f);
    dq_rotation_free(r);
}
END_TEST

/* i + 1 >= n_rot overflowed at i = INT32_MAX and read far past the permutation slots. */
START_TEST(plan_permutation_index_at_int32_max)
{
    const dq_rotation *rots[2] = {NULL, NULL};
    const int64_t *perms[1] = {NULL};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 2, rots, perms, &pl), DQ_OK);
    int64_t perm[4] = {-1, -1, -1, -1};
    const int32_t bad[] = {INT32_MAX, INT32_MAX - 1, 1, -1, INT32_MIN};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        ck_assert_int_eq(dq_plan_permutation(pl, bad[k], perm, 4), DQ_ERR_INVALID_ARG);
        char want[32];
        snprintf(want, sizeof want, "i %d", (int)bad[k]);
        expect_logged(want);
    }
    ck_assert_int_eq(dq_plan_permutation(pl, 0, perm, 4), DQ_OK);
    for (int64_t j = 0; j < 4; j++)
        ck_assert_int_eq(perm[j], j);
    dq_plan_free(pl);

    /* A plan with one rotation slot has no permutation slot. */
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 1, rots, NULL, &pl), DQ_OK);
    ck_assert_int_eq(dq_plan_permutation(pl, 0, perm, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_permutation(pl, INT32_MAX, perm, 4), DQ_ERR_INVALID_ARG);
    cap.errors = 0;
    dq_plan_free(pl);
}
END_TEST

/* A container from a JSON header text (no data bytes). */
static dq_status open_header(const char *json)
{
    size_t n = strlen(json), size = 8 + n;
    uint8_t *b = malloc(size);
    ck_assert_ptr_nonnull(b);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(b + 8, json, n);
    dq_file_reader *r = NULL;
    dq_status st = dq_file_reader_from_buffer(ctx, NULL, b, size, &r);
    if (st == DQ_OK) {
        int32_t ndim = 0;
        int64_t shape[8];
        ck_assert_int_eq(dq_file_reader_tensor_info(r, "t", NULL, &ndim, shape), DQ_OK);
        ck_assert_int_eq(ndim, 3);
    }
    dq_file_reader_free(r);
    free(b);
    return st;
}

#define META "\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\"}"
#define P62 "4611686018427387904"

/* A zero anywhere in a shape means no data: the order of the dimensions does not matter. */
START_TEST(safetensors_zero_dimension_in_any_position)
{
    const char *shapes[] = {"[0," P62 "," P62 "]", "[" P62 "," P62 ",0]",
                            "[" P62 ",0," P62 "]", "[9223372036854775807,2,0]"};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        char json[512];
        snprintf(json, sizeof json,
                 "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,0]}}",
                 shapes[k]);
        dq_status st = open_header(json);
        ck_assert_msg(st == DQ_OK, "shape %s: %s (%s)", shapes[k], dq_status_name(st), cap.last);
    }
    /* Without a zero the product still overflows and is refused, naming the tensor. */
    char json[512];
    snprintf(json, sizeof json,
             "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[" P62 "," P62 ",1],"
             "\"data_offsets\":[0,0]}}");
    ck_assert_int_eq(open_header(json), DQ_ERR_FORMAT);
    expect_logged("tensor 't'");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc = tcase_create("sizes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, create_block_count_overflow);
    tcase_add_test(tc, from_matrices_block_count_overflow);
    tcase_add_test(tc, from_matrices_per_block_huge_count);
    tcase_add_test(tc, create_per_block_huge_count);
    tcase_add_test(tc, from_matrices_small_layouts_still_load);
    tcase_add_test(tc, rotation_matrix_huge_stride);
    tcase_add_test(tc, plan_permutation_index_at_int32_max);
    tcase_add_test(tc, safetensors_zero_dimension_in_any_position);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
