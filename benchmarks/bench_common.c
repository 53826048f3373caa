/* Clocks, medians, random numbers and synthetic activations for the benchmarks. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "bench_common.h"

/* The peak probes need x86-64 and GCC-style inline assembly; elsewhere every peak is 0.
 * (-DBENCH_NO_X86 builds that fallback on x86-64 too.) */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(BENCH_NO_X86)
#define BENCH_X86 1
#else
#define BENCH_X86 0
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

double bench_last_cpu;

double bench_time(void (*fn)(void *arg), void *arg, int reps, int cold)
{
    double t[64], c[64];
    if (reps > 64)
        reps = 64;
    if (!cold)
        fn(arg);
    for (int r = 0; r < reps; r++) {
        if (cold)
            bench_evict_caches();
        double c0 = bench_cpu_now(), t0 = bench_now();
        fn(arg);
        t[r] = bench_now() - t0;
        c[r] = bench_cpu_now() - c0;
    }
    bench_last_cpu = bench_median(c, reps);
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

void bench_fill_bytes(void *p, size_t bytes)
{
    uint8_t *b = p;
    uint64_t z = 0x2545F4914F6CDD1Dull;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t v = (z ^ (z >> 29)) | 1u;
        memcpy(b + i, &v, 8);
    }
    for (; i < bytes; i++)
        b[i] = (uint8_t)(0x5Au + i);
}

/* ---- the CPU report ---- */

/* Copies the value of the first "key<spaces>: value" line of /proc/cpuinfo into out
 * (empty where absent); counts the "processor" lines into *cpus when cpus is not NULL. */
static void cpuinfo_field(const char *key, char *out, size_t n, int *cpus)
{
    out[0] = '\0';
    if (cpus)
        *cpus = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[4096];
    const size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (cpus && strncmp(line, "processor", 9) == 0)
            (*cpus)++;
        if (out[0] || strncmp(line, key, klen) != 0 || (line[klen] != ' ' && line[klen] != '\t' &&
                                                        line[klen] != ':'))
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            continue;
        v++;
        while (*v == ' ')
            v++;
        size_t len = strcspn(v, "\n");
        if (len >= n)
            len = n - 1;
        memcpy(out, v, len);
        out[len] = '\0';
    }
    fclose(f);
}

/* Bytes of the last-level cache from sysfs (the highest cache index of cpu0), 0 if unknown. */
static size_t llc_bytes(void)
{
    size_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], buf[64];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f)
            break;
        if (fgets(buf, sizeof buf, f)) {
            char *end;
            unsigned long long v = strtoull(buf, &end, 10);
            if (*end == 'K')
                v <<= 10;
            else if (*end == 'M')
                v <<= 20;
            if ((size_t)v > best)
                best = (size_t)v;
        }
        fclose(f);
    }
    return best;
}

static int has_feature(int which)
{
#if BENCH_X86
    __builtin_cpu_init();
    switch (which) {
    case 0: return __builtin_cpu_supports("avx2");
    case 1: return __builtin_cpu_supports("fma");
    case 2: return __builtin_cpu_supports("avx512f");
    case 3: return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    default: return 0;
    }
#else
    (void)which;
    return 0;
#endif
}

