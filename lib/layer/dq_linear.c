/* Quantized linear layer: plan, per-token or per-group activation quantization, integer
 * product. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_internal.h"
#include "dq_linear.h"
#include "dq_online.h"
#include "dq_plan_binding.h"
#include "dq_qmatrix.h"

/* The first released layout ends after act_clip_ratio. */
#define LINEAR_PARAMS_MIN_SIZE (offsetof(dq_linear_params, act_clip_ratio) + sizeof(float))
/* Activation code rows start on cache-line boundaries, like the weight codes. */
#define CODE_ROW_ALIGN 64

struct dq_linear {
    uint64_t tag; /* DQ__TAG_LINEAR (dq_handle.h) */
    dq_context ctx;
    const dq_plan *plan; /* a reference of the layer's own; NULL = identity */
    const dq__online *online; /* the plan's compiled form (the plan keeps it); NULL: unfused */
    dq__wprep *w;
    float *bias;         /* NULL when none */
    int64_t in_features, out_features;
    int32_t act_bits;    /* 0 = weight-only */
    int32_t act_scheme;
    float act_clip;
    int32_t act_group;   /* act_group_size: 0 = per token */
    int64_t act_groups;  /* groups per token when act_group > 0, else 0 */
};
DQ__HANDLE_LAYOUT(struct dq_linear);

/* Byte offsets of the workspace parts, each DQ_ALIGN-aligned from an aligned base. */
typedef struct workspace_layout {
    size_t xt, plan_work, codes, scales, zeros, gemm, total;
    int64_t act_per_token; /* activation scales (and zero points) per token */
    size_t plan_bytes; /* unfused: the plan's workspace; fused: the tile buffers */
    int64_t code_ld;
} workspace_layout;

DQ_API dq_status dq_linear_params_init(dq_linear_params *p, size_t struct_size)
{
    const dq_linear_params defaults = {
        .struct_size = sizeof defaults,
        .act_bits = 4,
        .act_scheme = DQ_QUANT_ASYM,
        .act_clip_ratio = 1.0f,
    };
    return dq__params_init(p, struct_size, LINEAR_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_linear_params(const dq_context *ctx, const char *func,
                                    const dq_linear_params *user, dq_linear_params *p)
{
    dq_linear_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, func, "params", p, sizeof *p, LINEAR_PARAMS_MIN_SIZE,
                                      user);
    if (st != DQ_OK)
        return st;
    if (p->flags != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->flags 0x%x, expected 0",
                        (unsigned)p->flags);
    if (p->act_bits != 0 && p->act_bits != 4 && p->act_bits != 8)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->act_bits %d, expected 0, 4 or 8",
                        (int)p->act_bits);
    if (p->act_scheme != DQ_QUANT_ASYM && p->act_scheme != DQ_QUANT_SYM)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->act_scheme %d, expected DQ_QUANT_ASYM or DQ_QUANT_SYM",
                        (int)p->act_scheme);
    if (!(p->act_clip_ratio > 0.0f && p->act_clip_ratio <= 1.0f))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->act_clip_ratio %g, expected (0, 1]", (double)p->act_clip_ratio);
    if (p->act_group_size < 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->act_group_size %d, expected >= 0",
                        (int)p->act_group_size);
    if (p->act_group_size > 0 && p->act_bits == 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->act_group_size %d with act_bits 0 (float activations have no "
                        "groups)", (int)p->act_group_size);
    return DQ_OK;
}

/* The kernels pair each activation group with the weight group of the same columns: p's
 * groups must be the weights' (cols wide, in groups of group_size; 0 = whole rows). */
static dq_status check_act_groups(const dq_context *ctx, const char *func,
                                  const dq_linear_params *p, int64_t cols, int32_t group_size)
{
    if (p->act_group_size > cols)
        return dq__fail(ctx, DQ_ERR_SHAPE, func, "params->act_group_size %d > in_features %lld",
                        (int)p->act_group_size, (long long)cols);
    if (p->act_group_size > 0 && p->act_group_size != group_size)
        return dq__fail(ctx, DQ_ERR_SHAPE, func,
                        "params->act_group_size %d != the weights' group_size %d (activation "
                        "groups must be the weights' groups)",
                        (int)p->act_group_size, (int)group_size);
    return DQ_OK;
}

