/* The packed key/value cache against plain loops: the per-head Walsh-Hadamard transform against
 * the product with the Sylvester matrix written out entry by entry, the quantization against
 * the rule's formulas and the documented layout, round-trip error bounds, and bad input. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_check_run.h"
#include "dq_test.h"
#include "duquant.h"

static dq_kv_params kv_params(int32_t bits, int32_t head_size, int32_t n_heads, uint32_t flags,
                              float clip)
{
    dq_kv_params p;
    ck_assert_int_eq(dq_kv_params_init(&p, sizeof p), DQ_OK);
    p.bits = bits;
    p.head_size = head_size;
    p.n_heads = n_heads;
    p.flags = flags;
    p.clip_ratio = clip;
    return p;
}

static float *random_rows(uint64_t seed, int64_t rows, int64_t ld, int outliers)
{
    float *x = malloc((size_t)(rows * ld) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    test_rng r = {seed};
    test_fill_activations(&r, x, rows, ld, ld, outliers);
    return x;
}

/* Entry (i, j) of H_n / sqrt(n): (-1)^popcount(i & j) / sqrt(n). */
static double hadamard_entry(int32_t n, int32_t i, int32_t j)
{
    return (__builtin_popcount((unsigned)(i & j)) & 1 ? -1.0 : 1.0) / sqrt((double)n);
}

/* y = x * H / sqrt(n) for one head, by the matrix product in double. */
static void rotate_oracle(const float *x, int32_t n, double *y)
{
    for (int32_t j = 0; j < n; j++) {
        double s = 0.0;
        for (int32_t i = 0; i < n; i++)
            s += (double)x[i] * hadamard_entry(n, i, j);
        y[j] = s;
    }
}

/* The rule for one head written out: clipped range, scale, zero point, codes, dequantized
 * values (deq[head_size]); returns the scale, or 0 for a head outside the rule's ordinary
 * case (scale outside [1e-5, 1e4] or zero point beyond 1e4: a narrow range far from zero). */
static float quant_oracle(const float *y, int32_t n, int32_t bits, float clip, int32_t *codes,
                          float *deq, float *zero_out)
{
    float mn = y[0], mx = y[0];
    for (int32_t i = 1; i < n; i++) {
        mn = fminf(mn, y[i]);
        mx = fmaxf(mx, y[i]);
    }
    const float top = (float)((1 << bits) - 1);
    const float scale = (mx * clip - mn * clip) / top;
    if (!(scale >= 1e-5f && scale <= 1e4f && fabsf(-(mn * clip) / scale) <= 1e4f))
        return 0.0f;
    const float zero = rintf(-(mn * clip) / scale);
    for (int32_t i = 0; i < n; i++) {
        float q = rintf(y[i] / scale) + zero;
        q = q < 0.0f ? 0.0f : (q > top ? top : q);
        codes[i] = (int32_t)q;
        deq[i] = (q - zero) * scale;
    }
    *zero_out = zero;
    return scale;
}

