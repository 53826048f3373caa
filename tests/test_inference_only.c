/* The inference-only build (-Dcalibration=disabled) against the full one:
 *  - in the inference-only build, every offline function returns DQ_ERR_UNSUPPORTED, sets its
 *    output to NULL and logs one line through the context;
 *  - in both builds, the plan and layer of tests/data/inference_v1.safetensors (format version
 *    1) and inference_v3.safetensors (version 3, with checksums), written by the full build,
 *    load and reproduce bit for bit the activations and outputs stored with them;
 *  - in both builds, a plan assembled from given parts (no calibration) and weights packed
 *    with it survive a file round trip and give the same outputs as before.
 * With calibration, the full build also rebuilds the stored layer from the stored input and
 * checks that it gives the same file. `test_inference_only --write FILE` (full build) writes
 * that file. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <duquant.h>

#include "dq_test.h"
#include "dq_check_run.h"

#ifndef DQ_TEST_CALIBRATION
#error "DQ_TEST_CALIBRATION must be 0 or 1"
#endif

/* The stored layer: COLS inputs, OUT outputs, a TOKENS x COLS input that also served as the
 * calibration sample, greedy rotations on blocks of BLOCK. */
#define COLS 128
#define OUT 24
#define TOKENS 16
#define BLOCK 32

/* The stored file of the given format version; version 3 is what this build writes. */
static const char *data_path_v(int version)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/inference_v%d.safetensors", DQ_TEST_DATA_DIR, version);
    return path;
}


/* ---- log capture ---- */

typedef struct log_capture {
    int count;
    char last[512];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR)
        return;
    c->count++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static dq_context *capture_context(log_capture *c)
{
    memset(c, 0, sizeof *c);
    dq_context_params cp;
    ck_assert_int_eq(dq_context_params_init(&cp, sizeof cp), DQ_OK);
    cp.log = capture_log;
    cp.log_user = c;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
    return ctx;
}

/* ---- the stored layer ---- */

static void fill_input(float *x)
{
    test_rng rng = {20261202};
    test_fill_activations(&rng, x, TOKENS, COLS, COLS, 1);
}

static void fill_weight(float *w, float *bias)
{
    test_rng rng = {77};
    for (int64_t i = 0; i < OUT * COLS; i++)
        w[i] = (float)(0.05 * test_rng_normal(&rng));
    for (int64_t i = 0; i < OUT; i++)
        bias[i] = (float)(0.01 * (double)(i - OUT / 2));
}

/* x * G and the layer's forward on x for a plan and packed weights. */
static void run_layer(const dq_plan *pl, const dq_linear *lin, const float *x, float *xg, float *y)
{
    ck_assert_int_eq(dq_plan_apply_act_to(pl, x, TOKENS, COLS, COLS, xg, COLS, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(lin, x, TOKENS, COLS, COLS, y, OUT, NULL, 0), DQ_OK);
}

/* The writer holding the layer: plan "plan", layer "layer" reading it, and the tensors "x",
 * "xg" (x * G) and "y" (the forward) computed here. */
static dq_file_writer *layer_writer(const dq_plan *pl, const dq_qmatrix *q, const float *bias,
                                    const float *x)
{
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, pl, q, bias, &lin), DQ_OK);
    float *xg = malloc(sizeof(float) * TOKENS * COLS), *y = malloc(sizeof(float) * TOKENS * OUT);
    ck_assert(xg && y);
    run_layer(pl, lin, x, xg, y);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    const int64_t xs[2] = {TOKENS, COLS}, ys[2] = {TOKENS, OUT};
    ck_assert_int_eq(dq_file_writer_add_plan(w, "plan", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(w, "layer", NULL, "plan", q, bias), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "x", x, 2, xs), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "xg", xg, 2, xs), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "y", y, 2, ys), DQ_OK);
    ck_assert_int_eq(
        dq_file_writer_add_metadata(w, "written_by", "tests/test_inference_only.c --write"),
        DQ_OK);
    dq_linear_free(lin);
    free(xg);
    free(y);
    return w;
}

