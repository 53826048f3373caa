/* Baselines and inputs shared by the benchmarks of the library's private kernels: the time to
 * stream bytes once (the floor for memory-bound kernels) and random prepared 4-bit weights. */
#ifndef BENCH_KERNELS_H
#define BENCH_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "dq_gemm_simd.h"

/* Sum of the 64-bit words of p's whole 64-byte lines (bytes rounded down to a line), split
 * over threads as the kernels split their weights; wide loads, so memory limits it. */
uint64_t bench_stream_read(const void *p, size_t bytes, int32_t threads);

/* A context running the library's kernels on n threads (0: the host's count), kept until
 * exit. */
const dq_context *bench_threads(int32_t n);

/* A rows x cols 4-bit weight prepared for the kernels (dq__gemm_prepare): random codes, scales
 * 0.01-0.11 and zero points -8..7 per group of group columns (0 or > cols: whole rows), from
 * the bench_uniform stream. Exits the program when memory runs out. */
dq__wprep *bench_random_weights(int64_t rows, int64_t cols, int64_t group);

#endif
