/* Rotation refinement after the search: DFRot's weighted Procrustes alternation and
 * DartQuant's whip loss with a QR parametrisation (duquant.h states both objectives). Each
 * matrix of the start rotation is refined on the block rows it multiplies; every iterate is
 * scored and the best one, the start included, is returned. */
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_random.h"
#include "dq_refine.h"

/* The first released layout ends after act_clip_ratio. */
#define REFINE_PARAMS_MIN_SIZE (offsetof(dq_refine_params, act_clip_ratio) + sizeof(float))
#define MAX_ITERATIONS 100000
#define MAX_WEIGHT_EXPONENT 16.0f

#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define ADAM_EPS 1e-8

DQ_API dq_status dq_refine_params_init(dq_refine_params *p, size_t struct_size)
{
    const dq_refine_params defaults = {
        .struct_size = sizeof defaults,
        .method = DQ_REFINE_DFROT,
        .iterations = 20,
        .learning_rate = 1e-3f,
        .weight_exponent = 1.0f,
        .act_bits = 4,
        .act_scheme = DQ_QUANT_ASYM,
        .act_clip_ratio = 1.0f,
    };
    return dq__params_init(p, struct_size, REFINE_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

dq_status dq__refine_read(const dq_refine_params *user, dq__refine_opts *o)
{
    return dq__refine_read_at(NULL, "dq__refine_read", user, o);
}

dq_status dq__refine_read_at(const dq_context *ctx, const char *func,
                             const dq_refine_params *user, dq__refine_opts *o)
{
    dq_refine_params p;
    dq_refine_params_init(&p, sizeof p);
    dq_status st = dq__params_read_at(ctx, func, "p", &p, sizeof p, REFINE_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    const char *bad = p.flags != 0 ? "flags (expected 0)"
                      : p.method < DQ_REFINE_NONE || p.method > DQ_REFINE_DARTQUANT
                          ? "method (expected a DQ_REFINE_* value)"
                      : p.iterations < 0 || p.iterations > MAX_ITERATIONS
                          ? "iterations (expected [0, MAX_ITERATIONS])"
                      : !(isfinite(p.learning_rate) && p.learning_rate > 0.0f)
                          ? "learning_rate (expected finite > 0)"
                      : !(p.weight_exponent >= 0.0f && p.weight_exponent <= MAX_WEIGHT_EXPONENT)
                          ? "weight_exponent (expected [0, max])"
                      : p.batch_rows < 0                     ? "batch_rows (expected >= 0)"
                      : (p.act_bits != 4 && p.act_bits != 8) ? "act_bits (expected 4 or 8)"
                      : (p.act_scheme != DQ_QUANT_ASYM && p.act_scheme != DQ_QUANT_SYM)
                          ? "act_scheme (expected DQ_QUANT_ASYM or DQ_QUANT_SYM)"
                      : !(p.act_clip_ratio > 0.0f && p.act_clip_ratio <= 1.0f)
                          ? "act_clip_ratio (expected (0, 1])"
                          : NULL;
    if (bad)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "p->%s; given flags 0x%x, method %d, iterations %d, learning_rate %g, "
                        "weight_exponent %g, batch_rows %lld, act_bits %d, act_scheme %d, "
                        "act_clip_ratio %g",
                        bad, (unsigned)p.flags, (int)p.method, (int)p.iterations,
                        (double)p.learning_rate, (double)p.weight_exponent,
                        (long long)p.batch_rows, (int)p.act_bits, (int)p.act_scheme,
                        (double)p.act_clip_ratio);
    *o = (dq__refine_opts){
        .method = p.method,
        .iterations = p.iterations,
        .learning_rate = p.learning_rate,
        .weight_exponent = p.weight_exponent,
        .batch_rows = p.batch_rows,
        .act_bits = p.act_bits,
        .act_scheme = p.act_scheme,
        .act_clip_ratio = p.act_clip_ratio,
        .seed = p.seed,
    };
    return DQ_OK;
}

/* ---- shared pieces ---- */

/* Blocks multiplied by matrix m: their count, and their indices into blocks (n_blocks
 * entries). */
static int64_t list_matrix_blocks(const dq_rotation *r, int64_t m, int64_t *blocks)
{
    int64_t nb = 0;
    for (int64_t b = 0; b < r->n_blocks; b++)
        if (r->mat_of_block[b] == m)
            blocks[nb++] = b;
    return nb;
}

/* The block rows of matrix m: row t * nb + i of v (n wide) is token t of block blocks[i]. */
static void gather_view(const dq_rotation *r, const float *x, int64_t rows, int64_t ldx,
                        const int64_t *blocks, int64_t nb, int32_t n, float *v)
{
    for (int64_t t = 0; t < rows; t++)
        for (int64_t i = 0; i < nb; i++)
            memcpy(v + ((size_t)t * (size_t)nb + (size_t)i) * (size_t)n,
                   x + (size_t)t * (size_t)ldx + (size_t)blocks[i] * (size_t)r->block_size,
                   (size_t)n * sizeof(float));
}

static float *matrix_ptr(const dq_rotation *r, int64_t m)
{
    return r->data + r->mat_offset[m];
}

/* Largest number of block rows any matrix has (rows * its block count). */
static int64_t max_view_rows(const dq_rotation *r, int64_t rows, int64_t *blocks)
{
    int64_t most = 0;
    for (int64_t m = 0; m < r->n_mats; m++) {
        int64_t nb = list_matrix_blocks(r, m, blocks);
        most = nb > most ? nb : most;
    }
    return most * rows;
}

/* c (n x n, double) = a (n x n) * b (n x n), all row-major double. */
static void matmul_d(int32_t n, const double *a, const double *b, double *c)
{
    memset(c, 0, (size_t)n * (size_t)n * sizeof(double));
    for (int32_t i = 0; i < n; i++)
        for (int32_t k = 0; k < n; k++) {
            const double f = a[(size_t)i * (size_t)n + (size_t)k];
            const double *bk = b + (size_t)k * (size_t)n;
            double *ci = c + (size_t)i * (size_t)n;
            for (int32_t j = 0; j < n; j++)
                ci[j] += f * bk[j];
        }
}

/* ---- DFRot ---- */

/* Weighted quantization residual of y (rows x cols) against the per-token quantizer into
 * *obj; target receives Q(y). DQ_ERR_NONFINITE when a token's scale or zero point, or the
 * residual, is not finite (finite activations whose rotated range overflows float). */
static dq_status dfrot_objective(const dq_context *ctx, const dq__refine_opts *o, const float *y,
                                 int64_t rows, int64_t cols, const float *w, float *target,
                                 int32_t it, double *obj)
{
    const dq__qspec q = {o->act_bits, o->act_scheme};
    double total = 0.0;
    for (int64_t t = 0; t < rows; t++) {
        const float *yt = y + (size_t)t * (size_t)cols;
        float *qt = target + (size_t)t * (size_t)cols;
        float scale, zero;
        dq__quant_params(q, yt, cols, o->act_clip_ratio, o->act_clip_ratio, &scale, &zero);
        if (!isfinite(scale) || !isfinite(zero))
            return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "dfrot iteration %d: token %lld of the rotated "
                           "x has scale %g, zero point %g (its range overflows float)", (int)it,
                           (long long)t, (double)scale, (double)zero);
        double row = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            qt[j] = dq__dequant(q, dq__quant_code(q, yt[j], scale, zero), scale, zero);
            const double d = (double)yt[j] - (double)qt[j];
            row += d * d;
        }
        total += (double)w[t] * row;
    }
    if (!isfinite(total))
        return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "dfrot iteration %d: weighted quantization error "
                       "%g", (int)it, total);
    *obj = total;
    return DQ_OK;
}

