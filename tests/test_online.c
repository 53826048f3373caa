/* Fused online transform + quantization against the unfused oracle (dq_plan_apply_act_to, then
 * dq__quantize_tokens), on every plan shape the library builds or assembles: 0, 1, 2 and 3
 * rotations, shared and per-block matrices, greedy, Hadamard and random blocks, shorter last
 * blocks, with and without smoothing, permutations with no product after or before them.
 *
 * Tolerances. The fused products differ from BLAS by float rounding only, so:
 *  - transformed floats: per token, max |fused - oracle| <= 1e-5 * max |oracle row|;
 *  - scales within 1e-5 relative; zero points (ASYM) equal, or off by one only where the
 *    oracle's -min / scale lies within rounding distance of a .5 boundary;
 *  - levels (code - zero point) equal, except off by one where the oracle's value / scale lies
 *    within rounding distance of a .5 boundary (distance: 4x the row's measured float error
 *    in code units, plus 1e-6), and at most 1e-3 of all codes of a case;
 *  - every kernel variant, thread count and tile split gives the same bits.
 * End to end, the layer's output through both routes agrees within 1e-3 (Frobenius, relative):
 * a level that moves by one at a boundary moves a few outputs by one activation step. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_gemm.h"
#include "dq_gemm_simd.h"
#include "dq_half.h"
#include "dq_online.h"
#include "dq_rotation.h"
#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "test_wprep.h"
#include "dq_check_run.h"

static const int32_t isas[] = {DQ_GEMM_ISA_PORTABLE, DQ_GEMM_ISA_AVX2, DQ_GEMM_ISA_AVX512};

/* A plan built from an outlier-heavy sample. */
static dq_plan *build_plan(test_rng *r, int64_t cols, uint32_t flags, int32_t method,
                           int32_t bs, int32_t times)
{
    const int64_t rows = 48;
    float *sample = malloc((size_t)(rows * cols) * sizeof(float));
    float *w_absmax = malloc((size_t)cols * sizeof(float));
    test_fill_activations(r, sample, rows, cols, cols, 1);
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = (float)(0.05 + test_rng_uniform(r));
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = flags;
    pp.method = method;
    pp.block_size = bs;
    pp.max_rotation_step = 6;
    pp.permutation_times = times;
    pp.seed = 5;
    dq_plan *plan = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &pp, NULL, sample, rows, cols, cols,
                                               w_absmax, &plan),
                     DQ_OK);
    free(sample);
    free(w_absmax);
    return plan;
}

static int64_t *random_perm(test_rng *r, int64_t n)
{
    int64_t *p = malloc((size_t)n * sizeof *p);
    for (int64_t j = 0; j < n; j++)
        p[j] = j;
    for (int64_t j = n - 1; j > 0; j--) {
        int64_t k = (int64_t)(test_rng_u64(r) % (uint64_t)(j + 1));
        int64_t t = p[j];
        p[j] = p[k];
        p[k] = t;
    }
    return p;
}

/* Assembled shapes the builder never makes: identity slots around permutations. pattern 0:
 * perm, R (the first product reads through an index, smoothing folded along it); 1: R, perm
 * (the quantizer reads through it); 2: perm, perm (no product: smoothing divides the tile);
 * 3: R shared, perm, identity, perm, R per block. */
static dq_plan *assemble_plan(test_rng *r, int64_t cols, int pattern, int smooth)
{
    dq_rotation_params rp;
    dq_rotation_params_init(&rp, sizeof rp);
    rp.method = DQ_ROT_METHOD_RANDOM;
    rp.block_size = 8;
    rp.seed = 3;
    dq_rotation *shared = NULL, *per = NULL;
    ck_assert_int_eq(dq_rotation_create(NULL, &rp, NULL, 0, cols, 0, &shared), DQ_OK);
    rp.flags = DQ_ROT_F_PER_BLOCK;
    rp.block_size = 16;
    ck_assert_int_eq(dq_rotation_create(NULL, &rp, NULL, 0, cols, 0, &per), DQ_OK);
    int64_t *p0 = random_perm(r, cols), *p1 = random_perm(r, cols);
    float *s = malloc((size_t)cols * sizeof *s);
    for (int64_t j = 0; j < cols; j++)
        s[j] = (float)(0.2 + 3.0 * test_rng_uniform(r));
    const dq_rotation *rots[4] = {NULL, NULL, NULL, NULL};
    const int64_t *perms[3] = {NULL, NULL, NULL};
    int32_t n = 2;
    switch (pattern) {
    case 0:
        rots[1] = per;
        perms[0] = p0;
        break;
    case 1:
        rots[0] = per;
        perms[0] = p0;
        break;
    case 2:
        n = 3;
        perms[0] = p0;
        perms[1] = p1;
        break;
    default:
        n = 3;
        rots[0] = shared;
        perms[0] = p0;
        perms[1] = p1;
        rots[2] = per;
        break;
    }
    dq_plan *plan = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, smooth ? s : NULL, n, rots, perms, &plan),
                     DQ_OK);
    dq_rotation_free(shared);
    dq_rotation_free(per);
    free(p0);
    free(p1);
    free(s);
    return plan;
}

typedef struct result {
    uint8_t *codes;
    float *scales;
    int32_t *zeros;
} result;

static result result_new(int64_t rows, int64_t code_ld)
{
    result q = {calloc((size_t)(rows * code_ld), 1), calloc((size_t)rows, sizeof(float)),
                calloc((size_t)rows, sizeof(int32_t))};
    return q;
}

static void result_free(result *q)
{
    free(q->codes);
    free(q->scales);
    free(q->zeros);
}

static void *workspace(const dq__online *on, int64_t rows, int32_t threads)
{
    size_t bytes = 0;
    ck_assert(dq__online_workspace(on, rows, test_threads(threads), &bytes));
    return aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
}

static int64_t codes_checked, codes_moved;

/* The fused run of every variant and thread count equals the first; that one is compared with
 * the oracle under the tolerances above. */
