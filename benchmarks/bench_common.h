/* What every benchmark program needs: clocks, medians, a seeded generator and the
 * outlier-heavy synthetic activations. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdint.h>

/* Wall-clock seconds (monotonic). */
double bench_now(void);

/* Processor seconds of the whole process, all threads: on a shared machine the wall time also
 * counts other jobs, this does not (but it does count BLAS threads spinning). */
double bench_cpu_now(void);

/* Median of v[0..n), n >= 1; sorts v. */
double bench_median(double *v, int n);

/* Median seconds of reps (1..64) runs of fn(arg). Warm: after one untimed run; cold: the
 * caches evicted before each run (bench_evict_caches), no untimed run. */
double bench_time(void (*fn)(void *arg), void *arg, int reps, int cold);

/* A splitmix64 stream: 64 random bits, or uniform in (0, 1); bench_seed restarts the stream
 * (default 12345). */
void bench_seed(uint64_t seed);
uint64_t bench_rand64(void);
double bench_uniform(void);

/* t x c activations shaped like an LLM layer input: Laplace noise, every 97th channel from 7
 * scaled 30-50x, and six massive values (800-2000) at random places. */
void bench_fill_outliers(float *x, int64_t t, int64_t c);

/* Prints "load average<what>: ..." from /proc/loadavg (nothing where it cannot be read):
 * other processes distort every figure, so each run says how busy the machine was. */
void bench_print_load(const char *what);

/* Results written here cannot be optimised away. */
extern volatile uint64_t bench_sink;

/* Evicts the caches: touches every line of a buffer much larger than any last-level cache
 * (256 MiB, allocated on the first call; exits the program when it cannot be allocated). */
void bench_evict_caches(void);

#endif
