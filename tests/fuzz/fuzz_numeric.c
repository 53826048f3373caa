/* Fuzz target for the numeric API. The fuzzer's bytes choose shapes (0, 1, odd sizes, remainders
 * of blocks and groups), rotation, plan and quantization parameters, the style of the values
 * (ordinary, ties, huge finite, tiny and subnormal, constant rows, NaN and infinity) and a few
 * raw bit patterns; bulk values come from a generator seeded by the bytes. One input runs a
 * pipeline: rotations (created and rebuilt from their matrices), a plan (from a calibrator or
 * a sample), packed weights (plain, clipped, transformed), linear layers (alone and as a
 * shared-input group) and a file round trip. Checked on every call: the status is one the
 * header documents, a failed call leaves its outputs untouched (sentinels), finite inputs give
 * finite outputs or DQ_ERR_NONFINITE, the quantizer keeps the error bound of duquant.h, a
 * layer stays within the bound that follows from it, a transformed pair keeps x * W^T, and
 * objects loaded back from a file give the same bits. Built by tests/fuzz/build.sh; replayed
 * over tests/fuzz/corpus-numeric by the test fuzz-replay-numeric. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Status sets. */
#define S_ROT_CREATE                                                                       \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_OVERFLOW) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_UNSUPPORTED) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_STRUCT_SIZE))
#define S_ROT_APPLY                                                                        \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_OVERFLOW) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_BLAS))
#define S_FROM_MATRICES                                                                    \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_NONFINITE) |        \
     ST(DQ_ERR_OVERFLOW) | ST(DQ_ERR_NOMEM))
#define S_PLAN_BUILD                                                                       \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_BAD_STATE) |        \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_UNSUPPORTED) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_OVERFLOW) | \
     ST(DQ_ERR_STRUCT_SIZE))
#define S_PLAN_APPLY                                                                       \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_OVERFLOW) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_BUFFER) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_BLAS))
#define S_CALIB_OBSERVE                                                                    \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_NONFINITE) |        \
     ST(DQ_ERR_OVERFLOW))
#define S_PACK                                                                             \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_OVERFLOW) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_STRUCT_SIZE) | ST(DQ_ERR_UNSUPPORTED))
#define S_PACK_T (S_PACK | ST(DQ_ERR_MISMATCH) | ST(DQ_ERR_BLAS))
#define S_LIN_CREATE                                                                       \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_MISMATCH) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_OVERFLOW) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_STRUCT_SIZE) | \
     ST(DQ_ERR_UNSUPPORTED))
#define S_FORWARD                                                                          \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_NONFINITE) |        \
     ST(DQ_ERR_OVERFLOW) | ST(DQ_ERR_BUFFER) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_BLAS))
#define S_GROUP (S_FORWARD | ST(DQ_ERR_MISMATCH))
#define S_ADD                                                                              \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_OVERFLOW) |         \
     ST(DQ_ERR_SHAPE))
#define S_ADD_LINEAR                                                                       \
    (ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_MISMATCH) |         \
     ST(DQ_ERR_NONFINITE) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_STRUCT_SIZE) | ST(DQ_ERR_UNSUPPORTED))

/* Everything one input builds; freed at the end. */
typedef struct state {
    fz f;
    int64_t rows, cols, outs;
    int style;
    float *x;       /* rows x ldx activations */
    int64_t ldx;
    int x_finite;
    float *w;       /* outs x cols weights */
    int w_finite;
    dq_rotation *rot;
    dq_plan *plan;
    dq_qmatrix *q;  /* packed weights, transformed by plan when q_plan */
    int q_plan;
    float *bias;
    dq_linear *lin;
    dq_linear_params lp;
    const dq_plan *lin_plan; /* the plan the layer reads (NULL or plan) */
} state;

/* ---- rotations ---- */

static void check_rotation_apply(state *s, const dq_rotation *r, const dq_rotation *r2)
{
    const int64_t n = s->rows * s->ldx;
    float *a = fz_alloc((size_t)n * sizeof(float) + 1), *b = fz_alloc((size_t)n * sizeof(float) + 1);
    memcpy(a, s->x, (size_t)n * sizeof(float));
    memcpy(b, s->x, (size_t)n * sizeof(float));
    const dq_status st = dq_rotation_apply(r, a, s->rows, s->cols, s->ldx);
    CHECK_STATUS(st, S_ROT_APPLY);
    if (st != DQ_OK && st != DQ_ERR_NONFINITE)
        CHECK(memcmp(a, s->x, (size_t)n * sizeof(float)) == 0);
    if (st == DQ_OK && s->x_finite)
        CHECK(fz_all_finite(a, s->rows, s->cols, s->ldx));
    if (r2) {
        /* The same matrices give the same bits. */
        const dq_status st2 = dq_rotation_apply(r2, b, s->rows, s->cols, s->ldx);
        CHECK(st2 == st);
        if (st == DQ_OK)
            CHECK(memcmp(a, b, (size_t)n * sizeof(float)) == 0);
    }
    free(a);
    free(b);
}

/* Rebuild r from its matrices through dq_rotation_from_matrices. */
static dq_rotation *rebuild_rotation(const dq_rotation *r)
{
    int64_t cols = 0, n_blocks = 0, n_mat = 0;
    int32_t bs = 0;
    CHECK(dq_rotation_layout(r, &cols, &bs, &n_blocks, &n_mat) == DQ_OK);
    CHECK(cols >= 1 && bs >= 2 && n_blocks >= 1 && n_mat >= 1 && n_mat <= n_blocks);
    int64_t total = 0;
    for (int64_t m = 0; m < n_mat; m++) {
        int32_t size = 0;
        CHECK(dq_rotation_matrix(r, m, NULL, 0, &size) == DQ_OK);
        CHECK(size >= 1 && size <= bs);
        total += (int64_t)size * size;
    }
    float *data = fz_alloc((size_t)total * sizeof(float));
    int64_t at = 0;
    for (int64_t m = 0; m < n_mat; m++) {
        int32_t size = 0;
        CHECK(dq_rotation_matrix(r, m, NULL, 0, &size) == DQ_OK);
        CHECK(dq_rotation_matrix(r, m, data + at, size, &size) == DQ_OK);
        CHECK(fz_all_finite(data + at, size, size, size));
        at += (int64_t)size * size;
    }
    /* One matrix per block, or one shared by the full blocks and one for a short last block
     * (the same data when there are as many matrices as blocks). */
    const int32_t per_block = n_mat == n_blocks;
    dq_rotation *r2 = (dq_rotation *)&r2;
    const dq_status st = dq_rotation_from_matrices(NULL, cols, bs, per_block, data, total, &r2);
    CHECK(st == DQ_OK);
    free(data);
    return r2;
}