static void check_case(const dq_plan *plan, const dq__online *on, const float *x, int64_t rows,
                       int64_t cols, int64_t ldx, int32_t bits, int32_t scheme, float clip,
                       const char *what)
{
    const int64_t code_ld = cols + 5;
    /* oracle */
    float *xt = malloc((size_t)(rows * cols) * sizeof(float));
    ck_assert_int_eq(dq_plan_apply_act_to(plan, x, rows, cols, ldx, xt, cols, NULL, 0), DQ_OK);
    result ref = result_new(rows, code_ld);
    dq__quantize_tokens(xt, rows, cols, cols, bits, scheme, clip, ref.codes, code_ld, ref.scales,
                        ref.zeros, NULL);
    /* fused, every variant */
    result first = {NULL, NULL, NULL};
    float *yt0 = NULL;
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        for (int32_t threads = 1; threads <= 3; threads += 2) {
            if (!dq__gemm_isa_supported(isas[i]))
                continue;
            void *work = workspace(on, rows, threads);
            result q = result_new(rows, code_ld);
            memset(q.codes, 0xEE, (size_t)(rows * code_ld));
            dq__online_run_isa(isas[i], on, x, rows, ldx, bits, scheme, clip, q.codes, code_ld,
                               q.scales, q.zeros, NULL, 0, work, test_threads(threads));
            const int64_t ldy = cols + 1;
            float *yt = malloc((size_t)(rows * ldy) * sizeof(float));
            dq__online_run_isa(isas[i], on, x, rows, ldx, bits, scheme, clip, NULL, 0, NULL,
                               NULL, yt, ldy, work, test_threads(threads));
            free(work);
            if (!first.codes) {
                first = q;
                yt0 = yt;
                continue;
            }
            ck_assert_msg(memcmp(q.codes, first.codes, (size_t)(rows * code_ld)) == 0 &&
                              memcmp(q.scales, first.scales, (size_t)rows * sizeof(float)) == 0 &&
                              memcmp(q.zeros, first.zeros, (size_t)rows * sizeof(int32_t)) == 0,
                          "%s: isa %d threads %d differs from the first variant", what, isas[i],
                          threads);
            for (int64_t t = 0; t < rows; t++)
                ck_assert_msg(memcmp(yt + t * ldy, yt0 + t * ldy,
                                     (size_t)cols * sizeof(float)) == 0,
                              "%s: transform of isa %d threads %d differs", what, isas[i],
                              threads);
            result_free(&q);
            free(yt);
        }

    const int32_t top = (1 << bits) - 1; /* largest stored code, ASYM and shifted SYM alike */
    int64_t moved = 0;
    for (int64_t t = 0; t < rows; t++) {
        const float *o = xt + t * cols, *f = yt0 + t * (cols + 1);
        double amax = 0, err = 0;
        for (int64_t j = 0; j < cols; j++) {
            amax = fmax(amax, fabs((double)o[j]));
            err = fmax(err, fabs((double)f[j] - (double)o[j]));
        }
        ck_assert_msg(err <= 1e-5 * amax + 1e-30, "%s: token %lld transform error %.3g of %.3g",
                      what, (long long)t, err, amax);
        const double s_ref = ref.scales[t], s_f = first.scales[t];
        ck_assert_msg(fabs(s_f - s_ref) <= 1e-5 * s_ref, "%s: token %lld scale %.9g vs %.9g",
                      what, (long long)t, s_f, s_ref);
        const double dist = 4.0 * err / s_ref + 1e-6; /* rounding distance in code units */
        if (first.zeros[t] != ref.zeros[t]) {
            double mn = o[0];
            for (int64_t j = 1; j < cols; j++)
                mn = fmin(mn, (double)o[j]);
            const double z = -mn * clip / s_ref;
            ck_assert_msg(abs(first.zeros[t] - ref.zeros[t]) == 1 &&
                              fabs(z - floor(z) - 0.5) <= dist + 1e-5 * fabs(z),
                          "%s: token %lld zero %d vs %d", what, (long long)t, first.zeros[t],
                          ref.zeros[t]);
        }
        for (int64_t j = 0; j < cols; j++) {
            const int32_t cr = ref.codes[t * code_ld + j], cf = first.codes[t * code_ld + j];
            const int32_t lr = cr - ref.zeros[t], lf = cf - first.zeros[t];
            if (lr == lf)
                continue;
            const double v = (double)o[j] / s_ref;
            const bool at_boundary = fabs(v - floor(v) - 0.5) <= dist;
            const bool clamped = cr == 0 || cr == top || cf == 0 || cf == top;
            ck_assert_msg(abs(lr - lf) == 1 && (at_boundary || clamped),
                          "%s: token %lld channel %lld level %d vs %d (value/scale %.9g)", what,
                          (long long)t, (long long)j, lf, lr, v);
            moved++;
        }
        for (int64_t j = cols; j < code_ld; j++)
            ck_assert_uint_eq(first.codes[t * code_ld + j], 0);
    }
    ck_assert_msg((double)moved <= 1e-3 * (double)(rows * cols) + 1.0,
                  "%s: %lld of %lld levels moved", what, (long long)moved,
                  (long long)(rows * cols));
    codes_checked += rows * cols;
    codes_moved += moved;
    result_free(&first);
    result_free(&ref);
    free(yt0);
    free(xt);
}

/* The oracle of a plan compiled with half-precision matrices: the same plan with every matrix
 * of the stages that read half copies rounded to half precision (stages run as fast
 * transforms read no matrix and keep theirs). Its float path then multiplies by exactly the
 * values the half path widens. */
