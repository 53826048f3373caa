/* Shared-input groups and the forward's workspace contract: a group gives the bits of separate
 * forwards on both routes; with a caller workspace no allocator call is made; without one, a
 * failed allocation is DQ_ERR_NOMEM with the outputs untouched; 0 rows is a no-op; layers that
 * cannot share their input are refused. Links the library's objects for the unfused route. */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_online.h"
#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

#define N_LAYERS 3
#define SENTINEL 0x5A5A5A5Au

/* Log messages at DQ_LOG_ERROR, the last one kept. */
typedef struct log_sink {
    int count;
    char last[512];
} log_sink;

static void sink_log(void *user, int32_t level, const char *msg)
{
    log_sink *s = user;
    if (level != DQ_LOG_ERROR)
        return;
    s->count++;
    snprintf(s->last, sizeof s->last, "%s", msg);
}

/* A context counting allocations through a (may be NULL: malloc) and logging into s. */
static dq_context *make_context(test_alloc *a, log_sink *s, int32_t threads)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    if (a) {
        p.alloc = test_alloc_fn;
        p.free = test_free_fn;
        p.alloc_user = a;
    }
    p.log = sink_log;
    p.log_user = s;
    p.log_level = DQ_LOG_ERROR;
    p.n_threads = threads;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

static dq_plan *make_plan(test_rng *r, int64_t cols)
{
    const int64_t rows = 48;
    float *sample = malloc((size_t)(rows * cols) * sizeof(float));
    float *w_absmax = malloc((size_t)cols * sizeof(float));
    test_fill_activations(r, sample, rows, cols, cols, 1);
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = (float)(0.05 + test_rng_uniform(r));
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = 32;
    pp.max_rotation_step = 6;
    dq_plan *plan = NULL;
    ck_assert_int_eq(
        dq_plan_build_from_sample(NULL, &pp, NULL, sample, rows, cols, cols, w_absmax, &plan),
        DQ_OK);
    free(sample);
    free(w_absmax);
    return plan;
}

typedef struct layer_spec {
    int64_t out;
    int32_t w_bits, w_group;
    int use_bias;
} layer_spec;

typedef struct act_spec {
    int32_t bits, scheme;
    float clip;
} act_spec;

static dq_linear *make_layer(dq_context *ctx, const dq_plan *plan, int64_t in, layer_spec ls,
                             act_spec as, uint64_t seed)
{
    test_rng r = {seed};
    float *w = malloc((size_t)(ls.out * in) * sizeof(float));
    for (int64_t i = 0; i < ls.out * in; i++)
        w[i] = (float)(0.05 * test_rng_normal(&r));
    if (plan)
        ck_assert_int_eq(dq_plan_transform_weight(plan, w, ls.out, in, in), DQ_OK);
    float *bias = NULL;
    if (ls.use_bias) {
        bias = malloc((size_t)ls.out * sizeof(float));
        for (int64_t o = 0; o < ls.out; o++)
            bias[o] = (float)test_rng_normal(&r);
    }
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.bits = ls.w_bits;
    qp.group_size = ls.w_group;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &qp, w, ls.out, in, in, NULL, NULL, &q), DQ_OK);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = as.bits;
    lp.act_scheme = as.scheme;
    lp.act_clip_ratio = as.clip;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, &lp, plan, q, bias, &lin), DQ_OK);
    dq_qmatrix_free(q);
    free(bias);
    free(w);
    return lin;
}

/* q, k, v-like: different widths, weight groups (whole rows and groups of whole kernel steps
 * read the codes in place; groups of 36 need the packed copy), bits and biases. */
static const layer_spec qkv[N_LAYERS] = {
    {48, 4, 0, 1},
    {16, 4, 36, 0},
    {33, 4, 64, 1},
};

typedef struct group {
    dq_plan *plan;
    dq_linear *layers[N_LAYERS];
    int64_t in;
} group;