dq_status dq__linear_check(const dq_context *ctx, const char *func,
                           const dq_linear_params *params, const dq_qmatrix *weights,
                           const float *bias, dq_linear_params *p)
{
    if (!weights)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "weights is NULL");
    dq_status st = read_linear_params(ctx, func, params, p);
    if (st != DQ_OK ||
        (st = check_act_groups(ctx, func, p, weights->cols, weights->group_size)) != DQ_OK)
        return st;
    if (bias && !dq__all_finite(bias, 1, weights->rows, weights->rows))
        return dq__fail(ctx, DQ_ERR_NONFINITE, func, "bias (%lld floats) holds NaN or Inf",
                        (long long)weights->rows);
    return DQ_OK;
}

DQ_API dq_status dq_linear_create(dq_context *ctx, const dq_linear_params *params,
                                  const dq_plan *plan, const dq_qmatrix *weights,
                                  const float *bias, dq_linear **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, plan, DQ__H_PLAN, "plan", out);
    DQ_CHECK_HANDLE_OUT(ctx, weights, DQ__H_QMATRIX, "weights", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_linear_params p;
    dq_status st = dq__linear_check(ctx, __func__, params, weights, bias, &p);
    if (st != DQ_OK)
        return st;
    int64_t rows, cols;
    if ((st = dq_qmatrix_layout(weights, &rows, &cols, NULL, NULL, NULL, NULL, NULL)) != DQ_OK)
        return st;
    if (plan) {
        int64_t width;
        if ((st = dq_plan_width(plan, &width)) != DQ_OK)
            return st;
        if (width != cols)
            return DQ_FAIL(ctx, DQ_ERR_SHAPE, "plan width %lld != weights cols %lld",
                           (long long)width, (long long)cols);
    }
    /* The plan must be the one the weights were transformed by. */
    if ((st = dq__plan_check_binding(ctx, __func__, plan, weights->plan_fingerprint)) != DQ_OK)
        return st;

    const dq_context *c = dq__ctx(ctx);
    dq__wprep *w = NULL;
    if ((st = dq__wprep_create(c, weights, &w)) != DQ_OK)
        return st;
    return dq__linear_create_prepared(c, &p, plan, w, bias, out);
}

dq_status dq__linear_create_prepared(const dq_context *ctx, const dq_linear_params *p,
                                     const dq_plan *plan, dq__wprep *w, const float *bias,
                                     dq_linear **out)
{
    *out = NULL;
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_OK;
    const int64_t rows = w->rows, cols = w->cols;
    dq_linear *lin = dq__calloc(c, 1, sizeof *lin);
    if (!lin) {
        dq__wprep_free(w);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "layer");
    }
    dq__context_keep(&lin->ctx, c);
    lin->tag = DQ__TAG_LINEAR;
    lin->w = w;
    if (bias) {
        lin->bias = dq__alloc(c, (size_t)rows * sizeof(float));
        if (!lin->bias) {
            st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "bias of %lld floats", (long long)rows);
            goto fail;
        }
        memcpy(lin->bias, bias, (size_t)rows * sizeof(float));
    }
    lin->plan = dq__plan_retain(plan);
    /* Compiled once per plan: the layers on it and their forward calls share it. A width the
     * fused route cannot index keeps the unfused one. */
    if (plan && (st = dq__plan_online(plan, &lin->online)) != DQ_OK &&
        st != DQ_ERR_UNSUPPORTED)
        goto fail;
    lin->in_features = cols;
    lin->out_features = rows;
    lin->act_bits = p->act_bits;
    lin->act_scheme = p->act_scheme;
    lin->act_clip = p->act_clip_ratio;
    lin->act_group = p->act_group_size;
    lin->act_groups = p->act_group_size > 0 ? w->groups : 0;
    /* dq__linear_check compared the sizes; the prepared weights must agree. */
    if (p->act_group_size > 0 && w->group_len != p->act_group_size) {
        st = DQ_FAIL(ctx, DQ_ERR_SHAPE, "act_group_size %d != weight groups of %lld",
                     (int)p->act_group_size, (long long)w->group_len);
        goto fail;
    }
    *out = lin;
    return DQ_OK;
fail:
    dq_linear_free(lin);
    return st;
}