static dq_plan *rounded_plan(const dq_plan *plan, const dq__online *on)
{
    int64_t cols;
    int32_t smooth, n_rot;
    ck_assert_int_eq(dq_plan_width(plan, &cols), DQ_OK);
    ck_assert_int_eq(dq_plan_layout(plan, &smooth, &n_rot), DQ_OK);
    float *scales = NULL;
    if (smooth) {
        scales = malloc((size_t)cols * sizeof(float));
        ck_assert_int_eq(dq_plan_smooth_scales(plan, scales, cols), DQ_OK);
    }
    dq_rotation **rots = calloc((size_t)n_rot + 1, sizeof *rots);
    int64_t **perms = calloc((size_t)n_rot + 1, sizeof *perms);
    for (int32_t i = 0, stage = 0; i < n_rot; i++) {
        const dq_rotation *r;
        ck_assert_int_eq(dq_plan_rotation(plan, i, &r), DQ_OK);
        if (r) {
            ck_assert_int_eq(dq__rotation_clone(NULL, r, &rots[i]), DQ_OK);
            if (dq__online_stage_half(on, stage++)) {
                const size_t n = dq__rotation_floats(r);
                for (size_t e = 0; e < n; e++)
                    rots[i]->data[e] = dq__f16_to_f32(dq__f32_to_f16(r->data[e]));
            }
        }
        if (i + 1 < n_rot) {
            perms[i] = malloc((size_t)cols * sizeof(int64_t));
            ck_assert_int_eq(dq_plan_permutation(plan, i, perms[i], cols), DQ_OK);
        }
    }
    dq_plan *out = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, scales, n_rot,
                                      (const dq_rotation *const *)rots,
                                      (const int64_t *const *)perms, &out),
                     DQ_OK);
    for (int32_t i = 0; i < n_rot; i++) {
        dq_rotation_free(rots[i]);
        free(perms[i]);
    }
    free(rots);
    free(perms);
    free(scales);
    return out;
}

static dq_context *half_context(void)
{
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.flags = DQ_CONTEXT_F_HALF_MATRICES;
    cp.n_threads = 1;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&cp, &ctx), DQ_OK);
    return ctx;
}

/* Every token count that matters (1, a few, one tile with a remainder, several tiles), both
 * schemes, 4 and 8 bits, unaligned leading dimensions. split_all: a lone token's stages are
 * split over the threads whatever their size (check_case's threads 3 against 1). n_had: the
 * stages expected to run as fast Walsh-Hadamard transforms; fast false forces them dense.
 * n_half >= 0: compiled with half-precision matrices, expecting that many stages to read them,
 * against rounded_plan's oracle. */
static void check_plan_split(const dq_plan *plan, int64_t cols, uint64_t seed, const char *what,
                             bool split_all, int32_t n_had, bool fast, int32_t n_half)
{
    dq__online *on = NULL;
    dq_context *hctx = n_half >= 0 ? half_context() : NULL;
    ck_assert_int_eq(dq__online_create(hctx, plan, &on), DQ_OK);
    dq_plan *oracle = NULL;
    if (hctx) {
        int32_t half = 0;
        for (int32_t st = 0; st < 70; st++)
            half += dq__online_stage_half(on, st);
        ck_assert_msg(half == n_half, "%s cols %lld: %d stages read half copies, expected %d",
                      what, (long long)cols, half, n_half);
        oracle = rounded_plan(plan, on);
        plan = oracle;
    }
    ck_assert_msg(dq__online_hadamard_stages(on) == n_had, "%s cols %lld: %d Hadamard stages, "
                  "expected %d", what, (long long)cols, dq__online_hadamard_stages(on), n_had);
    if (!fast) {
        dq__online_set_fast_hadamard(on, false);
        ck_assert_int_eq(dq__online_hadamard_stages(on), 0);
    }
    if (split_all)
        dq__online_set_split_bytes(on, 0);
    const int64_t tile = dq__online_tile_rows(on);
    const int64_t counts[] = {1, 5, tile + 3, 2 * tile + 1};
    test_rng r = {seed};
    /* Under valgrind the two-tile count is left out (minutes there; the other builds run it). */
    const size_t n_counts = split_all ? 1 : test_under_valgrind() ? 3 : 4;
    for (size_t ci = 0; ci < n_counts; ci++) {
        const int64_t rows = counts[ci], ldx = cols + 3 + (int64_t)ci;
        float *x = malloc((size_t)(rows * ldx) * sizeof(float));
        test_fill_activations(&r, x, rows, ldx, ldx, 1);
        for (int32_t bits = 4; bits <= 8; bits += 4)
            for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++) {
                /* Tile-sized counts (most of the time) check one quantizer each: the
                 * transform does not depend on it, and 1 and 5 rows try all four. */
                const bool a4 = bits == 4 && scheme == DQ_QUANT_ASYM;
                const bool s8 = bits == 8 && scheme == DQ_QUANT_SYM;
                if ((ci == 2 && !a4) || (ci == 3 && !s8))
                    continue;
                char name[160];
                const float clip = (ci + (size_t)bits) % 3 == 0 ? 0.9f : 1.0f;
                snprintf(name, sizeof name, "%s%s%s cols %lld rows %lld a%d/%d", what,
                         fast ? "" : " (dense)", hctx ? " (half)" : "", (long long)cols,
                         (long long)rows, bits, scheme);
                /* x + 1: rows that start off any alignment */
                check_case(plan, on, x + 1, rows, cols, ldx, bits, scheme, clip, name);
            }
        free(x);
    }
    dq__online_free(on);
    dq_plan_free(oracle);
    dq_context_free(hctx);
}

static void check_plan_had(const dq_plan *plan, int64_t cols, uint64_t seed, const char *what,
                           int32_t n_had)
{
    check_plan_split(plan, cols, seed, what, false, n_had, true, -1);
    check_plan_split(plan, cols, seed, what, true, n_had, true, -1);
    if (n_had > 0)
        check_plan_split(plan, cols, seed, what, false, n_had, false, -1);
}

/* The same with half-precision matrices (n_half stages reading them). */
static void check_plan_half(const dq_plan *plan, int64_t cols, uint64_t seed, const char *what,
                            int32_t n_had, int32_t n_half)
{
    check_plan_split(plan, cols, seed, what, false, n_had, true, n_half);
    check_plan_split(plan, cols, seed, what, true, n_had, true, n_half);
}

