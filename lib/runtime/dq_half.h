/* IEEE binary16 ("half") conversions in portable C. f32 -> f16 rounds to nearest, ties to
 * even, as the F16C and AVX-512 instructions do under the default rounding mode; f16 -> f32 is
 * exact. Used for the fused path's half-precision matrix copies (DQ_CONTEXT_F_HALF_MATRICES):
 * the copies are made here once, and every kernel widens them exactly, so the bits never
 * depend on the instruction set. */
#ifndef DQ_HALF_H
#define DQ_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t dq__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float dq__f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Exact widening: subnormal halves become normal floats, infinities and NaNs keep their sign
 * (a NaN keeps its payload's top bits and is made quiet). */
static inline float dq__f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1Fu) /* infinity or NaN */
        return dq__f32_from_bits(sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0u));
    if (exp != 0)
        return dq__f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0)
        return dq__f32_from_bits(sign);
    /* Subnormal: man * 2^-24, normalised. */
    int32_t e = 113; /* biased float exponent of 2^-14 */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return dq__f32_from_bits(sign | ((uint32_t)e << 23) | ((man & 0x3FFu) << 13));
}

/* Nearest half, ties to even; beyond the largest half (65504) rounds to infinity as IEEE
 * says; NaN stays NaN (quiet). */
static inline uint16_t dq__f32_to_f16(float f)
{
    const uint32_t u = dq__f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) /* infinity or NaN */
        return (uint16_t)(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u | ((a >> 13) & 0x3FFu) : 0u));
    if (a >= 0x477FF000u) /* >= 65520: rounds past the largest half */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* normal half: >= 2^-14 */
        /* Drop 13 bits with round to nearest even; a carry into the exponent is right. */
        const uint32_t r = a - 0x38000000u; /* rebias the exponent: 127 - 15 = 112 << 23 */
        const uint32_t half = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
        return (uint16_t)(sign | half);
    }
    if (a < 0x33000000u) /* below half the smallest subnormal (2^-25): zero */
        return sign;
    /* Subnormal half: the value in units of 2^-24, rounded to nearest even. */
    const uint32_t e = a >> 23;                       /* 102 .. 112 */
    const uint32_t man = (a & 0x7FFFFFu) | 0x800000u; /* 24 significant bits */
    const uint32_t shift = 126u - e;                  /* 14 .. 24 */
    const uint32_t q = man >> shift, rest = man & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    const uint32_t up = rest > halfway || (rest == halfway && (q & 1u));
    return (uint16_t)(sign | (q + up));
}

#endif
