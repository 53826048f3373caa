/* Plans bound to their weights: fingerprints, the checks of layers and files, and layers
 * keeping their plan alive. */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "dq_check_run.h"
#include "test_unseal.h"

enum { COLS = 40, BS = 16, OUT = 6, T = 5, ROWS = 48 };

/* ---- log capture ---- */

typedef struct log_sink {
    int n_error, n_warn;
    char text[4096]; /* every line, newline-separated, truncated */
} log_sink;

static void sink_fn(void *user, int32_t level, const char *msg)
{
    log_sink *s = user;
    if (level == DQ_LOG_ERROR)
        s->n_error++;
    else if (level == DQ_LOG_WARN)
        s->n_warn++;
    size_t used = strlen(s->text);
    snprintf(s->text + used, sizeof s->text - used, "%s\n", msg);
}

static dq_context *sink_ctx(log_sink *s)
{
    memset(s, 0, sizeof *s);
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.log = sink_fn;
    p.log_user = s;
    p.log_level = DQ_LOG_WARN;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

static void hex(uint64_t v, char out[17])
{
    snprintf(out, 17, "%016" PRIx64, v);
}

/* ---- fixtures ---- */

static dq_plan *make_plan(uint64_t data_seed, uint64_t seed, uint32_t flags)
{
    float *x = malloc(sizeof(float) * ROWS * COLS);
    test_rng rng = {data_seed};
    test_fill_activations(&rng, x, ROWS, COLS, COLS, 1);
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    p.flags = flags;
    p.block_size = BS;
    p.max_rotation_step = 8;
    p.seed = seed;
    float wabs[COLS];
    for (int j = 0; j < COLS; j++)
        wabs[j] = 0.5f + (float)(j % 5) * 0.1f;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, ROWS, COLS, COLS, wabs, &pl),
                     DQ_OK);
    free(x);
    return pl;
}

static uint64_t fp_of(const dq_plan *pl)
{
    uint64_t fp = 0;
    ck_assert_int_eq(dq_plan_fingerprint(pl, &fp), DQ_OK);
    ck_assert_uint_ne(fp, 0);
    return fp;
}

enum { MUT_NONE, MUT_SMOOTH, MUT_ROT, MUT_PERM, MUT_DROP_SMOOTH };

/* A copy of pl assembled from its exported parts, with one value changed by mut. */
static dq_plan *reassemble(const dq_plan *pl, int mut)
{
    int64_t cols;
    int32_t has_s, n_rot;
    ck_assert_int_eq(dq_plan_width(pl, &cols), DQ_OK);
    ck_assert_int_eq(dq_plan_layout(pl, &has_s, &n_rot), DQ_OK);
    ck_assert_int_eq(has_s, 1);
    ck_assert_int_ge(n_rot, 2);
    float smooth[COLS];
    ck_assert_int_eq(dq_plan_smooth_scales(pl, smooth, cols), DQ_OK);
    if (mut == MUT_SMOOTH)
        smooth[7] = nextafterf(smooth[7], 100.0f);
    dq_rotation *rots[8] = {0};
    int64_t perm_store[8][COLS];
    const int64_t *perms[8] = {0};
    for (int32_t i = 0; i < n_rot; i++) {
        const dq_rotation *r;
        ck_assert_int_eq(dq_plan_rotation(pl, i, &r), DQ_OK);
        ck_assert_ptr_nonnull(r);
        int32_t bs;
        int64_t nb, nm;
        ck_assert_int_eq(dq_rotation_layout(r, NULL, &bs, &nb, &nm), DQ_OK);
        float *data = malloc(sizeof(float) * (size_t)(nm * bs * bs));
        int64_t off = 0;
        for (int64_t m = 0; m < nm; m++) {
            int32_t size;
            ck_assert_int_eq(dq_rotation_matrix(r, m, NULL, 0, &size), DQ_OK);
            ck_assert_int_eq(dq_rotation_matrix(r, m, data + off, size, &size), DQ_OK);
            off += (int64_t)size * size;
        }
        if (mut == MUT_ROT && i == n_rot - 1)
            data[3] = nextafterf(data[3], 2.0f);
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, cols, bs, nm == nb && nb > 1, data, off,
                                                   &rots[i]),
                         DQ_OK);
        free(data);
    }
    for (int32_t i = 0; i + 1 < n_rot; i++) {
        ck_assert_int_eq(dq_plan_permutation(pl, i, perm_store[i], cols), DQ_OK);
        perms[i] = perm_store[i];
    }
    if (mut == MUT_PERM) {
        int64_t t = perm_store[0][1];
        perm_store[0][1] = perm_store[0][2];
        perm_store[0][2] = t;
    }
    dq_plan *out = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, mut == MUT_DROP_SMOOTH ? NULL : smooth, n_rot,
                                      (const dq_rotation *const *)rots, perms, &out),
                     DQ_OK);
    for (int32_t i = 0; i < n_rot; i++)
        dq_rotation_free(rots[i]);
    return out;
}