static void group_init(group *g, dq_context *ctx, int use_plan, int64_t in, act_spec as,
                       int32_t w_bits, uint64_t seed)
{
    test_rng r = {seed};
    g->in = in;
    g->plan = use_plan ? make_plan(&r, in) : NULL;
    for (int i = 0; i < N_LAYERS; i++) {
        layer_spec ls = qkv[i];
        ls.w_bits = w_bits;
        g->layers[i] = make_layer(ctx, g->plan, in, ls, as, seed * 10 + (uint64_t)i);
    }
}

static void group_free(group *g)
{
    for (int i = 0; i < N_LAYERS; i++)
        dq_linear_free(g->layers[i]);
    dq_plan_free(g->plan);
}

/* Outputs of the group, each ldy = out + 3, filled with SENTINEL bytes. */
typedef struct outputs {
    float *y[N_LAYERS];
    int64_t ldy[N_LAYERS];
    size_t n[N_LAYERS];
} outputs;

static void outputs_init(outputs *o, int64_t rows)
{
    for (int i = 0; i < N_LAYERS; i++) {
        o->ldy[i] = qkv[i].out + 3;
        o->n[i] = (size_t)((rows > 0 ? rows : 1) * o->ldy[i]);
        o->y[i] = malloc(o->n[i] * sizeof(float));
        memset(o->y[i], 0x5A, o->n[i] * sizeof(float));
    }
}

static void outputs_free(outputs *o)
{
    for (int i = 0; i < N_LAYERS; i++)
        free(o->y[i]);
}

static void assert_untouched(const outputs *o)
{
    for (int i = 0; i < N_LAYERS; i++)
        for (size_t k = 0; k < o->n[i]; k++) {
            uint32_t bits;
            memcpy(&bits, &o->y[i][k], sizeof bits);
            ck_assert_uint_eq(bits, SENTINEL);
        }
}

static void assert_same(const outputs *a, const outputs *b, int64_t rows, const char *what)
{
    for (int i = 0; i < N_LAYERS; i++)
        for (int64_t t = 0; t < rows; t++)
            ck_assert_msg(memcmp(a->y[i] + t * a->ldy[i], b->y[i] + t * b->ldy[i],
                                 (size_t)qkv[i].out * sizeof(float)) == 0,
                          "%s: layer %d row %lld differs", what, i, (long long)t);
}

static float *make_input(int64_t rows, int64_t in, int64_t ldx, uint64_t seed)
{
    test_rng r = {seed};
    float *x = malloc((size_t)((rows > 0 ? rows : 1) * ldx) * sizeof(float));
    test_fill_activations(&r, x, rows, in, ldx, 1);
    return x;
}

static const dq_linear *const *view(const group *g)
{
    return (const dq_linear *const *)g->layers;
}

/* The group through a route, with and without a (misaligned) workspace, equals three
 * separate forwards through the same route, bit for bit. */
