/* GPTQ: the Hessian accumulator of a layer input, and weights quantized column by column with
 * each column's error fed forward through the upper Cholesky factor of the inverse Hessian. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_plan_binding.h"
#include "dq_pool.h"
#include "dq_qmatrix.h"
#include "dq_quant_rule.h"

/* The first released layout ends after clip_norm. */
#define GPTQ_PARAMS_MIN_SIZE (offsetof(dq_gptq_params, clip_norm) + sizeof(float))
/* Rows updated together: each row of the factor is read once per chunk of rows. */
#define ROW_CHUNK 8

struct dq_hessian {
    uint64_t tag; /* DQ__TAG_HESSIAN (dq_handle.h) */
    dq_context ctx;
    int64_t cols;
    int64_t tokens;
    double *h;           /* cols x cols; the upper triangle (j >= i) is accumulated */
    const dq_plan *plan; /* a reference of our own, or NULL */
    uint64_t plan_fp;    /* its fingerprint, 0 without a plan */
};
DQ__HANDLE_LAYOUT(struct dq_hessian);

/* ---- the accumulator ---- */

DQ_API dq_status dq_hessian_create(dq_context *ctx, const dq_plan *plan, int64_t cols,
                                   dq_hessian **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, plan, DQ__H_PLAN, "plan", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (cols <= 0)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld, expected > 0", (long long)cols);
    dq_status st;
    uint64_t fp = 0;
    if (plan) {
        int64_t width;
        if ((st = dq_plan_width(plan, &width)) != DQ_OK)
            return DQ_FAIL(ctx, st, "plan: width unreadable");
        if (width != cols)
            return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld differs from the plan width %lld",
                           (long long)cols, (long long)width);
        if ((st = dq__plan_fingerprint(ctx, plan, &fp)) != DQ_OK)
            return DQ_FAIL(ctx, st, "no scratch to fingerprint the plan");
    }
    size_t n, bytes;
    if ((uint64_t)cols > SIZE_MAX || !dq__mul_size((size_t)cols, (size_t)cols, &n) ||
        !dq__mul_size(n, sizeof(double), &bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "cols %lld: %lld^2 doubles overflow size_t",
                       (long long)cols, (long long)cols);
    const dq_context *c = dq__ctx(ctx);
    dq_hessian *h = dq__calloc(c, 1, sizeof *h);
    if (!h)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu bytes for the accumulator", sizeof *h);
    h->tag = DQ__TAG_HESSIAN;
    dq__context_keep(&h->ctx, c);
    h->cols = cols;
    if (!(h->h = dq__calloc(c, n, sizeof(double)))) {
        dq_hessian_free(h);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu bytes for the %lld x %lld Hessian", bytes,
                       (long long)cols, (long long)cols);
    }
    h->plan = dq__plan_retain(plan);
    h->plan_fp = fp;
    *out = h;
    return DQ_OK;
}

DQ_API void dq_hessian_free(dq_hessian *h)
{
    if (!h)
        return;
    DQ_CHECK_HANDLE_FREE(h, DQ__H_HESSIAN, "h");
    DQ_HANDLE_RETIRE(h, DQ__H_HESSIAN);
    dq_context c = h->ctx;
    dq__plan_release(h->plan);
    dq__free(&c, h->h);
    dq__free(&c, h);
    dq__context_drop(&c);
}

typedef struct accum_job {
    double *h;
    const float *x;
    int64_t rows, cols, ldx;
} accum_job;

/* Rows i = part, part + n_parts, ... of H (interleaved: the triangle's rows shrink), tokens
 * in stream order for every element, so neither the split nor the batches change a bit. */
static void accum_part(void *arg, int32_t part, int32_t n_parts)
{
    const accum_job *a = arg;
    const int64_t n = a->cols;
    for (int64_t t = 0; t < a->rows; t++) {
        const float *xt = a->x + (size_t)t * (size_t)a->ldx;
        for (int64_t i = part; i < n; i += n_parts) {
            const double xi = (double)xt[i];
            double *hi = a->h + (size_t)i * (size_t)n;
            for (int64_t j = i; j < n; j++)
                hi[j] += xi * (double)xt[j]; /* exact product of two floats */
        }
    }
}

