/* Calibration and LWC throughput, through the public API only:
 * - dq_calib_observe streaming a layer input in chunks (each sample mode), dq_calib_sample
 *   reading the kept sample back, and dq_plan_build on that calibrator (default DuQuant plan:
 *   smooth, greedy R1, zigzag, greedy R2);
 * - dq_lwc_create and dq_lwc_train on a square layer, with and without DQ_LWC_F_QUANT_ACT,
 *   next to the float GEMM work one epoch implies (dq_lwc_loss without and with gradients
 *   split the time of one batch into its parts).
 * Activations are outlier-heavy synthetic data (as bench_plan): Laplace noise, a few channels
 * scaled 30-50x, massive values on a few tokens. The weight is Gaussian-like, 0.02 scale.
 * Times are medians of repeated runs (at most 3 for plan builds and LWC), each on a fresh
 * object; OpenBLAS (used by LWC) runs with whatever threads and kernels the environment gives
 * it (OPENBLAS_NUM_THREADS, OPENBLAS_CORETYPE).
 *
 * usage: bench_calib [channels [tokens [chunk [repeats [lwc_tokens [lwc_epochs [threads
 *        [lwc_batch]]]]]]]]   defaults 4096 2048 256 5 512 2 2 128 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench_common.h"
#include "duquant.h"

/* Sum of four uniforms, centred: close enough to Gaussian for a weight matrix. */
static void fill_weight(float *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        w[i] = (float)(0.02 * (bench_uniform() + bench_uniform() + bench_uniform() + bench_uniform() - 2.0) * 1.7);
}

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "%s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

/* Wall and processor seconds of one timed span. */
typedef struct span {
    double wall, cpu;
} span;

static span span_start(void)
{
    return (span){bench_now(), bench_cpu_now()};
}

static span span_end(span s)
{
    return (span){bench_now() - s.wall, bench_cpu_now() - s.cpu};
}

/* Medians of the wall and processor times of n spans (reordered in place). */
static span span_median(span *v, int n)
{
    double w[64], c[64];
    for (int k = 0; k < n; k++) {
        w[k] = v[k].wall;
        c[k] = v[k].cpu;
    }
    return (span){bench_median(w, n), bench_median(c, n)};
}

/* Streams t tokens in chunks into a fresh calibrator of the given mode and times the
 * dq_calib_observe calls (creation is outside the clock); leaves the calibrator in *out (or
 * frees it when out is NULL). */
static span time_observe(dq_context *ctx, int32_t mode, int64_t sample_tokens, const float *x,
                         int64_t t, int64_t c, int64_t chunk, dq_calib **out)
{
    dq_calib_params p;
    dq_calib_params_init(&p, sizeof p);
    p.sample_mode = mode;
    p.sample_tokens = sample_tokens;
    dq_calib *cal = NULL;
    check(dq_calib_create(ctx, &p, c, &cal), "dq_calib_create");
    span s = span_start();
    for (int64_t i = 0; i < t; i += chunk) {
        int64_t rows = t - i < chunk ? t - i : chunk;
        check(dq_calib_observe(cal, x + (size_t)(i * c), rows, c, c), "dq_calib_observe");
    }
    s = span_end(s);
    if (out)
        *out = cal;
    else
        dq_calib_free(cal);
    return s;
}

/* One LWC run on a fresh object: creation, epochs of training, then one full-batch loss
 * without and with gradients at the trained parameters. */
static void time_lwc(dq_context *ctx, uint32_t flags, int32_t epochs, int32_t batch,
                     const float *w, int64_t rows, int64_t c, const float *x, int64_t t,
                     float *g, span out[4])
{
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.flags = flags;
    lp.epochs = epochs;
    lp.batch_tokens = batch;
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    dq_lwc *l = NULL;
    span s = span_start();
    check(dq_lwc_create(ctx, &lp, &wq, w, rows, c, c, x, t, c, &l), "dq_lwc_create");
    out[0] = span_end(s);
    float loss;
    s = span_start();
    check(dq_lwc_train(l, &loss), "dq_lwc_train");
    out[1] = span_end(s);
    out[1].wall /= epochs;
    out[1].cpu /= epochs;
    s = span_start();
    check(dq_lwc_loss(l, &loss, NULL, NULL, 0), "dq_lwc_loss");
    out[2] = span_end(s);
    s = span_start();
    check(dq_lwc_loss(l, &loss, g, g + rows, rows), "dq_lwc_loss (gradient)");
    out[3] = span_end(s);
    dq_lwc_free(l);
}

