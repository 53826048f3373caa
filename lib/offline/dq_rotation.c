/* Block rotations: DuQuant's base matrix, Hadamard and random orthogonal blocks, the greedy
 * rotation search, and the rotation object that applies them along the channel axis. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "dq_search.h"

/* The first released layout ends after max_steps. */
#define ROTATION_PARAMS_MIN_SIZE (offsetof(dq_rotation_params, max_steps) + sizeof(int32_t))
#define ROTATION_KNOWN_FLAGS                                                                 \
    (DQ_ROT_F_ROW_RULE | DQ_ROT_F_PER_BLOCK | DQ_ROT_F_RANDOM_QPRIME | DQ_ROT_F_HADAMARD_BASE)
/* Flags that only the greedy search understands. */
#define ROTATION_SEARCH_FLAGS (DQ_ROT_F_ROW_RULE | DQ_ROT_F_RANDOM_QPRIME | DQ_ROT_F_HADAMARD_BASE)

/* Rows per product when applying rotations: large enough for efficient sgemm calls, small
 * enough to keep the temporary in cache. */
#define APPLY_CHUNK_ROWS 256

/* ---- seeded randomness (splitmix64: tiny, portable, and the same on every platform) ---- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t dq__seed_mix(uint64_t seed, uint64_t stream)
{
    uint64_t s = seed ^ (stream * 0xD1B54A32D192ED03ull);
    splitmix64(&s);
    return splitmix64(&s);
}

/* Uniform in (0, 1]: never 0, so the logarithm below stays finite. */
static double uniform_open0(uint64_t *state)
{
    return (double)((splitmix64(state) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* Standard normal pairs by Box-Muller. */
static void gaussian_fill(uint64_t *state, double *v, int64_t n)
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
    dq_status st = DQ_ERR_NOMEM;
    if (!v || (qprime && !rot))
        goto out;
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

/* Haar-distributed orthogonal matrix: modified Gram-Schmidt (in double) of a Gaussian matrix,
 * i.e. the Q of its QR factorisation with a positive diagonal. */
static dq_status random_orthogonal(const dq_context *ctx, int32_t n, uint64_t seed, float *out,
                                   int64_t ldo)
{
    double *q = dq__alloc(ctx, (size_t)n * (size_t)n * sizeof(double)); /* column j at q+j*n */
    if (!q)
        return DQ_ERR_NOMEM;
    uint64_t state = seed;
    for (int32_t j = 0; j < n; j++) {
        double *v = q + (size_t)j * (size_t)n;
        double norm = 0.0;
        /* A Gaussian column is dependent on the others with probability zero; redraw if the
         * remainder is numerically negligible anyway. */
        for (int attempt = 0; attempt < 16 && !(norm > 1e-6); attempt++) {
            gaussian_fill(&state, v, n);
            for (int32_t p = 0; p < j; p++) {
                const double *u = q + (size_t)p * (size_t)n;
                double d = 0.0;
                for (int32_t i = 0; i < n; i++)
                    d += u[i] * v[i];
                for (int32_t i = 0; i < n; i++)
                    v[i] -= d * u[i];
            }
            norm = 0.0;
            for (int32_t i = 0; i < n; i++)
                norm += v[i] * v[i];
            norm = sqrt(norm);
        }
        for (int32_t i = 0; i < n; i++)
            v[i] /= norm;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            out[(size_t)i * (size_t)ldo + (size_t)j] = (float)q[(size_t)j * (size_t)n + (size_t)i];
    dq__free(ctx, q);
    return DQ_OK;
}

DQ_API dq_status dq_rotation_base(int32_t n, const float *qprime, float *out, int64_t ldo)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    if (n < 2 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_ERR_SHAPE;
    if (qprime && !dq__all_finite(qprime, n - 1, n - 1, n - 1))
        return DQ_ERR_NONFINITE;
    return base_matrix(NULL, n, false, qprime, out, ldo);
}

DQ_API dq_status dq_rotation_hadamard(int32_t n, float *out, int64_t ldo)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    if (n < 1 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_ERR_SHAPE;
    if (!is_pow2(n))
        return DQ_ERR_UNSUPPORTED;
    hadamard(n, out, ldo);
    return DQ_OK;
}

DQ_API dq_status dq_rotation_random_orthogonal(int32_t n, uint64_t seed, float *out,
                                               int64_t ldo)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    if (n < 1 || n > DQ_MAX_BLOCK || ldo < n)
        return DQ_ERR_SHAPE;
    return random_orthogonal(NULL, n, seed, out, ldo);
}

/* ---- the rotation object ---- */

DQ_API void dq_rotation_free(dq_rotation *r)
{
    if (!r)
        return;
    dq_context c = r->ctx;
    dq__free(&c, r->mat_of_block);
    dq__free(&c, r->mat_size);
    dq__free(&c, r->mat_offset);
    dq__free(&c, r->data);
    dq__free(&c, r->selected);
    dq__free(&c, r->ids);
    dq__free(&c, r->swapped);
    dq__free(&c, r->peaks);
    dq__free(&c, r);
}

/* Allocates the object and lays out its matrices: per block, or one shared by the full blocks
 * plus one for a shorter last block. */
static dq_status rotation_alloc(const dq_context *ctx, int64_t cols, int32_t bs, bool per_block,
                                int32_t method, int32_t steps, dq_rotation **out)
{
    *out = NULL;
    int64_t n_blocks = dq__n_blocks(cols, bs), full = cols / bs;
    int64_t n_mats = per_block ? n_blocks : (full > 0) + (cols % bs != 0);
    size_t total = 0, rec = 0;
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t len = per_block ? dq__block_len(cols, bs, m)
                                : (m == 0 && full > 0 ? bs : (int32_t)(cols % bs));
        if (!dq__add_size(total, (size_t)len * (size_t)len, &total))
            return DQ_ERR_OVERFLOW;
    }
    size_t bytes;
    if (!dq__mul_size(total, sizeof(float), &bytes) ||
        (method == DQ_ROT_METHOD_GREEDY &&
         !dq__mul_size((size_t)n_mats, (size_t)steps + 1, &rec)))
        return DQ_ERR_OVERFLOW;

    dq_rotation *r = dq__calloc(ctx, 1, sizeof *r);
    if (!r)
        return DQ_ERR_NOMEM;
    r->ctx = *ctx;
    r->cols = cols;
    r->block_size = bs;
    r->method = method;
    r->per_block = per_block;
    r->n_blocks = n_blocks;
    r->n_mats = n_mats;
    r->steps = method == DQ_ROT_METHOD_GREEDY ? steps : 0;
    r->mat_of_block = dq__alloc(ctx, (size_t)n_blocks * sizeof(int64_t));
    r->mat_size = dq__alloc(ctx, (size_t)n_mats * sizeof(int32_t));
    r->mat_offset = dq__alloc(ctx, (size_t)n_mats * sizeof(size_t));
    r->selected = dq__alloc(ctx, (size_t)n_mats * sizeof(int32_t));
    r->data = dq__alloc(ctx, bytes);
    bool ok = r->mat_of_block && r->mat_size && r->mat_offset && r->selected && r->data;
    if (ok && method == DQ_ROT_METHOD_GREEDY) {
        r->ids = dq__calloc(ctx, rec, sizeof(int64_t));
        r->swapped = dq__calloc(ctx, rec, sizeof(int32_t));
        r->peaks = dq__calloc(ctx, rec, sizeof(float));
        ok = r->ids && r->swapped && r->peaks;
    }
    if (!ok) {
        dq_rotation_free(r);
        return DQ_ERR_NOMEM;
    }
    size_t off = 0;
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t len = per_block ? dq__block_len(cols, bs, m)
                                : (m == 0 && full > 0 ? bs : (int32_t)(cols % bs));
        r->mat_size[m] = len;
        r->mat_offset[m] = off;
        r->selected[m] = -1;
        off += (size_t)len * (size_t)len;
    }
    for (int64_t b = 0; b < n_blocks; b++)
        r->mat_of_block[b] = per_block ? b : (b < full ? 0 : (full > 0 ? 1 : 0));
    *out = r;
    return DQ_OK;
}

/* First block using matrix m and how many consecutive blocks use it. */
static void matrix_blocks(const dq_rotation *r, int64_t m, int64_t *first, int64_t *count)
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
    dq__pool *pool = NULL;
    dq_status st = dq__pool_create(ctx, ctx->n_threads, &pool);
    if (st != DQ_OK)
        return st;
    float *base = dq__alloc(ctx, bsq * sizeof(float));
    float *qp = o->random_qprime ? dq__alloc(ctx, bsq * sizeof(float)) : NULL;
    st = DQ_ERR_NOMEM;
    if (!base || (o->random_qprime && !qp))
        goto out;
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
            st = random_orthogonal(ctx, n - 1, dq__seed_mix(o->seed, (uint64_t)m), qp, n - 1);
            if (st != DQ_OK)
                goto out;
            qprime = qp;
        }
        if ((st = base_matrix(ctx, n, o->hadamard_base, qprime, base, n)) != DQ_OK)
            goto out;
        /* The view of this matrix's blocks: row t * nb + (b - b0) holds token t of block b. */
        int64_t b0, nb;
        matrix_blocks(r, m, &b0, &nb);
        const dq__search_view view = {x + (size_t)b0 * (size_t)bs, ldx, rows, nb, bs, n};
        dq__search_record rec = {r->ids + (size_t)m * rec_len, r->swapped + (size_t)m * rec_len,
                                 r->peaks + (size_t)m * rec_len, 0, 0};
        st = dq__greedy_search(ctx, pool, o->plain_search ? DQ__SEARCH_PLAIN : DQ__SEARCH_PRUNED,
                               &view, base, r->steps, o->row_rule, dst, &rec);
        if (st != DQ_OK)
            goto out;
        r->selected[m] = rec.selected;
    }
    st = DQ_OK;
