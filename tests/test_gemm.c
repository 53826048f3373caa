/* Integer products: every SIMD kernel this CPU runs against the portable oracle, bit for bit,
 * on random and extreme operands, odd sizes, unaligned rows, 4 and 8 bits, groups that divide
 * the width and groups that do not, activations per token or per group, 1 to 2048 tokens and
 * 1 to 4 threads. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm_simd.h"
#include "duquant.h"
#include "dq_test.h"
#include "test_wprep.h"
#include "dq_check_run.h"

static const int32_t isas[] = {DQ_GEMM_ISA_PORTABLE, DQ_GEMM_ISA_AVX2, DQ_GEMM_ISA_AVX512,
                               DQ_GEMM_ISA_AMX};
static const char *const isa_names[] = {"portable", "avx2", "avx512", "amx"};

enum { PLAIN = WPREP_PLAIN, EXTREME = WPREP_EXTREME };

/* Activations with a row stride of cols + pad, starting one byte past an aligned address. */
typedef struct acts {
    dq__aq aq;
    uint8_t *buf;
    float *scales;
    int32_t *zeros;
} acts;

static acts make_acts(test_rng *r, int64_t rows, int64_t cols, int32_t bits, int64_t pad,
                      int style)
{
    acts a;
    const int64_t ld = cols + pad;
    a.buf = malloc((size_t)(rows * ld + 1));
    a.scales = malloc((size_t)rows * sizeof(float));
    a.zeros = malloc((size_t)rows * sizeof(int32_t));
    const int32_t top = (1 << bits) - 1;
    uint8_t *codes = a.buf + 1;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < ld; j++) {
            int32_t u = test_rand_int(r, 0, top);
            if (style == EXTREME && test_rng_uniform(r) < 0.5)
                u = u & 1 ? top : 0;
            codes[i * ld + j] = (uint8_t)u;
        }
        a.scales[i] = test_rand_scale(r, style);
        a.zeros[i] = style == EXTREME && (i & 1) ? test_rand_int(r, -1000, 1000)
                                                  : test_rand_int(r, 0, top);
    }
    a.aq = (dq__aq){.rows = rows, .cols = cols, .code_ld = ld, .codes = codes,
                    .scales = a.scales, .zeros = a.zeros};
    return a;
}

/* Scales and zero points per token and group instead (groups of the weights). */
static void group_acts(test_rng *r, acts *a, int64_t groups, int32_t bits, int style)
{
    const int64_t n = a->aq.rows * groups;
    a->scales = realloc(a->scales, (size_t)n * sizeof(float));
    a->zeros = realloc(a->zeros, (size_t)n * sizeof(int32_t));
    const int32_t top = (1 << bits) - 1;
    for (int64_t i = 0; i < n; i++) {
        a->scales[i] = test_rand_scale(r, style);
        a->zeros[i] = style == EXTREME && (i % 3 == 1) ? test_rand_int(r, -1000, 1000)
                                                       : test_rand_int(r, 0, top);
    }
    a->aq.scales = a->scales;
    a->aq.zeros = a->zeros;
    a->aq.groups = groups;
}

static void free_acts(acts *a)
{
    free(a->buf);
    free(a->scales);
    free(a->zeros);
}

/* The arithmetic of dq_gemm.h written out once more, independently of the library. */
static void naive_gemm(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                       int64_t ldy)
{
    for (int64_t t = 0; t < a->rows; t++)
        for (int64_t o = 0; o < w->rows; o++) {
            float acc = bias ? bias[o] : 0.0f;
            for (int64_t g = 0; g < w->groups; g++) {
                int64_t s = 0;
                for (int64_t j = g * w->group_len; j < w->cols && j < (g + 1) * w->group_len;
                     j++)
                    s += ((int64_t)a->codes[t * a->code_ld + j] -
                          a->zeros[a->groups ? t * a->groups + g : t]) *
                         ((int64_t)w->codes[o * w->code_ld + j] - w->zeros[o * w->groups + g]);
                ck_assert(s >= INT32_MIN && s <= INT32_MAX);
                const int64_t ai = a->groups ? t * a->groups + g : t;
                float scale = a->scales[ai] * w->scales[o * w->groups + g];
                acc += scale * (float)(int32_t)s;
            }
            y[t * ldy + o] = acc;
        }
}

static int64_t compared;

