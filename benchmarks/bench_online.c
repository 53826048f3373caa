/* Online activation path benchmark: the fused transform + per-token quantization of a layer's
 * input against, measured in the same run,
 *  - the unfused route (dq_plan_apply_act_to into a float buffer, then dq__quantize_tokens);
 *  - the two block products alone through CBLAS sgemm (one tall product per rotation for a
 *    shared matrix, one per block otherwise; OpenBLAS threads are whatever the environment
 *    gives it): the floor for many tokens;
 *  - for one token, a read-sum over the plan's rotation matrices once (warm, like the fused
 *    run, and cold after evicting the caches before each run): the floor for one token.
 * "fus cpu us": the fused runs' median processor time (all threads). The fused column's share
 * of this CPU's float FMA peak measured in the same run ("%pk": the two
 * block products' 2 x 2 x T x width x block FLOP over the best FMA peak of one core x threads).
 * Plans: width and block as given, smoothing + rotation + zigzag + rotation (random orthogonal
 * blocks: the arithmetic does not depend on how they were found), one matrix shared by all
 * blocks and one matrix per block.
 *
 * Then smoothing + one full-width randomised Hadamard rotation (duquant-quantize's full-width
 * candidate, QuaRot's shape) for 1 and 512 tokens: the fused route with its stage run as a
 * fast Walsh-Hadamard transform against the same compiled plan forced to the dense product
 * (dq__online_set_fast_hadamard false), and the unfused route; tokens per second of each.
 *
 * usage: bench_online [width [block [repeats]]]   defaults 4096 128 7
 *        bench_online hadamard [width [repeats]]  the full-width Hadamard table alone */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "bench_kernels.h"
#include "dq_gemm.h"
#include "dq_online.h"
#include "dq_pool.h"
#include "dq_transform.h"

/* Laplace activations with a few outlier channels, as LLM layers see them. */
static void fill(float *x, int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            double u = bench_uniform() - 0.5;
            double v = (u < 0 ? 1.0 : -1.0) * log(1.0 - 2.0 * fabs(u) + 1e-300);
            x[i * cols + j] = (float)(j % 97 == 3 ? 40.0 * v : v);
        }
}

/* Everything one measurement needs. */
typedef struct bench {
    const dq_plan *plan;
    const dq__online *on;
    const dq_rotation *rot[2];
    int64_t cols, rows;
    int32_t threads;
    const float *x;
    float *xt;
    uint8_t *codes;
    float *scales;
    int32_t *zeros;
    void *work_fused, *work_plan;
    size_t plan_bytes;
} bench;

/* The fused route's and the plan's workspaces for b->rows tokens (the plan's at least
 * min_plan bytes); 0, or -1 when a size is refused or memory is short. */
static int alloc_workspaces(bench *b, int32_t cpus, size_t min_plan)
{
    size_t fb = 0;
    if (!dq__online_workspace(b->on, b->rows, bench_threads(cpus), &fb) ||
        dq_plan_workspace_size(b->plan, b->rows, &b->plan_bytes) != DQ_OK)
        return -1;
    size_t pb = b->plan_bytes > min_plan ? b->plan_bytes : min_plan;
    b->work_fused = aligned_alloc(64, (fb + 63) / 64 * 64 + 64);
    b->work_plan = aligned_alloc(64, (pb + 63) / 64 * 64 + 64);
    return b->work_fused && b->work_plan ? 0 : -1;
}

static void run_fused(void *arg)
{
    bench *b = arg;
    dq__online_quantize(b->on, b->x, b->rows, b->cols, 4, DQ_QUANT_ASYM, 1.0f, b->codes, b->cols,
                        b->scales, b->zeros, b->work_fused, bench_threads(b->threads));
}

static void run_unfused(void *arg)
{
    bench *b = arg;
    if (dq_plan_apply_act_to(b->plan, b->x, b->rows, b->cols, b->cols, b->xt, b->cols,
                             b->work_plan, b->plan_bytes) != DQ_OK)
        abort();
    dq__quantize_tokens(b->xt, b->rows, b->cols, b->cols, 4, DQ_QUANT_ASYM, 1.0f, b->codes,
                        b->cols, b->scales, b->zeros, bench_threads(b->threads));
}

/* The two block products alone: x -> xt -> a second buffer, no smoothing, permutation or
 * quantization. */
static void run_sgemm(void *arg)
{
    bench *b = arg;
    const float *in = b->x;
    float *out = b->xt, *other = (float *)b->work_plan;
    for (int s = 0; s < 2; s++) {
        const dq_rotation *r = b->rot[s];
        const int32_t bs = r->block_size;
        if (r->n_mats == 1) {
            if (dq__sgemm(false, false, b->rows * r->n_blocks, bs, bs, 1.0f, in, bs, r->data, bs,
                          0.0f, out, bs) != DQ_OK)
                abort();
        } else {
            for (int64_t k = 0; k < r->n_blocks; k++)
                if (dq__sgemm(false, false, b->rows, bs, bs, 1.0f, in + k * bs, b->cols,
                              r->data + r->mat_offset[k], bs, 0.0f, out + k * bs,
                              b->cols) != DQ_OK)
                    abort();
        }
        in = out;
        out = other;
    }
}