/* A plan with no stage run as a fast transform. */
static void check_plan(const dq_plan *plan, int64_t cols, uint64_t seed, const char *what)
{
    check_plan_had(plan, cols, seed, what, 0);
}

typedef struct shape {
    uint32_t flags;
    int32_t method, bs, times;
    const char *name;
} shape;

START_TEST(built_plans_match_unfused)
{
    const uint32_t S = DQ_PLAN_F_SMOOTH, R = DQ_PLAN_F_ROTATE, P = DQ_PLAN_F_PERMUTE,
                   B = DQ_PLAN_F_PER_BLOCK_R;
    const shape shapes[] = {
        {S | R | P, DQ_ROT_METHOD_GREEDY, 16, 1, "default (shared R, 2 rotations)"},
        {S | R | P | B, DQ_ROT_METHOD_GREEDY, 16, 1, "per-block R, 2 rotations"},
        {R | P, DQ_ROT_METHOD_GREEDY, 16, 1, "no smoothing, 2 rotations"},
        {R | P | B, DQ_ROT_METHOD_RANDOM, 32, 1, "no smoothing, per-block random"},
        {S | R, DQ_ROT_METHOD_GREEDY, 16, 1, "1 rotation shared"},
        {S | R | B, DQ_ROT_METHOD_RANDOM, 16, 1, "1 rotation per block"},
        {R, DQ_ROT_METHOD_HADAMARD, 32, 1, "1 Hadamard rotation"},
        {S | R | P, DQ_ROT_METHOD_HADAMARD, 16, 2, "3 Hadamard rotations"},
        {S | R | P | B, DQ_ROT_METHOD_GREEDY, 8, 2, "3 per-block rotations"},
        {S | P, DQ_ROT_METHOD_GREEDY, 16, 1, "smoothing and permutation only"},
        {P, DQ_ROT_METHOD_GREEDY, 16, 1, "permutation only"},
        {S, DQ_ROT_METHOD_GREEDY, 16, 1, "smoothing only"},
    };
    /* whole blocks, a shorter last block (power of two for Hadamard), odd widths */
    const int64_t widths[] = {64, 200, 97, 1};
    uint64_t seed = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
            const shape *sh = &shapes[si];
            int64_t cols = widths[wi];
            if (sh->method == DQ_ROT_METHOD_HADAMARD && (sh->flags & DQ_PLAN_F_ROTATE) &&
                cols % sh->bs != 0 && ((cols % sh->bs) & (cols % sh->bs - 1)) != 0)
                continue;
            if (cols == 1 && (sh->flags & DQ_PLAN_F_ROTATE) && sh->method == DQ_ROT_METHOD_HADAMARD)
                continue;
            test_rng r = {seed};
            dq_plan *plan = build_plan(&r, cols, sh->flags, sh->method, sh->bs, sh->times);
            check_plan(plan, cols, seed++, sh->name);
            dq_plan_free(plan);
        }
}
END_TEST

START_TEST(assembled_plans_match_unfused)
{
    const int64_t widths[] = {48, 37};
    uint64_t seed = 50;
    for (int pattern = 0; pattern < 4; pattern++)
        for (int smooth = 0; smooth < 2; smooth++)
            for (size_t wi = 0; wi < 2; wi++) {
                test_rng r = {seed};
                dq_plan *plan = assemble_plan(&r, widths[wi], pattern, smooth);
                char name[64];
                snprintf(name, sizeof name, "assembled %d smooth %d", pattern, smooth);
                check_plan(plan, widths[wi], seed++, name);
                dq_plan_free(plan);
            }
}
END_TEST

/* Hadamard rotations run as fast transforms exactly where every block is whole, of a power of
 * two >= 128 and Sylvester-based: full-width randomised ones (as duquant-quantize's full-width
 * candidate builds them: smoothing and one rotation) and block-diagonal ones, shared or per
 * block, behind permutations; not for widths that are no power of two, blocks below 128 or a
 * shorter last block. */
START_TEST(hadamard_plans_match_unfused)
{
    const uint32_t S = DQ_PLAN_F_SMOOTH, R = DQ_PLAN_F_ROTATE, P = DQ_PLAN_F_PERMUTE,
                   B = DQ_PLAN_F_PER_BLOCK_R;
    const int32_t RH = DQ_ROT_METHOD_RANDOM_HADAMARD, H = DQ_ROT_METHOD_HADAMARD;
    const struct {
        uint32_t flags;
        int32_t method, bs, times;
        int64_t cols;
        int32_t n_had;
        const char *name;
    } cases[] = {
        {R, RH, 128, 1, 128, 1, "full-width random Hadamard"},
        {S | R, RH, 128, 1, 128, 1, "smoothing, full-width random Hadamard"},
        {R, RH, 256, 1, 256, 1, "full-width random Hadamard"},
        {S | R, RH, 256, 1, 256, 1, "smoothing, full-width random Hadamard"},
        {S | R, RH, 200, 1, 200, 0, "full-width random Hadamard, Paley"},
        {S | R, RH, 97, 1, 97, 0, "full-width random Hadamard, no construction"},
        {S | R, RH, 64, 1, 64, 0, "full-width random Hadamard below 128"},
        {S | R, RH, 128, 1, 512, 1, "random Hadamard blocks"},
        {S | R | B, RH, 128, 1, 512, 1, "per-block random Hadamard"},
        {R, H, 128, 1, 512, 1, "Hadamard blocks"},
        {S | R, H, 128, 1, 512, 1, "smoothing, Hadamard blocks"},
        {S | R | P, H, 128, 1, 512, 2, "2 Hadamard rotations"},
        {S | R | P, H, 128, 2, 256, 3, "3 Hadamard rotations"},
        {S | R | P | B, H, 128, 1, 256, 2, "2 per-block Hadamard rotations"},
        {S | R, H, 128, 1, 448, 0, "Hadamard blocks, shorter last block"},
        {S | R | P, H, 64, 1, 256, 0, "Hadamard blocks below 128"},
    };
    uint64_t seed = 300;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_rng r = {seed};
        dq_plan *plan = build_plan(&r, cases[i].cols, cases[i].flags, cases[i].method,
                                   cases[i].bs, cases[i].times);
        check_plan_had(plan, cases[i].cols, seed++, cases[i].name, cases[i].n_had);
        dq_plan_free(plan);
    }
}
END_TEST

