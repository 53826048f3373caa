/* Differential fuzz target: the fast kernels against the portable oracle, on shapes, formats
 * and values chosen by the fuzzer's bytes (odd sizes, remainders of tiles, blocks, steps and
 * groups; ties, huge, tiny and constant values).
 *  - per-token activation quantizer: every instruction set and 1 or 2 threads give the codes,
 *    scales and zero points of dq__quantize_tokens_ref, bit for bit;
 *  - integer product (W4A4, W8A8, mixed, groups): every instruction set and thread count equals
 *    dq__gemm_w_a_ref bit for bit (dq_gemm.h), and leaves the output padding alone;
 *  - weight-only product (W4A16, W8A16): the SIMD variants agree bit for bit with each other on
 *    any thread count and with the portable kernel within the float-rounding bound of
 *    dq_gemm_simd.h;
 *  - fused online transform of a plan (assembled from random and Hadamard rotations,
 *    permutations and smoothing scales, or built by the greedy search): every variant and thread
 *    count gives the same bits; its quantized codes equal dq__quantize_tokens_ref of its own
 *    transformed rows (dq_online.h); its transform agrees with dq_plan_apply_act_to within the
 *    rounding bound of a chain of block products.
 * Internal entry points: links the library's objects. Built by tests/fuzz/build.sh; replayed over
 * tests/fuzz/corpus-diff by the test fuzz-replay-diff. */
#define _POSIX_C_SOURCE 200809L
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_online.h"
#include "duquant.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const int32_t isas[] = {DQ_GEMM_ISA_PORTABLE, DQ_GEMM_ISA_AVX2, DQ_GEMM_ISA_AVX512,
                               DQ_GEMM_ISA_AMX};

/* Contexts of 1 and 2 threads (their own pools), kept for the life of the process. */
static const dq_context *threads_ctx(int n)
{
    static dq_context *ctx[3];
    if (!ctx[n]) {
        dq_context_params p;
        CHECK(dq_context_params_init(&p, sizeof p) == DQ_OK);
        p.n_threads = n;
        CHECK(dq_context_create(&p, &ctx[n]) == DQ_OK);
    }
    return ctx[n];
}

static void *aligned(size_t bytes)
{
    void *p = NULL;
    CHECK(posix_memalign(&p, 64, (bytes + 63) / 64 * 64 + 64) == 0);
    return p;
}

/* Finite values whose per-row range stays finite (the callers' precondition for the kernels). */
static void fill_finite(fz *f, float *x, int64_t rows, int64_t cols, int64_t ld, int style)
{
    fz_fill(f, x, rows, cols, ld, style, 0);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            float *v = &x[i * ld + j];
            if (!isfinite(*v))
                *v = 0.0f;
            else if (fabsf(*v) > 1e37f)
                *v = copysignf(1e37f, *v);
        }
}

typedef struct quant {
    uint8_t *codes;
    float *scales;
    int32_t *zeros;
} quant;

static quant quant_new(int64_t rows, int64_t code_ld)
{
    quant q = {fz_alloc((size_t)(rows * code_ld)), fz_alloc((size_t)rows * sizeof(float)),
               fz_alloc((size_t)rows * sizeof(int32_t))};
    memset(q.codes, 0xA5, (size_t)(rows * code_ld));
    return q;
}

static void quant_free(quant *q)
{
    free(q->codes);
    free(q->scales);
    free(q->zeros);
}

static int quant_same(const quant *a, const quant *b, int64_t rows, int64_t code_ld)
{
    return memcmp(a->codes, b->codes, (size_t)(rows * code_ld)) == 0 &&
           memcmp(a->scales, b->scales, (size_t)rows * sizeof(float)) == 0 &&
           memcmp(a->zeros, b->zeros, (size_t)rows * sizeof(int32_t)) == 0;
}

/* ---- quantizer and products ---- */

