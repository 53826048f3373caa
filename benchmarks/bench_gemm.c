/* Integer product benchmark: W4A4 GEMV and GEMM through every kernel this CPU runs, next to
 * baselines measured in the same run: the portable kernel, OpenBLAS sgemm of the same shape in
 * float (through dq__sgemm; its threads are whatever the environment gives OpenBLAS), and for
 * GEMV the time to stream the weights' bytes once at the bandwidth this run measures (a
 * read-sum over a written buffer of the same size, warm like the weights, and cold after
 * evicting the caches) and at the one-core memory bandwidth of bench_peak_measure. Every
 * figure also says its share of this CPU's int8 peak measured in the same run (the peak of the
 * kernel's instruction set: VNNI vpdpbusd for avx512, vpmaddubsw + vpmaddwd for avx2; a
 * multiply-add counts 2 ops; amx, whose tiles are not measured, against the VNNI peak, so that
 * its share above 100 % is its gain over any VNNI kernel), and sgemm its share of the FMA peak
 * of all online cores.
 *
 * usage: bench_gemm [outputs [inputs [group [repeats]]]]   defaults 4096 4096 0 (whole rows) 7
 *
 * bench_gemm --groups [outputs [inputs [repeats]]] compares grouped W4A4 instead: weights and
 * activations per group of 32, 64 and 128 against whole rows (per-token activations), the
 * fastest kernel, 1 and 2 threads, at 1, 32 and 512 tokens: the product alone and the
 * activation quantization plus the product (what a layer runs after its transform), each
 * with its ratio to whole rows measured in the same run; also grouped weights with per-token
 * activations (acts "token"), which isolates what the activation groups add.
 *
 * bench_gemm --gemv-streams [threads [pairs]] (defaults 2 and 300) times the AVX-512 GEMV over
 * the linear layers of two LLaMA-2-7B-shaped blocks (about 200 MiB of weights, read from memory
 * as a decode step reads them) with 1 to 8 weight streams in flight per thread against the
 * default count, and a read-sum of the same bytes: each pair of passes runs back to back,
 * alternating which goes first, and the ratio is the median over the pairs, so that the
 * machine's other jobs, whose share of the memory bandwidth changes from second to second on a
 * shared host, weigh on both sides alike. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"
#include "bench_kernels.h"
#include "dq_gemm_simd.h"

typedef struct setup {
    dq__wprep *w;
    dq__aq a;
    float *y;
    int reps;
} setup;

static const char *const names[] = {"portable", "avx2", "avx512", "amx"}; /* DQ_GEMM_ISA_* */
static int32_t isa_arg;
static int32_t threads_arg;
static void run_kernel(void *arg)
{
    const setup *s = arg;
    dq__gemm_w_a_isa(isa_arg, s->w, &s->a, NULL, s->y, s->w->rows, bench_threads(threads_arg));
}
/* The weights' bytes streamed once, the floor for GEMV. */
typedef struct read_setup {
    const void *buf;
    size_t bytes;
    int32_t threads;
} read_setup;
static void run_read(void *arg)
{
    const read_setup *r = arg;
    bench_sink += bench_stream_read(r->buf, r->bytes, r->threads);
}

/* ---- grouped against whole rows ---- */

typedef struct grouped_setup {
    const dq__wprep *w;
    dq__aq a;
    const float *x;
    uint8_t *codes;
    float *sx;
    int32_t *zx;
    float *y;
    int32_t isa, threads;
} grouped_setup;

static void run_quantize(void *arg)
{
    const grouped_setup *s = arg;
    const dq_context *ctx = bench_threads(s->threads);
    if (s->a.groups > 0)
        dq__quantize_groups_isa(s->isa, s->x, s->a.rows, s->a.cols, s->a.cols, s->w->group_len,
                                4, DQ_QUANT_ASYM, 1.0f, s->codes, s->a.code_ld, s->sx, s->zx,
                                ctx);
    else
        dq__quantize_tokens_isa(s->isa, s->x, s->a.rows, s->a.cols, s->a.cols, 4, DQ_QUANT_ASYM,
                                1.0f, s->codes, s->a.code_ld, s->sx, s->zx, ctx);
}

static void run_product(void *arg)
{
    const grouped_setup *s = arg;
    dq__gemm_w_a_isa(s->isa, s->w, &s->a, NULL, s->y, s->w->rows, bench_threads(s->threads));
}

static void free_weights(dq__wprep *w)
{
    w->kernel_free(&w->ctx, w->kernel);
    free(w->codes);
    free(w->scales);
    free(w->zeros);
    free(w->code_sums);
    free(w);
}