static dq_status refine_dfrot(const dq_context *ctx, const dq__refine_opts *o, dq_rotation *r,
                              const float *x, int64_t rows, int64_t cols, int64_t ldx)
{
    const size_t rc = (size_t)rows * (size_t)cols, nf = dq__rotation_floats(r);
    const int32_t bs = r->block_size;
    int64_t *blocks = dq__alloc(ctx, (size_t)r->n_blocks * sizeof(int64_t));
    float *w = dq__alloc(ctx, (size_t)rows * sizeof(float));
    float *y = dq__alloc(ctx, rc * sizeof(float));
    float *target = dq__alloc(ctx, rc * sizeof(float));
    float *view = dq__alloc(ctx, rc * sizeof(float)); /* a matrix's block rows, transposed */
    float *tview = dq__alloc(ctx, rc * sizeof(float));
    float *best = dq__alloc(ctx, nf * sizeof(float));
    float *mf = dq__alloc(ctx, (size_t)bs * (size_t)bs * sizeof(float));
    double *md = dq__alloc(ctx, 2 * (size_t)bs * (size_t)bs * sizeof(double));
    dq_status st = DQ_ERR_NOMEM;
    if (!blocks || !w || !y || !target || !view || !tview || !best || !mf || !md) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "dfrot workspace of %zu floats", rc);
        goto out;
    }

    /* Token weights from whole-row norms, which no rotation changes. */
    double mean = 0.0;
    for (int64_t t = 0; t < rows; t++) {
        double s = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            const double v = x[(size_t)t * (size_t)ldx + (size_t)j];
            s += v * v;
        }
        w[t] = (float)sqrt(s);
        mean += sqrt(s);
    }
    mean /= (double)rows;
    for (int64_t t = 0; t < rows; t++)
        w[t] = mean > 0.0 ? (float)pow((double)w[t] / mean, (double)o->weight_exponent) : 1.0f;

    double best_obj = 0.0;
    for (int32_t it = 0;; it++) {
        if ((st = dq__rotation_rows_exact(r, x, ldx, y, cols, rows, ctx)) != DQ_OK)
            goto out;
        double obj = 0.0;
        if ((st = dfrot_objective(ctx, o, y, rows, cols, w, target, it, &obj)) != DQ_OK)
            goto out;
        dq__log(ctx, DQ_LOG_INFO, "dfrot iteration %d: weighted quantization error %.9g", it,
                obj);
        if (it == 0 || obj < best_obj) {
            best_obj = obj;
            memcpy(best, r->data, nf * sizeof(float));
        }
        if (it == o->iterations)
            break;
        /* Procrustes step per matrix against the fixed targets. */
        bool failed = false;
        for (int64_t m = 0; m < r->n_mats; m++) {
            const int32_t n = r->mat_size[m];
            if (n < 2)
                continue;
            const int64_t nb = list_matrix_blocks(r, m, blocks), k = rows * nb;
            /* view: weighted x block rows transposed (n x k); tview: target block rows. */
            gather_view(r, target, rows, cols, blocks, nb, n, tview);
            gather_view(r, x, rows, ldx, blocks, nb, n, y); /* y is free until the next pass */
            for (int64_t i = 0; i < k; i++) {
                const float f = w[i / nb];
                for (int32_t j = 0; j < n; j++)
                    view[(size_t)j * (size_t)k + (size_t)i] =
                        f * y[(size_t)i * (size_t)n + (size_t)j];
            }
            dq__block_product(view, k, n, (int32_t)k, tview, n, n, mf, n);
            for (size_t i = 0; i < (size_t)n * (size_t)n; i++)
                md[i] = mf[i];
            st = dq__lapack_polar(ctx, n, md, md + (size_t)n * (size_t)n);
            if (st == DQ_ERR_NOMEM)
                goto out;
            if (st != DQ_OK) {
                dq__log(ctx, DQ_LOG_WARN, "dfrot: SVD failed at iteration %d; stopping", it);
                failed = true;
                break;
            }
            float *dst = matrix_ptr(r, m);
            for (size_t i = 0; i < (size_t)n * (size_t)n; i++)
                dst[i] = (float)md[(size_t)n * (size_t)n + i];
        }
        if (failed)
            break;
    }
    memcpy(r->data, best, nf * sizeof(float));
    st = DQ_OK;