static void fuzz_products(fz *f, int style)
{
    const int64_t tokens = 1 + fz_dim(f, 40), outs = 1 + fz_dim(f, 48), cols = 1 + fz_dim(f, 160);
    dq_quant_params qp;
    CHECK(dq_quant_params_init(&qp, sizeof qp) == DQ_OK);
    qp.bits = fz_u8(f) & 1 ? 8 : 4;
    qp.scheme = fz_u8(f) & 1 ? DQ_QUANT_SYM : DQ_QUANT_ASYM;
    static const int32_t groups[] = {0, 1, 2, 3, 4, 7, 8, 9, 16, 24, 32, 64, 100, 128, 0, 0};
    const uint8_t gb = fz_u8(f);
    qp.group_size = gb < 128 ? groups[gb % 16] : 1 + (int32_t)(gb % 130);
    if (qp.group_size > cols)
        qp.group_size = 0;
    const int32_t abits = fz_u8(f) & 1 ? 8 : 4;
    const int32_t ascheme = fz_u8(f) & 1 ? DQ_QUANT_SYM : DQ_QUANT_ASYM;
    static const float clips[] = {1.0f, 0.9f, 0.5f, 1.0f};
    const float clip = clips[fz_u8(f) % 4];
    const int64_t code_ld = cols + fz_u8(f) % 9, ldx = cols + fz_u8(f) % 3;
    const int64_t ldy = outs + fz_u8(f) % 3;
    const int with_bias = fz_u8(f) & 1;

    float *w = fz_alloc((size_t)(outs * cols) * sizeof(float));
    fill_finite(f, w, outs, cols, cols, style);
    float *x = fz_alloc((size_t)(tokens * ldx) * sizeof(float));
    memset(x, 0, (size_t)(tokens * ldx) * sizeof(float));
    fill_finite(f, x, tokens, cols, ldx, fz_u8(f) % FZ_SPECIAL);
    float *bias = NULL;
    if (with_bias) {
        bias = fz_alloc((size_t)outs * sizeof(float));
        fill_finite(f, bias, 1, outs, outs, FZ_NORMAL);
    }

    /* The activation quantizer. */
    quant ref = quant_new(tokens, code_ld);
    dq__quantize_tokens_ref(x, tokens, cols, ldx, abits, ascheme, clip, ref.codes, code_ld,
                            ref.scales, ref.zeros);
    for (size_t v = 0; v < 3; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= 2; th++) {
            quant got = quant_new(tokens, code_ld);
            dq__quantize_tokens_isa(isas[v], x, tokens, cols, ldx, abits, ascheme, clip,
                                    got.codes, code_ld, got.scales, got.zeros, threads_ctx(th));
            if (!quant_same(&ref, &got, tokens, code_ld)) {
                fprintf(stderr, "quantizer isa %d threads %d: %lld x %lld a%d scheme %d\n",
                        (int)isas[v], th, (long long)tokens, (long long)cols, abits, ascheme);
                CHECK(!"quantizer bit-exact");
            }
            quant_free(&got);
        }
    }
    quant dq = quant_new(tokens, code_ld);
    dq__quantize_tokens(x, tokens, cols, ldx, abits, ascheme, clip, dq.codes, code_ld, dq.scales,
                        dq.zeros, threads_ctx(2));
    CHECK(quant_same(&ref, &dq, tokens, code_ld));
    quant_free(&dq);

    /* Packed weights as layers hold them. */
    dq_qmatrix *q = NULL;
    const dq_status pst = dq_qmatrix_pack(NULL, &qp, w, outs, cols, cols, NULL, NULL, &q);
    CHECK(pst == DQ_OK || pst == DQ_ERR_NONFINITE);
    if (pst == DQ_OK) {
        dq__wprep *wp = NULL;
        CHECK(dq__wprep_create(NULL, q, &wp) == DQ_OK);
        CHECK(wp->kernel != NULL);

        /* Integer product. */
        const dq__aq a = {tokens, cols, code_ld, ref.codes, ref.scales, ref.zeros, 0};
        float *want = fz_sentinel(tokens * ldy);
        dq__gemm_w_a_ref(wp, &a, bias, want, ldy);
        for (size_t v = 0; v < 3; v++) {
            if (!dq__gemm_isa_supported(isas[v]))
                continue;
            for (int th = 1; th <= 2; th++) {
                float *y = fz_sentinel(tokens * ldy);
                CHECK(dq__gemm_w_a_isa(isas[v], wp, &a, bias, y, ldy, threads_ctx(th)) ==
                      DQ_OK);
                if (memcmp(y, want, (size_t)(tokens * ldy) * sizeof(float)) != 0) {
                    fprintf(stderr, "product isa %d threads %d: T %lld N %lld K %lld w%d/%d "
                                    "group %d a%d/%d\n",
                            (int)isas[v], th, (long long)tokens, (long long)outs,
                            (long long)cols, qp.bits, qp.scheme, qp.group_size, abits, ascheme);
                    CHECK(!"integer product bit-exact");
                }
                free(y);
            }
        }
        for (int64_t t = 0; t < tokens; t++)
            CHECK(fz_untouched(want + t * ldy + outs, ldy - outs));
        float *yd = fz_sentinel(tokens * ldy);
        CHECK(dq__gemm_w_a(wp, &a, bias, yd, ldy, threads_ctx(2)) == DQ_OK);
        CHECK(memcmp(yd, want, (size_t)(tokens * ldy) * sizeof(float)) == 0);
        free(yd);
        free(want);

        /* Weight-only product. */
        float *pref = fz_sentinel(tokens * ldy), *first = NULL;
        dq__gemm_w_f32_ref(wp, x, tokens, ldx, bias, pref, ldy);
        for (size_t v = 1; v < 3; v++) {
            if (!dq__gemm_isa_supported(isas[v]))
                continue;
            for (int th = 1; th <= 2; th++) {
                float *y = fz_sentinel(tokens * ldy);
                dq__gemm_w_f32_isa(isas[v], wp, x, tokens, ldx, bias, y, ldy, threads_ctx(th));
                if (!first) {
                    first = y;
                    continue;
                }
                CHECK(memcmp(y, first, (size_t)(tokens * ldy) * sizeof(float)) == 0);
                free(y);
            }
        }
        if (first) {
            int8_t *codes = fz_alloc((size_t)cols);
            float *sw = fz_alloc((size_t)wp->groups * sizeof(float));
            int32_t *zw = fz_alloc((size_t)wp->groups * sizeof(int32_t));
            for (int64_t o = 0; o < outs; o++) {
                dq__wprep_unpack_row(wp, o, codes, sw, zw);
                for (int64_t t = 0; t < tokens; t++) {
                    double mag = bias ? fabs(bias[o]) : 0.0, unscaled = 0;
                    for (int64_t k = 0; k < cols; k++) {
                        const int64_t g = k / wp->group_len;
                        mag += fabs((double)x[t * ldx + k] * sw[g] * (codes[k] - zw[g]));
                        unscaled += fabs((double)x[t * ldx + k] * (codes[k] - zw[g]));
                    }
                    /* Float group sums that may overflow before their scale are refused by
                     * the layer (DQ_ERR_NONFINITE): no contract for the kernels there. */
                    if (mag > FLT_MAX / 4 || unscaled > FLT_MAX / 4)
                        continue;
                    const double a1 = first[t * ldy + o], a2 = pref[t * ldy + o];
                    const double tol = 2.0 * (double)(wp->group_len + wp->groups + 2) *
                                           0x1p-24 * mag + 1e-37;
                    if (!(fabs(a1 - a2) <= tol)) {
                        fprintf(stderr, "weight-only token %lld out %lld: %.9g vs %.9g "
                                        "(tol %.3g)\n",
                                (long long)t, (long long)o, a1, a2, tol);
                        for (int64_t k = 0; k < cols; k++)
                            fprintf(stderr, " [%lld] x %.9g c %d sw %.9g zw %d\n", (long long)k,
                                    (double)x[t * ldx + k], codes[k], (double)sw[k / wp->group_len],
                                    zw[k / wp->group_len]);
                        if (bias)
                            fprintf(stderr, " bias %.9g\n", (double)bias[o]);
                        CHECK(!"weight-only product within rounding");
                    }
                }
            }
            free(codes);
            free(sw);
            free(zw);
            for (int64_t t = 0; t < tokens; t++)
                CHECK(fz_untouched(first + t * ldy + outs, ldy - outs));
        }
        free(first);
        free(pref);
        dq__wprep_free(wp);
    }
    dq_qmatrix_free(q);
    quant_free(&ref);
    free(bias);
    free(x);
    free(w);
}

