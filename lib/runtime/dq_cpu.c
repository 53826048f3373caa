/* CPU feature probe (see dq_cpu.h). __builtin_cpu_supports reads a table the compiler's
 * runtime fills before constructors run (no IFUNC: resolvers run before sanitizer runtimes
 * start); the mask is computed once and published with one atomic store. */
#define _DEFAULT_SOURCE /* syscall */
#include <stdatomic.h>

#include "dq_cpu.h"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* AMX-TILE and AMX-INT8 (CPUID 7.0 EDX bits 24, 25), their state enabled by the OS (XCR0 bits
 * 17, 18), and Linux's per-process permission for the tile data (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, granted once for every thread). */
static int amx_int8_usable(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 24) & 1u) || !((d >> 25) & 1u))
        return 0;
    __cpuid(1, a, b, c, d);
    if (!((c >> 27) & 1u)) /* OSXSAVE: xgetbv is available */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

/* F16C (CPUID 1 ECX bit 29): not every compiler's __builtin_cpu_supports knows the name. Its
 * registers are the AVX ones, which the AVX2 probe has already found enabled. */
static int f16c_present(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c >> 29) & 1u;
}
#else
static int amx_int8_usable(void)
{
    return 0;
}
static int f16c_present(void)
{
    return 0;
}
#endif

/* Bit 31 marks the mask as computed. */
#define PROBED (1u << 31)

static _Atomic uint32_t features;

static uint32_t probe(void)
{
    uint32_t f = 0;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        f |= DQ_CPU_AVX2;
    if (__builtin_cpu_supports("fma"))
        f |= DQ_CPU_FMA;
    if (__builtin_cpu_supports("avx512f"))
        f |= DQ_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw"))
        f |= DQ_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vl"))
        f |= DQ_CPU_AVX512VL;
    if (__builtin_cpu_supports("avx512vnni"))
        f |= DQ_CPU_AVX512VNNI;
#endif
    if (amx_int8_usable())
        f |= DQ_CPU_AMX_INT8;
    if (f16c_present())
        f |= DQ_CPU_F16C;
    return f;
}

uint32_t dq__cpu_features(void)
{
    uint32_t f = atomic_load_explicit(&features, memory_order_relaxed);
    if (!(f & PROBED)) {
        /* Racing first callers compute the same value. */
        f = probe() | PROBED;
        atomic_store_explicit(&features, f, memory_order_relaxed);
    }
    return f & ~PROBED;
}