out:
    dq__free(ctx, blocks);
    dq__free(ctx, w);
    dq__free(ctx, y);
    dq__free(ctx, target);
    dq__free(ctx, view);
    dq__free(ctx, tview);
    dq__free(ctx, best);
    dq__free(ctx, mf);
    dq__free(ctx, md);
    return st;
}

/* ---- DartQuant ---- */

/* Per-matrix optimiser state; doubles are n x n row-major. */
typedef struct dart_state {
    int32_t n;
    int64_t k;     /* block rows */
    float *v;      /* k x n block rows of the sample */
    float *inv;    /* k: 1 / rms of each block row, 0 for a zero row */
    double *z, *q, *t, *m1, *m2;
    float *best;   /* n x n */
    double best_loss;
    bool active;   /* false once a factorization failed */
} dart_state;

/* Whip loss of y = v q (k rows) and, when grad is not NULL, dLoss/dy for the rows listed in
 * pick (n_pick of them; NULL = all) written to grad in pick order, scaled for their mean. */
static double whip_loss(const dart_state *d, const float *y, const int64_t *pick, int64_t n_pick,
                        float *grad)
{
    double loss = 0.0;
    for (int64_t i = 0; i < d->k; i++) {
        const float *yi = y + (size_t)i * (size_t)d->n;
        double row = 0.0;
        for (int32_t j = 0; j < d->n; j++)
            row += exp(-fabs((double)yi[j]) * (double)d->inv[i]);
        loss += row;
    }
    if (grad)
        for (int64_t p = 0; p < n_pick; p++) {
            const int64_t i = pick ? pick[p] : p;
            const float *yi = y + (size_t)i * (size_t)d->n;
            const double s = (double)d->inv[i];
            for (int32_t j = 0; j < d->n; j++) {
                const double e = exp(-fabs((double)yi[j]) * s) * s / (double)n_pick;
                grad[(size_t)p * (size_t)d->n + (size_t)j] =
                    (float)(yi[j] > 0.0f ? -e : (yi[j] < 0.0f ? e : 0.0));
            }
        }
    return loss / (double)d->k;
}