START_TEST(rotate_matches_matrix_product)
{
    static const int32_t sizes[] = {1, 2, 4, 8, 16, 64, 128, 1024};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const int32_t hs = sizes[c], heads = 3, rows = 5;
        const int64_t ld = (int64_t)hs * heads + 7;
        float *x = random_rows(100 + c, rows, ld, 1);
        float *y = malloc((size_t)(rows * ld) * sizeof *y);
        double *want = malloc((size_t)hs * sizeof *want);
        ck_assert_ptr_nonnull(y);
        ck_assert_ptr_nonnull(want);
        memcpy(y, x, (size_t)(rows * ld) * sizeof *y);
        dq_kv_params p = kv_params(8, hs, heads, 0, 1.0f);
        ck_assert_int_eq(dq_kv_rotate(&p, y, rows, ld), DQ_OK);
        for (int32_t t = 0; t < rows; t++) {
            for (int32_t h = 0; h < heads; h++) {
                rotate_oracle(x + t * ld + h * hs, hs, want);
                for (int32_t j = 0; j < hs; j++) {
                    const double got = y[t * ld + h * hs + j];
                    ck_assert_msg(fabs(got - want[j]) <= 1e-6 * (1.0 + fabs(want[j])),
                                  "head size %d token %d head %d [%d]: %g vs %g", (int)hs,
                                  (int)t, (int)h, (int)j, got, want[j]);
                }
            }
            /* Padding past the heads is not touched. */
            for (int64_t j = (int64_t)hs * heads; j < ld; j++)
                ck_assert(y[t * ld + j] == x[t * ld + j]);
        }
        /* The transform is its own inverse (up to float rounding relative to the head). */
        ck_assert_int_eq(dq_kv_rotate(&p, y, rows, ld), DQ_OK);
        for (int32_t t = 0; t < rows; t++)
            for (int32_t h = 0; h < heads; h++) {
                const float *xh = x + t * ld + h * hs, *yh = y + t * ld + h * hs;
                float big = 1.0f;
                for (int32_t j = 0; j < hs; j++)
                    big = fmaxf(big, fabsf(xh[j]));
                for (int32_t j = 0; j < hs; j++)
                    ck_assert_msg(fabsf(yh[j] - xh[j]) <= 1e-5f * big, "size %d", (int)hs);
            }
        free(x);
        free(y);
        free(want);
    }
}
END_TEST

/* Without rotation the cache holds exactly the rule's codes, scales and zero points at the
 * documented places, and dequantizes to the oracle's values bit for bit. */
START_TEST(quantize_matches_rule_and_layout)
{
    static const int32_t bits_list[] = {4, 8};
    static const int32_t sizes[] = {2, 3, 8, 16, 33, 128};
    static const float clips[] = {1.0f, 0.9f};
    for (size_t b = 0; b < 2; b++)
        for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++)
            for (size_t k = 0; k < 2; k++) {
                const int32_t bits = bits_list[b], hs = sizes[c], heads = 4, rows = 6;
                const int64_t ld = (int64_t)hs * heads + 3;
                dq_kv_params p = kv_params(bits, hs, heads, 0, clips[k]);
                size_t token_bytes, bytes;
                ck_assert_int_eq(dq_kv_size(&p, 1, &token_bytes), DQ_OK);
                const size_t codes_bytes = bits == 8 ? (size_t)hs : ((size_t)hs + 1) / 2;
                ck_assert_uint_eq(token_bytes, (size_t)heads * (8 + codes_bytes));
                ck_assert_int_eq(dq_kv_size(&p, rows + 2, &bytes), DQ_OK);
                ck_assert_uint_eq(bytes, (size_t)(rows + 2) * token_bytes);
                float *x = random_rows(7 * c + b + 31 * k, rows, ld, 1);
                uint8_t *cache = malloc(bytes);
                ck_assert_ptr_nonnull(cache);
                memset(cache, 0xA5, bytes);
                ck_assert_int_eq(dq_kv_quantize(&p, x, rows, ld, cache, bytes, 1), DQ_OK);
                /* Tokens 0 and rows + 1 were not written. */
                for (size_t i = 0; i < token_bytes; i++) {
                    ck_assert_uint_eq(cache[i], 0xA5);
                    ck_assert_uint_eq(cache[(size_t)(rows + 1) * token_bytes + i], 0xA5);
                }
                int32_t codes[128], unusual = 0;
                float deq[128], got[128 * 2];
                for (int32_t h = 0; h < heads; h++) {
                    ck_assert_int_eq(dq_kv_dequantize(&p, cache, bytes, h, 1, rows, NULL, hs),
                                     rows ? DQ_ERR_INVALID_ARG : DQ_OK);
                    for (int32_t t = 0; t < rows; t++) {
                        const float *xh = x + t * ld + h * hs;
                        float zero;
                        const float scale = quant_oracle(xh, hs, bits, clips[k], codes, deq,
                                                         &zero);
                        if (scale == 0.0f) {
                            unusual++;
                            continue;
                        }
                        const uint8_t *rec = cache + (size_t)(t + 1) * token_bytes +
                                             (size_t)h * (8 + codes_bytes);
                        float s, z;
                        memcpy(&s, rec, 4);
                        memcpy(&z, rec + 4, 4);
                        ck_assert_msg(s == scale && z == zero, "bits %d hs %d clip %g: %a %a vs %a %a", (int)bits, (int)hs, (double)clips[k], (double)s, (double)z, (double)scale, (double)zero);
                        for (int32_t i = 0; i < hs; i++) {
                            const int32_t q = bits == 8 ? rec[8 + i]
                                                        : (rec[8 + i / 2] >> (4 * (i & 1))) & 15;
                            ck_assert_int_eq(q, codes[i]);
                        }
                        if (bits == 4 && (hs & 1))
                            ck_assert_uint_eq(rec[8 + hs / 2] >> 4, 0);
                        /* One token at a time, with a leading dimension above head_size. */
                        ck_assert_int_eq(dq_kv_dequantize(&p, cache, bytes, h, t + 1, 1, got,
                                                          2 * hs),
                                         DQ_OK);
                        for (int32_t i = 0; i < hs; i++)
                            ck_assert_msg(got[i] == deq[i], "bits %d hs %d token %d head %d",
                                          (int)bits, (int)hs, (int)t, (int)h);
                    }
                }
                /* The random heads are nearly all ordinary ones. */
                ck_assert_int_le(unusual, 1);
                free(x);
                free(cache);
            }
}
END_TEST

