/* The greedy rotation search: the plain search over every row of the view, and an exact
 * pruned search that multiplies only the rows that can hold an extreme.
 *
 * Why pruning is exact. Each step multiplies the view by an (almost) orthogonal matrix, so a
 * row's L2 norm stays (almost) what it was, and no entry of a row exceeds its norm. A row whose
 * norm bound is below both |max| and |min| of the rows already searched can therefore hold
 * neither extreme. Rows are independent and the block product gives the same bits for any set
 * of rows, so the searched rows carry exactly the plain search's values: every recorded id,
 * column and peak, and the product of the kept prefix, are bit for bit the plain search's.
 *
 * The norm bound covers float rounding rigorously. For one step y = fl(v R), R = P B P (the
 * base B with rows and columns 0 and c swapped; P a permutation), recursive summation of n
 * rounded products gives |y - v R| <= gamma_n |v| |R| elementwise, gamma_n = n u / (1 - n u),
 * u = 2^-24, hence
 *     ||y|| <= ||v|| (||B||_2 + gamma_n || |B| ||_2) = f ||v||,
 * with ||B||_2^2 <= max row sum of |B^T B| (computed in double, plus its own error term) and
 * || |B| ||_2 <= sqrt(max column sum * max row sum of |B|). After k <= steps steps a row of
 * initial norm r has every entry within r f^steps plus an absolute term for underflow. For
 * block 128 and 256 steps f^steps is about 1.02: that 2% is the safety margin. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "dq_pool.h"
#include "dq_search.h"

/* Floats of the view multiplied, then scanned for extremes, at a time (64 KiB: the scan reads
 * them back from the first-level caches). */
#define SCAN_CHUNK_FLOATS 16384
/* Pruning pays only while the norm bound stays tight; wider blocks search every row. */
#define PRUNE_MAX_N 1024
#define PRUNE_MAX_GROWTH 4.0
/* When the set grows, it takes rows down to this fraction of the current extremes, so that it
 * grows a few times per search rather than at every step. */
#define GROW_SLACK 0.85
/* Multiply-adds below which a step runs on the calling thread alone: waking the workers costs
 * more than they would save. */
#define SMALL_STEP_MACS (1 << 20)

/* ---- extremes ---- */

typedef struct extremes {
    float vmax, vmin;
    size_t imax, imin; /* flat indices of the first maximum and the first minimum */
} extremes;

static void extremes_reset(extremes *e)
{
    e->vmax = -INFINITY;
    e->vmin = INFINITY;
    e->imax = e->imin = 0;
}

/* Folds x[0..n) (flat indices base..base+n) into e, keeping the first index on ties: a later
 * value replaces the current extreme only when strictly beyond it. Blocks of 64 are reduced
 * with independent lanes (vectorisable); the index is located only when a block improves. */
static void extremes_scan(extremes *e, const float *x, size_t n, size_t base)
{
    enum { LANES = 8, BLOCK = 64 };
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        const float *b = x + i;
        float hi[LANES], lo[LANES];
        for (int l = 0; l < LANES; l++)
            hi[l] = lo[l] = b[l];
        for (int k = LANES; k < BLOCK; k += LANES)
            for (int l = 0; l < LANES; l++) {
                float v = b[k + l];
                hi[l] = v > hi[l] ? v : hi[l];
                lo[l] = v < lo[l] ? v : lo[l];
            }
        /* Most blocks improve neither extreme: the block's maximum is one of the lanes, so
         * when no lane passes, neither does the maximum (nor the minimum). */
        const float cmax = e->vmax, cmin = e->vmin;
        int pass = 0;
        for (int l = 0; l < LANES; l++)
            pass |= (hi[l] > cmax) | (lo[l] < cmin);
        if (!pass)
            continue;
        float bh = hi[0], bl = lo[0];
        for (int l = 1; l < LANES; l++) {
            bh = hi[l] > bh ? hi[l] : bh;
            bl = lo[l] < bl ? lo[l] : bl;
        }
        if (bh > e->vmax) {
            size_t k = 0;
            while (!(b[k] == bh))
                k++;
            e->vmax = b[k];
            e->imax = base + i + k;
        }
        if (bl < e->vmin) {
            size_t k = 0;
            while (!(b[k] == bl))
                k++;
            e->vmin = b[k];
            e->imin = base + i + k;
        }
    }
    for (; i < n; i++) {
        if (x[i] > e->vmax) {
            e->vmax = x[i];
            e->imax = base + i;
        }
        if (x[i] < e->vmin) {
            e->vmin = x[i];
            e->imin = base + i;
        }
    }
}