DQ_API dq_status dq_hessian_observe(dq_hessian *h, const float *x, int64_t rows, int64_t cols,
                                    int64_t ldx)
{
    DQ_CHECK_HANDLE(NULL, h, DQ__H_HESSIAN, "h");
    if (!h)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "h is NULL");
    dq_status st = dq__check_matrix(&h->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != h->cols)
        return DQ_FAIL(&h->ctx, DQ_ERR_SHAPE, "x: cols %lld != Hessian cols %lld",
                       (long long)cols, (long long)h->cols);
    if (rows > INT64_MAX - h->tokens)
        return DQ_FAIL(&h->ctx, DQ_ERR_OVERFLOW, "token count %lld + rows %lld overflows",
                       (long long)h->tokens, (long long)rows);
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_FAIL(&h->ctx, DQ_ERR_NONFINITE, "x has a non-finite element");
    float *xt = NULL;
    accum_job a = {h->h, x, rows, cols, ldx};
    if (h->plan) {
        size_t n, bytes;
        if (!dq__mul_size((size_t)rows, (size_t)cols, &n) ||
            !dq__mul_size(n, sizeof(float), &bytes))
            return DQ_FAIL(&h->ctx, DQ_ERR_OVERFLOW, "x: %lld x %lld floats overflow size_t",
                           (long long)rows, (long long)cols);
        if (!(xt = dq__alloc(&h->ctx, bytes)))
            return DQ_FAIL(&h->ctx, DQ_ERR_NOMEM, "%zu bytes for the transformed batch",
                           bytes);
        /* The whole batch is transformed (and checked) before any of it is added. */
        st = dq_plan_apply_act_to(h->plan, x, rows, cols, ldx, xt, cols, NULL, 0);
        if (st == DQ_OK && !dq__all_finite(xt, rows, cols, cols))
            st = DQ_ERR_NONFINITE;
        if (st != DQ_OK) {
            dq__free(&h->ctx, xt);
            return DQ_FAIL(&h->ctx, st, "x: the plan's transform failed (%s)",
                           dq_status_name(st));
        }
        a.x = xt;
        a.ldx = cols;
    }
    dq__parallel(&h->ctx, dq__threads(&h->ctx, cols), accum_part, &a);
    h->tokens += rows;
    dq__free(&h->ctx, xt);
    return DQ_OK;
}

DQ_API dq_status dq_hessian_merge(dq_hessian *dst, const dq_hessian *src)
{
    DQ_CHECK_HANDLE(NULL, dst, DQ__H_HESSIAN, "dst");
    DQ_CHECK_HANDLE(dst ? &dst->ctx : NULL, src, DQ__H_HESSIAN, "src");
    if (!dst || !src || dst == src)
        return DQ_FAIL(dst ? &dst->ctx : NULL, DQ_ERR_INVALID_ARG, "%s",
                       !dst ? "dst is NULL" : !src ? "src is NULL" : "dst and src are the same");
    if (dst->cols != src->cols)
        return DQ_FAIL(&dst->ctx, DQ_ERR_SHAPE, "src cols %lld != dst cols %lld",
                       (long long)src->cols, (long long)dst->cols);
    if (dst->plan_fp != src->plan_fp)
        return DQ_FAIL(&dst->ctx, DQ_ERR_MISMATCH, "src plan fingerprint %016llx != dst's "
                       "%016llx (0: no plan)", (unsigned long long)src->plan_fp,
                       (unsigned long long)dst->plan_fp);
    if (src->tokens > INT64_MAX - dst->tokens)
        return DQ_FAIL(&dst->ctx, DQ_ERR_OVERFLOW, "token count %lld + %lld overflows",
                       (long long)dst->tokens, (long long)src->tokens);
    const int64_t n = dst->cols;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i; j < n; j++)
            dst->h[(size_t)i * (size_t)n + (size_t)j] += src->h[(size_t)i * (size_t)n + (size_t)j];
    dst->tokens += src->tokens;
    return DQ_OK;
}

DQ_API dq_status dq_hessian_tokens(const dq_hessian *h, int64_t *tokens)
{
    DQ_CHECK_HANDLE(NULL, h, DQ__H_HESSIAN, "h");
    if (!h || !tokens)
        return DQ_FAIL(h ? &h->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !h ? "h" : "tokens");
    *tokens = h->tokens;
    return DQ_OK;
}

