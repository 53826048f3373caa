/* Building block rotations (the offline side): DuQuant's base matrix, Hadamard and random
 * orthogonal blocks and the greedy rotation search. The rotation object itself, and applying
 * it, live in lib/layer/dq_rotation.c. */
#include <math.h>
#include <string.h>

#include "dq_cpu.h"
#include "dq_handle.h"
#include "dq_pool.h"
#include "dq_random.h"
#include "dq_search.h"

/* The first released layout ends after max_steps. */
#define ROTATION_PARAMS_MIN_SIZE (offsetof(dq_rotation_params, max_steps) + sizeof(int32_t))
#define ROTATION_KNOWN_FLAGS                                                                 \
    (DQ_ROT_F_ROW_RULE | DQ_ROT_F_PER_BLOCK | DQ_ROT_F_RANDOM_QPRIME | DQ_ROT_F_HADAMARD_BASE)
/* Flags that only the greedy search understands. */
#define ROTATION_SEARCH_FLAGS (DQ_ROT_F_ROW_RULE | DQ_ROT_F_RANDOM_QPRIME | DQ_ROT_F_HADAMARD_BASE)

/* ---- seeded randomness (dq_random.h) ---- */

uint64_t dq__seed_mix(uint64_t seed, uint64_t stream)
{
    uint64_t s = dq__random_stream(seed, stream);
    dq__splitmix64(&s);
    return dq__splitmix64(&s);
}

/* Uniform in (0, 1]: never 0, so the logarithm below stays finite. */
static double uniform_open0(uint64_t *state)
{
    return (double)((dq__splitmix64(state) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* Standard normal pairs by Box-Muller. */
void dq__gaussian_fill(uint64_t *state, double *v, int64_t n)
{
    for (int64_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform_open0(state)));
        double t = 6.283185307179586 * uniform_open0(state);
        v[i] = r * cos(t);
        if (i + 1 < n)
            v[i + 1] = r * sin(t);
    }
}

/* ---- base matrices ---- */

/* DuQuant's Rot_n (n >= 2): the Givens chain applied column by column in double, so only O(n)
 * doubles are needed; rows and columns 0 and n-1 are swapped on the way out. */
static void duquant_rot(int32_t n, float *out, int64_t ldo, double *v)
{
    for (int32_t j = 0; j < n; j++) {
        for (int32_t i = 0; i < n; i++)
            v[i] = i == j ? 1.0 : 0.0;
        for (int32_t i = 0; i + 1 < n; i++) {
            double c = 1.0 / sqrt((double)i + 2.0);
            double s = sqrt((double)i + 1.0) / sqrt((double)i + 2.0);
            double a = v[i], b = v[i + 1];
            v[i] = c * a - s * b;
            v[i + 1] = s * a + c * b;
        }
        int32_t col = j == 0 ? n - 1 : (j == n - 1 ? 0 : j);
        for (int32_t i = 0; i < n; i++) {
            int32_t row = i == 0 ? n - 1 : (i == n - 1 ? 0 : i);
            out[(size_t)row * (size_t)ldo + (size_t)col] = (float)v[i];
        }
    }
}

static bool is_pow2(int64_t n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

static void hadamard(int32_t n, float *out, int64_t ldo)
{
    float h = (float)(1.0 / sqrt((double)n));
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            out[(size_t)i * (size_t)ldo + (size_t)j] =
                (__builtin_popcount((unsigned)(i & j)) & 1) ? -h : h;
}

/* B * blockdiag(1, Q') (or B when qprime is NULL) into out (n x n, ldo), B = Rot_n, or the
 * Hadamard matrix H_n (n a power of two) with hadamard_base. */
static dq_status base_matrix(const dq_context *ctx, int32_t n, bool hadamard_base,
                             const float *qprime, float *out, int64_t ldo)
{
    double *v = dq__alloc(ctx, (size_t)n * sizeof(double));
    float *rot = qprime ? dq__alloc(ctx, (size_t)n * (size_t)n * sizeof(float)) : NULL;
    dq_status st = DQ_OK;
    if (!v || (qprime && !rot)) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "scratch for a base matrix of size %d", (int)n);
        goto out;
    }
    if (!qprime) {
        if (hadamard_base)
            hadamard(n, out, ldo);
        else
            duquant_rot(n, out, ldo, v);
        st = DQ_OK;
        goto out;
    }
    if (hadamard_base)
        hadamard(n, rot, n);
    else
        duquant_rot(n, rot, n, v);
    for (int32_t i = 0; i < n; i++)
        out[(size_t)i * (size_t)ldo] = rot[(size_t)i * (size_t)n];
    dq__block_product(rot + 1, n, n, n - 1, qprime, n - 1, n - 1, out + 1, ldo);
    st = DQ_OK;
out:
    dq__free(ctx, v);
    dq__free(ctx, rot);
    return st;
}