/* Worker results in row order: strict comparisons keep the first index on ties. */
static void extremes_merge(extremes *e, const extremes *parts, int32_t n)
{
    extremes_reset(e);
    for (int32_t w = 0; w < n; w++) {
        if (parts[w].vmax > e->vmax) {
            e->vmax = parts[w].vmax;
            e->imax = parts[w].imax;
        }
        if (parts[w].vmin < e->vmin) {
            e->vmin = parts[w].vmin;
            e->imin = parts[w].imin;
        }
    }
}

/* ---- step matrices ---- */

static void set_identity(float *m, int32_t n)
{
    memset(m, 0, (size_t)n * (size_t)n * sizeof(float));
    for (int32_t i = 0; i < n; i++)
        m[(size_t)i * (size_t)n + (size_t)i] = 1.0f;
}

/* dst = src with rows and columns 0 and c swapped. */
static void swapped_copy(const float *src, int32_t n, int32_t c, float *dst)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t si = i == 0 ? c : (i == c ? 0 : i);
        const float *row = src + (size_t)si * (size_t)n;
        float *d = dst + (size_t)i * (size_t)n;
        memcpy(d, row, (size_t)n * sizeof(float));
        float t = d[0];
        d[0] = d[c];
        d[c] = t;
    }
}

/* Records step k from the extremes; row is the view row of the chosen extreme. Returns the
 * channel exchanged next. */
static int32_t record_step(dq__search_record *rec, int32_t k, const extremes *e, int64_t row_max,
                           int64_t row_min, int32_t n, bool row_rule)
{
    float peak = e->vmax - e->vmin;
    bool take_max = fabsf(e->vmax) > fabsf(e->vmin);
    int64_t row = take_max ? row_max : row_min;
    int32_t col = (int32_t)((take_max ? e->imax : e->imin) % (size_t)n);
    int32_t c = row_rule ? (int32_t)(row % n) : col;
    rec->peaks[k] = peak;
    rec->ids[k] = row_rule ? row : col;
    rec->swapped[k] = c;
    return c;
}

/* ---- one step on the workers ---- */

/* Each worker multiplies its rows of cur by the step matrix and scans them for extremes while
 * they are still in cache. */
typedef struct step_job {
    const float *cur;
    float *next;
    const float *rk;
    int32_t n;
    int64_t rows;
    extremes *ext; /* one per worker */
} step_job;

static void step_worker(void *arg, int32_t w, int32_t n_workers)
{
    const step_job *j = arg;
    const int32_t n = j->n;
    /* A multiple of 6 rows: the AVX-512 product's register tile. */
    const int64_t chunk = SCAN_CHUNK_FLOATS / n > 12 ? SCAN_CHUNK_FLOATS / n / 6 * 6 : 12;
    int64_t begin, end;
    dq__split(j->rows, w, n_workers, &begin, &end);
    extremes_reset(&j->ext[w]);
    for (int64_t r0 = begin; r0 < end; r0 += chunk) {
        int64_t m = end - r0 < chunk ? end - r0 : chunk;
        size_t off = (size_t)r0 * (size_t)n;
        dq__block_product(j->cur + off, n, m, n, j->rk, n, n, j->next + off, n);
        extremes_scan(&j->ext[w], j->next + off, (size_t)m * (size_t)n, off);
    }
}

/* ---- the plain search ---- */