/* Every supported kernel, on 1..max_threads threads, equals the oracle bit for bit;
 * act_groups: activations per group of the weights (else per token). */
static void check_case_acts(test_rng *r, int64_t tokens, int64_t rows, int64_t cols,
                            int32_t wbits, int32_t abits, int64_t group_len, int style,
                            int with_bias, int max_threads, int act_groups, int sym)
{
    dq__wprep *w = test_random_wprep(r, rows, cols, wbits, group_len, style, sym);
    acts a = make_acts(r, tokens, cols, abits, (tokens + cols) % 5, style);
    if (act_groups)
        group_acts(r, &a, w->groups, abits, style);
    float *bias = NULL;
    if (with_bias) {
        bias = malloc((size_t)rows * sizeof *bias);
        for (int64_t o = 0; o < rows; o++)
            bias[o] = (float)test_rng_normal(r) * 10.0f;
    }
    const int64_t ldy = rows + 3;
    float *want = test_new_output(tokens, ldy), *got = test_new_output(tokens, ldy);
    naive_gemm(w, &a.aq, bias, want, ldy);
    dq__gemm_w_a_ref(w, &a.aq, bias, got, ldy);
    ck_assert_msg(memcmp(want, got, (size_t)(tokens * ldy) * sizeof *got) == 0,
                  "oracle and reference differ: %lld x %lld x %lld", (long long)tokens,
                  (long long)rows, (long long)cols);
    for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= max_threads; th++) {
            float *y = test_new_output(tokens, ldy);
            dq__gemm_w_a_isa(isas[v], w, &a.aq, bias, y, ldy, test_threads(th));
            for (int64_t i = 0; i < tokens; i++)
                for (int64_t o = 0; o < rows; o++)
                    if (memcmp(&y[i * ldy + o], &want[i * ldy + o], sizeof *y) != 0)
                        ck_abort_msg("%s, %d threads, T=%lld N=%lld K=%lld w%d a%d group %lld "
                                     "style %d: y[%lld][%lld] = %.9g, want %.9g",
                                     isa_names[v], th, (long long)tokens, (long long)rows,
                                     (long long)cols, wbits, abits, (long long)group_len, style,
                                     (long long)i, (long long)o, y[i * ldy + o],
                                     want[i * ldy + o]);
            test_check_canaries(y, tokens, rows, ldy);
            compared++;
            free(y);
        }
    }
    free(want);
    free(got);
    free(bias);
    free_acts(&a);
    test_free_wprep(w);
}

static void check_case(test_rng *r, int64_t tokens, int64_t rows, int64_t cols, int32_t wbits,
                       int32_t abits, int64_t group_len, int style, int with_bias,
                       int max_threads)
{
    check_case_acts(r, tokens, rows, cols, wbits, abits, group_len, style, with_bias,
                    max_threads, 0, 0);
}

/* Activations per group (a scale and zero point per token and weight group): groups of 32, 64
 * and 128, a short last group (200 = 64 + 64 + 64 + 8; 100 = 32 x 3 + 4), groups of odd
 * length (the packed copy), odd token counts, ASYM and SYM weights, 1 to 4 threads. */
START_TEST(grouped_acts_bit_exact)
{
    test_rng r = {909};
    const int64_t shapes[][2] = {{256, 32}, {256, 64}, {384, 128}, {200, 64},
                                 {100, 32}, {172, 32}, {90, 15},   {64, 64}};
    const int64_t tokens[] = {1, 3, 7, 13, 33};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++)
            for (int sym = 0; sym <= 1; sym++) {
                const int style = (int)((k + t) & 1);
                check_case_acts(&r, tokens[t], 37, shapes[k][0], 4, 4, shapes[k][1], style,
                                sym, t == 4 ? 4 : 1, 1, sym);
            }
    /* 8 bits, and enough work to split over threads by blocks and by token tiles. */
    check_case_acts(&r, 9, 40, 256, 8, 8, 64, EXTREME, 1, 2, 1, 0);
    check_case_acts(&r, 64, 256, 512, 4, 4, 128, PLAIN, 1, 4, 1, 0);
    check_case_acts(&r, 515, 40, 320, 4, 4, 32, EXTREME, 0, 4, 1, 1);
}
END_TEST