DQ_API dq_status dq_linear_create_like(dq_context *ctx, const dq_linear_params *params,
                                       const dq_linear *src, dq_linear **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, src, DQ__H_LINEAR, "src", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!src)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "src is NULL");
    dq_linear_params p;
    dq_status st = read_linear_params(ctx, __func__, params, &p);
    if (st != DQ_OK ||
        (st = check_act_groups(ctx, __func__, &p, src->in_features, src->w->group_size)) != DQ_OK)
        return st;
    return dq__linear_create_prepared(dq__ctx(ctx), &p, src->plan, dq__wprep_retain(src->w),
                                      src->bias, out);
}

const dq__wprep *dq__linear_weights(const dq_linear *lin)
{
    return lin->w;
}

const dq_plan *dq__linear_plan(const dq_linear *lin)
{
    return lin->plan;
}

void dq__linear_act(const dq_linear *lin, int32_t *act_bits, int32_t *act_scheme,
                    float *act_clip, int32_t *act_group)
{
    *act_bits = lin->act_bits;
    *act_scheme = lin->act_scheme;
    *act_clip = lin->act_clip;
    *act_group = lin->act_group;
}

const float *dq__linear_bias(const dq_linear *lin)
{
    return lin->bias;
}

DQ_API void dq_linear_free(dq_linear *lin)
{
    if (!lin)
        return;
    DQ_CHECK_HANDLE_FREE(lin, DQ__H_LINEAR, "lin");
    DQ_HANDLE_RETIRE(lin, DQ__H_LINEAR);
    dq_context c = lin->ctx;
    dq__wprep_free(lin->w);
    dq__plan_release(lin->plan); /* the layer's reference */
    dq__free(&c, lin->bias);
    dq__free(&c, lin);
    dq__context_drop(&c);
}

DQ_API dq_status dq_linear_layout(const dq_linear *lin, int64_t *in_features,
                                  int64_t *out_features)
{
    DQ_CHECK_HANDLE(NULL, lin, DQ__H_LINEAR, "lin");
    if (!lin)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "lin is NULL");
    if (in_features)
        *in_features = lin->in_features;
    if (out_features)
        *out_features = lin->out_features;
    return DQ_OK;
}

/* Appends a part of n elements of elem bytes at the next aligned offset. */
static bool add_part(size_t *cursor, size_t n, size_t elem, size_t *offset)
{
    size_t bytes, end;
    if (!dq__mul_size(n, elem, &bytes))
        return false;
    *offset = *cursor;
    if (!dq__add_size(*cursor, bytes, &end) || !dq__add_size(end, DQ_ALIGN - 1, &end))
        return false;
    *cursor = end / DQ_ALIGN * DQ_ALIGN;
    return true;
}

static bool fused(const dq_linear *lin, int32_t route)
{
    return lin->online && route == DQ__ROUTE_FUSED;
}

/* Errors are logged under the public function's name. */
#define FAIL_IN(func, ctx, st, ...) dq__fail((ctx), (st), (func), __VA_ARGS__)

/* The weight-only kernels sum x * (c - zw) over a group in float before scaling by the group's
 * scale: activations so large that such a sum could overflow (max |x| * group length * largest
 * |c - zw| beyond FLT_MAX / 2, i.e. |x| near 1e30 and more) would give an infinite y from
 * finite data. True when every sum fits. */
static bool w_f32_sums_fit(const dq__wprep *w, float amax)
{
    const dq__wpack *wp = w->kernel;
    const double code = (double)(w->bits == 4 ? 8 : 128) + (double)(wp ? wp->max_abs_zero : 1e4);
    return (double)amax * (double)w->group_len * code < (double)FLT_MAX / 2;
}

/* Layers that read one input run as a group when their activations come out the same: the
 * same plan (the same object), width and activation quantization. layers[0] decides. */
