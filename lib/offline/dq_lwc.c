/* Learnable weight clipping (OmniQuant's LWC, DESIGN.md 4.8): per clip group two parameters
 * gamma and beta, clip factors sigmoid(gamma) on the group's max and sigmoid(beta) on its min,
 * trained with Adam on the layer's output reconstruction error.
 *
 * Forward, per group (exactly dq_qmatrix_pack with clip_hi = sigmoid(gamma), clip_lo =
 * sigmoid(beta), both rounded to float, because both call dq__quant_params/dq__quant_code):
 *   ASYM: xmax = max * hi, xmin = min * lo, s = clamp((xmax - xmin) / L, 1e-5, 1e4),
 *         zr = round(clamp(-xmin / s, +-1e4)), q = clamp(round(w / s) + zr, 0, L),
 *         w^ = (q - zr) * s, with L = 2^bits - 1.
 *   SYM:  s = clamp(max(|max|, |min|) * hi / H, 1e-5, 1e4), q = clamp(round(w / s), -H-1, H),
 *         w^ = q * s, with H = 2^(bits-1) - 1 (beta is unused: its gradient is 0).
 * Loss over a batch of B tokens: mean over B x rows of (x^ w^T - x w^T)^2, x^ = x or, with
 * DQ_LWC_F_QUANT_ACT, the per-token fake-quantized activations (fixed, not learned).
 *
 * Gradient: the straight-through surrogate OmniQuant differentiates. round(w / s) is treated
 * as w / s + (a constant): its derivative is 1. The zero point is rounded without the
 * straight-through trick, as OmniQuant's quantizer does (a plain round: derivative 0), so zr is
 * a constant in the backward pass; xmin reaches the loss through the scale only. A clamp
 * passes the gradient when its input lies within its bounds (bounds included) and blocks it
 * otherwise, for the scale clamp and the code clamp alike. Hence per element:
 *   code inside [0, L]:  w^ = round(w/s) * s exactly (zr cancels), dw^/ds = round(w/s) - w/s;
 *   code clamped to B:   w^ = (B - zr) * s, dw^/ds = B - zr;
 *   ds/dxmax = sf / L, ds/dxmin = -sf / L (sf = 1 when the scale clamp is inactive),
 *   dxmax/dgamma = max * sig'(gamma), dxmin/dbeta = min * sig'(beta).
 * (Passing the zero point's rounding straight through as well was tried: it follows the clip
 * optimum no better and its noisier steps made the training loss drift up on layers whose best
 * clip is close to 1.)
 * SYM: dw^/ds = round(w/s) - w/s inside the code range, else the clamp bound; ds/dgamma =
 * sf * max(|max|, |min|) * sig'(gamma) / H. The output error's gradient with respect to w^ is
 * (2 / (B rows)) E^T x^ with E = x^ w^T - x w^T; both products go through dq__sgemm. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_cpu.h"
#include "dq_internal.h"
#include "dq_lwc_kernels.h"
#include "dq_quant_rule.h"
#include "dq_random.h"

#define LWC_PARAMS_MIN_SIZE (offsetof(dq_lwc_params, on_epoch_user) + sizeof(void *))
#define QUANT_PARAMS_MIN_SIZE (offsetof(dq_quant_params, clip_ratio) + sizeof(float))
#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define ADAM_EPS 1e-8

struct dq_lwc {
    uint64_t tag; /* DQ__TAG_LWC (dq_handle.h) */
    dq_context ctx;
    dq_lwc_params p;
    dq__qspec spec;
    int64_t rows, cols, tokens;
    int64_t group_len, groups, n; /* n = rows * groups clip groups */
    const float *w;               /* rows x cols, row stride ldw: w_copy or the caller's */
    const float *x;               /* tokens x cols, row stride ldx: x_copy or the caller's */
    float *xq;                    /* tokens x cols fake-quantized activations, or NULL */
    float *y;                     /* tokens x rows float outputs x w^T (with QUANT_ACT) */
    float *gamma, *beta;
    float *m_gamma, *v_gamma, *m_beta, *v_beta; /* Adam moments */
    int64_t adam_steps;
    int32_t epochs_done;
    /* The parameters with the lowest full-batch loss seen while training (the start of each
     * training call counts): what dq_lwc_factors exports. The iterate itself goes on from
     * where Adam left it, so stopping and resuming does not change the path. */
    float *best_gamma, *best_beta;
    double best_loss;
    bool best_valid;
    /* The copies of w and x (NULL with DQ_LWC_F_BORROW, which reads the caller's in place). */
    float *w_copy, *x_copy;
    int64_t ldw, ldx;
};
DQ__HANDLE_LAYOUT(struct dq_lwc);

/* Scratch for one batch of up to cap tokens. */
typedef struct batch_scratch {
    float *xb, *xqb, *yb; /* gathered rows (xqb, yb only with QUANT_ACT) */
    float *err;           /* cap x block (row_block) */
    float *wq;            /* block x cols */
    float *grad_w;        /* block x cols, only with gradients */
    float *dwds;          /* block x cols: each element's dw^/ds, only with gradients */
} batch_scratch;