DQ_API dq_status dq_hessian_matrix(const dq_hessian *h, double *out, int64_t ldo)
{
    DQ_CHECK_HANDLE(NULL, h, DQ__H_HESSIAN, "h");
    if (!h || !out)
        return DQ_FAIL(h ? &h->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !h ? "h" : "out");
    const int64_t n = h->cols;
    if (ldo < n)
        return DQ_FAIL(&h->ctx, DQ_ERR_SHAPE, "ldo %lld < cols %lld", (long long)ldo,
                       (long long)n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            out[(size_t)i * (size_t)ldo + (size_t)j] =
                i <= j ? h->h[(size_t)i * (size_t)n + (size_t)j]
                       : h->h[(size_t)j * (size_t)n + (size_t)i];
    return DQ_OK;
}

/* ---- params ---- */

DQ_API dq_status dq_gptq_params_init(dq_gptq_params *p, size_t struct_size)
{
    const dq_gptq_params defaults = {
        .struct_size = sizeof defaults,
        .flags = 0,
        .damp = 0.01f,
        .block_size = 128,
        .clip_grid = 100,
        .clip_max_shrink = 0.8f,
        .clip_norm = 2.4f,
    };
    return dq__params_init(p, struct_size, GPTQ_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_gptq_params(const dq_context *ctx, const dq_gptq_params *user,
                                  dq_gptq_params *p)
{
    static const char *const func = "dq_gptq_pack";
    dq_gptq_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, func, "gp", p, sizeof *p, GPTQ_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    const uint32_t known = DQ_GPTQ_F_ACT_ORDER | DQ_GPTQ_F_STATIC_GROUPS | DQ_GPTQ_F_CLIP_SEARCH;
    if (p->flags & ~known)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->flags 0x%x: unknown bits 0x%x",
                        (unsigned)p->flags, (unsigned)(p->flags & ~known));
    if (!(p->damp >= 0.0f && p->damp <= 1.0f))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->damp %g outside [0, 1]",
                        (double)p->damp);
    if (p->block_size < 1 || p->block_size > 65536)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->block_size %d outside [1, 65536]",
                        (int)p->block_size);
    if (p->clip_grid < 1 || p->clip_grid > 10000)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->clip_grid %d outside [1, 10000]",
                        (int)p->clip_grid);
    if (!(p->clip_max_shrink >= 0.0f && p->clip_max_shrink < 1.0f))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->clip_max_shrink %g outside [0, 1)",
                        (double)p->clip_max_shrink);
    if (!(p->clip_norm >= 1.0f && p->clip_norm <= 16.0f))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "gp->clip_norm %g outside [1, 16]",
                        (double)p->clip_norm);
    return DQ_OK;
}

/* ---- the inverse Hessian's factor ---- */

/* Factor steps split over the context's threads. Each element is computed by one part with
 * the same operations in the same order whatever the split: the same bits for every thread
 * count. Small steps run on the calling thread (a parallel call costs more than they do). */
#define FACTOR_MIN_WORK 16384 /* multiply-adds of a step worth a parallel call */

typedef struct factor_step {
    double *p, *t;
    int64_t n, j; /* the matrix order and the step (pivot row, or row being solved) */
} factor_step;

/* Cholesky step j: rows i > j of the trailing upper triangle (interleaved: rows shrink). */
static void chol_update(void *arg, int32_t part, int32_t n_parts)
{
    const factor_step *s = arg;
    const int64_t n = s->n;
    const double *restrict pj = s->p + (size_t)s->j * (size_t)n;
    for (int64_t i = s->j + 1 + part; i < n; i += n_parts) {
        double *restrict pi = s->p + (size_t)i * (size_t)n;
        const double f = pj[i];
        for (int64_t c = i; c < n; c++)
            pi[c] -= f * pj[c];
    }
}

/* First column of part w of n_parts over columns [lo, n) when column c costs c - lo + 1:
 * equal shares of the triangle. */
static int64_t triangle_split(int64_t lo, int64_t n, int32_t w, int32_t n_parts)
{
    if (w >= n_parts)
        return n;
    return lo + (int64_t)((double)(n - lo) * sqrt((double)w / (double)n_parts));
}

/* Row i = s->j of X = R^-1: t[c] = sum over k in (i, c] of R_ik X_kc, for the part's columns
 * (k increasing for every c). */
static void solve_row(void *arg, int32_t part, int32_t n_parts)
{
    const factor_step *s = arg;
    const int64_t n = s->n, i = s->j;
    const int64_t c0 = triangle_split(i + 1, n, part, n_parts);
    const int64_t c1 = triangle_split(i + 1, n, part + 1, n_parts);
    const double *restrict pi = s->p + (size_t)i * (size_t)n;
    double *restrict t = s->t;
    for (int64_t c = c0; c < c1; c++)
        t[c] = 0.0;
    for (int64_t k = i + 1; k < c1; k++) {
        const double f = pi[k];
        const double *restrict pk = s->p + (size_t)k * (size_t)n;
        for (int64_t c = k > c0 ? k : c0; c < c1; c++)
            t[c] += f * pk[c];
    }
}

