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
    char first[1024]; /* the first error line since errors was last 0 */
    char last[1024];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR) {
        c->others++;
        return;
    }
    if (c->errors++ == 0)
        snprintf(c->first, sizeof c->first, "%s", msg);
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

/* ---- the run-time layer: plans, packed matrices, rotations from matrices, linear layers ---- */

/* A 4-channel plan swapping neighbours: one permutation between two identity rotations. */
static dq_plan *swap_plan(dq_context *ctx)
{
    static const int64_t swap[4] = {1, 0, 3, 2};
    const int64_t *perms[1] = {swap};
    const dq_rotation *rots[2] = {NULL, NULL};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 2, rots, perms, &pl), DQ_OK);
    return pl;
}

static void plan_errors_say_why(dq_context *ctx)
{
    dq_plan *pl = swap_plan(ctx);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 2, 3, 3, NULL, 0), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_plan_apply_act:", "x: cols 3 != plan width 4", "DQ_ERR_SHAPE");
    ck_assert_int_eq(dq_plan_apply_act(pl, x, 2, 4, 3, NULL, 0), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_plan_apply_act:", "x: ld 3 < cols 4");
    x[5] = NAN;
    ck_assert_int_eq(dq_plan_transform_weight(pl, x, 2, 4, 4), DQ_ERR_NONFINITE);
    EXPECT_LOG("dq_plan_transform_weight:", "w (2 x 4)", "DQ_ERR_NONFINITE");
    x[5] = 6.0f;
    size_t need = 0;
    ck_assert_int_eq(dq_plan_workspace_size(pl, 2, &need), DQ_OK);
    ck_assert_uint_gt(need, 0);
    float y[8];
    char work[512];
    ck_assert_uint_le(need, sizeof work);
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 2, 4, 4, y, 4, work, need - 1), DQ_ERR_BUFFER);
    char want[64];
    snprintf(want, sizeof want, "work_size %zu, expected >= %zu", need - 1, need);
    EXPECT_LOG("dq_plan_apply_act_to:", want, "DQ_ERR_BUFFER");
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, 2, 4, 4, y, 4, work, need), DQ_OK);
    ck_assert_int_eq(cap.errors, 0);
    ck_assert_int_eq(dq_plan_workspace_size(pl, 0, &need), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_plan_workspace_size:", "rows 0");
    int64_t perm[4];
    ck_assert_int_eq(dq_plan_permutation(pl, 1, perm, 4), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_plan_permutation:", "i 1, expected 0..0");
    ck_assert_int_eq(dq_plan_permutation(pl, 0, perm, 5), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_plan_permutation:", "n 5 != plan width 4");
    dq_plan_free(pl);

    /* Assembling: the offending entry and its value. */
    const int64_t repeated[4] = {0, 1, 1, 3};
    const int64_t *perms[1] = {repeated};
    const dq_rotation *rots[2] = {NULL, NULL};
    dq_plan *bad = (dq_plan *)1;
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 2, rots, perms, &bad), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(bad);
    EXPECT_LOG("dq_plan_assemble:", "permutations[0][2] = 1", "DQ_ERR_INVALID_ARG");
    const float smooth[4] = {1, -1, 1, 1};
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, smooth, 0, NULL, NULL, &bad), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_plan_assemble:", "smooth_scale[1] = -1");
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 99, rots, perms, &bad), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_plan_assemble:", "n_rotations 99");
    dq_rotation *r8 = NULL;
    float h[4];
    ck_assert_int_eq(dq_rotation_hadamard(2, h, 2), DQ_OK);
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 8, 2, 0, h, 4, &r8), DQ_OK);
    const dq_rotation *wide[1] = {r8};
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 1, wide, NULL, &bad), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_plan_assemble:", "rotations[0] has 8 channels, cols 4");
    dq_rotation_free(r8);
}