static void make_weights(float *w, uint64_t seed)
{
    test_rng rng = {seed};
    for (int i = 0; i < OUT * COLS; i++)
        w[i] = (float)test_rng_normal(&rng);
}

static dq_qmatrix *pack_bound(const dq_plan *pl, const float *w)
{
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(NULL, NULL, pl, w, OUT, COLS, COLS, NULL, NULL, &q), DQ_OK);
    return q;
}

/* Weights transformed by pl but packed the 1.0 way, without recording the plan. */
static dq_qmatrix *pack_unbound(const dq_plan *pl, const float *w)
{
    float wt[OUT * COLS];
    memcpy(wt, w, sizeof wt);
    ck_assert_int_eq(dq_plan_transform_weight(pl, wt, OUT, COLS, COLS), DQ_OK);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, wt, OUT, COLS, COLS, NULL, NULL, &q), DQ_OK);
    return q;
}

static void forward(const dq_linear *lin, float *y)
{
    float x[T * COLS];
    test_rng rng = {99};
    test_fill_activations(&rng, x, T, COLS, COLS, 1);
    ck_assert_int_eq(dq_linear_forward(lin, x, T, COLS, COLS, y, OUT, NULL, 0), DQ_OK);
}

/* ---- fingerprints ---- */

START_TEST(fingerprint_follows_contents)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT);
    const uint64_t fa = fp_of(a);
    ck_assert_uint_eq(fp_of(a), fa); /* deterministic */
    /* Built again from the same data, or assembled from the same parts: the same. */
    dq_plan *a2 = make_plan(7, 1, DQ_PLAN_F_DEFAULT);
    ck_assert_uint_eq(fp_of(a2), fa);
    dq_plan *copy = reassemble(a, MUT_NONE);
    ck_assert_uint_eq(fp_of(copy), fa);
    /* Any one value changed: different. */
    const int muts[] = {MUT_SMOOTH, MUT_ROT, MUT_PERM, MUT_DROP_SMOOTH};
    uint64_t seen[5] = {fa};
    for (int k = 0; k < 4; k++) {
        dq_plan *m = reassemble(a, muts[k]);
        seen[k + 1] = fp_of(m);
        for (int j = 0; j <= k; j++)
            ck_assert_uint_ne(seen[k + 1], seen[j]);
        dq_plan_free(m);
    }
    /* Another input of the same width, another seed, another layout. */
    dq_plan *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    dq_plan *c = make_plan(7, 2, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_RANDOM_QPRIME);
    dq_plan *d = make_plan(7, 1, DQ_PLAN_F_ROTATE);
    ck_assert_uint_ne(fp_of(b), fa);
    ck_assert_uint_ne(fp_of(c), fa);
    ck_assert_uint_ne(fp_of(d), fa);
    ck_assert_uint_ne(fp_of(d), fp_of(b));
    /* An identity plan has a fingerprint too. */
    dq_plan *id = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, COLS, NULL, 0, NULL, NULL, &id), DQ_OK);
    ck_assert_uint_ne(fp_of(id), fa);
    uint64_t v = 5;
    ck_assert_int_eq(dq_plan_fingerprint(NULL, &v), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_plan_fingerprint(a, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_uint_eq(v, 5);
    dq_plan_free(a);
    dq_plan_free(a2);
    dq_plan_free(copy);
    dq_plan_free(b);
    dq_plan_free(c);
    dq_plan_free(d);
    dq_plan_free(id);
}
END_TEST

/* The definition is part of the file format (doc/formats.md): these values are computed from
 * it independently and hold on every platform. */
START_TEST(fingerprint_is_pinned)
{
    enum { C = 12 };
    float smooth[C], h4[16];
    int64_t perm[C];
    for (int j = 0; j < C; j++) {
        smooth[j] = 1.0f + (float)j / 8.0f;
        perm[j] = (j / 4) * 4 + 3 - j % 4;
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int bits = i & j;
            h4[i * 4 + j] = ((bits ^ (bits >> 1)) & 1) ? -0.5f : 0.5f;
        }
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, C, 4, 0, h4, 16, &r), DQ_OK);
    const dq_rotation *rs[2] = {r, r};
    const int64_t *ps[1] = {perm};
    dq_plan *pl = NULL, *id = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, C, smooth, 2, rs, ps, &pl), DQ_OK);
    ck_assert_int_eq(dq_plan_assemble(NULL, C, NULL, 0, NULL, NULL, &id), DQ_OK);
    ck_assert_uint_eq(fp_of(pl), 0x387ed1f7b1cf8e72ull);
    ck_assert_uint_eq(fp_of(id), 0xac18ee24725fb375ull);
    dq_rotation_free(r);
    dq_plan_free(pl);
    dq_plan_free(id);
}
END_TEST