/* The upper Cholesky factor U of H^-1 (H^-1 = U^T U), without forming H^-1. With J the
 * reversal of the n positions, factor P = J H J = R^T R (R upper); then H = V V^T with
 * V = J R^T J upper, so H^-1 = V^-T V^-1 and U = V^-1 = J R^-T J (the factor is unique).
 * a: H (n x n, lower triangle read, damped) on entry, U (upper triangle, zeros below) on
 * return; p: n x n scratch; t: n doubles. Every inner loop runs along a row (an axpy, no
 * reduction), in a fixed order. False when a pivot of P is not above n * DBL_EPSILON times its
 * diagonal entry (not numerically positive definite) or not finite; *bad receives that
 * position of H. */
static bool inverse_factor(const dq_context *ctx, double *a, double *p, double *t, int64_t n,
                           int64_t *bad)
{
#define AT(m, i, j) ((m)[(size_t)(i) * (size_t)n + (size_t)(j)])
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i; j < n; j++)
            AT(p, i, j) = AT(a, n - 1 - i, n - 1 - j);
        t[i] = AT(p, i, i);
    }
    factor_step s = {p, t, n, 0};
    for (int64_t j = 0; j < n; j++) { /* right-looking: P = R^T R, R in p's upper triangle */
        double *restrict pj = p + (size_t)j * (size_t)n;
        const double d = pj[j];
        if (!(d > (double)n * DBL_EPSILON * t[j]) || !isfinite(d)) {
            *bad = n - 1 - j;
            return false;
        }
        const double r = sqrt(d);
        pj[j] = r;
        for (int64_t c = j + 1; c < n; c++)
            pj[c] /= r;
        const int64_t rest = n - 1 - j;
        s.j = j;
        dq__parallel(ctx, dq__threads(ctx, rest * rest / 2 / FACTOR_MIN_WORK), chol_update, &s);
    }
    for (int64_t i = n - 1; i >= 0; i--) { /* X = R^-1 in place, rows from the last */
        const int64_t rest = n - 1 - i;
        s.j = i;
        dq__parallel(ctx, dq__threads(ctx, rest * rest / 2 / FACTOR_MIN_WORK), solve_row, &s);
        double *restrict pi = p + (size_t)i * (size_t)n;
        const double inv = 1.0 / pi[i];
        for (int64_t c = i + 1; c < n; c++)
            pi[c] = -t[c] * inv;
        pi[i] = inv;
    }
    for (int64_t i = 0; i < n; i++) /* U = J X^T J */
        for (int64_t j = 0; j < n; j++)
            AT(a, i, j) = j >= i ? AT(p, n - 1 - j, n - 1 - i) : 0.0;
#undef AT
    return true;
}

/* ---- the column loop ---- */

typedef struct gptq_job {
    const float *w; /* rows x cols (ld cols), dead columns zeroed, original column order */
    int64_t rows, cols;
    const int64_t *perm; /* position -> column (NULL: identity) */
    const double *u;     /* cols x cols upper factor, in position order */
    dq__qspec spec;
    int64_t group_len, groups;
    bool dynamic; /* group params from the updated weights at the group's first column */
    const float *clip_hi, *clip_lo;
    bool per_row_clip;
    float clip_ratio;
    int32_t candidates, grid; /* clip search: factors 1 - k / grid, k < candidates */
    double norm;
    int64_t block;
    dq_qmatrix *q;
    double *work; /* per part: ROW_CHUNK x cols weights, ROW_CHUNK x block errors */
    float *fwork; /* per part: group_len floats */
    size_t work_stride, fwork_stride;
    dq_status *status; /* per part */
    int64_t *bad_row;  /* per part */
} gptq_job;

/* Scale and zero point of the n values x, base factors hi and lo times the searched factor p.
 * False when no candidate gives finite params. */
