/* Plans (the run-time side): smoothing, block rotations and zigzag permutations composed into
 * one channel transform G, assembled from its parts and applied to activations (x * G) and
 * weights (W * G^-T). Building one from calibration data lives in
 * lib/offline/dq_plan_build.c. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_online.h"
#include "dq_plan.h"
#include "dq_plan_binding.h"

/* Rows transformed per pass: the temporary (rows x cols floats) stays in cache. */
#define PLAN_CHUNK_ROWS 256

struct dq_plan {
    uint64_t tag; /* DQ__TAG_PLAN (dq_handle.h) */
    dq_context ctx;
    int64_t cols;
    float *smooth;      /* cols factors, NULL = no smoothing */
    int32_t n_rot;      /* rotation slots; permutation slots = n_rot - 1 */
    dq_rotation **rot;  /* n_rot entries, NULL = identity */
    int64_t **perm;     /* n_rot - 1 entries, NULL = identity */
    /* References beyond the creator's (layers using the plan): 0 from the zeroed allocation,
     * -1 after the last release. */
    atomic_int extra_refs;
    atomic_bool creator_released; /* dq_plan_free was called (a second call is misuse) */
    /* Compiled for the fused route by the first layer on the plan (dq__plan_online), NULL
     * before: a cache, like the count not part of what the plan is. */
    _Atomic(dq__online *) online;
};
DQ__HANDLE_LAYOUT(struct dq_plan);

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
    DQ_CHECK_HANDLE_FREE(pl, DQ__H_PLAN, "pl");
    /* The creator's reference goes once: a second dq_plan_free while layers keep the plan
     * alive is reported instead of taking one of theirs. */
    if (atomic_exchange_explicit(&pl->creator_released, true, memory_order_relaxed)) {
        (void)DQ_FAIL(&pl->ctx, DQ_ERR_INVALID_ARG,
                      "pl: the plan was already freed (layers still hold it): double free");
        return;
    }
    dq__plan_release(pl);
}

void dq__plan_release(const dq_plan *cpl)
{
    /* The count is the one mutable part of a plan; the object itself was allocated mutable. */
    dq_plan *pl = (dq_plan *)(uintptr_t)cpl;
    if (!pl)
        return;
    /* Only the holder of the last reference frees; acquire-release orders every other
     * holder's reads before the memory goes. */
    if (atomic_fetch_sub_explicit(&pl->extra_refs, 1, memory_order_acq_rel) > 0)
        return;
    DQ_HANDLE_RETIRE(pl, DQ__H_PLAN);
    dq_context c = pl->ctx;
    dq__online_free(atomic_load_explicit(&pl->online, memory_order_relaxed));
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

dq_status dq__plan_online(const dq_plan *cpl, const dq__online **out)
{
    dq_plan *pl = (dq_plan *)(uintptr_t)cpl;
    dq__online *on = atomic_load_explicit(&pl->online, memory_order_acquire);
    if (!on) {
        dq_status st = dq__online_create(&pl->ctx, pl, &on);
        if (st != DQ_OK)
            return st;
        /* Two layers created at once on one plan: the first compiled form stays. */
        dq__online *none = NULL;
        if (!atomic_compare_exchange_strong_explicit(&pl->online, &none, on,
                                                     memory_order_acq_rel,
                                                     memory_order_acquire)) {
            dq__online_free(on);
            on = none;
        }
    }
    *out = on;
    return DQ_OK;
}

dq_status dq__plan_alloc(const dq_context *ctx, int64_t cols, int32_t n_rot, bool smooth,
                         dq_plan **out)
{
    *out = NULL;
    size_t scale_bytes;
    if (cols <= 0 || !dq__array_bytes(cols, sizeof(int64_t), &scale_bytes))
        return DQ_FAIL(ctx, cols <= 0 ? DQ_ERR_SHAPE : DQ_ERR_OVERFLOW,
                       "cols %lld: expected > 0 with per-channel arrays addressable",
                       (long long)cols);
    dq_plan *pl = dq__calloc(ctx, 1, sizeof *pl);
    if (!pl)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "plan of %lld channels", (long long)cols);
    dq__context_keep(&pl->ctx, ctx);
    pl->tag = DQ__TAG_PLAN;
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
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "plan of %lld channels, %d rotation slots%s",
                       (long long)cols, (int)n_rot, smooth ? ", smoothing factors" : "");
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

