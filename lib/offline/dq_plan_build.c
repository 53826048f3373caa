/* Building plans (the offline side): smoothing factors, rotations found by search (and
 * refined), zigzag permutations, computed from calibration data and composed in the order the
 * sample flows through them. The plan object and applying it live in lib/layer/dq_plan.c. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_plan.h"
#include "dq_refine.h"

/* The first released layout ends after smooth_alpha. */
#define PLAN_PARAMS_MIN_SIZE (offsetof(dq_plan_params, smooth_alpha) + sizeof(float))
#define PLAN_KNOWN_FLAGS                                                                     \
    (DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE | DQ_PLAN_F_ROW_RULE |         \
     DQ_PLAN_F_PER_BLOCK_R | DQ_PLAN_F_RANDOM_QPRIME | DQ_PLAN_F_HADAMARD_BASE)

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

/* Reads and validates params for cols channels; a failure is logged as func's. */
static dq_status read_plan_params(const dq_context *ctx, const char *func,
                                  const dq_plan_params *user, int64_t cols, dq_plan_params *p)
{
    dq_plan_params_init(p, sizeof *p);
    dq_status st = dq__params_read(p, sizeof *p, PLAN_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return dq__fail(ctx, st, func, "params (struct_size %u)", user ? user->struct_size : 0u);
    if ((p->flags & ~(uint32_t)PLAN_KNOWN_FLAGS) != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->flags 0x%x has unknown bits 0x%x",
                        p->flags, p->flags & ~(uint32_t)PLAN_KNOWN_FLAGS);
    if (p->method < DQ_ROT_METHOD_GREEDY || p->method > DQ_ROT_METHOD_RANDOM_HADAMARD)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->method %d is not a DQ_ROT_METHOD",
                        (int)p->method);
    if (p->block_size < 2 || p->block_size > DQ_MAX_BLOCK)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->block_size %d outside [2, %d]",
                        (int)p->block_size, DQ_MAX_BLOCK);
    if (p->max_rotation_step < 0 || p->max_rotation_step > DQ_MAX_STEPS)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->max_rotation_step %d outside [0, %d]",
                        (int)p->max_rotation_step, DQ_MAX_STEPS);
    if (p->permutation_times < 1 || p->permutation_times > DQ_MAX_PERMUTATION_TIMES)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->permutation_times %d outside [1, %d]",
                        (int)p->permutation_times, DQ_MAX_PERMUTATION_TIMES);
    if (!(p->smooth_alpha >= 0.0f && p->smooth_alpha <= 1.0f))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->smooth_alpha %g outside [0, 1]",
                        (double)p->smooth_alpha);
    /* Search options mean nothing to the other methods: refuse rather than ignore them. */
    if (p->method != DQ_ROT_METHOD_GREEDY &&
        (p->flags & (DQ_PLAN_F_ROW_RULE | DQ_PLAN_F_RANDOM_QPRIME | DQ_PLAN_F_HADAMARD_BASE)))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->flags 0x%x: search options with method %d (not greedy)",
                        p->flags, (int)p->method);
    dq__refine_opts refine;
    if (p->refine && (st = dq__refine_read(p->refine, &refine)) != DQ_OK)
        return dq__fail(ctx, st, func, "params->refine is invalid");
    if (p->refine && refine.method != DQ_REFINE_NONE && !(p->flags & DQ_PLAN_F_ROTATE))
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->refine asks for refinement without DQ_PLAN_F_ROTATE");
    if (cols <= 0)
        return dq__fail(ctx, DQ_ERR_SHAPE, func, "cols %lld <= 0", (long long)cols);
    if ((p->flags & DQ_PLAN_F_ROTATE) &&
        (p->method == DQ_ROT_METHOD_HADAMARD || (p->flags & DQ_PLAN_F_HADAMARD_BASE)) &&
        !dq__hadamard_fits(cols, p->block_size))
        return dq__fail(ctx, DQ_ERR_UNSUPPORTED, func,
                        "Hadamard blocks of %d do not fit %lld channels (powers of two only)",
                        (int)p->block_size, (long long)cols);
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
    dq_status st = dq__plan_alloc(ctx, cols, n_rot, smooth, &pl);
    if (st != DQ_OK)
        return st;
    float *scale = dq__plan_smooth(pl);
    dq_rotation **rot = dq__plan_rotations(pl);
    int64_t **perm = dq__plan_permutations(pl);
    if (smooth) {
        dq__smooth_factors(act_absmax, w_absmax, cols, p->smooth_alpha, scale);
        if (x)
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++)
                    x[(size_t)i * (size_t)cols + (size_t)j] /= scale[j];
        /* A factor far below its channel's values overflows the division: the searches
         * would read Inf and NaN. */
        if (x && !dq__all_finite(x, rows, cols, cols)) {
            st = DQ_FAIL(ctx, DQ_ERR_NONFINITE,
                         "the smoothed sample (%lld x %lld) overflows float (alpha %g)",
                         (long long)rows, (long long)cols, (double)p->smooth_alpha);
            goto out;
        }
    }
    if (n_rot > 1) {
        scratch = dq__alloc(ctx, (size_t)rows * (size_t)cols * sizeof(float));
        key = dq__alloc(ctx, (size_t)cols * sizeof(float));
        y = scratch;
        if (!scratch || !key) {
            st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "scratch copy of a %lld x %lld sample",
                         (long long)rows, (long long)cols);
            goto out;
        }
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
            st = dq__rotation_build(ctx, &o, x, rows, cols, cols, &rot[s]);
            if (st != DQ_OK)
                goto out;
            if (refined) { /* on the sample exactly as this slot sees it */
                dq_rotation *better;
                st = dq__rotation_refine(ctx, &refine, rot[s], x, rows, cols, cols,
                                         (uint64_t)s, &better);
                if (st != DQ_OK)
                    goto out;
                dq_rotation_free(rot[s]);
                rot[s] = better;
            }
        }
        if (s + 1 == n_rot)
            break;
        /* Rotate the sample, then deal its channels by their new magnitudes. */
        float *t;
        if (rot[s]) {
            st = dq__rotation_rows_exact(rot[s], x, cols, y, cols, rows, ctx);
            if (st != DQ_OK)
                goto out;
            if (!dq__all_finite(y, rows, cols, cols)) {
                st = DQ_FAIL(ctx, DQ_ERR_NONFINITE,
                             "the sample (%lld x %lld) overflows float after rotation %d",
                             (long long)rows, (long long)cols, (int)s);
                goto out;
            }
            t = x;
            x = y;
            y = t;
        }
        for (int64_t j = 0; j < cols; j++)
            key[j] = 0.0f;
        dq__col_absmax(x, rows, cols, cols, key);
        perm[s] = dq__alloc(ctx, (size_t)cols * sizeof(int64_t));
        if (!perm[s]) {
            st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "permutation %d of %lld indices", (int)s,
                         (long long)cols);
            goto out;
        }
        if ((st = dq__zigzag(ctx, key, cols, p->block_size, perm[s])) != DQ_OK)
            goto out;
        dq__gather_cols(perm[s], x, cols, y, cols, rows, cols);
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

