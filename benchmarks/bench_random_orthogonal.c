/* Seeded random orthogonal matrices (the full-width rotation of widths with no Hadamard
 * construction, e.g. a 2752-wide FFN input): modified Gram-Schmidt with the columns in groups,
 * as the library builds them, against one column at a time (the oracle, the same bits) in the
 * same run. Processor seconds of this thread, best of `reps` runs, so the figures say what the
 * code does when it runs however loaded the machine is; the two matrices are compared too.
 *
 * usage: bench_random_orthogonal [n [reps]]   defaults 2752 2 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "dq_transform.h"

int main(int argc, char **argv)
{
    const int32_t n = argc > 1 ? atoi(argv[1]) : 2752;
    const int reps = argc > 2 ? atoi(argv[2]) : 2;
    if (n < 1 || n > 4096 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: bench_random_orthogonal [n (1..4096) [reps (1..64)]]\n");
        return 2;
    }
    float *m[2] = {malloc((size_t)n * (size_t)n * sizeof(float)),
                   malloc((size_t)n * (size_t)n * sizeof(float))};
    if (!m[0] || !m[1])
        return 1;
    printf("random orthogonal %d x %d (seed 7), processor seconds of one thread, best of %d\n",
           (int)n, (int)n, reps);
    bench_print_cpu();
    static const char *const names[2] = {"one column at a time", "columns in groups"};
    double best[2] = {1e30, 1e30};
    for (int v = 0; v < 2; v++)
        for (int r = 0; r < reps; r++) {
            double t0 = bench_thread_cpu_now();
            if (dq__random_orthogonal_with(NULL, n, 7, 1e-6,
                                           v == 0 ? DQ__ORTH_ONE_COLUMN : DQ__ORTH_GROUPS,
                                           m[v], n) != DQ_OK) {
                fprintf(stderr, "dq__random_orthogonal_with failed\n");
                return 1;
            }
            double t = bench_thread_cpu_now() - t0;
            best[v] = t < best[v] ? t : best[v];
        }
    /* Gram-Schmidt: n^3 multiply-adds for the projections (dot product and update). */
    const double flop = 2.0 * (double)n * (double)n * (double)n;
    for (int v = 0; v < 2; v++)
        printf("%-22s %8.3f s  %6.2f GFLOP/s\n", names[v], best[v], flop / best[v] * 1e-9);
    int same = memcmp(m[0], m[1], (size_t)n * (size_t)n * sizeof(float)) == 0;
    printf("groups take %.3f of the time; matrices %s\n", best[1] / best[0],
           same ? "identical" : "DIFFERENT");
    bench_print_load(" after");
    free(m[0]);
    free(m[1]);
    return same ? 0 : 1;
}