DQ_API dq_status dq_lwc_params_init(dq_lwc_params *p, size_t struct_size)
{
    const dq_lwc_params defaults = {
        .struct_size = sizeof defaults,
        .epochs = 20,
        .batch_tokens = 128,
        .learning_rate = 1e-2f,
        .init_value = 4.0f,
        .act_bits = 4,
        .act_scheme = DQ_QUANT_ASYM,
        .act_clip_ratio = 1.0f,
    };
    return dq__params_init(p, struct_size, LWC_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_lwc_params(const dq_context *ctx, const dq_lwc_params *user,
                                 dq_lwc_params *p)
{
    static const char fn[] = "dq_lwc_create";
    dq_lwc_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, fn, "params", p, sizeof *p, LWC_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if ((p->flags & ~(uint32_t)(DQ_LWC_F_QUANT_ACT | DQ_LWC_F_BORROW)) != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "params->flags 0x%x has unknown bits",
                        (unsigned)p->flags);
    if (p->epochs < 1 || p->epochs > 100000)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "params->epochs %d outside [1, 100000]",
                        (int)p->epochs);
    if (p->batch_tokens < 1 || p->batch_tokens > (1 << 24))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "params->batch_tokens %lld outside [1, 2^24]",
                        (long long)p->batch_tokens);
    if (!(p->learning_rate > 0.0f) || !isfinite(p->learning_rate))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "params->learning_rate %g, expected finite "
                        "> 0", (double)p->learning_rate);
    if (!isfinite(p->init_value))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "params->init_value is not finite");
    if ((p->flags & DQ_LWC_F_QUANT_ACT) &&
        ((p->act_bits != 4 && p->act_bits != 8) ||
         (p->act_scheme != DQ_QUANT_ASYM && p->act_scheme != DQ_QUANT_SYM) ||
         !(p->act_clip_ratio > 0.0f && p->act_clip_ratio <= 1.0f)))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "with DQ_LWC_F_QUANT_ACT: params->act_bits "
                        "%d (4 or 8), act_scheme %d (DQ_QUANT_*), act_clip_ratio %g ((0, 1])",
                        (int)p->act_bits, (int)p->act_scheme, (double)p->act_clip_ratio);
    return DQ_OK;
}

