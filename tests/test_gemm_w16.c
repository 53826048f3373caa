/* Weight-only product (float activations): every kernel this CPU runs against the portable
 * double-accumulating kernel within 1e-5 of each output's sum of |terms|, on random and
 * outlier-heavy operands, odd sizes, every tile remainder, groups that divide the width and
 * groups that do not, 4 and 8 bits, ASYM and SYM zero points, unaligned rows, with and without
 * bias; the SIMD variants give the same bits as each other and on any number of threads. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm_simd.h"
#include "duquant.h"
#include "dq_test.h"
#include "test_wprep.h"
#include "dq_check_run.h"

static const int32_t isas[] = {DQ_GEMM_ISA_PORTABLE, DQ_GEMM_ISA_AVX2, DQ_GEMM_ISA_AVX512};
static const char *const isa_names[] = {"portable", "avx2", "avx512"};

/* Relative tolerance against the portable kernel, on the sum of |terms| (dq_gemm_simd.h). */
#define TOL 1e-5

enum { PLAIN = WPREP_PLAIN, EXTREME = WPREP_EXTREME };
enum { ASYM = 0, SYM = 1 };

/* Sum over the output's terms of |sw * x * (c - zw)|, plus |bias|. */
static double abs_terms(const dq__wprep *w, const float *x, const float *bias, int64_t o)
{
    double total = bias ? fabs(bias[o]) : 0.0;
    for (int64_t g = 0; g < w->groups; g++) {
        const int64_t gi = o * w->groups + g;
        double s = 0.0;
        for (int64_t j = g * w->group_len; j < w->cols && j < (g + 1) * w->group_len; j++)
            s += fabs((double)x[j] * ((double)w->codes[o * w->code_ld + j] - w->zeros[gi]));
        total += fabs((double)w->scales[gi]) * s;
    }
    return total;
}

/* Every supported kernel on 1..max_threads threads: within TOL of the portable kernel, and
 * the SIMD ones all equal to the first SIMD result bit for bit. */
static void check_case(test_rng *r, int64_t tokens, int64_t rows, int64_t cols, int32_t bits,
                       int64_t group_len, int style, int scheme, int with_bias, int max_threads)
{
    dq__wprep *w = test_random_wprep(r, rows, cols, bits, group_len, style, scheme == SYM);
    /* Rows of cols + pad floats, starting one float past an aligned address. */
    const int64_t ldx = cols + (tokens + cols) % 5;
    float *xbuf = malloc((size_t)(tokens * ldx + 1) * sizeof *xbuf);
    float *x = xbuf + 1;
    test_fill_activations(r, x, tokens, cols, ldx, style == EXTREME);
    float *bias = NULL;
    if (with_bias) {
        bias = malloc((size_t)rows * sizeof *bias);
        for (int64_t o = 0; o < rows; o++)
            bias[o] = (float)test_rng_normal(r) * 10.0f;
    }
    const int64_t ldy = rows + 3;
    float *want = test_new_output(tokens, ldy), *first = NULL;
    dq__gemm_w_f32_ref(w, x, tokens, ldx, bias, want, ldy);
    double *bound = malloc((size_t)(tokens * rows) * sizeof *bound);
    for (int64_t i = 0; i < tokens; i++)
        for (int64_t o = 0; o < rows; o++)
            bound[i * rows + o] = TOL * abs_terms(w, x + i * ldx, bias, o) + 1e-30;
    for (size_t v = 0; v < sizeof isas / sizeof isas[0]; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= max_threads; th++) {
            float *y = test_new_output(tokens, ldy);
            dq__gemm_w_f32_isa(isas[v], w, x, tokens, ldx, bias, y, ldy, test_threads(th));
            for (int64_t i = 0; i < tokens; i++)
                for (int64_t o = 0; o < rows; o++) {
                    const double got = y[i * ldy + o], ref = want[i * ldy + o];
                    if (!(fabs(got - ref) <= bound[i * rows + o]))
                        ck_abort_msg("%s, %d threads, T=%lld N=%lld K=%lld w%d group %lld "
                                     "style %d scheme %d: y[%lld][%lld] = %.9g, want %.9g "
                                     "(bound %.3g)",
                                     isa_names[v], th, (long long)tokens, (long long)rows,
                                     (long long)cols, bits, (long long)group_len, style,
                                     scheme, (long long)i, (long long)o, got, ref,
                                     bound[i * rows + o]);
                }
            test_check_canaries(y, tokens, rows, ldy);
            if (isas[v] == DQ_GEMM_ISA_PORTABLE) {
                free(y);
                continue;
            }
            if (!first) {
                first = y;
                continue;
            }
            for (int64_t i = 0; i < tokens; i++)
                if (memcmp(&y[i * ldy], &first[i * ldy], (size_t)rows * sizeof *y) != 0)
                    ck_abort_msg("%s, %d threads, T=%lld N=%lld K=%lld: bits differ from the "
                                 "first SIMD result",
                                 isa_names[v], th, (long long)tokens, (long long)rows,
                                 (long long)cols);
            free(y);
        }
    }
    free(first);
    free(bound);
    free(want);
    free(bias);
    free(xbuf);
    test_free_wprep(w);
}

