/* Shared-input group benchmark: the q/k/v projections of one attention input (three
 * width x width W4A4 layers sharing one DuQuant plan) as one dq_linear_forward_group call
 * against three dq_linear_forward calls, measured in the same run, alternating, each with its
 * workspace allocated once. The plan is built from outlier-heavy activations with random
 * orthogonal blocks (the arithmetic does not depend on how the rotations were found). The
 * outputs of both are compared bit for bit. It also gives the integer products' rate (2 ops
 * per multiply-add of the three T x width x width products; the transform and the activation
 * quantization are not counted) as a share of the int8 peak of one core measured in the same
 * run, per wall second (x threads, when threads is given) and per processor second.
 *
 * usage: bench_group [width [tokens [repeats [threads]]]]   defaults 4096 2048 7 0
 * (threads: dq_context_params.n_threads, 0 = every online CPU) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "duquant.h"

#define N_LAYERS 3

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "%s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

typedef struct bench {
    const dq_linear *layers[N_LAYERS];
    const float *x;
    int64_t rows, cols;
    float *y_sep[N_LAYERS], *y_grp[N_LAYERS];
    int64_t ldy[N_LAYERS];
    void *work_sep, *work_grp;
    size_t ws_sep, ws_grp;
} bench;

static void run_separate(void *arg)
{
    bench *b = arg;
    for (int i = 0; i < N_LAYERS; i++)
        check(dq_linear_forward(b->layers[i], b->x, b->rows, b->cols, b->cols, b->y_sep[i],
                                b->ldy[i], b->work_sep, b->ws_sep),
              "dq_linear_forward");
}

static void run_group(void *arg)
{
    bench *b = arg;
    check(dq_linear_forward_group(b->layers, N_LAYERS, b->x, b->rows, b->cols, b->cols,
                                  b->y_grp, b->ldy, N_LAYERS, b->work_grp, b->ws_grp),
          "dq_linear_forward_group");
}

/* Wall seconds of one run; *cpu: processor seconds of the process meanwhile (all threads),
 * which other jobs on a busy machine do not inflate. */
static double seconds(void (*fn)(void *), void *arg, double *cpu)
{
    const double c0 = bench_cpu_now(), t0 = bench_now();
    fn(arg);
    const double t = bench_now() - t0;
    *cpu = bench_cpu_now() - c0;
    return t;
}

