/* The quantization rule (DESIGN.md 4.7) in one place: the clamps that keep degenerate groups
 * (all equal, all zero) finite and the scalar scale, zero-point and code formulas. The scalar
 * quantizer (dq_int4.c), the SIMD token quantizers, LWC and the file reader's checks all read
 * them here; the SIMD kernels repeat the per-element steps lane by lane with the same IEEE
 * operations (true division, round half to even, float add, clamp), so the bits agree. */
#ifndef DQ_QUANT_RULE_H
#define DQ_QUANT_RULE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "duquant.h"

/* The reference's clamps: scale in [DQ_QR_SCALE_MIN, DQ_QR_SCALE_MAX], zero point within
 * +-DQ_QR_ZERO_LIMIT. The reference's scale and zero point are kept wherever these clamps
 * leave them as they are (every ordinary group); where a clamp would bite, which would clip
 * values away (a constant group, a range too narrow for its offset from zero, or wider than
 * 15e4), dq__qr_params uses the fallback described there instead. Every scale the rule makes
 * is finite and >= DQ_QR_SCALE_FLOOR (the smallest normal float), every zero point an integer
 * within +-DQ_QR_ZERO_LIMIT: the file reader's bounds. */
#define DQ_QR_SCALE_MIN 1e-5f
#define DQ_QR_SCALE_MAX 1e4f
#define DQ_QR_ZERO_LIMIT 1e4f
#define DQ_QR_SCALE_FLOOR 1.17549435e-38f /* FLT_MIN */