/* Odd sizes: remainders in tokens (tiles of 8), outputs (blocks of 16) and k (steps of 8). */
START_TEST(odd_sizes_bit_exact)
{
    test_rng r = {101};
    const int64_t tokens[] = {1, 2, 3, 5, 8, 13};
    const int64_t rows[] = {1, 15, 16, 17, 47, 65};
    const int64_t cols[] = {1, 3, 8, 9, 64, 100};
    for (size_t t = 0; t < 6; t++)
        for (size_t n = 0; n < 6; n++)
            for (size_t k = 0; k < 6; k++)
                for (int32_t wb = 4; wb <= 8; wb += 4)
                    check_case(&r, tokens[t], rows[n], cols[k], wb, 4, 0, (int)((t + n) & 1),
                               (int)(k & 1), 1);
}
END_TEST

/* Groups that divide the width and groups that leave a short last group, 4 and 8 bits on
 * both sides, plain and extreme operands. */
START_TEST(groups_and_bits_bit_exact)
{
    test_rng r = {202};
    const int64_t groups[][2] = {{300, 100}, {300, 60}, {300, 64}, {300, 7}, {256, 128},
                                 {200, 0},   {130, 13}, {96, 1}};
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        for (int32_t wb = 4; wb <= 8; wb += 4)
            for (int32_t ab = 4; ab <= 8; ab += 4)
                for (int style = PLAIN; style <= EXTREME; style++)
                    check_case(&r, 3 + (int64_t)g, 33, groups[g][0], wb, ab, groups[g][1],
                               style, style, 1);
}
END_TEST

/* The token counts of decoding (1), small batches (3, 32) and prefill (2048). */
START_TEST(token_counts_bit_exact)
{
    test_rng r = {303};
    const int64_t tokens[] = {1, 3, 32, 2048};
    for (size_t t = 0; t < 4; t++)
        for (int style = PLAIN; style <= EXTREME; style++) {
            check_case(&r, tokens[t], 50, 136, 4, 4, 0, style, 1, 2);
            check_case(&r, tokens[t], 40, 200, 4, 8, 64, style, 0, 1);
        }
}
END_TEST

/* Threads take output blocks (many blocks) or token tiles (few blocks, many tokens): the bits
 * never depend on the split. */
START_TEST(threads_bit_exact)
{
    test_rng r = {404};
    check_case(&r, 64, 256, 512, 4, 4, 128, PLAIN, 1, 4);
    check_case(&r, 64, 250, 520, 8, 8, 0, EXTREME, 0, 4);
    check_case(&r, 2048, 40, 300, 4, 4, 100, EXTREME, 1, 4);
    check_case(&r, 1, 1024, 2048, 4, 4, 0, PLAIN, 1, 4);
}
END_TEST

/* Every weight stream count the AVX-512 GEMV can be set to (1-8; 0 and 9 restore the default)
 * gives the portable kernel's bits: full panels, a short last panel and a partial last block,
 * 4- and 8-bit weights, whole rows and groups, one thread and two (the second shape holds more
 * than two threads' minimum of multiply-adds, so the blocks are split; only where the AVX-512
 * kernel runs, the count being its own: elsewhere, valgrind included, the oracles alone would
 * take most of the time). */
START_TEST(gemv_stream_counts_bit_exact)
{
    test_rng r = {505};
    const bool avx512 = dq__gemm_isa_supported(DQ_GEMM_ISA_AVX512);
    for (int64_t blocks = 0; blocks <= 9; blocks++) {
        dq__gemm_set_gemv_blocks_avx512(blocks);
        check_case(&r, 1, 16 * 11 + 5, 200, 4, 4, 0, PLAIN, 1, 1);
        if (avx512)
            check_case(&r, 1, 16 * 263 + 9, 2048, 8, 4, 64, EXTREME, 0, 2);
    }
    dq__gemm_set_gemv_blocks_avx512(0);
}
END_TEST

/* Shapes the AMX tiles take (widths and groups of whole 64-k chunks, 16 tokens and more) with
 * the edges they leave to the AVX-512 kernel: token counts off a multiple of 16 or 32, odd and
 * partial output blocks, tile ranges of threads starting on an odd tile, 4- and 8-bit codes,
 * several groups, activations per token or per group. */