/* Every view row at every step; the running product is kept as the steps go. */
static dq_status plain_search(const dq_context *ctx, const dq__search_view *v,
                              const float *base, int32_t steps, bool row_rule, float *r_out,
                              dq__search_record *rec)
{
    const int32_t n = v->n;
    const int64_t vrows = v->tokens * v->blocks;
    const size_t nn = (size_t)n * (size_t)n;
    size_t floats, bytes;
    if (!dq__mul_size((size_t)vrows, (size_t)n, &floats) ||
        !dq__mul_size(floats, sizeof(float), &bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "view of %lld rows x %d overflows size_t",
                       (long long)vrows, (int)n);
    float *view = dq__alloc(ctx, bytes), *spare = dq__alloc(ctx, bytes);
    float *work = dq__alloc(ctx, 3 * nn * sizeof(float));
    const int32_t workers = dq__threads(ctx, INT64_MAX);
    extremes *ext = dq__alloc(ctx, (size_t)workers * sizeof *ext);
    dq_status st = DQ_ERR_NOMEM;
    if (!view || !spare || !work || !ext) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "search workspace: 2 x %zu bytes of view", bytes);
        goto out;
    }
    for (int64_t t = 0; t < v->tokens; t++)
        for (int64_t b = 0; b < v->blocks; b++)
            memcpy(view + (size_t)(t * v->blocks + b) * (size_t)n,
                   v->x + (size_t)t * (size_t)v->ldx + (size_t)b * (size_t)v->stride,
                   (size_t)n * sizeof(float));
    float *rk = work, *cur = work + nn, *nxt = work + 2 * nn;
    set_identity(cur, n);
    set_identity(r_out, n);
    rec->selected = 0;
    rec->rows_searched = vrows;
    float best = INFINITY;
    extremes e;
    extremes_reset(&e);
    extremes_scan(&e, view, floats, 0);
    for (int32_t k = 0;; k++) {
        int64_t row_max = (int64_t)(e.imax / (size_t)n), row_min = (int64_t)(e.imin / (size_t)n);
        int32_t c = record_step(rec, k, &e, row_max, row_min, n, row_rule);
        if (rec->peaks[k] < best) {
            best = rec->peaks[k];
            rec->selected = k;
            memcpy(r_out, cur, nn * sizeof(float));
        }
        if (k == steps)
            break;
        swapped_copy(base, n, c, rk);
        step_job job = {view, spare, rk, n, vrows, ext};
        dq__parallel(ctx, workers, step_worker, &job);
        extremes_merge(&e, ext, workers);
        float *t = view;
        view = spare;
        spare = t;
        /* The running product, left to right like the reference: cur <- cur * R_k. */
        dq__block_product(cur, n, n, n, rk, n, n, nxt, n);
        t = cur;
        cur = nxt;
        nxt = t;
    }
    st = DQ_OK;
out:
    dq__free(ctx, view);
    dq__free(ctx, spare);
    dq__free(ctx, work);
    dq__free(ctx, ext);
    return st;
}

/* ---- the norm bound ---- */

/* Upper bound on the norm growth of one rounded step with any swap of base: f (see the top of
 * the file), or INFINITY when it cannot be bounded usefully. */