static dq_status read_weight_params(const dq_context *ctx, const dq_quant_params *user,
                                    dq_quant_params *q)
{
    static const char fn[] = "dq_lwc_create";
    dq_quant_params_init(q, sizeof *q);
    dq_status st = dq__params_read_at(ctx, fn, "wq", q, sizeof *q, QUANT_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if (q->flags != 0 || (q->bits != 4 && q->bits != 8) ||
        (q->scheme != DQ_QUANT_ASYM && q->scheme != DQ_QUANT_SYM) || q->group_size < 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, fn, "wq: flags 0x%x (0), bits %d (4 or 8), "
                        "scheme %d (DQ_QUANT_*), group_size %d (>= 0)", (unsigned)q->flags,
                        (int)q->bits, (int)q->scheme, (int)q->group_size);
    return DQ_OK;
}

/* Clip factor of a parameter. Kept at least FLT_MIN so that it stays a valid
 * dq_qmatrix_pack factor (in (0, 1]) even for very negative parameters. */
static float sigmoid(float v)
{
    return fmaxf(1.0f / (1.0f + expf(-v)), FLT_MIN);
}

static bool all_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

DQ_API void dq_lwc_free(dq_lwc *l)
{
    if (!l)
        return;
    DQ_CHECK_HANDLE_FREE(l, DQ__H_LWC, "l");
    DQ_HANDLE_RETIRE(l, DQ__H_LWC);
    dq_context c = l->ctx;
    float *bufs[] = {l->w_copy,  l->x_copy,  l->xq,     l->y,       l->gamma,
                     l->beta,    l->m_gamma, l->v_gamma, l->m_beta, l->v_beta,
                     l->best_gamma, l->best_beta};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dq__free(&c, bufs[i]);
    dq__free(&c, l);
    dq__context_drop(&c);
}

static void copy_rows(float *dst, const float *src, int64_t rows, int64_t cols, int64_t ld)
{
    for (int64_t i = 0; i < rows; i++)
        memcpy(dst + (size_t)i * (size_t)cols, src + (size_t)i * (size_t)ld,
               (size_t)cols * sizeof(float));
}

/* Per-token fake quantization of the activations, the rule of dq_linear's activations.
 * DQ_ERR_NONFINITE when a token's range overflows (finite but huge values). */
static dq_status fake_quant_tokens(const dq_lwc *l, float *xq)
{
    const dq__qspec s = {l->p.act_bits, l->p.act_scheme};
    const float clip = l->p.act_clip_ratio;
    for (int64_t t = 0; t < l->tokens; t++) {
        const float *src = l->x + (size_t)t * (size_t)l->ldx;
        float *dst = xq + (size_t)t * (size_t)l->cols;
        float scale, zero;
        dq__quant_params(s, src, l->cols, clip, clip, &scale, &zero);
        if (!isfinite(scale) || !isfinite(zero))
            return DQ_FAIL(&l->ctx, DQ_ERR_NONFINITE, "x: token %lld gives activation scale %g, "
                           "zero point %g (its range overflows float)", (long long)t,
                           (double)scale, (double)zero);
        for (int64_t j = 0; j < l->cols; j++)
            dst[j] = dq__dequant(s, dq__quant_code(s, src[j], scale, zero), scale, zero);
    }
    return DQ_OK;
}

static void reset_adam(dq_lwc *l)
{
    size_t bytes = (size_t)l->n * sizeof(float);
    memset(l->m_gamma, 0, bytes);
    memset(l->v_gamma, 0, bytes);
    memset(l->m_beta, 0, bytes);
    memset(l->v_beta, 0, bytes);
    l->adam_steps = 0;
}

DQ_API dq_status dq_lwc_create(dq_context *ctx, const dq_lwc_params *params,
                               const dq_quant_params *wq, const float *w, int64_t rows,
                               int64_t cols, int64_t ldw, const float *x, int64_t tokens,
                               int64_t ldx, dq_lwc **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_lwc_params p;
    dq_quant_params q;
    dq_status st = read_lwc_params(ctx, params, &p);
    if (st == DQ_OK)
        st = read_weight_params(ctx, wq, &q);
    if (st == DQ_OK)
        st = dq__check_matrix(ctx, "w", w, rows, cols, ldw);
    if (st == DQ_OK)
        st = dq__check_matrix(ctx, "x", x, tokens, cols, ldx);
    if (st != DQ_OK)
        return st;
    const int64_t group_len = (q.group_size == 0 || q.group_size > cols) ? cols : q.group_size;
    const int64_t groups = cols / group_len + (cols % group_len != 0);
    size_t wn, xn, yn, gn;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &wn) ||
        !dq__mul_size((size_t)tokens, (size_t)cols, &xn) ||
        !dq__mul_size((size_t)tokens, (size_t)rows, &yn) ||
        !dq__mul_size((size_t)rows, (size_t)groups, &gn) ||
        !dq__mul_size(wn, sizeof(float), &wn) || !dq__mul_size(xn, sizeof(float), &xn) ||
        !dq__mul_size(yn, sizeof(float), &yn) || !dq__mul_size(gn, sizeof(float), &gn))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "rows %lld, cols %lld, tokens %lld overflow size_t",
                       (long long)rows, (long long)cols, (long long)tokens);
    if (!dq__all_finite(w, rows, cols, ldw) || !dq__all_finite(x, tokens, cols, ldx))
        return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "%s has a non-finite element",
                       !dq__all_finite(w, rows, cols, ldw) ? "w" : "x");

    const dq_context *c = dq__ctx(ctx);
    dq_lwc *l = dq__calloc(c, 1, sizeof *l);
    if (!l)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "%zu bytes for the optimiser", sizeof *l);
    dq__context_keep(&l->ctx, c);
    l->tag = DQ__TAG_LWC;
    l->p = p;
    l->spec = (dq__qspec){q.bits, q.scheme};
    l->rows = rows;
    l->cols = cols;
    l->tokens = tokens;
    l->group_len = group_len;
    l->groups = groups;
    l->n = rows * groups;
    const bool quant_act = (p.flags & DQ_LWC_F_QUANT_ACT) != 0;
    const bool borrow = (p.flags & DQ_LWC_F_BORROW) != 0;
    if (!borrow) {
        l->w_copy = dq__alloc(c, wn);
        l->x_copy = dq__alloc(c, xn);
    }
    l->gamma = dq__alloc(c, gn);
    l->beta = dq__alloc(c, gn);
    l->m_gamma = dq__alloc(c, gn);
    l->v_gamma = dq__alloc(c, gn);
    l->m_beta = dq__alloc(c, gn);
    l->v_beta = dq__alloc(c, gn);
    l->best_gamma = dq__alloc(c, gn);
    l->best_beta = dq__alloc(c, gn);
    if (quant_act) {
        l->xq = dq__alloc(c, xn);
        l->y = dq__alloc(c, yn);
    }
    if ((!borrow && (!l->w_copy || !l->x_copy)) || !l->gamma || !l->beta || !l->m_gamma || !l->v_gamma || !l->m_beta ||
        !l->v_beta || !l->best_gamma || !l->best_beta || (quant_act && (!l->xq || !l->y))) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "copies of w (%zu bytes), x (%zu bytes) and parameters",
                     borrow ? (size_t)0 : wn, borrow ? (size_t)0 : xn);
        goto fail;
    }
    if (borrow) {
        l->w = w;
        l->x = x;
        l->ldw = ldw;
        l->ldx = ldx;
    } else {
        copy_rows(l->w_copy, w, rows, cols, ldw);
        copy_rows(l->x_copy, x, tokens, cols, ldx);
        l->w = l->w_copy;
        l->x = l->x_copy;
        l->ldw = l->ldx = cols;
    }
    for (int64_t i = 0; i < l->n; i++)
        l->gamma[i] = l->beta[i] = p.init_value;
    reset_adam(l);
    if (quant_act) {
        if ((st = fake_quant_tokens(l, l->xq)) != DQ_OK)
            goto fail;
        st = dq__sgemm(false, true, tokens, rows, cols, 1.0f, l->x, l->ldx, l->w, l->ldw, 0.0f,
                       l->y, rows);
        if (st != DQ_OK)
            goto fail;
        if (!dq__all_finite(l->y, tokens, rows, rows)) {
            st = DQ_FAIL(c, DQ_ERR_NONFINITE, "the float outputs x w^T overflow float");
            goto fail;
        }
    }
    *out = l;
    return DQ_OK;
fail:
    dq_lwc_free(l);
    return st;
}