out:
    dq__pool_free(pool);
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
        return DQ_ERR_UNSUPPORTED;
    dq_rotation *r;
    dq_status st = rotation_alloc(ctx, cols, bs, o->per_block, o->method, o->max_steps, &r);
    if (st != DQ_OK)
        return st;
    if (o->method == DQ_ROT_METHOD_GREEDY) {
        st = build_greedy(r, o, x, rows, ldx);
    } else {
        for (int64_t m = 0; m < r->n_mats && st == DQ_OK; m++) {
            float *dst = r->data + r->mat_offset[m];
            if (o->method == DQ_ROT_METHOD_HADAMARD)
                hadamard(r->mat_size[m], dst, r->mat_size[m]);
            else
                st = random_orthogonal(ctx, r->mat_size[m], dq__seed_mix(o->seed, (uint64_t)m),
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

dq_status dq__rotation_clone(const dq_context *ctx, const dq_rotation *src, dq_rotation **out)
{
    *out = NULL;
    ctx = dq__ctx(ctx);
    dq_rotation *r;
    dq_status st = rotation_alloc(ctx, src->cols, src->block_size, src->per_block, src->method,
                                  src->steps, &r);
    if (st != DQ_OK)
        return st;
    size_t total = src->mat_offset[src->n_mats - 1] +
                   (size_t)src->mat_size[src->n_mats - 1] * (size_t)src->mat_size[src->n_mats - 1];
    memcpy(r->data, src->data, total * sizeof(float));
    memcpy(r->selected, src->selected, (size_t)src->n_mats * sizeof(int32_t));
    if (src->ids) {
        size_t rec = (size_t)src->n_mats * ((size_t)src->steps + 1);
        memcpy(r->ids, src->ids, rec * sizeof(int64_t));
        memcpy(r->swapped, src->swapped, rec * sizeof(int32_t));
        memcpy(r->peaks, src->peaks, rec * sizeof(float));
    }
    *out = r;
    return DQ_OK;
}

typedef struct rows_job {
    const dq_rotation *r;
    const float *in;
    float *out;
    int64_t ldi, ldo, rows;
} rows_job;

static void rows_worker(void *arg, int32_t w, int32_t n_workers)
{
    const rows_job *j = arg;
    const dq_rotation *r = j->r;
    int64_t begin, end;
    dq__split_rows(j->rows, w, n_workers, &begin, &end);
    for (int64_t b = 0; b < r->n_blocks && begin < end; b++) {
        const int64_t m = r->mat_of_block[b];
        const int32_t n = r->mat_size[m];
        const size_t col = (size_t)b * (size_t)r->block_size;
        dq__block_product(j->in + (size_t)begin * (size_t)j->ldi + col, j->ldi, end - begin, n,
                          r->data + r->mat_offset[m], n, n,
                          j->out + (size_t)begin * (size_t)j->ldo + col, j->ldo);
    }
}

dq_status dq__rotation_rows_exact(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                                  int64_t ldo, int64_t rows, int32_t n_threads)
{
    dq__pool *pool;
    dq_status st = dq__pool_create(&r->ctx, n_threads, &pool);
    if (st != DQ_OK)
        return st;
    rows_job job = {r, in, out, ldi, ldo, rows};
    dq__pool_run(pool, rows_worker, &job);
    dq__pool_free(pool);
    return DQ_OK;
}

dq_status dq__rotation_rows(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                            int64_t ldo, int64_t rows)
{
    const int32_t bs = r->block_size;
    /* One shared matrix over whole blocks of contiguous rows: a single tall product. */
    if (r->n_mats == 1 && r->cols % bs == 0 && ldi == r->cols && ldo == r->cols &&
        rows <= INT_MAX / r->n_blocks)
        return dq__sgemm(false, false, rows * r->n_blocks, bs, bs, 1.0f, in, bs, r->data, bs,
                         0.0f, out, bs);
    for (int64_t b = 0; b < r->n_blocks; b++) {
        const int64_t m = r->mat_of_block[b];
        const int32_t n = r->mat_size[m];
        const size_t col = (size_t)b * (size_t)bs;
        dq_status st = dq__sgemm(false, false, rows, n, n, 1.0f, in + col, ldi,
                                 r->data + r->mat_offset[m], n, 0.0f, out + col, ldo);
        if (st != DQ_OK)
            return st;
    }
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

static dq_status read_rotation_params(const dq_rotation_params *user, dq__rot_opts *o)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    dq_status st = dq__params_read(&p, sizeof p, ROTATION_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    bool greedy = p.method == DQ_ROT_METHOD_GREEDY;
    if ((p.flags & ~(uint32_t)ROTATION_KNOWN_FLAGS) != 0 || p.method < DQ_ROT_METHOD_GREEDY ||
        p.method > DQ_ROT_METHOD_RANDOM || p.block_size < 2 || p.block_size > DQ_MAX_BLOCK ||
        p.max_steps < 0 || p.max_steps > DQ_MAX_STEPS)
        return DQ_ERR_INVALID_ARG;
    /* Search options mean nothing to the other methods: refuse rather than ignore them. */
    if (!greedy && ((p.flags & ROTATION_SEARCH_FLAGS) || p.qprime))
        return DQ_ERR_INVALID_ARG;
    if (p.qprime && (p.flags & DQ_ROT_F_RANDOM_QPRIME))
        return DQ_ERR_INVALID_ARG;
    if (p.qprime && !dq__all_finite(p.qprime, p.block_size - 1, p.block_size - 1,
                                    p.block_size - 1))
        return DQ_ERR_NONFINITE;
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
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    dq__rot_opts o;
    dq_status st = read_rotation_params(p, &o);
    if (st != DQ_OK)
        return st;
    if (o.method == DQ_ROT_METHOD_GREEDY) {
        if ((st = dq__check_matrix(ctx, "x", x, rows, cols, ldx)) != DQ_OK)
            return st;
        if (!dq__all_finite(x, rows, cols, ldx))
            return DQ_ERR_NONFINITE;
    } else if (cols <= 0) {
        return DQ_ERR_SHAPE;
    }
    return dq__rotation_build(ctx, &o, x, rows, cols, ldx, out);
}

DQ_API dq_status dq_rotation_layout(const dq_rotation *r, int64_t *cols, int32_t *block_size,
                                    int64_t *n_blocks, int64_t *n_matrices)
{
    if (!r)
        return DQ_ERR_INVALID_ARG;
    if (cols)
        *cols = r->cols;
    if (block_size)
        *block_size = r->block_size;
    if (n_blocks)
        *n_blocks = r->n_blocks;
    if (n_matrices)
        *n_matrices = r->n_mats;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_block(const dq_rotation *r, int64_t b, int32_t *size,
                                   int64_t *matrix)
{
    if (!r || b < 0 || b >= r->n_blocks)
        return DQ_ERR_INVALID_ARG;
    if (size)
        *size = dq__block_len(r->cols, r->block_size, b);
    if (matrix)
        *matrix = r->mat_of_block[b];
    return DQ_OK;
}

DQ_API dq_status dq_rotation_matrix(const dq_rotation *r, int64_t m, float *out, int64_t ldo,
                                    int32_t *size)
{
    if (!r || m < 0 || m >= r->n_mats || (!out && !size))
        return DQ_ERR_INVALID_ARG;
    const int32_t n = r->mat_size[m];
    if (out) {
        if (ldo < n)
            return DQ_ERR_SHAPE;
        const float *src = r->data + r->mat_offset[m];
        for (int32_t i = 0; i < n; i++)
            memcpy(out + (size_t)i * (size_t)ldo, src + (size_t)i * (size_t)n,
                   (size_t)n * sizeof(float));
    }
    if (size)
        *size = n;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_trace(const dq_rotation *r, int64_t m, int32_t *steps,
                                   int32_t *selected, int64_t *ids, int32_t *swapped,
                                   float *peaks, int64_t cap)
{
    if (!r || m < 0 || m >= r->n_mats)
        return DQ_ERR_INVALID_ARG;
    if (r->selected[m] < 0)
        return DQ_ERR_BAD_STATE;
    if (steps)
        *steps = r->steps;
    const int64_t len = (int64_t)r->steps + 1;
    if ((ids || swapped || peaks) && cap < len)
        return DQ_ERR_BUFFER;
    if (selected)
        *selected = r->selected[m];
    const size_t off = (size_t)m * (size_t)len;
    if (ids)
        memcpy(ids, r->ids + off, (size_t)len * sizeof(int64_t));
    if (swapped)
        memcpy(swapped, r->swapped + off, (size_t)len * sizeof(int32_t));
    if (peaks)
        memcpy(peaks, r->peaks + off, (size_t)len * sizeof(float));
    return DQ_OK;
}

DQ_API dq_status dq_rotation_apply(const dq_rotation *r, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx)
{
    if (!r)
        return DQ_ERR_INVALID_ARG;
    dq_status st = dq__check_matrix(&r->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != r->cols)
        return DQ_ERR_SHAPE;
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_ERR_NONFINITE;
    const int64_t chunk = rows < APPLY_CHUNK_ROWS ? rows : APPLY_CHUNK_ROWS;
    size_t bytes;
    if (!dq__mul_size((size_t)chunk * sizeof(float), (size_t)cols, &bytes))
        return DQ_ERR_OVERFLOW;
    float *tmp = dq__alloc(&r->ctx, bytes);
    if (!tmp)
        return DQ_ERR_NOMEM;
    for (int64_t r0 = 0; r0 < rows && st == DQ_OK; r0 += chunk) {
        int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        float *xr = x + (size_t)r0 * (size_t)ldx;
        st = dq__rotation_rows(r, xr, ldx, tmp, cols, m);
        for (int64_t i = 0; i < m && st == DQ_OK; i++)
            memcpy(xr + (size_t)i * (size_t)ldx, tmp + (size_t)i * (size_t)cols,
                   (size_t)cols * sizeof(float));
    }
    dq__free(&r->ctx, tmp);
    return st;
}