static int grouped_main(int64_t rows, int64_t cols, int reps)
{
    const int64_t groups[] = {0, 32, 64, 128};
    const int64_t tokens[] = {1, 32, 512};
    const int64_t max_t = 512, n_groups = (int64_t)(sizeof groups / sizeof groups[0]);
    dq__wprep *w[4];
    for (int64_t g = 0; g < n_groups; g++)
        w[g] = bench_random_weights(rows, cols, groups[g]);
    if (!w[0]->kernel) {
        fprintf(stderr, "no SIMD kernel on this CPU: nothing to compare\n");
        return 77;
    }
    float *x = malloc((size_t)(max_t * cols) * sizeof *x);
    uint8_t *codes = malloc((size_t)(max_t * cols));
    /* Enough scales for groups of 32 (the most per token). */
    const int64_t per_token = (cols + 31) / 32;
    float *sx = malloc((size_t)(max_t * per_token) * sizeof *sx);
    int32_t *zx = malloc((size_t)(max_t * per_token) * sizeof *zx);
    float *y = malloc((size_t)(max_t * rows) * sizeof *y);
    if (!x || !codes || !sx || !zx || !y) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* Activations with a few large channels, as real layer inputs have. */
    for (int64_t i = 0; i < max_t * cols; i++) {
        const double u = (double)(bench_rand64() % 2000001) / 1e6 - 1.0;
        x[i] = (float)(i % cols % 97 == 0 ? 20.0 * u : u);
    }
    const int32_t isa = dq__gemm_isa_best();
    printf("W4A4 %lld x %lld, grouped (weights and activations) against whole rows (per-token "
           "activations), kernel %s, median of %d\n",
           (long long)rows, (long long)cols, names[isa], reps);
    bench_print_cpu();
    printf("\n%6s %3s %6s %6s %11s %9s %13s %9s\n", "T", "thr", "group", "acts", "product ms",
           "vs rows", "quant+prod ms", "vs rows");
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++)
        for (int32_t th = 1; th <= 2; th++) {
            double base_p = 0.0, base_qp = 0.0;
            for (int64_t k = 0; k < 2 * n_groups - 1; k++) {
                const int64_t t = tokens[ti];
                /* k: whole rows, then per group size: activations per group, per token. */
                const int64_t g = (k + 1) / 2;
                const int per_group = g > 0 && k % 2 == 1;
                const int64_t ag = per_group ? w[g]->groups : 0;
                grouped_setup s = {w[g], {t, cols, cols, codes, sx, zx, ag}, x, codes, sx, zx,
                                   y, isa, th};
                run_quantize(&s); /* codes for the product */
                const double tq = bench_time(run_quantize, &s, reps, 0);
                const double tp = bench_time(run_product, &s, reps, 0);
                if (g == 0) {
                    base_p = tp;
                    base_qp = tq + tp;
                }
                char name[16];
                snprintf(name, sizeof name, "%lld", (long long)groups[g]);
                printf("%6lld %3d %6s %6s %11.3f %8.2fx %13.3f %8.2fx\n", (long long)t, th,
                       g == 0 ? "row" : name, per_group ? "group" : "token", tp * 1e3,
                       tp / base_p, (tq + tp) * 1e3, (tq + tp) / base_qp);
            }
        }
    bench_print_load(" at end");
    for (int64_t g = 0; g < n_groups; g++)
        free_weights(w[g]);
    free(x);
    free(codes);
    free(sx);
    free(zx);
    free(y);
    return 0;
}

/* ---- GEMV weight streams ---- */

enum { DECODE_LAYERS = 8 };

typedef struct decode_setup {
    dq__wprep *w[DECODE_LAYERS];
    dq__aq a[DECODE_LAYERS];
    float *y;
    int32_t threads;
} decode_setup;

/* One pass: every weight once; streams 0 reads the packed codes instead of multiplying. */
static double decode_pass(const decode_setup *d, int64_t streams)
{
    dq__gemm_set_gemv_blocks_avx512(streams);
    const double t0 = bench_now();
    for (int m = 0; m < DECODE_LAYERS; m++) {
        const dq__wpack *wp = d->w[m]->kernel;
        if (streams == 0) {
            bench_sink += bench_stream_read(wp->codes, wp->code_bytes, d->threads);
        } else {
            dq__gemm_w_a_isa(DQ_GEMM_ISA_AVX512, d->w[m], &d->a[m], NULL, d->y, d->w[m]->rows,
                             bench_threads(d->threads));
        }
    }
    const double t = bench_now() - t0;
    dq__gemm_set_gemv_blocks_avx512(0);
    return t;
}

