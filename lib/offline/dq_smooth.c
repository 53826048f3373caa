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

static bool nonnegative_finite(const float *v, int64_t n, dq_status *st)
{
    for (int64_t j = 0; j < n; j++) {
        if (!isfinite(v[j])) {
            *st = DQ_ERR_NONFINITE;
            return false;
        }
        if (v[j] < 0.0f) {
            *st = DQ_ERR_INVALID_ARG;
            return false;
        }
    }
    return true;
}

DQ_API dq_status dq_smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n,
                                   float alpha, float *scale)
{
    if (!act_absmax || !w_absmax || !scale || !(alpha >= 0.0f && alpha <= 1.0f))
        return DQ_ERR_INVALID_ARG;
    if (n <= 0)
        return DQ_ERR_SHAPE;
    dq_status st = DQ_OK;
    if (!nonnegative_finite(act_absmax, n, &st) || !nonnegative_finite(w_absmax, n, &st))
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
        return DQ_ERR_INVALID_ARG;
    dq_status st = dq__check_matrix(NULL, "w", w, rows, cols, ldw);
    if (st != DQ_OK)
        return st;
    if (!dq__all_finite(w, rows, cols, ldw) ||
        (accumulate && !dq__all_finite(absmax, 1, cols, cols)))
        return DQ_ERR_NONFINITE;
    if (!accumulate)
        for (int64_t j = 0; j < cols; j++)
            absmax[j] = 0.0f;
    dq__col_absmax(w, rows, cols, ldw, absmax);
    return DQ_OK;
}