/* With DQ_CONTEXT_F_HALF_MATRICES every dense stage reads half copies (folded smoothing is
 * divided instead) and the result is the float path of the plan rounded to half precision,
 * within the float tolerances above, the same bits for every kernel and thread split; stages
 * run as fast transforms keep their float scales. */
START_TEST(half_matrices_match_rounded_plan)
{
    const uint32_t S = DQ_PLAN_F_SMOOTH, R = DQ_PLAN_F_ROTATE, P = DQ_PLAN_F_PERMUTE,
                   B = DQ_PLAN_F_PER_BLOCK_R;
    const struct {
        uint32_t flags;
        int32_t method, bs, times;
        int64_t cols;
        int32_t n_had, n_half;
        const char *name;
    } cases[] = {
        {S | R | P, DQ_ROT_METHOD_GREEDY, 16, 1, 64, 0, 2, "default (shared R, 2 rotations)"},
        {S | R | P | B, DQ_ROT_METHOD_GREEDY, 16, 1, 200, 0, 2, "per-block R, 2 rotations"},
        {R | P | B, DQ_ROT_METHOD_RANDOM, 32, 1, 97, 0, 2, "no smoothing, per-block random"},
        {S | R | B, DQ_ROT_METHOD_RANDOM, 16, 1, 200, 0, 1, "1 rotation per block"},
        {S | R | P | B, DQ_ROT_METHOD_GREEDY, 128, 1, 384, 0, 2, "blocks of 128"},
        {S | R | P | B, DQ_ROT_METHOD_GREEDY, 8, 2, 64, 0, 3, "3 per-block rotations"},
        {S | P, DQ_ROT_METHOD_GREEDY, 16, 1, 64, 0, 0, "smoothing and permutation only"},
        {S | R, DQ_ROT_METHOD_RANDOM_HADAMARD, 256, 1, 256, 1, 0, "full-width random Hadamard"},
        {S | R, DQ_ROT_METHOD_RANDOM_HADAMARD, 64, 1, 64, 0, 1, "random Hadamard below 128"},
    };
    uint64_t seed = 700;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_rng r = {seed};
        dq_plan *plan = build_plan(&r, cases[i].cols, cases[i].flags, cases[i].method,
                                   cases[i].bs, cases[i].times);
        check_plan_half(plan, cases[i].cols, seed++, cases[i].name, cases[i].n_had,
                        cases[i].n_half);
        dq_plan_free(plan);
    }
    for (int pattern = 0; pattern < 4; pattern++) {
        test_rng r = {seed};
        dq_plan *plan = assemble_plan(&r, 48, pattern, 1);
        char name[64];
        snprintf(name, sizeof name, "assembled %d", pattern);
        check_plan_half(plan, 48, seed++, name, 0, pattern == 2 ? 0 : pattern == 3 ? 2 : 1);
        dq_plan_free(plan);
    }
}
END_TEST

/* diag(a) H is recognised bit for bit: one flipped sign, one entry off by an ulp or one row
 * head changed anywhere is not Hadamard. */
START_TEST(hadamard_detection_is_exact)
{
    const int32_t n = 128;
    float *m = malloc((size_t)n * (size_t)n * sizeof(float));
    uint32_t *sign = malloc((size_t)n * sizeof(uint32_t));
    test_rng r = {17};
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0)
            ck_assert_int_eq(dq_rotation_hadamard(n, m, n), DQ_OK);
        else
            ck_assert_int_eq(dq_rotation_random_hadamard(n, 9, m, n, NULL), DQ_OK);
        ck_assert(dq__online_is_hadamard(m, n, sign));
        for (int t = 0; t < 20; t++) {
            const size_t i = (size_t)(test_rng_u64(&r) % (uint64_t)n);
            const size_t j = t < 4 ? 0 : (size_t)(test_rng_u64(&r) % (uint64_t)n);
            const float keep = m[i * (size_t)n + j];
            m[i * (size_t)n + j] = t % 2 ? -keep : nextafterf(keep, 2.0f * keep);
            ck_assert_msg(!dq__online_is_hadamard(m, n, sign), "entry (%zu, %zu) changed", i,
                          j);
            m[i * (size_t)n + j] = keep;
        }
        ck_assert(dq__online_is_hadamard(m, n, sign));
    }
    /* a +-1 Hadamard matrix of another construction: rows 1 and 2 of H_4 (x) H_32 swapped */
    ck_assert_int_eq(dq_rotation_hadamard(n, m, n), DQ_OK);
    for (size_t j = 0; j < (size_t)n; j++) {
        const float t = m[(size_t)n + j];
        m[(size_t)n + j] = m[2 * (size_t)n + j];
        m[2 * (size_t)n + j] = t;
    }
    ck_assert(!dq__online_is_hadamard(m, n, sign));
    free(sign);
    free(m);
}
END_TEST

/* Through a plan: blocks of 128 on width 512, one matrix per block; one flipped sign or one
 * entry off in one block's matrix keeps the whole stage dense, and the plans match the oracle
 * either way. change 3: unchanged behind a permutation, so the smoothing folds in through the
 * first product's index. */
