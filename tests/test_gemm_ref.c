/* Portable integer-product kernels (the oracle of every SIMD kernel): prepared weights,
 * per-token activation codes and the exact integer identity with its fixed float epilogue. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_test.h"
#include "dq_check_run.h"

/* The unpacked view of prepared weights, decoded from the repacked form the kernels read. */
typedef struct unpacked {
    int8_t *codes; /* rows x cols */
    float *scales;
    int32_t *zeros, *sums; /* rows x groups */
} unpacked;

static unpacked unpack(const dq__wprep *w)
{
    unpacked u;
    u.codes = malloc((size_t)(w->rows * w->cols));
    u.scales = malloc((size_t)(w->rows * w->groups) * sizeof(float));
    u.zeros = malloc((size_t)(w->rows * w->groups) * sizeof(int32_t));
    u.sums = calloc((size_t)(w->rows * w->groups), sizeof(int32_t));
    ck_assert(u.codes && u.scales && u.zeros && u.sums);
    for (int64_t i = 0; i < w->rows; i++) {
        dq__wprep_unpack_row(w, i, u.codes + i * w->cols, u.scales + i * w->groups,
                             u.zeros + i * w->groups);
        for (int64_t j = 0; j < w->cols; j++)
            u.sums[i * w->groups + j / w->group_len] += u.codes[i * w->cols + j];
    }
    return u;
}

static void unpacked_free(unpacked *u)
{
    free(u->codes);
    free(u->scales);
    free(u->zeros);
    free(u->sums);
}

static dq_qmatrix *pack(const float *w, int64_t rows, int64_t cols, int32_t bits, int32_t scheme,
                        int32_t group)
{
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.bits = bits;
    p.scheme = scheme;
    p.group_size = group;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, rows, cols, cols, NULL, NULL, &q), DQ_OK);
    return q;
}

/* The prepared weights hold the packed matrix's values: (c - zw) * sw equals the dequantized
 * element, code rows are 64-byte multiples with zero padding, code sums add up. */
START_TEST(wprep_matches_packed_matrix)
{
    test_rng r = {1};
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 64}, {4, 65}, {9, 172}};
    const int32_t groups[] = {0, 4, 5, 64};
    for (size_t s = 0; s < 5; s++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int32_t scheme = 0; scheme < 2; scheme++)
                for (size_t g = 0; g < 4; g++) {
                    const int64_t rows = shapes[s][0], cols = shapes[s][1];
                    float *w = malloc((size_t)(rows * cols) * sizeof(float));
                    float *deq = malloc((size_t)(rows * cols) * sizeof(float));
                    test_fill_activations(&r, w, rows, cols, cols, 1);
                    dq_qmatrix *q = pack(w, rows, cols, bits, scheme, groups[g]);
                    ck_assert_int_eq(dq_qmatrix_dequantize(q, deq, cols), DQ_OK);
                    dq__wprep *wp = NULL;
                    ck_assert_int_eq(dq__wprep_create(NULL, q, &wp), DQ_OK);
                    ck_assert_int_eq(wp->rows, rows);
                    ck_assert_int_eq(wp->cols, cols);
                    ck_assert_int_eq(wp->bits, bits);
                    ck_assert_int_eq(wp->groups * wp->group_len >= cols, 1);
                    /* Only the repacked form is held: no int8 copy of the codes. */
                    ck_assert_ptr_null(wp->codes);
                    ck_assert_ptr_nonnull(wp->kernel);
                    const dq__wpack *pk = wp->kernel;
                    const int64_t kbits = bits;
                    ck_assert_uint_eq(pk->code_bytes,
                                      (size_t)((rows + 15) / 16 * pk->steps * 16 * kbits));
                    unpacked u = unpack(wp);
                    for (int64_t i = 0; i < rows; i++) {
                        const int8_t *c = u.codes + i * cols;
                        for (int64_t gg = 0; gg < wp->groups; gg++) {
                            const int64_t gi = i * wp->groups + gg, j0 = gg * wp->group_len;
                            const int64_t j1 = j0 + wp->group_len < cols ? j0 + wp->group_len
                                                                          : cols;
                            int32_t sum = 0;
                            for (int64_t j = j0; j < j1; j++) {
                                sum += c[j];
                                const float v = ((float)c[j] - (float)u.zeros[gi]) *
                                                u.scales[gi];
                                ck_assert_msg(v == deq[i * cols + j], "%g vs %g", (double)v,
                                              (double)deq[i * cols + j]);
                            }
                            /* corr = sum c - n * zw, zero = zw + the 4-bit code bias */
                            const dq__gemm_meta *m = &pk->meta[(i / 16) * wp->groups + gg];
                            ck_assert_int_eq(m->corr[i % 16],
                                             sum - (int32_t)(j1 - j0) * u.zeros[gi]);
                            ck_assert_int_eq(m->zero[i % 16], u.zeros[gi] + (bits == 4 ? 8 : 0));
                            if (scheme == DQ_QUANT_SYM)
                                ck_assert_int_eq(u.zeros[gi], 0);
                        }
                    }
                    unpacked_free(&u);
                    dq__wprep_free(wp);
                    dq_qmatrix_free(q);
                    free(w);
                    free(deq);
                }
    dq__wprep_free(NULL);
}
END_TEST