static dq_status check_group(const char *func, const dq_linear *const *layers, int32_t n)
{
    if (!layers)
        return FAIL_IN(func, NULL, DQ_ERR_INVALID_ARG, "layers is NULL");
    if (n < 1)
        return FAIL_IN(func, NULL, DQ_ERR_INVALID_ARG, "n_layers %d < 1", (int)n);
    if (!layers[0])
        return FAIL_IN(func, NULL, DQ_ERR_INVALID_ARG, "layers[0] is NULL");
    for (int32_t i = 0; i < n; i++)
        if (layers[i] && dq__handle_tag(layers[i]) != DQ__TAG_LINEAR) {
            char name[32];
            snprintf(name, sizeof name, "layers[%d]", (int)i);
            return dq__handle_fail(NULL, layers[i], DQ__H_LINEAR, func, name);
        }
    const dq_linear *l0 = layers[0];
    const dq_context *ctx = &l0->ctx;
    for (int32_t i = 1; i < n; i++) {
        const dq_linear *li = layers[i];
        if (!li)
            return FAIL_IN(func, ctx, DQ_ERR_INVALID_ARG, "layers[%d] is NULL", (int)i);
        if (li->in_features != l0->in_features)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: in_features %lld, layers[0] has %lld", (int)i,
                           (long long)li->in_features, (long long)l0->in_features);
        if (li->plan != l0->plan)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: plan %p is not layers[0]'s plan %p", (int)i,
                           (const void *)li->plan, (const void *)l0->plan);
        if (li->act_bits != l0->act_bits)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: act_bits %d, layers[0] has %d", (int)i,
                           (int)li->act_bits, (int)l0->act_bits);
        if (li->act_scheme != l0->act_scheme)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: act_scheme %d, layers[0] has %d", (int)i,
                           (int)li->act_scheme, (int)l0->act_scheme);
        if (li->act_clip != l0->act_clip)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: act_clip_ratio %.9g, layers[0] has %.9g", (int)i,
                           (double)li->act_clip, (double)l0->act_clip);
        if (li->act_group != l0->act_group)
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: act_group_size %d, layers[0] has %d", (int)i,
                           (int)li->act_group, (int)l0->act_group);
        /* One plan compiles the same way for every layer; checked all the same. */
        if ((li->online != NULL) != (l0->online != NULL))
            return FAIL_IN(func, ctx, DQ_ERR_MISMATCH,
                           "layers[%d]: fused transform %s, layers[0] %s", (int)i,
                           li->online ? "present" : "absent", l0->online ? "present" : "absent");
    }
    return DQ_OK;
}

/* Parts: the transformed activations (when a plan is applied and they are not quantized on
 * the fly), the plan's own workspace (or the fused route's tile buffers), the activation
 * codes, scales and zero points (when activations are quantized), and the integer product's
 * buffers (the largest any layer of the group needs: the products run one after another).
 * One DQ_ALIGN of slack lets an unaligned caller buffer be aligned up. 0 rows: nothing. */
static dq_status workspace_layout_of(const char *func, const dq_linear *const *layers, int32_t n,
                                     int32_t route, int64_t rows, workspace_layout *l)
{
    memset(l, 0, sizeof *l);
    const dq_linear *lin = layers[0];
    const dq_context *ctx = &lin->ctx;
    if (rows == 0)
        return DQ_OK;
    const int64_t cols = lin->in_features;
    size_t cursor = 0, elems;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &elems))
        goto overflow;
    if (fused(lin, route)) {
        if (!dq__online_workspace(lin->online, rows, &lin->ctx, &l->plan_bytes) ||
            ((lin->act_bits == 0 || lin->act_group > 0) &&
             !add_part(&cursor, elems, sizeof(float), &l->xt)) ||
            !add_part(&cursor, l->plan_bytes, 1, &l->plan_work))
            goto overflow;
    } else if (lin->plan) {
        dq_status st = dq_plan_workspace_size(lin->plan, rows, &l->plan_bytes);
        if (st != DQ_OK)
            return FAIL_IN(func, ctx, st, "plan workspace for %lld rows", (long long)rows);
        if (!add_part(&cursor, elems, sizeof(float), &l->xt) ||
            !add_part(&cursor, l->plan_bytes, 1, &l->plan_work))
            goto overflow;
    }
    if (lin->act_bits != 0) {
        l->code_ld = (cols + CODE_ROW_ALIGN - 1) / CODE_ROW_ALIGN * CODE_ROW_ALIGN;
        size_t ncodes, nscales, gemm = 0;
        l->act_per_token = lin->act_groups > 0 ? lin->act_groups : 1;
        if (l->code_ld < cols || !dq__mul_size((size_t)rows, (size_t)l->code_ld, &ncodes) ||
            !dq__mul_size((size_t)rows, (size_t)l->act_per_token, &nscales) ||
            !add_part(&cursor, ncodes, 1, &l->codes) ||
            !add_part(&cursor, nscales, sizeof(float), &l->scales) ||
            !add_part(&cursor, nscales, sizeof(int32_t), &l->zeros))
            goto overflow;
        for (int32_t i = 0; i < n; i++) {
            size_t b;
            if (!dq__gemm_w_a_workspace(layers[i]->w, rows, &b))
                goto overflow;
            gemm = b > gemm ? b : gemm;
        }
        if (gemm > 0 && !add_part(&cursor, gemm, 1, &l->gemm))
            goto overflow;
    }
    if (cursor > 0 && !dq__add_size(cursor, DQ_ALIGN, &l->total))
        goto overflow;
    return DQ_OK;