static void check_group_matches(const group *g, int32_t route, int64_t rows, const char *what)
{
    const int64_t in = g->in, ldx = in + 5;
    float *x = make_input(rows, in, ldx, 4000 + (uint64_t)rows);
    outputs sep, grp, grp_nows;
    outputs_init(&sep, rows);
    outputs_init(&grp, rows);
    outputs_init(&grp_nows, rows);
    size_t ws = 0, ws_max = 0;
    for (int i = 0; i < N_LAYERS; i++) {
        ck_assert_int_eq(dq__linear_workspace_route(g->layers[i], route, rows, &ws), DQ_OK);
        ws_max = ws > ws_max ? ws : ws_max;
    }
    unsigned char *work = malloc(ws_max + 1);
    for (int i = 0; i < N_LAYERS; i++) {
        ck_assert_int_eq(dq__linear_workspace_route(g->layers[i], route, rows, &ws), DQ_OK);
        ck_assert_int_eq(dq__linear_forward_route(g->layers[i], route, x, rows, in, ldx,
                                                  sep.y[i], sep.ldy[i], work + 1, ws),
                         DQ_OK);
    }
    size_t gws = 0;
    ck_assert_int_eq(dq__linear_group_workspace_route(view(g), N_LAYERS, route, rows, &gws),
                     DQ_OK);
    /* One shared input and the largest product buffer: never more than the separate calls
     * together need. */
    ck_assert_uint_le(gws, 3 * ws_max);
    unsigned char *gwork = malloc(gws + 1);
    ck_assert_int_eq(dq__linear_forward_group_route(view(g), N_LAYERS, route, x, rows, in, ldx,
                                                    grp.y, grp.ldy, N_LAYERS, gwork + 1, gws),
                     DQ_OK);
    assert_same(&grp, &sep, rows, what);
    ck_assert_int_eq(dq__linear_forward_group_route(view(g), N_LAYERS, route, x, rows, in, ldx,
                                                    grp_nows.y, grp_nows.ldy, N_LAYERS, NULL, 0),
                     DQ_OK);
    assert_same(&grp_nows, &sep, rows, what);
    if (route == DQ__ROUTE_FUSED) {
        /* What the public calls run. */
        outputs pub;
        outputs_init(&pub, rows);
        size_t pws = 0;
        ck_assert_int_eq(dq_linear_group_workspace_size(view(g), N_LAYERS, rows, &pws), DQ_OK);
        ck_assert_uint_eq(pws, gws);
        ck_assert_int_eq(dq_linear_forward_group(view(g), N_LAYERS, x, rows, in, ldx, pub.y,
                                                 pub.ldy, N_LAYERS, gwork, gws),
                         DQ_OK);
        assert_same(&pub, &sep, rows, what);
        for (int i = 0; i < N_LAYERS; i++)
            ck_assert_int_eq(dq_linear_forward(g->layers[i], x, rows, in, ldx, pub.y[i],
                                               pub.ldy[i], NULL, 0),
                             DQ_OK);
        assert_same(&pub, &sep, rows, what);
        outputs_free(&pub);
    }
    free(gwork);
    free(work);
    outputs_free(&sep);
    outputs_free(&grp);
    outputs_free(&grp_nows);
    free(x);
}

START_TEST(group_matches_separate_forwards)
{
    const act_spec acts[] = {
        {4, DQ_QUANT_ASYM, 1.0f},
        {8, DQ_QUANT_SYM, 0.9f},
        {0, DQ_QUANT_ASYM, 1.0f},
    };
    const int64_t rows[] = {1, 7, 37, 131};
    uint64_t seed = 10;
    for (int use_plan = 0; use_plan < 2; use_plan++)
        for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++)
            for (int32_t w_bits = 4; w_bits <= 8; w_bits += 4) {
                if (w_bits == 8 && acts[a].bits == 0)
                    continue;
                group g;
                group_init(&g, NULL, use_plan, 200, acts[a], w_bits, seed++);
                for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++)
                    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
                        char what[96];
                        snprintf(what, sizeof what, "plan %d a%d w%d route %d rows %lld",
                                 use_plan, acts[a].bits, w_bits, route, (long long)rows[r]);
                        check_group_matches(&g, route, rows[r], what);
                    }
                group_free(&g);
            }
}
END_TEST

/* A width the kernels cannot read in place (172 is not a multiple of 8), a group of one and
 * the same layer twice. */
START_TEST(group_odd_shapes)
{
    group g;
    group_init(&g, NULL, 1, 172, (act_spec){4, DQ_QUANT_ASYM, 1.0f}, 4, 77);
    for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++) {
        check_group_matches(&g, route, 1, "172 rows 1");
        check_group_matches(&g, route, 19, "172 rows 19");
    }
    const int64_t rows = 9, in = 172;
    float *x = make_input(rows, in, in, 5);
    outputs a, b;
    outputs_init(&a, rows);
    outputs_init(&b, rows);
    ck_assert_int_eq(dq_linear_forward(g.layers[0], x, rows, in, in, a.y[0], a.ldy[0], NULL, 0),
                     DQ_OK);
    ck_assert_int_eq(dq_linear_forward_group(view(&g), 1, x, rows, in, in, b.y, b.ldy, 1, NULL, 0),
                     DQ_OK);
    for (int64_t t = 0; t < rows; t++)
        ck_assert(memcmp(a.y[0] + t * a.ldy[0], b.y[0] + t * b.ldy[0],
                         (size_t)qkv[0].out * sizeof(float)) == 0);
    const dq_linear *twice[2] = {g.layers[0], g.layers[0]};
    float *y2[2] = {b.y[0], calloc(b.n[0], sizeof(float))};
    const int64_t ld2[2] = {b.ldy[0], b.ldy[0]};
    memset(b.y[0], 0, b.n[0] * sizeof(float));
    ck_assert_int_eq(dq_linear_forward_group(twice, 2, x, rows, in, in, y2, ld2, 2, NULL, 0),
                     DQ_OK);
    for (int64_t t = 0; t < rows; t++) {
        ck_assert(memcmp(a.y[0] + t * a.ldy[0], y2[0] + t * ld2[0],
                         (size_t)qkv[0].out * sizeof(float)) == 0);
        ck_assert(memcmp(a.y[0] + t * a.ldy[0], y2[1] + t * ld2[1],
                         (size_t)qkv[0].out * sizeof(float)) == 0);
    }
    free(y2[1]);
    outputs_free(&a);
    outputs_free(&b);
    free(x);
    group_free(&g);
}
END_TEST

