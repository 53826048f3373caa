/* The plan searches' block product, separate multiply and add (dq__block_product) against one
 * fused multiply-add per step (dq__block_product_fused, what the searches use), on one scan
 * chunk of the search (rows x block times block x block, all in the first-level caches).
 * Processor time of this thread, best of 5 runs of `iters` products, repeated 5 times; so the
 * figures say what the kernel does when it runs, however loaded the machine is.
 *
 * usage: bench_blockmul [block [rows [iters]]]   defaults 128 126 400 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "dq_blockmul.h"

int main(int argc, char **argv)
{
    const int32_t n = argc > 1 ? atoi(argv[1]) : 128;
    const int64_t m = argc > 2 ? atol(argv[2]) : 126;
    const int iters = argc > 3 ? atoi(argv[3]) : 400;
    if (n < 1 || n > 4096 || m < 1 || m > 65536 || iters < 1) {
        fprintf(stderr, "usage: bench_blockmul [block [rows [iters]]]\n");
        return 2;
    }
    float *a = malloc((size_t)(m * n) * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)(m * n) * sizeof *c);
    if (!a || !b || !c)
        return 1;
    bench_seed(5);
    for (int64_t i = 0; i < m * n; i++)
        a[i] = (float)(bench_uniform() - 0.5);
    for (int64_t i = 0; i < (int64_t)n * n; i++)
        b[i] = (float)(bench_uniform() - 0.5);
    printf("block product: %lld x %d times %d x %d, %d products a run, best of 5 runs\n",
           (long long)m, (int)n, (int)n, (int)n, iters);
    bench_print_cpu();
    const double flop = 2.0 * (double)iters * (double)m * (double)n * (double)n;
    for (int rep = 0; rep < 5; rep++) {
        double best[2] = {1e30, 1e30};
        for (int v = 0; v < 2; v++)
            for (int r = 0; r < 5; r++) {
                double t0 = bench_thread_cpu_now();
                for (int it = 0; it < iters; it++) {
                    if (v)
                        dq__block_product_fused(a, n, m, n, b, n, n, c, n);
                    else
                        dq__block_product(a, n, m, n, b, n, n, c, n);
                }
                double t = bench_thread_cpu_now() - t0;
                best[v] = t < best[v] ? t : best[v];
            }
        printf("separate %.1f GFLOP/s, fused %.1f GFLOP/s: fused takes %.3f of the time\n",
               flop / best[0] * 1e-9, flop / best[1] * 1e-9, best[1] / best[0]);
    }
    bench_print_load(" at end");
    free(a);
    free(b);
    free(c);
    return 0;
}
