/* Plan-build benchmark: times the greedy rotation search and the whole plan build on an
 * outlier-heavy synthetic calibration sample, next to OpenBLAS doing the same block products
 * (one tall T*K x n by n x n product per greedy step) in the same run, so that the ratios stay
 * comparable on a busy machine.
 *
 * The library builds plans with its own reproducible products (same bits for any thread
 * count), on the worker threads of its context; OpenBLAS uses whatever threads the environment
 * gives it (OPENBLAS_NUM_THREADS).
 *
 * usage: bench_plan [tokens [channels [block [steps [repeats [threads [base]]]]]]]
 *        defaults 2048 4096 128 256 3 2 rot; base hadamard: DQ_*_F_HADAMARD_BASE */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"
#include "duquant.h"

int main(int argc, char **argv)
{
    int64_t t = argc > 1 ? atoll(argv[1]) : 2048, c = argc > 2 ? atoll(argv[2]) : 4096;
    int32_t bs = argc > 3 ? atoi(argv[3]) : 128, steps = argc > 4 ? atoi(argv[4]) : 256;
    int reps = argc > 5 ? atoi(argv[5]) : 3, threads = argc > 6 ? atoi(argv[6]) : 2;
    const char *base = argc > 7 ? argv[7] : "rot";
    const int hadamard_base = strcmp(base, "hadamard") == 0;
    if (t <= 0 || c <= 0 || bs < 2 || c % bs != 0 || steps < 0 || reps < 1 || reps > 50 ||
        threads < 1 || threads > 64 || (!hadamard_base && strcmp(base, "rot") != 0)) {
        fprintf(stderr, "usage: %s [tokens [channels [block (divides channels) [steps "
                        "[repeats [threads [rot|hadamard]]]]]]]\n", argv[0]);
        return 2;
    }
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = threads;
    dq_context *ctx = NULL;
    if (dq_context_create(&cp, &ctx) != DQ_OK)
        return 1;
    const int64_t vrows = t * (c / bs);
    float *x = malloc((size_t)(t * c) * sizeof *x), *y = malloc((size_t)(t * c) * sizeof *y);
    float *w_absmax = malloc((size_t)c * sizeof *w_absmax);
    float *r = malloc((size_t)bs * (size_t)bs * sizeof *r);
    double *ts = malloc((size_t)reps * sizeof *ts), *tp = malloc((size_t)reps * sizeof *tp);
    double *tb = malloc((size_t)reps * sizeof *tb);
    if (!x || !y || !w_absmax || !r || !ts || !tp || !tb)
        return 1;
    bench_fill_outliers(x, t, c);
    for (int64_t j = 0; j < c; j++)
        w_absmax[j] = (float)(0.05 + 0.1 * bench_uniform());
    if (dq_rotation_base(bs, NULL, r, bs) != DQ_OK)
        return 1;

    printf("calibration sample %lld x %lld, block %d, %d greedy steps, %s base, %d repeats, "
           "library threads %d\n", (long long)t, (long long)c, bs, steps, base, reps, threads);
    bench_print_cpu();
    const double f32_peak = bench_peak_f32(bench_peak_measure());
    const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    dq_rotation_params rp;
    dq_rotation_params_init(&rp, sizeof rp);
    rp.block_size = bs;
    rp.max_steps = steps;
    rp.flags |= hadamard_base ? DQ_ROT_F_HADAMARD_BASE : 0u;
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.block_size = bs;
    pp.max_rotation_step = steps;
    pp.flags |= hadamard_base ? DQ_PLAN_F_HADAMARD_BASE : 0u;
    int32_t sel = 0;
    for (int k = 0; k < reps; k++) {
        /* OpenBLAS alone: the products one search makes on the (T*K) x n view. */
        double t0 = bench_now();
        for (int32_t s = 0; s < steps; s++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)vrows, bs, bs, 1.0f,
                        s % 2 ? y : x, bs, r, bs, 0.0f, s % 2 ? x : y, bs);
        tb[k] = bench_now() - t0;
        bench_fill_outliers(x, t, c); /* the products above overwrote it */

        dq_rotation *rot = NULL;
        t0 = bench_now();
        dq_status st = dq_rotation_create(ctx, &rp, x, t, c, c, &rot);
        ts[k] = bench_now() - t0;
        if (st == DQ_OK)
            st = dq_rotation_trace(rot, 0, NULL, &sel, NULL, NULL, NULL, 0);
        dq_rotation_free(rot);

        dq_plan *pl = NULL;
        t0 = bench_now();
        if (st == DQ_OK)
            st = dq_plan_build_from_sample(ctx, &pp, NULL, x, t, c, c, w_absmax, &pl);
        tp[k] = bench_now() - t0;
        dq_plan_free(pl);
        if (st != DQ_OK) {
            fprintf(stderr, "failed: %s\n", dq_status_name(st));
            return 1;
        }
        printf("  run %d: OpenBLAS %.3f s, search %.3f s, plan %.3f s\n", k + 1, tb[k], ts[k],
               tp[k]);
    }
    double mb = bench_median(tb, reps), ms = bench_median(ts, reps), mp = bench_median(tp, reps);
    double gflop = 2.0 * (double)vrows * bs * bs * steps * 1e-9;
    printf("median OpenBLAS, %d products of %lld x %d x %d: %.3f s (%.1f GFLOP/s, %.1f%% of the "
           "FMA peak x %d cores)\n", steps, (long long)vrows, bs, bs, mb, gflop / mb,
           bench_peak_pct(gflop * 1e9 / mb, f32_peak, ncpu), ncpu);
    printf("median greedy search (prefix kept: %d steps):   %.3f s  = %.2f x OpenBLAS\n", sel,
           ms, ms / mb);
    printf("median plan build (smooth, R1, zigzag, R2):     %.3f s  = %.2f x OpenBLAS\n", mp,
           mp / mb);
    bench_print_load(" at end");
    dq_context_free(ctx);
    free(x);
    free(y);
    free(w_absmax);
    free(r);
    free(ts);
    free(tp);
    free(tb);
    return 0;
}
