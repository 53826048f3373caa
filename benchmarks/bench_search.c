/* Transform-search benchmark on a LLaMA-2-7B-shaped model: per layer, plans for the four
 * distinct linear-layer inputs (widths 4096, 4096, 4096, 11008: attention, output projection,
 * MLP up/gate, MLP down), each built from a calibration sample of T tokens with smoothing, R1,
 * the zigzag permutation and R2 (the default plan), block 128, 256 greedy steps.
 *
 * Synthetic activations: "outliers" = Laplace noise, about 1% of channels scaled 20-60x, and
 * massive values (500-2500) in three fixed channels on four tokens, as large models show;
 * "gaussian" = N(0, 1) with no outliers. Plans: R1, zigzag, R2 on the raw activations (the
 * search as the reference runs it), or with "-smooth" the default plan (smoothing first).
 *
 * The plain search (every row at every step) is measured in the same run on the first input of
 * the first layer (the same R1 and R2 searches, through the library's private interface) and
 * the plain whole-model figure is extrapolated from it, labelled so.
 *
 * The plain search's block products are counted (two searches x steps x T x width x block x 2
 * FLOP, every step multiplying the whole view) and given as a share of the float FMA peak of
 * one core (measured in the same run) x the library threads.
 *
 * usage: bench_search [layers [outliers|gaussian|outliers-smooth|gaussian-smooth [threads
 *                     [repeats [tokens [steps]]]]]]
 *        defaults 32 outliers 2 1 2048 256 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "dq_search.h"
#include "duquant.h"

#define BLOCK 128

static void fill(float *x, int64_t t, int64_t c, bool outliers, uint64_t seed)
{
    bench_seed(seed);
    if (!outliers) {
        for (int64_t i = 0; i < t * c; i += 2) {
            double r = sqrt(-2.0 * log(bench_uniform())), a = 6.283185307179586 * bench_uniform();
            x[i] = (float)(r * cos(a));
            x[i + 1] = (float)(r * sin(a));
        }
        return;
    }
    for (int64_t i = 0; i < t * c; i++) {
        double u = bench_uniform() - 0.5;
        x[i] = (float)((u < 0 ? 1.0 : -1.0) * log(1.0 - 2.0 * fabs(u)));
    }
    for (int64_t j = (int64_t)(seed % 89); j < c; j += 89 + (int64_t)(bench_uniform() * 20.0)) {
        float g = (float)(20.0 + 40.0 * bench_uniform());
        for (int64_t i = 0; i < t; i++)
            x[i * c + j] *= g;
    }
    const int64_t tokens[4] = {0, 1 + (int64_t)(bench_uniform() * (double)(t - 1)) % t,
                               (int64_t)(bench_uniform() * (double)t), (int64_t)(bench_uniform() * (double)t)};
    const int64_t chans[3] = {(int64_t)(0.35 * (double)c), (int64_t)(0.62 * (double)c),
                              (int64_t)(0.91 * (double)c)};
    for (int k = 0; k < 4; k++)
        for (int m = 0; m < 3; m++)
            x[tokens[k] * c + chans[m]] =
                (float)((m == 1 ? -1.0 : 1.0) * (500.0 + 2000.0 * bench_uniform()));
}

/* The two searches of a default plan build, as dq_plan_build does them: R1 on the smoothed
 * sample, R2 on the rotated sample with its channels dealt by the zigzag. Returns the seconds
 * spent searching; rows receives the rows the searches multiplied. */
static double two_searches(dq_context *ctx, bool plain, const float *xs, int64_t t, int64_t c,
                           int32_t steps, float *y, float *z)
{
    dq__rot_opts o = {.method = DQ_ROT_METHOD_GREEDY, .block_size = BLOCK, .max_steps = steps,
                      .seed = dq__seed_mix(0, 0), .plain_search = plain};
    dq_rotation *r1 = NULL, *r2 = NULL;
    double t0 = bench_now();
    if (dq__rotation_build(ctx, &o, xs, t, c, c, &r1) != DQ_OK)
        return -1;
    double ts = bench_now() - t0;
    float *key = calloc((size_t)c, sizeof *key);
    int64_t *perm = malloc((size_t)c * sizeof *perm);
    if (dq__rotation_rows_exact(r1, xs, c, y, c, t, ctx) != DQ_OK)
        return -1;
    dq__col_absmax(y, t, c, c, key);
    if (dq__zigzag(ctx, key, c, BLOCK, perm) != DQ_OK)
        return -1;
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < c; j++)
            z[i * c + j] = y[i * c + perm[j]];
    o.seed = dq__seed_mix(0, 1);
    t0 = bench_now();
    if (dq__rotation_build(ctx, &o, z, t, c, c, &r2) != DQ_OK)
        return -1;
    ts += bench_now() - t0;
    dq_rotation_free(r1);
    dq_rotation_free(r2);
    free(key);
    free(perm);
    return ts;
}