static dq_status check_absmax(const dq_context *ctx, const char *func, const char *name,
                              const float *v, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        if (!isfinite(v[j]))
            return dq__fail(ctx, DQ_ERR_NONFINITE, func, "%s[%lld] = %g", name, (long long)j,
                            (double)v[j]);
        if (v[j] < 0.0f)
            return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "%s[%lld] = %g, expected >= 0", name,
                            (long long)j, (double)v[j]);
    }
    return DQ_OK;
}

DQ_API dq_status dq_plan_build(dq_context *ctx, const dq_plan_params *params,
                               const dq_calib *calib, const float *w_absmax, int64_t cols,
                               dq_plan **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, calib, DQ__H_CALIB, "calib", out);
    const dq_context *c = dq__ctx(ctx);
    if (!out)
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_plan_params p;
    dq_status st = read_plan_params(c, __func__, params, cols, &p);
    if (st != DQ_OK)
        return st;
    const bool smooth = (p.flags & DQ_PLAN_F_SMOOTH) != 0, sample = needs_sample(&p);
    if (!calib && (smooth || sample))
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "calib is NULL but the plan needs %s",
                       smooth ? "smoothing statistics" : "a calibration sample");
    if (smooth && !w_absmax)
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "w_absmax is NULL with DQ_PLAN_F_SMOOTH");
    if (calib && dq__calib_cols(calib) != cols)
        return DQ_FAIL(c, DQ_ERR_SHAPE, "cols %lld != calibrator width %lld", (long long)cols,
                       (long long)dq__calib_cols(calib));
    if (calib && dq__calib_token_count(calib) == 0)
        return DQ_FAIL(c, DQ_ERR_BAD_STATE, "the calibrator has observed no token");
    if (smooth && (st = check_absmax(c, __func__, "w_absmax", w_absmax, cols)) != DQ_OK)
        return st;
    if ((uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_FAIL(c, DQ_ERR_OVERFLOW, "cols %lld overflows size_t", (long long)cols);

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
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    const dq_context *c = dq__ctx(ctx);
    if (!out)
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_plan_params p;
    dq_status st = read_plan_params(c, __func__, params, cols, &p);
    if (st != DQ_OK)
        return st;
    const bool smooth = (p.flags & DQ_PLAN_F_SMOOTH) != 0;
    if (smooth && !w_absmax)
        return DQ_FAIL(c, DQ_ERR_INVALID_ARG, "w_absmax is NULL with DQ_PLAN_F_SMOOTH");
    if ((st = dq__check_matrix(ctx, "sample", sample, rows, cols, lds)) != DQ_OK)
        return st;
    size_t n, bytes;
    if (!dq__mul_size((size_t)rows, (size_t)cols, &n) ||
        !dq__mul_size(n, sizeof(float), &bytes) || (uint64_t)cols > SIZE_MAX / sizeof(int64_t))
        return DQ_FAIL(c, DQ_ERR_OVERFLOW, "sample of %lld x %lld overflows size_t",
                       (long long)rows, (long long)cols);
    if (!dq__all_finite(sample, rows, cols, lds))
        return DQ_FAIL(c, DQ_ERR_NONFINITE, "sample holds a NaN or infinity");
    if (smooth && act_absmax &&
        (st = check_absmax(c, __func__, "act_absmax", act_absmax, cols)) != DQ_OK)
        return st;
    if (smooth && (st = check_absmax(c, __func__, "w_absmax", w_absmax, cols)) != DQ_OK)
        return st;

    float *x = NULL, *own_absmax = NULL;
    if (needs_sample(&p)) { /* a working copy, transformed as the plan is built */
        if (!(x = dq__alloc(c, bytes))) {
            st = DQ_FAIL(c, DQ_ERR_NOMEM, "%zu bytes for a copy of the sample", bytes);
            goto out;
        }
        for (int64_t i = 0; i < rows; i++)
            memcpy(x + (size_t)i * (size_t)cols, sample + (size_t)i * (size_t)lds,
                   (size_t)cols * sizeof(float));
    }
    if (smooth && !act_absmax) {
        if (!(own_absmax = dq__calloc(c, (size_t)cols, sizeof(float)))) {
            st = DQ_FAIL(c, DQ_ERR_NOMEM, "%lld activation maxima", (long long)cols);
            goto out;
        }
        dq__col_absmax(sample, rows, cols, lds, own_absmax);
        act_absmax = own_absmax;
    }
    st = build_core(c, &p, act_absmax, x, rows, cols, w_absmax, out);
out:
    dq__free(c, x);
    dq__free(c, own_absmax);
    return st;
}