static void fuzz_rotations(state *s)
{
    fz *f = &s->f;
    dq_rotation_params rp;
    CHECK(dq_rotation_params_init(&rp, sizeof rp) == DQ_OK);
    static const int32_t blocks[] = {2, 3, 4, 7, 8, 16, 32, 64, 5, 1, 0, 4097};
    rp.method = (int32_t)(fz_u8(f) % 4); /* 3: invalid */
    rp.block_size = blocks[fz_u8(f) % 12];
    rp.flags = fz_u8(f) & 0x1F;          /* 16: unknown flag */
    rp.max_steps = (int32_t)(fz_u8(f) % 9);
    rp.seed = fz_u8(f);
    const int64_t srows = s->rows < 16 ? s->rows : 16;
    dq_rotation *r = (dq_rotation *)&r;
    const dq_status st = dq_rotation_create(NULL, &rp, s->x, srows, s->cols, s->ldx, &r);
    CHECK_STATUS(st, S_ROT_CREATE);
    if (st != DQ_OK) {
        CHECK(r == NULL);
        return;
    }
    if (rp.method == DQ_ROT_METHOD_GREEDY) {
        int32_t steps = -1, sel = -1;
        int64_t ids[16];
        int32_t sw[16];
        float peaks[16];
        const dq_status tst = dq_rotation_trace(r, 0, &steps, &sel, ids, sw, peaks, 16);
        CHECK_STATUS(tst, ST(DQ_OK) | ST(DQ_ERR_BAD_STATE) | ST(DQ_ERR_BUFFER));
        if (tst == DQ_OK)
            CHECK(steps >= 0 && steps <= rp.max_steps && sel >= 0 && sel <= steps);
    }
    dq_rotation *r2 = rebuild_rotation(r);
    check_rotation_apply(s, r, r2);
    dq_rotation_free(r2);
    s->rot = r;
}

/* Rotations from fuzzer-made matrices, and the hostile sizes of the overflow cases. */
static void fuzz_from_matrices(state *s)
{
    fz *f = &s->f;
    static const int64_t huge[] = {((int64_t)1 << 62) + 2, INT64_MAX, INT64_MAX - 1,
                                   (int64_t)1 << 40, -1, 0};
    const uint8_t b = fz_u8(f);
    int32_t bs = 1 + fz_u8(f) % 9;
    int32_t per_block = fz_u8(f) & 1;
    int64_t cols = b < 32 ? huge[b % 6] : fz_dim(f, 64);
    if (cols > 64 && !per_block) {
        /* A shared matrix over 2^40 channels is valid: its block index (8 bytes a block)
         * would be allocated. With blocks of 2 and 2^61 channels or more its size overflows
         * at once (the D1 case); narrower hostile widths go per block. */
        bs = 2;
        per_block = cols < ((int64_t)1 << 61);
    }
    float m[81 * 3];
    const int64_t n_floats = (int64_t)(fz_u8(f) % 4) * bs * bs;
    fz_fill(f, m, 1, (int64_t)(sizeof m / sizeof m[0]), 0, s->style, 1);
    if (fz_u8(f) & 1) {
        /* Orthogonal blocks: signed permutations with unit rows. */
        for (int64_t k = 0; k < 3; k++)
            for (int32_t i = 0; i < bs; i++)
                for (int32_t j = 0; j < bs; j++)
                    m[k * bs * bs + i * bs + j] =
                        j == (i + k) % bs ? ((fz_next(f) & 1) ? 1.0f : -1.0f) : 0.0f;
    }
    dq_rotation *r = (dq_rotation *)&r;
    const dq_status st = dq_rotation_from_matrices(NULL, cols, bs, per_block, m, n_floats, &r);
    CHECK_STATUS(st, S_FROM_MATRICES);
    if (st != DQ_OK) {
        CHECK(r == NULL);
        return;
    }
    if (cols == s->cols)
        check_rotation_apply(s, r, NULL);
    dq_rotation_free(r);
}

/* ---- plans ---- */