/* DQ_OK when perm[i] (n entries) is a permutation of 0..n-1; logs for func otherwise. */
static dq_status check_permutation(const dq_context *ctx, const char *func, int32_t i,
                                   const int64_t *perm, int64_t n)
{
    uint8_t *seen = dq__calloc(ctx, (size_t)n, 1);
    if (!seen)
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "%lld bytes to check permutations[%d]",
                        (long long)n, (int)i);
    int64_t bad = -1;
    for (int64_t j = 0; j < n && bad < 0; j++) {
        if (perm[j] >= 0 && perm[j] < n && !seen[perm[j]])
            seen[perm[j]] = 1;
        else
            bad = j;
    }
    dq__free(ctx, seen);
    if (bad >= 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "permutations[%d][%lld] = %lld, expected a permutation of 0..%lld "
                        "(out of range or repeated)",
                        (int)i, (long long)bad, (long long)perm[bad], (long long)(n - 1));
    return DQ_OK;
}

DQ_API dq_status dq_plan_assemble(dq_context *ctx, int64_t cols, const float *smooth_scale,
                                  int32_t n_rotations, const dq_rotation *const *rotations,
                                  const int64_t *const *permutations, dq_plan **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (n_rotations < 0 || n_rotations > DQ_MAX_PERMUTATION_TIMES + 1)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "n_rotations %d, expected 0..%d",
                       (int)n_rotations, DQ_MAX_PERMUTATION_TIMES + 1);
    if (n_rotations > 0 && !rotations)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "rotations is NULL with n_rotations %d",
                       (int)n_rotations);
    if (n_rotations > 1 && !permutations)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "permutations is NULL with n_rotations %d",
                       (int)n_rotations);
    if (cols <= 0)
        return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld, expected > 0", (long long)cols);
    if ((uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "cols %lld: permutations would not fit in memory",
                       (long long)cols);
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_OK;
    if (smooth_scale)
        for (int64_t j = 0; j < cols; j++) {
            if (!isfinite(smooth_scale[j]))
                return DQ_FAIL(ctx, DQ_ERR_NONFINITE, "smooth_scale[%lld] = %g", (long long)j,
                               (double)smooth_scale[j]);
            if (!(smooth_scale[j] > 0.0f))
                return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "smooth_scale[%lld] = %g, expected > 0",
                               (long long)j, (double)smooth_scale[j]);
        }
    for (int32_t i = 0; i < n_rotations; i++)
        if (rotations[i] && dq__handle_tag(rotations[i]) != DQ__TAG_ROTATION) {
            char name[32];
            snprintf(name, sizeof name, "rotations[%d]", (int)i);
            return dq__handle_fail(ctx, rotations[i], DQ__H_ROTATION, __func__, name);
        }
    for (int32_t i = 0; i < n_rotations; i++)
        if (rotations[i] && rotations[i]->cols != cols)
            return DQ_FAIL(ctx, DQ_ERR_SHAPE, "rotations[%d] has %lld channels, cols %lld",
                           (int)i, (long long)rotations[i]->cols, (long long)cols);
    for (int32_t i = 0; i + 1 < n_rotations; i++)
        if (permutations[i] &&
            (st = check_permutation(c, __func__, i, permutations[i], cols)) != DQ_OK)
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
                st = DQ_FAIL(c, DQ_ERR_NOMEM, "permutations[%d] copy, %lld entries", (int)i,
                             (long long)cols);
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
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !cols)
        return DQ_FAIL(pl ? &pl->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !pl ? "pl" : "cols");
    *cols = pl->cols;
    return DQ_OK;
}