void bench_print_cpu(void)
{
    char vendor[64], family[16], model[16], name[256], mhz[32], stepping[16];
    int cpus = 0;
    cpuinfo_field("vendor_id", vendor, sizeof vendor, &cpus);
    cpuinfo_field("cpu family", family, sizeof family, NULL);
    cpuinfo_field("model", model, sizeof model, NULL);
    cpuinfo_field("model name", name, sizeof name, NULL);
    cpuinfo_field("stepping", stepping, sizeof stepping, NULL);
    cpuinfo_field("cpu MHz", mhz, sizeof mhz, NULL);
    char maxf[64] = "";
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "r");
    if (f) {
        if (fgets(maxf, sizeof maxf, f))
            maxf[strcspn(maxf, "\n")] = '\0';
        fclose(f);
    }
    printf("cpu: %s family %s model %s stepping %s \"%s\", cpu MHz %s, cpuinfo_max_freq %s%s, "
           "%d online cpu(s), LLC %zu KiB, avx2 %s fma %s avx512f %s avx512-vnni %s\n",
           vendor[0] ? vendor : "?", family[0] ? family : "?", model[0] ? model : "?",
           stepping[0] ? stepping : "?", name[0] ? name : "?", mhz[0] ? mhz : "?",
           maxf[0] ? maxf : "n/a", maxf[0] ? " kHz" : "", cpus, llc_bytes() >> 10,
           has_feature(0) ? "yes" : "no", has_feature(1) ? "yes" : "no",
           has_feature(2) ? "yes" : "no", has_feature(3) ? "yes" : "no");
    bench_print_load("");
}

/* ---- peak probes: each returns the operations (or FLOP) it performed ---- */

#if BENCH_X86
#include <immintrin.h>

/* The loops are written in assembly so that the compiler neither merges, hoists nor spills
 * them: independent accumulators (more than latency x throughput on current cores), operands in
 * registers set to zero (the instructions' timing does not depend on the values). */
#define ZERO_ZMM(k) "vpxord %%zmm" #k ", %%zmm" #k ", %%zmm" #k "\n"
#define ZERO_YMM(k) "vpxor %%ymm" #k ", %%ymm" #k ", %%ymm" #k "\n"
#define ZMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
    "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17"
#define YMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
    "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

/* 16 x vpdpbusd zmm a step: 16 x 64 u8*s8 multiply-adds = 2048 ops. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double probe_vnni512(uint64_t n)
{
    uint64_t i = n;
    __asm__ volatile(
        ZERO_ZMM(16) ZERO_ZMM(17)
        ".p2align 5\n"
        "1:\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm0\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm1\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm2\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm3\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm4\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm5\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm6\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm7\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm8\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm9\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm10\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm11\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm12\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm13\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm14\n"
        "vpdpbusd %%zmm17, %%zmm16, %%zmm15\n"
        "dec %0\n"
        "jnz 1b\n"
        "vzeroupper\n"
        : "+r"(i) : : ZMM_CLOBBERS, "cc");
    return (double)n * 16.0 * 128.0;
}

/* 8 x (vpmaddubsw, vpmaddwd by ones, vpaddd) ymm a step: 8 x 32 multiply-adds = 512 ops. */
__attribute__((target("avx2"))) static double probe_avx2_int8(uint64_t n)
{
    uint64_t i = n;
    __asm__ volatile(
        ZERO_YMM(8) ZERO_YMM(9) ZERO_YMM(10)
        ".p2align 5\n"
        "1:\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm11\n"
        "vpmaddwd %%ymm10, %%ymm11, %%ymm11\n"
        "vpaddd %%ymm11, %%ymm0, %%ymm0\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm12\n"
        "vpmaddwd %%ymm10, %%ymm12, %%ymm12\n"
        "vpaddd %%ymm12, %%ymm1, %%ymm1\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm13\n"
        "vpmaddwd %%ymm10, %%ymm13, %%ymm13\n"
        "vpaddd %%ymm13, %%ymm2, %%ymm2\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm14\n"
        "vpmaddwd %%ymm10, %%ymm14, %%ymm14\n"
        "vpaddd %%ymm14, %%ymm3, %%ymm3\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm15\n"
        "vpmaddwd %%ymm10, %%ymm15, %%ymm15\n"
        "vpaddd %%ymm15, %%ymm4, %%ymm4\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm11\n"
        "vpmaddwd %%ymm10, %%ymm11, %%ymm11\n"
        "vpaddd %%ymm11, %%ymm5, %%ymm5\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm12\n"
        "vpmaddwd %%ymm10, %%ymm12, %%ymm12\n"
        "vpaddd %%ymm12, %%ymm6, %%ymm6\n"
        "vpmaddubsw %%ymm9, %%ymm8, %%ymm13\n"
        "vpmaddwd %%ymm10, %%ymm13, %%ymm13\n"
        "vpaddd %%ymm13, %%ymm7, %%ymm7\n"
        "dec %0\n"
        "jnz 1b\n"
        "vzeroupper\n"
        : "+r"(i) : : YMM_CLOBBERS, "cc");
    return (double)n * 8.0 * 64.0;
}