/* Loads plan and layer from a reader and checks that they reproduce "xg" and "y" exactly. */
static void check_reader(const dq_file_reader *r, dq_context *ctx)
{
    float *x = malloc(sizeof(float) * TOKENS * COLS), *xg = malloc(sizeof(float) * TOKENS * COLS);
    float *y = malloc(sizeof(float) * TOKENS * OUT);
    float *want_xg = malloc(sizeof(float) * TOKENS * COLS);
    float *want_y = malloc(sizeof(float) * TOKENS * OUT);
    ck_assert(x && xg && y && want_xg && want_y);
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "x", x, TOKENS * COLS), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "xg", want_xg, TOKENS * COLS), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "y", want_y, TOKENS * OUT), DQ_OK);
    dq_plan *pl = NULL;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "plan", &pl), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "layer", pl, &lin), DQ_OK);
    run_layer(pl, lin, x, xg, y);
    double dx = 0, dy = 0;
    for (int64_t i = 0; i < TOKENS * COLS; i++)
        dx = fmax(dx, fabs((double)xg[i] - want_xg[i]));
    for (int64_t i = 0; i < TOKENS * OUT; i++)
        dy = fmax(dy, fabs((double)y[i] - want_y[i]));
    ck_assert_msg(memcmp(xg, want_xg, sizeof(float) * TOKENS * COLS) == 0,
                  "x * G differs from the stored one (max |diff| %g)", dx);
    ck_assert_msg(memcmp(y, want_y, sizeof(float) * TOKENS * OUT) == 0,
                  "the forward differs from the stored one (max |diff| %g)", dy);
    dq_linear_free(lin);
    dq_plan_free(pl);
    free(x);
    free(xg);
    free(y);
    free(want_xg);
    free(want_y);
}

START_TEST(test_file_from_full_build)
{
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_open(NULL, NULL, data_path_v(_i == 0 ? 1 : 3), &r), DQ_OK);
    /* The plan is the full build's kind: smoothing, two greedy rotations and a permutation. */
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "plan", &pl), DQ_OK);
    int32_t smooth = 0, n_rot = 0;
    ck_assert_int_eq(dq_plan_layout(pl, &smooth, &n_rot), DQ_OK);
    ck_assert_int_eq(smooth, 1);
    ck_assert_int_eq(n_rot, 2);
    dq_plan_free(pl);
    check_reader(r, NULL);
    dq_file_reader_free(r);
}
END_TEST

/* ---- a plan from given parts ---- */

/* An orthogonal n x n matrix built without the library: the Sylvester Hadamard matrix over
 * sqrt(n), n a power of two. */
static void hadamard(int32_t n, float *h)
{
    const float s = (float)(1.0 / sqrt((double)n));
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            h[i * n + j] = (__builtin_popcount((unsigned)(i & j)) & 1) ? -s : s;
}