static void fuzz_plan(state *s)
{
    fz *f = &s->f;
    dq_plan_params pp;
    CHECK(dq_plan_params_init(&pp, sizeof pp) == DQ_OK);
    static const int32_t blocks[] = {2, 4, 8, 16, 32, 64, 3, 5, 7, 12, 1, 0};
    static const float alphas[] = {0.6f, 0.0f, 1.0f, 0.5f, 0.25f, -0.5f, 1.5f, NAN};
    pp.flags = fz_u8(f) & 0xFF; /* 128: unknown */
    pp.method = (int32_t)(fz_u8(f) % 3);
    pp.block_size = blocks[fz_u8(f) % 12];
    pp.max_rotation_step = (int32_t)(fz_u8(f) % 7);
    pp.permutation_times = (int32_t)(fz_u8(f) % 4);
    pp.smooth_alpha = alphas[fz_u8(f) % 8];
    pp.seed = fz_u8(f);
    const int64_t srows = 1 + fz_u8(f) % 24;
    const int use_calib = fz_u8(f) & 1;
    float *sample = fz_alloc((size_t)(srows * s->cols) * sizeof(float) + 1);
    fz_fill(f, sample, srows, s->cols, s->cols, s->style, 1);
    float *wabs = fz_alloc((size_t)s->cols * sizeof(float) + 1);
    for (int64_t j = 0; j < s->cols; j++)
        wabs[j] = s->w ? 0.0f : 1.0f;
    for (int64_t o = 0; s->w && o < s->outs; o++)
        for (int64_t j = 0; j < s->cols; j++)
            wabs[j] = fmaxf(wabs[j], fabsf(s->w[o * s->cols + j]));
    if (fz_u8(f) == 7 && s->cols > 0)
        wabs[0] = 0.0f;
    dq_plan *pl = (dq_plan *)&pl;
    dq_status st;
    if (use_calib) {
        dq_calib_params cp;
        CHECK(dq_calib_params_init(&cp, sizeof cp) == DQ_OK);
        cp.sample_mode = (int32_t)(fz_u8(f) % 3);
        cp.sample_tokens = 1 + fz_u8(f) % 16;
        dq_calib *c = (dq_calib *)&c;
        st = dq_calib_create(NULL, &cp, s->cols, &c);
        CHECK_STATUS(st, ST(DQ_OK) | ST(DQ_ERR_INVALID_ARG) | ST(DQ_ERR_SHAPE) |
                             ST(DQ_ERR_OVERFLOW) | ST(DQ_ERR_NOMEM) | ST(DQ_ERR_UNSUPPORTED));
        if (st != DQ_OK) {
            CHECK(c == NULL && s->cols <= 0);
            free(sample);
            free(wabs);
            return;
        }
        const dq_status ost = dq_calib_observe(c, sample, srows, s->cols, s->cols);
        CHECK_STATUS(ost, S_CALIB_OBSERVE);
        int64_t tokens = -1;
        CHECK(dq_calib_tokens(c, &tokens) == DQ_OK);
        CHECK(tokens == (ost == DQ_OK ? srows : 0));
        st = dq_plan_build(NULL, &pp, c, wabs, s->cols, &pl);
        dq_calib_free(c);
    } else {
        st = dq_plan_build_from_sample(NULL, &pp, (fz_u8(f) & 1) ? wabs : NULL, sample, srows,
                                       s->cols, s->cols, wabs, &pl);
    }
    CHECK_STATUS(st, S_PLAN_BUILD);
    free(sample);
    free(wabs);
    if (st != DQ_OK) {
        CHECK(pl == NULL);
        return;
    }
    int64_t width = 0;
    CHECK(dq_plan_width(pl, &width) == DQ_OK && width == s->cols);
    uint64_t fp = 0;
    CHECK(dq_plan_fingerprint(pl, &fp) == DQ_OK && fp != 0);
    int32_t has_s = -1, n_rot = -1;
    CHECK(dq_plan_layout(pl, &has_s, &n_rot) == DQ_OK && n_rot >= 0);
    float *sc = fz_alloc((size_t)s->cols * sizeof(float));
    CHECK(dq_plan_smooth_scales(pl, sc, s->cols) == DQ_OK);
    for (int64_t j = 0; j < s->cols; j++)
        CHECK(isfinite(sc[j]) && sc[j] > 0.0f);
    free(sc);
    if (n_rot > 1) {
        int64_t *perm = fz_alloc((size_t)s->cols * sizeof(int64_t));
        uint8_t *seen = calloc((size_t)s->cols, 1);
        CHECK(seen != NULL);
        CHECK(dq_plan_permutation(pl, 0, perm, s->cols) == DQ_OK);
        for (int64_t j = 0; j < s->cols; j++) {
            CHECK(perm[j] >= 0 && perm[j] < s->cols && !seen[perm[j]]);
            seen[perm[j]] = 1;
        }
        free(seen);
        free(perm);
    }
    s->plan = pl;

    /* Apply out of place: x untouched; y untouched on failure; finite on success. */
    const int64_t n = s->rows * s->cols;
    float *x0 = fz_alloc((size_t)(s->rows * s->ldx) * sizeof(float) + 1);
    memcpy(x0, s->x, (size_t)(s->rows * s->ldx) * sizeof(float));
    float *y = fz_sentinel(n);
    st = dq_plan_apply_act_to(pl, s->x, s->rows, s->cols, s->ldx, y, s->cols, NULL, 0);
    CHECK_STATUS(st, S_PLAN_APPLY);
    CHECK(memcmp(x0, s->x, (size_t)(s->rows * s->ldx) * sizeof(float)) == 0);
    if (st != DQ_OK && st != DQ_ERR_NONFINITE)
        CHECK(fz_untouched(y, n));
    if (st == DQ_OK && s->x_finite)
        CHECK(fz_all_finite(y, s->rows, s->cols, s->cols));
    if (s->rows > 0 && s->x_finite && st != DQ_OK)
        CHECK(st == DQ_ERR_NONFINITE);
    /* In place with a caller workspace of the reported size. */
    size_t wsz = 0;
    const dq_status wst0 = dq_plan_workspace_size(pl, s->rows, &wsz);
    CHECK_STATUS(wst0, ST(DQ_OK) | ST(DQ_ERR_SHAPE) | ST(DQ_ERR_OVERFLOW));
    CHECK(wst0 == DQ_OK || (wst0 == DQ_ERR_SHAPE && s->rows == 0));
    if (wst0 != DQ_OK)
        wsz = 0;
    void *work = wsz ? fz_alloc(wsz) : NULL;
    const dq_status st2 = dq_plan_apply_act(pl, x0, s->rows, s->cols, s->ldx, work, wsz);
    CHECK_STATUS(st2, S_PLAN_APPLY);
    CHECK(st2 == st);
    free(work);
    /* x * W^T is kept: (x G)(W G^-T)^T. */
    if (st == DQ_OK && s->w && s->x_finite && s->w_finite && s->style != FZ_HUGE) {
        float *wt = fz_alloc((size_t)(s->outs * s->cols) * sizeof(float) + 1);
        memcpy(wt, s->w, (size_t)(s->outs * s->cols) * sizeof(float));
        const dq_status wst = dq_plan_transform_weight(pl, wt, s->outs, s->cols, s->cols);
        CHECK_STATUS(wst, S_PLAN_APPLY);
        if (wst == DQ_OK) {
            CHECK(fz_all_finite(wt, s->outs, s->cols, s->cols));
            for (int64_t t = 0; t < s->rows; t++)
                for (int64_t o = 0; o < s->outs; o++) {
                    double want = 0, got = 0, nx = 0, nw = 0, ref = 0;
                    for (int64_t j = 0; j < s->cols; j++) {
                        const double xv = s->x[t * s->ldx + j], wv = s->w[o * s->cols + j];
                        const double yv = y[t * s->cols + j], tv = wt[o * s->cols + j];
                        want += xv * wv;
                        ref += fabs(xv * wv);
                        got += yv * tv;
                        nx += yv * yv;
                        nw += tv * tv;
                    }
                    /* plus subnormal underflow in the transformed operands */
                    const double tol = 1e-3 * sqrt(nx) * sqrt(nw) + 1e-4 * ref +
                                       1e-40 * (sqrt(nx) + sqrt(nw)) * (double)s->cols + 1e-37;
                    if (!(fabs(got - want) <= tol)) {
                        fprintf(stderr, "token %lld out %lld: %.9g vs %.9g (tol %.3g)\n",
                                (long long)t, (long long)o, got, want, tol);
                        CHECK(!"transform keeps x * W^T");
                    }
                }
        }
        free(wt);
    }
    free(y);
    free(x0);
}

