/* Weight-only (W4A16) product benchmark: float activations times 4-bit weights through every
 * kernel this CPU runs, next to baselines measured in the same run: the portable kernel,
 * OpenBLAS sgemm on the dequantized float weights (through dq__sgemm; its threads are whatever
 * the environment gives OpenBLAS), and for GEMV the time to stream the packed weights' bytes
 * once (a read-sum over a written buffer of the same size, warm like the weights, and cold
 * after evicting the caches) and at the one-core memory bandwidth of bench_peak_measure. Every
 * figure also says its share of this CPU's float FMA peak measured in the same run (512-bit FMA
 * for avx512, 256-bit for avx2; sgemm: the best FMA peak x the online cores).
 *
 * usage: bench_w16 [outputs [inputs [group [repeats]]]]   defaults 4096 4096 128 5 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_kernels.h"
#include "dq_gemm_simd.h"

typedef struct setup {
    const dq__wprep *w;
    const float *x;
    int64_t tokens;
    float *y;
    int32_t isa, threads;
    const uint64_t *stream; /* read-sum */
    size_t bytes;
    const float *wf;        /* sgemm */
} setup;

static void run_kernel(void *arg)
{
    const setup *s = arg;
    dq__gemm_w_f32_isa(s->isa, s->w, s->x, s->tokens, s->w->cols, NULL, s->y, s->w->rows,
                       bench_threads(s->threads));
}
static void run_read(void *arg)
{
    const setup *s = arg;
    bench_sink += bench_stream_read(s->stream, s->bytes, s->threads);
}
static void run_sgemm(void *arg)
{
    const setup *s = arg;
    dq__sgemm(false, true, s->tokens, s->w->rows, s->w->cols, 1.0f, s->x, s->w->cols, s->wf,
              s->w->cols, 0.0f, s->y, s->w->rows);
}