/* ---- random orthogonal matrices ---- */

/* Columns orthogonalised side by side: each keeps its own dot products and updates in the
 * order of the one-column algorithm (so the same bits), but GROUP independent chains run at
 * once instead of one latency-bound chain. */
#define GROUP 32
/* Draws per column before the remainder is taken whatever its norm. */
#define MAX_DRAWS 16

/* v minus its projections on the finished columns p0 .. p1 - 1 of q, in that order. */
static void project_out(const double *q, int32_t n, int32_t p0, int32_t p1, double *v)
{
    for (int32_t p = p0; p < p1; p++) {
        const double *u = q + (size_t)p * (size_t)n;
        double d = 0.0;
        for (int32_t i = 0; i < n; i++)
            d += u[i] * v[i];
        for (int32_t i = 0; i < n; i++)
            v[i] -= d * u[i];
    }
}

static double norm_of(const double *v, int32_t n)
{
    double s = 0.0;
    for (int32_t i = 0; i < n; i++)
        s += v[i] * v[i];
    return sqrt(s);
}

#if defined(__GNUC__)
/* Eight columns' entries as one value: lane-wise multiplies and adds, the same bits as eight
 * scalar ones, in whatever registers the variant below has. */
#define LANES 8
typedef double lanes __attribute__((vector_size(LANES * sizeof(double))));
#define GROUP_INLINE inline __attribute__((always_inline)) /* into each CPU variant */

/* The GROUP columns interleaved in w (w[i * GROUP + k]: entry i of column k; 64-byte aligned)
 * minus their projections on the finished columns 0 .. p1 - 1 of q. One pass over w a
 * column: entry i updated by column p is at once added into the dot product with column
 * p + 1, as the one-column algorithm adds it later (same operands, same order). */
static GROUP_INLINE void project_group_lanes(const double *q, int32_t n, int32_t p1, double *w)
{
    enum { VECS = GROUP / LANES };
    lanes *wv = (lanes *)(void *)w;
    lanes d[VECS], next[VECS];
    for (int k = 0; k < VECS; k++)
        d[k] = (lanes){0};
    for (int32_t i = 0; p1 > 0 && i < n; i++)
        for (int k = 0; k < VECS; k++)
            d[k] += q[i] * wv[(size_t)i * VECS + k];
    for (int32_t p = 0; p < p1; p++) {
        const double *u = q + (size_t)p * (size_t)n, *un = u + n;
        if (p + 1 == p1) {
            for (int32_t i = 0; i < n; i++)
                for (int k = 0; k < VECS; k++)
                    wv[(size_t)i * VECS + k] -= d[k] * u[i];
            break;
        }
        for (int k = 0; k < VECS; k++)
            next[k] = (lanes){0};
        for (int32_t i = 0; i < n; i++)
            for (int k = 0; k < VECS; k++) {
                lanes x = wv[(size_t)i * VECS + k] - d[k] * u[i];
                wv[(size_t)i * VECS + k] = x;
                next[k] += un[i] * x;
            }
        for (int k = 0; k < VECS; k++)
            d[k] = next[k];
    }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) static void project_group_avx512(const double *q, int32_t n,
                                                                     int32_t p1, double *w)
{
    project_group_lanes(q, n, p1, w);
}