static void run_read(void *arg)
{
    bench *b = arg;
    for (int i = 0; i < 2; i++) {
        const dq_rotation *r = b->rot[i];
        const size_t n = r->mat_offset[r->n_mats - 1] +
                         (size_t)r->mat_size[r->n_mats - 1] * (size_t)r->mat_size[r->n_mats - 1];
        bench_sink += bench_stream_read(r->data, n * sizeof(float), 1);
    }
}

/* A plan built from a filled sample with the given flags, rotation method and block. */
static dq_plan *make_plan_with(int64_t cols, uint32_t flags, int32_t method, int32_t block)
{
    const int64_t rows = 64;
    float *sample = malloc((size_t)(rows * cols) * sizeof(float));
    float *w_absmax = malloc((size_t)cols * sizeof(float));
    fill(sample, rows, cols);
    for (int64_t j = 0; j < cols; j++)
        w_absmax[j] = (float)(0.05 + bench_uniform());
    dq_plan_params pp;
    dq_plan_params_init(&pp, sizeof pp);
    pp.flags = flags;
    pp.method = method;
    pp.block_size = block;
    dq_plan *plan = NULL;
    if (dq_plan_build_from_sample(NULL, &pp, NULL, sample, rows, cols, cols, w_absmax, &plan) !=
        DQ_OK)
        abort();
    free(sample);
    free(w_absmax);
    return plan;
}

static dq_plan *make_plan(int64_t cols, int32_t block, bool per_block)
{
    return make_plan_with(cols, DQ_PLAN_F_DEFAULT | (per_block ? DQ_PLAN_F_PER_BLOCK_R : 0u),
                          DQ_ROT_METHOD_RANDOM, block);
}

/* Smoothing and one randomised Hadamard rotation of the whole width. */
static dq_plan *make_hadamard_plan(int64_t cols)
{
    return make_plan_with(cols, DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE,
                          DQ_ROT_METHOD_RANDOM_HADAMARD, (int32_t)cols);
}

/* The full-width Hadamard table (x, xt, codes, scales, zeros hold 512 tokens). */
static int bench_hadamard(int64_t cols, int reps, int32_t cpus, const float *x, float *xt,
                          uint8_t *codes, float *scales, int32_t *zeros)
{
    const int64_t tokens[] = {1, 512};
    dq_plan *plan = make_hadamard_plan(cols);
    dq__online *on = NULL;
    const double t0 = bench_now();
    if (dq__online_create(NULL, plan, &on) != DQ_OK)
        return 1;
    const double t_create = bench_now() - t0;
    printf("\nsmoothing + full-width randomised Hadamard rotation, width %lld: %d stage(s) as a "
           "fast Walsh-Hadamard transform; compiling the plan took %.1f ms\n", (long long)cols,
           (int)dq__online_hadamard_stages(on), t_create * 1e3);
    printf("%5s %3s %10s %10s %10s %10s %10s %10s %9s %9s\n", "T", "thr", "fwht us", "fwht tok/s",
           "dense us", "dense tok/s", "unfused us", "unf tok/s", "dns/fwht", "unf/fwht");
    bench b = {.plan = plan, .on = on, .cols = cols, .x = x, .xt = xt, .codes = codes,
               .scales = scales, .zeros = zeros};
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t t = tokens[ti];
        b.rows = t;
        if (alloc_workspaces(&b, cpus, 0))
            return 1;
        for (int32_t th = 1; th <= cpus && th <= 2; th++) {
            b.threads = th;
            dq__online_set_fast_hadamard(on, true);
            const double t_f = bench_time(run_fused, &b, reps, 0);
            dq__online_set_fast_hadamard(on, false);
            const double t_d = bench_time(run_fused, &b, reps, 0);
            dq__online_set_fast_hadamard(on, true);
            const double t_u = bench_time(run_unfused, &b, reps, 0);
            printf("%5lld %3d %10.1f %10.0f %10.1f %11.0f %10.1f %10.0f %8.1fx %8.1fx\n",
                   (long long)t, th, t_f * 1e6, (double)t / t_f, t_d * 1e6, (double)t / t_d,
                   t_u * 1e6, (double)t / t_u, t_d / t_f, t_u / t_f);
        }
        free(b.work_fused);
        free(b.work_plan);
    }
    dq__online_free(on);
    dq_plan_free(plan);
    return 0;
}