START_TEST(amx_shapes_bit_exact)
{
    test_rng r = {909};
    const int64_t tokens[] = {16, 24, 33, 64, 100};
    const int64_t rows[] = {16, 17, 48, 65};
    const int64_t shapes[][2] = {{64, 0}, {192, 64}, {256, 128}, {320, 0}};
    for (size_t t = 0; t < 5; t++)
        for (size_t n = 0; n < 4; n++)
            for (size_t k = 0; k < 4; k++) {
                const int32_t wb = (t + k) % 2 ? 8 : 4, ab = (n + k) % 3 == 2 ? 8 : 4;
                const int style = (int)((t + n + k) % 2);
                check_case_acts(&r, tokens[t], rows[n], shapes[k][0], wb, ab, shapes[k][1],
                                style, (int)(n & 1), 3, shapes[k][1] > 0 && t % 2 == 0, 0);
            }
}
END_TEST

/* The weight-only product splits output rows over threads with the same bits (its accuracy
 * against the portable kernel: test_gemm_w16.c). */
START_TEST(weight_only_threads_bit_exact)
{
    test_rng r = {808};
    const int64_t tokens = 64, rows = 300, cols = 520, ldx = cols + 7, ldy = rows + 5;
    dq__wprep *w = test_random_wprep(&r, rows, cols, 4, 128, EXTREME, 0);
    float *x = malloc((size_t)(tokens * ldx) * sizeof *x);
    float *bias = malloc((size_t)rows * sizeof *bias);
    test_fill_activations(&r, x, tokens, cols, ldx, 1);
    for (int64_t o = 0; o < rows; o++)
        bias[o] = (float)test_rng_normal(&r);
    float *want = test_new_output(tokens, ldy);
    dq__gemm_w_f32(w, x, tokens, ldx, bias, want, ldy, NULL);
    for (int th = 1; th <= 4; th++) {
        float *y = test_new_output(tokens, ldy);
        dq__gemm_w_f32(w, x, tokens, ldx, th & 1 ? bias : NULL, y, ldy, test_threads(th));
        if (th & 1)
            ck_assert(memcmp(y, want, (size_t)(tokens * ldy) * sizeof *y) == 0);
        else
            ck_assert(memcmp(y, want, sizeof *y) != 0); /* the bias was left out */
        test_check_canaries(y, tokens, rows, ldy);
        free(y);
    }
    free(want);
    free(bias);
    free(x);
    test_free_wprep(w);
}
END_TEST


/* ---- per-token quantization ---- */

enum { RANDOM_ROWS = 0, TIE_ROWS = 1, FLAT_ROWS = 2 };

/* Rows of Laplace noise with outliers; or halves of integers, so that x / scale lands exactly
 * between two codes (the max is 15 and the min 0: scale 1 for 4-bit ASYM, 2^-4 .. for 8-bit);
 * or constant rows (zero and non-zero), where the scale clamps. */
static void fill_rows(test_rng *r, float *x, int64_t rows, int64_t cols, int64_t ldx, int kind)
{
    test_fill_activations(r, x, rows, cols, ldx, 1);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            float *v = &x[i * ldx + j];
            if (kind == TIE_ROWS)
                *v = j == 0 ? 15.0f : (j == 1 ? 0.0f : (float)test_rand_int(r, 0, 29) * 0.5f);
            else if (kind == FLAT_ROWS)
                *v = i % 3 == 0 ? 0.0f : (i % 3 == 1 ? -2.5f : 1e-7f);
        }
}

static void check_quantize(test_rng *r, int64_t rows, int64_t cols, int32_t bits, int32_t scheme,
                           float clip, int kind)
{
    const int64_t ldx = cols + 3, code_ld = cols + 5;
    float *x = malloc((size_t)(rows * ldx) * sizeof *x);
    fill_rows(r, x, rows, cols, ldx, kind);
    uint8_t *want = malloc((size_t)(rows * code_ld)), *got = malloc((size_t)(rows * code_ld));
    float *ws = malloc((size_t)rows * sizeof *ws), *gs = malloc((size_t)rows * sizeof *gs);
    int32_t *wz = malloc((size_t)rows * sizeof *wz), *gz = malloc((size_t)rows * sizeof *gz);
    memset(want, 0xA5, (size_t)(rows * code_ld));
    dq__quantize_tokens_ref(x, rows, cols, ldx, bits, scheme, clip, want, code_ld, ws, wz);
    for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= 3; th++) {
            memset(got, 0xA5, (size_t)(rows * code_ld));
            dq__quantize_tokens_isa(isas[v], x, rows, cols, ldx, bits, scheme, clip, got, code_ld,
                                    gs, gz, test_threads(th));
            ck_assert_msg(memcmp(want, got, (size_t)(rows * code_ld)) == 0,
                          "%s codes differ: %lld x %lld bits %d scheme %d clip %g kind %d",
                          isa_names[v], (long long)rows, (long long)cols, bits, scheme,
                          (double)clip, kind);
            ck_assert(memcmp(ws, gs, (size_t)rows * sizeof *ws) == 0);
            ck_assert(memcmp(wz, gz, (size_t)rows * sizeof *wz) == 0);
            compared++;
        }
    }
    free(x);
    free(want);
    free(got);
    free(ws);
    free(gs);
    free(wz);
    free(gz);
}