static void qmatrix_errors_say_why(dq_context *ctx)
{
    float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (float)(i % 5) - 2.0f;
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.group_size = -8;
    dq_qmatrix *q = (dq_qmatrix *)1;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, &qp, w, 4, 4, 4, NULL, NULL, &q), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(q);
    EXPECT_LOG("dq_qmatrix_pack:", "params->group_size -8", "DQ_ERR_INVALID_ARG");
    dq_quant_params_init(&qp, sizeof qp);
    qp.bits = 3;
    ck_assert_int_eq(dq_qmatrix_pack_clipped(ctx, &qp, w, 4, 4, 4, NULL, NULL, 0, &q),
                     DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_qmatrix_pack_clipped:", "params->bits 3");
    dq_quant_params_init(&qp, sizeof qp);
    ck_assert_int_eq(dq_qmatrix_pack(ctx, &qp, w, 4, 4, 2, NULL, NULL, &q), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_qmatrix_pack:", "w: ld 2 < cols 4");
    const float clip[4] = {1, 1, 1.5f, 1};
    ck_assert_int_eq(dq_qmatrix_pack(ctx, &qp, w, 4, 4, 4, NULL, clip, &q), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_qmatrix_pack:", "clip_lo");
    ck_assert_int_eq(dq_qmatrix_pack(ctx, &qp, w, 4, 4, 4, NULL, NULL, &q), DQ_OK);
    int32_t codes[16];
    ck_assert_int_eq(dq_qmatrix_unpack_codes(q, codes, 3), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_qmatrix_unpack_codes:", "ldc 3 < cols 4");
    ck_assert_int_eq(dq_qmatrix_dequantize(q, NULL, 4), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_qmatrix_dequantize:", "out is NULL");
    dq_qmatrix_free(q);
}

static void rotation_from_matrices_errors_say_why(dq_context *ctx)
{
    /* cols 4 with block 2, shared: one 2 x 2 matrix, 4 floats. */
    const float skew[4] = {1, 1, 0, 1};
    dq_rotation *r = (dq_rotation *)1;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 4, 2, 0, skew, 4, &r), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(r);
    EXPECT_LOG("dq_rotation_from_matrices:", "data: matrix 0 row 0 has norm 1.41",
               "expected 1", "DQ_ERR_INVALID_ARG");
    float h[4];
    ck_assert_int_eq(dq_rotation_hadamard(2, h, 2), DQ_OK);
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 4, 2, 0, h, 3, &r), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_rotation_from_matrices:", "n_floats 3, expected 4", "DQ_ERR_SHAPE");
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 4, 1, 0, h, 4, &r), DQ_ERR_SHAPE);
    EXPECT_LOG("dq_rotation_from_matrices:", "block_size 1");
    const float inf[4] = {1, INFINITY, 0, 1};
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 4, 2, 0, inf, 4, &r), DQ_ERR_NONFINITE);
    EXPECT_LOG("dq_rotation_from_matrices:", "data[1] = inf");
}

static void linear_errors_say_why(dq_context *ctx)
{
    float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (float)(i % 5) - 2.0f;
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, &qp, w, 4, 4, 4, NULL, NULL, &q), DQ_OK);
    dq_plan *wide = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, 8, NULL, 0, NULL, NULL, &wide), DQ_OK);
    dq_linear *lin = (dq_linear *)1;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, wide, q, NULL, &lin), DQ_ERR_SHAPE);
    ck_assert_ptr_null(lin);
    EXPECT_LOG("dq_linear_create:", "plan width 8 != weights cols 4", "DQ_ERR_SHAPE");
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = 5;
    ck_assert_int_eq(dq_linear_create(ctx, &lp, NULL, q, NULL, &lin), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_linear_create:", "params->act_bits 5");
    /* A writer checks a layer as dq_linear_create does, and says so through its context. */
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &fw), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l", &lp, NULL, q, NULL), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_file_writer_add_linear:", "params->act_bits 5", "DQ_ERR_INVALID_ARG");
    dq_file_writer_free(fw);
    const float bias[4] = {0, NAN, 0, 0};
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, bias, &lin), DQ_ERR_NONFINITE);
    EXPECT_LOG("dq_linear_create:", "bias");
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, NULL, NULL, &lin), DQ_ERR_INVALID_ARG);
    EXPECT_LOG("dq_linear_create:", "weights is NULL");
    dq_plan_free(wide);
    dq_qmatrix_free(q);
}

/* Every allocation failure of creating a layer with a plan (the fused transform, the plan's
 * fingerprint, the repacked weights) is one line naming DQ_ERR_NOMEM. */
static void linear_nomem_logged_once(dq_context *ctx)
{
    float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (float)(i % 5) - 2.0f;
    dq_plan *pl = swap_plan(ctx);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack_transformed(ctx, &qp, pl, w, 4, 4, 4, NULL, NULL, &q),
                     DQ_OK);
    int failures = 0;
    for (int k = 0; k < 60; k++) {
        cap.errors = 0;
        fail_allocs = k;
        dq_linear *lin = NULL;
        dq_status st = dq_linear_create(ctx, NULL, pl, q, NULL, &lin);
        fail_allocs = -1;
        if (st == DQ_OK) {
            dq_linear_free(lin);
            ck_assert_int_eq(cap.errors, 0);
            break;
        }
        failures++;
        ck_assert_int_eq(st, DQ_ERR_NOMEM);
        EXPECT_LOG("DQ_ERR_NOMEM");
    }
    ck_assert_int_gt(failures, 3);
    dq_qmatrix_free(q);
    dq_plan_free(pl);
}

