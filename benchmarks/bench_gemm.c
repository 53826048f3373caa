/* Integer product benchmark: W4A4 GEMV and GEMM through every kernel this CPU runs, next to
 * baselines measured in the same run: the portable kernel, OpenBLAS sgemm of the same shape in
 * float (through dq__sgemm; its threads are whatever the environment gives OpenBLAS), and for
 * GEMV the time to stream the weights' bytes once at the bandwidth this run measures (a
 * read-sum over a buffer of the same size, warm like the weights, and cold after evicting the
 * caches).
 *
 * usage: bench_gemm [outputs [inputs [group [repeats]]]]   defaults 4096 4096 0 (whole rows) 7 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "dq_gemm_simd.h"
#include "dq_threads.h"

/* Read-sum over n bytes (a multiple of 64 is read), wide loads so that memory, not the adds,
 * limits it. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t read_sum_avx2(const uint64_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 16 <= n / 8; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t v[4];
    _mm256_storeu_si256((__m256i *)v, a0);
    return v[0] + v[1] + v[2] + v[3];
}
#endif
static uint64_t read_sum(const uint64_t *p, size_t n)
{
#if defined(__GNUC__) && defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        return read_sum_avx2(p, n);
#endif
    uint64_t a[8] = {0};
    for (size_t i = 0; i + 8 <= n / 8; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/* The same read split over threads, as the kernels split the weights. */
typedef struct read_job {
    const uint64_t *p;
    size_t n;
    uint64_t sums[64];
} read_job;
static void read_part(void *arg, int32_t w, int32_t n)
{
    read_job *j = arg;
    int64_t b, e;
    dq__split((int64_t)(j->n / 64), w, n, &b, &e);
    j->sums[w] = read_sum(j->p + b * 8, (size_t)(e - b) * 64);
}
static uint64_t read_threads(const uint64_t *p, size_t n, int32_t threads)
{
    read_job j = {.p = p, .n = n};
    dq__parallel_run(threads, read_part, &j);
    uint64_t s = 0;
    for (int32_t w = 0; w < threads; w++)
        s += j.sums[w];
    return s;
}

typedef struct setup {
    dq__wprep *w;
    dq__aq a;
    float *y;
    int reps;
} setup;

static int32_t isa_arg;
static int32_t threads_arg;
static void run_kernel(setup *s)
{
    dq__gemm_w_a_isa(isa_arg, s->w, &s->a, NULL, s->y, s->w->rows, threads_arg);
}
static void run_ref(setup *s)
{
    dq__gemm_w_a_ref(s->w, &s->a, NULL, s->y, s->w->rows);
}

/* Median seconds of reps runs, caches warm (cold: evicted before each run). */
static double time_it(void (*fn)(setup *), setup *s, int reps, int cold)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    if (!cold)
        fn(s);
    for (int r = 0; r < reps; r++) {
        if (cold)
            bench_evict_caches();
        double t0 = bench_now();
        fn(s);
        t[r] = bench_now() - t0;
    }
    return bench_median(t, reps);
}

static double time_read(const uint64_t *buf, size_t bytes, int32_t threads, int reps, int cold)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    bench_sink = read_threads(buf, bytes, threads);
    for (int r = 0; r < reps; r++) {
        if (cold)
            bench_evict_caches();
        double t0 = bench_now();
        bench_sink = read_threads(buf, bytes, threads);
        t[r] = bench_now() - t0;
    }
    return bench_median(t, reps);
}