/* Token codes: (u - zx) * sx equals dq_qmatrix_pack's per-row dequantized value; padding 0. */
START_TEST(token_codes_match_packed_rows)
{
    test_rng r = {2};
    const int64_t widths[] = {1, 7, 33, 172};
    const float clips[] = {1.0f, 0.9f};
    for (size_t wi = 0; wi < 4; wi++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int32_t scheme = 0; scheme < 2; scheme++)
                for (int ci = 0; ci < 2; ci++) {
                    const int64_t rows = 6, cols = widths[wi], ldx = cols + 2;
                    const int64_t code_ld = (cols + 63) / 64 * 64;
                    float *x = malloc((size_t)(rows * ldx) * sizeof(float));
                    test_fill_activations(&r, x, rows, cols, ldx, 1);
                    uint8_t *codes = malloc((size_t)(rows * code_ld));
                    memset(codes, 0xCD, (size_t)(rows * code_ld));
                    float scales[6];
                    int32_t zeros[6];
                    dq__quantize_tokens_ref(x, rows, cols, ldx, bits, scheme, clips[ci], codes,
                                            code_ld, scales, zeros);
                    dq_quant_params p;
                    dq_quant_params_init(&p, sizeof p);
                    p.bits = bits;
                    p.scheme = scheme;
                    p.clip_ratio = clips[ci];
                    dq_qmatrix *q = NULL;
                    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, x, rows, cols, ldx, NULL, NULL, &q),
                                     DQ_OK);
                    float *deq = malloc((size_t)(rows * cols) * sizeof(float));
                    ck_assert_int_eq(dq_qmatrix_dequantize(q, deq, cols), DQ_OK);
                    for (int64_t t = 0; t < rows; t++) {
                        for (int64_t j = 0; j < cols; j++) {
                            const uint8_t u = codes[t * code_ld + j];
                            ck_assert_int_lt(u, 1 << bits);
                            const float v = ((float)u - (float)zeros[t]) * scales[t];
                            ck_assert(v == deq[t * cols + j]);
                        }
                        for (int64_t j = cols; j < code_ld; j++)
                            ck_assert_int_eq(codes[t * code_ld + j], 0);
                        if (scheme == DQ_QUANT_SYM)
                            ck_assert_int_eq(zeros[t], 1 << (bits - 1));
                    }
                    dq_qmatrix_free(q);
                    free(deq);
                    free(codes);
                    free(x);
                }
}
END_TEST

/* y = bias + sum_g (sx * sw_g) * (float)acc_g in group order, acc_g from the int32 identity
 * sum u*c - zw sum u - zx sum c + n zx zw: the documented epilogue, bit for bit. */