/* ---- files: a borrowed (mapped) open and a stored rotation that is not one ---- */

static void borrowed_open_names_path_and_reason(dq_context *ctx)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_BORROW;
    dq_file_reader *r = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_open(ctx, &fp, "/nonexistent-dq/mapped.safetensors", &r),
                     DQ_ERR_IO);
    ck_assert_ptr_null(r);
    EXPECT_LOG("dq_file_reader_open:", "/nonexistent-dq/mapped.safetensors", "No such file",
               "DQ_ERR_IO");
    ck_assert_int_eq(dq_file_reader_open(ctx, &fp, "/", &r), DQ_ERR_IO);
    EXPECT_LOG("dq_file_reader_open:", "'/' is not a regular file", "DQ_ERR_IO");
}

static void stored_rotation_names_the_tensor(dq_context *ctx)
{
    float h[4];
    ck_assert_int_eq(dq_rotation_hadamard(2, h, 2), DQ_OK);
    dq_rotation *rot = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 4, 2, 0, h, 4, &rot), DQ_OK);
    const dq_rotation *rots[1] = {rot};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, 4, NULL, 1, rots, NULL, &pl), DQ_OK);
    dq_rotation_free(rot);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    size_t size;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
    uint8_t *buf = malloc(size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, size, &size), DQ_OK);
    /* The matrix's first entry (little-endian F32) made 2: its row norm is no longer 1. */
    uint8_t first[4];
    memcpy(first, &h[0], 4);
    uint8_t *hit = NULL;
    for (size_t i = 0; i + 4 <= size && !hit; i++)
        if (memcmp(buf + i, first, 4) == 0)
            hit = buf + i;
    ck_assert_ptr_nonnull(hit);
    const float two = 2.0f;
    memcpy(hit, &two, 4);
    dq_file_reader *r = NULL;
    /* Trusted: the data checksum would refuse the edit before the rotation's check. */
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_TRUSTED;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, &fp, buf, size, &r), DQ_OK);
    dq_plan *back = (dq_plan *)1;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &back), DQ_ERR_FORMAT);
    ck_assert_ptr_null(back);
    EXPECT_LOG("dq_file_reader_get_plan:", "rotation 'p.rot0': matrix 0 row 0 has norm",
               "DQ_ERR_FORMAT");
    dq_file_reader_free(r);
    free(buf);
    dq_file_writer_free(w);
    dq_plan_free(pl);
}

/* ---- plan building: every allocation failure of a greedy build is one line ---- */

static void plan_build_nomem_logged_once(dq_context *ctx)
{
    float x[64 * 8];
    for (int i = 0; i < 64 * 8; i++)
        x[i] = (float)((i * 37) % 23) - 11.0f + (i % 8 == 3 ? 40.0f : 0.0f);
    float wmax[8];
    for (int j = 0; j < 8; j++)
        wmax[j] = 1.0f + (float)j;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = 4;
    int failures = 0;
    for (int k = 0; k < 200; k++) {
        cap.errors = 0;
        fail_allocs = k;
        dq_plan *pl = NULL;
        dq_status st = dq_plan_build_from_sample(ctx, &pp, NULL, x, 64, 8, 8, wmax, &pl);
        fail_allocs = -1;
        if (st == DQ_OK) {
            dq_plan_free(pl);
            ck_assert_int_eq(cap.errors, 0);
            break;
        }
        failures++;
        ck_assert_int_eq(st, DQ_ERR_NOMEM);
        EXPECT_LOG("DQ_ERR_NOMEM");
    }
    ck_assert_int_gt(failures, 3);
}

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
    /* The run-time layer, one source file each. */
    plan_errors_say_why(ctx);
    qmatrix_errors_say_why(ctx);
    rotation_from_matrices_errors_say_why(ctx);
    linear_errors_say_why(ctx);
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
    linear_nomem_logged_once(ctx);
    plan_build_nomem_logged_once(ctx);
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
    borrowed_open_names_path_and_reason(ctx);
    stored_rotation_names_the_tensor(ctx);
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