overflow:
    return FAIL_IN(func, ctx, DQ_ERR_OVERFLOW,
                   "workspace for %lld rows x %lld in_features overflows size_t",
                   (long long)rows, (long long)cols);
}

static dq_status workspace_size_of(const char *func, const dq_linear *const *layers, int32_t n,
                                   int32_t route, int64_t rows, size_t *bytes)
{
    const dq_context *ctx = &layers[0]->ctx;
    if (!bytes)
        return FAIL_IN(func, ctx, DQ_ERR_INVALID_ARG, "bytes is NULL");
    if (rows < 0)
        return FAIL_IN(func, ctx, DQ_ERR_SHAPE, "rows %lld < 0", (long long)rows);
    workspace_layout l;
    dq_status st = workspace_layout_of(func, layers, n, route, rows, &l);
    if (st != DQ_OK)
        return st;
    *bytes = l.total;
    return DQ_OK;
}

dq_status dq__linear_workspace_route(const dq_linear *lin, int32_t route, int64_t rows,
                                     size_t *bytes)
{
    if (!lin)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "lin is NULL");
    return workspace_size_of(__func__, &lin, 1, route, rows, bytes);
}

DQ_API dq_status dq_linear_workspace_size(const dq_linear *lin, int64_t rows, size_t *bytes)
{
    DQ_CHECK_HANDLE(NULL, lin, DQ__H_LINEAR, "lin");
    if (!lin)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "lin is NULL");
    return workspace_size_of(__func__, &lin, 1, DQ__ROUTE_FUSED, rows, bytes);
}

dq_status dq__linear_group_workspace_route(const dq_linear *const *layers, int32_t n_layers,
                                           int32_t route, int64_t rows, size_t *bytes)
{
    dq_status st = check_group(__func__, layers, n_layers);
    if (st != DQ_OK)
        return st;
    return workspace_size_of(__func__, layers, n_layers, route, rows, bytes);
}

DQ_API dq_status dq_linear_group_workspace_size(const dq_linear *const *layers, int32_t n_layers,
                                                int64_t rows, size_t *bytes)
{
    dq_status st = check_group(__func__, layers, n_layers);
    if (st != DQ_OK)
        return st;
    return workspace_size_of(__func__, layers, n_layers, DQ__ROUTE_FUSED, rows, bytes);
}

/* The forward of a checked group (check_group): the input is transformed and quantized once
 * through layers[0], then every layer's product reads the shared activations into its y[i].
 * Everything that can fail runs before any y[i] is written. With a workspace, nothing is
 * allocated; without one, the workspace is allocated once. */