/* dL/dZ for Z = q t from g = dL/dq: q tril(q^T g - g^T q, -1) t^-T; g is overwritten. */
static dq_status qr_backward(int32_t n, const double *q, const double *t, double *g, double *tmp)
{
    const size_t nn = (size_t)n * (size_t)n;
    double *nmat = tmp, *s = tmp + nn;
    memset(nmat, 0, nn * sizeof(double));
    for (int32_t k = 0; k < n; k++) /* nmat = q^T g */
        for (int32_t i = 0; i < n; i++) {
            const double f = q[(size_t)k * (size_t)n + (size_t)i];
            const double *gk = g + (size_t)k * (size_t)n;
            double *ni = nmat + (size_t)i * (size_t)n;
            for (int32_t j = 0; j < n; j++)
                ni[j] += f * gk[j];
        }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            s[(size_t)i * (size_t)n + (size_t)j] =
                j < i ? nmat[(size_t)i * (size_t)n + (size_t)j] -
                            nmat[(size_t)j * (size_t)n + (size_t)i]
                      : 0.0;
    matmul_d(n, q, s, g);
    return dq__lapack_solve_tt(n, t, g);
}

/* One gradient step of one matrix; y holds v q for all rows. */
static dq_status dart_step(const dq_context *ctx, const dq__refine_opts *o, dart_state *d,
                           int32_t it, const float *y, const int64_t *pick, int64_t n_pick,
                           float *gy, float *vt, float *gf, double *work)
{
    const int32_t n = d->n;
    const size_t nn = (size_t)n * (size_t)n;
    whip_loss(d, y, pick, n_pick, gy);
    /* dL/dq = v_pick^T gy. */
    for (int64_t p = 0; p < n_pick; p++) {
        const int64_t i = pick ? pick[p] : p;
        for (int32_t j = 0; j < n; j++)
            vt[(size_t)j * (size_t)n_pick + (size_t)p] = d->v[(size_t)i * (size_t)n + (size_t)j];
    }
    dq__block_product(vt, n_pick, n, (int32_t)n_pick, gy, n, n, gf, n);
    double *g = work, *tmp = work + nn;
    for (size_t i = 0; i < nn; i++)
        g[i] = gf[i];
    dq_status st = qr_backward(n, d->q, d->t, g, tmp);
    if (st != DQ_OK)
        return st;
    const double b1 = 1.0 - pow(ADAM_BETA1, it + 1), b2 = 1.0 - pow(ADAM_BETA2, it + 1);
    for (size_t i = 0; i < nn; i++) {
        d->m1[i] = ADAM_BETA1 * d->m1[i] + (1.0 - ADAM_BETA1) * g[i];
        d->m2[i] = ADAM_BETA2 * d->m2[i] + (1.0 - ADAM_BETA2) * g[i] * g[i];
        d->z[i] -= (double)o->learning_rate * (d->m1[i] / b1) / (sqrt(d->m2[i] / b2) + ADAM_EPS);
    }
    return dq__lapack_qr(ctx, n, d->z, d->q, d->t);
}