void dq__lwc_fake_quant_portable(const float *src, int64_t len, float scale, float zero,
                                 float bottom, float top, bool asym, float *dst, float *part)
{
    for (int64_t j = 0; j < len; j++) {
        const float v = src[j] / scale, r = rintf(v);
        const float code = asym ? r + zero : r;
        const float q = dq__qr_clamp(code, bottom, top);
        dst[j] = asym ? (q - zero) * scale : q * scale;
        if (part)
            part[j] = code == q ? r - v : (asym ? q - zero : q);
    }
}

dq__lwc_fake_quant_fn *dq__lwc_fake_quant_best(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    if (dq__cpu_features() & DQ_CPU_AVX512F)
        return dq__lwc_fake_quant_avx512;
#endif
    return dq__lwc_fake_quant_portable;
}

/* Output rows per block of the reconstruction loss: the products and gradients of a batch are
 * computed for a block of rows of W at a time, so the scratch is block x cols per buffer
 * instead of rows x cols: rows / 16 rows (at most 1/16 of the weight per buffer), at least 8
 * (or all rows when fewer) and at most 128 (wide enough for the products to run at full
 * speed). A function of the shape only, not of the thread count: so is the order of every
 * sum. */
static int64_t row_block(int64_t rows)
{
    const int64_t b = rows / 16;
    return b < 8 ? (rows < 8 ? rows : 8) : (b > 128 ? 128 : b);
}

/* w^ of the groups of rows [i0, i0 + r) at the current parameters, into wq (r x cols): the
 * operations of dq__quant_code and dq__dequant, written out so that the same pass can record,
 * when dwds is not NULL, each element's STE partial dw^/ds (see the top of this file).
 * DQ_ERR_NONFINITE when a group's scale or zero point is not finite (its clipped range
 * overflows float). */
static dq_status fake_quant_rows(const dq_lwc *l, int64_t i0, int64_t r, float *wq, float *dwds)
{
    const bool asym = l->spec.scheme == DQ_QUANT_ASYM;
    const float top = (float)(asym ? (1 << l->spec.bits) - 1 : (1 << (l->spec.bits - 1)) - 1);
    const float bottom = asym ? 0.0f : -top - 1.0f;
    dq__lwc_fake_quant_fn *const fq = dq__lwc_fake_quant_best();
    for (int64_t i = i0; i < i0 + r; i++) {
        const float *src = l->w + (size_t)i * (size_t)l->ldw;
        float *dst = wq + (size_t)(i - i0) * (size_t)l->cols;
        float *part = dwds ? dwds + (size_t)(i - i0) * (size_t)l->cols : NULL;
        for (int64_t g = 0; g < l->groups; g++) {
            const size_t gi = (size_t)i * (size_t)l->groups + (size_t)g;
            const int64_t j0 = g * l->group_len;
            const int64_t len = l->cols - j0 < l->group_len ? l->cols - j0 : l->group_len;
            float scale, zero;
            dq__quant_params(l->spec, src + j0, len, sigmoid(l->gamma[gi]), sigmoid(l->beta[gi]),
                             &scale, &zero);
            if (!isfinite(scale) || !isfinite(zero))
                return DQ_FAIL(&l->ctx, DQ_ERR_NONFINITE, "w: row %lld, group %lld: scale %g, "
                               "zero point %g at clip factors %g, %g (the range overflows "
                               "float)", (long long)i, (long long)g, (double)scale,
                               (double)zero, (double)sigmoid(l->gamma[gi]),
                               (double)sigmoid(l->beta[gi]));
            fq(src + j0, len, scale, zero, bottom, top, asym, dst + j0, part ? part + j0 : NULL);
        }
    }
    return DQ_OK;
}

/* d loss / d gamma, d loss / d beta of one group of weights w from d loss / d w^ (grad) and
 * the elements' dw^/ds (dwds), by the surrogate described at the top of this file. */
static void group_gradient(const dq_lwc *l, const float *w, const float *grad, const float *dwds,
                           int64_t len, float gamma, float beta, double *g_gamma, double *g_beta)
{
    float mn = w[0], mx = w[0];
    for (int64_t j = 1; j < len; j++) {
        mn = w[j] < mn ? w[j] : mn;
        mx = w[j] > mx ? w[j] : mx;
    }
    double dot = 0.0;
    for (int64_t j = 0; j < len; j++)
        dot += (double)grad[j] * (double)dwds[j];
    const float hi = sigmoid(gamma), lo = sigmoid(beta);
    const double dhi = (double)hi * (1.0 - (double)hi), dlo = (double)lo * (1.0 - (double)lo);
    if (l->spec.scheme == DQ_QUANT_ASYM) {
        const float levels = (float)((1 << l->spec.bits) - 1);
        const float raw = (mx * hi - mn * lo) / levels;
        const double sf = dq__qr_scale_free(raw) ? 1.0 : 0.0;
        /* ds/dxmax = sf / L, ds/dxmin = -sf / L */
        *g_gamma = dot * sf / (double)levels * (double)mx * dhi;
        *g_beta = -dot * sf / (double)levels * (double)mn * dlo;
    } else {
        const float top = (float)((1 << (l->spec.bits - 1)) - 1);
        const float amax_raw = fmaxf(fabsf(mx), fabsf(mn));
        const float raw = amax_raw * hi / top;
        const double sf = dq__qr_scale_free(raw) ? 1.0 : 0.0;
        *g_gamma = dot * sf * (double)amax_raw * dhi / (double)top;
        *g_beta = 0.0;
    }
}