static int gemv_streams_main(int32_t threads, int pairs)
{
    if (!dq__gemm_isa_supported(DQ_GEMM_ISA_AVX512)) {
        fprintf(stderr, "no AVX-512 VNNI on this CPU: the GEMV stream count is not compared\n");
        return 77;
    }
    /* q, k, v fused; o; gate and up fused; down: two blocks of LLaMA-2-7B. */
    const int64_t shapes[4][2] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}};
    decode_setup d = {.threads = threads};
    d.y = malloc(22016 * sizeof *d.y);
    double bytes = 0.0;
    for (int m = 0; m < DECODE_LAYERS; m++) {
        const int64_t rows = shapes[m % 4][0], cols = shapes[m % 4][1];
        d.w[m] = bench_random_weights(rows, cols, 0);
        free(d.w[m]->codes); /* the kernel reads the repacked copy only */
        d.w[m]->codes = NULL;
        uint8_t *codes = malloc((size_t)cols);
        float *sx = malloc(sizeof *sx);
        int32_t *zx = malloc(sizeof *zx);
        if (!d.y || !d.w[m]->kernel || !codes || !sx || !zx) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        for (int64_t i = 0; i < cols; i++)
            codes[i] = (uint8_t)(bench_rand64() % 16);
        *sx = 0.03f;
        *zx = 8;
        d.a[m] = (dq__aq){1, cols, cols, codes, sx, zx, 0};
        bytes += (double)((const dq__wpack *)d.w[m]->kernel)->code_bytes;
    }
    printf("AVX-512 GEMV, one token, the linear layers of two LLaMA-2-7B-shaped blocks (%.1f MiB "
           "of 4-bit codes), %d thread(s), %d pairs of passes\n",
           bytes / 1048576.0, (int)threads, pairs);
    bench_print_cpu();
    double *ta = malloc((size_t)pairs * sizeof *ta), *tb = malloc((size_t)pairs * sizeof *tb);
    double *ratio = malloc((size_t)pairs * sizeof *ratio);
    if (!ta || !tb || !ratio) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    const int64_t base = DQ_GEMM_GEMV_BLOCKS_AVX512;
    decode_pass(&d, base); /* warm-up: threads started, pages touched */
    printf("\n%-22s %12s %10s %12s %10s %16s\n", "streams per thread", "median ms", "GB/s",
           "default ms", "GB/s", "ratio (p25-p75)");
    for (int64_t streams = 0; streams <= 8; streams++) {
        if (streams == base)
            continue;
        for (int p = 0; p < pairs; p++) {
            if (p % 2 == 0) {
                ta[p] = decode_pass(&d, streams);
                tb[p] = decode_pass(&d, base);
            } else {
                tb[p] = decode_pass(&d, base);
                ta[p] = decode_pass(&d, streams);
            }
            ratio[p] = ta[p] / tb[p];
        }
        const double ma = bench_median(ta, pairs), mb = bench_median(tb, pairs);
        const double mr = bench_median(ratio, pairs); /* sorts ratio: quartiles below */
        char name[32];
        snprintf(name, sizeof name, streams == 0 ? "read-sum" : "%lld", (long long)streams);
        printf("%-22s %12.3f %10.1f %12.3f %10.1f %7.3f (%.3f-%.3f)\n", name, ma * 1e3,
               bytes / ma * 1e-9, mb * 1e3, bytes / mb * 1e-9, mr, ratio[pairs / 4],
               ratio[3 * pairs / 4]);
    }
    printf("(ratio: time against the default of %lld streams in the same pair; below 1 is "
           "faster)\n",
           (long long)base);
    bench_print_load(" at end");
    for (int m = 0; m < DECODE_LAYERS; m++) {
        free((void *)(uintptr_t)d.a[m].codes);
        free((void *)(uintptr_t)d.a[m].scales);
        free((void *)(uintptr_t)d.a[m].zeros);
        free_weights(d.w[m]);
    }
    free(d.y);
    free(ta);
    free(tb);
    free(ratio);
    return 0;
}