/* ---- packing ---- */

START_TEST(packing_records_the_plan)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT), *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    const uint64_t fa = fp_of(a), fb = fp_of(b);
    float w[OUT * COLS], keep[OUT * COLS];
    make_weights(w, 3);
    memcpy(keep, w, sizeof w);
    dq_qmatrix *bound = pack_bound(a, w), *unbound = pack_unbound(a, w);
    ck_assert_int_eq(memcmp(w, keep, sizeof w), 0); /* the caller's weights untouched */
    uint64_t f = 1;
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(bound, &f), DQ_OK);
    ck_assert_uint_eq(f, fa);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(unbound, &f), DQ_OK);
    ck_assert_uint_eq(f, 0);
    /* The same codes as transform-then-pack. */
    float d1[OUT * COLS], d2[OUT * COLS];
    ck_assert_int_eq(dq_qmatrix_dequantize(bound, d1, COLS), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_dequantize(unbound, d2, COLS), DQ_OK);
    ck_assert_int_eq(memcmp(d1, d2, sizeof d1), 0);
    /* Already transformed weights name their plan through the params. */
    float wt[OUT * COLS];
    memcpy(wt, w, sizeof wt);
    ck_assert_int_eq(dq_plan_transform_weight(a, wt, OUT, COLS, COLS), DQ_OK);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    ck_assert_uint_eq(qp.plan_fingerprint, 0);
    qp.plan_fingerprint = fa;
    dq_qmatrix *named = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &qp, wt, OUT, COLS, COLS, NULL, NULL, &named), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(named, &f), DQ_OK);
    ck_assert_uint_eq(f, fa);
    /* Params naming another plan, a plan of another width, no plan. */
    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    qp.plan_fingerprint = fb;
    dq_qmatrix *q = (dq_qmatrix *)1;
    ck_assert_int_eq(dq_qmatrix_pack_transformed(ctx, &qp, a, w, OUT, COLS, COLS, NULL, NULL, &q),
                     DQ_ERR_MISMATCH);
    ck_assert_ptr_null(q);
    char ha[17], hb[17];
    hex(fa, ha);
    hex(fb, hb);
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    ck_assert_ptr_nonnull(strstr(s.text, hb));
    qp.plan_fingerprint = fa; /* naming the same plan is fine */
    ck_assert_int_eq(dq_qmatrix_pack_transformed(ctx, &qp, a, w, OUT, COLS, COLS, NULL, NULL, &q),
                     DQ_OK);
    dq_qmatrix_free(q);
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(ctx, NULL, a, w, OUT, COLS - 1, COLS, NULL, NULL, &q),
        DQ_ERR_SHAPE);
    ck_assert_ptr_null(q);
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(ctx, NULL, NULL, w, OUT, COLS, COLS, NULL, NULL, &q),
        DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(NULL, &f), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(bound, NULL), DQ_ERR_INVALID_ARG);
    dq_context_free(ctx);
    dq_qmatrix_free(bound);
    dq_qmatrix_free(unbound);
    dq_qmatrix_free(named);
    dq_plan_free(a);
    dq_plan_free(b);
}
END_TEST

