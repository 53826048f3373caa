/* The portable half-precision conversions (dq_half.h) against references built from double
 * arithmetic, and against the CPU's F16C instructions where it has them: every half widens to
 * the value its fields define; floats narrow to the nearest half, ties to even, over every
 * float exponent, the halfway points of every half, and the special values. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dq_cpu.h"
#include "dq_half.h"
#include "dq_test.h"
#include "dq_check_run.h"

/* The value a half's fields define (NaN for NaNs). */
static double half_value(uint16_t h)
{
    const int sign = h >> 15, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    double v;
    if (exp == 0x1F)
        v = man ? NAN : INFINITY;
    else if (exp == 0)
        v = ldexp((double)man, -24);
    else
        v = ldexp((double)(man + 1024), exp - 25);
    return sign ? -v : v;
}

/* The nearest half of x (finite), ties to even, as a double (infinity past 65520). */
static double nearest_half(double x)
{
    const double a = fabs(x);
    if (a >= 65520.0)
        return copysign(INFINITY, x);
    int e;
    frexp(a, &e); /* a = f 2^e, f in [0.5, 1) */
    /* Spacing of halves around a: 2^(e - 11) for normal halves, 2^-24 below 2^-14. */
    const int q = e - 11 < -24 ? -24 : e - 11;
    const double units = ldexp(a, -q);
    double r = floor(units);
    const double rest = units - r;
    if (rest > 0.5 || (rest == 0.5 && fmod(r, 2.0) != 0.0))
        r += 1.0;
    return copysign(ldexp(r, q), x);
}

START_TEST(every_half_widens_exactly)
{
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        const float f = dq__f16_to_f32((uint16_t)h);
        const double want = half_value((uint16_t)h);
        if (isnan(want)) {
            ck_assert_msg(isnan(f), "half 0x%04x: %g, expected NaN", h, (double)f);
            continue;
        }
        ck_assert_msg((double)f == want && !signbit(f) == !signbit(want),
                      "half 0x%04x: %.9g, expected %.9g", h, (double)f, want);
        /* and back to the same half */
        ck_assert_uint_eq(dq__f32_to_f16(f), h);
    }
}
END_TEST

static void check_narrow(float x)
{
    const uint16_t h = dq__f32_to_f16(x);
    if (isnan(x)) {
        ck_assert_msg(isnan(half_value(h)), "NaN 0x%08x narrowed to 0x%04x", dq__f32_bits(x),
                      h);
        return;
    }
    const double got = half_value(h);
    const double want = isinf(x) ? (double)x : nearest_half((double)x);
    ck_assert_msg(got == want && !signbit(got) == !signbit(want),
                  "%.9g (0x%08x) narrowed to 0x%04x = %.9g, expected %.9g", (double)x,
                  dq__f32_bits(x), h, got, want);
}

START_TEST(floats_narrow_to_nearest_even)
{
    /* A stride through every bit pattern (odd, so every exponent and mantissa residue);
     * wider under valgrind, which would take minutes. */
    const uint64_t stride = test_under_valgrind() ? 65521 : 4093;
    for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += stride)
        check_narrow(dq__f32_from_bits((uint32_t)u));
    /* Around every halfway point between neighbouring positive finite halves:
     * the tie itself and the floats on either side (the tie past 65504 is among the special
     * values below). */
    for (uint32_t h = 0; h < 0x7BFF; h++) {
        const double mid = (half_value((uint16_t)h) + half_value((uint16_t)(h + 1))) / 2.0;
        const float m = (float)mid; /* exact: a half's midpoint needs 12 bits */
        ck_assert((double)m == mid);
        check_narrow(m);
        check_narrow(nextafterf(m, 0.0f));
        check_narrow(nextafterf(m, INFINITY));
        check_narrow(-m);
    }
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f,
                             65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f /* 2^-25 */,
                             2.9802326e-8f, 5.9604645e-8f /* 2^-24 */, 6.1035156e-5f /* 2^-14 */,
                             6.1035153e-5f, 1.0f, -1.0f, 3.4e38f, 1.4e-45f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        check_narrow(special[i]);
}
END_TEST

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("f16c"))) static uint16_t hw_narrow(float x)
{
    return (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_widen(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* The kernels widen with the instruction: the portable widening must give the same bits. */
START_TEST(agrees_with_f16c)
{
    if (!dq__cpu_has(DQ_CPU_F16C)) {
        fprintf(stderr, "agrees_with_f16c: this CPU has no F16C; compared with double only\n");
        return;
    }
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        const float a = dq__f16_to_f32((uint16_t)h), b = hw_widen((uint16_t)h);
        ck_assert_msg(dq__f32_bits(a) == dq__f32_bits(b), "half 0x%04x: 0x%08x vs F16C 0x%08x",
                      h, dq__f32_bits(a), dq__f32_bits(b));
    }
    const uint64_t stride = test_under_valgrind() ? 16381 : 997;
    for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += stride) {
        const float x = dq__f32_from_bits((uint32_t)u);
        const uint16_t a = dq__f32_to_f16(x), b = hw_narrow(x);
        if (isnan(x))
            ck_assert(isnan(half_value(a)) && isnan(half_value(b)));
        else
            ck_assert_msg(a == b, "0x%08x: 0x%04x vs F16C 0x%04x", (uint32_t)u, a, b);
    }
}
END_TEST
#endif

static Suite *suite(void)
{
    Suite *s = suite_create("half");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, every_half_widens_exactly);
    tcase_add_test(tc, floats_narrow_to_nearest_even);
#if defined(__GNUC__) && defined(__x86_64__)
    tcase_add_test(tc, agrees_with_f16c);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(suite(), 0);
}