/* Odd sizes: remainders in tokens (tiles of 8, 4, 2, 1), outputs (blocks of 16, panels of
 * 2 to 4 blocks) and k (steps of 8). */
START_TEST(odd_sizes)
{
    test_rng r = {1601};
    const int64_t tokens[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 17};
    const int64_t rows[] = {1, 15, 16, 17, 33, 50, 97};
    const int64_t cols[] = {1, 7, 8, 9, 63, 100, 257};
    for (size_t a = 0; a < sizeof tokens / sizeof *tokens; a++)
        for (size_t b = 0; b < sizeof rows / sizeof *rows; b++)
            for (size_t c = 0; c < sizeof cols / sizeof *cols; c++) {
                const int k = (int)(a + b + c);
                check_case(&r, tokens[a], rows[b], cols[c], k & 1 ? 8 : 4, 0,
                           k % 3 ? PLAIN : EXTREME, (k >> 1) & 1 ? SYM : ASYM, (k >> 2) & 1, 1);
            }
}
END_TEST

/* Groups dividing the row and not (a short last group, groups shorter than a step, groups
 * not a multiple of a step), 4 and 8 bits, both schemes, both styles. */
START_TEST(groups_bits_schemes)
{
    test_rng r = {1602};
    const int64_t groups[] = {0, 1, 3, 8, 12, 32, 100, 128};
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int scheme = ASYM; scheme <= SYM; scheme++)
                for (int style = PLAIN; style <= EXTREME; style++) {
                    check_case(&r, 9, 37, 520, bits, groups[gi], style, scheme, style, 2);
                    check_case(&r, 1, 40, 333, bits, groups[gi], style, scheme, !style, 2);
                }
}
END_TEST

/* Many tokens: several activation chunks per call, threads splitting blocks or tokens. */
START_TEST(many_tokens_threads)
{
    test_rng r = {1603};
    check_case(&r, 300, 70, 520, 4, 128, EXTREME, ASYM, 1, 4);
    check_case(&r, 130, 20, 1000, 8, 64, PLAIN, SYM, 0, 3);
    check_case(&r, 64, 300, 520, 4, 128, EXTREME, ASYM, 1, 4);
    check_case(&r, 41, 5, 64, 4, 0, PLAIN, ASYM, 1, 4); /* fewer blocks than threads */
}
END_TEST

/* One group of 4096: the longest FMA chains of a real layer stay within the tolerance. */
START_TEST(long_groups)
{
    test_rng r = {1604};
    check_case(&r, 3, 48, 4096, 4, 0, EXTREME, ASYM, 1, 2);
    check_case(&r, 1, 17, 4096, 8, 0, PLAIN, SYM, 0, 2);
}
END_TEST

static Suite *w16_suite(void)
{
    Suite *s = suite_create("gemm_w16");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, odd_sizes);
    tcase_add_test(tc, groups_bits_schemes);
    tcase_add_test(tc, many_tokens_threads);
    tcase_add_test(tc, long_groups);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(w16_suite(), 0);
}