/* ---- layers ---- */

START_TEST(layer_refuses_another_plan)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT), *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    char ha[17], hb[17];
    hex(fp_of(a), ha);
    hex(fp_of(b), hb);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *q = pack_bound(a, w);
    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    /* A plan of another input of the same width. */
    dq_linear *lin = (dq_linear *)1;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, b, q, NULL, &lin), DQ_ERR_MISMATCH);
    ck_assert_ptr_null(lin);
    ck_assert_int_eq(s.n_error, 1);
    ck_assert_ptr_nonnull(strstr(s.text, "dq_linear_create"));
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    ck_assert_ptr_nonnull(strstr(s.text, hb));
    ck_assert_ptr_nonnull(strstr(s.text, "DQ_ERR_MISMATCH"));
    /* The plan forgotten. */
    memset(s.text, 0, sizeof s.text);
    lin = (dq_linear *)1;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), DQ_ERR_MISMATCH);
    ck_assert_ptr_null(lin);
    ck_assert_ptr_nonnull(strstr(s.text, "plan is NULL"));
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    /* The right plan: accepted, silently, and as accurate as the unbound 1.0 way. */
    s.n_error = s.n_warn = 0;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, a, q, NULL, &lin), DQ_OK);
    ck_assert_int_eq(s.n_error + s.n_warn, 0);
    dq_qmatrix *u = pack_unbound(a, w);
    dq_linear *old = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, a, u, NULL, &old), DQ_OK);
    float y1[T * OUT], y2[T * OUT];
    forward(lin, y1);
    forward(old, y2);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(lin);
    dq_linear_free(old);
    dq_context_free(ctx);
    dq_qmatrix_free(q);
    dq_qmatrix_free(u);
    dq_plan_free(a);
    dq_plan_free(b);
}
END_TEST

START_TEST(unbound_weights_warn)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *u = pack_unbound(a, w);
    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, a, u, NULL, &lin), DQ_OK);
    ck_assert_int_eq(s.n_warn, 1);
    ck_assert_int_eq(s.n_error, 0);
    ck_assert_ptr_nonnull(strstr(s.text, "without a plan fingerprint"));
    dq_linear_free(lin);
    /* No plan and no recorded plan: plain quantization, nothing to say. */
    s.n_warn = 0;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, u, NULL, &lin), DQ_OK);
    ck_assert_int_eq(s.n_warn + s.n_error, 0);
    dq_linear_free(lin);
    dq_context_free(ctx);
    dq_qmatrix_free(u);
    dq_plan_free(a);
}
END_TEST