static double step_growth(const dq_context *ctx, const float *base, int32_t n)
{
    double *col_abs = dq__calloc(ctx, (size_t)n, sizeof(double));
    double *btb_row = dq__calloc(ctx, (size_t)n, sizeof(double));
    double *col_i = dq__alloc(ctx, (size_t)n * sizeof(double));
    double growth = INFINITY;
    if (!col_abs || !btb_row || !col_i)
        goto out;
    double max_row_abs = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int32_t j = 0; j < n; j++) {
            double a = fabs((double)base[(size_t)i * (size_t)n + (size_t)j]);
            s += a;
            col_abs[j] += a;
        }
        max_row_abs = s > max_row_abs ? s : max_row_abs;
    }
    double max_col_abs = 0.0;
    for (int32_t j = 0; j < n; j++)
        max_col_abs = col_abs[j] > max_col_abs ? col_abs[j] : max_col_abs;
    /* Row sums of |B^T B|, one column of B against all others at a time. */
    for (int32_t i = 0; i < n; i++) {
        for (int32_t k = 0; k < n; k++)
            col_i[k] = (double)base[(size_t)k * (size_t)n + (size_t)i];
        for (int32_t j = 0; j < n; j++) {
            double d = 0.0;
            for (int32_t k = 0; k < n; k++)
                d += col_i[k] * (double)base[(size_t)k * (size_t)n + (size_t)j];
            btb_row[i] += fabs(d);
        }
    }
    double max_btb = 0.0;
    for (int32_t i = 0; i < n; i++)
        max_btb = btb_row[i] > max_btb ? btb_row[i] : max_btb;
    /* The double products and sums above err by at most (n + 2) 2^-53 relative to the sums
     * of absolute values; bound that by the column and row sums of |B|. */
    const double ud = ldexp(1.0, -53) * (double)(n + 2);
    double norm2 = sqrt(max_btb + ud * (max_col_abs * max_row_abs + max_btb));
    double abs2 = sqrt(max_col_abs * max_row_abs);
    const double nu = (double)n * ldexp(1.0, -24);
    if (nu >= 0.5)
        goto out;
    growth = (norm2 + nu / (1.0 - nu) * abs2) * (1.0 + 1e-12);
out:
    dq__free(ctx, col_abs);
    dq__free(ctx, btb_row);
    dq__free(ctx, col_i);
    return growth;
}

/* ---- the pruned search ---- */

/* The search state: the rows searched so far, in view order, and their current values. */
typedef struct pruned {
    const dq_context *ctx;
    const dq__search_view *v;
    const float *base;
    int32_t n;
    int64_t vrows;
    double *norm;        /* vrows: upper bound of each row's initial L2 norm */
    uint8_t *in;         /* vrows: row is searched */
    int64_t *idx;        /* m view rows, ascending */
    int64_t m, cap;      /* rows searched, rows the buffers hold */
    float *cur, *next;   /* m x n values after the steps so far */
    double rest_max;     /* largest norm among the rows not searched, -1 when none */
    double growth;       /* bound of norm growth over all steps */
    double abs_slack;    /* absolute term for underflow */
    int32_t *chosen;     /* channels exchanged so far */
    extremes *ext;       /* one per worker */
} pruned;

static const float *view_row(const dq__search_view *v, int64_t r)
{
    int64_t t = r / v->blocks, b = r % v->blocks;
    return v->x + (size_t)t * (size_t)v->ldx + (size_t)b * (size_t)v->stride;
}

/* Norms of the initial rows and the initial extremes, split over the workers. */
typedef struct init_job {
    const dq__search_view *v;
    double *norm;
    int64_t vrows;
    extremes *ext;
} init_job;

static void init_worker(void *arg, int32_t w, int32_t n_workers)
{
    const init_job *j = arg;
    const int32_t n = j->v->n;
    /* Any summation order errs by at most (n + 2) 2^-53 relative: round the norm up by that. */
    const double up = 1.0 + ldexp(1.0, -52) * (double)(n + 4);
    int64_t begin, end;
    dq__split(j->vrows, w, n_workers, &begin, &end);
    extremes_reset(&j->ext[w]);
    for (int64_t r = begin; r < end; r++) {
        const float *row = view_row(j->v, r);
        double s[4] = {0.0, 0.0, 0.0, 0.0};
        int32_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int l = 0; l < 4; l++)
                s[l] += (double)row[i + l] * (double)row[i + l];
        for (; i < n; i++)
            s[0] += (double)row[i] * (double)row[i];
        j->norm[r] = sqrt((s[0] + s[1]) + (s[2] + s[3])) * up;
        extremes_scan(&j->ext[w], row, (size_t)n, (size_t)r * (size_t)n);
    }
}

/* Replays the steps so far on new rows (cur -> next, exchanged every step), on the workers:
 * the same products the plain search made on them, hence the same bits. */
typedef struct replay_job {
    const float *base;
    int32_t n;
    const int32_t *chosen;
    int32_t k;
    float *a, *b; /* rows x n each; the result ends in a when k is even, else in b */
    int64_t rows;
    float *rk;    /* n x n per worker */
} replay_job;