/* Rows the pruned search multiplies for R1 of xs, as a fraction of the view. */
static double searched_fraction(dq_context *ctx, const float *xs, int64_t t, int64_t c,
                                int32_t steps)
{
    float *base = malloc((size_t)BLOCK * BLOCK * sizeof *base), *r = malloc(BLOCK * BLOCK * 4);
    int64_t *ids = malloc(((size_t)steps + 1) * sizeof *ids);
    int32_t *sw = malloc(((size_t)steps + 1) * sizeof *sw);
    float *pk = malloc(((size_t)steps + 1) * sizeof *pk);
    double frac = -1;
    if (dq_rotation_base(BLOCK, NULL, base, BLOCK) == DQ_OK) {
        const dq__search_view v = {xs, c, t, c / BLOCK, BLOCK, BLOCK};
        dq__search_record rec = {ids, sw, pk, 0, 0};
        if (dq__greedy_search(ctx, DQ__SEARCH_PRUNED, &v, base, steps, false, r, &rec) ==
            DQ_OK)
            frac = (double)rec.rows_searched / (double)(t * (c / BLOCK));
    }
    free(base);
    free(r);
    free(ids);
    free(sw);
    free(pk);
    return frac;
}

int main(int argc, char **argv)
{
    int layers = argc > 1 ? atoi(argv[1]) : 32;
    const char *kind = argc > 2 ? argv[2] : "outliers";
    bool outliers = strncmp(kind, "gaussian", 8) != 0, smooth = strstr(kind, "-smooth") != NULL;
    int threads = argc > 3 ? atoi(argv[3]) : 2, reps = argc > 4 ? atoi(argv[4]) : 1;
    int64_t t = argc > 5 ? atoll(argv[5]) : 2048;
    int32_t steps = argc > 6 ? atoi(argv[6]) : 256;
    if (layers < 1 || layers > 32 || threads < 0 || threads > 64 || reps < 1 || reps > 20 ||
        t < 1 || steps < 0) {
        fprintf(stderr, "usage: %s [layers (1-32) [outliers|gaussian [threads [repeats "
                        "[tokens [steps]]]]]]\n", argv[0]);
        return 2;
    }
    const int64_t widths[4] = {4096, 4096, 4096, 11008};
    const int64_t cmax = 11008;
    float *x = malloc((size_t)(t * cmax) * sizeof *x), *xs = malloc((size_t)(t * cmax) * 4);
    float *y = malloc((size_t)(t * cmax) * 4), *z = malloc((size_t)(t * cmax) * 4);
    float *w_absmax = malloc((size_t)cmax * sizeof *w_absmax), *s = malloc((size_t)cmax * 4);
    float *a_absmax = malloc((size_t)cmax * sizeof *a_absmax);
    double *tb = malloc((size_t)reps * sizeof *tb);
    if (!x || !xs || !y || !z || !w_absmax || !s || !a_absmax || !tb)
        return 1;
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = threads;
    dq_context *ctx = NULL;
    if (dq_context_create(&cp, &ctx) != DQ_OK)
        return 1;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp); /* smoothing, R1, zigzag, R2 */
    pp.block_size = BLOCK;
    pp.max_rotation_step = steps;
    if (!smooth)
        pp.flags = DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE;
    printf("LLaMA-2-7B-shaped plan build: %d layer(s) x widths {4096, 4096, 4096, 11008}, "
           "%lld tokens, block %d, %d steps, %s activations%s, library threads %d, %d repeat(s)\n",
           layers, (long long)t, BLOCK, steps, outliers ? "outlier-heavy" : "outlier-free",
           smooth ? ", smoothing (alpha 0.6) first" : "",
           threads, reps);
    bench_print_cpu();
    const double f32_peak = bench_peak_f32(bench_peak_measure());

    double total = 0.0, total_cpu = 0.0, plain_search = -1, pruned_search = -1;
    double first_build = 0, frac0 = -1;
    for (int l = 0; l < layers; l++) {
        double layer_time = 0.0, in_time[4];
        for (int i = 0; i < 4; i++) {
            const int64_t c = widths[i];
            fill(x, t, c, outliers, 1000u * (uint64_t)l + (uint64_t)i);
            bench_seed(77u + (uint64_t)l);
            for (int64_t j = 0; j < c; j++)
                w_absmax[j] = (float)(0.05 + 0.1 * bench_uniform());
            for (int k = 0; k < reps; k++) {
                dq_plan *pl = NULL;
                double t0 = bench_now(), c0 = bench_cpu_now();
                dq_status st = dq_plan_build_from_sample(ctx, &pp, NULL, x, t, c, c, w_absmax,
                                                         &pl);
                tb[k] = bench_now() - t0;
                if (k == 0)
                    total_cpu += bench_cpu_now() - c0;
                dq_plan_free(pl);
                if (st != DQ_OK) {
                    fprintf(stderr, "plan build failed: %s\n", dq_status_name(st));
                    return 1;
                }
            }
            double m = bench_median(tb, reps);
            layer_time += m;
            in_time[i] = m;
            if (l == 0 && i == 0) {
                /* The plain search in the same run, on this input: the same two searches. */
                for (int64_t j = 0; j < c; j++)
                    a_absmax[j] = 0.0f;
                dq__col_absmax(x, t, c, c, a_absmax);
                dq__smooth_factors(a_absmax, w_absmax, c, pp.smooth_alpha, s);
                for (int64_t r = 0; r < t; r++)
                    for (int64_t j = 0; j < c; j++)
                        xs[r * c + j] = smooth ? x[r * c + j] / s[j] : x[r * c + j];
                frac0 = searched_fraction(ctx, xs, t, c, steps);
                pruned_search = two_searches(ctx, false, xs, t, c, steps, y, z);
                plain_search = two_searches(ctx, true, xs, t, c, steps, y, z);
                first_build = m;
            }
        }
        total += layer_time;
        printf("  layer %2d: %.2f s (inputs %.2f %.2f %.2f %.2f s; cumulative %.1f s)\n", l,
               layer_time, in_time[0], in_time[1], in_time[2], in_time[3], total);
        fflush(stdout);
    }
    const double inputs_4096 = 3.0 + 11008.0 / 4096.0; /* work scales with width */
    const double plain_build = first_build - pruned_search + plain_search;
    printf("\nfirst input (4096 wide), R1 search: pruned search multiplies %.2f%% of the "
           "%lld view rows\n", 100.0 * frac0, (long long)(t * (4096 / BLOCK)));
    printf("first input, both searches: plain %.2f s, pruned %.2f s: %.1fx faster\n",
           plain_search, pruned_search, plain_search / pruned_search);
    const double plain_flops = 2.0 * steps * (double)t * 4096.0 * BLOCK * 2.0;
    printf("first input, plain searches: %.1f GFLOP/s in the block products, %.1f%% of the FMA "
           "peak x %d thread(s)\n", plain_flops / plain_search * 1e-9,
           bench_peak_pct(plain_flops / plain_search, f32_peak, ctx->n_threads),
           ctx->n_threads);
    printf("first input, plan build: pruned %.2f s (median), with the plain search %.2f s "
           "(plain searches + the rest): %.1fx faster\n", first_build, plain_build,
           plain_build / first_build);
    printf("whole build, %d layer(s): %.1f s measured (processor time of all threads %.1f s)",
           layers, total, total_cpu);
    if (layers < 32)
        printf(", 32 layers extrapolated: %.1f s (processor time %.1f s)", total * 32.0 / layers,
               total_cpu * 32.0 / layers);
    printf("\nwhole build with the plain search, 32 layers: %.0f s (EXTRAPOLATED from the "
           "first input: x %.2f inputs of 4096 x 32 layers)\n", plain_build * inputs_4096 * 32,
           inputs_4096);
    bench_print_load(" at end");
    dq_context_free(ctx);
    free(x);
    free(xs);
    free(y);
    free(z);
    free(w_absmax);
    free(s);
    free(a_absmax);
    free(tb);
    return 0;
}