__attribute__((target("avx2"))) static void project_group_avx2(const double *q, int32_t n,
                                                                int32_t p1, double *w)
{
    project_group_lanes(q, n, p1, w);
}
#endif

/* The CPU's best variant, or the one a test names (DQ__ORTH_*). */
static void project_group(const double *q, int32_t n, int32_t p1, double *w, int32_t path)
{
#if defined(__x86_64__) || defined(__i386__)
    if (path == DQ__ORTH_GROUPS && dq__cpu_has(DQ_CPU_AVX512F)) {
        project_group_avx512(q, n, p1, w);
        return;
    }
    if (path != DQ__ORTH_GROUPS_PORTABLE && dq__cpu_has(DQ_CPU_AVX2)) {
        project_group_avx2(q, n, p1, w);
        return;
    }
#endif
    (void)path;
    project_group_lanes(q, n, p1, w);
}
#else
static void project_group(const double *q, int32_t n, int32_t p1, double *w, int32_t path)
{
    (void)path;
    for (int32_t p = 0; p < p1; p++) {
        const double *u = q + (size_t)p * (size_t)n;
        double d[GROUP] = {0};
        for (int32_t i = 0; i < n; i++)
            for (int32_t k = 0; k < GROUP; k++)
                d[k] += u[i] * w[(size_t)i * GROUP + k];
        for (int32_t i = 0; i < n; i++)
            for (int32_t k = 0; k < GROUP; k++)
                w[(size_t)i * GROUP + k] -= d[k] * u[i];
    }
}
#endif

/* Column j of q as one column at a time: drawn again (from *state) while the remainder after
 * projection has norm <= min_norm, from draw number `draw` on, then normalised. */
static void finish_column(double *q, int32_t n, int32_t j, uint64_t *state, double min_norm,
                          int draw, double norm)
{
    double *v = q + (size_t)j * (size_t)n;
    for (; draw < MAX_DRAWS && !(norm > min_norm); draw++) {
        dq__gaussian_fill(state, v, n);
        project_out(q, n, 0, j, v);
        norm = norm_of(v, n);
    }
    for (int32_t i = 0; i < n; i++)
        v[i] /= norm;
}

/* Haar-distributed orthogonal matrix: modified Gram-Schmidt (in double) of a Gaussian matrix,
 * i.e. the Q of its QR factorisation with a positive diagonal. Columns are drawn one after the
 * other from one stream; a column whose remainder is negligible (dependent on the others,
 * which for a Gaussian column has probability zero) is drawn again. */
dq_status dq__random_orthogonal_with(const dq_context *ctx, int32_t n, uint64_t seed,
                                     double min_norm, int32_t path, float *out, int64_t ldo)
{
    const bool one_column = path == DQ__ORTH_ONE_COLUMN;
    double *q = dq__alloc(ctx, (size_t)n * (size_t)n * sizeof(double)); /* column j at q+j*n */
    double *w = one_column ? NULL : dq__alloc(ctx, (size_t)n * GROUP * sizeof(double));
    if (!q || (!one_column && !w)) {
        dq__free(ctx, q);
        dq__free(ctx, w);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%d x %d doubles", (int)n, (int)n);
    }
    uint64_t state = seed;
    int32_t j = 0;
    for (; one_column && j < n; j++)
        finish_column(q, n, j, &state, min_norm, 0, 0.0);
    while (j < n) {
        const int32_t g = n - j < GROUP ? n - j : GROUP;
        /* state_after[k]: the stream after column j + k's first draw, where a redraw of that
         * column continues. */
        uint64_t state_after[GROUP];
        for (int32_t k = 0; k < g; k++) {
            double *v = q + (size_t)(j + k) * (size_t)n;
            dq__gaussian_fill(&state, v, n);
            state_after[k] = state;
            for (int32_t i = 0; i < n; i++)
                w[(size_t)i * GROUP + k] = v[i];
        }
        for (int32_t k = g; k < GROUP; k++) /* lanes past the last column: zeros, unused */
            for (int32_t i = 0; i < n; i++)
                w[(size_t)i * GROUP + k] = 0.0;
        project_group(q, n, j, w, path);
        int32_t k = 0;
        for (; k < g; k++) {
            double *v = q + (size_t)(j + k) * (size_t)n;
            for (int32_t i = 0; i < n; i++)
                v[i] = w[(size_t)i * GROUP + k];
            project_out(q, n, j, j + k, v);
            double norm = norm_of(v, n);
            if (!(norm > min_norm)) {
                /* Redrawn as alone; the group's later columns are drawn again after it. */
                state = state_after[k];
                finish_column(q, n, j + k, &state, min_norm, 1, norm);
                break;
            }
            for (int32_t i = 0; i < n; i++)
                v[i] /= norm;
        }
        j += k < g ? k + 1 : g;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t c = 0; c < n; c++)
            out[(size_t)i * (size_t)ldo + (size_t)c] = (float)q[(size_t)c * (size_t)n + (size_t)i];
    dq__free(ctx, q);
    dq__free(ctx, w);
    return DQ_OK;
}