/* Every quantizer this CPU runs gives the reference's codes, scales and zero points, and
 * leaves the row padding alone. */
START_TEST(quantize_bit_exact)
{
    test_rng r = {505};
    const int64_t cols[] = {1, 2, 15, 16, 17, 100, 4096};
    for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++)
        for (int32_t bits = 4; bits <= 8; bits += 4)
            for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++)
                for (int kind = RANDOM_ROWS; kind <= FLAT_ROWS; kind++) {
                    check_quantize(&r, 7, cols[c], bits, scheme, 1.0f, kind);
                    check_quantize(&r, 3, cols[c], bits, scheme, 0.9f, kind);
                }
    check_quantize(&r, 2048, 64, 4, DQ_QUANT_ASYM, 1.0f, RANDOM_ROWS);
    check_quantize(&r, 300, 4096, 4, DQ_QUANT_ASYM, 0.9f, RANDOM_ROWS);
}
END_TEST


/* Per-group quantization on every instruction set: each group equals the per-token reference
 * run on that group alone (codes, scales, zero points), and the row padding is cleared. */
static void check_quantize_groups(test_rng *r, int64_t rows, int64_t cols, int64_t gl,
                                  int32_t bits, int32_t scheme, float clip, int kind)
{
    const int64_t ldx = cols + 3, code_ld = cols + 5, groups = (cols + gl - 1) / gl;
    const size_t ng = (size_t)(rows * groups);
    float *x = malloc((size_t)(rows * ldx) * sizeof *x);
    fill_rows(r, x, rows, cols, ldx, kind);
    uint8_t *want = malloc((size_t)(rows * code_ld)), *got = malloc((size_t)(rows * code_ld));
    float *ws = malloc(ng * sizeof *ws), *gs = malloc(ng * sizeof *gs);
    int32_t *wz = malloc(ng * sizeof *wz), *gz = malloc(ng * sizeof *gz);
    memset(want, 0, (size_t)(rows * code_ld));
    for (int64_t t = 0; t < rows; t++)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t j0 = g * gl, len = j0 + gl < cols ? gl : cols - j0;
            dq__quantize_tokens_ref(x + t * ldx + j0, 1, len, len, bits, scheme, clip,
                                    want + t * code_ld + j0, len, ws + t * groups + g,
                                    wz + t * groups + g);
        }
    memset(got, 0xA5, (size_t)(rows * code_ld));
    dq__quantize_groups_ref(x, rows, cols, ldx, gl, bits, scheme, clip, got, code_ld, gs, gz);
    ck_assert(memcmp(want, got, (size_t)(rows * code_ld)) == 0);
    ck_assert(memcmp(ws, gs, ng * sizeof *ws) == 0 && memcmp(wz, gz, ng * sizeof *wz) == 0);
    for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= 4; th++) {
            memset(got, 0xA5, (size_t)(rows * code_ld));
            dq__quantize_groups_isa(isas[v], x, rows, cols, ldx, gl, bits, scheme, clip, got,
                                    code_ld, gs, gz, test_threads(th));
            ck_assert_msg(memcmp(want, got, (size_t)(rows * code_ld)) == 0,
                          "%s codes differ: %lld x %lld groups of %lld bits %d scheme %d",
                          isa_names[v], (long long)rows, (long long)cols, (long long)gl, bits,
                          scheme);
            ck_assert(memcmp(ws, gs, ng * sizeof *ws) == 0);
            ck_assert(memcmp(wz, gz, ng * sizeof *wz) == 0);
            compared++;
        }
    }
    free(x);
    free(want);
    free(got);
    free(ws);
    free(gs);
    free(wz);
    free(gz);
}

