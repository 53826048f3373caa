/* Plans: smoothing, block rotations and zigzag permutations composed into one channel
 * transform G, built from calibration data and applied to activations (x * G) and weights
 * (W * G^-T). */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dq_refine.h"
#include "dq_transform.h"

/* The first released layout ends after smooth_alpha. */
#define PLAN_PARAMS_MIN_SIZE (offsetof(dq_plan_params, smooth_alpha) + sizeof(float))
#define PLAN_KNOWN_FLAGS                                                                     \
    (DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE | DQ_PLAN_F_ROW_RULE |         \
     DQ_PLAN_F_PER_BLOCK_R | DQ_PLAN_F_RANDOM_QPRIME | DQ_PLAN_F_HADAMARD_BASE)
#define MAX_PERMUTATION_TIMES 64

/* Rows transformed per pass: the temporary (rows x cols floats) stays in cache and each block
 * product is still a reasonably tall sgemm. */
#define PLAN_CHUNK_ROWS 256

struct dq_plan {
    dq_context ctx;
    int64_t cols;
    float *smooth;      /* cols factors, NULL = no smoothing */
    int32_t n_rot;      /* rotation slots; permutation slots = n_rot - 1 */
    dq_rotation **rot;  /* n_rot entries, NULL = identity */
    int64_t **perm;     /* n_rot - 1 entries, NULL = identity */
};