START_TEST(test_assembled_round_trip)
{
    log_capture log;
    dq_context *ctx = capture_context(&log);
    float *h = malloc(sizeof(float) * BLOCK * BLOCK);
    float *w = malloc(sizeof(float) * OUT * COLS), bias[OUT], scale[COLS];
    float *x = malloc(sizeof(float) * TOKENS * COLS);
    int64_t perm[COLS];
    ck_assert(h && w && x);
    hadamard(BLOCK, h);
    fill_weight(w, bias);
    fill_input(x);
    for (int64_t j = 0; j < COLS; j++) {
        scale[j] = 0.5f + (float)(j % 7) * 0.25f;
        perm[j] = (j * 37) % COLS; /* 37 is coprime with 128: a permutation */
    }
    dq_rotation *rot = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, COLS, BLOCK, 0, h, BLOCK * BLOCK, &rot),
                     DQ_OK);
    const dq_rotation *rots[2] = {rot, rot};
    const int64_t *perms[1] = {perm};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, COLS, scale, 2, rots, perms, &pl), DQ_OK);
    dq_rotation_free(rot);
    ck_assert_int_eq(dq_plan_transform_weight(pl, w, OUT, COLS, COLS), DQ_OK);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, NULL, w, OUT, COLS, COLS, NULL, NULL, &q), DQ_OK);

    dq_file_writer *wr = layer_writer(pl, q, bias, x);
    size_t size = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(wr, NULL, 0, &size), DQ_OK);
    void *buf = malloc(size);
    ck_assert(buf);
    ck_assert_int_eq(dq_file_writer_to_buffer(wr, buf, size, &size), DQ_OK);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, buf, size, &r), DQ_OK);
    check_reader(r, ctx);
    ck_assert_int_eq(log.count, 0);

    dq_file_reader_free(r);
    free(buf);
    dq_file_writer_free(wr);
    dq_qmatrix_free(q);
    dq_plan_free(pl);
    dq_context_free(ctx);
    free(h);
    free(w);
    free(x);
}
END_TEST

#if DQ_TEST_CALIBRATION

/* The stored layer, built as the full build builds it: the default plan (smoothing, greedy
 * rotation, zigzag permutation, greedy rotation) on the input as calibration sample, weights
 * transformed and packed with default parameters. */
static dq_file_writer *build_stored_layer(void)
{
    float *w = malloc(sizeof(float) * OUT * COLS), bias[OUT], w_absmax[COLS];
    float *x = malloc(sizeof(float) * TOKENS * COLS);
    ck_assert(w && x);
    fill_weight(w, bias);
    fill_input(x);
    ck_assert_int_eq(dq_smooth_weight_absmax(w, OUT, COLS, COLS, 0, w_absmax), DQ_OK);
    dq_plan_params pp;
    ck_assert_int_eq(dq_plan_params_init(&pp, sizeof pp), DQ_OK);
    pp.block_size = BLOCK;
    pp.max_rotation_step = 16;
    dq_plan *pl = NULL;
    ck_assert_int_eq(
        dq_plan_build_from_sample(NULL, &pp, NULL, x, TOKENS, COLS, COLS, w_absmax, &pl),
        DQ_OK);
    ck_assert_int_eq(dq_plan_transform_weight(pl, w, OUT, COLS, COLS), DQ_OK);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, OUT, COLS, COLS, NULL, NULL, &q), DQ_OK);
    dq_file_writer *wr = layer_writer(pl, q, bias, x);
    dq_qmatrix_free(q);
    dq_plan_free(pl);
    free(w);
    free(x);
    return wr;
}

/* The stored file is what this build writes today: same bytes. */
START_TEST(test_stored_file_is_current)
{
    dq_file_writer *wr = build_stored_layer();
    size_t size = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(wr, NULL, 0, &size), DQ_OK);
    unsigned char *want = malloc(size);
    ck_assert(want);
    ck_assert_int_eq(dq_file_writer_to_buffer(wr, want, size, &size), DQ_OK);
    FILE *f = fopen(data_path_v(3), "rb");
    ck_assert_msg(f != NULL, "cannot open %s", data_path_v(3));
    unsigned char *got = malloc(size + 1);
    ck_assert(got);
    size_t n = fread(got, 1, size + 1, f);
    fclose(f);
    ck_assert_msg(n == size && memcmp(got, want, size) == 0,
                  "%s is not what this build writes: regenerate it with "
                  "`test_inference_only --write %s` if the change is intended",
                  data_path_v(3), data_path_v(3));
    free(got);
    free(want);
    dq_file_writer_free(wr);
}
END_TEST

/* `--write FILE`: writes the stored layer (a Check test, so that the checks run inside it). */
static const char *write_path;