START_TEST(hadamard_detection_in_plans)
{
    const int64_t cols = 512;
    const int32_t bs = 128;
    const int64_t n_mats = cols / bs, per = (int64_t)bs * bs;
    float *data = malloc((size_t)(n_mats * per) * sizeof(float));
    float *s = malloc((size_t)cols * sizeof(float));
    test_rng r = {41};
    for (int64_t j = 0; j < cols; j++)
        s[j] = (float)(0.2 + 3.0 * test_rng_uniform(&r));
    int64_t *perm = random_perm(&r, cols);
    for (int change = 0; change < 4; change++) {
        for (int64_t k = 0; k < n_mats; k++)
            ck_assert_int_eq(dq_rotation_random_hadamard(bs, 3 + (uint64_t)k, data + k * per, bs,
                                                         NULL),
                             DQ_OK);
        if (change == 1)
            data[2 * per + 5 * bs + 9] = -data[2 * per + 5 * bs + 9];
        if (change == 2)
            data[3 * per + 7 * bs + 60] *= 1.0f + 0x1p-20f;
        dq_rotation *rot = NULL;
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, cols, bs, 1, data, n_mats * per, &rot),
                         DQ_OK);
        const dq_rotation *rots[2] = {change == 3 ? NULL : rot, rot};
        const int64_t *perms[1] = {perm};
        dq_plan *plan = NULL;
        ck_assert_int_eq(dq_plan_assemble(NULL, cols, s, change == 3 ? 2 : 1, rots, perms, &plan),
                         DQ_OK);
        char name[64];
        snprintf(name, sizeof name, "assembled random Hadamard, change %d", change);
        check_plan_had(plan, cols, 60 + (uint64_t)change, name, change == 1 || change == 2 ? 0 : 1);
        dq_plan_free(plan);
        dq_rotation_free(rot);
    }
    free(perm);
    free(s);
    free(data);
}
END_TEST

/* The transform's bits are those of the plain level-by-level order (levels h = 1, 2, 4, ...,
 * (a, b) -> (a + b, a - b)) on x_i * a_i, whatever grouping of levels the code uses: one block
 * of 256, and blocks of 128 behind a permutation. */
START_TEST(hadamard_transform_bits)
{
    const int64_t cols = 256, rows = 3;
    test_rng r = {71};
    float *m = malloc((size_t)(cols * cols) * sizeof(float));
    float *x = malloc((size_t)(rows * cols) * sizeof(float));
    float *y = malloc((size_t)(rows * cols) * sizeof(float));
    float *v = malloc((size_t)cols * sizeof(float));
    int64_t *perm = random_perm(&r, cols);
    test_fill_activations(&r, x, rows, cols, cols, 1);
    for (int blocked = 0; blocked < 2; blocked++) {
        const int32_t bs = blocked ? 128 : 256;
        const int64_t n_mats = cols / bs;
        for (int64_t k = 0; k < n_mats; k++)
            ck_assert_int_eq(dq_rotation_random_hadamard(bs, 11 + (uint64_t)k, m + k * bs * bs,
                                                         bs, NULL),
                             DQ_OK);
        dq_rotation *rot = NULL;
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, cols, bs, 1, m, n_mats * bs * bs, &rot),
                         DQ_OK);
        const dq_rotation *rots[2] = {NULL, rot};
        const int64_t *perms[1] = {perm};
        dq_plan *plan = NULL;
        ck_assert_int_eq(dq_plan_assemble(NULL, cols, NULL, blocked ? 2 : 1,
                                          blocked ? rots : rots + 1, perms, &plan),
                         DQ_OK);
        dq__online *on = NULL;
        ck_assert_int_eq(dq__online_create(NULL, plan, &on), DQ_OK);
        ck_assert_int_eq(dq__online_hadamard_stages(on), 1);
        void *work = workspace(on, rows, 1);
        dq__online_transform(on, x, rows, cols, y, cols, work, NULL);
        for (int64_t t = 0; t < rows; t++)
            for (int64_t b = 0; b < n_mats; b++) {
                const float *mb = m + b * bs * bs;
                for (int64_t i = 0; i < bs; i++) {
                    const int64_t c = b * bs + i;
                    v[i] = x[t * cols + (blocked ? perm[c] : c)] * mb[i * bs];
                }
                for (int64_t h = 1; h < bs; h *= 2)
                    for (int64_t i = 0; i < bs; i += 2 * h)
                        for (int64_t j = i; j < i + h; j++) {
                            const float a = v[j], c = v[j + h];
                            v[j] = a + c;
                            v[j + h] = a - c;
                        }
                ck_assert_msg(memcmp(v, y + t * cols + b * bs, (size_t)bs * sizeof(float)) == 0,
                              "block %d of %d, token %lld, block %lld", (int)bs, (int)cols,
                              (long long)t, (long long)b);
            }
        free(work);
        dq__online_free(on);
        dq_plan_free(plan);
        dq_rotation_free(rot);
    }
    free(perm);
    free(v);
    free(y);
    free(x);
    free(m);
}
END_TEST

/* The shape of the benchmarks and of real layers: width 4096, blocks of 128, and smoothing
 * with one full-width randomised Hadamard rotation. */
START_TEST(wide_layer_matches_unfused)
{
    const uint32_t flags[] = {DQ_PLAN_F_DEFAULT, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_PER_BLOCK_R,
                              DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE};
    const char *names[] = {"4096 shared", "4096 per-block", "4096 full-width Hadamard"};
    for (int i = 0; i < 3; i++) {
        test_rng r = {77 + (uint64_t)i};
        dq_plan *plan = i < 2 ? build_plan(&r, 4096, flags[i], DQ_ROT_METHOD_RANDOM, 128, 1)
                              : build_plan(&r, 4096, flags[i], DQ_ROT_METHOD_RANDOM_HADAMARD,
                                           4096, 1);
        dq__online *on = NULL;
        ck_assert_int_eq(dq__online_create(NULL, plan, &on), DQ_OK);
        ck_assert_int_eq(dq__online_hadamard_stages(on), i == 2);
        const int64_t rows = dq__online_tile_rows(on) + 2, ldx = 4096 + 7;
        float *x = malloc((size_t)(rows * ldx) * sizeof(float));
        test_fill_activations(&r, x, rows, 4096, ldx, 1);
        char name[64];
        check_case(plan, on, x, rows, 4096, ldx, 4, DQ_QUANT_ASYM, 1.0f, names[i]);
        snprintf(name, sizeof name, "%s T=1", names[i]);
        check_case(plan, on, x, 1, 4096, ldx, 8, DQ_QUANT_SYM, 1.0f, name);
        free(x);
        dq__online_free(on);
        dq_plan_free(plan);
    }
}
END_TEST