/* ---- fused online transform ---- */

static int64_t *random_perm(fz *f, int64_t n)
{
    int64_t *p = fz_alloc((size_t)n * sizeof *p);
    for (int64_t j = 0; j < n; j++)
        p[j] = j;
    for (int64_t j = n - 1; j > 0; j--) {
        const int64_t k = (int64_t)(fz_next(f) % (uint64_t)(j + 1));
        const int64_t t = p[j];
        p[j] = p[k];
        p[k] = t;
    }
    return p;
}

/* A plan of width cols: assembled from fuzzer-chosen parts, or built by the greedy search. */
static dq_plan *make_plan(fz *f, int64_t cols, int style, int32_t *max_block)
{
    static const int32_t blocks[] = {2, 4, 8, 16, 32, 64, 3, 5, 7, 12, 24, 40};
    dq_plan *plan = NULL;
    *max_block = 1;
    if (fz_u8(f) % 4 == 0) {
        dq_plan_params pp;
        CHECK(dq_plan_params_init(&pp, sizeof pp) == DQ_OK);
        pp.flags = (fz_u8(f) & 0x3F) | DQ_PLAN_F_ROTATE;
        pp.flags &= ~(uint32_t)DQ_PLAN_F_HADAMARD_BASE;
        pp.method = DQ_ROT_METHOD_GREEDY;
        pp.block_size = blocks[fz_u8(f) % 12];
        pp.max_rotation_step = (int32_t)(fz_u8(f) % 5);
        pp.permutation_times = 1 + fz_u8(f) % 2;
        pp.seed = fz_u8(f);
        const int64_t srows = 1 + fz_u8(f) % 12;
        float *sample = fz_alloc((size_t)(srows * cols) * sizeof(float));
        float *wabs = fz_alloc((size_t)cols * sizeof(float));
        fill_finite(f, sample, srows, cols, cols, style == FZ_HUGE ? FZ_NORMAL : style);
        for (int64_t j = 0; j < cols; j++)
            wabs[j] = (float)(0.05 + fz_unit(f));
        const dq_status st = dq_plan_build_from_sample(NULL, &pp, NULL, sample, srows, cols, cols,
                                                       wabs, &plan);
        CHECK(st == DQ_OK || st == DQ_ERR_NONFINITE || st == DQ_ERR_UNSUPPORTED);
        free(sample);
        free(wabs);
        *max_block = pp.block_size;
        return plan;
    }
    const int32_t n_rot = (int32_t)(fz_u8(f) % 4);
    dq_rotation *rots[3] = {NULL, NULL, NULL};
    int64_t *perms[2] = {NULL, NULL};
    for (int32_t i = 0; i < n_rot; i++) {
        const uint8_t b = fz_u8(f);
        if (b & 1) {
            dq_rotation_params rp;
            CHECK(dq_rotation_params_init(&rp, sizeof rp) == DQ_OK);
            rp.method = b & 2 ? DQ_ROT_METHOD_HADAMARD : DQ_ROT_METHOD_RANDOM;
            rp.block_size = blocks[(b >> 3) % 12];
            rp.flags = b & 4 ? DQ_ROT_F_PER_BLOCK : 0;
            rp.seed = fz_u8(f);
            const dq_status st = dq_rotation_create(NULL, &rp, NULL, 0, cols, 0, &rots[i]);
            CHECK(st == DQ_OK || st == DQ_ERR_UNSUPPORTED);
            if (st == DQ_OK && rp.block_size > *max_block)
                *max_block = rp.block_size;
        }
        if (i + 1 < n_rot && (b & 0x80))
            perms[i] = random_perm(f, cols);
    }
    float *s = NULL;
    if (fz_u8(f) & 1) {
        s = fz_alloc((size_t)cols * sizeof(float));
        const int wide = fz_u8(f) & 1;
        for (int64_t j = 0; j < cols; j++)
            s[j] = (float)(wide ? exp2(fz_unit(f) * 40.0 - 20.0) : 0.2 + 3.0 * fz_unit(f));
    }
    const dq_status st = dq_plan_assemble(NULL, cols, s, n_rot, (const dq_rotation *const *)rots,
                                          (const int64_t *const *)perms, &plan);
    CHECK(st == DQ_OK);
    for (int i = 0; i < 3; i++)
        dq_rotation_free(rots[i]);
    free(perms[0]);
    free(perms[1]);
    free(s);
    return plan;
}