/* The weight operand of the error product for rows [i0, i0 + r) at the current parameters,
 * into s->wq: w^ with QUANT_ACT, else w^ - w (E = x (w^ - w)^T: one product, no cancellation
 * between two large outputs). */
static dq_status prepare_rows(const dq_lwc *l, batch_scratch *s, int64_t i0, int64_t r,
                              bool with_partials)
{
    dq_status st = fake_quant_rows(l, i0, r, s->wq, with_partials ? s->dwds : NULL);
    if (st != DQ_OK || l->xq)
        return st;
    for (int64_t i = 0; i < r; i++) {
        const float *w = l->w + (size_t)(i0 + i) * (size_t)l->ldw;
        float *d = s->wq + (size_t)i * (size_t)l->cols;
        for (int64_t k = 0; k < l->cols; k++)
            d[k] -= w[k];
    }
    return DQ_OK;
}

/* The error block E (b x r, into s->err) of b tokens against rows [i0, i0 + r) prepared by
 * prepare_rows, and the sum of its squares added to *sum. xb: float activations (row stride
 * ldxb), xqb: quantized ones (row stride cols) or NULL, yb: their float outputs (b x rows),
 * needed with xqb. */
static dq_status block_error(const dq_lwc *l, const float *xb, int64_t ldxb, const float *xqb,
                             const float *yb, int64_t b, int64_t i0, int64_t r, batch_scratch *s,
                             double *sum)
{
    const int64_t cols = l->cols;
    dq_status st;
    if (xqb) {
        /* E = x^ w^T - x w^T with the float outputs precomputed. */
        for (int64_t t = 0; t < b; t++)
            memcpy(s->err + (size_t)t * (size_t)r, yb + (size_t)t * (size_t)l->rows + (size_t)i0,
                   (size_t)r * sizeof(float));
        st = dq__sgemm(false, true, b, r, cols, 1.0f, xqb, cols, s->wq, cols, -1.0f, s->err, r);
    } else {
        st = dq__sgemm(false, true, b, r, cols, 1.0f, xb, ldxb, s->wq, cols, 0.0f, s->err, r);
    }
    if (st != DQ_OK)
        return st;
    const size_t en = (size_t)b * (size_t)r;
    double part = 0.0;
    for (size_t k = 0; k < en; k++)
        part += (double)s->err[k] * (double)s->err[k];
    *sum += part;
    return DQ_OK;
}

/* Loss of a batch of b tokens (see block_error for xb, xqb, yb) and, when g_gamma is not
 * NULL, the gradients, one block of output rows (row_block) at a time. */
static dq_status batch_loss(const dq_lwc *l, const float *xb, int64_t ldxb, const float *xqb,
                            const float *yb, int64_t b, batch_scratch *s, double *loss,
                            float *g_gamma, float *g_beta)
{
    const int64_t rows = l->rows, cols = l->cols;
    const float *xin = xqb ? xqb : xb;
    const int64_t ldin = xqb ? cols : ldxb;
    const size_t en = (size_t)b * (size_t)rows;
    const int64_t block = row_block(rows);
    double sum = 0.0;
    for (int64_t i0 = 0; i0 < rows; i0 += block) {
        const int64_t r = rows - i0 < block ? rows - i0 : block;
        dq_status st = prepare_rows(l, s, i0, r, g_gamma != NULL);
        if (st == DQ_OK)
            st = block_error(l, xb, ldxb, xqb, yb, b, i0, r, s, &sum);
        if (st != DQ_OK)
            return st;
        if (!g_gamma)
            continue;
        st = dq__sgemm(true, false, r, cols, b, (float)(2.0 / (double)en), s->err, r, xin, ldin,
                       0.0f, s->grad_w, cols);
        if (st != DQ_OK)
            return st;
        for (int64_t i = i0; i < i0 + r; i++)
            for (int64_t g = 0; g < l->groups; g++) {
                const size_t gi = (size_t)i * (size_t)l->groups + (size_t)g;
                const int64_t j0 = g * l->group_len;
                const int64_t len = cols - j0 < l->group_len ? cols - j0 : l->group_len;
                const size_t off = (size_t)(i - i0) * (size_t)cols + (size_t)j0;
                double gg, gb;
                group_gradient(l, l->w + (size_t)i * (size_t)l->ldw + (size_t)j0, s->grad_w + off,
                               s->dwds + off, len, l->gamma[gi], l->beta[gi], &gg, &gb);
                g_gamma[gi] = (float)gg;
                g_beta[gi] = (float)gb;
            }
    }
    *loss = sum / (double)en;
    return DQ_OK;
}

static void scratch_free(const dq_context *c, batch_scratch *s)
{
    dq__free(c, s->xb);
    dq__free(c, s->xqb);
    dq__free(c, s->yb);
    dq__free(c, s->err);
    dq__free(c, s->wq);
    dq__free(c, s->grad_w);
    dq__free(c, s->dwds);
}

/* Scratch for batches of up to cap tokens; gather: whether batches are copied out of x;
 * grad: whether gradients are computed (grad_w, dwds). */