/* The layer: both routes, quantized and weight-only, agree; the public call is the fused one
 * and runs in exactly the workspace it asks for. */
START_TEST(layer_routes_agree)
{
    const int64_t in = 200, out = 24;
    const int32_t act_bits[] = {4, 8, 0};
    for (int a = 0; a < 3; a++)
        for (int per_block = 0; per_block < 2; per_block++) {
            test_rng r = {900 + (uint64_t)(a * 2 + per_block)};
            dq_plan *plan = build_plan(&r, in, DQ_PLAN_F_DEFAULT |
                                                   (per_block ? DQ_PLAN_F_PER_BLOCK_R : 0u),
                                       DQ_ROT_METHOD_GREEDY, 32, 1);
            float *w = malloc((size_t)(out * in) * sizeof(float));
            for (int64_t i = 0; i < out * in; i++)
                w[i] = (float)(0.05 * test_rng_normal(&r));
            ck_assert_int_eq(dq_plan_transform_weight(plan, w, out, in, in), DQ_OK);
            dq_qmatrix *q = NULL;
            ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, out, in, in, NULL, NULL, &q), DQ_OK);
            dq_linear_params lp;
            dq_linear_params_init(&lp, sizeof lp);
            lp.act_bits = act_bits[a];
            dq_linear *lin = NULL;
            ck_assert_int_eq(dq_linear_create(NULL, &lp, plan, q, NULL, &lin), DQ_OK);
            const int64_t rows = 131, ldx = in + 3;
            float *x = malloc((size_t)(rows * ldx) * sizeof(float));
            test_fill_activations(&r, x, rows, in, ldx, 1);
            float *y0 = malloc((size_t)(rows * out) * sizeof(float));
            float *y1 = malloc((size_t)(rows * out) * sizeof(float));
            float *y2 = malloc((size_t)(rows * out) * sizeof(float));
            ck_assert_int_eq(dq_linear_forward(lin, x, rows, in, ldx, y0, out, NULL, 0), DQ_OK);
            size_t ws_f = 0, ws_u = 0;
            ck_assert_int_eq(dq_linear_workspace_size(lin, rows, &ws_f), DQ_OK);
            ck_assert_int_eq(dq__linear_workspace_route(lin, DQ__ROUTE_UNFUSED, rows, &ws_u),
                             DQ_OK);
            unsigned char *work = malloc((ws_f > ws_u ? ws_f : ws_u) + 1);
            ck_assert_int_eq(dq__linear_forward_route(lin, DQ__ROUTE_FUSED, x, rows, in, ldx, y1,
                                                      out, work + 1, ws_f),
                             DQ_OK);
            ck_assert(memcmp(y0, y1, (size_t)(rows * out) * sizeof(float)) == 0);
            ck_assert_int_eq(dq__linear_forward_route(lin, DQ__ROUTE_UNFUSED, x, rows, in, ldx,
                                                      y2, out, work + 1, ws_u),
                             DQ_OK);
            const double err = test_rel_err(y0, out, y2, out, rows, out);
            ck_assert_msg(err <= (act_bits[a] ? 1e-3 : 1e-5), "a%d per-block %d: rel %.3g",
                          act_bits[a], per_block, err);
            free(work);
            free(x);
            free(y0);
            free(y1);
            free(y2);
            free(w);
            dq_linear_free(lin);
            dq_qmatrix_free(q);
            dq_plan_free(plan);
        }
}
END_TEST

/* Every allocation of the compilation may fail, with float or half-precision matrices:
 * DQ_ERR_NOMEM, nothing leaked, and the first compilation that succeeds gives the same bits
 * as one with the default allocator. */
START_TEST(allocation_failures)
{
    /* the last: two Hadamard stages, the smoothing folded into the first one's scales */
    const uint32_t flags[] = {DQ_PLAN_F_DEFAULT, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_PER_BLOCK_R,
                              DQ_PLAN_F_DEFAULT};
    const int32_t methods[] = {DQ_ROT_METHOD_RANDOM, DQ_ROT_METHOD_RANDOM,
                               DQ_ROT_METHOD_HADAMARD};
    const int64_t widths[] = {40, 40, 256};
    const int32_t blocks[] = {16, 16, 128};
    for (int half = 0; half < 2; half++)
        for (int i = 0; i < 3; i++) {
            const uint32_t cflags = half ? DQ_CONTEXT_F_HALF_MATRICES : 0u;
            const int64_t cols = widths[i], rows = 3;
            test_rng r = {31 + (uint64_t)i};
            dq_plan *plan = build_plan(&r, cols, flags[i], methods[i], blocks[i], 1);
            float x[3 * 256];
            test_fill_activations(&r, x, rows, cols, cols, 1);
            dq_context *refctx = half ? half_context() : NULL;
            dq__online *ref = NULL;
            ck_assert_int_eq(dq__online_create(refctx, plan, &ref), DQ_OK);
            ck_assert_int_eq(dq__online_hadamard_stages(ref), i == 2 ? 2 : 0);
            ck_assert(dq__online_stage_half(ref, 0) == (half && i < 2));
            float y0[3 * 256], y1[3 * 256];
            void *work = workspace(ref, rows, 1);
            dq__online_transform(ref, x, rows, cols, y0, cols, work, NULL);
            int succeeded = 0;
            for (long fail_at = 1; fail_at < 50 && !succeeded; fail_at++) {
                test_alloc a = {0, 0, 0};
                dq_context *ctx = test_alloc_context_flags(&a, cflags);
                ck_assert_ptr_nonnull(ctx);
                a.fail_at = a.total + fail_at;
                dq__online *on = (dq__online *)(uintptr_t)1;
                dq_status st = dq__online_create(ctx, plan, &on);
                if (st == DQ_OK) {
                    dq__online_transform(on, x, rows, cols, y1, cols, work, NULL);
                    ck_assert(memcmp(y0, y1, (size_t)(rows * cols) * sizeof(float)) == 0);
                    succeeded = 1;
                    dq__online_free(on);
                } else {
                    ck_assert_int_eq(st, DQ_ERR_NOMEM);
                    ck_assert_ptr_null(on);
                }
                dq_context_free(ctx);
                ck_assert_msg(a.live == 0, "plan %d half %d, allocation %ld fails: %ld live", i,
                              half, fail_at, a.live);
            }
            ck_assert(succeeded);
            free(work);
            dq__online_free(ref);
            dq_context_free(refctx);
            dq_plan_free(plan);
        }
}
END_TEST