static void replay_worker(void *arg, int32_t w, int32_t n_workers)
{
    const replay_job *j = arg;
    const int32_t n = j->n;
    float *rk = j->rk + (size_t)w * (size_t)n * (size_t)n;
    int64_t begin, end;
    dq__split(j->rows, w, n_workers, &begin, &end);
    if (begin == end)
        return;
    float *src = j->a + (size_t)begin * (size_t)n, *dst = j->b + (size_t)begin * (size_t)n;
    for (int32_t s = 0; s < j->k; s++) {
        swapped_copy(j->base, n, j->chosen[s], rk);
        dq__block_product(src, n, end - begin, n, rk, n, n, dst, n);
        float *t = src;
        src = dst;
        dst = t;
    }
}

/* Adds every row not yet searched whose initial norm is at least tau, brought to the state
 * after k steps, keeping view order. */
static dq_status pruned_grow(pruned *p, double tau, int32_t k)
{
    const int32_t n = p->n;
    const dq_context *ctx = p->ctx;
    int64_t add = 0;
    double rest = -1.0;
    for (int64_t r = 0; r < p->vrows; r++) {
        if (p->in[r])
            continue;
        if (p->norm[r] >= tau)
            add++;
        else if (p->norm[r] > rest)
            rest = p->norm[r];
    }
    if (add == 0) {
        p->rest_max = rest;
        return DQ_OK;
    }
    const int64_t m2 = p->m + add;
    const size_t row_bytes = (size_t)n * sizeof(float);
    const int32_t workers = dq__threads(ctx, INT64_MAX);
    if (m2 > p->cap) { /* room for twice as many: fresh pages are costly, grow geometrically */
        int64_t cap = 2 * p->cap < p->vrows ? 2 * p->cap : p->vrows;
        cap = cap > m2 ? cap : m2;
        int64_t *idx2 = dq__alloc(ctx, (size_t)cap * sizeof(int64_t));
        float *cur2 = dq__alloc(ctx, (size_t)cap * row_bytes);
        float *next2 = dq__alloc(ctx, (size_t)cap * row_bytes);
        if (!idx2 || !cur2 || !next2) {
            dq__free(ctx, idx2);
            dq__free(ctx, cur2);
            dq__free(ctx, next2);
            return DQ_FAIL(ctx, DQ_ERR_NOMEM, "pruned search set of %lld rows", (long long)cap);
        }
        if (p->m > 0) {
            memcpy(idx2, p->idx, (size_t)p->m * sizeof(int64_t));
            memcpy(cur2, p->cur, (size_t)p->m * row_bytes);
        }
        dq__free(ctx, p->idx);
        dq__free(ctx, p->cur);
        dq__free(ctx, p->next);
        p->idx = idx2;
        p->cur = cur2;
        p->next = next2;
        p->cap = cap;
    }
    float *na = dq__alloc(ctx, (size_t)add * row_bytes);
    float *nb = k > 0 ? dq__alloc(ctx, (size_t)add * row_bytes) : NULL;
    float *rk = k > 0 ? dq__alloc(ctx, (size_t)workers * (size_t)n * row_bytes) : NULL;
    if (!na || (k > 0 && (!nb || !rk))) {
        dq__free(ctx, na);
        dq__free(ctx, nb);
        dq__free(ctx, rk);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%lld more rows of the pruned search set",
                       (long long)add);
    }
    int64_t a = 0;
    for (int64_t r = 0; r < p->vrows; r++)
        if (!p->in[r] && p->norm[r] >= tau)
            memcpy(na + (size_t)a++ * (size_t)n, view_row(p->v, r), row_bytes);
    const float *fresh = na;
    if (k > 0) {
        replay_job job = {p->base, n, p->chosen, k, na, nb, add, rk};
        if (add * (int64_t)n * n * k < SMALL_STEP_MACS)
            replay_worker(&job, 0, 1);
        else
            dq__parallel(ctx, workers, replay_worker, &job);
        fresh = k % 2 == 0 ? na : nb;
    }
    /* Merge the searched rows and the new ones by view row, in place from the end: the write
     * position never passes an old row not yet moved. */
    int64_t i = p->m - 1, o = m2 - 1;
    a = add - 1;
    for (int64_t r = p->vrows - 1; r >= 0 && o >= 0; r--) {
        const float *src;
        if (p->in[r]) {
            src = p->cur + (size_t)i-- * (size_t)n;
        } else if (p->norm[r] >= tau) {
            src = fresh + (size_t)a-- * (size_t)n;
            p->in[r] = 1;
        } else {
            continue;
        }
        float *dst = p->cur + (size_t)o * (size_t)n;
        p->idx[o--] = r;
        if (dst != src)
            memcpy(dst, src, row_bytes);
    }
    dq__free(ctx, na);
    dq__free(ctx, nb);
    dq__free(ctx, rk);
    p->m = m2;
    p->rest_max = rest;
    return DQ_OK;
}