DQ_API dq_status dq_plan_workspace_size(const dq_plan *pl, int64_t rows, size_t *bytes)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !bytes)
        return DQ_FAIL(pl ? &pl->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !pl ? "pl" : "bytes");
    if (rows <= 0)
        return DQ_FAIL(&pl->ctx, DQ_ERR_SHAPE, "rows %lld, expected > 0", (long long)rows);
    size_t b;
    if (!workspace_bytes(pl, rows, &b))
        return DQ_FAIL(&pl->ctx, DQ_ERR_OVERFLOW, "rows %lld x plan width %lld floats",
                       (long long)rows, (long long)pl->cols);
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

/* Shared argument checks of the apply functions, logged for func; name is the matrix
 * argument's name. */
static dq_status check_apply(const char *func, const dq_plan *pl, const char *name,
                             const float *x, int64_t rows, int64_t cols, int64_t ldx)
{
    if (!pl)
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "pl is NULL");
    dq_status st = dq__check_matrix_at(&pl->ctx, func, name, x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    if (cols != pl->cols)
        return dq__fail(&pl->ctx, DQ_ERR_SHAPE, func, "%s: cols %lld != plan width %lld", name,
                        (long long)cols, (long long)pl->cols);
    /* Leading dimensions past INT_MAX are refused before touching the data, as when the
     * products went through BLAS (the released behaviour). */
    if (has_stages(pl) && ldx > INT_MAX)
        return dq__fail(&pl->ctx, DQ_ERR_BLAS, func, "%s: ld %lld > INT_MAX", name,
                        (long long)ldx);
    return DQ_OK;
}

static dq_status check_finite(const char *func, const dq_plan *pl, const char *name,
                              const float *x, int64_t rows, int64_t cols, int64_t ldx)
{
    if (dq__all_finite(x, rows, cols, ldx))
        return DQ_OK;
    return dq__fail(&pl->ctx, DQ_ERR_NONFINITE, func, "%s (%lld x %lld) holds NaN or Inf", name,
                    (long long)rows, (long long)cols);
}

/* Workspace for rows rows into *need, checking the caller's work_size; logs for func. */
static dq_status check_work(const char *func, const dq_plan *pl, int64_t rows, const void *work,
                            size_t work_size, size_t *need)
{
    if (!workspace_bytes(pl, rows, need))
        return dq__fail(&pl->ctx, DQ_ERR_OVERFLOW, func, "workspace of rows %lld x plan width "
                        "%lld floats", (long long)rows, (long long)pl->cols);
    if (work && work_size < *need)
        return dq__fail(&pl->ctx, DQ_ERR_BUFFER, func,
                        "work_size %zu, expected >= %zu (dq_plan_workspace_size)", work_size,
                        *need);
    return DQ_OK;
}

/* Runs the pipeline with the caller's workspace, or an internal one when work is NULL. */
static dq_status run_with_work(const char *func, const dq_plan *pl, float *x, int64_t rows,
                               int64_t ldx, void *work, size_t work_size, bool weight)
{
    size_t need;
    dq_status cst = check_work(func, pl, rows, work, work_size, &need);
    if (cst != DQ_OK)
        return cst;
    void *owned = NULL;
    if (need > 0 && !work) {
        owned = dq__alloc(&pl->ctx, need);
        if (!owned)
            return dq__fail(&pl->ctx, DQ_ERR_NOMEM, func, "%zu bytes of workspace", need);
        work = owned;
    }
    float *tmp = NULL;
    if (need > 0) {
        uintptr_t a = ((uintptr_t)work + (DQ_ALIGN - 1)) & ~(uintptr_t)(DQ_ALIGN - 1);
        tmp = (float *)a;
    }
    dq_status st = run_pipeline(pl, x, rows, ldx, tmp, weight);
    dq__free(&pl->ctx, owned);
    /* Finite inputs can overflow in the transform (a division by a small smoothing factor, a
     * rotation's sums): refused rather than handed on as Inf or NaN. */
    if (st == DQ_OK && !dq__all_finite(x, rows, pl->cols, ldx))
        st = dq__fail(&pl->ctx, DQ_ERR_NONFINITE, func,
                      "the transformed %s (%lld x %lld) overflows float", weight ? "w" : "x",
                      (long long)rows, (long long)pl->cols);
    return st;
}