START_TEST(quantize_groups_bit_exact)
{
    test_rng r = {1010};
    const int64_t shapes[][2] = {{256, 32}, {256, 64}, {256, 128}, {172, 32}, {100, 64},
                                 {33, 32},  {7, 4}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++)
            for (int kind = RANDOM_ROWS; kind <= FLAT_ROWS; kind++) {
                check_quantize_groups(&r, 5, shapes[k][0], shapes[k][1], 4, scheme, 1.0f, kind);
                check_quantize_groups(&r, 3, shapes[k][0], shapes[k][1], 8, scheme, 0.9f, kind);
            }
    check_quantize_groups(&r, 999, 512, 32, 4, DQ_QUANT_ASYM, 0.95f, RANDOM_ROWS);
}
END_TEST

/* From float weights and activations, as dq_linear runs: packed matrices of every format
 * through dq__wprep_create (which repacks for the kernels), tokens through the quantizer. */
START_TEST(packed_matrices_bit_exact)
{
    test_rng r = {606};
    const int32_t groups[] = {0, 128, 100};
    for (int32_t bits = 4; bits <= 8; bits += 4)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++)
            for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
                const int64_t rows = 70, cols = 392, tokens = 11 + (int64_t)g;
                float *wf = malloc((size_t)(rows * cols) * sizeof *wf);
                float *x = malloc((size_t)(tokens * cols) * sizeof *x);
                test_fill_activations(&r, wf, rows, cols, cols, 1);
                test_fill_activations(&r, x, tokens, cols, cols, 1);
                dq_quant_params p;
                dq_quant_params_init(&p, sizeof p);
                p.bits = bits;
                p.scheme = scheme;
                p.group_size = groups[g];
                dq_qmatrix *q = NULL;
                ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, wf, rows, cols, cols, NULL, NULL, &q),
                                 DQ_OK);
                dq__wprep *w = NULL;
                ck_assert_int_eq(dq__wprep_create(NULL, q, &w), DQ_OK);
                ck_assert(w->kernel || dq__gemm_isa_best() == DQ_GEMM_ISA_PORTABLE);
                const int64_t code_ld = cols + 1;
                uint8_t *codes = malloc((size_t)(tokens * code_ld));
                float *sx = malloc((size_t)tokens * sizeof *sx);
                int32_t *zx = malloc((size_t)tokens * sizeof *zx);
                dq__quantize_tokens_ref(x, tokens, cols, cols, bits, scheme, 0.9f, codes, code_ld,
                                        sx, zx);
                const dq__aq a = {tokens, cols, code_ld, codes, sx, zx, 0};
                float *want = test_new_output(tokens, rows), *y = test_new_output(tokens, rows);
                dq__gemm_w_a_ref(w, &a, NULL, want, rows);
                for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
                    if (!dq__gemm_isa_supported(isas[v]))
                        continue;
                    dq__gemm_w_a_isa(isas[v], w, &a, NULL, y, rows, test_threads(2));
                    ck_assert_msg(memcmp(y, want, (size_t)(tokens * rows) * sizeof *y) == 0,
                                  "%s: bits %d scheme %d group %d", isa_names[v], bits, scheme,
                                  groups[g]);
                    compared++;
                }
                /* The dispatched entry points pick one of the variants above. */
                dq__gemm_w_a(w, &a, NULL, y, rows, test_threads(0));
                ck_assert(memcmp(y, want, (size_t)(tokens * rows) * sizeof *y) == 0);
                free(want);
                free(y);
                free(codes);
                free(sx);
                free(zx);
                dq__wprep_free(w);
                dq_qmatrix_free(q);
                free(x);
                free(wf);
            }
}
END_TEST

/* Repacking split over threads (whole row blocks per part) writes the bytes one thread writes:
 * codes, per-group records and the largest zero point. The split threshold is lowered so a
 * small matrix (kept small for valgrind) uses every thread offered. */