/* With a caller workspace, forward (single or group, either route) makes no allocator call:
 * W4A4 with a plan, W4A16 and W8A8, for several row counts, a workspace sized once for the
 * largest. */
START_TEST(workspace_means_no_allocation)
{
    const struct {
        act_spec a;
        int32_t w_bits;
        int use_plan;
    } cases[] = {
        {{4, DQ_QUANT_ASYM, 1.0f}, 4, 1},
        {{0, DQ_QUANT_ASYM, 1.0f}, 4, 1},
        {{8, DQ_QUANT_ASYM, 1.0f}, 8, 1},
        {{4, DQ_QUANT_SYM, 1.0f}, 4, 0},
    };
    const int64_t rows[] = {131, 1, 8, 37, 64};
    const int32_t threads[] = {1, 2};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t th = 0; th < 2; th++) {
            test_alloc al = {0, 0, 0};
            log_sink sink = {0, ""};
            dq_context *ctx = make_context(&al, &sink, threads[th]);
            group g;
            group_init(&g, ctx, cases[c].use_plan, 200, cases[c].a, cases[c].w_bits,
                       300 + (uint64_t)c);
            const int64_t in = 200, max_rows = rows[0];
            float *x = make_input(max_rows, in, in, 8);
            outputs o;
            outputs_init(&o, max_rows);
            size_t ws = 0, w1;
            for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++) {
                ck_assert_int_eq(
                    dq__linear_group_workspace_route(view(&g), N_LAYERS, route, max_rows, &w1),
                    DQ_OK);
                ws = w1 > ws ? w1 : ws;
                for (int i = 0; i < N_LAYERS; i++) {
                    ck_assert_int_eq(
                        dq__linear_workspace_route(g.layers[i], route, max_rows, &w1), DQ_OK);
                    ws = w1 > ws ? w1 : ws;
                }
            }
            void *work = malloc(ws);
            for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
                for (int32_t route = DQ__ROUTE_FUSED; route <= DQ__ROUTE_UNFUSED; route++) {
                    const long before = al.total;
                    for (int i = 0; i < N_LAYERS; i++) {
                        if (route == DQ__ROUTE_FUSED)
                            ck_assert_int_eq(dq_linear_forward(g.layers[i], x, rows[r], in, in,
                                                               o.y[i], o.ldy[i], work, ws),
                                             DQ_OK);
                        ck_assert_int_eq(dq__linear_forward_route(g.layers[i], route, x, rows[r],
                                                                  in, in, o.y[i], o.ldy[i], work,
                                                                  ws),
                                         DQ_OK);
                    }
                    if (route == DQ__ROUTE_FUSED)
                        ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, rows[r],
                                                                 in, in, o.y, o.ldy, N_LAYERS,
                                                                 work, ws),
                                         DQ_OK);
                    ck_assert_int_eq(dq__linear_forward_group_route(view(&g), N_LAYERS, route, x,
                                                                    rows[r], in, in, o.y, o.ldy,
                                                                    N_LAYERS, work, ws),
                                     DQ_OK);
                    ck_assert_msg(al.total == before,
                                  "case %zu threads %d rows %lld route %d: %ld allocations", c,
                                  threads[th], (long long)rows[r], route, al.total - before);
                }
            /* Without a workspace: one allocation per call, returned before it ends. */
            const long before = al.total, live = al.live;
            ck_assert_int_eq(dq_linear_forward(g.layers[0], x, 37, in, in, o.y[0], o.ldy[0], NULL,
                                               0),
                             DQ_OK);
            ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, 37, in, in, o.y,
                                                     o.ldy, N_LAYERS, NULL, 0),
                             DQ_OK);
            ck_assert_int_eq(al.total - before, 2);
            ck_assert_int_eq(al.live, live);
            ck_assert_int_eq(sink.count, 0);
            free(work);
            outputs_free(&o);
            free(x);
            group_free(&g);
            dq_context_free(ctx);
            ck_assert_int_eq(al.live, 0);
        }
}
END_TEST