/* Extremes of the searched rows, in view order. */
static void pruned_scan(pruned *p, extremes *e)
{
    extremes_reset(e);
    extremes_scan(e, p->cur, (size_t)p->m * (size_t)p->n, 0);
}

/* Makes sure that no row left out can hold an extreme after k steps, growing the searched set
 * (and rescanning it) until the bound proves it. */
static dq_status pruned_ensure(pruned *p, extremes *e, int32_t k)
{
    for (;;) {
        if (p->rest_max < 0.0)
            return DQ_OK;
        /* Both extremes are needed (peak, and which of the two is larger in magnitude). */
        double t = fmin((double)e->vmax, -(double)e->vmin);
        if (p->m > 0 && t > p->rest_max * p->growth + p->abs_slack)
            return DQ_OK;
        /* Rows whose bound reaches GROW_SLACK * t (at least those that reach t); all rows when
         * nothing can be excluded. */
        double tau = p->m > 0 && t > 0.0 ? (GROW_SLACK * t - p->abs_slack) / p->growth : -1.0;
        dq_status st = pruned_grow(p, tau, k);
        if (st != DQ_OK)
            return st;
        pruned_scan(p, e);
    }
}

/* Product of the first k step matrices, left to right, with the rows of the running product
 * split over the workers (the same bits as the plain search's running product). */
typedef struct chain_job {
    const float *base;
    int32_t n;
    const int32_t *chosen;
    int32_t k;
    float *a, *b; /* n x n; result in a when k is even, else in b */
    float *rk;    /* n x n per worker */
} chain_job;

static void chain_worker(void *arg, int32_t w, int32_t n_workers)
{
    const chain_job *j = arg;
    replay_job r = {j->base, j->n, j->chosen, j->k, j->a, j->b, j->n, j->rk};
    replay_worker(&r, w, n_workers);
}