/* Under ROTATE the cache holds the rotated head quantized: the same bytes as rotating first
 * (dq_kv_rotate) and quantizing without the flag. */
START_TEST(rotated_quantize_is_rotate_then_quantize)
{
    for (int32_t bits = 4; bits <= 8; bits += 4) {
        const int32_t hs = 16, heads = 2, rows = 9;
        const int64_t ld = hs * heads;
        float *x = random_rows(55 + bits, rows, ld, 1);
        float *xr = malloc((size_t)(rows * ld) * sizeof *xr);
        ck_assert_ptr_nonnull(xr);
        memcpy(xr, x, (size_t)(rows * ld) * sizeof *xr);
        dq_kv_params rot = kv_params(bits, hs, heads, DQ_KV_F_ROTATE, 0.95f);
        dq_kv_params plain = kv_params(bits, hs, heads, 0, 0.95f);
        ck_assert_int_eq(dq_kv_rotate(&plain, xr, rows, ld), DQ_OK);
        size_t bytes;
        ck_assert_int_eq(dq_kv_size(&rot, rows, &bytes), DQ_OK);
        uint8_t *a = calloc(1, bytes), *b = calloc(1, bytes);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        ck_assert_int_eq(dq_kv_quantize(&rot, x, rows, ld, a, bytes, 0), DQ_OK);
        ck_assert_int_eq(dq_kv_quantize(&plain, xr, rows, ld, b, bytes, 0), DQ_OK);
        ck_assert(memcmp(a, b, bytes) == 0);
        free(x);
        free(xr);
        free(a);
        free(b);
    }
}
END_TEST

/* Round trip: every value within half a step of its clipped range (clip 1: the whole head),
 * and rotation back to the input domain keeps the error small relative to the head. A heavy
 * outlier channel costs the plain head more than the rotated one. */