static dq_status scratch_alloc(const dq_lwc *l, int64_t cap, bool gather, bool grad,
                               batch_scratch *s)
{
    memset(s, 0, sizeof *s);
    const dq_context *c = &l->ctx;
    const int64_t block = row_block(l->rows);
    const size_t xb = (size_t)cap * (size_t)l->cols * sizeof(float);
    const size_t yb = (size_t)cap * (size_t)l->rows * sizeof(float);
    const size_t eb = (size_t)cap * (size_t)block * sizeof(float);
    const size_t wb = (size_t)block * (size_t)l->cols * sizeof(float);
    bool ok = true;
    if (gather) {
        s->xb = dq__alloc(c, xb);
        ok = s->xb != NULL;
        if (ok && l->xq) {
            s->xqb = dq__alloc(c, xb);
            s->yb = dq__alloc(c, yb);
            ok = s->xqb && s->yb;
        }
    }
    if (ok) {
        s->err = dq__alloc(c, eb);
        s->wq = dq__alloc(c, wb);
        ok = s->err && s->wq;
    }
    if (ok && grad) {
        s->grad_w = dq__alloc(c, wb);
        s->dwds = dq__alloc(c, wb);
        ok = s->grad_w && s->dwds;
    }
    if (!ok) {
        scratch_free(c, s);
        return DQ_FAIL(c, DQ_ERR_NOMEM, "batch scratch of %lld tokens", (long long)cap);
    }
    return DQ_OK;
}

/* Full-batch loss at the current parameters: per block of rows, in chunks of the scratch's
 * cap tokens (the tokens are contiguous, so no gathering). */
static dq_status chunked_loss(const dq_lwc *l, batch_scratch *s, int64_t cap, double *loss)
{
    const int64_t block = row_block(l->rows);
    double sum = 0.0;
    for (int64_t i0 = 0; i0 < l->rows; i0 += block) {
        const int64_t r = l->rows - i0 < block ? l->rows - i0 : block;
        dq_status st = prepare_rows(l, s, i0, r, false);
        if (st != DQ_OK)
            return st;
        for (int64_t t0 = 0; t0 < l->tokens; t0 += cap) {
            const int64_t b = l->tokens - t0 < cap ? l->tokens - t0 : cap;
            const float *xq = l->xq ? l->xq + (size_t)t0 * (size_t)l->cols : NULL;
            const float *y = l->y ? l->y + (size_t)t0 * (size_t)l->rows : NULL;
            st = block_error(l, l->x + (size_t)t0 * (size_t)l->ldx, l->ldx, xq, y, b, i0, r, s,
                             &sum);
            if (st != DQ_OK)
                return st;
        }
    }
    *loss = sum / ((double)l->tokens * (double)l->rows);
    return DQ_OK;
}

DQ_API dq_status dq_lwc_loss(const dq_lwc *l, float *loss, float *g_gamma, float *g_beta,
                             int64_t n)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l || !loss)
        return DQ_FAIL(l ? &l->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !l ? "l" : "loss");
    if ((g_gamma || g_beta) && n != l->n)
        return DQ_FAIL(&l->ctx, DQ_ERR_SHAPE, "n %lld != %lld parameter groups", (long long)n,
                       (long long)l->n);
    /* The value is chunked_loss's, in the chunks training uses: the same sum, in the same
     * order, as the full-batch losses training records (dq_lwc_best), whether or not the
     * gradient is asked for; the gradient comes from one pass over all tokens. */
    const bool want_grad = g_gamma || g_beta;
    const int64_t cap = l->p.batch_tokens < l->tokens ? l->p.batch_tokens : l->tokens;
    batch_scratch s;
    dq_status st = scratch_alloc(l, want_grad ? l->tokens : cap, false, want_grad, &s);
    if (st != DQ_OK)
        return st;
    float *gg = NULL, *gb = NULL;
    if (want_grad) {
        gg = dq__alloc(&l->ctx, (size_t)l->n * sizeof(float));
        gb = dq__alloc(&l->ctx, (size_t)l->n * sizeof(float));
        if (!gg || !gb) {
            st = DQ_FAIL(&l->ctx, DQ_ERR_NOMEM, "gradients of %lld groups", (long long)l->n);
            goto out;
        }
        double unused;
        st = batch_loss(l, l->x, l->ldx, l->xq, l->y, l->tokens, &s, &unused, gg, gb);
        if (st != DQ_OK)
            goto out;
    }
    double value;
    st = chunked_loss(l, &s, cap, &value);
    if (st != DQ_OK)
        goto out;
    if (!isfinite((float)value) || (want_grad && (!all_finite(gg, l->n) ||
                                                  !all_finite(gb, l->n)))) {
        st = DQ_FAIL(&l->ctx, DQ_ERR_NONFINITE, "%s is not finite (the error products "
                     "overflow float)", !isfinite((float)value) ? "the loss" : "a gradient");
        goto out;
    }
    *loss = (float)value;
    if (g_gamma)
        memcpy(g_gamma, gg, (size_t)l->n * sizeof(float));
    if (g_beta)
        memcpy(g_beta, gb, (size_t)l->n * sizeof(float));
out:
    dq__free(&l->ctx, gg);
    dq__free(&l->ctx, gb);
    scratch_free(&l->ctx, &s);
    return st;
}