/* ---- quantization ---- */

/* The bound of duquant.h for every group of an unclipped matrix. */
static void check_quant_bound(const float *w, int64_t rows, int64_t cols, const dq_qmatrix *q)
{
    int32_t bits = 0, scheme = -1, gs = -1;
    int64_t gpr = 0;
    CHECK(dq_qmatrix_layout(q, NULL, NULL, &bits, &scheme, &gs, &gpr, NULL) == DQ_OK);
    const float *scales = NULL, *zeros = NULL;
    CHECK(dq_qmatrix_view(q, NULL, NULL, &scales, &zeros) == DQ_OK);
    float *d = fz_alloc((size_t)(rows * cols) * sizeof(float) + 1);
    CHECK(dq_qmatrix_dequantize(q, d, cols) == DQ_OK);
    const int64_t glen = gs > 0 ? gs : cols;
    const double L = (double)((1 << bits) - 1), H = (double)((1 << (bits - 1)) - 1);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t g = 0; g < gpr; g++) {
            const int64_t j0 = g * glen, j1 = j0 + glen < cols ? j0 + glen : cols;
            double mn = INFINITY, mx = -INFINITY, amax = 0;
            for (int64_t j = j0; j < j1; j++) {
                const double v = w[i * cols + j];
                mn = fmin(mn, v);
                mx = fmax(mx, v);
                amax = fmax(amax, fabs(v));
            }
            const double sc = scales[i * gpr + g];
            CHECK(isfinite(sc) && sc >= FLT_MIN);
            if (zeros) {
                const double z = zeros[i * gpr + g];
                CHECK(z == floor(z) && fabs(z) <= 1e4);
            }
            if (amax == 0) {
                for (int64_t j = j0; j < j1; j++)
                    CHECK(d[i * cols + j] == 0.0f);
                continue;
            }
            if (mn == mx && scheme == DQ_QUANT_ASYM && fabs(mn) >= FLT_MIN) {
                for (int64_t j = j0; j < j1; j++)
                    if (d[i * cols + j] != w[i * cols + j]) {
                        fprintf(stderr, "row %lld group %lld constant %.9g -> %.9g (scale %.9g, "
                                        "zp %g)\n",
                                (long long)i, (long long)g, mn, (double)d[i * cols + j], sc,
                                (double)zeros[i * gpr + g]);
                        CHECK(!"constant groups are exact");
                    }
                continue;
            }
            const double step = scheme == DQ_QUANT_ASYM ? (mx - mn) / L : amax / H;
            double smax = fmax(step, FLT_MIN);
            if (scheme == DQ_QUANT_ASYM)
                smax = fmax(smax, fabs(mn) / 1e4);
            if (!(sc <= smax * (1 + 1e-5))) {
                fprintf(stderr, "row %lld group %lld (%d-bit scheme %d, min %.9g max %.9g): "
                                "scale %.9g above %.9g\n",
                        (long long)i, (long long)g, bits, scheme, mn, mx, sc, smax);
                CHECK(!"scale bound");
            }
            for (int64_t j = j0; j < j1; j++) {
                const double v = w[i * cols + j], e = fabs(v - (double)d[i * cols + j]);
                const double tol = sc * 0.5 * (1 + 1e-3) + 8.0 * FLT_EPSILON * fabs(v);
                if (!(e <= tol)) {
                    fprintf(stderr, "row %lld col %lld: %.9g -> %.9g (scale %.9g, zp %g)\n",
                            (long long)i, (long long)j, v, (double)d[i * cols + j], sc,
                            zeros ? (double)zeros[i * gpr + g] : 0.0);
                    CHECK(!"quantizer error bound");
                }
            }
        }
    free(d);
}

static int same_qmatrix(const dq_qmatrix *a, const dq_qmatrix *b)
{
    int64_t r1, c1, g1, r2, c2, g2;
    int32_t b1, s1, gs1, b2, s2, gs2;
    size_t rb1, rb2;
    CHECK(dq_qmatrix_layout(a, &r1, &c1, &b1, &s1, &gs1, &g1, &rb1) == DQ_OK);
    CHECK(dq_qmatrix_layout(b, &r2, &c2, &b2, &s2, &gs2, &g2, &rb2) == DQ_OK);
    if (r1 != r2 || c1 != c2 || b1 != b2 || s1 != s2 || gs1 != gs2 || g1 != g2 || rb1 != rb2)
        return 0;
    const uint8_t *p1, *p2;
    size_t n1, n2;
    const float *sc1, *sc2, *z1, *z2;
    CHECK(dq_qmatrix_view(a, &p1, &n1, &sc1, &z1) == DQ_OK);
    CHECK(dq_qmatrix_view(b, &p2, &n2, &sc2, &z2) == DQ_OK);
    const size_t ng = (size_t)(r1 * g1) * sizeof(float);
    return n1 == n2 && memcmp(p1, p2, n1) == 0 && memcmp(sc1, sc2, ng) == 0 &&
           (!z1) == (!z2) && (!z1 || memcmp(z1, z2, ng) == 0);
}