static void run_ref(void *arg)
{
    const setup *s = arg;
    dq__gemm_w_a_ref(s->w, &s->a, NULL, s->y, s->w->rows);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--groups") == 0) {
        int64_t r = argc > 2 ? atoll(argv[2]) : 4096, c = argc > 3 ? atoll(argv[3]) : 4096;
        int n = argc > 4 ? atoi(argv[4]) : 7;
        if (r <= 0 || c < 128 || n < 1 || n > 64) {
            fprintf(stderr, "usage: %s --groups [outputs [inputs >= 128 [repeats]]]\n",
                    argv[0]);
            return 2;
        }
        return grouped_main(r, c, n);
    }
    if (argc > 1 && strcmp(argv[1], "--gemv-streams") == 0) {
        const int32_t th = argc > 2 ? atoi(argv[2]) : 2;
        const int pairs = argc > 3 ? atoi(argv[3]) : 300;
        if (th < 1 || th > 64 || pairs < 4 || pairs > 100000) {
            fprintf(stderr, "usage: %s --gemv-streams [threads 1-64 [pairs 4-100000]]\n",
                    argv[0]);
            return 2;
        }
        return gemv_streams_main(th, pairs);
    }
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int64_t group = argc > 3 ? atoll(argv[3]) : 0;
    int reps = argc > 4 ? atoi(argv[4]) : 7;
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
    /* Written, so that it is backed by memory: a never-written allocation reads the shared
     * zero page from the caches, however cold. */
    uint64_t *stream = malloc((wbytes / 8 + 8) * 8);
    if (!codes || !sx || !zx || !y || !xf || !wf || !stream) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    bench_fill_bytes(stream, (wbytes / 8 + 8) * 8);

    const int32_t best = dq__gemm_isa_best();
    printf("W4A4 %lld x %lld, group %lld, best kernel %s, median of %d\n", (long long)rows,
           (long long)cols, (long long)w->group_len, names[best], reps);
    bench_print_cpu();
    const bench_peak *pk = bench_peak_measure();
    const double isa_peak[4] = {0.0, pk->int8_ops_avx2, pk->int8_ops, pk->int8_ops};
    const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    const double t_mem = pk->stream_bytes > 0 ? (double)wbytes / pk->stream_bytes : 0.0;
    printf("streaming the weights once at the one-core memory bandwidth: %.1f us\n",
           t_mem * 1e6);

    for (int cold = 0; cold <= 1; cold++) {
        setup s = {w, {1, cols, cols, codes, sx, zx, 0}, y, reps};
        printf("\nGEMV (T=1), %s caches, weights %.2f MiB:\n", cold ? "cold" : "warm",
               (double)wbytes / 1048576.0);
        for (int32_t th = 1; th <= 2; th++) {
            read_setup rs = {stream, wbytes, th};
            double tr = bench_time(run_read, &rs, reps, cold);
            printf("  read-sum %d thr: %8.1f us  %.1f GB/s\n", th, tr * 1e6,
                   (double)wbytes / tr * 1e-9);
            for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++) {
                isa_arg = isa;
                threads_arg = th;
                double t = bench_time(run_kernel, &s, reps, cold);
                const double ops = 2.0 * (double)rows * (double)cols;
                printf("  %-8s %d thr: %8.1f us  %.2fx read-sum time, %.2fx one-core memory "
                       "stream time, %.1f%% of int8 peak; processor time %.1f us\n",
                       names[isa], th, t * 1e6, t / tr, t_mem > 0 ? t / t_mem : 0.0,
                       bench_peak_pct(ops / t, isa_peak[isa], th), bench_last_cpu * 1e6);
            }
        }
    }

    printf("\n%6s %-8s %3s %11s %9s %11s %11s %7s %9s %7s\n", "T", "kernel", "thr", "time ms",
           "GOPS", "vs portable", "vs sgemm", "%peak", "cpu ms", "%pk/cpu");
    for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
        const int64_t t = tokens[ti];
        setup s = {w, {t, cols, cols, codes, sx, zx, 0}, y, reps};
        const double ops = 2.0 * (double)t * (double)rows * (double)cols;
        /* The portable kernel is slow: timed on at most 32 tokens and scaled per token. */
        const int64_t tref = t < 32 ? t : 32;
        setup sr = {w, {tref, cols, cols, codes, sx, zx, 0}, y, reps};
        const double t_ref = bench_time(run_ref, &sr, reps < 3 ? reps : 3, 0) * (double)t /
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
        printf("%6lld %-8s %3s %11.3f %9.1f %11s %11s %6.1f%%  (of the FMA peak x %d cores)\n",
               (long long)t, "sgemm", "env", t_blas * 1e3, ops / t_blas * 1e-9, "", "1.00x",
               bench_peak_pct(ops / t_blas, bench_peak_f32(pk), ncpu), ncpu);
        for (int32_t isa = DQ_GEMM_ISA_AVX2; isa <= best; isa++)
            for (int32_t th = 1; th <= 2; th++) {
                isa_arg = isa;
                threads_arg = th;
                double tk = bench_time(run_kernel, &s, reps, 0);
                const double ck = bench_last_cpu;
                printf("%6lld %-8s %3d %11.3f %9.1f %10.1fx %10.2fx %6.1f%% %9.3f %6.1f%%\n",
                       (long long)t, names[isa], th, tk * 1e3, ops / tk * 1e-9, t_ref / tk,
                       t_blas / tk, bench_peak_pct(ops / tk, isa_peak[isa], th), ck * 1e3,
                       bench_peak_pct(ops / ck, isa_peak[isa], 1));
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
                                            cols, sx, zx, bench_threads(th));
                    tq[r] = bench_now() - t0;
                }
                const double tk = bench_median(tq, reps);
                printf("%6lld %-8s %3d %11.1f %9.1f %10.1fx\n", (long long)t, names[isa], th,
                       tk * 1e6, bytes / tk * 1e-9, t_ref / tk);
            }
    }

    bench_print_load(" at end");
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