DQ_API dq_status dq_plan_params_init(dq_plan_params *p, size_t struct_size)
{
    const dq_plan_params defaults = {
        .struct_size = sizeof defaults,
        .flags = DQ_PLAN_F_DEFAULT,
        .method = DQ_ROT_METHOD_GREEDY,
        .block_size = 128,
        .max_rotation_step = 256,
        .permutation_times = 1,
        .smooth_alpha = 0.6f,
    };
    return dq__params_init(p, struct_size, PLAN_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static dq_status read_plan_params(const dq_plan_params *user, int64_t cols, dq_plan_params *p)
{
    dq_plan_params_init(p, sizeof *p);
    dq_status st = dq__params_read(p, sizeof *p, PLAN_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if ((p->flags & ~(uint32_t)PLAN_KNOWN_FLAGS) != 0 || p->method < DQ_ROT_METHOD_GREEDY ||
        p->method > DQ_ROT_METHOD_RANDOM || p->block_size < 2 ||
        p->block_size > DQ_MAX_BLOCK || p->max_rotation_step < 0 ||
        p->max_rotation_step > DQ_MAX_STEPS || p->permutation_times < 1 ||
        p->permutation_times > MAX_PERMUTATION_TIMES ||
        !(p->smooth_alpha >= 0.0f && p->smooth_alpha <= 1.0f))
        return DQ_ERR_INVALID_ARG;
    /* Search options mean nothing to the other methods: refuse rather than ignore them. */
    if (p->method != DQ_ROT_METHOD_GREEDY &&
        (p->flags & (DQ_PLAN_F_ROW_RULE | DQ_PLAN_F_RANDOM_QPRIME | DQ_PLAN_F_HADAMARD_BASE)))
        return DQ_ERR_INVALID_ARG;
    dq__refine_opts refine;
    if (p->refine && (st = dq__refine_read(p->refine, &refine)) != DQ_OK)
        return st;
    if (p->refine && refine.method != DQ_REFINE_NONE && !(p->flags & DQ_PLAN_F_ROTATE))
        return DQ_ERR_INVALID_ARG; /* nothing to refine */
    if (cols <= 0)
        return DQ_ERR_SHAPE;
    if ((p->flags & DQ_PLAN_F_ROTATE) &&
        (p->method == DQ_ROT_METHOD_HADAMARD || (p->flags & DQ_PLAN_F_HADAMARD_BASE)) &&
        !dq__hadamard_fits(cols, p->block_size))
        return DQ_ERR_UNSUPPORTED;
    return DQ_OK;
}

/* True when rotations are refined (params already validated); o receives the options. */
static bool refine_on(const dq_plan_params *p, dq__refine_opts *o)
{
    return (p->flags & DQ_PLAN_F_ROTATE) && p->refine && dq__refine_read(p->refine, o) == DQ_OK &&
           o->method != DQ_REFINE_NONE;
}

static bool needs_sample(const dq_plan_params *p)
{
    dq__refine_opts o;
    return (p->flags & DQ_PLAN_F_PERMUTE) ||
           ((p->flags & DQ_PLAN_F_ROTATE) && p->method == DQ_ROT_METHOD_GREEDY) ||
           refine_on(p, &o);
}

DQ_API void dq_plan_free(dq_plan *pl)
{
    if (!pl)
        return;
    dq_context c = pl->ctx;
    for (int32_t i = 0; i < pl->n_rot; i++) {
        if (pl->rot)
            dq_rotation_free(pl->rot[i]);
        if (pl->perm && i + 1 < pl->n_rot)
            dq__free(&c, pl->perm[i]);
    }
    dq__free(&c, pl->rot);
    dq__free(&c, pl->perm);
    dq__free(&c, pl->smooth);
    dq__free(&c, pl);
}

static dq_status plan_alloc(const dq_context *ctx, int64_t cols, int32_t n_rot, bool smooth,
                            dq_plan **out)
{
    *out = NULL;
    dq_plan *pl = dq__calloc(ctx, 1, sizeof *pl);
    if (!pl)
        return DQ_ERR_NOMEM;
    pl->ctx = *ctx;
    pl->cols = cols;
    pl->n_rot = n_rot;
    bool ok = true;
    if (n_rot > 0) {
        pl->rot = dq__calloc(ctx, (size_t)n_rot, sizeof *pl->rot);
        ok = ok && pl->rot;
    }
    if (n_rot > 1) {
        pl->perm = dq__calloc(ctx, (size_t)n_rot - 1, sizeof *pl->perm);
        ok = ok && pl->perm;
    }
    if (smooth) {
        pl->smooth = dq__alloc(ctx, (size_t)cols * sizeof(float));
        ok = ok && pl->smooth;
    }
    if (!ok) {
        dq_plan_free(pl);
        return DQ_ERR_NOMEM;
    }
    *out = pl;
    return DQ_OK;
}

/* y[:, j] = x[:, perm[j]] for rows rows; x and y must not overlap. */
static void gather_cols(const int64_t *perm, const float *x, int64_t ldx, float *y, int64_t ldy,
                        int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *src = x + (size_t)i * (size_t)ldx;
        float *dst = y + (size_t)i * (size_t)ldy;
        for (int64_t j = 0; j < cols; j++)
            dst[j] = src[perm[j]];
    }
}

/* The construction itself. sample is the working copy of the calibration sample (rows x cols,
 * contiguous; overwritten, still owned by the caller), NULL when the plan needs none;
 * act_absmax and w_absmax are read only with smoothing. */
static dq_status build_core(const dq_context *ctx, const dq_plan_params *p,
                            const float *act_absmax, float *sample, int64_t rows, int64_t cols,
                            const float *w_absmax, dq_plan **out)
{
    const bool smooth = (p->flags & DQ_PLAN_F_SMOOTH) != 0;
    const bool rotate = (p->flags & DQ_PLAN_F_ROTATE) != 0;
    const bool permute = (p->flags & DQ_PLAN_F_PERMUTE) != 0;
    const int32_t n_rot = rotate ? (permute ? p->permutation_times + 1 : 1) : (permute ? 2 : 0);
    dq__refine_opts refine;
    const bool refined = refine_on(p, &refine);
    float *scratch = NULL, *key = NULL;
    float *x = sample, *y = NULL; /* current sample and free buffer; exchanged as we go */
    dq_plan *pl;
    dq_status st = plan_alloc(ctx, cols, n_rot, smooth, &pl);
    if (st != DQ_OK)
        return st;
    if (smooth) {
        dq__smooth_factors(act_absmax, w_absmax, cols, p->smooth_alpha, pl->smooth);
        if (x)
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++)
                    x[(size_t)i * (size_t)cols + (size_t)j] /= pl->smooth[j];
    }
    if (n_rot > 1) {
        scratch = dq__alloc(ctx, (size_t)rows * (size_t)cols * sizeof(float));
        key = dq__alloc(ctx, (size_t)cols * sizeof(float));
        y = scratch;
        st = DQ_ERR_NOMEM;
        if (!scratch || !key)
            goto out;
    }
    for (int32_t s = 0; s < n_rot; s++) {
        if (rotate) {
            const dq__rot_opts o = {
                .method = p->method,
                .block_size = p->block_size,
                .max_steps = p->max_rotation_step,
                .row_rule = (p->flags & DQ_PLAN_F_ROW_RULE) != 0,
                .per_block = (p->flags & DQ_PLAN_F_PER_BLOCK_R) != 0,
                .random_qprime = (p->flags & DQ_PLAN_F_RANDOM_QPRIME) != 0,
                .hadamard_base = (p->flags & DQ_PLAN_F_HADAMARD_BASE) != 0,
                .seed = dq__seed_mix(p->seed, (uint64_t)s),
                .qprime = NULL,
            };
            st = dq__rotation_build(ctx, &o, x, rows, cols, cols, &pl->rot[s]);
            if (st != DQ_OK)
                goto out;
            if (refined) { /* on the sample exactly as this slot sees it */
                dq_rotation *better;
                st = dq__rotation_refine(ctx, &refine, pl->rot[s], x, rows, cols, cols,
                                         (uint64_t)s, &better);
                if (st != DQ_OK)
                    goto out;
                dq_rotation_free(pl->rot[s]);
                pl->rot[s] = better;
            }
        }
        if (s + 1 == n_rot)
            break;
        /* Rotate the sample, then deal its channels by their new magnitudes. */
        float *t;
        if (pl->rot[s]) {
            st = dq__rotation_rows_exact(pl->rot[s], x, cols, y, cols, rows, ctx->n_threads);
            if (st != DQ_OK)
                goto out;
            t = x;
            x = y;
            y = t;
        }
        for (int64_t j = 0; j < cols; j++)
            key[j] = 0.0f;
        dq__col_absmax(x, rows, cols, cols, key);
        pl->perm[s] = dq__alloc(ctx, (size_t)cols * sizeof(int64_t));
        if (!pl->perm[s]) {
            st = DQ_ERR_NOMEM;
            goto out;
        }
        if ((st = dq__zigzag(ctx, key, cols, p->block_size, pl->perm[s])) != DQ_OK)
            goto out;
        gather_cols(pl->perm[s], x, cols, y, cols, rows, cols);
        t = x;
        x = y;
        y = t;
    }
    st = DQ_OK;
out:
    dq__free(ctx, scratch);
    dq__free(ctx, key);
    if (st != DQ_OK) {
        dq_plan_free(pl);
        return st;
    }
    *out = pl;
    return DQ_OK;
}

static dq_status check_absmax(const float *v, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        if (!isfinite(v[j]))
            return DQ_ERR_NONFINITE;
        if (v[j] < 0.0f)
            return DQ_ERR_INVALID_ARG;
    }
    return DQ_OK;
}

