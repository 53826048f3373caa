/* What every benchmark program needs: clocks, medians, a seeded generator, the outlier-heavy
 * synthetic activations, and the machine every figure is measured on (CPU report, load
 * average, per-core peaks measured in the same run). */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock seconds (monotonic). */
double bench_now(void);

/* Processor seconds of the whole process, all threads: on a shared machine the wall time also
 * counts other jobs, this does not (but it does count BLAS threads spinning). */
double bench_cpu_now(void);

/* Processor seconds of the calling thread: time the scheduler gives other processes does not
 * count, so a figure measures the code on its core, not how busy the machine is. */
double bench_thread_cpu_now(void);

/* Median of v[0..n), n >= 1; sorts v. */
double bench_median(double *v, int n);

/* Median seconds of reps (1..64) runs of fn(arg). Warm: after one untimed run; cold: the
 * caches evicted before each run (bench_evict_caches), no untimed run. */
double bench_time(void (*fn)(void *arg), void *arg, int reps, int cold);

/* The median processor seconds (bench_cpu_now: all the process's threads) of the runs of the
 * last bench_time call. On a machine shared with other jobs a single-threaded run's processor
 * time leaves out the time the scheduler gave the others; with threads it also counts waiting
 * workers that spin. */
extern double bench_last_cpu;

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

/* Fills bytes bytes at p with non-zero pseudo-random data (not the bench_rand64 stream), so that
 * every page is really backed by memory: an allocated but never written buffer reads the
 * kernel's shared zero page, which stays in the caches and measures no memory traffic. */
void bench_fill_bytes(void *p, size_t bytes);

/* What the benchmarks measure against.
 *
 * bench_print_cpu prints the CPU every figure is measured on: vendor, family, model, model name,
 * "cpu MHz" from /proc/cpuinfo, cpuinfo_max_freq where sysfs has it, the instruction sets the
 * probes use, the number of online CPUs, then the load average (bench_print_load). Lines start
 * with "cpu:" and "load average:".
 *
 * bench_peak_measure measures, once per process (later calls return the same figures), the
 * peaks of ONE core and prints them on its first call. Each loop runs for about 0.2 s of the
 * thread's processor time and the best of its slices of about 2 ms counts; slices are timed in
 * processor time (CLOCK_THREAD_CPUTIME_ID), so on a shared machine the time the scheduler gives
 * other processes does not count: the peak is the core's, however busy the machine is.
 *  - int8_ops: u8 x s8 integer ops per second; ONE MULTIPLY-ADD COUNTS AS 2 OPS, so one 512-bit
 *    vpdpbusd (64 u8*s8 products summed into 16 int32) is 128 ops and one 256-bit vpmaddubsw
 *    + vpmaddwd + vpaddd triple (32 products) is 64. AVX-512 VNNI vpdpbusd where the CPU has
 *    it (int8_isa "avx512-vnni"), else the AVX2 triple ("avx2"), else 0 ("none").
 *  - int8_ops_avx2: the AVX2 triple alone (0 without AVX2): the ceiling of AVX2 kernels.
 *  - f32_flops_512 / f32_flops_256: float FLOP/s of 512-bit / 256-bit FMA loops (an FMA counts
 *    2 FLOP per lane); 0 where the CPU lacks AVX-512F / FMA.
 *  - stream_bytes: bytes per second one core reads from a written buffer four times the last-
 *    level cache (at least 128 MiB), AVX2 loads, best 8 MiB piece of at least two passes (0
 *    without AVX2): bytes / stream_bytes is the time floor of a memory-bound kernel on one core.
 * Probes use __attribute__((target)) and __builtin_cpu_supports: the programs build and run on
 * any x86-64 (and elsewhere, or with -DBENCH_NO_X86, with every peak 0). Peaks are per core: multiply by the threads
 * a figure uses. */
typedef struct bench_peak {
    double int8_ops;      /* best u8 x s8 ops/s of one core (multiply-add = 2 ops) */
    const char *int8_isa; /* "avx512-vnni", "avx2" or "none" */
    double int8_ops_avx2; /* AVX2 vpmaddubsw+vpmaddwd ops/s of one core, 0 without AVX2 */
    double f32_flops_512; /* float FLOP/s of one core, 512-bit FMA, 0 without AVX-512F */
    double f32_flops_256; /* float FLOP/s of one core, 256-bit FMA, 0 without FMA */
    double stream_bytes;  /* bytes/s one core streams from memory */
} bench_peak;

void bench_print_cpu(void);
const bench_peak *bench_peak_measure(void);

/* Best float FLOP/s of one core: f32_flops_512 where measured, else f32_flops_256. */
double bench_peak_f32(const bench_peak *p);

/* 100 * rate / (peak * threads), 0 where peak is 0: a figure's share of the measured peak. */
double bench_peak_pct(double rate, double peak_per_core, int threads);

/* An allocator that counts what it hands out (the dq_context_params alloc/free pair, user =
 * a bench_counter): live bytes and their peak. Blocks carry their size in a header. */
typedef struct bench_counter {
    size_t live, peak;
} bench_counter;
void *bench_count_alloc(void *user, size_t size, size_t align);
void bench_count_free(void *user, void *ptr);

/* kB of a "Vm...:" line of /proc/self/status (e.g. "VmHWM"), -1 when unreadable. */
long bench_status_kb(const char *key);

#endif
