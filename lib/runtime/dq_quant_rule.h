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

/* Scales are clamped to [DQ_QR_SCALE_MIN, DQ_QR_SCALE_MAX], zero points to +-DQ_QR_ZERO_LIMIT
 * (the reference's clamps). */
#define DQ_QR_SCALE_MIN 1e-5f
#define DQ_QR_SCALE_MAX 1e4f
#define DQ_QR_ZERO_LIMIT 1e4f

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

/* True when the scale clamp leaves raw as it is. */
static inline bool dq__qr_scale_free(float raw)
{
    return raw >= DQ_QR_SCALE_MIN && raw <= DQ_QR_SCALE_MAX;
}

/* Scale and zero point of a group (zero 0 for SYM). rintf rounds half to even under the
 * default rounding mode, like torch.round. */
static inline void dq__qr_params(int32_t bits, int32_t scheme, float mn, float mx, float hi,
                                 float lo, float *scale, float *zero)
{
    const float sc = dq__qr_clamp(dq__qr_raw_scale(bits, scheme, mn, mx, hi, lo),
                                  DQ_QR_SCALE_MIN, DQ_QR_SCALE_MAX);
    *scale = sc;
    *zero = scheme == DQ_QUANT_ASYM
                ? rintf(dq__qr_clamp(-(mn * lo) / sc, -DQ_QR_ZERO_LIMIT, DQ_QR_ZERO_LIMIT))
                : 0.0f;
}

/* Code of one value: round(x / scale) (+ zero for ASYM), clamped to the code range. */
static inline int32_t dq__qr_code(int32_t bits, int32_t scheme, float x, float scale, float zero)
{
    const float q = rintf(x / scale), top = dq__qr_top(bits, scheme);
    if (scheme == DQ_QUANT_ASYM)
        return (int32_t)dq__qr_clamp(q + zero, 0.0f, top);
    return (int32_t)dq__qr_clamp(q, -top - 1.0f, top);
}

#endif /* DQ_QUANT_RULE_H */