START_TEST(layer_keeps_its_plan)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT);
    float w[OUT * COLS], w2[OUT * COLS];
    make_weights(w, 3);
    make_weights(w2, 4);
    dq_qmatrix *q1 = pack_bound(a, w), *q2 = pack_bound(a, w2);
    dq_linear *l1 = NULL, *l2 = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, a, q1, NULL, &l1), DQ_OK);
    ck_assert_int_eq(dq_linear_create(NULL, NULL, a, q2, NULL, &l2), DQ_OK);
    float y1[T * OUT], y2[T * OUT], z1[T * OUT], z2[T * OUT];
    forward(l1, y1);
    forward(l2, y2);
    /* The plan freed first: both layers still work, with the same output. */
    dq_plan_free(a);
    dq_qmatrix_free(q1);
    dq_qmatrix_free(q2);
    forward(l1, z1);
    ck_assert_int_eq(memcmp(y1, z1, sizeof y1), 0);
    dq_linear_free(l1);
    forward(l2, z2); /* the last reference */
    ck_assert_int_eq(memcmp(y2, z2, sizeof y2), 0);
    dq_linear_free(l2);
}
END_TEST

typedef struct churn_arg {
    const dq_plan *plan;
    const dq_qmatrix *q;
    int fails;
} churn_arg;

static void *churn(void *p)
{
    churn_arg *a = p;
    for (int i = 0; i < 40; i++) {
        dq_linear *lin = NULL;
        if (dq_linear_create(NULL, NULL, a->plan, a->q, NULL, &lin) != DQ_OK)
            a->fails++;
        dq_linear_free(lin);
    }
    return NULL;
}

/* Layers of one shared plan created and freed on several threads, the plan freed while they
 * run: the count is atomic (TSan and ASan builds check it). */
START_TEST(shared_plan_across_threads)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *q = pack_bound(a, w);
    dq_linear *keep = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, a, q, NULL, &keep), DQ_OK);
    float y1[T * OUT], y2[T * OUT];
    forward(keep, y1);
    enum { N = 4 };
    pthread_t th[N];
    churn_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (churn_arg){a, q, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, churn, &args[i]), 0);
    }
    dq_plan_free(a); /* keep still holds it */
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_int_eq(args[i].fails, 0);
    }
    forward(keep, y2);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(keep);
    dq_qmatrix_free(q);
}
END_TEST

/* ---- files ---- */

static uint8_t *to_buffer(const dq_file_writer *w, size_t *size)
{
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *b = malloc(*size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, b, *size, size), DQ_OK);
    return b;
}

static dq_file_reader *open_buf(const uint8_t *b, size_t size)
{
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, b, size, &r), DQ_OK);
    return r;
}

START_TEST(writer_checks_the_plan)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT), *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    char ha[17], hb[17];
    hex(fp_of(a), ha);
    hex(fp_of(b), hb);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *qa = pack_bound(a, w), *ua = pack_unbound(a, w);
    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &fw), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.a", a), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.b", b), DQ_OK);
    size_t before, after;
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &before), DQ_OK);
    /* A plan prefix the writer does not hold. */
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", NULL, "in.c", qa, NULL),
                     DQ_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(s.text, "'in.c'"));
    /* The plan stored under the prefix is not the weights' plan. */
    memset(s.text, 0, sizeof s.text);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", NULL, "in.b", qa, NULL),
                     DQ_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    ck_assert_ptr_nonnull(strstr(s.text, hb));
    /* Bound weights without a plan prefix would lose their plan. */
    memset(s.text, 0, sizeof s.text);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", NULL, NULL, qa, NULL),
                     DQ_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &after), DQ_OK);
    ck_assert_uint_eq(before, after); /* nothing left behind */
    ck_assert_int_eq(s.n_error, 3);
    /* The right plan; unbound weights with a warning. */
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", NULL, "in.a", qa, NULL), DQ_OK);
    s.n_warn = 0;
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.k", NULL, "in.a", ua, NULL), DQ_OK);
    ck_assert_int_eq(s.n_warn, 1);
    ck_assert_ptr_nonnull(strstr(s.text, "without a plan fingerprint"));
    dq_file_writer_free(fw);
    dq_context_free(ctx);
    dq_qmatrix_free(qa);
    dq_qmatrix_free(ua);
    dq_plan_free(a);
    dq_plan_free(b);
}
END_TEST