static dq__wprep *make_weights(int64_t rows, int64_t cols, int64_t group)
{
    dq__wprep *w = calloc(1, sizeof *w);
    w->ctx = dq__default_context;
    w->rows = rows;
    w->cols = cols;
    w->bits = 4;
    w->group_len = group <= 0 || group > cols ? cols : group;
    w->groups = (cols + w->group_len - 1) / w->group_len;
    w->code_ld = (cols + 63) / 64 * 64;
    w->codes = calloc((size_t)(rows * w->code_ld), 1);
    w->scales = malloc((size_t)(rows * w->groups) * sizeof(float));
    w->zeros = malloc((size_t)(rows * w->groups) * sizeof(int32_t));
    w->code_sums = calloc((size_t)(rows * w->groups), sizeof(int32_t));
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            int8_t c = (int8_t)((int)(bench_rand64() % 16) - 8);
            w->codes[i * w->code_ld + j] = c;
            w->code_sums[i * w->groups + j / w->group_len] += c;
        }
        for (int64_t g = 0; g < w->groups; g++) {
            w->scales[i * w->groups + g] = 0.01f + 0.001f * (float)(bench_rand64() % 100);
            w->zeros[i * w->groups + g] = (int32_t)(bench_rand64() % 16) - 8;
        }
    }
    dq__gemm_prepare(w);
    return w;
}

