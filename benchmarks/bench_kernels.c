/* Streaming baseline and random weights for the kernel benchmarks (see bench_kernels.h). */
#include "bench_kernels.h"

#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "dq_cpu.h"
#include "dq_pool.h"

/* Sums of whole 64-byte lines; the vector version reads two lines per step. */
static uint64_t read_lines_portable(const uint64_t *p, size_t lines)
{
    uint64_t a[8] = {0};
    for (size_t i = 0; i < lines * 8; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t read_lines_avx2(const uint64_t *p, size_t lines)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const size_t pairs = lines / 2;
    for (size_t i = 0; i < pairs * 16; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t v[4];
    _mm256_storeu_si256((__m256i *)v, a0);
    return v[0] + v[1] + v[2] + v[3] + read_lines_portable(p + pairs * 16, lines % 2);
}
#endif

static uint64_t read_lines(const uint64_t *p, size_t lines)
{
#if defined(__GNUC__) && defined(__x86_64__)
    if (dq__cpu_features() & DQ_CPU_AVX2)
        return read_lines_avx2(p, lines);
#endif
    return read_lines_portable(p, lines);
}

#define MAX_READERS 64

typedef struct read_job {
    const uint64_t *p;
    size_t lines;
    uint64_t sums[MAX_READERS];
} read_job;

static void read_part(void *arg, int32_t w, int32_t n)
{
    read_job *j = arg;
    int64_t b, e;
    dq__split((int64_t)j->lines, w, n, &b, &e);
    j->sums[w] = read_lines(j->p + b * 8, (size_t)(e - b));
}

uint64_t bench_stream_read(const void *p, size_t bytes, int32_t threads)
{
    read_job j = {.p = p, .lines = bytes / 64};
    if (threads < 1)
        threads = 1;
    if (threads > MAX_READERS)
        threads = MAX_READERS;
    dq__parallel(bench_threads(threads), threads, read_part, &j);
    uint64_t s = 0;
    for (int32_t w = 0; w < threads; w++)
        s += j.sums[w];
    return s;
}

#define BENCH_MAX_CONTEXTS 65
static dq_context *bench_contexts[BENCH_MAX_CONTEXTS];

static void bench_free_contexts(void)
{
    for (int i = 0; i < BENCH_MAX_CONTEXTS; i++)
        dq_context_free(bench_contexts[i]);
}

const dq_context *bench_threads(int32_t n)
{
    if (n < 0 || n >= BENCH_MAX_CONTEXTS)
        n = 0;
    if (!bench_contexts[n]) {
        static int registered;
        if (!registered++)
            atexit(bench_free_contexts);
        dq_context_params p;
        dq_context_params_init(&p, sizeof p);
        p.n_threads = n;
        if (dq_context_create(&p, &bench_contexts[n]) != DQ_OK) {
            fprintf(stderr, "context creation failed\n");
            exit(1);
        }
    }
    return bench_contexts[n];
}

dq__wprep *bench_random_weights(int64_t rows, int64_t cols, int64_t group)
{
    dq__wprep *w = calloc(1, sizeof *w);
    if (!w)
        goto nomem;
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
    if (!w->codes || !w->scales || !w->zeros || !w->code_sums)
        goto nomem;
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
nomem:
    fprintf(stderr, "out of memory\n");
    exit(1);
}