START_TEST(reader_checks_the_plan)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT), *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    const uint64_t fa = fp_of(a);
    char ha[17], hb[17];
    hex(fa, ha);
    hex(fp_of(b), hb);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *qa = pack_bound(a, w), *ua = pack_unbound(a, w);
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &fw), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.a", a), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.b", b), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", NULL, "in.a", qa, NULL), DQ_OK);
    /* As a file written before 1.2 stores it: no fingerprint, the plan named. */
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.k", NULL, "in.a", ua, NULL), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(fw, "m", qa), DQ_OK);
    size_t size;
    uint8_t *buf = to_buffer(fw, &size);
    dq_file_writer_free(fw);
    dq_file_reader *r = open_buf(buf, size);

    /* Fingerprints survive the file. */
    dq_plan *la = NULL, *lb = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "in.a", &la), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "in.b", &lb), DQ_OK);
    ck_assert_uint_eq(fp_of(la), fa);
    ck_assert_uint_eq(fp_of(lb), fp_of(b));
    dq_qmatrix *lq = NULL;
    uint64_t f = 0;
    ck_assert_int_eq(dq_file_reader_get_qmatrix(r, NULL, "m", &lq), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(lq, &f), DQ_OK);
    ck_assert_uint_eq(f, fa);
    dq_qmatrix_free(lq);
    ck_assert_int_eq(dq_file_reader_get_qmatrix(r, NULL, "l.k.weight", &lq), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_plan_fingerprint(lq, &f), DQ_OK);
    ck_assert_uint_eq(f, 0);
    dq_qmatrix_free(lq);

    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    /* Another plan than the one the file names, bound weights and 1.0-style ones alike. */
    const char *layers[] = {"l.q", "l.k"};
    for (int k = 0; k < 2; k++) {
        memset(s.text, 0, sizeof s.text);
        dq_linear *lin = (dq_linear *)1;
        ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, layers[k], lb, &lin),
                         DQ_ERR_MISMATCH);
        ck_assert_ptr_null(lin);
        ck_assert_ptr_nonnull(strstr(s.text, ha));
        ck_assert_ptr_nonnull(strstr(s.text, hb));
        ck_assert_ptr_nonnull(strstr(s.text, layers[k]));
        memset(s.text, 0, sizeof s.text);
        lin = (dq_linear *)1;
        ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, layers[k], NULL, &lin),
                         DQ_ERR_MISMATCH);
        ck_assert_ptr_null(lin);
        ck_assert_ptr_nonnull(strstr(s.text, "plan is NULL"));
    }
    /* The named plan: the layer, the same as made in memory; 1.0-style weights warn. */
    dq_linear *back = NULL, *mem = NULL;
    s.n_warn = s.n_error = 0;
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "l.q", la, &back), DQ_OK);
    ck_assert_int_eq(s.n_warn + s.n_error, 0);
    ck_assert_int_eq(dq_linear_create(NULL, NULL, a, qa, NULL, &mem), DQ_OK);
    float y1[T * OUT], y2[T * OUT];
    dq_plan_free(la); /* the layer keeps it */
    forward(back, y1);
    forward(mem, y2);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(back);
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "l.k", a, &back),
                     DQ_OK);
    ck_assert_int_eq(s.n_warn, 1);
    dq_linear_free(back);
    dq_linear_free(mem);
    dq_file_reader_free(r);

    /* A malformed fingerprint is a format error (in a file without checksums: the header
     * checksum of the file as written would refuse the edit first). */
    uint8_t *sealed = buf;
    buf = test_unseal(sealed, size, &size);
    free(sealed);
    size_t at = 0;
    while (at + 16 <= size && memcmp(buf + at, ha, 16) != 0)
        at++;
    ck_assert_uint_lt(at + 16, size);
    buf[at] = 'G';
    r = open_buf(buf, size);
    lq = (dq_qmatrix *)1;
    ck_assert_int_eq(dq_file_reader_get_qmatrix(r, ctx, "l.q.weight", &lq), DQ_ERR_FORMAT);
    ck_assert_ptr_null(lq);
    dq_file_reader_free(r);
    free(buf);
    dq_context_free(ctx);
    dq_plan_free(lb);
    dq_qmatrix_free(qa);
    dq_qmatrix_free(ua);
    dq_plan_free(a);
    dq_plan_free(b);
}
END_TEST

