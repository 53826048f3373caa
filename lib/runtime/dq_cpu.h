/* The CPU's instruction-set features, probed once (dq_cpu.c). Every run-time kernel choice
 * reads them here. */
#ifndef DQ_CPU_H
#define DQ_CPU_H

#include <stdint.h>

enum {
    DQ_CPU_AVX2 = 1u << 0,
    DQ_CPU_FMA = 1u << 1,
    DQ_CPU_AVX512F = 1u << 2,
    DQ_CPU_AVX512BW = 1u << 3,
    DQ_CPU_AVX512VL = 1u << 4,
    DQ_CPU_AVX512VNNI = 1u << 5,
    DQ_CPU_AMX_INT8 = 1u << 6, /* AMX tiles with int8 products, enabled for this process */
    DQ_CPU_F16C = 1u << 7,     /* half <-> float conversions (VEX) */
};

/* Bitmask of DQ_CPU_* the CPU (and the OS, for the wide registers) supports; 0 off x86.
 * Computed on the first call, thread-safe. */
uint32_t dq__cpu_features(void);

/* True when every feature of mask is present. */
static inline int dq__cpu_has(uint32_t mask)
{
    return (dq__cpu_features() & mask) == mask;
}

#endif /* DQ_CPU_H */