/* Without a workspace, an allocator that refuses the call's allocation gives DQ_ERR_NOMEM,
 * logged under the call's name, with every output untouched, on every configuration (the
 * integer product no longer falls back to the portable kernel). */
START_TEST(failed_allocation_is_nomem)
{
    const act_spec acts[] = {{4, DQ_QUANT_ASYM, 1.0f}, {0, DQ_QUANT_ASYM, 1.0f},
                             {8, DQ_QUANT_ASYM, 1.0f}};
    for (size_t a = 0; a < 3; a++)
        for (int use_plan = 0; use_plan < 2; use_plan++) {
            if (acts[a].bits == 0 && !use_plan)
                continue; /* needs no workspace at all */
            test_alloc al = {0, 0, 0};
            log_sink sink = {0, ""};
            dq_context *ctx = make_context(&al, &sink, 2);
            group g;
            group_init(&g, ctx, use_plan, 200, acts[a], acts[a].bits == 8 ? 8 : 4,
                       500 + (uint64_t)a);
            const int64_t rows = 41, in = 200;
            float *x = make_input(rows, in, in, 9);
            outputs o;
            outputs_init(&o, rows);
            al.fail_at = al.total + 1;
            ck_assert_int_eq(dq_linear_forward(g.layers[1], x, rows, in, in, o.y[1], o.ldy[1],
                                               NULL, 0),
                             DQ_ERR_NOMEM);
            ck_assert_int_eq(sink.count, 1);
            ck_assert_ptr_nonnull(strstr(sink.last, "dq_linear_forward"));
            ck_assert_ptr_nonnull(strstr(sink.last, "DQ_ERR_NOMEM"));
            al.fail_at = al.total + 1;
            ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, rows, in, in, o.y,
                                                     o.ldy, N_LAYERS, NULL, 0),
                             DQ_ERR_NOMEM);
            ck_assert_int_eq(sink.count, 2);
            ck_assert_ptr_nonnull(strstr(sink.last, "dq_linear_forward_group"));
            assert_untouched(&o);
            /* The allocator works again: so does the call. */
            al.fail_at = 0;
            ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, rows, in, in, o.y,
                                                     o.ldy, N_LAYERS, NULL, 0),
                             DQ_OK);
            outputs_free(&o);
            free(x);
            group_free(&g);
            dq_context_free(ctx);
            ck_assert_int_eq(al.live, 0);
        }
}
END_TEST