START_TEST(round_trip_error_bounds)
{
    for (int32_t bits = 4; bits <= 8; bits += 4) {
        const int32_t hs = 64, heads = 4, rows = 32;
        const int64_t ld = hs * heads;
        float *x = random_rows(900 + bits, rows, ld, 1);
        dq_kv_params p = kv_params(bits, hs, heads, 0, 1.0f);
        size_t bytes;
        ck_assert_int_eq(dq_kv_size(&p, rows, &bytes), DQ_OK);
        uint8_t *cache = malloc(bytes);
        float *out = malloc((size_t)(rows * ld) * sizeof *out);
        ck_assert_ptr_nonnull(cache);
        ck_assert_ptr_nonnull(out);
        ck_assert_int_eq(dq_kv_quantize(&p, x, rows, ld, cache, bytes, 0), DQ_OK);
        for (int32_t h = 0; h < heads; h++)
            ck_assert_int_eq(dq_kv_dequantize(&p, cache, bytes, h, 0, rows, out + h * hs, ld),
                             DQ_OK);
        const double levels = (double)((1 << bits) - 1);
        for (int32_t t = 0; t < rows; t++)
            for (int32_t h = 0; h < heads; h++) {
                float mn = INFINITY, mx = -INFINITY;
                for (int32_t i = 0; i < hs; i++) {
                    mn = fminf(mn, x[t * ld + h * hs + i]);
                    mx = fmaxf(mx, x[t * ld + h * hs + i]);
                }
                /* Half a step, plus the zero point's rounding (at most half a step at each
                 * end of the range) and float rounding. */
                const double step = ((double)mx - mn) / levels;
                for (int32_t i = 0; i < hs; i++) {
                    const double e = fabs((double)out[t * ld + h * hs + i] - x[t * ld + h * hs + i]);
                    ck_assert_msg(e <= step * (1.0 + 1e-5), "bits %d: error %g step %g",
                                  (int)bits, e, step);
                }
            }
        const double err_plain = test_rel_err(out, ld, x, ld, rows, ld);
        dq_kv_params r = kv_params(bits, hs, heads, DQ_KV_F_ROTATE, 1.0f);
        ck_assert_int_eq(dq_kv_quantize(&r, x, rows, ld, cache, bytes, 0), DQ_OK);
        for (int32_t h = 0; h < heads; h++)
            ck_assert_int_eq(dq_kv_dequantize(&r, cache, bytes, h, 0, rows, out + h * hs, ld),
                             DQ_OK);
        ck_assert_int_eq(dq_kv_rotate(&r, out, rows, ld), DQ_OK);
        const double err_rot = test_rel_err(out, ld, x, ld, rows, ld);
        ck_assert_msg(err_rot < (bits == 4 ? 0.2 : 0.015), "bits %d rotated error %g", (int)bits,
                      err_rot);
        ck_assert_msg(err_rot < err_plain, "bits %d: rotated %g, plain %g", (int)bits, err_rot,
                      err_plain);
        free(x);
        free(cache);
        free(out);
    }
}
END_TEST

/* Constant and all-zero heads come back exactly. */
START_TEST(degenerate_heads_exact)
{
    const float vals[] = {0.0f, 2.5f, -3.0f};
    for (size_t k = 0; k < 3; k++)
        for (int32_t bits = 4; bits <= 8; bits += 4) {
            float x[8], out[8];
            for (int i = 0; i < 8; i++)
                x[i] = vals[k];
            dq_kv_params p = kv_params(bits, 8, 1, 0, 1.0f);
            uint8_t cache[64];
            ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 8, cache, sizeof cache, 0), DQ_OK);
            ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, 1, out, 8), DQ_OK);
            for (int i = 0; i < 8; i++)
                ck_assert(out[i] == x[i]);
        }
}
END_TEST