int main(int argc, char **argv)
{
    const char *prog = argv[0];
    const bool had_only = argc > 1 && strcmp(argv[1], "hadamard") == 0;
    if (had_only) {
        argc--;
        argv++;
    }
    const int64_t cols = argc > 1 ? atoll(argv[1]) : 4096;
    const int32_t block = had_only ? 2 : argc > 2 ? atoi(argv[2]) : 128;
    const int reps = had_only ? (argc > 2 ? atoi(argv[2]) : 7) : argc > 3 ? atoi(argv[3]) : 7;
    if (cols <= 0 || block < 2 || cols % block != 0 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: %s [width [block (divides width) [repeats (1..64)]]]\n"
                        "       %s hadamard [width [repeats (1..64)]]\n",
                prog, prog);
        return 2;
    }
    const int64_t tokens[] = {1, 32, 2048}, max_t = 2048;
    const int32_t cpus = dq__threads(bench_threads(0), INT64_MAX);
    float *x = malloc((size_t)(max_t * cols) * sizeof(float));
    float *xt = malloc((size_t)(max_t * cols) * sizeof(float));
    uint8_t *codes = malloc((size_t)(max_t * cols));
    float *scales = malloc((size_t)max_t * sizeof(float));
    int32_t *zeros = malloc((size_t)max_t * sizeof(int32_t));
    if (!x || !xt || !codes || !scales || !zeros)
        return 1;
    fill(x, max_t, cols);

    printf("online transform + 4-bit ASYM quantization, width %lld, block %d, median of %d\n",
           (long long)cols, had_only ? (int)cols : block, reps);
    bench_print_cpu();
    const double f32_peak = had_only ? 0 : bench_peak_f32(bench_peak_measure());
    printf("sgemm: OpenBLAS with the environment's threads; fused/unfused: library threads\n");
    if (!had_only)
        printf("\n%-9s %5s %3s %10s %6s %10s %10s %10s %8s %8s %10s %10s %8s\n", "plan", "T",
               "thr", "fused us", "%pk", "fus cpu us", "unfused us", "sgemm us", "unf/fus",
               "fus/sgm", "read us", "cold rd us", "fus/read");
    for (int per_block = 0; per_block < (had_only ? 0 : 2); per_block++) {
        dq_plan *plan = make_plan(cols, block, per_block);
        dq__online *on = NULL;
        if (dq__online_create(NULL, plan, &on) != DQ_OK)
            return 1;
        bench b = {.plan = plan, .on = on, .cols = cols, .x = x, .xt = xt, .codes = codes,
                   .scales = scales, .zeros = zeros};
        if (dq_plan_rotation(plan, 0, &b.rot[0]) != DQ_OK ||
            dq_plan_rotation(plan, 1, &b.rot[1]) != DQ_OK || !b.rot[0] || !b.rot[1])
            return 1;
        for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
            const int64_t t = tokens[ti];
            b.rows = t;
            /* the plan's workspace doubles as the sgemm route's second buffer */
            if (alloc_workspaces(&b, cpus, (size_t)(t * cols) * sizeof(float)))
                return 1;
            const double t_sgemm = bench_time(run_sgemm, &b, reps, 0);
            double t_read = 0, t_read_cold = 0;
            if (t == 1) {
                t_read = bench_time(run_read, &b, reps, 0);
                t_read_cold = bench_time(run_read, &b, reps, 1);
            }
            for (int32_t th = 1; th <= cpus && th <= 2; th++) {
                b.threads = th;
                const double t_f = bench_time(run_fused, &b, reps, 0), c_f = bench_last_cpu;
                const double t_u = bench_time(run_unfused, &b, reps, 0);
                const double flops = 4.0 * (double)t * (double)cols * (double)block;
                printf("%-9s %5lld %3d %10.1f %5.1f%% %10.1f %10.1f %10.1f %7.2fx %7.2fx",
                       per_block ? "per-block" : "shared", (long long)t, th, t_f * 1e6,
                       bench_peak_pct(flops / t_f, f32_peak, th), c_f * 1e6, t_u * 1e6,
                       t_sgemm * 1e6,
                       t_u / t_f, t_f / t_sgemm);
                if (t == 1)
                    printf(" %10.1f %10.1f %7.2fx\n", t_read * 1e6, t_read_cold * 1e6,
                           t_f / t_read);
                else
                    printf(" %10s %10s %8s\n", "", "", "");
            }
            if (t == 1) {
                /* The single token cold too: the matrices come from memory in both. */
                b.threads = 1;
                const double t_fc = bench_time(run_fused, &b, reps, 1);
                printf("%-9s %5s %3s %10.1f %6s %10s %10s %10s %8s %8s %10s %10.1f %7.2fx  "
                       "(cold)\n", per_block ? "per-block" : "shared", "1", "1", t_fc * 1e6, "",
                       "", "", "", "", "", "", t_read_cold * 1e6, t_fc / t_read_cold);
            }
            free(b.work_fused);
            free(b.work_plan);
        }
        dq__online_free(on);
        dq_plan_free(plan);
    }
    /* Widths beyond DQ_MAX_BLOCK make no dense block to compare with. */
    if (cols <= 4096 && bench_hadamard(cols, reps, cpus, x, xt, codes, scales, zeros) != 0)
        return 1;
    bench_print_load(" at end");
    free(zeros);
    free(scales);
    free(codes);
    free(xt);
    free(x);
    return 0;
}