static void fuzz_pack(state *s)
{
    fz *f = &s->f;
    dq_quant_params qp;
    CHECK(dq_quant_params_init(&qp, sizeof qp) == DQ_OK);
    static const int32_t bits[] = {4, 8, 4, 8, 3, 0};
    static const float clips[] = {1.0f, 1.0f, 1.0f, 0.9f, 0.5f, 0.0f, 1.5f, NAN};
    const uint8_t gb = fz_u8(f);
    static const int32_t groups[] = {0, 1, 2, 3, 7, 8, 16, 32, 64, 128, 5, 0, -1, 0, 0, 0};
    qp.bits = bits[fz_u8(f) % 6];
    const uint8_t sb = fz_u8(f) % 5;
    qp.scheme = sb < 2 ? DQ_QUANT_ASYM : sb < 4 ? DQ_QUANT_SYM : 2;
    qp.group_size = gb < 128 ? groups[gb % 16] : gb < 192 ? (int32_t)(s->cols + gb % 3 - 1)
                                                          : (int32_t)(gb % 70);
    qp.clip_ratio = clips[fz_u8(f) % 8];
    const int how = fz_u8(f) % 3; /* plain, clipped, transformed */
    const int64_t gl = qp.group_size > 0 ? qp.group_size : s->cols;
    const int64_t gpr = gl > 0 ? (s->cols + gl - 1) / gl : 0;
    dq_qmatrix *q = (dq_qmatrix *)&q;
    dq_status st;
    if (how == 1) {
        const uint8_t cb = fz_u8(f);
        int64_t n_clip = cb % 4 == 0 ? s->outs * gpr : cb % 4 == 1 ? s->outs : cb % 4 == 2 ? 0
                                                                                  : s->outs + 1;
        const int64_t cap = s->outs * (gpr > 0 ? gpr : 1) + 2;
        float *hi = fz_alloc((size_t)cap * sizeof(float)), *lo = fz_alloc((size_t)cap * sizeof(float));
        for (int64_t k = 0; k < cap; k++) {
            hi[k] = (float)(0.5 + 0.5 * fz_unit(f));
            lo[k] = (float)(0.5 + 0.5 * fz_unit(f));
        }
        if (cb & 0x10)
            hi[0] = cb & 0x20 ? 0.0f : NAN;
        st = dq_qmatrix_pack_clipped(NULL, &qp, s->w, s->outs, s->cols, s->cols,
                                     n_clip ? hi : NULL, (n_clip && (cb & 0x40)) ? lo : NULL,
                                     n_clip, &q);
        CHECK_STATUS(st, S_PACK);
        free(hi);
        free(lo);
    } else if (how == 2 && s->plan) {
        st = dq_qmatrix_pack_transformed(NULL, &qp, s->plan, s->w, s->outs, s->cols, s->cols,
                                         NULL, NULL, &q);
        CHECK_STATUS(st, S_PACK_T);
        if (st == DQ_OK) {
            s->q_plan = 1;
            /* As dq_plan_transform_weight then dq_qmatrix_pack with the fingerprint. */
            float *wt = fz_alloc((size_t)(s->outs * s->cols) * sizeof(float) + 1);
            memcpy(wt, s->w, (size_t)(s->outs * s->cols) * sizeof(float));
            CHECK(dq_plan_transform_weight(s->plan, wt, s->outs, s->cols, s->cols) == DQ_OK);
            dq_quant_params qp2 = qp;
            CHECK(dq_plan_fingerprint(s->plan, &qp2.plan_fingerprint) == DQ_OK);
            dq_qmatrix *q2 = NULL;
            CHECK(dq_qmatrix_pack(NULL, &qp2, wt, s->outs, s->cols, s->cols, NULL, NULL, &q2) ==
                  DQ_OK);
            CHECK(same_qmatrix(q, q2));
            uint64_t f1 = 0, f2 = 1;
            CHECK(dq_qmatrix_plan_fingerprint(q, &f1) == DQ_OK && f1 == qp2.plan_fingerprint);
            CHECK(dq_qmatrix_plan_fingerprint(q2, &f2) == DQ_OK && f2 == f1);
            if (qp.clip_ratio == 1.0f)
                check_quant_bound(wt, s->outs, s->cols, q);
            dq_qmatrix_free(q2);
            free(wt);
        }
    } else {
        st = dq_qmatrix_pack(NULL, &qp, s->w, s->outs, s->cols, s->cols, NULL, NULL, &q);
        CHECK_STATUS(st, S_PACK);
        if (st == DQ_OK && qp.clip_ratio == 1.0f)
            check_quant_bound(s->w, s->outs, s->cols, q);
    }
    if (st != DQ_OK) {
        CHECK(q == NULL);
        if (s->w_finite && s->outs > 0 && s->cols > 0 && qp.clip_ratio == 1.0f &&
            (qp.bits == 4 || qp.bits == 8) && qp.scheme <= 1 && qp.group_size >= 0 && how == 0)
            CHECK(st == DQ_ERR_NONFINITE);
        return;
    }
    CHECK(s->w_finite);
    int64_t r = 0, c = 0;
    CHECK(dq_qmatrix_layout(q, &r, &c, NULL, NULL, NULL, NULL, NULL) == DQ_OK);
    CHECK(r == s->outs && c == s->cols);
    float *d = fz_alloc((size_t)(r * c) * sizeof(float) + 1);
    CHECK(dq_qmatrix_dequantize(q, d, c) == DQ_OK);
    for (int64_t k = 0; k < r * c; k++)
        if (!isfinite(d[k])) {
            int32_t qb = 0, scheme = 0, gsz = 0;
            int64_t gpr2 = 0;
            const float *sc = NULL, *zp = NULL;
            CHECK(dq_qmatrix_layout(q, NULL, NULL, &qb, &scheme, &gsz, &gpr2, NULL) == DQ_OK);
            CHECK(dq_qmatrix_view(q, NULL, NULL, &sc, &zp) == DQ_OK);
            const int64_t gi = k / c * gpr2 + (k % c) / (gsz > 0 ? gsz : c);
            fprintf(stderr, "w[%lld] = %.9g dequantizes to %g (%d-bit scheme %d, scale %.9g, "
                            "zp %g, how %d, clip %g)\n",
                    (long long)k, (double)s->w[k], (double)d[k], qb, scheme, (double)sc[gi],
                    zp ? (double)zp[gi] : 0.0, how, (double)qp.clip_ratio);
            CHECK(!"dequantized values finite");
        }
    free(d);
    s->q = q;
}

/* ---- linear layers ---- */