/* The token order of every epoch depends only on the seed and the epoch's number, so training
 * in several calls visits the same batches as one long call. */
static void shuffle_tokens(int64_t *order, int64_t n, uint64_t seed, int32_t epoch)
{
    uint64_t state = dq__random_stream(seed, (uint64_t)epoch);
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t k = (int64_t)(dq__splitmix64(&state) % (uint64_t)(i + 1));
        const int64_t t = order[i];
        order[i] = order[k];
        order[k] = t;
    }
}

static void adam_update(float *param, float *m, float *v, const float *grad, int64_t n,
                        double lr, int64_t step)
{
    const double c1 = 1.0 - pow(ADAM_BETA1, (double)step);
    const double c2 = 1.0 - pow(ADAM_BETA2, (double)step);
    for (int64_t i = 0; i < n; i++) {
        const double g = grad[i];
        const double mi = ADAM_BETA1 * (double)m[i] + (1.0 - ADAM_BETA1) * g;
        const double vi = ADAM_BETA2 * (double)v[i] + (1.0 - ADAM_BETA2) * g * g;
        m[i] = (float)mi;
        v[i] = (float)vi;
        param[i] = (float)((double)param[i] - lr * (mi / c1) / (sqrt(vi / c2) + ADAM_EPS));
    }
}

/* Parameters and Adam state, saved at the start of an epoch to undo a diverging one. */
typedef struct lwc_snapshot {
    float *buf; /* 6 * n */
    int64_t adam_steps;
} lwc_snapshot;

static void snapshot_copy(dq_lwc *l, lwc_snapshot *s, bool save)
{
    float *state[] = {l->gamma, l->beta, l->m_gamma, l->v_gamma, l->m_beta, l->v_beta};
    const size_t bytes = (size_t)l->n * sizeof(float);
    for (size_t k = 0; k < 6; k++) {
        float *saved = s->buf + k * (size_t)l->n;
        if (save)
            memcpy(saved, state[k], bytes);
        else
            memcpy(state[k], saved, bytes);
    }
    if (save)
        s->adam_steps = l->adam_steps;
    else
        l->adam_steps = s->adam_steps;
}

DQ_API dq_status dq_lwc_train(dq_lwc *l, float *last_loss)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "l is NULL");
    const dq_context *c = &l->ctx;
    const int64_t cap = l->p.batch_tokens < l->tokens ? l->p.batch_tokens : l->tokens;
    batch_scratch s;
    dq_status st = scratch_alloc(l, cap, true, true, &s);
    if (st != DQ_OK)
        return st;
    int64_t *order = dq__alloc(c, (size_t)l->tokens * sizeof(int64_t));
    float *grads = dq__alloc(c, 2 * (size_t)l->n * sizeof(float));
    lwc_snapshot snap = {dq__alloc(c, 6 * (size_t)l->n * sizeof(float)), 0};
    if (!order || !grads || !snap.buf) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "training state of %lld tokens, %lld groups",
                     (long long)l->tokens, (long long)l->n);
        goto out;
    }
    float *g_gamma = grads, *g_beta = grads + l->n;
    const int64_t rows = l->rows, cols = l->cols;
    const size_t param_bytes = (size_t)l->n * sizeof(float);
    if (!l->best_valid) {
        double start;
        if ((st = chunked_loss(l, &s, cap, &start)) != DQ_OK)
            goto out;
        if (!isfinite((float)start)) {
            st = DQ_FAIL(c, DQ_ERR_NONFINITE, "loss at the starting parameters is %g", start);
            goto out;
        }
        memcpy(l->best_gamma, l->gamma, param_bytes);
        memcpy(l->best_beta, l->beta, param_bytes);
        l->best_loss = start;
        l->best_valid = true;
    }
    for (int32_t e = 0; e < l->p.epochs; e++) {
        snapshot_copy(l, &snap, true);
        shuffle_tokens(order, l->tokens, l->p.seed, l->epochs_done);
        double epoch_sum = 0.0;
        for (int64_t t0 = 0; t0 < l->tokens; t0 += cap) {
            const int64_t b = l->tokens - t0 < cap ? l->tokens - t0 : cap;
            for (int64_t k = 0; k < b; k++) {
                const size_t src = (size_t)order[t0 + k];
                memcpy(s.xb + (size_t)k * (size_t)cols, l->x + src * (size_t)l->ldx,
                       (size_t)cols * sizeof(float));
                if (l->xq) {
                    memcpy(s.xqb + (size_t)k * (size_t)cols, l->xq + src * (size_t)cols,
                           (size_t)cols * sizeof(float));
                    memcpy(s.yb + (size_t)k * (size_t)rows, l->y + src * (size_t)rows,
                           (size_t)rows * sizeof(float));
                }
            }
            double loss;
            st = batch_loss(l, s.xb, cols, s.xqb, s.yb, b, &s, &loss, g_gamma, g_beta);
            if (st == DQ_OK &&
                (!isfinite((float)loss) || !all_finite(grads, 2 * l->n)))
                st = DQ_FAIL(c, DQ_ERR_NONFINITE, "epoch %d, batch at token %lld: %s is not "
                             "finite (parameters restored)", (int)l->epochs_done + 1,
                             (long long)t0, !isfinite((float)loss) ? "loss" : "a gradient");
            if (st != DQ_OK) {
                snapshot_copy(l, &snap, false);
                goto out;
            }
            epoch_sum += loss * (double)b;
            l->adam_steps++;
            adam_update(l->gamma, l->m_gamma, l->v_gamma, g_gamma, l->n, l->p.learning_rate,
                        l->adam_steps);
            adam_update(l->beta, l->m_beta, l->v_beta, g_beta, l->n, l->p.learning_rate,
                        l->adam_steps);
        }
        double full;
        st = chunked_loss(l, &s, cap, &full);
        if (st == DQ_OK && !isfinite((float)full))
            st = DQ_FAIL(c, DQ_ERR_NONFINITE, "epoch %d: full-batch loss %g (parameters "
                         "restored)", (int)l->epochs_done + 1, full);
        if (st != DQ_OK) {
            snapshot_copy(l, &snap, false);
            goto out;
        }
        if (full < l->best_loss) {
            memcpy(l->best_gamma, l->gamma, param_bytes);
            memcpy(l->best_beta, l->beta, param_bytes);
            l->best_loss = full;
        }
        const float epoch_loss = (float)(epoch_sum / (double)l->tokens);
        l->epochs_done++;
        if (last_loss)
            *last_loss = epoch_loss;
        dq__log(c, DQ_LOG_INFO, "lwc epoch %d: mean training loss %.9g, full-batch %.9g",
                (int)l->epochs_done, (double)epoch_loss, full);
        if (l->p.on_epoch && l->p.on_epoch(l->p.on_epoch_user, l->epochs_done, epoch_loss) != 0)
            break;
    }