static void dart_free(const dq_context *ctx, dart_state *d, int64_t n_mats)
{
    if (!d)
        return;
    for (int64_t m = 0; m < n_mats; m++) {
        dq__free(ctx, d[m].v);
        dq__free(ctx, d[m].inv);
        dq__free(ctx, d[m].z);
        dq__free(ctx, d[m].best);
    }
    dq__free(ctx, d);
}

static dq_status refine_dartquant(const dq_context *ctx, const dq__refine_opts *o,
                                  dq_rotation *r, const float *x, int64_t rows, int64_t ldx,
                                  uint64_t stream)
{
    const int32_t bs = r->block_size;
    const size_t bsq = (size_t)bs * (size_t)bs;
    dart_state *d = dq__calloc(ctx, (size_t)r->n_mats, sizeof *d);
    int64_t *blocks = dq__alloc(ctx, (size_t)r->n_blocks * sizeof(int64_t));
    dq_status st = DQ_ERR_NOMEM;
    if (!d || !blocks) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "dartquant state of %lld matrices", (long long)r->n_mats);
        goto out_early;
    }
    const int64_t kmax = max_view_rows(r, rows, blocks);
    const int64_t batch = o->batch_rows > 0 && o->batch_rows < kmax ? o->batch_rows : kmax;
    float *y = dq__alloc(ctx, (size_t)kmax * (size_t)bs * sizeof(float));
    float *gy = dq__alloc(ctx, (size_t)batch * (size_t)bs * sizeof(float));
    float *vt = dq__alloc(ctx, (size_t)batch * (size_t)bs * sizeof(float));
    float *qf = dq__alloc(ctx, bsq * sizeof(float));
    float *gf = dq__alloc(ctx, bsq * sizeof(float));
    double *work = dq__alloc(ctx, 3 * bsq * sizeof(double));
    int64_t *order = o->batch_rows > 0 ? dq__alloc(ctx, (size_t)kmax * sizeof(int64_t)) : NULL;
    if (!y || !gy || !vt || !qf || !gf || !work || (o->batch_rows > 0 && !order)) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "dartquant workspace of %lld rows x %d", (long long)kmax,
                     (int)bs);
        goto out;
    }
    for (int64_t m = 0; m < r->n_mats; m++) {
        dart_state *s = &d[m];
        const int32_t n = r->mat_size[m];
        const size_t nn = (size_t)n * (size_t)n;
        const int64_t nb = list_matrix_blocks(r, m, blocks);
        s->n = n;
        s->k = rows * nb;
        s->active = n > 1;
        if (!s->active)
            continue;
        s->v = dq__alloc(ctx, (size_t)s->k * (size_t)n * sizeof(float));
        s->inv = dq__alloc(ctx, (size_t)s->k * sizeof(float));
        s->z = dq__calloc(ctx, 5 * nn, sizeof(double)); /* z, q, t, m1, m2 */
        s->best = dq__alloc(ctx, nn * sizeof(float));
        if (!s->v || !s->inv || !s->z || !s->best) {
            st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "dartquant state of matrix %lld (%lld x %d)",
                         (long long)m, (long long)s->k, (int)n);
            goto out;
        }
        s->q = s->z + nn;
        s->t = s->q + nn;
        s->m1 = s->t + nn;
        s->m2 = s->m1 + nn;
        gather_view(r, x, rows, ldx, blocks, nb, n, s->v);
        for (int64_t i = 0; i < s->k; i++) {
            double sq = 0.0;
            for (int32_t j = 0; j < n; j++) {
                const double v = s->v[(size_t)i * (size_t)n + (size_t)j];
                sq += v * v;
            }
            s->inv[i] = sq > 0.0 ? (float)(1.0 / sqrt(sq / (double)n)) : 0.0f;
        }
        /* Z = start, so q = start and t = I exactly (the start is orthogonal). */
        const float *r0 = matrix_ptr(r, m);
        for (size_t i = 0; i < nn; i++)
            s->z[i] = s->q[i] = r0[i];
        for (int32_t i = 0; i < n; i++)
            s->t[(size_t)i * (size_t)n + (size_t)i] = 1.0;
        memcpy(s->best, r0, nn * sizeof(float));
    }

    uint64_t rng = dq__seed_mix(o->seed, stream);
    for (int32_t it = 0;; it++) {
        double total = 0.0;
        for (int64_t m = 0; m < r->n_mats; m++) {
            dart_state *s = &d[m];
            if (s->n < 2)
                continue;
            const size_t nn = (size_t)s->n * (size_t)s->n;
            for (size_t i = 0; i < nn; i++)
                qf[i] = (float)s->q[i];
            dq__block_product(s->v, s->n, s->k, s->n, qf, s->n, s->n, y, s->n);
            const double loss = whip_loss(s, y, NULL, 0, NULL);
            if (!isfinite(loss)) {
                st = DQ_FAIL(ctx, DQ_ERR_NONFINITE, "dartquant iteration %d, matrix %lld: whip "
                             "loss %g", (int)it, (long long)m, loss);
                goto out;
            }
            total += loss;
            if (it == 0 || loss < s->best_loss) {
                s->best_loss = loss;
                memcpy(s->best, qf, nn * sizeof(float));
            }
            if (it == o->iterations || !s->active)
                continue;
            int64_t n_pick = s->k;
            const int64_t *pick = NULL;
            if (order && o->batch_rows < s->k) { /* partial Fisher-Yates: a fresh draw */
                for (int64_t i = 0; i < s->k; i++)
                    order[i] = i;
                n_pick = o->batch_rows;
                for (int64_t i = 0; i < n_pick; i++) {
                    int64_t j = i + (int64_t)(dq__splitmix64(&rng) % (uint64_t)(s->k - i));
                    int64_t tmp = order[i];
                    order[i] = order[j];
                    order[j] = tmp;
                }
                pick = order;
            }
            st = dart_step(ctx, o, s, it, y, pick, n_pick, gy, vt, gf, work);
            if (st == DQ_ERR_NOMEM)
                goto out;
            if (st != DQ_OK) {
                dq__log(ctx, DQ_LOG_WARN,
                        "dartquant: factorization failed for matrix %lld at iteration %d; "
                        "keeping its best iterate",
                        (long long)m, it);
                s->active = false;
            }
        }
        dq__log(ctx, DQ_LOG_INFO, "dartquant iteration %d: whip loss %.9g", it, total);
        if (it == o->iterations)
            break;
    }
    for (int64_t m = 0; m < r->n_mats; m++)
        if (d[m].n > 1)
            memcpy(matrix_ptr(r, m), d[m].best, (size_t)d[m].n * (size_t)d[m].n * sizeof(float));
    st = DQ_OK;