static dq_status forward_group(const char *func, const dq_linear *const *layers, int32_t n,
                               int32_t route, const float *x, int64_t rows, int64_t cols,
                               int64_t ldx, float *const *y, const int64_t *ldy, void *work,
                               size_t work_size)
{
    const dq_linear *lin = layers[0];
    const dq_context *ctx = &lin->ctx;
    if (rows < 0)
        return FAIL_IN(func, ctx, DQ_ERR_SHAPE, "rows %lld < 0", (long long)rows);
    if (cols != lin->in_features)
        return FAIL_IN(func, ctx, DQ_ERR_SHAPE, "cols %lld != in_features %lld",
                       (long long)cols, (long long)lin->in_features);
    if (rows == 0)
        return DQ_OK; /* nothing to read or write */
    dq_status st = dq__check_matrix_at(ctx, func, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (!y || !ldy)
        return FAIL_IN(func, ctx, DQ_ERR_INVALID_ARG, "%s is NULL", !y ? "y" : "ldy");
    for (int32_t i = 0; i < n; i++) {
        const int64_t out = layers[i]->out_features;
        char name[24];
        snprintf(name, sizeof name, "y[%d]", (int)i);
        if ((st = dq__check_matrix_at(ctx, func, name, y[i], rows, out, ldy[i])) != DQ_OK)
            return st;
    }
    workspace_layout l;
    if ((st = workspace_layout_of(func, layers, n, route, rows, &l)) != DQ_OK)
        return st;
    if (work && work_size < l.total)
        return FAIL_IN(func, ctx, DQ_ERR_BUFFER, "work_size %zu < %zu bytes for %lld rows",
                       work_size, l.total, (long long)rows);
    if (!dq__all_finite(x, rows, cols, ldx))
        return FAIL_IN(func, ctx, DQ_ERR_NONFINITE, "x holds Inf or NaN");
    const bool on = fused(lin, route);
    if (on) {
        /* The same errors as the unfused route, whose products go through CBLAS. */
        size_t plan_work;
        if ((st = dq_plan_workspace_size(lin->plan, 1, &plan_work)) != DQ_OK)
            return FAIL_IN(func, ctx, st, "plan workspace");
        if (plan_work > 0 && ldx > INT_MAX)
            return FAIL_IN(func, ctx, DQ_ERR_BLAS, "ldx %lld exceeds CBLAS's int",
                           (long long)ldx);
    }

    void *owned = NULL;
    if (!work && l.total > 0) {
        owned = dq__alloc(ctx, l.total);
        if (!owned)
            return FAIL_IN(func, ctx, DQ_ERR_NOMEM, "workspace of %zu bytes for %lld rows",
                           l.total, (long long)rows);
        work = owned;
    }
    uint8_t *base = NULL;
    if (l.total > 0)
        base = (uint8_t *)(((uintptr_t)work + (DQ_ALIGN - 1)) & ~(uintptr_t)(DQ_ALIGN - 1));

    /* The shared activations: transformed floats, or codes. */
    const float *xin = x;
    int64_t ldin = ldx;
    const dq_context *threads = &lin->ctx; /* whose threads run the kernels */
    void *tiles = on && l.plan_bytes > 0 ? base + l.plan_work : NULL;
    /* Grouped activations: the fused route transforms, then quantizes per group below. */
    if (on && (lin->act_bits == 0 || lin->act_group > 0)) {
        float *xt = (float *)(void *)(base + l.xt);
        dq__online_transform(lin->online, x, rows, ldx, xt, cols, tiles, threads);
        if (!dq__all_finite(xt, rows, cols, cols)) {
            st = FAIL_IN(func, ctx, DQ_ERR_NONFINITE,
                         "the plan's transform of x (%lld x %lld) overflows", (long long)rows,
                         (long long)cols);
            goto out;
        }
        xin = xt;
        ldin = cols;
    } else if (lin->plan && !on) {
        float *xt = (float *)(void *)(base + l.xt);
        st = dq_plan_apply_act_to(lin->plan, x, rows, cols, ldx, xt, cols,
                                  l.plan_bytes > 0 ? base + l.plan_work : NULL, l.plan_bytes);
        if (st != DQ_OK) {
            FAIL_IN(func, ctx, st, "applying the plan to %lld rows", (long long)rows);
            goto out;
        }
        xin = xt;
        ldin = cols;
    }
    if (lin->act_bits == 0) {
        float amax = 0.0f;
        for (int64_t t = 0; t < rows; t++)
            for (int64_t j = 0; j < cols; j++)
                amax = fmaxf(amax, fabsf(xin[t * ldin + j]));
        for (int32_t i = 0; i < n; i++)
            if (!w_f32_sums_fit(layers[i]->w, amax)) {
                st = FAIL_IN(func, ctx, DQ_ERR_NONFINITE,
                             "layer %d: max |%s| %g times groups of %lld weight codes overflows "
                             "float in the weight-only product",
                             (int)i, on || lin->plan ? "x * G" : "x", (double)amax,
                             (long long)layers[i]->w->group_len);
                goto out;
            }
        for (int32_t i = 0; i < n; i++)
            dq__gemm_w_f32(layers[i]->w, xin, rows, ldin, layers[i]->bias, y[i], ldy[i],
                           &layers[i]->ctx);
    } else {
        uint8_t *codes = base + l.codes;
        float *scales = (float *)(void *)(base + l.scales);
        int32_t *zeros = (int32_t *)(void *)(base + l.zeros);
        if (lin->act_group > 0)
            dq__quantize_groups(xin, rows, cols, ldin, lin->act_group, lin->act_bits,
                                lin->act_scheme, lin->act_clip, codes, l.code_ld, scales, zeros,
                                threads);
        else if (on)
            dq__online_quantize(lin->online, x, rows, ldx, lin->act_bits, lin->act_scheme,
                                lin->act_clip, codes, l.code_ld, scales, zeros, tiles, threads);
        else
            dq__quantize_tokens(xin, rows, cols, ldin, lin->act_bits, lin->act_scheme,
                                lin->act_clip, codes, l.code_ld, scales, zeros, threads);
        /* The quantizer marks a token (or group) whose (transformed) values overflow, or whose
         * range max - min does, with a non-finite scale: checked on the scales. */
        for (int64_t i = 0; i < rows * l.act_per_token; i++)
            if (!isfinite(scales[i])) {
                st = FAIL_IN(func, ctx, DQ_ERR_NONFINITE,
                             "token %lld: %s overflows float (range max - min or values)",
                             (long long)(i / l.act_per_token),
                             on ? "the plan's transform of x" : "x");
                goto out;
            }
        const dq__aq a = {rows, cols, l.code_ld, codes, scales, zeros, lin->act_groups};
        for (int32_t i = 0; i < n; i++)
            dq__gemm_w_a_work(layers[i]->w, &a, layers[i]->bias, y[i], ldy[i],
                              &layers[i]->ctx, base + l.gemm);
    }
out:
    dq__free(ctx, owned);
    return st;
}

dq_status dq__linear_forward_route(const dq_linear *lin, int32_t route, const float *x,
                                   int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                   void *work, size_t work_size)
{
    if (!lin)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "lin is NULL");
    if (rows > 0 && !y)
        return DQ_FAIL(&lin->ctx, DQ_ERR_INVALID_ARG, "y is NULL");
    return forward_group(__func__, &lin, 1, route, x, rows, cols, ldx, &y, &ldy, work,
                         work_size);
}