START_TEST(bad_params)
{
    float x[16] = {0};
    uint8_t cache[256];
    size_t bytes;
    static const int32_t bad_bits[] = {-1, 0, 1, 2, 3, 5, 7, 16, 32};
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        dq_kv_params p = kv_params(bad_bits[i], 8, 1, 0, 1.0f);
        ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 8, cache, sizeof cache, 0), DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, 1, x, 8),
                         DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_kv_rotate(&p, x, 1, 8), DQ_ERR_INVALID_ARG);
    }
    static const int32_t bad_sizes[] = {0, -8, 1025, 4096};
    for (size_t i = 0; i < 4; i++) {
        dq_kv_params p = kv_params(4, bad_sizes[i], 1, 0, 1.0f);
        ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_SHAPE);
    }
    dq_kv_params p = kv_params(4, 8, 0, 0, 1.0f);
    ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_SHAPE);
    p = kv_params(4, 8, 65537, 0, 1.0f);
    ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_SHAPE);
    static const float bad_clips[] = {0.0f, -0.5f, 1.0001f, NAN, INFINITY};
    for (size_t i = 0; i < 5; i++) {
        p = kv_params(4, 8, 1, 0, bad_clips[i]);
        ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_INVALID_ARG);
    }
    p = kv_params(4, 8, 1, 2u, 1.0f);
    ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_INVALID_ARG);
    /* Head sizes that are not powers of two: quantized as they are, never rotated. */
    static const int32_t odd_sizes[] = {3, 6, 12, 100, 1000};
    for (size_t i = 0; i < 5; i++) {
        float y[1000] = {0};
        uint8_t big[1024];
        p = kv_params(4, odd_sizes[i], 1, 0, 1.0f);
        ck_assert_int_eq(dq_kv_quantize(&p, y, 1, odd_sizes[i], big, sizeof big, 0), DQ_OK);
        ck_assert_int_eq(dq_kv_rotate(&p, y, 1, odd_sizes[i]), DQ_ERR_UNSUPPORTED);
        p.flags = DQ_KV_F_ROTATE;
        ck_assert_int_eq(dq_kv_quantize(&p, y, 1, odd_sizes[i], big, sizeof big, 0),
                         DQ_ERR_UNSUPPORTED);
    }
    /* Extensible struct rules. */
    ck_assert_int_eq(dq_kv_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_kv_params_init(&p, DQ_PARAMS_MAX_SIZE + 1), DQ_ERR_STRUCT_SIZE);
    struct {
        dq_kv_params p;
        uint32_t extra;
    } big;
    memset(&big, 0, sizeof big);
    ck_assert_int_eq(dq_kv_params_init(&big.p, sizeof big), DQ_OK);
    ck_assert_int_eq(dq_kv_size(&big.p, 1, &bytes), DQ_OK);
    big.extra = 1;
    ck_assert_int_eq(dq_kv_size(&big.p, 1, &bytes), DQ_ERR_UNSUPPORTED);
    p = kv_params(4, 8, 1, 0, 1.0f);
    p.struct_size = 8;
    ck_assert_int_eq(dq_kv_size(&p, 1, &bytes), DQ_ERR_STRUCT_SIZE);
    /* NULL params are the defaults (one head of 128, 4 bits). */
    ck_assert_int_eq(dq_kv_size(NULL, 1, &bytes), DQ_OK);
    ck_assert_uint_eq(bytes, 8 + 64);
}
END_TEST