out:
    dq__free(ctx, y);
    dq__free(ctx, gy);
    dq__free(ctx, vt);
    dq__free(ctx, qf);
    dq__free(ctx, gf);
    dq__free(ctx, work);
    dq__free(ctx, order);
out_early:
    dart_free(ctx, d, r->n_mats);
    dq__free(ctx, blocks);
    return st;
}

/* ---- entry points ---- */

dq_status dq__rotation_refine(const dq_context *ctx, const dq__refine_opts *o,
                              const dq_rotation *start, const float *x, int64_t rows,
                              int64_t cols, int64_t ldx, uint64_t stream, dq_rotation **out)
{
    *out = NULL;
    ctx = dq__ctx(ctx);
    /* Sizes: the working buffers hold rows x cols floats, the products take int32 depths. */
    size_t rc;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &rc) || !dq__mul_size(rc, sizeof(double), &rc))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "rows %lld x cols %lld overflow size_t",
                       (long long)rows, (long long)cols);
    int64_t most = 0;
    for (int64_t m = 0; m < start->n_mats; m++) {
        int64_t nb = 0;
        for (int64_t b = 0; b < start->n_blocks; b++)
            nb += start->mat_of_block[b] == m;
        most = nb > most ? nb : most;
    }
    if (rows > INT32_MAX / most)
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "rows %lld x %lld blocks per matrix exceed INT32_MAX",
                       (long long)rows, (long long)most);

    dq_rotation *r;
    dq_status st = dq__rotation_clone(ctx, start, &r);
    if (st != DQ_OK)
        return st;
    if (o->method == DQ_REFINE_DFROT)
        st = refine_dfrot(ctx, o, r, x, rows, cols, ldx);
    else if (o->method == DQ_REFINE_DARTQUANT)
        st = refine_dartquant(ctx, o, r, x, rows, ldx, stream);
    if (st == DQ_OK && !dq__all_finite(r->data, 1, (int64_t)dq__rotation_floats(r),
                                       (int64_t)dq__rotation_floats(r)))
        st = DQ_FAIL(ctx, DQ_ERR_NONFINITE, "a refined rotation matrix has a non-finite "
                     "element");
    if (st != DQ_OK) {
        dq_rotation_free(r);
        return st;
    }
    /* A changed matrix no longer is the product its search recorded. */
    for (int64_t m = 0; m < r->n_mats; m++) {
        const size_t nn = (size_t)r->mat_size[m] * (size_t)r->mat_size[m];
        if (memcmp(matrix_ptr(r, m), matrix_ptr(start, m), nn * sizeof(float)) != 0)
            r->selected[m] = -1;
    }
    *out = r;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_refine(dq_context *ctx, const dq_refine_params *p,
                                    const dq_rotation *start, const float *x, int64_t rows,
                                    int64_t cols, int64_t ldx, dq_rotation **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, start, DQ__H_ROTATION, "start", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq__refine_opts o;
    dq_status st = dq__refine_read_at(ctx, __func__, p, &o);
    if (st != DQ_OK)
        return st;
    if (!start)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "start is NULL");
    if ((st = dq__check_matrix(ctx, "x", x, rows, cols, ldx)) != DQ_OK)
        return st;
    if (cols != start->cols)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "x: cols %lld != rotation width %lld", (long long)cols,
                       (long long)start->cols);
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "x has a non-finite element");
    return dq__rotation_refine(ctx, &o, start, x, rows, cols, ldx, 0, out);
}