DQ_API dq_status dq_plan_apply_act(const dq_plan *pl, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx, void *work, size_t work_size)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    dq_status st = check_apply(__func__, pl, "x", x, rows, cols, ldx);
    if (st == DQ_OK)
        st = check_finite(__func__, pl, "x", x, rows, cols, ldx);
    if (st != DQ_OK)
        return st;
    return run_with_work(__func__, pl, x, rows, ldx, work, work_size, false);
}

DQ_API dq_status dq_plan_apply_act_to(const dq_plan *pl, const float *x, int64_t rows,
                                      int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                      void *work, size_t work_size)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    dq_status st = check_apply(__func__, pl, "x", x, rows, cols, ldx);
    if (st == DQ_OK)
        st = check_apply(__func__, pl, "y", y, rows, cols, ldy);
    if (st == DQ_OK)
        st = check_finite(__func__, pl, "x", x, rows, cols, ldx);
    size_t need = 0;
    if (st == DQ_OK)
        st = check_work(__func__, pl, rows, work, work_size, &need);
    if (st != DQ_OK)
        return st;
    if (x != y)
        for (int64_t i = 0; i < rows; i++)
            memcpy(y + (size_t)i * (size_t)ldy, x + (size_t)i * (size_t)ldx,
                   (size_t)cols * sizeof(float));
    return run_with_work(__func__, pl, y, rows, ldy, work, work_size, false);
}

DQ_API dq_status dq_plan_transform_weight(const dq_plan *pl, float *w, int64_t rows,
                                          int64_t cols, int64_t ldw)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    dq_status st = check_apply(__func__, pl, "w", w, rows, cols, ldw);
    if (st == DQ_OK)
        st = check_finite(__func__, pl, "w", w, rows, cols, ldw);
    if (st != DQ_OK)
        return st;
    return run_with_work(__func__, pl, w, rows, ldw, NULL, 0, true);
}

/* ---- exporting the parts ---- */

DQ_API dq_status dq_plan_layout(const dq_plan *pl, int32_t *has_smoothing, int32_t *n_rotations)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "pl is NULL");
    if (has_smoothing)
        *has_smoothing = pl->smooth != NULL;
    if (n_rotations)
        *n_rotations = pl->n_rot;
    return DQ_OK;
}

DQ_API dq_status dq_plan_smooth_scales(const dq_plan *pl, float *s, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !s)
        return DQ_FAIL(pl ? &pl->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !pl ? "pl" : "s");
    if (n != pl->cols)
        return DQ_FAIL(&pl->ctx, DQ_ERR_SHAPE, "n %lld != plan width %lld", (long long)n,
                       (long long)pl->cols);
    for (int64_t j = 0; j < n; j++)
        s[j] = pl->smooth ? pl->smooth[j] : 1.0f;
    return DQ_OK;
}

DQ_API dq_status dq_plan_rotation(const dq_plan *pl, int32_t i, const dq_rotation **r)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !r)
        return DQ_FAIL(pl ? &pl->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !pl ? "pl" : "r");
    if (i < 0 || i >= pl->n_rot)
        return DQ_FAIL(&pl->ctx, DQ_ERR_INVALID_ARG, "i %d, expected 0..%d (rotation slots)",
                       (int)i, (int)pl->n_rot - 1);
    *r = pl->rot[i];
    return DQ_OK;
}

DQ_API dq_status dq_plan_permutation(const dq_plan *pl, int32_t i, int64_t *perm, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, pl, DQ__H_PLAN, "pl");
    if (!pl || !perm)
        return DQ_FAIL(pl ? &pl->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !pl ? "pl" : "perm");
    if (i < 0 || i >= pl->n_rot - 1)
        return DQ_FAIL(&pl->ctx, DQ_ERR_INVALID_ARG,
                       "i %d, expected 0..%d (permutation slots)", (int)i, (int)pl->n_rot - 2);
    if (n != pl->cols)
        return DQ_FAIL(&pl->ctx, DQ_ERR_SHAPE, "n %lld != plan width %lld", (long long)n,
                       (long long)pl->cols);
    for (int64_t j = 0; j < n; j++)
        perm[j] = pl->perm[i] ? pl->perm[i][j] : j;
    return DQ_OK;
}
