/* LWC's fake-quantization pass: the AVX-512 variant equals the portable one bit for bit (values
 * and STE partials), on every group length up to 80, both schemes, 4 and 8 bits, with values
 * on rounding ties, clamped at both ends, signed zeros, and huge and tiny scales. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_lwc_kernels.h"
#include "dq_test.h"
#include "dq_check_run.h"

/* Values of one group: random, exact halves of the scale (ties for the rounding), far beyond
 * the clamp range, and zeros of both signs. */
static void fill_group(test_rng *r, float *x, int64_t n, float scale)
{
    for (int64_t j = 0; j < n; j++) {
        const double u = test_rng_uniform(r);
        switch (j % 5) {
        case 0: x[j] = (float)((u - 0.5) * 40.0) * scale; break;
        case 1: x[j] = ((float)(int)(u * 40.0) - 19.5f) * scale; break;
        case 2: x[j] = (float)((u - 0.5) * 1e4) * scale; break;
        case 3: x[j] = u < 0.5 ? -0.0f : 0.0f; break;
        default: x[j] = (float)((u - 0.5) * 2.0) * scale; break;
        }
    }
}

static bool same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

START_TEST(avx512_equals_portable)
{
    if (dq__lwc_fake_quant_best() == dq__lwc_fake_quant_portable) {
        printf("avx512_equals_portable: no AVX-512 on this CPU, nothing to compare\n");
        return;
    }
    test_rng r = {7};
    const float scales[] = {1e-5f, 0.013f, 0.5f, 3.0f, 1e4f};
    float x[80], d1[80], d2[80], p1[80], p2[80];
    long compared = 0;
    for (int64_t n = 1; n <= 80; n++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int asym = 0; asym <= 1; asym++)
                for (size_t si = 0; si < sizeof scales / sizeof *scales; si++) {
                    const float scale = scales[si];
                    const float top = (float)(asym ? (1 << bits) - 1 : (1 << (bits - 1)) - 1);
                    const float bottom = asym ? 0.0f : -top - 1.0f;
                    const float zero = asym ? (float)(int)(test_rng_uniform(&r) * (top + 1)) : 0;
                    fill_group(&r, x, n, scale);
                    dq__lwc_fake_quant_portable(x, n, scale, zero, bottom, top, asym, d1, p1);
                    dq__lwc_fake_quant_avx512(x, n, scale, zero, bottom, top, asym, d2, p2);
                    ck_assert_msg(same_bits(d1, d2, n) && same_bits(p1, p2, n),
                                  "n %lld bits %d asym %d scale %g", (long long)n, bits, asym,
                                  (double)scale);
                    /* Without partials only dst is written. */
                    memset(d2, 0, sizeof d2);
                    dq__lwc_fake_quant_avx512(x, n, scale, zero, bottom, top, asym, d2, NULL);
                    ck_assert(same_bits(d1, d2, n));
                    compared += n;
                }
    printf("avx512_equals_portable: %ld values compared\n", compared);
}
END_TEST

/* The vector pass writes nothing past the group. */
START_TEST(avx512_stays_inside_the_group)
{
    float x[40], d[48], p[48];
    for (int i = 0; i < 40; i++)
        x[i] = (float)i - 20.0f;
    for (int64_t n = 1; n <= 40; n++) {
        for (int i = 0; i < 48; i++)
            d[i] = p[i] = -7.0f;
        dq__lwc_fake_quant_best()(x, n, 0.5f, 8.0f, 0.0f, 15.0f, true, d, p);
        for (int64_t i = n; i < 48; i++)
            ck_assert(d[i] == -7.0f && p[i] == -7.0f);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lwc_kernels");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, avx512_equals_portable);
    tcase_add_test(tc, avx512_stays_inside_the_group);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