static dq_status pruned_search(const dq_context *ctx, const dq__search_view *v,
                               const float *base, int32_t steps, bool row_rule, double growth,
                               float *r_out, dq__search_record *rec)
{
    const int32_t n = v->n;
    const size_t nn = (size_t)n * (size_t)n;
    const int32_t workers = dq__threads(ctx, INT64_MAX);
    pruned p = {.ctx = ctx, .v = v, .base = base, .n = n,
                .vrows = v->tokens * v->blocks, .rest_max = -1.0};
    /* The bound for every step up to the last, rounded up. */
    p.growth = 1.0;
    for (int32_t s = 0; s < steps; s++)
        p.growth *= growth * (1.0 + 1e-15);
    /* Underflow adds at most 2n 2^-149 to each of the n entries per step (one per product and
     * sum), grown by later steps. */
    p.abs_slack =
        p.growth * (double)(steps + 1) * 2.0 * (double)n * sqrt((double)n) * ldexp(1.0, -149);
    p.norm = dq__alloc(ctx, (size_t)p.vrows * sizeof(double));
    p.in = dq__calloc(ctx, (size_t)p.vrows, 1);
    p.chosen = dq__alloc(ctx, ((size_t)steps + 1) * sizeof(int32_t));
    p.ext = dq__alloc(ctx, (size_t)workers * sizeof *p.ext);
    float *chain = dq__alloc(ctx, (2 + (size_t)workers) * nn * sizeof(float));
    dq_status st = DQ_ERR_NOMEM;
    if (!p.norm || !p.in || !p.chosen || !p.ext || !chain) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "pruned search workspace of %lld rows x %d",
                     (long long)p.vrows, (int)n);
        goto out;
    }

    /* Step 0 needs no product: the extremes of the whole view, and every row's norm. */
    extremes e;
    init_job ij = {v, p.norm, p.vrows, p.ext};
    dq__parallel(ctx, workers, init_worker, &ij);
    extremes_merge(&e, p.ext, workers);
    for (int64_t r = 0; r < p.vrows; r++)
        p.rest_max = p.norm[r] > p.rest_max ? p.norm[r] : p.rest_max;
    /* The first set: the rows that can reach GROW_SLACK times the first extremes. */
    double t0 = fmin((double)e.vmax, -(double)e.vmin);
    if ((st = pruned_grow(&p, t0 > 0.0 ? (GROW_SLACK * t0 - p.abs_slack) / p.growth : -1.0,
                          0)) != DQ_OK)
        goto out;

    rec->selected = 0;
    float best = INFINITY;
    for (int32_t k = 0;; k++) {
        int64_t row_max, row_min;
        if (k == 0) { /* extremes of the whole view, in view coordinates */
            row_max = (int64_t)(e.imax / (size_t)n);
            row_min = (int64_t)(e.imin / (size_t)n);
        } else {
            row_max = p.idx[e.imax / (size_t)n];
            row_min = p.idx[e.imin / (size_t)n];
        }
        int32_t c = record_step(rec, k, &e, row_max, row_min, n, row_rule);
        if (rec->peaks[k] < best) {
            best = rec->peaks[k];
            rec->selected = k;
        }
        if (k == steps)
            break;
        p.chosen[k] = c;
        swapped_copy(base, n, c, chain);
        step_job job = {p.cur, p.next, chain, n, p.m, p.ext};
        if (p.m * (int64_t)n * n < SMALL_STEP_MACS) {
            step_worker(&job, 0, 1);
            e = p.ext[0];
        } else {
            dq__parallel(ctx, workers, step_worker, &job);
            extremes_merge(&e, p.ext, workers);
        }
        float *t = p.cur;
        p.cur = p.next;
        p.next = t;
        if ((st = pruned_ensure(&p, &e, k + 1)) != DQ_OK)
            goto out;
    }
    rec->rows_searched = p.m;

    /* The kept prefix's product, once. */
    float *a = chain, *b = chain + nn;
    set_identity(a, n);
    if (rec->selected > 0) {
        chain_job cj = {base, n, p.chosen, rec->selected, a, b, chain + 2 * nn};
        dq__parallel(ctx, workers, chain_worker, &cj);
    }
    memcpy(r_out, rec->selected % 2 == 0 ? a : b, nn * sizeof(float));
    st = DQ_OK;
out:
    dq__free(ctx, p.norm);
    dq__free(ctx, p.in);
    dq__free(ctx, p.idx);
    dq__free(ctx, p.cur);
    dq__free(ctx, p.next);
    dq__free(ctx, p.chosen);
    dq__free(ctx, p.ext);
    dq__free(ctx, chain);
    return st;
}

dq_status dq__greedy_search(const dq_context *ctx, int32_t mode,
                            const dq__search_view *v, const float *base, int32_t steps,
                            bool row_rule, float *r_out, dq__search_record *rec)
{
    const int32_t n = v->n;
    if (mode == DQ__SEARCH_PRUNED && n <= PRUNE_MAX_N && v->tokens > 0 && v->blocks > 0) {
        double f = step_growth(ctx, base, n);
        /* Worth it only while the bound over all steps stays close to the norm. */
        if (steps > 0 && f < INFINITY && pow(f, (double)steps) <= PRUNE_MAX_GROWTH)
            return pruned_search(ctx, v, base, steps, row_rule, f, r_out, rec);
    }
    return plain_search(ctx, v, base, steps, row_rule, r_out, rec);
}