int main(int argc, char **argv)
{
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int64_t group = argc > 3 ? atoll(argv[3]) : 128;
    int reps = argc > 4 ? atoi(argv[4]) : 5;
    if (rows <= 0 || cols <= 0 || group < 0 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: %s [outputs [inputs [group (0 = row) [repeats]]]]\n", argv[0]);
        return 2;
    }
    const int64_t tokens[] = {1, 32, 2048};
    const int64_t max_t = 2048;
    dq__wprep *w = bench_random_weights(rows, cols, group);
    if (!w->kernel) {
        fprintf(stderr, "no SIMD kernel on this CPU: nothing to compare\n");
        return 77;
    }
    float *x = malloc((size_t)(max_t * cols) * sizeof *x);
    float *y = malloc((size_t)(max_t * rows) * sizeof *y);
    float *wf = malloc((size_t)(rows * cols) * sizeof *wf);
    bench_fill_outliers(x, max_t, cols);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const int64_t gi = i * w->groups + j / w->group_len;
            const int32_t c = w->codes[i * w->code_ld + j];
            wf[i * cols + j] = w->scales[gi] * (float)(c - w->zeros[gi]);
        }
    /* The weights as a packed dq_qmatrix holds them: two codes a byte, a float scale and zero
     * point per group. */
    const size_t wbytes = (size_t)(rows * cols / 2) + (size_t)(rows * w->groups) * 8;
    /* Written, so that it is backed by memory: a never-written allocation reads the shared
     * zero page from the caches, however cold. */
    uint64_t *stream = malloc((wbytes / 8 + 8) * 8);
    if (!x || !y || !wf || !stream) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    bench_fill_bytes(stream, (wbytes / 8 + 8) * 8);

    /* The weight-only product has no AMX kernel: AVX-512 is its best. */
    const int32_t best = dq__gemm_isa_best() < DQ_GEMM_ISA_AVX512 ? dq__gemm_isa_best()
                                                                   : DQ_GEMM_ISA_AVX512;
    const char *names[] = {"portable", "avx2", "avx512"};
    printf("W4A16 %lld x %lld, group %lld, best kernel %s, median of %d\n", (long long)rows,
           (long long)cols, (long long)w->group_len, names[best], reps);
    bench_print_cpu();
    const bench_peak *pk = bench_peak_measure();
    const double isa_peak[3] = {0.0, pk->f32_flops_256, pk->f32_flops_512};
    const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    const double t_mem = pk->stream_bytes > 0 ? (double)wbytes / pk->stream_bytes : 0.0;
    printf("streaming the packed weights once at the one-core memory bandwidth: %.1f us\n",
           t_mem * 1e6);

    for (int cold = 0; cold <= 1; cold++) {
        printf("\nGEMV (T=1), %s caches, packed weights %.2f MiB:\n", cold ? "cold" : "warm",
               (double)wbytes / 1048576.0);
        for (int32_t th = 1; th <= 2; th++) {
            setup s = {w, x, 1, y, 0, th, stream, wbytes, wf};
            const double tr = bench_time(run_read, &s, reps, cold);
            printf("  read-sum %d thr: %8.1f us  %.1f GB/s\n", th, tr * 1e6,
                   (double)wbytes / tr * 1e-9);
            for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++) {
                s.isa = isa;
                const double t = bench_time(run_kernel, &s, reps, cold);
                const double flops = 2.0 * (double)rows * (double)cols;
                printf("  %-8s %d thr: %8.1f us  %.2fx read-sum time, %.2fx one-core memory "
                       "stream time, %.1f%% of FMA peak; processor time %.1f us\n",
                       names[isa], th, t * 1e6, t / tr, t_mem > 0 ? t / t_mem : 0.0,
                       bench_peak_pct(flops / t, isa_peak[isa], th), bench_last_cpu * 1e6);
            }
        }
    }

    printf("\n%6s %-8s %3s %11s %9s %11s %11s %7s %9s %7s\n", "T", "kernel", "thr", "time ms",
           "GFLOPS", "vs portable", "vs sgemm", "%peak", "cpu ms", "%pk/cpu");
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t t = tokens[ti];
        const double flops = 2.0 * (double)t * (double)rows * (double)cols;
        /* The portable kernel is slow: timed on at most 32 tokens and scaled per token. */
        const int64_t tref = t < 32 ? t : 32;
        setup sr = {w, x, tref, y, DQ_GEMM_ISA_PORTABLE, 1, NULL, 0, wf};
        const double t_ref =
            bench_time(run_kernel, &sr, reps < 3 ? reps : 3, 0) * (double)t / (double)tref;
        setup sb = {w, x, t, y, 0, 0, NULL, 0, wf};
        const double t_blas = bench_time(run_sgemm, &sb, reps, 0);
        printf("%6lld %-8s %3s %11.3f %9.1f %11s %11s%s\n", (long long)t, "portable", "1",
               t_ref * 1e3, flops / t_ref * 1e-9, "1.00x", "",
               t > tref ? "  (scaled from 32)" : "");
        printf("%6lld %-8s %3s %11.3f %9.1f %11s %11s %6.1f%%  (of the FMA peak x %d cores)\n",
               (long long)t, "sgemm", "env", t_blas * 1e3, flops / t_blas * 1e-9, "", "1.00x",
               bench_peak_pct(flops / t_blas, bench_peak_f32(pk), ncpu), ncpu);
        for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++)
            for (int32_t th = 1; th <= 2; th++) {
                setup s = {w, x, t, y, isa, th, NULL, 0, wf};
                const double tk = bench_time(run_kernel, &s, reps, 0);
                const double ck = bench_last_cpu;
                printf("%6lld %-8s %3d %11.3f %9.1f %10.1fx %10.2fx %6.1f%% %9.3f %6.1f%%\n",
                       (long long)t, names[isa], th, tk * 1e3, flops / tk * 1e-9, t_ref / tk,
                       t_blas / tk, bench_peak_pct(flops / tk, isa_peak[isa], th), ck * 1e3,
                       bench_peak_pct(flops / ck, isa_peak[isa], 1));
            }
    }

    bench_print_load(" at end");
    free(stream);
    free(wf);
    free(y);
    free(x);
    w->kernel_free(&w->ctx, w->kernel);
    free(w->codes);
    free(w->scales);
    free(w->zeros);
    free(w->code_sums);
    free(w);
    return 0;
}