int main(int argc, char **argv)
{
    int64_t c = argc > 1 ? atoll(argv[1]) : 4096, t = argc > 2 ? atoll(argv[2]) : 2048;
    int64_t chunk = argc > 3 ? atoll(argv[3]) : 256;
    int reps = argc > 4 ? atoi(argv[4]) : 5;
    int64_t lt = argc > 5 ? atoll(argv[5]) : 512;
    int32_t epochs = argc > 6 ? atoi(argv[6]) : 2, threads = argc > 7 ? atoi(argv[7]) : 2;
    int32_t batch = argc > 8 ? atoi(argv[8]) : 128;
    if (c <= 0 || c % 128 != 0 || t <= 0 || chunk <= 0 || reps < 1 || reps > 64 || lt <= 0 ||
        lt > t || epochs < 1 || threads < 0 || threads > 64 || batch < 1) {
        fprintf(stderr, "usage: %s [channels (multiple of 128) [tokens [chunk [repeats (1..64) "
                        "[lwc_tokens (<= tokens) [lwc_epochs [threads [lwc_batch]]]]]]]]\n",
                argv[0]);
        return 2;
    }
    /* Plan builds and LWC runs take seconds each: at most 3 of them per figure. */
    const int plan_reps = reps < 3 ? reps : 3;
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = threads;
    dq_context *ctx = NULL;
    check(dq_context_create(&cp, &ctx), "dq_context_create");
    float *x = malloc((size_t)(t * c) * sizeof *x), *s = malloc((size_t)(t * c) * sizeof *s);
    float *w = malloc((size_t)(c * c) * sizeof *w);
    float *w_absmax = malloc((size_t)c * sizeof *w_absmax);
    float *g = malloc((size_t)(2 * c) * sizeof *g);
    span *tm = malloc((size_t)reps * sizeof *tm), *tm2 = malloc((size_t)reps * sizeof *tm2);
    span(*lw)[4] = malloc((size_t)reps * sizeof *lw);
    if (!x || !s || !w || !w_absmax || !g || !tm || !tm2 || !lw)
        return 1;
    bench_fill_outliers(x, t, c);
    fill_weight(w, c * c);
    check(dq_smooth_weight_absmax(w, c, c, c, 0, w_absmax), "dq_smooth_weight_absmax");

    printf("libduquant %s: layer input %lld tokens x %lld channels (%.1f MiB float32), "
           "chunks of %lld tokens, median of %d, library threads %d\n", dq_version_string(),
           (long long)t, (long long)c, (double)(t * c) * 4.0 / 1048576.0, (long long)chunk,
           reps, threads);
    bench_print_cpu();
    const char *env = getenv("OPENBLAS_NUM_THREADS"), *core = getenv("OPENBLAS_CORETYPE");
    printf("OPENBLAS_NUM_THREADS=%s OPENBLAS_CORETYPE=%s\n", env ? env : "(unset)",
           core ? core : "(unset)");
    printf("(wall: elapsed time; cpu: processor time of all the process's threads)\n");

    /* 1. dq_calib_observe per sample mode, into fresh calibrators; bytes = the activations
     * read once. */
    const double bytes = (double)(t * c) * 4.0;
    struct {
        const char *name;
        int32_t mode;
        int64_t sample;
    } modes[] = {
        {"NONE", DQ_CALIB_SAMPLE_NONE, 0},
        {"FIRST 2048", DQ_CALIB_SAMPLE_FIRST, 2048},
        {"SEQ_MEAN 256", DQ_CALIB_SAMPLE_SEQ_MEAN, 256},
    };
    printf("\n%-30s %9s %9s %11s %9s\n", "", "wall ms", "cpu ms", "tokens/s", "GB/s");
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        for (int k = 0; k < reps; k++)
            tm[k] = time_observe(ctx, modes[m].mode, modes[m].sample, x, t, c, chunk, NULL);
        span md = span_median(tm, reps);
        printf("dq_calib_observe, %-12s %9.2f %9.2f %11.0f %9.2f\n", modes[m].name,
               md.wall * 1e3, md.cpu * 1e3, (double)t / md.wall, bytes / md.wall * 1e-9);
    }

    /* 2. Reading the sample back, and plan builds on the calibrator (FIRST: all tokens kept
     * when t <= 2048): DuQuant's default plan, and the same without smoothing. */
    int64_t rows = 0;
    for (int k = 0; k < reps; k++) {
        dq_calib *cal = NULL;
        time_observe(ctx, DQ_CALIB_SAMPLE_FIRST, t < 2048 ? t : 2048, x, t, c, chunk, &cal);
        span sp = span_start();
        check(dq_calib_sample(cal, s, c, &rows), "dq_calib_sample");
        tm[k] = span_end(sp);
        dq_calib_free(cal);
    }
    span md = span_median(tm, reps);
    printf("%-30s %9.2f %9.2f %11.0f %9.2f\n", "dq_calib_sample (FIRST 2048)", md.wall * 1e3,
           md.cpu * 1e3, (double)rows / md.wall, (double)(rows * c) * 4.0 / md.wall * 1e-9);

    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    printf("\ndq_plan_build on the calibrator (sample %lld x %lld), block %d, %d greedy steps, "
           "alpha %.2f, seed %llu, median of %d\n", (long long)rows, (long long)c,
           pp.block_size, pp.max_rotation_step, (double)pp.smooth_alpha,
           (unsigned long long)pp.seed, plan_reps);
    printf("%-30s %9s %9s %11s\n", "flags", "wall s", "cpu s", "tokens/s");
    const uint32_t plan_flags[] = {DQ_PLAN_F_DEFAULT, DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE};
    const char *plan_names[] = {"default (smooth,R1,zigzag,R2)", "no smoothing (R1,zigzag,R2)"};
    dq_calib *cal = NULL;
    time_observe(ctx, DQ_CALIB_SAMPLE_FIRST, t < 2048 ? t : 2048, x, t, c, chunk, &cal);
    for (size_t f = 0; f < 2; f++) {
        pp.flags = plan_flags[f];
        for (int k = 0; k < plan_reps; k++) {
            dq_plan *pl = NULL;
            span sp = span_start();
            check(dq_plan_build(ctx, &pp, cal, w_absmax, c, &pl), "dq_plan_build");
            tm2[k] = span_end(sp);
            dq_plan_free(pl);
        }
        md = span_median(tm2, plan_reps);
        printf("%-30s %9.3f %9.3f %11.0f\n", plan_names[f], md.wall, md.cpu,
               (double)rows / md.wall);
    }
    dq_calib_free(cal);

    /* 3. LWC on a c x c layer, 4-bit ASYM per row, the first lt tokens as calibration. */
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    const int64_t b = batch < lt ? batch : lt, steps = (lt + b - 1) / b;
    /* Per epoch: per batch the error product and the gradient product; then the full-batch
     * loss (one product over all tokens) that picks the best parameters. */
    const double flop_epoch = 2.0 * (double)c * (double)c * 3.0 * (double)lt;
    printf("\nLWC %lld x %lld weight, 4-bit ASYM per row, %lld tokens, batch %lld (%lld Adam "
           "steps an epoch), %d epochs a run, lr %g, init %g, median of %d\n", (long long)c,
           (long long)c, (long long)lt, (long long)b, (long long)steps, epochs,
           (double)lp.learning_rate, (double)lp.init_value, plan_reps);
    bench_print_load("");
    const bench_peak *pk = bench_peak_measure();
    printf("%-10s %9s %9s %9s %9s %9s %7s %9s %9s %9s %9s\n", "flags", "create s", "epoch s",
           "cpu s", "tokens/s", "GFLOP/s", "%pk256", "loss s", "cpu s", "+grad s", "cpu s");
    const uint32_t flag_sets[] = {0u, DQ_LWC_F_QUANT_ACT};
    for (size_t f = 0; f < 2; f++) {
        for (int k = 0; k < plan_reps; k++)
            time_lwc(ctx, flag_sets[f], epochs, batch, w, c, c, x, lt, g, lw[k]);
        span v[4];
        for (int part = 0; part < 4; part++) {
            for (int k = 0; k < plan_reps; k++)
                tm[k] = lw[k][part];
            v[part] = span_median(tm, plan_reps);
        }
        printf("%-10s %9.3f %9.3f %9.3f %9.0f %9.1f %6.1f%% %9.3f %9.3f %9.3f %9.3f\n",
               flag_sets[f] ? "QUANT_ACT" : "0 (W4A16)", v[0].wall, v[1].wall, v[1].cpu,
               (double)lt / v[1].wall, flop_epoch / v[1].wall * 1e-9,
               bench_peak_pct(flop_epoch / v[1].cpu, pk->f32_flops_256, 1), v[2].wall, v[2].cpu,
               v[3].wall, v[3].cpu);
    }
    printf("(epoch: dq_lwc_train time / epochs; GFLOP/s: the epoch's float products, 3 x 2 x "
           "tokens x %lld^2,\n over the epoch's wall time; %%pk256: the same FLOP per processor-"
           "second over one core's 256-bit FMA peak\n (the width of the OpenBLAS kernels "
           "picked here; processor time of all threads); loss / +grad: one\n dq_lwc_loss over all %lld tokens without / with gradients)\n", (long long)c,
           (long long)lt);

    bench_print_load(" at end");
    dq_context_free(ctx);
    free(x);
    free(s);
    free(w);
    free(w_absmax);
    free(g);
    free(tm);
    free(tm2);
    free(lw);
    return 0;
}