/* |y - (Q(x') Wdeq^T + bias)| within the activation quantizer's bound (act clip 1). */
static void check_layer_bound(const state *s, const dq_plan *plan, const float *y, int64_t ldy)
{
    const int64_t cols = s->cols, outs = s->outs;
    float *xt = fz_alloc((size_t)(s->rows * cols) * sizeof(float) + 1);
    double terr = 0; /* allowance for the fused transform against BLAS, relative to |x'| */
    if (plan) {
        if (dq_plan_apply_act_to(plan, s->x, s->rows, cols, s->ldx, xt, cols, NULL, 0) !=
            DQ_OK) {
            free(xt);
            return;
        }
        terr = 1e-4;
    } else {
        for (int64_t t = 0; t < s->rows; t++)
            memcpy(xt + t * cols, s->x + t * s->ldx, (size_t)cols * sizeof(float));
    }
    float *wd = fz_alloc((size_t)(outs * cols) * sizeof(float) + 1);
    CHECK(dq_qmatrix_dequantize(s->q, wd, cols) == DQ_OK);
    const int32_t ab = s->lp.act_bits;
    const double L = ab ? (double)((1 << ab) - 1) : 1, H = ab ? (double)((1 << (ab - 1)) - 1) : 1;
    for (int64_t t = 0; t < s->rows; t++) {
        const float *xr = xt + t * cols;
        double mn = INFINITY, mx = -INFINITY, amax = 0, nrm = 0;
        for (int64_t j = 0; j < cols; j++) {
            mn = fmin(mn, xr[j]);
            mx = fmax(mx, xr[j]);
            amax = fmax(amax, fabs(xr[j]));
            nrm += (double)xr[j] * xr[j];
        }
        /* per-element transform allowance, subnormal rounding included */
        const double te = terr * sqrt(nrm) + (plan ? 1e-42 : 0.0);
        double sa = 0;
        if (ab) {
            mn -= te;
            mx += te;
            amax += te;
            if (s->lp.act_scheme == DQ_QUANT_ASYM)
                sa = fmax(fmax((mx - mn) / L, fabs(mn) / 1e4), FLT_MIN);
            else
                sa = fmax(amax / H, FLT_MIN);
            sa = fmax(sa, 1e-5 * (amax == 0)) * (1 + 1e-4);
        }
        for (int64_t o = 0; o < outs; o++) {
            double ref = s->bias ? s->bias[o] : 0.0, mag = s->bias ? fabs(s->bias[o]) : 0.0,
                   tol = 0;
            for (int64_t j = 0; j < cols; j++) {
                const double wv = wd[o * cols + j], xv = xr[j];
                ref += xv * wv;
                mag += (fabs(xv) + sa) * fabs(wv);
                tol += (0.5 * sa + te + 8.0 * FLT_EPSILON * fabs(xv)) * fabs(wv);
            }
            if (mag > FLT_MAX / 8)
                continue; /* the exact result itself may not fit a float */
            CHECK(isfinite(y[t * ldy + o]));
            tol += (double)(cols + 8) * FLT_EPSILON * mag + 1e-37;
            if (!(fabs(y[t * ldy + o] - ref) <= tol)) {
                fprintf(stderr, "token %lld out %lld: y %.9g, want %.9g within %.3g\n",
                        (long long)t, (long long)o, (double)y[t * ldy + o], ref, tol);
                CHECK(!"layer error bound");
            }
        }
    }
    free(wd);
    free(xt);
}

