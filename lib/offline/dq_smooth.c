/* Smoothing factors (SmoothQuant's per-channel migration of activation range into weights),
 * with the reference's clamps. */
#include <math.h>

#include "dq_transform.h"

/* Lower clamps of the reference: inputs and raw factors at 1e-5, applied factors at 1e-2
 * (its truncation guards later float16 arithmetic against tiny divisors). */
#define SMOOTH_MIN_INPUT 1e-5
#define SMOOTH_MIN_RAW 1e-5
#define SMOOTH_MIN_APPLIED 1e-2f

void dq__smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n, float alpha,
                        float *scale)
{
    /* Double powers, rounded once: within an ulp or two of the reference's float powers. */
    const double a = (double)alpha;
    for (int64_t j = 0; j < n; j++) {
        double act = fmax((double)act_absmax[j], SMOOTH_MIN_INPUT);
        double w = fmax((double)w_absmax[j], SMOOTH_MIN_INPUT);
        float raw = (float)fmax(pow(act, a) / pow(w, 1.0 - a), SMOOTH_MIN_RAW);
        scale[j] = raw < SMOOTH_MIN_APPLIED ? SMOOTH_MIN_APPLIED : raw;
    }
}

static bool nonnegative_finite(const char *func, const char *name, const float *v, int64_t n,
                               dq_status *st)
{
    for (int64_t j = 0; j < n; j++) {
        if (!isfinite(v[j])) {
            *st = dq__fail(NULL, DQ_ERR_NONFINITE, func, "%s[%lld] is not finite", name,
                           (long long)j);
            return false;
        }
        if (v[j] < 0.0f) {
            *st = dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "%s[%lld] = %g, expected >= 0", name,
                           (long long)j, (double)v[j]);
            return false;
        }
    }
    return true;
}

DQ_API dq_status dq_smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n,
                                   float alpha, float *scale)
{
    if (!act_absmax || !w_absmax || !scale)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !act_absmax ? "act_absmax" : !w_absmax ? "w_absmax" : "scale");
    if (!(alpha >= 0.0f && alpha <= 1.0f))
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "alpha %g outside [0, 1]", (double)alpha);
    if (n <= 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %lld, expected > 0", (long long)n);
    dq_status st = DQ_OK;
    if (!nonnegative_finite(__func__, "act_absmax", act_absmax, n, &st) ||
        !nonnegative_finite(__func__, "w_absmax", w_absmax, n, &st))
        return st;
    dq__smooth_factors(act_absmax, w_absmax, n, alpha, scale);
    return DQ_OK;
}

void dq__col_absmax(const float *x, int64_t rows, int64_t cols, int64_t ld, float *absmax)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *row = x + (size_t)i * (size_t)ld;
        for (int64_t j = 0; j < cols; j++) {
            float a = fabsf(row[j]);
            absmax[j] = a > absmax[j] ? a : absmax[j];
        }
    }
}

DQ_API dq_status dq_smooth_weight_absmax(const float *w, int64_t rows, int64_t cols, int64_t ldw,
                                         int32_t accumulate, float *absmax)
{
    if (!absmax)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "absmax is NULL");
    dq_status st = dq__check_matrix(NULL, "w", w, rows, cols, ldw);
    if (st != DQ_OK)
        return st;
    if (!dq__all_finite(w, rows, cols, ldw))
        return DQ_FAIL(NULL, DQ_ERR_NONFINITE, "w has a non-finite element");
    if (accumulate && !dq__all_finite(absmax, 1, cols, cols))
        return DQ_FAIL(NULL, DQ_ERR_NONFINITE, "absmax (accumulate) has a non-finite element");
    if (!accumulate)
        for (int64_t j = 0; j < cols; j++)
            absmax[j] = 0.0f;
    dq__col_absmax(w, rows, cols, ldw, absmax);
    return DQ_OK;
}