/* 16 x vfmadd231ps zmm a step: 16 x 16 lanes x 2 = 512 FLOP. */
__attribute__((target("avx512f"))) static double probe_fma512(uint64_t n)
{
    uint64_t i = n;
    __asm__ volatile(
        ZERO_ZMM(16) ZERO_ZMM(17)
        ".p2align 5\n"
        "1:\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm0\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm1\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm2\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm3\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm4\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm5\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm6\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm7\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm8\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm9\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm10\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm11\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm12\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm13\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm14\n"
        "vfmadd231ps %%zmm17, %%zmm16, %%zmm15\n"
        "dec %0\n"
        "jnz 1b\n"
        "vzeroupper\n"
        : "+r"(i) : : ZMM_CLOBBERS, "cc");
    return (double)n * 16.0 * 32.0;
}

/* 12 x vfmadd231ps ymm a step: 12 x 8 lanes x 2 = 192 FLOP. */
__attribute__((target("avx2,fma"))) static double probe_fma256(uint64_t n)
{
    uint64_t i = n;
    __asm__ volatile(
        ZERO_YMM(12) ZERO_YMM(13)
        ".p2align 5\n"
        "1:\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm0\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm1\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm2\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm3\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm4\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm5\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm6\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm7\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm8\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm9\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm10\n"
        "vfmadd231ps %%ymm13, %%ymm12, %%ymm11\n"
        "dec %0\n"
        "jnz 1b\n"
        "vzeroupper\n"
        : "+r"(i) : : YMM_CLOBBERS, "cc");
    return (double)n * 12.0 * 16.0;
}

/* Sum of 64-bit words, four 256-bit loads (two lines) a step; bytes a multiple of 128. */
__attribute__((target("avx2"))) static uint64_t stream_sum(const uint64_t *p, size_t bytes)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < bytes / 8; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a0, 0) + (uint64_t)_mm256_extract_epi64(a0, 3);
}

double bench_thread_cpu_now(void)
{
    return clock_seconds(CLOCK_THREAD_CPUTIME_ID);
}

/* Best rate (work per processor second) of probe over about 0.2 s of the thread's processor
 * time, in slices of about 2 ms (the best slice: interrupts and cache disturbance by others
 * lower few of them). */
static double best_rate(double (*probe)(uint64_t))
{
    uint64_t n = 1024;
    for (;;) { /* slices of at least 2 ms */
        double t0 = bench_thread_cpu_now(), w = probe(n), dt = bench_thread_cpu_now() - t0;
        (void)w;
        if (dt >= 0.002 || n > ((uint64_t)1 << 40))
            break;
        n = dt > 1e-4 ? (uint64_t)((double)n * 0.0025 / dt) + 1 : n * 16;
    }
    double best = 0.0;
    const double start = bench_thread_cpu_now();
    do {
        double t0 = bench_thread_cpu_now(), w = probe(n), dt = bench_thread_cpu_now() - t0;
        if (dt > 0 && w / dt > best)
            best = w / dt;
    } while (bench_thread_cpu_now() - start < 0.2);
    return best;
}

#endif