static inline float dq__qr_clamp(float x, float lo, float hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* Largest code: 2^bits - 1 for ASYM, 2^(bits-1) - 1 for SYM (whose smallest is -top - 1). */
static inline float dq__qr_top(int32_t bits, int32_t scheme)
{
    return (float)(scheme == DQ_QUANT_ASYM ? (1 << bits) - 1 : (1 << (bits - 1)) - 1);
}

/* The scale before its clamp, from a group's min mn and max mx and the clip factors hi (on the
 * max) and lo (on the min; ASYM only). */
static inline float dq__qr_raw_scale(int32_t bits, int32_t scheme, float mn, float mx, float hi,
                                     float lo)
{
    if (scheme == DQ_QUANT_ASYM)
        return (mx * hi - mn * lo) / dq__qr_top(bits, scheme);
    return fmaxf(fabsf(mx), fabsf(mn)) * hi / dq__qr_top(bits, scheme);
}

/* True when the rule's scale is raw itself, so that it moves with the clip factors (LWC's
 * gradient); false where the fallback floors it. */
static inline bool dq__qr_scale_free(float raw)
{
    return raw >= DQ_QR_SCALE_FLOOR && raw <= 3.40282347e38f;
}

/* Scale and zero point of a group (zero 0 for SYM); the clipped range is [a, b] = [mn * lo,
 * mx * hi] (ASYM) or [-b, b] with b = max(|mn|, |mx|) * hi (SYM). rintf rounds half to even
 * under the default rounding mode, like torch.round.
 *  - The reference's rule, when its clamps leave raw = (b - a) / top and -a / raw alone:
 *    scale = raw, zero = round(-a / raw).
 *  - All zero (a = b = 0): the reference's scale 1e-5 and zero 0 (0 stays exact).
 *  - ASYM constant a = b = v with |v| >= FLT_MIN: scale |v|, zero 0 (v > 0, code 1) or 1
 *    (v < 0, code 0): v dequantizes to itself exactly. (A subnormal v takes the next rule.)
 *  - Otherwise scale = max(raw, |a| / 1e4, FLT_MIN) (ASYM; the middle term keeps the zero
 *    point within +-1e4 without clipping) or max(raw, FLT_MIN) (SYM), zero as above.
 * Every x in the clipped range then comes back within scale / 2 (plus float rounding).
 * Returns false, with scale +Inf and zero 0, when mn or mx is not finite (NaN included) or the
 * range overflows: the caller reports DQ_ERR_NONFINITE. */
static bool dq__qr_params_rule(int32_t bits, int32_t scheme, float mn, float mx, float hi,
                               float lo, float *scale, float *zero);

/* True when every code of a group with this scale and zero point dequantizes, (code - zero) *
 * scale in float, to a finite value: what dq__qr_params produces, and what a file reader may
 * accept. */
static inline bool dq__qr_dequant_finite(int32_t bits, int32_t scheme, float scale, float zero)
{
    const float top = dq__qr_top(bits, scheme);
    const float lo_code = scheme == DQ_QUANT_ASYM ? 0.0f : -top - 1.0f;
    return isfinite(scale) && isfinite((lo_code - zero) * scale) &&
           isfinite((top - zero) * scale);
}

/* The rule below, refusing (false, scale +Inf) groups whose extreme codes would dequantize
 * beyond FLT_MAX: ranges within a few percent of FLT_MAX, or SYM's lowest code -top - 1 on a
 * clipped group whose values reach past the clip. */
static inline bool dq__qr_params(int32_t bits, int32_t scheme, float mn, float mx, float hi,
                                 float lo, float *scale, float *zero)
{
    if (!dq__qr_params_rule(bits, scheme, mn, mx, hi, lo, scale, zero))
        return false;
    if (!dq__qr_dequant_finite(bits, scheme, *scale, *zero)) {
        *scale = INFINITY;
        *zero = 0.0f;
        return false;
    }
    return true;
}

static inline bool dq__qr_params_rule(int32_t bits, int32_t scheme, float mn, float mx,
                                      float hi, float lo, float *scale, float *zero)
{
    const float raw = dq__qr_raw_scale(bits, scheme, mn, mx, hi, lo);
    *zero = 0.0f;
    if (!isfinite(mn) || !isfinite(mx) || !isfinite(raw)) {
        *scale = INFINITY;
        return false;
    }
    if (scheme != DQ_QUANT_ASYM) {
        /* Within the reference's clamps this is raw itself. 1e-5 only for an all-zero group:
         * a subnormal raw (tiny values, or a tiny clip factor) rounds to 0 and is floored. */
        *scale = mn == 0.0f && mx == 0.0f ? DQ_QR_SCALE_MIN : fmaxf(raw, DQ_QR_SCALE_FLOOR);
        return true;
    }
    const float a = mn * lo, b = mx * hi;
    if (raw >= DQ_QR_SCALE_MIN && raw <= DQ_QR_SCALE_MAX &&
        fabsf(-a / raw) <= DQ_QR_ZERO_LIMIT) {
        *scale = raw;
        *zero = rintf(-a / raw);
        return true;
    }
    if (a == b && (a == 0.0f || fabsf(a) >= DQ_QR_SCALE_FLOOR)) {
        /* (a subnormal constant takes the rule below: a scale of FLT_MIN) */
        *scale = a == 0.0f ? DQ_QR_SCALE_MIN : fabsf(a);
        *zero = a < 0.0f ? 1.0f : 0.0f;
        return true;
    }
    const float sc = fmaxf(fmaxf(raw, fabsf(a) / DQ_QR_ZERO_LIMIT), DQ_QR_SCALE_FLOOR);
    *scale = sc;
    *zero = rintf(dq__qr_clamp(-a / sc, -DQ_QR_ZERO_LIMIT, DQ_QR_ZERO_LIMIT));
    return true;
}

/* Code of one value: round(x / scale) (+ zero for ASYM), clamped to the code range; a NaN
 * goes to the lowest code (as the SIMD max(q, lo) does), never into an integer conversion. */
static inline int32_t dq__qr_code(int32_t bits, int32_t scheme, float x, float scale, float zero)
{
    const float top = dq__qr_top(bits, scheme);
    float q = rintf(x / scale);
    const float lo = scheme == DQ_QUANT_ASYM ? 0.0f : -top - 1.0f;
    if (scheme == DQ_QUANT_ASYM)
        q = q + zero;
    return (int32_t)(!(q > lo) ? lo : (q > top ? top : q));
}

#endif /* DQ_QUANT_RULE_H */