static void fuzz_linear(state *s)
{
    fz *f = &s->f;
    CHECK(dq_linear_params_init(&s->lp, sizeof s->lp) == DQ_OK);
    static const int32_t abits[] = {4, 8, 0, 4, 8, 0, 3, 16};
    static const float clips[] = {1.0f, 1.0f, 1.0f, 0.9f, 0.0f, NAN};
    s->lp.act_bits = abits[fz_u8(f) % 8];
    s->lp.act_scheme = (int32_t)(fz_u8(f) % 5 == 4 ? 2 : fz_u8(f) & 1);
    s->lp.act_clip_ratio = clips[fz_u8(f) % 6];
    const uint8_t pb = fz_u8(f);
    const dq_plan *plan = (pb & 3) == 3 ? NULL : s->q_plan ? s->plan : (pb & 4) ? s->plan : NULL;
    int bias_finite = 1;
    if (pb & 8) {
        s->bias = fz_alloc((size_t)s->outs * sizeof(float) + 1);
        bias_finite = fz_fill(f, s->bias, 1, s->outs, s->outs, s->style, 1);
    }
    const int32_t ab = s->lp.act_bits;
    const int valid = (ab == 0 || ab == 4 || ab == 8) && s->lp.act_scheme >= 0 &&
                      s->lp.act_scheme <= 1 && s->lp.act_clip_ratio > 0.0f &&
                      s->lp.act_clip_ratio <= 1.0f && bias_finite;
    dq_linear *lin = (dq_linear *)&lin;
    dq_status st = dq_linear_create(NULL, &s->lp, plan, s->q, s->bias, &lin);
    CHECK_STATUS(st, S_LIN_CREATE);
    /* Valid parameters fail only for weights bound to a plan the layer does not get. */
    if (valid)
        CHECK(st == ((s->q_plan && !plan) ? DQ_ERR_MISMATCH : DQ_OK));
    if (st != DQ_OK) {
        CHECK(lin == NULL);
        return;
    }
    CHECK(plan == s->plan || !s->q_plan);
    s->lin = lin;
    int64_t inf = 0, outf = 0;
    CHECK(dq_linear_layout(lin, &inf, &outf) == DQ_OK && inf == s->cols && outf == s->outs);
    const dq_plan *used_plan = plan;
    s->lin_plan = plan;

    /* rows = 0 is a no-op. */
    CHECK(dq_linear_forward(lin, NULL, 0, s->cols, s->cols, NULL, s->outs, NULL, 0) == DQ_OK);

    const int64_t ldy = s->outs + (fz_u8(f) % 3), ny = s->rows * ldy;
    float *y = fz_sentinel(ny);
    size_t wsz = 0;
    CHECK(dq_linear_workspace_size(lin, s->rows, &wsz) == DQ_OK);
    const int own_work = fz_u8(f) & 1;
    void *work = own_work && wsz ? fz_alloc(wsz) : NULL;
    st = dq_linear_forward(lin, s->x, s->rows, s->cols, s->ldx, y, ldy, work,
                           own_work ? wsz : 0);
    CHECK_STATUS(st, S_FORWARD);
    if (st != DQ_OK) {
        CHECK(fz_untouched(y, ny));
        if (s->x_finite && s->rows > 0)
            CHECK(st == DQ_ERR_NONFINITE);
    } else if (s->x_finite) {
        if (s->lp.act_clip_ratio == 1.0f)
            check_layer_bound(s, used_plan, y, ldy);
        for (int64_t t = 0; t < s->rows; t++)
            for (int64_t o = s->outs; o < ldy; o++)
                CHECK(fz_untouched(&y[t * ldy + o], 1));
    }

    /* A shared-input group: the same layer twice and a second layer with other weights give
     * the bits of separate calls. */
    if ((fz_u8(f) & 3) != 0 && s->rows > 0) {
        dq_quant_params qp;
        CHECK(dq_quant_params_init(&qp, sizeof qp) == DQ_OK);
        qp.bits = fz_u8(f) & 1 ? 8 : 4;
        qp.group_size = (int32_t)(fz_u8(f) % 9);
        const int64_t outs2 = 1 + fz_u8(f) % 20;
        float *w2 = fz_alloc((size_t)(outs2 * s->cols) * sizeof(float) + 1);
        fz_fill(f, w2, outs2, s->cols, s->cols, FZ_NORMAL, 0);
        dq_qmatrix *q2 = NULL;
        dq_linear *lin2 = NULL;
        dq_status st2;
        if (used_plan && s->q_plan)
            st2 = dq_qmatrix_pack_transformed(NULL, &qp, used_plan, w2, outs2, s->cols, s->cols,
                                              NULL, NULL, &q2);
        else
            st2 = dq_qmatrix_pack(NULL, &qp, w2, outs2, s->cols, s->cols, NULL, NULL, &q2);
        CHECK_STATUS(st2, S_PACK_T);
        dq_linear_params lp2 = s->lp;
        if ((fz_u8(f) & 7) == 0)
            lp2.act_bits = lp2.act_bits == 4 ? 8 : 4; /* cannot share: MISMATCH */
        if (st2 == DQ_OK) {
            st2 = dq_linear_create(NULL, &lp2, used_plan, q2, NULL, &lin2);
            CHECK_STATUS(st2, S_LIN_CREATE);
        }
        if (st2 == DQ_OK) {
            const dq_linear *layers[3] = {lin, lin2, lin};
            float *y1 = fz_sentinel(s->rows * outs2), *y0 = fz_sentinel(ny),
                  *y2 = fz_sentinel(ny);
            float *ys[3] = {y0, y1, y2};
            const int64_t lds[3] = {ldy, outs2, ldy};
            size_t gw = 0;
            const dq_status gst0 = dq_linear_group_workspace_size(layers, 3, s->rows, &gw);
            CHECK_STATUS(gst0, ST(DQ_OK) | ST(DQ_ERR_MISMATCH) | ST(DQ_ERR_OVERFLOW));
            void *gwork = gst0 == DQ_OK && gw ? fz_alloc(gw) : NULL;
            const dq_status gst = dq_linear_forward_group(layers, 3, s->x, s->rows, s->cols,
                                                          s->ldx, ys, lds, 3, gwork, gw);
            CHECK_STATUS(gst, S_GROUP);
            free(gwork);
            float *y1s = fz_sentinel(s->rows * outs2);
            const dq_status st1 =
                dq_linear_forward(lin2, s->x, s->rows, s->cols, s->ldx, y1s, outs2, NULL, 0);
            CHECK_STATUS(st1, S_FORWARD);
            if (gst != DQ_OK) {
                CHECK(fz_untouched(y0, ny) && fz_untouched(y2, ny) &&
                      fz_untouched(y1, s->rows * outs2));
                /* A group fails only where a layer alone fails, or cannot be a group. */
                CHECK(gst0 != DQ_OK || st != DQ_OK || st1 != DQ_OK);
            } else {
                CHECK(gst0 == DQ_OK && st == DQ_OK && st1 == DQ_OK);
                CHECK(memcmp(y0, y, (size_t)ny * sizeof(float)) == 0);
                CHECK(memcmp(y2, y, (size_t)ny * sizeof(float)) == 0);
                CHECK(memcmp(y1s, y1, (size_t)(s->rows * outs2) * sizeof(float)) == 0);
            }
            free(y1s);
            free(y0);
            free(y1);
            free(y2);
        }
        dq_linear_free(lin2);
        dq_qmatrix_free(q2);
        free(w2);
    }
    free(work);
    free(y);
}

/* ---- files ---- */

static void log_line(void *user, int32_t level, const char *msg)
{
    (void)user;
    fprintf(stderr, "duquant [%d]: %s\n", (int)level, msg);
}

/* FUZZ_LOG=1: a context that prints the library's messages (for replaying a failure). */
static dq_context *log_ctx(void)
{
    static dq_context *ctx;
    static int tried;
    if (!tried++ && getenv("FUZZ_LOG")) {
        dq_context_params p;
        CHECK(dq_context_params_init(&p, sizeof p) == DQ_OK);
        p.log = log_line;
        p.log_level = DQ_LOG_DEBUG;
        p.n_threads = 1;
        CHECK(dq_context_create(&p, &ctx) == DQ_OK);
    }
    return ctx;
}

