/* Quantized linear layer: plan, per-token activation quantization, integer product. */
#include <limits.h>
#include <string.h>

#include "dq_gemm.h"
#include "dq_internal.h"
#include "dq_online.h"

/* The first released layout ends after act_clip_ratio. */
#define LINEAR_PARAMS_MIN_SIZE (offsetof(dq_linear_params, act_clip_ratio) + sizeof(float))
/* Activation code rows start on cache-line boundaries, like the weight codes. */
#define CODE_ROW_ALIGN 64

struct dq_linear {
    dq_context ctx;
    const dq_plan *plan; /* borrowed; NULL = identity */
    dq__online *online;  /* the plan compiled for the fused route; NULL: unfused */
    dq__wprep *w;
    float *bias;         /* NULL when none */
    int64_t in_features, out_features;
    int32_t act_bits;    /* 0 = weight-only */
    int32_t act_scheme;
    float act_clip;
};

/* Byte offsets of the workspace parts, each DQ_ALIGN-aligned from an aligned base. */
typedef struct workspace_layout {
    size_t xt, plan_work, codes, scales, zeros, total;
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

static dq_status read_linear_params(const dq_linear_params *user, dq_linear_params *p)
{
    dq_linear_params_init(p, sizeof *p);
    dq_status st = dq__params_read(p, sizeof *p, LINEAR_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if (p->flags != 0 || (p->act_bits != 0 && p->act_bits != 4 && p->act_bits != 8) ||
        (p->act_scheme != DQ_QUANT_ASYM && p->act_scheme != DQ_QUANT_SYM) ||
        !(p->act_clip_ratio > 0.0f && p->act_clip_ratio <= 1.0f))
        return DQ_ERR_INVALID_ARG;
    return DQ_OK;
}

DQ_API dq_status dq_linear_create(dq_context *ctx, const dq_linear_params *params,
                                  const dq_plan *plan, const dq_qmatrix *weights,
                                  const float *bias, dq_linear **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    if (!weights)
        return DQ_ERR_INVALID_ARG;
    dq_linear_params p;
    dq_status st = read_linear_params(params, &p);
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
            return DQ_ERR_SHAPE;
    }
    if (bias && !dq__all_finite(bias, 1, rows, rows))
        return DQ_ERR_NONFINITE;

    const dq_context *c = dq__ctx(ctx);
    dq_linear *lin = dq__calloc(c, 1, sizeof *lin);
    if (!lin)
        return DQ_ERR_NOMEM;
    lin->ctx = *c;
    if ((st = dq__wprep_create(c, weights, &lin->w)) != DQ_OK)
        goto fail;
    if (bias) {
        lin->bias = dq__alloc(c, (size_t)rows * sizeof(float));
        if (!lin->bias) {
            st = DQ_ERR_NOMEM;
            goto fail;
        }
        memcpy(lin->bias, bias, (size_t)rows * sizeof(float));
    }
    lin->plan = plan;
    /* Compiled once here: forward calls share it and the plan stays untouched. A width the
     * fused route cannot index keeps the unfused one. */
    if (plan && (st = dq__online_create(c, plan, &lin->online)) != DQ_OK &&
        st != DQ_ERR_UNSUPPORTED)
        goto fail;
    lin->in_features = cols;
    lin->out_features = rows;
    lin->act_bits = p.act_bits;
    lin->act_scheme = p.act_scheme;
    lin->act_clip = p.act_clip_ratio;
    *out = lin;
    return DQ_OK;
fail:
    dq_linear_free(lin);
    return st;
}

DQ_API void dq_linear_free(dq_linear *lin)
{
    if (!lin)
        return;
    dq_context c = lin->ctx;
    dq__wprep_free(lin->w);
    dq__online_free(lin->online);
    dq__free(&c, lin->bias);
    dq__free(&c, lin);
}

DQ_API dq_status dq_linear_layout(const dq_linear *lin, int64_t *in_features,
                                  int64_t *out_features)
{
    if (!lin)
        return DQ_ERR_INVALID_ARG;
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

/* Parts: the transformed activations (when a plan is applied and they are not quantized on
 * the fly), the plan's own workspace (or the fused route's tile buffers), and the activation
 * codes, scales and zero points (when activations are quantized). One DQ_ALIGN of slack lets
 * an unaligned caller buffer be aligned up. */
static dq_status workspace_layout_of(const dq_linear *lin, int32_t route, int64_t rows,
                                     workspace_layout *l)
{
    memset(l, 0, sizeof *l);
    const int64_t cols = lin->in_features;
    size_t cursor = 0, elems;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &elems))
        return DQ_ERR_OVERFLOW;
    if (fused(lin, route)) {
        if (!dq__online_workspace(lin->online, rows, lin->ctx.n_threads, &l->plan_bytes) ||
            (lin->act_bits == 0 && !add_part(&cursor, elems, sizeof(float), &l->xt)) ||
            !add_part(&cursor, l->plan_bytes, 1, &l->plan_work))
            return DQ_ERR_OVERFLOW;
    } else if (lin->plan) {
        dq_status st = dq_plan_workspace_size(lin->plan, rows, &l->plan_bytes);
        if (st != DQ_OK)
            return st;
        if (!add_part(&cursor, elems, sizeof(float), &l->xt) ||
            !add_part(&cursor, l->plan_bytes, 1, &l->plan_work))
            return DQ_ERR_OVERFLOW;
    }
    if (lin->act_bits != 0) {
        l->code_ld = (cols + CODE_ROW_ALIGN - 1) / CODE_ROW_ALIGN * CODE_ROW_ALIGN;
        size_t ncodes;
        if (l->code_ld < cols || !dq__mul_size((size_t)rows, (size_t)l->code_ld, &ncodes) ||
            !add_part(&cursor, ncodes, 1, &l->codes) ||
            !add_part(&cursor, (size_t)rows, sizeof(float), &l->scales) ||
            !add_part(&cursor, (size_t)rows, sizeof(int32_t), &l->zeros))
            return DQ_ERR_OVERFLOW;
    }
    if (cursor > 0 && !dq__add_size(cursor, DQ_ALIGN, &l->total))
        return DQ_ERR_OVERFLOW;
    return DQ_OK;
}