int main(int argc, char **argv)
{
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int64_t group = argc > 3 ? atoll(argv[3]) : 0;
    int reps = argc > 4 ? atoi(argv[4]) : 7;
    if (rows <= 0 || cols <= 0 || group < 0 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: %s [outputs [inputs [group (0 = row) [repeats]]]]\n", argv[0]);
        return 2;
    }
    const int64_t tokens[] = {1, 32, 2048};
    const int64_t max_t = 2048;
    dq__wprep *w = make_weights(rows, cols, group);
    if (!w->kernel) {
        fprintf(stderr, "no SIMD kernel on this CPU: nothing to compare\n");
        return 77;
    }
    uint8_t *codes = malloc((size_t)(max_t * cols));
    float *sx = malloc((size_t)max_t * sizeof *sx);
    int32_t *zx = malloc((size_t)max_t * sizeof *zx);
    for (int64_t i = 0; i < max_t * cols; i++)
        codes[i] = (uint8_t)(bench_rand64() % 16);
    for (int64_t i = 0; i < max_t; i++) {
        sx[i] = 0.02f + 0.001f * (float)(bench_rand64() % 50);
        zx[i] = (int32_t)(bench_rand64() % 16);
    }
    float *y = malloc((size_t)(max_t * rows) * sizeof *y);
    float *xf = malloc((size_t)(max_t * cols) * sizeof *xf);
    float *wf = malloc((size_t)(rows * cols) * sizeof *wf);
    for (int64_t i = 0; i < max_t * cols; i++)
        xf[i] = (float)codes[i] - 7.5f;
    for (int64_t i = 0; i < rows * cols; i++)
        wf[i] = (float)w->codes[(i / cols) * w->code_ld + i % cols];
    /* The weights as a packed dq_qmatrix holds them: two codes a byte, a float scale and zero
     * point per group. */
    const size_t wbytes = (size_t)(rows * cols / 2) + (size_t)(rows * w->groups) * 8;
    uint64_t *stream = calloc(wbytes / 8 + 8, 8);

    const int32_t best = dq__gemm_isa_best();
    const char *names[] = {"portable", "avx2", "avx512"};
    printf("W4A4 %lld x %lld, group %lld, best kernel %s, median of %d\n", (long long)rows,
           (long long)cols, (long long)w->group_len, names[best], reps);
    /* Other processes distort every figure: say how busy the machine was. */
    FILE *load = fopen("/proc/loadavg", "r");
    char line[128];
    if (load && fgets(line, sizeof line, load))
        printf("load average at start: %s", line);
    if (load)
        fclose(load);

    for (int cold = 0; cold <= 1; cold++) {
        setup s = {w, {1, cols, cols, codes, sx, zx}, y, reps};
        printf("\nGEMV (T=1), %s caches, weights %.2f MiB:\n", cold ? "cold" : "warm",
               (double)wbytes / 1048576.0);
        for (int32_t th = 1; th <= 2; th++) {
            double tr = time_read(stream, wbytes, th, reps, cold);
            printf("  read-sum %d thr: %8.1f us  %.1f GB/s\n", th, tr * 1e6,
                   (double)wbytes / tr * 1e-9);
            for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++) {
                isa_arg = isa;
                threads_arg = th;
                double t = time_it(run_kernel, &s, reps, cold);
                printf("  %-8s %d thr: %8.1f us  %.2fx stream time\n", names[isa], th, t * 1e6,
                       t / tr);
            }
        }
    }

    printf("\n%6s %-8s %3s %11s %9s %11s %11s\n", "T", "kernel", "thr", "time ms", "GOPS",
           "vs portable", "vs sgemm");
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t t = tokens[ti];
        setup s = {w, {t, cols, cols, codes, sx, zx}, y, reps};
        const double ops = 2.0 * (double)t * (double)rows * (double)cols;
        /* The portable kernel is slow: timed on at most 32 tokens and scaled per token. */
        const int64_t tref = t < 32 ? t : 32;
        setup sr = {w, {tref, cols, cols, codes, sx, zx}, y, reps};
        const double t_ref = time_it(run_ref, &sr, reps < 3 ? reps : 3, 0) * (double)t /
                             (double)tref;
        double tb[64];
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            dq__sgemm(false, true, t, rows, cols, 1.0f, xf, cols, wf, cols, 0.0f, y, rows);
            tb[r] = bench_now() - t0;
        }
        const double t_blas = bench_median(tb, reps);
        printf("%6lld %-8s %3s %11.3f %9.1f %11s %11s%s\n", (long long)t, "portable", "1",
               t_ref * 1e3, ops / t_ref * 1e-9, "1.00x", "", t > tref ? "  (scaled from 32)" : "");
        printf("%6lld %-8s %3s %11.3f %9.1f %11s %11s\n", (long long)t, "sgemm", "env",
               t_blas * 1e3, ops / t_blas * 1e-9, "", "1.00x");
        for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++)
            for (int32_t th = 1; th <= 2; th++) {
                isa_arg = isa;
                threads_arg = th;
                double tk = time_it(run_kernel, &s, reps, 0);
                printf("%6lld %-8s %3d %11.3f %9.1f %10.1fx %10.2fx\n", (long long)t, names[isa],
                       th, tk * 1e3, ops / tk * 1e-9, t_ref / tk, t_blas / tk);
            }
    }

    /* Per-token activation quantization (4-bit ASYM, clip 1) of T x inputs floats. */
    printf("\n%6s %-8s %3s %11s %9s %11s\n", "T", "quantize", "thr", "time us", "GB/s",
           "vs portable");
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t t = tokens[ti];
        double tq[64];
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            dq__quantize_tokens_ref(xf, t, cols, cols, 4, DQ_QUANT_ASYM, 1.0f, codes, cols, sx,
                                    zx);
            tq[r] = bench_now() - t0;
        }
        const double t_ref = bench_median(tq, reps);
        const double bytes = (double)(t * cols) * 5.0;
        printf("%6lld %-8s %3s %11.1f %9.1f %11s\n", (long long)t, "portable", "1", t_ref * 1e6,
               bytes / t_ref * 1e-9, "1.00x");
        for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++)
            for (int32_t th = 1; th <= 2; th++) {
                for (int r = 0; r < reps; r++) {
                    double t0 = bench_now();
                    dq__quantize_tokens_isa(isa, xf, t, cols, cols, 4, DQ_QUANT_ASYM, 1.0f, codes,
                                            cols, sx, zx, th);
                    tq[r] = bench_now() - t0;
                }
                const double tk = bench_median(tq, reps);
                printf("%6lld %-8s %3d %11.1f %9.1f %10.1fx\n", (long long)t, names[isa], th,
                       tk * 1e6, bytes / tk * 1e-9, t_ref / tk);
            }
    }

    free(stream);
    free(wf);
    free(xf);
    free(y);
    free(zx);
    free(sx);
    free(codes);
    w->kernel_free(&w->ctx, w->kernel);
    free(w->codes);
    free(w->scales);
    free(w->zeros);
    free(w->code_sums);
    free(w);
    return 0;
}