START_TEST(product_follows_identity_and_epilogue)
{
    test_rng r = {3};
    const int64_t tokens = 5, out = 9, cols = 172;
    const int32_t groups[] = {0, 43, 64};
    for (int bits = 4; bits <= 8; bits += 4)
        for (int32_t scheme = 0; scheme < 2; scheme++)
            for (size_t g = 0; g < 3; g++) {
                float *w = malloc((size_t)(out * cols) * sizeof(float));
                float *x = malloc((size_t)(tokens * cols) * sizeof(float));
                float bias[9];
                test_fill_activations(&r, w, out, cols, cols, 0);
                test_fill_activations(&r, x, tokens, cols, cols, 1);
                for (int o = 0; o < 9; o++)
                    bias[o] = (float)test_rng_normal(&r);
                dq_qmatrix *q = pack(w, out, cols, g == 1 ? 8 : 4, scheme, groups[g]);
                dq__wprep *wp = NULL;
                ck_assert_int_eq(dq__wprep_create(NULL, q, &wp), DQ_OK);
                const int64_t code_ld = 192;
                uint8_t *codes = malloc((size_t)(tokens * code_ld));
                float sx[5];
                int32_t zx[5];
                dq__quantize_tokens_ref(x, tokens, cols, cols, bits, scheme, 1.0f, codes,
                                        code_ld, sx, zx);
                const dq__aq a = {tokens, cols, code_ld, codes, sx, zx, 0};
                float y[5 * 9], y_nobias[5 * 9];
                dq__gemm_w_a_ref(wp, &a, bias, y, 9);
                dq__gemm_w_a_ref(wp, &a, NULL, y_nobias, 9);
                unpacked uw = unpack(wp);
                for (int64_t t = 0; t < tokens; t++)
                    for (int64_t o = 0; o < out; o++) {
                        float acc = bias[o], acc0 = 0.0f;
                        for (int64_t gg = 0; gg < wp->groups; gg++) {
                            const int64_t gi = o * wp->groups + gg, j0 = gg * wp->group_len;
                            const int64_t j1 = j0 + wp->group_len < cols ? j0 + wp->group_len
                                                                          : cols;
                            int32_t uc = 0, su = 0;
                            for (int64_t j = j0; j < j1; j++) {
                                uc += codes[t * code_ld + j] * uw.codes[o * cols + j];
                                su += codes[t * code_ld + j];
                            }
                            const int32_t n = (int32_t)(j1 - j0), zw = uw.zeros[gi];
                            const int32_t s = uc - zw * su - zx[t] * uw.sums[gi] +
                                              n * zx[t] * zw;
                            const float scale = sx[t] * uw.scales[gi];
                            acc += scale * (float)s;
                            acc0 += scale * (float)s;
                        }
                        ck_assert(y[t * 9 + o] == acc);
                        ck_assert(y_nobias[t * 9 + o] == acc0);
                    }
                /* the weight-only product against a double oracle on dequantized weights */
                float *deq = malloc((size_t)(out * cols) * sizeof(float));
                float yf[5 * 9], ref[5 * 9];
                ck_assert_int_eq(dq_qmatrix_dequantize(q, deq, cols), DQ_OK);
                dq__gemm_w_f32_ref(wp, x, tokens, cols, bias, yf, 9);
                test_matmul_nt(x, cols, deq, cols, ref, 9, tokens, out, cols);
                for (int64_t i = 0; i < tokens * out; i++)
                    ref[i] += bias[i % 9];
                ck_assert(test_rel_err(yf, 9, ref, 9, tokens, out) < 1e-6);
                free(deq);
                free(codes);
                unpacked_free(&uw);
                dq__wprep_free(wp);
                dq_qmatrix_free(q);
                free(w);
                free(x);
            }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gemm_ref");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, wprep_matches_packed_matrix);
    tcase_add_test(tc, token_codes_match_packed_rows);
    tcase_add_test(tc, product_follows_identity_and_epilogue);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
