/* Plans (the run-time side): smoothing, block rotations and zigzag permutations composed into
 * one channel transform G, assembled from its parts and applied to activations (x * G) and
 * weights (W * G^-T). Building one from calibration data lives in
 * lib/offline/dq_plan_build.c. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dq_plan.h"
#include "dq_plan_binding.h"

/* Rows transformed per pass: the temporary (rows x cols floats) stays in cache. */
#define PLAN_CHUNK_ROWS 256

struct dq_plan {
    dq_context ctx;
    int64_t cols;
    float *smooth;      /* cols factors, NULL = no smoothing */
    int32_t n_rot;      /* rotation slots; permutation slots = n_rot - 1 */
    dq_rotation **rot;  /* n_rot entries, NULL = identity */
    int64_t **perm;     /* n_rot - 1 entries, NULL = identity */
    /* References beyond the creator's (layers using the plan): 0 from the zeroed allocation,
     * -1 after the last release. */
    atomic_int extra_refs;
};

dq_plan *dq__plan_retain(const dq_plan *pl)
{
    /* The count is the one mutable part of a plan; the object itself was allocated mutable. */
    dq_plan *m = (dq_plan *)(uintptr_t)pl;
    if (m)
        atomic_fetch_add_explicit(&m->extra_refs, 1, memory_order_relaxed);
    return m;
}

DQ_API void dq_plan_free(dq_plan *pl)
{
    if (!pl)
        return;
    /* Only the holder of the last reference frees; acquire-release orders every other
     * holder's reads before the memory goes. */
    if (atomic_fetch_sub_explicit(&pl->extra_refs, 1, memory_order_acq_rel) > 0)
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
    dq__context_drop(&c);
}

dq_status dq__plan_alloc(const dq_context *ctx, int64_t cols, int32_t n_rot, bool smooth,
                         dq_plan **out)
{
    *out = NULL;
    dq_plan *pl = dq__calloc(ctx, 1, sizeof *pl);
    if (!pl)
        return DQ_ERR_NOMEM;
    dq__context_keep(&pl->ctx, ctx);
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

float *dq__plan_smooth(dq_plan *pl)
{
    return pl->smooth;
}

dq_rotation **dq__plan_rotations(dq_plan *pl)
{
    return pl->rot;
}

int64_t **dq__plan_permutations(dq_plan *pl)
{
    return pl->perm;
}

void dq__gather_cols(const int64_t *perm, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *src = x + (size_t)i * (size_t)ldx;
        float *dst = y + (size_t)i * (size_t)ldy;
        for (int64_t j = 0; j < cols; j++)
            dst[j] = src[perm[j]];
    }
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
    if (n_rotations < 0 || n_rotations > DQ_MAX_PERMUTATION_TIMES + 1 ||
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
    if ((st = dq__plan_alloc(c, cols, n_rotations, smooth_scale != NULL, &pl)) != DQ_OK)
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
                    dq__gather_cols(perm, tmp, cols, xr, ldx, m, cols);
                } else {
                    for (int64_t i = 0; i < m; i++)
                        memcpy(xr + (size_t)i * (size_t)ldx, tmp + (size_t)i * (size_t)cols,
                               (size_t)cols * sizeof(float));
                }
            } else if (perm) {
                dq__gather_cols(perm, xr, ldx, tmp, cols, m, cols);
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
    /* Leading dimensions past INT_MAX are refused before touching the data, as when the
     * products went through BLAS (the released behaviour). */
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