START_TEST(test_write_stored)
{
    dq_file_writer *wr = build_stored_layer();
    ck_assert_int_eq(dq_file_writer_save(wr, write_path), DQ_OK);
    dq_file_writer_free(wr);
    printf("wrote %s\n", write_path);
}
END_TEST

#else /* the inference-only build */

#define UNSUPPORTED(call)                                                                    \
    do {                                                                                     \
        int before_ = log.count;                                                             \
        ck_assert_int_eq((call), DQ_ERR_UNSUPPORTED);                                        \
        ck_assert_msg(log.count == before_ + 1, "no log line from %s", #call);                \
        ck_assert_msg(strstr(log.last, "built without calibration") != NULL, "%s logged: %s", \
                      #call, log.last);                                                      \
    } while (0)
/* Functions without a context log nowhere; they must still refuse. */
#define UNSUPPORTED_NOCTX(call) ck_assert_int_eq((call), DQ_ERR_UNSUPPORTED)

START_TEST(test_offline_unsupported)
{
    log_capture log;
    dq_context *ctx = capture_context(&log);
    float v[64] = {1.0f}, u[64] = {1.0f}, x[4 * 16];
    int64_t perm[16], n64 = 0;
    int32_t n32 = 0;
    for (int i = 0; i < 4 * 16; i++)
        x[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < 64; i++)
        v[i] = u[i] = 1.0f;

    /* Creators: refused with a log line, *out set to NULL. */
    dq_calib *cal = (dq_calib *)(void *)v;
    UNSUPPORTED(dq_calib_create(ctx, NULL, 16, &cal));
    ck_assert_ptr_null(cal);
    dq_rotation *rot = (dq_rotation *)(void *)v;
    UNSUPPORTED(dq_rotation_create(ctx, NULL, x, 4, 16, 16, &rot));
    ck_assert_ptr_null(rot);
    dq_plan *pl = (dq_plan *)(void *)v;
    UNSUPPORTED(dq_plan_build(ctx, NULL, NULL, v, 16, &pl));
    ck_assert_ptr_null(pl);
    pl = (dq_plan *)(void *)v;
    UNSUPPORTED(dq_plan_build_from_sample(ctx, NULL, NULL, x, 4, 16, 16, v, &pl));
    ck_assert_ptr_null(pl);
    dq_lwc *l = (dq_lwc *)(void *)v;
    UNSUPPORTED(dq_lwc_create(ctx, NULL, NULL, v, 4, 16, 16, x, 4, 16, &l));
    ck_assert_ptr_null(l);
    dq_hessian *hs = (dq_hessian *)(void *)v;
    UNSUPPORTED(dq_hessian_create(ctx, NULL, 16, &hs));
    ck_assert_ptr_null(hs);
    dq_qmatrix *gq = (dq_qmatrix *)(void *)v;
    UNSUPPORTED(dq_gptq_pack(ctx, NULL, NULL, NULL, v, 4, 16, 16, NULL, NULL, 0, &gq));
    ck_assert_ptr_null(gq);

    /* A rotation from matrices (run time) exists; refining it is offline. */
    float h[16 * 16];
    hadamard(16, h);
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, 16, 16, 0, h, 256, &rot), DQ_OK);
    dq_rotation *better = (dq_rotation *)(void *)v;
    UNSUPPORTED(dq_rotation_refine(ctx, NULL, rot, x, 4, 16, 16, &better));
    ck_assert_ptr_null(better);
    dq_rotation_free(rot);
    ck_assert_int_eq(log.count, 7 + 1);

    /* The rest takes no context. */
    dq_calib_params cp;
    dq_rotation_params rp;
    dq_plan_params pp;
    dq_lwc_params lp;
    dq_refine_params fp;
    dq_gptq_params gp;
    double hm[16 * 16];
    UNSUPPORTED_NOCTX(dq_gptq_params_init(&gp, sizeof gp));
    UNSUPPORTED_NOCTX(dq_hessian_observe(NULL, x, 4, 16, 16));
    UNSUPPORTED_NOCTX(dq_hessian_merge(NULL, NULL));
    UNSUPPORTED_NOCTX(dq_hessian_tokens(NULL, &n64));
    UNSUPPORTED_NOCTX(dq_hessian_matrix(NULL, hm, 16));
    UNSUPPORTED_NOCTX(dq_calib_params_init(&cp, sizeof cp));
    UNSUPPORTED_NOCTX(dq_rotation_params_init(&rp, sizeof rp));
    UNSUPPORTED_NOCTX(dq_plan_params_init(&pp, sizeof pp));
    UNSUPPORTED_NOCTX(dq_lwc_params_init(&lp, sizeof lp));
    UNSUPPORTED_NOCTX(dq_refine_params_init(&fp, sizeof fp));
    UNSUPPORTED_NOCTX(dq_calib_observe(NULL, x, 4, 16, 16));
    UNSUPPORTED_NOCTX(dq_calib_merge(NULL, NULL));
    UNSUPPORTED_NOCTX(dq_calib_tokens(NULL, &n64));
    UNSUPPORTED_NOCTX(dq_calib_absmax(NULL, v, 16));
    UNSUPPORTED_NOCTX(dq_calib_minmax(NULL, v, u, 16));
    UNSUPPORTED_NOCTX(dq_calib_sample(NULL, v, 16, &n64));
    UNSUPPORTED_NOCTX(dq_smooth_factors(v, u, 16, 0.5f, x));
    UNSUPPORTED_NOCTX(dq_smooth_weight_absmax(x, 4, 16, 16, 0, v));
    UNSUPPORTED_NOCTX(dq_permutation_zigzag(v, 16, 4, perm));
    UNSUPPORTED_NOCTX(dq_rotation_base(16, NULL, h, 16));
    UNSUPPORTED_NOCTX(dq_rotation_hadamard(16, h, 16));
    UNSUPPORTED_NOCTX(dq_rotation_random_orthogonal(16, 1, h, 16));
    UNSUPPORTED_NOCTX(dq_lwc_loss(NULL, v, u, v, 16));
    UNSUPPORTED_NOCTX(dq_lwc_train(NULL, v));
    UNSUPPORTED_NOCTX(dq_lwc_layout(NULL, &n64, &n32));
    UNSUPPORTED_NOCTX(dq_lwc_get_params(NULL, v, u, 16));
    UNSUPPORTED_NOCTX(dq_lwc_set_params(NULL, v, u, 16));
    UNSUPPORTED_NOCTX(dq_lwc_factors(NULL, v, u, 16));
    UNSUPPORTED_NOCTX(dq_lwc_best(NULL, v, u, 16, v));
    /* Free functions accept what the creators return. */
    dq_calib_free(NULL);
    dq_lwc_free(NULL);
    dq_hessian_free(NULL);
    dq_context_free(ctx);
}
END_TEST

#endif

static Suite *make_suite(bool write)
{
    Suite *s = suite_create("inference_only");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
#if DQ_TEST_CALIBRATION
    if (write) {
        tcase_add_test(tc, test_write_stored);
        suite_add_tcase(s, tc);
        return s;
    }
    tcase_add_test(tc, test_stored_file_is_current);
#else
    (void)write;
    tcase_add_test(tc, test_offline_unsupported);
#endif
    tcase_add_loop_test(tc, test_file_from_full_build, 0, 2);
    tcase_add_test(tc, test_assembled_round_trip);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    const bool write = argc == 3 && strcmp(argv[1], "--write") == 0;
    if (write) {
#if DQ_TEST_CALIBRATION
        write_path = argv[2];
#else
        fprintf(stderr, "--write needs the full build (-Dcalibration=enabled)\n");
        return 1;
#endif
    }
    return dq_check_run(make_suite(write), 0);
}