/* 0 rows: DQ_OK, nothing read or written, nothing allocated; x and y may be NULL. */
START_TEST(zero_rows_is_a_noop)
{
    test_alloc al = {0, 0, 0};
    log_sink sink = {0, ""};
    dq_context *ctx = make_context(&al, &sink, 0);
    group g;
    group_init(&g, ctx, 1, 200, (act_spec){4, DQ_QUANT_ASYM, 1.0f}, 4, 21);
    const int64_t in = 200;
    float x[4] = {NAN, NAN, NAN, NAN}; /* never read */
    outputs o;
    outputs_init(&o, 0);
    const long before = al.total;
    size_t ws = 99;
    ck_assert_int_eq(dq_linear_workspace_size(g.layers[0], 0, &ws), DQ_OK);
    ck_assert_uint_eq(ws, 0);
    ws = 99;
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, 0, &ws), DQ_OK);
    ck_assert_uint_eq(ws, 0);
    ck_assert_int_eq(dq_linear_forward(g.layers[0], NULL, 0, in, in, NULL, 48, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(g.layers[0], x, 0, in, in, o.y[0], o.ldy[0], NULL, 0),
                     DQ_OK);
    ck_assert_int_eq(dq__linear_forward_route(g.layers[0], DQ__ROUTE_UNFUSED, NULL, 0, in, in,
                                              NULL, 48, NULL, 0),
                     DQ_OK);
    ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, NULL, 0, in, in, NULL, NULL,
                                             N_LAYERS, NULL, 0),
                     DQ_OK);
    ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, 0, in, in, o.y, o.ldy,
                                             N_LAYERS, NULL, 0),
                     DQ_OK);
    ck_assert_int_eq(al.total, before);
    ck_assert_int_eq(sink.count, 0);
    assert_untouched(&o);
    /* Still checked: the layers, the width and the sign of rows. */
    ck_assert_int_eq(dq_linear_forward(NULL, NULL, 0, in, in, NULL, 48, NULL, 0),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_forward(g.layers[0], NULL, 0, in + 1, in, NULL, 48, NULL, 0),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_linear_forward(g.layers[0], x, -1, in, in, o.y[0], o.ldy[0], NULL, 0),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, -1, in, in, o.y, o.ldy,
                                             N_LAYERS, NULL, 0),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, -1, &ws), DQ_ERR_SHAPE);
    assert_untouched(&o);
    outputs_free(&o);
    group_free(&g);
    dq_context_free(ctx);
}
END_TEST

/* One group call that must fail with want, log once, and leave every output untouched. */
static void expect_group_error(log_sink *sink, const dq_linear *const *layers, int32_t n,
                               const float *x, int64_t rows, int64_t in, int64_t ldx,
                               outputs *o, const int64_t *ldy, int32_t n_out, void *work,
                               size_t ws, dq_status want, const char *needle)
{
    const int count = sink->count;
    ck_assert_int_eq(
        dq_linear_forward_group(layers, n, x, rows, in, ldx, o->y, ldy, n_out, work, ws), want);
    ck_assert_int_eq(sink->count, count + 1);
    ck_assert_msg(strstr(sink->last, needle) != NULL, "log '%s' lacks '%s'", sink->last, needle);
    assert_untouched(o);
}