/* Through the public flag: layers on a plan built on a DQ_CONTEXT_F_HALF_MATRICES context run
 * the half path: their outputs differ from the float context's by the rounding (within 1e-2
 * relative) and are the same bits batched and token by token (a lone token's stages split
 * over 3 threads), for every activation setting. */
START_TEST(half_context_layers)
{
    const int64_t in = 96, out = 20, rows = 37;
    const int32_t act_bits[] = {4, 8, 0};
    for (int a = 0; a < 3; a++) {
        dq_linear *lin[2] = {NULL, NULL};
        dq_plan *plan[2] = {NULL, NULL};
        dq_context *ctx[2] = {NULL, half_context()};
        dq_qmatrix *q = NULL;
        for (int h = 0; h < 2; h++) {
            test_rng r = {950 + (uint64_t)a}; /* the same plan and weights for both */
            const int64_t srows = 48;
            float *sample = malloc((size_t)(srows * in) * sizeof(float));
            float *w_absmax = malloc((size_t)in * sizeof(float));
            test_fill_activations(&r, sample, srows, in, in, 1);
            for (int64_t j = 0; j < in; j++)
                w_absmax[j] = (float)(0.05 + test_rng_uniform(&r));
            dq_plan_params pp;
            dq_plan_params_init(&pp, sizeof pp);
            pp.flags = DQ_PLAN_F_DEFAULT | DQ_PLAN_F_PER_BLOCK_R;
            pp.block_size = 32;
            pp.max_rotation_step = 6;
            ck_assert_int_eq(dq_plan_build_from_sample(ctx[h], &pp, NULL, sample, srows, in, in,
                                                       w_absmax, &plan[h]),
                             DQ_OK);
            free(sample);
            free(w_absmax);
            if (h == 0) {
                float *w = malloc((size_t)(out * in) * sizeof(float));
                for (int64_t i = 0; i < out * in; i++)
                    w[i] = (float)(0.05 * test_rng_normal(&r));
                ck_assert_int_eq(dq_plan_transform_weight(plan[0], w, out, in, in), DQ_OK);
                ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, out, in, in, NULL, NULL, &q),
                                 DQ_OK);
                free(w);
            }
            dq_linear_params lp;
            dq_linear_params_init(&lp, sizeof lp);
            lp.act_bits = act_bits[a];
            /* The layer's context sets its threads; the plan's chose the matrices. */
            dq_context_params cp;
            dq_context_params_init(&cp, sizeof cp);
            cp.n_threads = h ? 3 : 1;
            dq_context *lctx = NULL;
            ck_assert_int_eq(dq_context_create(&cp, &lctx), DQ_OK);
            ck_assert_int_eq(dq_linear_create(lctx, &lp, plan[h], q, NULL, &lin[h]), DQ_OK);
            dq_context_free(lctx);
        }
        test_rng r = {990};
        float *x = malloc((size_t)(rows * in) * sizeof(float));
        float *y[3];
        test_fill_activations(&r, x, rows, in, in, 1);
        for (int k = 0; k < 3; k++)
            y[k] = malloc((size_t)(rows * out) * sizeof(float));
        ck_assert_int_eq(dq_linear_forward(lin[0], x, rows, in, in, y[0], out, NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_linear_forward(lin[1], x, rows, in, in, y[1], out, NULL, 0), DQ_OK);
        /* one token at a time: the split of a lone token's stages */
        for (int64_t t = 0; t < rows; t++)
            ck_assert_int_eq(dq_linear_forward(lin[1], x + t * in, 1, in, in, y[2] + t * out,
                                               out, NULL, 0),
                             DQ_OK);
        ck_assert(memcmp(y[1], y[2], (size_t)(rows * out) * sizeof(float)) == 0);
        ck_assert(memcmp(y[0], y[1], (size_t)(rows * out) * sizeof(float)) != 0);
        const double err = test_rel_err(y[0], out, y[1], out, rows, out);
        ck_assert_msg(err <= 1e-2, "a%d: half against float, rel %.3g", act_bits[a], err);
        for (int k = 0; k < 3; k++)
            free(y[k]);
        free(x);
        for (int h = 0; h < 2; h++) {
            dq_linear_free(lin[h]);
            dq_plan_free(plan[h]);
            dq_context_free(ctx[h]);
        }
        dq_qmatrix_free(q);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("online");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, built_plans_match_unfused);
    tcase_add_test(tc, assembled_plans_match_unfused);
    tcase_add_test(tc, hadamard_plans_match_unfused);
    tcase_add_test(tc, half_matrices_match_rounded_plan);
    tcase_add_test(tc, hadamard_detection_is_exact);
    tcase_add_test(tc, hadamard_detection_in_plans);
    tcase_add_test(tc, hadamard_transform_bits);
    tcase_add_test(tc, wide_layer_matches_unfused);
    tcase_add_test(tc, layer_routes_agree);
    tcase_add_test(tc, allocation_failures);
    tcase_add_test(tc, half_context_layers);
    suite_add_tcase(s, tc);
    int status = dq_check_run(s, 1); /* in-process: the counts below add up over tests */
    printf("levels moved by one at a boundary: %lld of %lld\n", (long long)codes_moved,
           (long long)codes_checked);
    return status;
}