START_TEST(bad_arguments)
{
    float x[32] = {0}, out[32];
    uint8_t cache[256];
    size_t bytes;
    dq_kv_params p = kv_params(4, 8, 2, 0, 1.0f);
    ck_assert_int_eq(dq_kv_size(&p, 1, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_size(&p, -1, &bytes), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_size(&p, 2, &bytes), DQ_OK);
    ck_assert_uint_eq(bytes, 2 * 2 * (8 + 4));
    /* NULL buffers. */
    ck_assert_int_eq(dq_kv_quantize(&p, NULL, 1, 16, cache, sizeof cache, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 16, NULL, sizeof cache, 0), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_dequantize(&p, NULL, sizeof cache, 0, 0, 1, out, 8),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, 1, NULL, 8),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_rotate(&p, NULL, 1, 16), DQ_ERR_INVALID_ARG);
    /* Zero tokens: no-ops that accept NULL buffers. */
    ck_assert_int_eq(dq_kv_quantize(&p, NULL, 0, 16, NULL, 0, 0), DQ_OK);
    ck_assert_int_eq(dq_kv_dequantize(&p, NULL, 0, 1, 0, 0, NULL, 8), DQ_OK);
    ck_assert_int_eq(dq_kv_rotate(&p, NULL, 0, 16), DQ_OK);
    /* Shapes. */
    ck_assert_int_eq(dq_kv_quantize(&p, x, -1, 16, cache, sizeof cache, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 15, cache, sizeof cache, 0), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 16, cache, sizeof cache, -1), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_rotate(&p, x, 1, 15), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_rotate(&p, x, -1, 16), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, 1, out, 7), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, -1, 1, out, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, -1, out, 8), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 2, 0, 1, out, 8),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, -1, 0, 1, out, 8),
                     DQ_ERR_INVALID_ARG);
    /* A cache too small for the tokens written or read. */
    ck_assert_int_eq(dq_kv_quantize(&p, x, 2, 16, cache, 2 * 24 - 1, 0), DQ_ERR_BUFFER);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 16, cache, 2 * 24 - 1, 1), DQ_ERR_BUFFER);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 2, 16, cache, 2 * 24, 0), DQ_OK);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, 2 * 24 - 1, 1, 1, 1, out, 8), DQ_ERR_BUFFER);
    /* Sizes that overflow. */
    dq_kv_params huge = kv_params(8, 1024, 65536, 0, 1.0f);
    ck_assert_int_eq(dq_kv_size(&huge, INT64_MAX, &bytes), DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_size(&huge, INT64_MAX / 2, &bytes), DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 16, cache, sizeof cache, INT64_MAX),
                     DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, INT64_MAX - 1, 2, out, 8),
                     DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_dequantize(&p, cache, sizeof cache, 0, 0, 2, out, INT64_MAX),
                     DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_quantize(&p, x, 2, INT64_MAX, cache, sizeof cache, 0),
                     DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_kv_rotate(&p, x, 3, INT64_MAX / 2), DQ_ERR_OVERFLOW);
}
END_TEST

/* A value that is not finite, before or after the rotation, is refused and nothing is
 * written. */
START_TEST(nonfinite_all_or_nothing)
{
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3; k++) {
        float x[3 * 16];
        test_rng r = {k};
        for (int i = 0; i < 48; i++)
            x[i] = (float)test_rng_normal(&r);
        x[2 * 16 + 5] = bad[k];
        dq_kv_params p = kv_params(4, 8, 2, DQ_KV_F_ROTATE, 1.0f);
        uint8_t cache[3 * 24];
        memset(cache, 0x5A, sizeof cache);
        ck_assert_int_eq(dq_kv_quantize(&p, x, 3, 16, cache, sizeof cache, 0),
                         DQ_ERR_NONFINITE);
        for (size_t i = 0; i < sizeof cache; i++)
            ck_assert_uint_eq(cache[i], 0x5A);
        float y[48];
        memcpy(y, x, sizeof y);
        ck_assert_int_eq(dq_kv_rotate(&p, y, 3, 16), DQ_ERR_NONFINITE);
        ck_assert(memcmp(y, x, sizeof y) == 0);
    }
    /* Finite values whose rotation overflows float. */
    float x[8], y[8];
    for (int i = 0; i < 8; i++)
        x[i] = FLT_MAX;
    memcpy(y, x, sizeof y);
    dq_kv_params p = kv_params(8, 8, 1, DQ_KV_F_ROTATE, 1.0f);
    uint8_t cache[16];
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 8, cache, sizeof cache, 0), DQ_ERR_NONFINITE);
    ck_assert_int_eq(dq_kv_rotate(&p, y, 1, 8), DQ_ERR_NONFINITE);
    ck_assert(memcmp(y, x, sizeof y) == 0);
    /* A range the rule refuses (max - min overflows float). */
    x[0] = -FLT_MAX;
    p.flags = 0;
    ck_assert_int_eq(dq_kv_quantize(&p, x, 1, 8, cache, sizeof cache, 0), DQ_ERR_NONFINITE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kv");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, rotate_matches_matrix_product);
    tcase_add_test(tc, quantize_matches_rule_and_layout);
    tcase_add_test(tc, rotated_quantize_is_rotate_then_quantize);
    tcase_add_test(tc, round_trip_error_bounds);
    tcase_add_test(tc, degenerate_heads_exact);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, bad_params);
    tcase_add_test(bad, bad_arguments);
    tcase_add_test(bad, nonfinite_all_or_nothing);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