START_TEST(layers_that_cannot_share_are_refused)
{
    log_sink sink = {0, ""};
    dq_context *ctx = make_context(NULL, &sink, 0);
    const act_spec a4 = {4, DQ_QUANT_ASYM, 1.0f};
    group g;
    group_init(&g, ctx, 1, 200, a4, 4, 31);
    test_rng r = {32};
    dq_plan *other_plan = make_plan(&r, 200);
    struct {
        const dq_plan *plan;
        int64_t in;
        act_spec a;
        const char *field;
    } bad[] = {
        {NULL, 200, a4, "plan"},
        {NULL, 256, a4, "in_features"},
        {NULL, 200, {8, DQ_QUANT_ASYM, 1.0f}, "act_bits"},
        {NULL, 200, {0, DQ_QUANT_ASYM, 1.0f}, "act_bits"},
        {NULL, 200, {4, DQ_QUANT_SYM, 1.0f}, "act_scheme"},
        {NULL, 200, {4, DQ_QUANT_ASYM, 0.9f}, "act_clip_ratio"},
    };
    bad[0].plan = other_plan;
    for (size_t k = 1; k < sizeof bad / sizeof bad[0]; k++)
        bad[k].plan = bad[k].in == 200 ? g.plan : NULL;
    const int64_t rows = 5, in = 200;
    float *x = make_input(rows, in, in, 3);
    outputs o;
    outputs_init(&o, rows);
    size_t ws = 0;
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, rows, &ws), DQ_OK);
    void *work = malloc(ws);
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        dq_linear *odd = make_layer(ctx, bad[k].plan, bad[k].in, qkv[2], bad[k].a, 40);
        const dq_linear *layers[N_LAYERS] = {g.layers[0], g.layers[1], odd};
        char needle[64];
        snprintf(needle, sizeof needle, "layers[2]: %s", bad[k].field);
        expect_group_error(&sink, layers, N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS, work,
                           ws, DQ_ERR_MISMATCH, needle);
        expect_group_error(&sink, layers, N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS, NULL,
                           0, DQ_ERR_MISMATCH, needle);
        ck_assert_int_eq(dq_linear_group_workspace_size(layers, N_LAYERS, rows, &ws),
                         DQ_ERR_MISMATCH);
        ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, rows, &ws), DQ_OK);
        dq_linear_free(odd);
    }
    /* A layer without a plan next to one with a plan, the other way round. */
    dq_linear *plain = make_layer(ctx, NULL, in, qkv[0], a4, 41);
    const dq_linear *mixed[2] = {plain, g.layers[1]};
    expect_group_error(&sink, mixed, 2, x, rows, in, in, &o, o.ldy, 2, NULL, 0, DQ_ERR_MISMATCH,
                       "layers[1]: plan");
    dq_linear_free(plain);

    /* Arguments. */
    const dq_linear *with_null[N_LAYERS] = {g.layers[0], NULL, g.layers[2]};
    /* No layer to log through: the default context's silence. */
    ck_assert_int_eq(dq_linear_forward_group(NULL, N_LAYERS, x, rows, in, in, o.y, o.ldy,
                                             N_LAYERS, NULL, 0),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(
        dq_linear_forward_group(view(&g), 0, x, rows, in, in, o.y, o.ldy, 0, NULL, 0),
        DQ_ERR_INVALID_ARG);
    assert_untouched(&o);
    expect_group_error(&sink, with_null, N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS, NULL, 0,
                       DQ_ERR_INVALID_ARG, "layers[1]");
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS - 1, NULL,
                       0, DQ_ERR_INVALID_ARG, "n_outputs");
    expect_group_error(&sink, view(&g), N_LAYERS, NULL, rows, in, in, &o, o.ldy, N_LAYERS, NULL,
                       0, DQ_ERR_INVALID_ARG, "x: ptr is NULL");
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in, in, &o, NULL, N_LAYERS, NULL, 0,
                       DQ_ERR_INVALID_ARG, "ldy");
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in + 1, in + 1, &o, o.ldy, N_LAYERS,
                       NULL, 0, DQ_ERR_SHAPE, "in_features");
    int64_t short_ld[N_LAYERS] = {o.ldy[0], o.ldy[1], qkv[2].out - 1};
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in, in, &o, short_ld, N_LAYERS, NULL,
                       0, DQ_ERR_SHAPE, "y[2]");
    float *saved = o.y[1];
    o.y[1] = NULL;
    const int count = sink.count;
    ck_assert_int_eq(dq_linear_forward_group(view(&g), N_LAYERS, x, rows, in, in, o.y, o.ldy,
                                             N_LAYERS, NULL, 0),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(sink.count, count + 1);
    ck_assert_ptr_nonnull(strstr(sink.last, "y[1]"));
    o.y[1] = saved;
    assert_untouched(&o);
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, rows, &ws), DQ_OK);
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS, work,
                       ws - 1, DQ_ERR_BUFFER, "work_size");
    x[3 * in + 7] = NAN;
    expect_group_error(&sink, view(&g), N_LAYERS, x, rows, in, in, &o, o.ldy, N_LAYERS, work, ws,
                       DQ_ERR_NONFINITE, "Inf or NaN");
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, rows, NULL),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_group_workspace_size(NULL, N_LAYERS, rows, &ws),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_linear_group_workspace_size(view(&g), N_LAYERS, INT64_MAX, &ws),
                     DQ_ERR_OVERFLOW);
    free(work);
    outputs_free(&o);
    free(x);
    dq_plan_free(other_plan);
    group_free(&g);
    dq_context_free(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linear_group");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, group_matches_separate_forwards);
    tcase_add_test(tc, group_odd_shapes);
    tcase_add_test(tc, workspace_means_no_allocation);
    tcase_add_test(tc, failed_allocation_is_nomem);
    tcase_add_test(tc, zero_rows_is_a_noop);
    tcase_add_test(tc, layers_that_cannot_share_are_refused);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