/* Layers saved in the blocked layout (dq_file_writer_add_linear_layer) are bound the same way:
 * the writer checks the layer's plan against the plan prefix, the reader against the plan the
 * file names and the fingerprint recorded with the weights. */
START_TEST(blocked_layers_are_bound)
{
    dq_plan *a = make_plan(7, 1, DQ_PLAN_F_DEFAULT), *b = make_plan(8, 1, DQ_PLAN_F_DEFAULT);
    char ha[17], hb[17];
    hex(fp_of(a), ha);
    hex(fp_of(b), hb);
    float w[OUT * COLS];
    make_weights(w, 3);
    dq_qmatrix *qa = pack_bound(a, w);
    dq_linear *mem = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, a, qa, NULL, &mem), DQ_OK);

    log_sink s;
    dq_context *ctx = sink_ctx(&s);
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &fw), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.a", a), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "in.b", b), DQ_OK);
    /* A prefix the writer does not hold, another plan, no plan: refused, writer unchanged. */
    size_t before = 0, after = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &before), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "l.q", mem, "in.none"), DQ_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(s.text, "in.none"));
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "l.q", mem, "in.b"), DQ_ERR_MISMATCH);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "l.q", mem, NULL), DQ_ERR_MISMATCH);
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &after), DQ_OK);
    ck_assert_uint_eq(before, after);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "l.q", mem, "in.a"), DQ_OK);
    size_t size;
    uint8_t *buf = to_buffer(fw, &size);
    dq_file_writer_free(fw);
    dq_file_reader *r = open_buf(buf, size);

    dq_plan *la = NULL, *lb = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "in.a", &la), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "in.b", &lb), DQ_OK);
    memset(s.text, 0, sizeof s.text);
    dq_linear *lin = (dq_linear *)1;
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "l.q", lb, &lin), DQ_ERR_MISMATCH);
    ck_assert_ptr_null(lin);
    ck_assert_ptr_nonnull(strstr(s.text, ha));
    ck_assert_ptr_nonnull(strstr(s.text, hb));
    lin = (dq_linear *)1;
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "l.q", NULL, &lin), DQ_ERR_MISMATCH);
    ck_assert_ptr_null(lin);
    s.n_warn = s.n_error = 0;
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "l.q", la, &lin), DQ_OK);
    ck_assert_int_eq(s.n_warn + s.n_error, 0);
    float y1[T * OUT], y2[T * OUT];
    forward(lin, y1);
    forward(mem, y2);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(lin);
    dq_file_reader_free(r);
    free(buf);
    dq_context_free(ctx);
    dq_linear_free(mem);
    dq_qmatrix_free(qa);
    dq_plan_free(la);
    dq_plan_free(lb);
    dq_plan_free(a);
    dq_plan_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("binding");
    TCase *tc = tcase_create("binding");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fingerprint_follows_contents);
    tcase_add_test(tc, fingerprint_is_pinned);
    tcase_add_test(tc, packing_records_the_plan);
    tcase_add_test(tc, layer_refuses_another_plan);
    tcase_add_test(tc, unbound_weights_warn);
    tcase_add_test(tc, layer_keeps_its_plan);
    tcase_add_test(tc, shared_plan_across_threads);
    tcase_add_test(tc, writer_checks_the_plan);
    tcase_add_test(tc, reader_checks_the_plan);
    tcase_add_test(tc, blocked_layers_are_bound);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