static double stream_rate(void)
{
#if BENCH_X86
    if (!has_feature(0))
        return 0.0;
    size_t bytes = 4 * llc_bytes();
    if (bytes < ((size_t)128 << 20))
        bytes = (size_t)128 << 20;
    uint64_t *buf = malloc(bytes);
    if (!buf)
        return 0.0;
    bench_fill_bytes(buf, bytes);
    /* Every pass reads from memory (the buffer is 4x the last-level cache), timed in pieces of
     * 8 MiB (a fraction of a millisecond): the best piece is the rate undisturbed by others. */
    const size_t piece = (size_t)8 << 20;
    double best = 0.0;
    const double start = bench_thread_cpu_now();
    int passes = 0;
    do {
        for (size_t off = 0; off + piece <= bytes; off += piece) {
            double t0 = bench_thread_cpu_now();
            bench_sink += stream_sum(buf + off / 8, piece);
            double dt = bench_thread_cpu_now() - t0;
            if (dt > 0 && (double)piece / dt > best)
                best = (double)piece / dt;
        }
    } while (++passes < 2 || bench_thread_cpu_now() - start < 0.2);
    free(buf);
    return best;
#else
    return 0.0;
#endif
}

const bench_peak *bench_peak_measure(void)
{
    static bench_peak p;
    static int done;
    if (done)
        return &p;
    done = 1;
    p.int8_isa = "none";
#if BENCH_X86
    if (has_feature(0))
        p.int8_ops_avx2 = best_rate(probe_avx2_int8);
    if (has_feature(3)) {
        p.int8_ops = best_rate(probe_vnni512);
        p.int8_isa = "avx512-vnni";
    } else if (has_feature(0)) {
        p.int8_ops = p.int8_ops_avx2;
        p.int8_isa = "avx2";
    }
    if (has_feature(2))
        p.f32_flops_512 = best_rate(probe_fma512);
    if (has_feature(0) && has_feature(1))
        p.f32_flops_256 = best_rate(probe_fma256);
#endif
    p.stream_bytes = stream_rate();
    printf("peak of one core, measured now (best 2 ms slice of 0.2 processor-s; multiply-add = "
           "2 ops): "
           "int8 %.1f GOPS (%s), int8 avx2 %.1f GOPS, f32 FMA 512-bit %.1f GFLOP/s, 256-bit "
           "%.1f GFLOP/s; memory stream %.1f GB/s\n",
           p.int8_ops * 1e-9, p.int8_isa, p.int8_ops_avx2 * 1e-9, p.f32_flops_512 * 1e-9,
           p.f32_flops_256 * 1e-9, p.stream_bytes * 1e-9);
    return &p;
}

double bench_peak_f32(const bench_peak *p)
{
    return p->f32_flops_512 > 0 ? p->f32_flops_512 : p->f32_flops_256;
}

double bench_peak_pct(double rate, double peak_per_core, int threads)
{
    if (peak_per_core <= 0 || threads < 1)
        return 0.0;
    return 100.0 * rate / (peak_per_core * (double)threads);
}

/* ---- counted allocations and the process's memory ---- */

#define COUNT_HEAD 64

void *bench_count_alloc(void *user, size_t size, size_t align)
{
    bench_counter *c = user;
    if (align < COUNT_HEAD)
        align = COUNT_HEAD;
    uint8_t *p = aligned_alloc(align, (size + align + align - 1) / align * align);
    if (!p)
        return NULL;
    memcpy(p + align - 2 * sizeof(size_t), &size, sizeof size);
    memcpy(p + align - sizeof(size_t), &align, sizeof align);
    c->live += size;
    c->peak = c->live > c->peak ? c->live : c->peak;
    return p + align;
}

void bench_count_free(void *user, void *ptr)
{
    if (!ptr)
        return;
    bench_counter *c = user;
    uint8_t *q = ptr;
    size_t size, align;
    memcpy(&size, q - 2 * sizeof(size_t), sizeof size);
    memcpy(&align, q - sizeof(size_t), sizeof align);
    c->live -= size;
    free(q - align);
}

long bench_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    const size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            kb = strtol(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}