DQ_API dq_status dq_plan_build(dq_context *ctx, const dq_plan_params *params,
                               const dq_calib *calib, const float *w_absmax, int64_t cols,
                               dq_plan **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    dq_plan_params p;
    dq_status st = read_plan_params(params, cols, &p);
    if (st != DQ_OK)
        return st;
    const bool smooth = (p.flags & DQ_PLAN_F_SMOOTH) != 0, sample = needs_sample(&p);
    if (!calib && (smooth || sample))
        return DQ_ERR_INVALID_ARG;
    if (smooth && !w_absmax)
        return DQ_ERR_INVALID_ARG;
    if (calib && dq__calib_cols(calib) != cols)
        return DQ_ERR_SHAPE;
    if (calib && dq__calib_token_count(calib) == 0)
        return DQ_ERR_BAD_STATE;
    if (smooth && (st = check_absmax(w_absmax, cols)) != DQ_OK)
        return st;
    if ((uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_ERR_OVERFLOW;

    const dq_context *c = dq__ctx(ctx);
    float *x = NULL;
    int64_t rows = 0;
    if (sample && (st = dq__calib_take_sample(calib, c, &x, &rows)) != DQ_OK)
        return st;
    st = build_core(c, &p, calib ? dq__calib_absmax_ptr(calib) : NULL, x, rows, cols, w_absmax,
                    out);
    dq__free(c, x);
    return st;
}

DQ_API dq_status dq_plan_build_from_sample(dq_context *ctx, const dq_plan_params *params,
                                           const float *act_absmax, const float *sample,
                                           int64_t rows, int64_t cols, int64_t lds,
                                           const float *w_absmax, dq_plan **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    dq_plan_params p;
    dq_status st = read_plan_params(params, cols, &p);
    if (st != DQ_OK)
        return st;
    const bool smooth = (p.flags & DQ_PLAN_F_SMOOTH) != 0;
    if (smooth && !w_absmax)
        return DQ_ERR_INVALID_ARG;
    if ((st = dq__check_matrix(ctx, "sample", sample, rows, cols, lds)) != DQ_OK)
        return st;
    size_t n, bytes;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &n) ||
        !dq__mul_size(n, sizeof(float), &bytes) || (uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_ERR_OVERFLOW;
    if (!dq__all_finite(sample, rows, cols, lds))
        return DQ_ERR_NONFINITE;
    if (smooth && act_absmax && (st = check_absmax(act_absmax, cols)) != DQ_OK)
        return st;
    if (smooth && (st = check_absmax(w_absmax, cols)) != DQ_OK)
        return st;

    const dq_context *c = dq__ctx(ctx);
    float *x = NULL, *own_absmax = NULL;
    st = DQ_ERR_NOMEM;
    if (needs_sample(&p)) { /* a working copy, transformed as the plan is built */
        if (!(x = dq__alloc(c, bytes)))
            goto out;
        for (int64_t i = 0; i < rows; i++)
            memcpy(x + (size_t)i * (size_t)cols, sample + (size_t)i * (size_t)lds,
                   (size_t)cols * sizeof(float));
    }
    if (smooth && !act_absmax) {
        if (!(own_absmax = dq__calloc(c, (size_t)cols, sizeof(float))))
            goto out;
        dq__col_absmax(sample, rows, cols, lds, own_absmax);
        act_absmax = own_absmax;
    }
    st = build_core(c, &p, act_absmax, x, rows, cols, w_absmax, out);
out:
    dq__free(c, x);
    dq__free(c, own_absmax);
    return st;
}

static bool is_permutation(const dq_context *ctx, const int64_t *perm, int64_t n, dq_status *st)
{
    uint8_t *seen = dq__calloc(ctx, (size_t)n, 1);
    if (!seen) {
        *st = DQ_ERR_NOMEM;
        return false;
    }
    bool ok = true;
    for (int64_t j = 0; j < n && ok; j++) {
        ok = perm[j] >= 0 && perm[j] < n && !seen[perm[j]];
        if (ok)
            seen[perm[j]] = 1;
    }
    dq__free(ctx, seen);
    *st = ok ? DQ_OK : DQ_ERR_INVALID_ARG;
    return ok;
}

DQ_API dq_status dq_plan_assemble(dq_context *ctx, int64_t cols, const float *smooth_scale,
                                  int32_t n_rotations, const dq_rotation *const *rotations,
                                  const int64_t *const *permutations, dq_plan **out)
{
    if (!out)
        return DQ_ERR_INVALID_ARG;
    *out = NULL;
    if (n_rotations < 0 || n_rotations > MAX_PERMUTATION_TIMES + 1 ||
        (n_rotations > 0 && !rotations) || (n_rotations > 1 && !permutations))
        return DQ_ERR_INVALID_ARG;
    if (cols <= 0)
        return DQ_ERR_SHAPE;
    if ((uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_ERR_OVERFLOW;
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_OK;
    if (smooth_scale)
        for (int64_t j = 0; j < cols; j++) {
            if (!isfinite(smooth_scale[j]))
                return DQ_ERR_NONFINITE;
            if (!(smooth_scale[j] > 0.0f))
                return DQ_ERR_INVALID_ARG;
        }
    for (int32_t i = 0; i < n_rotations; i++)
        if (rotations[i] && rotations[i]->cols != cols)
            return DQ_ERR_SHAPE;
    for (int32_t i = 0; i + 1 < n_rotations; i++)
        if (permutations[i] && !is_permutation(c, permutations[i], cols, &st))
            return st;

    dq_plan *pl;
    if ((st = plan_alloc(c, cols, n_rotations, smooth_scale != NULL, &pl)) != DQ_OK)
        return st;
    if (smooth_scale)
        memcpy(pl->smooth, smooth_scale, (size_t)cols * sizeof(float));
    for (int32_t i = 0; i < n_rotations && st == DQ_OK; i++) {
        if (rotations[i])
            st = dq__rotation_clone(c, rotations[i], &pl->rot[i]);
        if (st == DQ_OK && i + 1 < n_rotations && permutations[i]) {
            pl->perm[i] = dq__alloc(c, (size_t)cols * sizeof(int64_t));
            if (pl->perm[i])
                memcpy(pl->perm[i], permutations[i], (size_t)cols * sizeof(int64_t));
            else
                st = DQ_ERR_NOMEM;
        }
    }
    if (st != DQ_OK) {
        dq_plan_free(pl);
        return st;
    }
    *out = pl;
    return DQ_OK;
}

/* ---- applying a plan ---- */

static bool has_stages(const dq_plan *pl)
{
    for (int32_t i = 0; i < pl->n_rot; i++)
        if (pl->rot[i] || (i + 1 < pl->n_rot && pl->perm[i]))
            return true;
    return false;
}

static size_t chunk_rows(int64_t rows)
{
    return (size_t)(rows < PLAN_CHUNK_ROWS ? rows : PLAN_CHUNK_ROWS);
}

/* Workspace bytes, with room to align the caller's pointer to DQ_ALIGN. */
static bool workspace_bytes(const dq_plan *pl, int64_t rows, size_t *bytes)
{
    *bytes = 0;
    if (!has_stages(pl))
        return true;
    size_t n;
    return dq__mul_size(chunk_rows(rows), (size_t)pl->cols, &n) &&
           dq__mul_size(n, sizeof(float), &n) && dq__add_size(n, DQ_ALIGN, bytes);
}

DQ_API dq_status dq_plan_width(const dq_plan *pl, int64_t *cols)
{
    if (!pl || !cols)
        return DQ_ERR_INVALID_ARG;
    *cols = pl->cols;
    return DQ_OK;
}

DQ_API dq_status dq_plan_workspace_size(const dq_plan *pl, int64_t rows, size_t *bytes)
{
    if (!pl || !bytes)
        return DQ_ERR_INVALID_ARG;
    if (rows <= 0)
        return DQ_ERR_SHAPE;
    size_t b;
    if (!workspace_bytes(pl, rows, &b))
        return DQ_ERR_OVERFLOW;
    *bytes = b;
    return DQ_OK;
}

/* x (rows x cols, ldx) <- x * G (or W * G^-T when weight), in place, rows in chunks; tmp
 * holds chunk_rows x cols floats. */
static dq_status run_pipeline(const dq_plan *pl, float *x, int64_t rows, int64_t ldx, float *tmp,
                              bool weight)
{
    const int64_t cols = pl->cols, chunk = (int64_t)chunk_rows(rows);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        float *xr = x + (size_t)r0 * (size_t)ldx;
        if (pl->smooth)
            for (int64_t i = 0; i < m; i++) {
                float *row = xr + (size_t)i * (size_t)ldx;
                /* Divide (not multiply by 1/s) so activations match the reference bit for
                 * bit; weights are multiplied. */
                if (weight)
                    for (int64_t j = 0; j < cols; j++)
                        row[j] *= pl->smooth[j];
                else
                    for (int64_t j = 0; j < cols; j++)
                        row[j] /= pl->smooth[j];
            }
        for (int32_t s = 0; s < pl->n_rot; s++) {
            const int64_t *perm = s + 1 < pl->n_rot ? pl->perm[s] : NULL;
            if (pl->rot[s]) {
                dq_status st = dq__rotation_rows(pl->rot[s], xr, ldx, tmp, cols, m);
                if (st != DQ_OK)
                    return st;
                if (perm) {
                    gather_cols(perm, tmp, cols, xr, ldx, m, cols);
                } else {
                    for (int64_t i = 0; i < m; i++)
                        memcpy(xr + (size_t)i * (size_t)ldx, tmp + (size_t)i * (size_t)cols,
                               (size_t)cols * sizeof(float));
                }
            } else if (perm) {
                gather_cols(perm, xr, ldx, tmp, cols, m, cols);
                for (int64_t i = 0; i < m; i++)
                    memcpy(xr + (size_t)i * (size_t)ldx, tmp + (size_t)i * (size_t)cols,
                           (size_t)cols * sizeof(float));
            }
        }
    }
    return DQ_OK;
}

/* Shared argument checks of the apply functions. */
static dq_status check_apply(const dq_plan *pl, const float *x, int64_t rows, int64_t cols,
                             int64_t ldx)
{
    if (!pl)
        return DQ_ERR_INVALID_ARG;
    dq_status st = dq__check_matrix(&pl->ctx, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != pl->cols)
        return DQ_ERR_SHAPE;
    /* Fail before touching the data if the products cannot take this leading dimension. */
    if (has_stages(pl) && ldx > INT_MAX)
        return DQ_ERR_BLAS;
    return DQ_OK;
}

/* Runs the pipeline with the caller's workspace, or an internal one when work is NULL. */
static dq_status run_with_work(const dq_plan *pl, float *x, int64_t rows, int64_t ldx,
                               void *work, size_t work_size, bool weight)
{
    size_t need;
    if (!workspace_bytes(pl, rows, &need))
        return DQ_ERR_OVERFLOW;
    if (work && work_size < need)
        return DQ_ERR_BUFFER;
    void *owned = NULL;
    if (need > 0 && !work) {
        owned = dq__alloc(&pl->ctx, need);
        if (!owned)
            return DQ_ERR_NOMEM;
        work = owned;
    }
    float *tmp = NULL;
    if (need > 0) {
        uintptr_t a = ((uintptr_t)work + (DQ_ALIGN - 1)) & ~(uintptr_t)(DQ_ALIGN - 1);
        tmp = (float *)a;
    }
    dq_status st = run_pipeline(pl, x, rows, ldx, tmp, weight);
    dq__free(&pl->ctx, owned);
    return st;
}

DQ_API dq_status dq_plan_apply_act(const dq_plan *pl, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx, void *work, size_t work_size)
{
    dq_status st = check_apply(pl, x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_ERR_NONFINITE;
    return run_with_work(pl, x, rows, ldx, work, work_size, false);
}

DQ_API dq_status dq_plan_apply_act_to(const dq_plan *pl, const float *x, int64_t rows,
                                      int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                      void *work, size_t work_size)
{
    dq_status st = check_apply(pl, x, rows, cols, ldx);
    if (st == DQ_OK)
        st = check_apply(pl, y, rows, cols, ldy);
    if (st != DQ_OK)
        return st;
    if (!dq__all_finite(x, rows, cols, ldx))
        return DQ_ERR_NONFINITE;
    size_t need;
    if (!workspace_bytes(pl, rows, &need))
        return DQ_ERR_OVERFLOW;
    if (work && work_size < need)
        return DQ_ERR_BUFFER;
    if (x != y)
        for (int64_t i = 0; i < rows; i++)
            memcpy(y + (size_t)i * (size_t)ldy, x + (size_t)i * (size_t)ldx,
                   (size_t)cols * sizeof(float));
    return run_with_work(pl, y, rows, ldy, work, work_size, false);
}

DQ_API dq_status dq_plan_transform_weight(const dq_plan *pl, float *w, int64_t rows,
                                          int64_t cols, int64_t ldw)
{
    dq_status st = check_apply(pl, w, rows, cols, ldw);
    if (st != DQ_OK)
        return st;
    if (!dq__all_finite(w, rows, cols, ldw))
        return DQ_ERR_NONFINITE;
    return run_with_work(pl, w, rows, ldw, NULL, 0, true);
}

/* ---- exporting the parts ---- */

DQ_API dq_status dq_plan_layout(const dq_plan *pl, int32_t *has_smoothing, int32_t *n_rotations)
{
    if (!pl)
        return DQ_ERR_INVALID_ARG;
    if (has_smoothing)
        *has_smoothing = pl->smooth != NULL;
    if (n_rotations)
        *n_rotations = pl->n_rot;
    return DQ_OK;
}

DQ_API dq_status dq_plan_smooth_scales(const dq_plan *pl, float *s, int64_t n)
{
    if (!pl || !s)
        return DQ_ERR_INVALID_ARG;
    if (n != pl->cols)
        return DQ_ERR_SHAPE;
    for (int64_t j = 0; j < n; j++)
        s[j] = pl->smooth ? pl->smooth[j] : 1.0f;
    return DQ_OK;
}

DQ_API dq_status dq_plan_rotation(const dq_plan *pl, int32_t i, const dq_rotation **r)
{
    if (!pl || !r || i < 0 || i >= pl->n_rot)
        return DQ_ERR_INVALID_ARG;
    *r = pl->rot[i];
    return DQ_OK;
}

DQ_API dq_status dq_plan_permutation(const dq_plan *pl, int32_t i, int64_t *perm, int64_t n)
{
    if (!pl || !perm || i < 0 || i + 1 >= pl->n_rot)
        return DQ_ERR_INVALID_ARG;
    if (n != pl->cols)
        return DQ_ERR_SHAPE;
    for (int64_t j = 0; j < n; j++)
        perm[j] = pl->perm[i] ? pl->perm[i][j] : j;
    return DQ_OK;
}