static void fuzz_online(fz *f, int style)
{
    const int64_t cols = 1 + fz_dim(f, 160), rows = 1 + fz_dim(f, 40);
    int32_t max_block = 1;
    dq_plan *plan = make_plan(f, cols, style, &max_block);
    if (!plan)
        return;
    const int32_t bits = fz_u8(f) & 1 ? 8 : 4;
    const int32_t scheme = fz_u8(f) & 1 ? DQ_QUANT_SYM : DQ_QUANT_ASYM;
    const float clip = fz_u8(f) & 1 ? 1.0f : 0.9f;
    const int64_t ldx = cols + fz_u8(f) % 3, code_ld = cols + fz_u8(f) % 5, ldy = cols + 1;
    float *x = fz_alloc((size_t)(rows * ldx) * sizeof(float));
    memset(x, 0, (size_t)(rows * ldx) * sizeof(float));
    fill_finite(f, x, rows, cols, ldx, style);

    /* The oracle transform; plans that overflow on these values are not compared. */
    float *xt = fz_alloc((size_t)(rows * cols) * sizeof(float));
    const dq_status ost = dq_plan_apply_act_to(plan, x, rows, cols, ldx, xt, cols, NULL, 0);
    CHECK(ost == DQ_OK || ost == DQ_ERR_NONFINITE);
    if (ost != DQ_OK) {
        free(xt);
        free(x);
        dq_plan_free(plan);
        return;
    }
    dq__online *on = NULL;
    CHECK(dq__online_create(NULL, plan, &on) == DQ_OK);
    quant first = {NULL, NULL, NULL};
    float *yt0 = NULL;
    for (size_t v = 0; v < 3; v++) {
        if (!dq__gemm_isa_supported(isas[v]))
            continue;
        for (int th = 1; th <= 2; th++) {
            size_t bytes = 0;
            CHECK(dq__online_workspace(on, rows, threads_ctx(th), &bytes));
            void *work = aligned(bytes);
            quant q = quant_new(rows, code_ld);
            dq__online_run_isa(isas[v], on, x, rows, ldx, bits, scheme, clip, q.codes, code_ld,
                               q.scales, q.zeros, NULL, 0, work, threads_ctx(th));
            float *yt = fz_sentinel(rows * ldy);
            dq__online_run_isa(isas[v], on, x, rows, ldx, bits, scheme, clip, NULL, 0, NULL,
                               NULL, yt, ldy, work, threads_ctx(th));
            free(work);
            for (int64_t t = 0; t < rows; t++)
                CHECK(fz_untouched(yt + t * ldy + cols, ldy - cols));
            if (!first.codes) {
                first = q;
                yt0 = yt;
                continue;
            }
            if (!quant_same(&q, &first, rows, code_ld) ||
                memcmp(yt, yt0, (size_t)(rows * ldy) * sizeof(float)) != 0) {
                fprintf(stderr, "online isa %d threads %d differs: %lld x %lld\n", (int)isas[v],
                        th, (long long)rows, (long long)cols);
                CHECK(!"fused variants bit-exact");
            }
            quant_free(&q);
            free(yt);
        }
    }
    int finite = fz_all_finite(yt0, rows, cols, ldy);
    if (finite) {
        /* Codes: the quantizer on the fused transform's own rows. */
        quant want = quant_new(rows, code_ld);
        dq__quantize_tokens_ref(yt0, rows, cols, ldy, bits, scheme, clip, want.codes, code_ld,
                                want.scales, want.zeros);
        for (int64_t t = 0; t < rows; t++)
            for (int64_t j = cols; j < code_ld; j++)
                want.codes[t * code_ld + j] = 0; /* the fused path zeroes the padding */
        if (!quant_same(&want, &first, rows, code_ld)) {
            fprintf(stderr, "fused codes differ from the quantizer on its transform: %lld x "
                            "%lld a%d/%d clip %g\n",
                    (long long)rows, (long long)cols, bits, scheme, (double)clip);
            CHECK(!"fused quantization = quantizer(fused transform)");
        }
        quant_free(&want);
    }
    /* Transform: a chain of block products of orthogonal matrices keeps |x / s|; each product
     * adds at most about (block + 1) * 2^-24 of it per element, on both sides. */
    float *sc = fz_alloc((size_t)cols * sizeof(float));
    CHECK(dq_plan_smooth_scales(plan, sc, cols) == DQ_OK);
    int32_t n_rot = 0;
    CHECK(dq_plan_layout(plan, NULL, &n_rot) == DQ_OK);
    for (int64_t t = 0; t < rows; t++) {
        double nrm = 0;
        for (int64_t j = 0; j < cols; j++) {
            const double v = (double)x[t * ldx + j] / sc[j];
            nrm += v * v;
        }
        nrm = sqrt(nrm);
        if (!(nrm < FLT_MAX / 4))
            continue;
        const double tol =
            4.0 * (n_rot + 1) * (max_block + 2) * 0x1p-24 * nrm + 1e-40 * (max_block + 2);
        for (int64_t j = 0; j < cols; j++) {
            const double a1 = yt0[t * ldy + j], a2 = xt[t * cols + j];
            if (!(fabs(a1 - a2) <= tol)) {
                fprintf(stderr, "transform token %lld col %lld: fused %.9g, BLAS %.9g, tol %.3g "
                                "(|x/s| %.3g, %d slots, block %d)\n",
                        (long long)t, (long long)j, a1, a2, tol, nrm, (int)n_rot,
                        (int)max_block);
                CHECK(!"fused transform within rounding of the unfused");
            }
        }
    }
    free(sc);
    quant_free(&first);
    free(yt0);
    dq__online_free(on);
    free(xt);
    free(x);
    dq_plan_free(plan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size, 0, 0};
    for (int k = 0; k < 4; k++)
        f.rng = f.rng << 8 | fz_u8(&f);
    const uint8_t what = fz_u8(&f);
    const int style = fz_u8(&f) % FZ_SPECIAL;
    if (what & 1)
        fuzz_products(&f, style);
    else
        fuzz_online(&f, style);
    return 0;
}