int main(int argc, char **argv)
{
    const int64_t cols = argc > 1 ? atoll(argv[1]) : 4096;
    const int64_t rows = argc > 2 ? atoll(argv[2]) : 2048;
    int reps = argc > 3 ? atoi(argv[3]) : 7;
    const int threads = argc > 4 ? atoi(argv[4]) : 0;
    if (cols < 128 || cols % 128 != 0 || rows < 1 || reps < 1 || reps > 64 || threads < 0) {
        fprintf(stderr, "usage: bench_group [width (multiple of 128) [tokens [repeats 1-64 "
                        "[threads]]]]\n");
        return 2;
    }
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = threads;
    dq_context *ctx = NULL;
    check(dq_context_create(&cp, &ctx), "dq_context_create");
    bench_print_cpu(); /* ends with the load average at start */
    const bench_peak *peak = bench_peak_measure();
    printf("q/k/v group: %d layers %lld x %lld W4A4, one DuQuant plan (block 128), T = %lld, "
           "median of %d, threads %d (0 = all)\n",
           N_LAYERS, (long long)cols, (long long)cols, (long long)rows, reps, threads);

    /* The plan: calibrated on outlier-heavy activations. */
    const int64_t calib_rows = 256;
    float *sample = malloc((size_t)(calib_rows * cols) * sizeof(float));
    float *w = malloc((size_t)(cols * cols) * sizeof(float));
    float *w_absmax = calloc((size_t)cols, sizeof(float));
    float *x = malloc((size_t)(rows * cols) * sizeof(float));
    if (!sample || !w || !w_absmax || !x) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    bench_seed(2024);
    bench_fill_outliers(sample, calib_rows, cols);
    bench_fill_outliers(x, rows, cols);
    for (int64_t i = 0; i < cols; i++)
        w_absmax[i] = (float)(0.02 + 0.1 * bench_uniform());
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.method = DQ_ROT_METHOD_RANDOM;
    pp.block_size = 128;
    dq_plan *plan = NULL;
    check(dq_plan_build_from_sample(NULL, &pp, NULL, sample, calib_rows, cols, cols, w_absmax,
                                    &plan),
          "dq_plan_build_from_sample");
    free(sample);
    free(w_absmax);

    dq_linear *layers[N_LAYERS] = {NULL};
    bench b = {.x = x, .rows = rows, .cols = cols};
    for (int i = 0; i < N_LAYERS; i++) {
        for (int64_t k = 0; k < cols * cols; k++)
            w[k] = (float)(0.04 * (bench_uniform() - 0.5));
        check(dq_plan_transform_weight(plan, w, cols, cols, cols), "dq_plan_transform_weight");
        dq_qmatrix *q = NULL;
        check(dq_qmatrix_pack(NULL, NULL, w, cols, cols, cols, NULL, NULL, &q),
              "dq_qmatrix_pack");
        check(dq_linear_create(ctx, NULL, plan, q, NULL, &layers[i]), "dq_linear_create");
        dq_qmatrix_free(q);
        b.layers[i] = layers[i];
        b.ldy[i] = cols;
        b.y_sep[i] = malloc((size_t)(rows * cols) * sizeof(float));
        b.y_grp[i] = malloc((size_t)(rows * cols) * sizeof(float));
        if (!b.y_sep[i] || !b.y_grp[i]) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
    }
    free(w);
    check(dq_linear_workspace_size(layers[0], rows, &b.ws_sep), "dq_linear_workspace_size");
    check(dq_linear_group_workspace_size(b.layers, N_LAYERS, rows, &b.ws_grp),
          "dq_linear_group_workspace_size");
    b.work_sep = malloc(b.ws_sep);
    b.work_grp = malloc(b.ws_grp);
    if (!b.work_sep || !b.work_grp) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    /* One untimed run of each, then alternate which goes first. */
    run_separate(&b);
    run_group(&b);
    for (int i = 0; i < N_LAYERS; i++)
        if (memcmp(b.y_sep[i], b.y_grp[i], (size_t)(rows * cols) * sizeof(float)) != 0) {
            fprintf(stderr, "layer %d: group output differs from the separate forward\n", i);
            return 1;
        }
    double t_sep[64], t_grp[64], c_sep[64], c_grp[64];
    for (int r = 0; r < reps; r++) {
        if (r % 2 == 0) {
            t_sep[r] = seconds(run_separate, &b, &c_sep[r]);
            t_grp[r] = seconds(run_group, &b, &c_grp[r]);
        } else {
            t_grp[r] = seconds(run_group, &b, &c_grp[r]);
            t_sep[r] = seconds(run_separate, &b, &c_sep[r]);
        }
    }
    const double sep = bench_median(t_sep, reps), grp = bench_median(t_grp, reps);
    const double csep = bench_median(c_sep, reps), cgrp = bench_median(c_grp, reps);
    printf("workspace: separate %.1f MiB (one, reused), group %.1f MiB\n",
           (double)b.ws_sep / (1 << 20), (double)b.ws_grp / (1 << 20));
    printf("                         wall ms     cpu ms (all threads)\n");
    printf("3 x dq_linear_forward    %9.2f  %9.2f\n", sep * 1e3, csep * 1e3);
    printf("dq_linear_forward_group  %9.2f  %9.2f\n", grp * 1e3, cgrp * 1e3);
    printf("ratio group / separate   %9.3f  %9.3f   (goal <= 0.9); outputs bit-identical\n",
           grp / sep, cgrp / csep);
    const double ops = 2.0 * N_LAYERS * (double)rows * (double)cols * (double)cols;
    const char *what[2] = {"3 x dq_linear_forward", "dq_linear_forward_group"};
    const double wall[2] = {sep, grp}, proc[2] = {csep, cgrp};
    for (int i = 0; i < 2; i++) {
        printf("%-24s %7.1f GOPS wall", what[i], ops / wall[i] * 1e-9);
        if (threads > 0)
            printf(" (%.1f%% of the %s peak x %d)", bench_peak_pct(ops / wall[i], peak->int8_ops,
                                                                   threads),
                   peak->int8_isa, threads);
        printf(", %.1f%% of one core's peak per processor-second\n",
               bench_peak_pct(ops / proc[i], peak->int8_ops, 1));
    }
    bench_print_load(" at end");

    free(b.work_sep);
    free(b.work_grp);
    for (int i = 0; i < N_LAYERS; i++) {
        free(b.y_sep[i]);
        free(b.y_grp[i]);
        dq_linear_free(layers[i]);
    }
    dq_plan_free(plan);
    dq_context_free(ctx);
    free(x);
    return 0;
}