dq_status dq__random_orthogonal(const dq_context *ctx, int32_t n, uint64_t seed, float *out,
                                int64_t ldo)
{
    return dq__random_orthogonal_with(ctx, n, seed, 1e-6, DQ__ORTH_GROUPS, out, ldo);
}

DQ_API dq_status dq_rotation_base(int32_t n, const float *qprime, float *out, int64_t ldo)
{
    if (!out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    if (n < 2 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %d outside [2, %d] or ldo %lld < n", (int)n,
                       DQ_MAX_BLOCK, (long long)ldo);
    if (qprime && !dq__all_finite(qprime, n - 1, n - 1, n - 1))
        return DQ_FAIL(NULL, DQ_ERR_NONFINITE, "qprime holds a NaN or infinity");
    return base_matrix(NULL, n, false, qprime, out, ldo);
}

DQ_API dq_status dq_rotation_hadamard(int32_t n, float *out, int64_t ldo)
{
    if (!out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    if (n < 1 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %d outside [1, %d] or ldo %lld < n", (int)n,
                       DQ_MAX_BLOCK, (long long)ldo);
    if (!is_pow2(n))
        return DQ_FAIL(NULL, DQ_ERR_UNSUPPORTED, "n %d is not a power of two", (int)n);
    hadamard(n, out, ldo);
    return DQ_OK;
}

DQ_API dq_status dq_rotation_random_orthogonal(int32_t n, uint64_t seed, float *out,
                                               int64_t ldo)
{
    if (!out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    if (n < 1 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %d outside [1, %d] or ldo %lld < n", (int)n,
                       DQ_MAX_BLOCK, (long long)ldo);
    return dq__random_orthogonal(NULL, n, seed, out, ldo);
}

/* First block using matrix m and how many consecutive blocks use it. */
static void matrix_block_range(const dq_rotation *r, int64_t m, int64_t *first, int64_t *count)
{
    const int64_t full = r->cols / r->block_size;
    if (r->per_block) {
        *first = m;
        *count = 1;
    } else if (m == 0 && full > 0) {
        *first = 0;
        *count = full;
    } else { /* the shorter last block */
        *first = full;
        *count = 1;
    }
}

/* Greedy search of every matrix on its blocks of the sample (read in place: the search copies
 * only the rows it multiplies). */
static dq_status build_greedy(dq_rotation *r, const dq__rot_opts *o, const float *x,
                              int64_t rows, int64_t ldx)
{
    const dq_context *ctx = &r->ctx;
    const int32_t bs = r->block_size;
    size_t bsq = (size_t)bs * (size_t)bs;
    float *base = dq__alloc(ctx, bsq * sizeof(float));
    float *qp = o->random_qprime ? dq__alloc(ctx, bsq * sizeof(float)) : NULL;
    dq_status st = DQ_OK;
    if (!base || (o->random_qprime && !qp)) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "scratch for %d x %d base matrices", (int)bs, (int)bs);
        goto out;
    }
    const size_t rec_len = (size_t)r->steps + 1;
    for (int64_t m = 0; m < r->n_mats; m++) {
        const int32_t n = r->mat_size[m];
        float *dst = r->data + r->mat_offset[m];
        if (n == 1) { /* a one-channel block has nothing to rotate */
            dst[0] = 1.0f;
            continue;
        }
        const float *qprime = NULL;
        if (o->qprime && n == bs) {
            qprime = o->qprime;
        } else if (o->random_qprime) {
            st = dq__random_orthogonal(ctx, n - 1, dq__seed_mix(o->seed, (uint64_t)m), qp, n - 1);
            if (st != DQ_OK)
                goto out;
            qprime = qp;
        }
        if ((st = base_matrix(ctx, n, o->hadamard_base, qprime, base, n)) != DQ_OK)
            goto out;
        /* The view of this matrix's blocks: row t * nb + (b - b0) holds token t of block b. */
        int64_t b0, nb;
        matrix_block_range(r, m, &b0, &nb);
        const dq__search_view view = {x + (size_t)b0 * (size_t)bs, ldx, rows, nb, bs, n};
        dq__search_record rec = {r->ids + (size_t)m * rec_len, r->swapped + (size_t)m * rec_len,
                                 r->peaks + (size_t)m * rec_len, 0, 0};
        st = dq__greedy_search(ctx, o->plain_search ? DQ__SEARCH_PLAIN : DQ__SEARCH_PRUNED,
                               &view, base, r->steps, o->row_rule, dst, &rec);
        if (st != DQ_OK)
            goto out;
        r->selected[m] = rec.selected;
    }
    st = DQ_OK;
out:
    dq__free(ctx, base);
    dq__free(ctx, qp);
    return st;
}

dq_status dq__rotation_build(const dq_context *ctx, const dq__rot_opts *o, const float *x,
                             int64_t rows, int64_t cols, int64_t ldx, dq_rotation **out)
{
    *out = NULL;
    ctx = dq__ctx(ctx);
    const int32_t bs = o->block_size;
    if ((o->method == DQ_ROT_METHOD_HADAMARD || o->hadamard_base) && !dq__hadamard_fits(cols, bs))
        return DQ_FAIL(ctx, DQ_ERR_UNSUPPORTED,
                       "Hadamard blocks of %d do not fit %lld channels (powers of two only)",
                       (int)bs, (long long)cols);
    dq_rotation *r;
    dq_status st = dq__rotation_alloc(ctx, cols, bs, o->per_block, o->method, o->max_steps, &r);
    if (st != DQ_OK)
        return st;
    if (o->method == DQ_ROT_METHOD_GREEDY) {
        st = build_greedy(r, o, x, rows, ldx);
    } else {
        for (int64_t m = 0; m < r->n_mats && st == DQ_OK; m++) {
            float *dst = r->data + r->mat_offset[m];
            if (o->method == DQ_ROT_METHOD_HADAMARD)
                hadamard(r->mat_size[m], dst, r->mat_size[m]);
            else if (o->method == DQ_ROT_METHOD_RANDOM_HADAMARD)
                st = dq__random_hadamard(ctx, r->mat_size[m], dq__seed_mix(o->seed, (uint64_t)m),
                                         dst, r->mat_size[m], NULL);
            else
                st = dq__random_orthogonal(ctx, r->mat_size[m], dq__seed_mix(o->seed, (uint64_t)m),
                                       dst, r->mat_size[m]);
        }
    }
    if (st != DQ_OK) {
        dq_rotation_free(r);
        return st;
    }
    *out = r;
    return DQ_OK;
}

/* ---- public interface ---- */

DQ_API dq_status dq_rotation_params_init(dq_rotation_params *p, size_t struct_size)
{
    const dq_rotation_params defaults = {
        .struct_size = sizeof defaults,
        .method = DQ_ROT_METHOD_GREEDY,
        .block_size = 128,
        .max_steps = 256,
    };
    return dq__params_init(p, struct_size, ROTATION_PARAMS_MIN_SIZE, &defaults,
                           sizeof defaults);
}

static dq_status read_rotation_params(const dq_context *ctx, const dq_rotation_params *user,
                                      dq__rot_opts *o)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    dq_status st = dq__params_read(&p, sizeof p, ROTATION_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return dq__fail(ctx, st, "dq_rotation_create", "p (struct_size %u)",
                        user ? user->struct_size : 0u);
    bool greedy = p.method == DQ_ROT_METHOD_GREEDY;
    if ((p.flags & ~(uint32_t)ROTATION_KNOWN_FLAGS) != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "p->flags 0x%x has unknown bits 0x%x", p.flags,
                        p.flags & ~(uint32_t)ROTATION_KNOWN_FLAGS);
    if (p.method < DQ_ROT_METHOD_GREEDY || p.method > DQ_ROT_METHOD_RANDOM_HADAMARD)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "p->method %d is not a DQ_ROT_METHOD", (int)p.method);
    if (p.block_size < 2 || p.block_size > DQ_MAX_BLOCK)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "p->block_size %d outside [2, %d]", (int)p.block_size, DQ_MAX_BLOCK);
    if (p.max_steps < 0 || p.max_steps > DQ_MAX_STEPS)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "p->max_steps %d outside [0, %d]", (int)p.max_steps, DQ_MAX_STEPS);
    /* Search options mean nothing to the other methods: refuse rather than ignore them. */
    if (!greedy && ((p.flags & ROTATION_SEARCH_FLAGS) || p.qprime))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "search options (flags 0x%x%s) with method %d (not greedy)", p.flags,
                        p.qprime ? ", qprime" : "", (int)p.method);
    if (p.qprime && (p.flags & DQ_ROT_F_RANDOM_QPRIME))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, "dq_rotation_create",
                        "p->qprime given with DQ_ROT_F_RANDOM_QPRIME");
    if (p.qprime && !dq__all_finite(p.qprime, p.block_size - 1, p.block_size - 1,
                                    p.block_size - 1))
        return dq__fail(ctx, DQ_ERR_NONFINITE, "dq_rotation_create",
                        "p->qprime holds a NaN or infinity");
    *o = (dq__rot_opts){
        .method = p.method,
        .block_size = p.block_size,
        .max_steps = p.max_steps,
        .row_rule = (p.flags & DQ_ROT_F_ROW_RULE) != 0,
        .per_block = (p.flags & DQ_ROT_F_PER_BLOCK) != 0,
        .random_qprime = (p.flags & DQ_ROT_F_RANDOM_QPRIME) != 0,
        .hadamard_base = (p.flags & DQ_ROT_F_HADAMARD_BASE) != 0,
        .seed = p.seed,
        .qprime = p.qprime,
    };
    return DQ_OK;
}

DQ_API dq_status dq_rotation_create(dq_context *ctx, const dq_rotation_params *p, const float *x,
                                    int64_t rows, int64_t cols, int64_t ldx, dq_rotation **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    const dq_context *c = dq__ctx(ctx);
    if (!out)
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq__rot_opts o = {0};
    dq_status st = read_rotation_params(c, p, &o);
    if (st != DQ_OK)
        return st;
    if (o.method == DQ_ROT_METHOD_GREEDY) {
        if ((st = dq__check_matrix(ctx, "x", x, rows, cols, ldx)) != DQ_OK)
            return st;
        if (!dq__all_finite(x, rows, cols, ldx))
            return DQ_FAIL(c, DQ_ERR_NONFINITE, "x holds a NaN or infinity");
    } else if (cols <= 0) {
        return DQ_FAIL(c, DQ_ERR_SHAPE, "cols %lld <= 0", (long long)cols);
    }
    return dq__rotation_build(ctx, &o, x, rows, cols, ldx, out);
}

