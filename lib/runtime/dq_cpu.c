/* CPU feature probe (see dq_cpu.h). __builtin_cpu_supports reads a table the compiler's
 * runtime fills before constructors run (no IFUNC: resolvers run before sanitizer runtimes
 * start); the mask is computed once and published with one atomic store. */
#include <stdatomic.h>

#include "dq_cpu.h"

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