static void fuzz_file(state *s)
{
    fz *f = &s->f;
    dq_file_writer *w = NULL;
    CHECK(dq_file_writer_create(NULL, &w) == DQ_OK);
    int has_plan = 0, has_q = 0, has_l = 0, has_m = 0, has_t = 0;
    if (s->plan) {
        const dq_status st = dq_file_writer_add_plan(w, "p", s->plan);
        CHECK_STATUS(st, S_ADD);
        has_plan = st == DQ_OK;
        CHECK(has_plan);
    }
    if (s->q) {
        const dq_status st = dq_file_writer_add_qmatrix(w, "q", s->q);
        CHECK_STATUS(st, S_ADD);
        has_q = st == DQ_OK;
        CHECK(has_q);
    }
    const int lin_has_plan = s->lin && s->lin_plan; /* layers with a plan name "p" */
    const dq_plan *lin_plan = NULL;
    if (s->lin) {
        const dq_status st = dq_file_writer_add_linear(w, "l", &s->lp,
                                                       lin_has_plan ? "p" : NULL, s->q, s->bias);
        CHECK_STATUS(st, S_ADD_LINEAR);
        CHECK(st == DQ_OK); /* the layer exists, so its parts pass the same checks */
        has_l = 1;
        if (lin_has_plan)
            lin_plan = s->plan;
        const dq_status st2 = dq_file_writer_add_linear_layer(w, "m", s->lin,
                                                              lin_has_plan ? "p" : NULL);
        CHECK_STATUS(st2, S_ADD | ST(DQ_ERR_MISMATCH));
        CHECK(st2 == DQ_OK);
        has_m = 1;
    }
    const int64_t shape[2] = {s->rows, s->cols};
    {
        const dq_status st = dq_file_writer_add_tensor_f32(w, "t", s->x, 2, shape);
        CHECK_STATUS(st, S_ADD);
        CHECK(st == DQ_OK);
        has_t = 1;
    }
    /* A duplicate name changes nothing. */
    CHECK(dq_file_writer_add_tensor_f32(w, "t", s->x, 2, shape) != DQ_OK);
    size_t size = 0;
    CHECK(dq_file_writer_to_buffer(w, NULL, 0, &size) == DQ_OK && size > 8);
    uint8_t *buf = fz_alloc(size);
    size_t size2 = 0;
    if (size > 9)
        CHECK(dq_file_writer_to_buffer(w, buf, size - 1, &size2) == DQ_ERR_BUFFER &&
              size2 == size);
    CHECK(dq_file_writer_to_buffer(w, buf, size, &size2) == DQ_OK && size2 == size);
    dq_file_writer_free(w);

    dq_file_params fp;
    CHECK(dq_file_params_init(&fp, sizeof fp) == DQ_OK);
    fp.flags = fz_u8(f) & 1 ? DQ_FILE_F_BORROW : 0;
    dq_file_reader *r = NULL;
    CHECK(dq_file_reader_from_buffer(NULL, &fp, buf, size, &r) == DQ_OK);

    dq_plan *pl2 = NULL;
    if (has_plan) {
        CHECK(dq_file_reader_get_plan(r, NULL, "p", &pl2) == DQ_OK);
        uint64_t a = 0, b = 0;
        CHECK(dq_plan_fingerprint(s->plan, &a) == DQ_OK && dq_plan_fingerprint(pl2, &b) == DQ_OK);
        CHECK(a == b);
        const int64_t n = s->rows * s->cols;
        float *y1 = fz_sentinel(n), *y2 = fz_sentinel(n);
        const dq_status a1 =
            dq_plan_apply_act_to(s->plan, s->x, s->rows, s->cols, s->ldx, y1, s->cols, NULL, 0);
        const dq_status a2 =
            dq_plan_apply_act_to(pl2, s->x, s->rows, s->cols, s->ldx, y2, s->cols, NULL, 0);
        CHECK(a1 == a2);
        if (a1 == DQ_OK)
            CHECK(memcmp(y1, y2, (size_t)n * sizeof(float)) == 0);
        free(y1);
        free(y2);
    }
    if (has_q) {
        dq_qmatrix *q2 = NULL;
        CHECK(dq_file_reader_get_qmatrix(r, log_ctx(), "q", &q2) == DQ_OK);
        CHECK(same_qmatrix(s->q, q2));
        dq_qmatrix_free(q2);
    }
    const char *const names[2] = {"l", "m"};
    const int have[2] = {has_l, has_m};
    for (int k = 0; k < 2; k++) {
        if (!have[k])
            continue;
        dq_linear *l2 = NULL;
        const dq_status st =
            dq_file_reader_get_linear(r, NULL, names[k], lin_plan ? pl2 : NULL, &l2);
        CHECK(st == DQ_OK);
        const int64_t ny = s->rows * s->outs;
        float *y1 = fz_sentinel(ny), *y2 = fz_sentinel(ny);
        const dq_status f1 =
            dq_linear_forward(s->lin, s->x, s->rows, s->cols, s->ldx, y1, s->outs, NULL, 0);
        const dq_status f2 =
            dq_linear_forward(l2, s->x, s->rows, s->cols, s->ldx, y2, s->outs, NULL, 0);
        CHECK(f1 == f2);
        if (f1 == DQ_OK)
            CHECK(memcmp(y1, y2, (size_t)ny * sizeof(float)) == 0);
        free(y1);
        free(y2);
        dq_linear_free(l2);
    }
    if (has_t && s->rows * s->cols > 0) {
        float *t = fz_sentinel(s->rows * s->cols);
        CHECK(dq_file_reader_get_tensor_f32(r, "t", t, s->rows * s->cols) == DQ_OK);
        CHECK(memcmp(t, s->x, (size_t)(s->rows * s->cols) * sizeof(float)) == 0);
        free(t);
    }
    dq_plan_free(pl2);
    dq_file_reader_free(r);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    state s;
    memset(&s, 0, sizeof s);
    s.f = (fz){data, size, 0, 0};
    for (int k = 0; k < 4; k++)
        s.f.rng = s.f.rng << 8 | fz_u8(&s.f);
    const uint8_t steps = fz_u8(&s.f); /* which stages run */
    s.rows = fz_dim(&s.f, 48);
    s.cols = fz_dim(&s.f, 160);
    s.outs = fz_dim(&s.f, 48);
    s.style = fz_u8(&s.f) % FZ_STYLES;
    s.ldx = s.cols + fz_u8(&s.f) % 3;
    s.x = fz_alloc((size_t)(s.rows * s.ldx) * sizeof(float) + 1);
    for (int64_t i = 0; i < s.rows * s.ldx; i++)
        s.x[i] = -0.0f; /* padding */
    s.x_finite = fz_fill(&s.f, s.x, s.rows, s.cols, s.ldx, s.style, 1);
    if (s.outs > 0 && s.cols > 0) {
        s.w = fz_alloc((size_t)(s.outs * s.cols) * sizeof(float));
        s.w_finite = fz_fill(&s.f, s.w, s.outs, s.cols, s.cols, s.style, 1);
    }
    if (steps & 1)
        fuzz_rotations(&s);
    if (steps & 2)
        fuzz_from_matrices(&s);
    if ((steps & 4) && s.cols > 0)
        fuzz_plan(&s);
    if ((steps & 8) && s.w) {
        fuzz_pack(&s);
        if (s.q)
            fuzz_linear(&s);
    }
    if (steps & 16)
        fuzz_file(&s);
    dq_linear_free(s.lin);
    dq_qmatrix_free(s.q);
    dq_plan_free(s.plan);
    dq_rotation_free(s.rot);
    free(s.bias);
    free(s.w);
    free(s.x);
    return 0;
}