DQ_API dq_status dq_linear_forward(const dq_linear *lin, const float *x, int64_t rows,
                                   int64_t cols, int64_t ldx, float *y, int64_t ldy, void *work,
                                   size_t work_size)
{
    DQ_CHECK_HANDLE(NULL, lin, DQ__H_LINEAR, "lin");
    if (!lin)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "lin is NULL");
    if (rows > 0 && !y)
        return DQ_FAIL(&lin->ctx, DQ_ERR_INVALID_ARG, "y is NULL");
    return forward_group(__func__, &lin, 1, DQ__ROUTE_FUSED, x, rows, cols, ldx, &y, &ldy, work,
                         work_size);
}

static dq_status forward_group_entry(const char *func, const dq_linear *const *layers,
                                     int32_t n_layers, int32_t route, const float *x,
                                     int64_t rows, int64_t cols, int64_t ldx, float *const *y,
                                     const int64_t *ldy, int32_t n_outputs, void *work,
                                     size_t work_size)
{
    dq_status st = check_group(func, layers, n_layers);
    if (st != DQ_OK)
        return st;
    if (n_outputs != n_layers)
        return FAIL_IN(func, &layers[0]->ctx, DQ_ERR_INVALID_ARG, "n_outputs %d != n_layers %d",
                       (int)n_outputs, (int)n_layers);
    return forward_group(func, layers, n_layers, route, x, rows, cols, ldx, y, ldy, work,
                         work_size);
}

dq_status dq__linear_forward_group_route(const dq_linear *const *layers, int32_t n_layers,
                                         int32_t route, const float *x, int64_t rows,
                                         int64_t cols, int64_t ldx, float *const *y,
                                         const int64_t *ldy, int32_t n_outputs, void *work,
                                         size_t work_size)
{
    return forward_group_entry(__func__, layers, n_layers, route, x, rows, cols, ldx, y, ldy,
                               n_outputs, work, work_size);
}

DQ_API dq_status dq_linear_forward_group(const dq_linear *const *layers, int32_t n_layers,
                                         const float *x, int64_t rows, int64_t cols, int64_t ldx,
                                         float *const *y, const int64_t *ldy, int32_t n_outputs,
                                         void *work, size_t work_size)
{
    return forward_group_entry(__func__, layers, n_layers, DQ__ROUTE_FUSED, x, rows, cols, ldx,
                               y, ldy, n_outputs, work, work_size);
}