static bool group_params(const gptq_job *jb, const float *x, int64_t n, float hi, float lo,
                         float *scale, float *zero)
{
    float mn = x[0], mx = x[0];
    for (int64_t i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    bool found = false;
    double best = INFINITY;
    for (int32_t k = 0; k < jb->candidates; k++) {
        const float p = 1.0f - (float)k / (float)jb->grid;
        float sc, zp;
        if (!dq__qr_params(jb->spec.bits, jb->spec.scheme, mn, mx, hi * p, lo * p, &sc, &zp))
            continue;
        double err = 0.0;
        if (jb->candidates > 1)
            for (int64_t i = 0; i < n; i++) {
                const int32_t c = dq__qr_code(jb->spec.bits, jb->spec.scheme, x[i], sc, zp);
                const double d = (double)dq__dequant(jb->spec, c, sc, zp) - (double)x[i];
                err += pow(fabs(d), jb->norm);
            }
        if (!found || err < best) {
            found = true;
            best = err;
            *scale = sc;
            *zero = zp;
        }
    }
    return found;
}

/* Columns of group g: group_len, the last one shorter where group_len does not divide cols. */
static int64_t group_cols(const gptq_job *jb, int64_t g)
{
    const int64_t rest = jb->cols - g * jb->group_len;
    return rest < jb->group_len ? rest : jb->group_len;
}

static bool set_group(const gptq_job *jb, int64_t row, int64_t g, const float *x)
{
    const size_t gi = (size_t)row * (size_t)jb->groups + (size_t)g;
    const size_t ci = jb->per_row_clip ? (size_t)row : gi;
    const float hi = jb->clip_hi ? jb->clip_hi[ci] : jb->clip_ratio;
    const float lo = jb->clip_lo ? jb->clip_lo[ci] : jb->clip_ratio;
    float sc = 0.0f, zp = 0.0f;
    if (!group_params(jb, x, group_cols(jb, g), hi, lo, &sc, &zp))
        return false;
    jb->q->scales[gi] = sc;
    if (jb->q->zeros)
        jb->q->zeros[gi] = zp;
    return true;
}

/* End of the lazy block starting at i1: block columns, cut where a dynamic group would start
 * inside it and run past its end (its first column must see every earlier update). */
static int64_t block_end(const gptq_job *jb, int64_t i1)
{
    int64_t i2 = i1 + jb->block < jb->cols ? i1 + jb->block : jb->cols;
    if (jb->dynamic) {
        const int64_t g = (i1 / jb->group_len + 1) * jb->group_len;
        const int64_t g_end = g + jb->group_len < jb->cols ? g + jb->group_len : jb->cols;
        if (g < i2 && g_end > i2)
            i2 = g;
    }
    return i2;
}

/* Rows [r, r + nr): returns false (with the row) when a value leaves the float range. */
static bool quantize_rows(const gptq_job *jb, double *wc, double *e, float *fx, int64_t r,
                          int64_t nr, int64_t *bad)
{
    const int64_t n = jb->cols, bl = jb->block, gl = jb->group_len;
    const dq_qmatrix *q = jb->q;
    for (int64_t k = 0; k < nr; k++) {
        const float *src = jb->w + (size_t)(r + k) * (size_t)n;
        if (!jb->dynamic)
            for (int64_t g = 0; g < jb->groups; g++)
                if (!set_group(jb, r + k, g, src + g * gl)) {
                    *bad = r + k;
                    return false;
                }
        for (int64_t j = 0; j < n; j++)
            wc[(size_t)k * (size_t)n + (size_t)j] = (double)src[jb->perm ? jb->perm[j] : j];
    }
    for (int64_t i1 = 0, i2; i1 < n; i1 = i2) {
        i2 = block_end(jb, i1);
        for (int64_t j = i1; j < i2; j++) {
            const double *uj = jb->u + (size_t)j * (size_t)n;
            const double d = uj[j];
            const int64_t col = jb->perm ? jb->perm[j] : j;
            const int64_t g = col / gl;
            for (int64_t k = 0; k < nr; k++) {
                double *wr = wc + (size_t)k * (size_t)n;
                const int64_t row = r + k;
                if (jb->dynamic && j % gl == 0) {
                    for (int64_t c = 0; c < group_cols(jb, g); c++) {
                        if (!(fabs(wr[j + c]) <= FLT_MAX)) {
                            *bad = row;
                            return false;
                        }
                        fx[c] = (float)wr[j + c];
                    }
                    if (!set_group(jb, row, g, fx)) {
                        *bad = row;
                        return false;
                    }
                }
                const double wv = wr[j];
                if (!(fabs(wv) <= FLT_MAX)) {
                    *bad = row;
                    return false;
                }
                const size_t gi = (size_t)row * (size_t)jb->groups + (size_t)g;
                const float sc = q->scales[gi], zp = q->zeros ? q->zeros[gi] : 0.0f;
                const int32_t code = dq__qr_code(jb->spec.bits, jb->spec.scheme, (float)wv, sc, zp);
                dq__qmatrix_store_code(q->packed + (size_t)row * q->row_bytes, jb->spec.bits, col,
                                       code);
                const double err = (wv - (double)dq__dequant(jb->spec, code, sc, zp)) / d;
                e[(size_t)k * (size_t)bl + (size_t)(j - i1)] = err;
                for (int64_t c = j + 1; c < i2; c++)
                    wr[c] -= err * uj[c];
            }
        }
        /* The block's updates of the later columns, in the same order per element as above. */
        for (int64_t j = i1; j < i2 && i2 < n; j++) {
            const double *uj = jb->u + (size_t)j * (size_t)n;
            for (int64_t k = 0; k < nr; k++) {
                const double err = e[(size_t)k * (size_t)bl + (size_t)(j - i1)];
                double *wr = wc + (size_t)k * (size_t)n;
                for (int64_t c = i2; c < n; c++)
                    wr[c] -= err * uj[c];
            }
        }
    }
    return true;
}

static void gptq_part(void *arg, int32_t part, int32_t n_parts)
{
    const gptq_job *jb = arg;
    int64_t c0, c1; /* chunks of ROW_CHUNK rows */
    const int64_t chunks = (jb->rows + ROW_CHUNK - 1) / ROW_CHUNK;
    dq__split(chunks, part, n_parts, &c0, &c1);
    double *wc = jb->work + (size_t)part * jb->work_stride;
    double *e = wc + (size_t)ROW_CHUNK * (size_t)jb->cols;
    float *fx = jb->fwork + (size_t)part * jb->fwork_stride;
    for (int64_t c = c0; c < c1; c++) {
        const int64_t r = c * ROW_CHUNK;
        const int64_t nr = jb->rows - r < ROW_CHUNK ? jb->rows - r : ROW_CHUNK;
        if (!quantize_rows(jb, wc, e, fx, r, nr, &jb->bad_row[part])) {
            jb->status[part] = DQ_ERR_NONFINITE;
            return;
        }
    }
}

/* Columns by descending diagonal, ties by index: a strict order, so qsort is deterministic. */
typedef struct diag_key {
    double d;
    int64_t j;
} diag_key;

static int by_diag_desc(const void *pa, const void *pb)
{
    const diag_key *a = pa, *b = pb;
    if (a->d != b->d)
        return a->d > b->d ? -1 : 1;
    return a->j < b->j ? -1 : (a->j > b->j);
}

static bool clips_valid(const float *c, int64_t n)
{
    for (int64_t i = 0; c && i < n; i++)
        if (!(c[i] > 0.0f && c[i] <= 1.0f))
            return false;
    return true;
}

DQ_API dq_status dq_gptq_pack(dq_context *ctx, const dq_gptq_params *gparams,
                              const dq_quant_params *qparams, const dq_hessian *h,
                              const float *w, int64_t rows, int64_t cols, int64_t ldw,
                              const float *clip_hi, const float *clip_lo, int64_t n_clip,
                              dq_qmatrix **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, h, DQ__H_HESSIAN, "h", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!h)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "h is NULL");
    dq_gptq_params gp;
    dq_quant_params p;
    dq_status st = read_gptq_params(ctx, gparams, &gp);
    if (st != DQ_OK || (st = dq__quant_params_read(ctx, __func__, qparams, &p)) != DQ_OK)
        return st;
    if ((st = dq__check_matrix(ctx, "w", w, rows, cols, ldw)) != DQ_OK)
        return st;
    if (cols != h->cols)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "w: cols %lld != Hessian cols %lld", (long long)cols,
                       (long long)h->cols);
    if (p.group_size > cols)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "qp->group_size %d exceeds cols %lld (0 = whole "
                       "rows)", (int)p.group_size, (long long)cols);
    /* As dq_qmatrix_pack: where group_size does not divide cols the last group is shorter. */
    const int64_t gl = p.group_size == 0 ? cols : p.group_size;
    const int64_t groups = cols / gl + (cols % gl != 0);
    int64_t n_groups;
    if (!dq__mul_i64(rows, groups, &n_groups))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "rows %lld x groups %lld overflow",
                       (long long)rows, (long long)groups);
    if (n_clip < 0 || (!clip_hi && !clip_lo && n_clip != 0) ||
        ((clip_hi || clip_lo) && n_clip != n_groups && n_clip != rows))
        return DQ_FAIL(ctx, n_clip < 0 ? DQ_ERR_INVALID_ARG : DQ_ERR_SHAPE,
                       "n_clip %lld: expected %lld (rows * groups_per_row) or %lld (rows) with "
                       "clip factors, 0 without", (long long)n_clip, (long long)n_groups,
                       (long long)rows);
    if (!clips_valid(clip_hi, n_clip) || !clips_valid(clip_lo, n_clip))
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "%s: each factor must be in (0, 1]",
                       clips_valid(clip_hi, n_clip) ? "clip_lo" : "clip_hi");
    if (h->tokens == 0)
        return DQ_FAIL(ctx, DQ_ERR_BAD_STATE, "h: no token observed");
    if (h->plan) {
        if (p.plan_fingerprint != 0 && p.plan_fingerprint != h->plan_fp)
            return DQ_FAIL(ctx, DQ_ERR_MISMATCH, "qp->plan_fingerprint %016llx differs from "
                           "the Hessian's plan %016llx", (unsigned long long)p.plan_fingerprint,
                           (unsigned long long)h->plan_fp);
        p.plan_fingerprint = h->plan_fp;
    }
    if (!dq__all_finite(w, rows, cols, ldw))
        return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "w (%lld x %lld) holds NaN or Inf",
                       (long long)rows, (long long)cols);

    const dq_context *c = dq__ctx(ctx);
    const int64_t n = cols;
    const bool act_order = (gp.flags & DQ_GPTQ_F_ACT_ORDER) != 0;
    const int64_t block = gp.block_size < n ? gp.block_size : n;
    const int32_t n_parts = dq__threads(c, (rows + ROW_CHUNK - 1) / ROW_CHUNK);
    size_t nn = (size_t)n * (size_t)n, wn, work_stride = (size_t)ROW_CHUNK * (size_t)(n + block);
    size_t fwork_stride = (size_t)gl, wbytes, hbytes, workbytes;
    if (!dq__mul_size((size_t)rows, (size_t)n, &wn) || !dq__mul_size(wn, sizeof(float), &wbytes) ||
        !dq__mul_size(nn, sizeof(double), &hbytes) ||
        !dq__mul_size(work_stride * sizeof(double), (size_t)n_parts, &workbytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "w: %lld x %lld: working copies overflow size_t",
                       (long long)rows, (long long)cols);
    float *wf = dq__alloc(c, wbytes);
    double *a = dq__alloc(c, hbytes), *b = dq__alloc(c, hbytes);
    double *t = dq__alloc(c, (size_t)n * sizeof(double));
    diag_key *keys = act_order ? dq__alloc(c, (size_t)n * sizeof *keys) : NULL;
    int64_t *perm = act_order ? dq__alloc(c, (size_t)n * sizeof *perm) : NULL;
    double *work = dq__alloc(c, workbytes);
    float *fwork = dq__alloc(c, fwork_stride * (size_t)n_parts * sizeof(float));
    dq_status *status = dq__calloc(c, (size_t)n_parts, sizeof *status);
    int64_t *bad_rows = dq__calloc(c, (size_t)n_parts, sizeof *bad_rows);
    dq_qmatrix *q = dq__qmatrix_new(c);
    const size_t row_bytes = p.bits == 4 ? dq_int4_packed_size(n) : (size_t)n;
    size_t nbytes = 0, gbytes = (size_t)n_groups * sizeof(float);
    if (q && dq__mul_size((size_t)rows, row_bytes, &nbytes)) {
        q->packed = dq__calloc(c, nbytes, 1);
        q->scales = dq__alloc(c, gbytes);
        q->zeros = p.scheme == DQ_QUANT_ASYM ? dq__alloc(c, gbytes) : NULL;
    }
    if (!wf || !a || !b || !t || (act_order && (!keys || !perm)) || !work || !fwork ||
        !status || !bad_rows || !q || !q->packed || !q->scales ||
        (p.scheme == DQ_QUANT_ASYM && !q->zeros)) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "working memory for GPTQ of %lld x %lld",
                     (long long)rows, (long long)cols);
        goto out;
    }
    q->rows = rows;
    q->cols = cols;
    q->bits = p.bits;
    q->scheme = p.scheme;
    q->group_size = p.group_size;
    q->group_len = gl;
    q->groups_per_row = groups;
    q->row_bytes = row_bytes;
    q->nbytes = nbytes;
    q->plan_fingerprint = p.plan_fingerprint;

    for (int64_t i = 0; i < rows; i++)
        memcpy(wf + (size_t)i * (size_t)n, w + (size_t)i * (size_t)ldw,
               (size_t)n * sizeof(float));
    if (h->plan && (st = dq_plan_transform_weight(h->plan, wf, rows, n, n)) != DQ_OK) {
        st = DQ_FAIL(ctx, st, "w: the plan's transform failed");
        goto out;
    }
    /* H in full; a dead column (no activation ever) cannot move the output: weight 0, H_jj 1. */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            b[(size_t)i * (size_t)n + (size_t)j] =
                i <= j ? h->h[(size_t)i * (size_t)n + (size_t)j]
                       : h->h[(size_t)j * (size_t)n + (size_t)i];
    if (!dq__all_finite(wf, rows, n, n)) {
        st = DQ_FAIL(ctx, DQ_ERR_NONFINITE, "w: non-finite after the plan's transform");
        goto out;
    }
    for (size_t k = 0; k < nn; k++)
        if (!isfinite(b[k])) {
            st = DQ_FAIL(ctx, DQ_ERR_NONFINITE, "h: non-finite entry (%zu, %zu)", k / (size_t)n,
                         k % (size_t)n);
            goto out;
        }
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double *hjj = b + (size_t)j * (size_t)n + (size_t)j;
        if (*hjj == 0.0) {
            *hjj = 1.0;
            for (int64_t i = 0; i < rows; i++)
                wf[(size_t)i * (size_t)n + (size_t)j] = 0.0f;
        }
        mean += *hjj;
    }
    mean /= (double)n;
    if (act_order) {
        for (int64_t j = 0; j < n; j++)
            keys[j] = (diag_key){b[(size_t)j * (size_t)n + (size_t)j], j};
        qsort(keys, (size_t)n, sizeof *keys, by_diag_desc);
        for (int64_t j = 0; j < n; j++)
            perm[j] = keys[j].j;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j <= i; j++)
            a[(size_t)i * (size_t)n + (size_t)j] =
                b[(size_t)(perm ? perm[i] : i) * (size_t)n + (size_t)(perm ? perm[j] : j)];
    for (int64_t j = 0; j < n; j++)
        a[(size_t)j * (size_t)n + (size_t)j] += (double)gp.damp * mean;
    int64_t bad = 0;
    if (!inverse_factor(c, a, b, t, n, &bad)) {
        st = DQ_FAIL(ctx, DQ_ERR_BAD_STATE, "h: not positive definite after dampening (damp "
                     "%g, %lld tokens, failed at position %lld): raise damp or observe more "
                     "tokens", (double)gp.damp, (long long)h->tokens, (long long)bad);
        goto out;
    }

    const bool search = (gp.flags & DQ_GPTQ_F_CLIP_SEARCH) != 0;
    int32_t candidates = (int32_t)floorf(gp.clip_max_shrink * (float)gp.clip_grid);
    gptq_job jb = {
        .w = wf, .rows = rows, .cols = n, .perm = perm, .u = a,
        .spec = {p.bits, p.scheme}, .group_len = gl, .groups = groups,
        .dynamic = groups > 1 && !act_order && !(gp.flags & DQ_GPTQ_F_STATIC_GROUPS),
        .clip_hi = clip_hi, .clip_lo = clip_lo,
        .per_row_clip = n_clip == rows && n_clip != n_groups, .clip_ratio = p.clip_ratio,
        .candidates = search && candidates > 1 ? candidates : 1, .grid = gp.clip_grid,
        .norm = (double)gp.clip_norm, .block = block, .q = q,
        .work = work, .fwork = fwork, .work_stride = work_stride, .fwork_stride = fwork_stride,
        .status = status, .bad_row = bad_rows,
    };
    dq__parallel(c, n_parts, gptq_part, &jb);
    for (int32_t k = 0; k < n_parts; k++)
        if (status[k] != DQ_OK) {
            st = DQ_FAIL(ctx, status[k], "w row %lld: a value left the float range during the "
                         "updates (ill-conditioned H: raise damp)", (long long)bad_rows[k]);
            goto out;
        }
    *out = q;
    q = NULL;
out:
    dq_qmatrix_free(q);
    dq__free(c, wf);
    dq__free(c, a);
    dq__free(c, b);
    dq__free(c, t);
    dq__free(c, keys);
    dq__free(c, perm);
    dq__free(c, work);
    dq__free(c, fwork);
    dq__free(c, status);
    dq__free(c, bad_rows);
    return st;
}
