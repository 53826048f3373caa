/* Plans bound to the weights they transformed: a content fingerprint of every plan, recorded in
 * the matrices packed through it and checked where a layer meets its plan. */
#include <inttypes.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_plan_binding.h"
#include "dq_qmatrix.h"
#include "dq_transform.h"

/* The fingerprint folds a stream of 64-bit words: each word goes through the splitmix64
 * finalizer, is xored into the state, and the state is rotated and multiplied by an odd
 * constant. Every step is a bijection of the state for a fixed word, so changing any one value
 * always changes the result. Words are values (float bit patterns, integers), never raw memory,
 * so the result is the same on every platform: it equals hashing the little-endian bytes. The
 * definition is part of the file format (doc/formats.md) and never changes. */
#define FP_SEED 0x4451504c414e3031ull /* "DQPLAN01" */
#define FP_MUL 0x9e3779b97f4a7c15ull

typedef struct fp_state {
    uint64_t h;
    uint64_t n;
} fp_state;

static uint64_t fmix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fp_word(fp_state *s, uint64_t v)
{
    uint64_t h = s->h ^ fmix64(v);
    s->h = ((h << 27) | (h >> 37)) * FP_MUL;
    s->n++;
}

static void fp_floats(fp_state *s, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        fp_word(s, u);
    }
}

dq_status dq__plan_fingerprint(const dq_context *ctx, const dq_plan *pl, uint64_t *out)
{
    int64_t cols;
    int32_t has_s, n_rot;
    dq_status st = dq_plan_width(pl, &cols);
    if (st == DQ_OK)
        st = dq_plan_layout(pl, &has_s, &n_rot);
    if (st != DQ_OK)
        return st;
    /* One scratch buffer serves the smoothing scales and the permutations. */
    void *buf = dq__alloc(ctx, (size_t)cols * sizeof(int64_t));
    if (!buf)
        return DQ_ERR_NOMEM; /* not logged here: every caller says why, for its function */
    fp_state s = {FP_SEED, 0};
    fp_word(&s, (uint64_t)cols);
    fp_word(&s, (uint64_t)(has_s != 0));
    fp_word(&s, (uint64_t)n_rot);
    if (has_s) {
        float *scale = buf;
        if ((st = dq_plan_smooth_scales(pl, scale, cols)) != DQ_OK)
            goto out;
        fp_floats(&s, scale, (size_t)cols);
    }
    for (int32_t i = 0; i < n_rot; i++) {
        const dq_rotation *r;
        if ((st = dq_plan_rotation(pl, i, &r)) != DQ_OK)
            goto out;
        fp_word(&s, r != NULL);
        if (!r)
            continue;
        fp_word(&s, (uint64_t)r->block_size);
        fp_word(&s, (uint64_t)r->n_mats);
        for (int64_t m = 0; m < r->n_mats; m++) {
            const size_t len = (size_t)r->mat_size[m];
            fp_word(&s, len);
            fp_floats(&s, r->data + r->mat_offset[m], len * len);
        }
    }
    for (int32_t i = 0; i + 1 < n_rot; i++) {
        int64_t *perm = buf;
        if ((st = dq_plan_permutation(pl, i, perm, cols)) != DQ_OK)
            goto out;
        for (int64_t j = 0; j < cols; j++)
            fp_word(&s, (uint64_t)perm[j]);
    }
    uint64_t fp = fmix64(s.h ^ s.n);
    *out = fp ? fp : 1; /* 0 means "no plan" */
out:
    dq__free(ctx, buf);
    return st;
}

DQ_API dq_status dq_plan_fingerprint(const dq_plan *pl, uint64_t *out)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !pl ? "pl" : "out");
    uint64_t fp;
    dq_status st = dq__plan_fingerprint(NULL, pl, &fp);
    if (st != DQ_OK)
        return DQ_FAIL(NULL, st, "no scratch for the plan's permutations");
    *out = fp;
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_plan_fingerprint(const dq_qmatrix *q, uint64_t *out)
{
    DQ_CHECK_HANDLE(NULL, q, DQ__H_QMATRIX, "q");
    if (!q || !out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !q ? "q" : "out");
    *out = q->plan_fingerprint;
    return DQ_OK;
}