dq_status dq__linear_workspace_route(const dq_linear *lin, int32_t route, int64_t rows,
                                     size_t *bytes)
{
    if (!lin || !bytes)
        return DQ_ERR_INVALID_ARG;
    if (rows <= 0)
        return DQ_ERR_SHAPE;
    workspace_layout l;
    dq_status st = workspace_layout_of(lin, route, rows, &l);
    if (st != DQ_OK)
        return st;
    *bytes = l.total;
    return DQ_OK;
}

DQ_API dq_status dq_linear_workspace_size(const dq_linear *lin, int64_t rows, size_t *bytes)
{
    return dq__linear_workspace_route(lin, DQ__ROUTE_FUSED, rows, bytes);
}

dq_status dq__linear_forward_route(const dq_linear *lin, int32_t route, const float *x,
                                   int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                   void *work, size_t work_size)
{
    if (!lin || !x || !y)
        return DQ_ERR_INVALID_ARG;
    dq_status st = dq__check_matrix(&lin->ctx, "x", x, rows, cols, ldx);
    if (st == DQ_OK)
        st = dq__check_matrix(&lin->ctx, "y", y, rows, lin->out_features, ldy);
    if (st != DQ_OK)
        return st;
    if (cols != lin->in_features)
        return DQ_ERR_SHAPE;
    workspace_layout l;
    if ((st = workspace_layout_of(lin, route, rows, &l)) != DQ_OK)
        return st;
    if (work && work_size < l.total)
        return DQ_ERR_BUFFER;
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_ERR_NONFINITE;
    const bool on = fused(lin, route);
    if (on) {
        /* The same errors as the unfused route, whose products go through CBLAS. */
        size_t plan_work;
        if ((st = dq_plan_workspace_size(lin->plan, 1, &plan_work)) != DQ_OK)
            return st;
        if (plan_work > 0 && ldx > INT_MAX)
            return DQ_ERR_BLAS;
    }

    void *owned = NULL;
    if (!work && l.total > 0) {
        owned = dq__alloc(&lin->ctx, l.total);
        if (!owned)
            return DQ_ERR_NOMEM;
        work = owned;
    }
    uint8_t *base = NULL;
    if (l.total > 0)
        base = (uint8_t *)(((uintptr_t)work + (DQ_ALIGN - 1)) & ~(uintptr_t)(DQ_ALIGN - 1));

    /* Everything that can fail runs before y is written. */
    const float *xin = x;
    int64_t ldin = ldx;
    const int32_t threads = lin->ctx.n_threads;
    void *tiles = on && l.plan_bytes > 0 ? base + l.plan_work : NULL;
    if (on && lin->act_bits == 0) {
        float *xt = (float *)(void *)(base + l.xt);
        dq__online_transform(lin->online, x, rows, ldx, xt, cols, tiles, threads);
        xin = xt;
        ldin = cols;
    } else if (lin->plan && !on) {
        float *xt = (float *)(void *)(base + l.xt);
        st = dq_plan_apply_act_to(lin->plan, x, rows, cols, ldx, xt, cols,
                                  l.plan_bytes > 0 ? base + l.plan_work : NULL, l.plan_bytes);
        if (st != DQ_OK)
            goto out;
        xin = xt;
        ldin = cols;
    }
    if (lin->act_bits == 0) {
        dq__gemm_w_f32(lin->w, xin, rows, ldin, lin->bias, y, ldy, threads);
    } else {
        uint8_t *codes = base + l.codes;
        float *scales = (float *)(void *)(base + l.scales);
        int32_t *zeros = (int32_t *)(void *)(base + l.zeros);
        if (on)
            dq__online_quantize(lin->online, x, rows, ldx, lin->act_bits, lin->act_scheme,
                                lin->act_clip, codes, l.code_ld, scales, zeros, tiles, threads);
        else
            dq__quantize_tokens(xin, rows, cols, ldin, lin->act_bits, lin->act_scheme,
                                lin->act_clip, codes, l.code_ld, scales, zeros, threads);
        const dq__aq a = {rows, cols, l.code_ld, codes, scales, zeros};
        dq__gemm_w_a(lin->w, &a, lin->bias, y, ldy, threads);
    }
out:
    dq__free(&lin->ctx, owned);
    return st;
}

DQ_API dq_status dq_linear_forward(const dq_linear *lin, const float *x, int64_t rows,
                                   int64_t cols, int64_t ldx, float *y, int64_t ldy, void *work,
                                   size_t work_size)
{
    return dq__linear_forward_route(lin, DQ__ROUTE_FUSED, x, rows, cols, ldx, y, ldy, work,
                                    work_size);
}