START_TEST(repack_threads_bit_exact)
{
    test_rng r = {808};
    const int64_t rows = 3 * 16 * 4 + 5, cols = 300; /* a shorter last row block */
    dq__wprep_set_repack_min_codes(rows * cols / 8);
    float *wf = malloc((size_t)(rows * cols) * sizeof *wf);
    test_fill_activations(&r, wf, rows, cols, cols, 1);
    for (int32_t bits = 4; bits <= 8; bits += 4)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++) {
            dq_quant_params p;
            dq_quant_params_init(&p, sizeof p);
            p.bits = bits;
            p.scheme = scheme;
            p.group_size = bits == 4 ? 128 : 0;
            dq_qmatrix *q = NULL;
            ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, wf, rows, cols, cols, NULL, NULL, &q),
                             DQ_OK);
            dq__wprep *one = NULL, *many = NULL;
            ck_assert_int_eq(dq__wprep_create(NULL, q, &one), DQ_OK);
            ck_assert_int_eq(dq__wprep_create(test_threads(3), q, &many), DQ_OK);
            const dq__wpack *a = one->kernel, *b = many->kernel;
            ck_assert(a && b);
            ck_assert(a->code_bytes == b->code_bytes && a->meta_count == b->meta_count);
            ck_assert_msg(memcmp(a->codes, b->codes, a->code_bytes) == 0,
                          "bits %d scheme %d: codes differ", bits, scheme);
            ck_assert_msg(memcmp(a->meta, b->meta, a->meta_count * sizeof *a->meta) == 0,
                          "bits %d scheme %d: group records differ", bits, scheme);
            ck_assert_int_eq(a->max_abs_zero, b->max_abs_zero);
            dq__wprep_free(one);
            dq__wprep_free(many);
            dq_qmatrix_free(q);
        }
    dq__wprep_set_repack_min_codes(0);
    free(wf);
}
END_TEST

/* Zero points far outside the code range (clamped constant groups) can push a group sum past
 * int32: the kernels, exact only modulo 2^32, must hand such calls to the portable kernel. */
START_TEST(overflowing_sums_fall_back)
{
    test_rng r = {707};
    const int64_t rows = 40, cols = 4096, tokens = 9;
    dq__wprep *w = test_random_wprep(&r, rows, cols, 8, 0, PLAIN, 0);
    for (int64_t o = 0; o < rows; o += 3)
        w->zeros[o] = o & 1 ? 10000 : -10000;
    if (w->kernel_free)
        w->kernel_free(&w->ctx, w->kernel);
    w->kernel = NULL;
    dq__gemm_prepare(w);
    acts a = make_acts(&r, tokens, cols, 8, 0, PLAIN);
    for (int64_t t = 0; t < tokens; t += 2)
        a.zeros[t] = t & 2 ? 10000 : -10000;
    float *want = test_new_output(tokens, rows), *y = test_new_output(tokens, rows);
    dq__gemm_w_a_ref(w, &a.aq, NULL, want, rows);
    for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        dq__gemm_w_a_isa(isas[v], w, &a.aq, NULL, y, rows, NULL);
        ck_assert_msg(memcmp(y, want, (size_t)(tokens * rows) * sizeof *y) == 0, "%s",
                      isa_names[v]);
    }
    free(want);
    free(y);
    free_acts(&a);
    test_free_wprep(w);
}
END_TEST

/* Kernels that the CPU lacks fall back to the portable product rather than fail. */
START_TEST(isa_probe)
{
    ck_assert(dq__gemm_isa_supported(DQ_GEMM_ISA_PORTABLE));
    ck_assert(!dq__gemm_isa_supported(99));
    int32_t best = dq__gemm_isa_best();
    ck_assert(dq__gemm_isa_supported(best));
    printf("gemm kernels: best %s\n", isa_names[best]);
}
END_TEST

static Suite *gemm_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, isa_probe);
    tcase_add_test(tc, odd_sizes_bit_exact);
    tcase_add_test(tc, groups_and_bits_bit_exact);
    tcase_add_test(tc, token_counts_bit_exact);
    tcase_add_test(tc, threads_bit_exact);
    tcase_add_test(tc, gemv_stream_counts_bit_exact);
    tcase_add_test(tc, amx_shapes_bit_exact);
    tcase_add_test(tc, weight_only_threads_bit_exact);
    tcase_add_test(tc, quantize_bit_exact);
    tcase_add_test(tc, grouped_acts_bit_exact);
    tcase_add_test(tc, quantize_groups_bit_exact);
    tcase_add_test(tc, packed_matrices_bit_exact);
    tcase_add_test(tc, repack_threads_bit_exact);
    tcase_add_test(tc, overflowing_sums_fall_back);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(gemm_suite(), 0);
}