dq_status dq__plan_check_binding(const dq_context *ctx, const char *func, const dq_plan *plan,
                                 uint64_t weights_fp)
{
    if (weights_fp == 0) {
        if (plan)
            dq__log(ctx, DQ_LOG_WARN,
                    "%s: weights packed without a plan fingerprint: cannot check that the "
                    "plan transformed them (pack with dq_qmatrix_pack_transformed)",
                    func);
        return DQ_OK;
    }
    if (!plan)
        return dq__fail(ctx, DQ_ERR_MISMATCH, func,
                        "plan is NULL but the weights were transformed by plan %016" PRIx64,
                        weights_fp);
    uint64_t fp;
    dq_status st = dq__plan_fingerprint(ctx, plan, &fp);
    if (st != DQ_OK)
        return dq__fail(ctx, st, func, "no scratch to fingerprint the plan");
    if (fp != weights_fp)
        return dq__fail(ctx, DQ_ERR_MISMATCH, func,
                        "plan fingerprint %016" PRIx64 " differs from %016" PRIx64
                        ", the plan the weights were transformed by",
                        fp, weights_fp);
    return DQ_OK;
}

DQ_API dq_status dq_qmatrix_pack_transformed(dq_context *ctx, const dq_quant_params *params,
                                             const dq_plan *plan, const float *w, int64_t rows,
                                             int64_t cols, int64_t ldw, const float *clip_hi,
                                             const float *clip_lo, dq_qmatrix **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, plan, DQ__H_PLAN, "plan", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!plan)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "plan is NULL (use dq_qmatrix_pack)");
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    dq_status st = dq__params_read(&p, sizeof p, offsetof(dq_quant_params, clip_ratio) +
                                                     sizeof(float), params);
    if (st != DQ_OK)
        return DQ_FAIL(ctx, st, "params: struct_size or trailing bytes not accepted");
    if ((st = dq__check_matrix(ctx, "w", w, rows, cols, ldw)) != DQ_OK)
        return st;
    int64_t width;
    if ((st = dq_plan_width(plan, &width)) != DQ_OK)
        return DQ_FAIL(ctx, st, "plan: width unreadable");
    if (width != cols)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld differs from the plan width %lld",
                       (long long)cols, (long long)width);
    uint64_t fp;
    if ((st = dq__plan_fingerprint(ctx, plan, &fp)) != DQ_OK)
        return DQ_FAIL(ctx, st, "no scratch to fingerprint the plan");
    if (p.plan_fingerprint != 0 && p.plan_fingerprint != fp)
        return DQ_FAIL(ctx, DQ_ERR_MISMATCH,
                       "params plan_fingerprint %016" PRIx64 " differs from the plan's %016" PRIx64,
                       p.plan_fingerprint, fp);
    p.plan_fingerprint = fp;

    const dq_context *c = dq__ctx(ctx);
    size_t n, bytes;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &n) || !dq__mul_size(n, sizeof(float), &bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "w: %lld x %lld floats overflow size_t",
                       (long long)rows, (long long)cols);
    float *wt = dq__alloc(c, bytes);
    if (!wt)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "no memory for the %zu-byte transformed copy", bytes);
    for (int64_t i = 0; i < rows; i++)
        memcpy(wt + (size_t)i * (size_t)cols, w + (size_t)i * (size_t)ldw,
               (size_t)cols * sizeof(float));
    st = dq_plan_transform_weight(plan, wt, rows, cols, cols);
    if (st != DQ_OK)
        st = DQ_FAIL(ctx, st, "transforming w by the plan failed");
    else
        st = dq_qmatrix_pack(ctx, &p, wt, rows, cols, cols, clip_hi, clip_lo, out);
    dq__free(c, wt);
    return st;
}
