/* Clocks, medians, random numbers and synthetic activations for the benchmarks. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "bench_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_now(void)
{
    return clock_seconds(CLOCK_MONOTONIC);
}

double bench_cpu_now(void)
{
    return clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng_state = 12345;

void bench_seed(uint64_t seed)
{
    rng_state = seed;
}

uint64_t bench_rand64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double bench_uniform(void)
{
    return ((double)(bench_rand64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

void bench_fill_outliers(float *x, int64_t t, int64_t c)
{
    for (int64_t i = 0; i < t * c; i++) {
        double u = bench_uniform() - 0.5;
        x[i] = (float)((u < 0 ? 1.0 : -1.0) * log(1.0 - 2.0 * fabs(u)));
    }
    for (int64_t j = 7; j < c; j += 97)
        for (int64_t i = 0; i < t; i++)
            x[i * c + j] *= (float)(30.0 + 20.0 * bench_uniform());
    for (int k = 0; k < 6; k++) {
        int64_t i = (int64_t)(bench_uniform() * (double)t);
        int64_t j = (int64_t)(bench_uniform() * (double)c);
        x[i * c + j] = (float)((k & 1 ? -1.0 : 1.0) * (800.0 + 1200.0 * bench_uniform()));
    }
}

#define EVICT_BYTES ((size_t)256 << 20)

volatile uint64_t bench_sink;

void bench_evict_caches(void)
{
    static uint8_t *buf;
    if (!buf && !(buf = calloc(EVICT_BYTES, 1))) {
        fprintf(stderr, "cannot allocate the cache eviction buffer\n");
        exit(1);
    }
    uint64_t s = 0;
    for (size_t i = 0; i < EVICT_BYTES; i += 64) {
        buf[i] += 1;
        s += buf[i];
    }
    bench_sink = s;
}

double bench_time(void (*fn)(void *arg), void *arg, int reps, int cold)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    if (!cold)
        fn(arg);
    for (int r = 0; r < reps; r++) {
        if (cold)
            bench_evict_caches();
        double t0 = bench_now();
        fn(arg);
        t[r] = bench_now() - t0;
    }
    return bench_median(t, reps);
}

void bench_print_load(const char *what)
{
    FILE *load = fopen("/proc/loadavg", "r");
    char line[128];
    if (load && fgets(line, sizeof line, load))
        printf("load average%s: %s", what, line);
    if (load)
        fclose(load);
}