out:
    dq__free(c, order);
    dq__free(c, grads);
    dq__free(c, snap.buf);
    scratch_free(c, &s);
    return st;
}

DQ_API dq_status dq_lwc_layout(const dq_lwc *l, int64_t *n_groups, int32_t *epochs_done)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "l is NULL");
    if (n_groups)
        *n_groups = l->n;
    if (epochs_done)
        *epochs_done = l->epochs_done;
    return DQ_OK;
}

DQ_API dq_status dq_lwc_get_params(const dq_lwc *l, float *gamma, float *beta, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "l is NULL");
    if (n != l->n)
        return DQ_FAIL(&l->ctx, DQ_ERR_SHAPE, "n %lld != %lld parameter groups", (long long)n,
                       (long long)l->n);
    if (gamma)
        memcpy(gamma, l->gamma, (size_t)n * sizeof(float));
    if (beta)
        memcpy(beta, l->beta, (size_t)n * sizeof(float));
    return DQ_OK;
}

DQ_API dq_status dq_lwc_set_params(dq_lwc *l, const float *gamma, const float *beta, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l || !gamma || !beta)
        return DQ_FAIL(l ? &l->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !l ? "l" : !gamma ? "gamma" : "beta");
    if (n != l->n)
        return DQ_FAIL(&l->ctx, DQ_ERR_SHAPE, "n %lld != %lld parameter groups", (long long)n,
                       (long long)l->n);
    if (!all_finite(gamma, n) || !all_finite(beta, n))
        return DQ_FAIL(&l->ctx, DQ_ERR_NONFINITE, "%s has a non-finite element",
                       !all_finite(gamma, n) ? "gamma" : "beta");
    memcpy(l->gamma, gamma, (size_t)n * sizeof(float));
    memcpy(l->beta, beta, (size_t)n * sizeof(float));
    reset_adam(l);
    l->best_valid = false;
    return DQ_OK;
}

DQ_API dq_status dq_lwc_factors(const dq_lwc *l, float *clip_hi, float *clip_lo, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l || (!clip_hi && !clip_lo))
        return DQ_FAIL(l ? &l->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !l ? "l" : "clip_hi and clip_lo are both");
    if (n != l->n)
        return DQ_FAIL(&l->ctx, DQ_ERR_SHAPE, "n %lld != %lld parameter groups", (long long)n,
                       (long long)l->n);
    const float *gamma = l->best_valid ? l->best_gamma : l->gamma;
    const float *beta = l->best_valid ? l->best_beta : l->beta;
    for (int64_t i = 0; i < n; i++) {
        if (clip_hi)
            clip_hi[i] = sigmoid(gamma[i]);
        if (clip_lo)
            clip_lo[i] = sigmoid(beta[i]);
    }
    return DQ_OK;
}

DQ_API dq_status dq_lwc_best(const dq_lwc *l, float *gamma, float *beta, int64_t n, float *loss)
{
    DQ_CHECK_HANDLE(NULL, l, DQ__H_LWC, "l");
    if (!l)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "l is NULL");
    if ((gamma || beta) && n != l->n)
        return DQ_FAIL(&l->ctx, DQ_ERR_SHAPE, "n %lld != %lld parameter groups", (long long)n,
                       (long long)l->n);
    if (!l->best_valid) {
        if (loss) {
            dq_status st = dq_lwc_loss(l, loss, NULL, NULL, 0);
            if (st != DQ_OK)
                return st;
        }
        return dq_lwc_get_params(l, gamma, beta, l->n);
    }
    if (gamma)
        memcpy(gamma, l->best_gamma, (size_t)n * sizeof(float));
    if (beta)
        memcpy(beta, l->best_beta, (size_t)n * sizeof(float));
    if (loss)
        *loss = (float)l->best_loss;
    return DQ_OK;
}
