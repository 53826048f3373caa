/* Memory of LWC training: dq_lwc_create and dq_lwc_train on one layer, against the float
 * weight's bytes.
 *
 *   bench_lwc_memory [rows [cols [tokens [epochs [batch [flags]]]]]]
 *                    defaults 4096 11008 512 1 128 2
 *   flags: 1 DQ_LWC_F_QUANT_ACT, 2 DQ_LWC_F_BORROW (w and x read in place), or both (3);
 *          0 copies w and x as dq_lwc_create always did before 1.2.
 *
 * The weight (rows x cols, random) and the activations (tokens x cols, bench_fill_outliers) are
 * the caller's buffers, written before anything is measured. Printed, each as a multiple of
 * the float weight's bytes:
 *  - the process's resident memory (VmRSS) just before dq_lwc_create: the caller's weight and
 *    activations plus the program and its libraries;
 *  - the peak resident memory of the WHOLE process (VmHWM, caller's weight included) during
 *    dq_lwc_create and during dq_lwc_train, each measured from a reset of the peak
 *    ("5" written to /proc/self/clear_refs; where that fails the peak since the start is
 *    printed, and said so), and its growth over the resident memory before creation;
 *  - the peak of what LWC allocates, counted by an allocator on the context.
 * With the CPU, the load average before and after, and the wall time of dq_lwc_train. */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "duquant.h"

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "%s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

/* Resets the process's peak resident memory (VmHWM) to its current resident memory; false
 * where the kernel does not allow it. */
static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return 0;
    const int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

int main(int argc, char **argv)
{
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 4096;
    const int64_t cols = argc > 2 ? atoll(argv[2]) : 11008;
    const int64_t tokens = argc > 3 ? atoll(argv[3]) : 512;
    const int32_t epochs = argc > 4 ? atoi(argv[4]) : 1;
    const int32_t batch = argc > 5 ? atoi(argv[5]) : 128;
    const uint32_t flags = argc > 6 ? (uint32_t)atoi(argv[6]) : (uint32_t)DQ_LWC_F_BORROW;
    if (rows < 1 || cols < 1 || tokens < 1 || epochs < 1 || batch < 1 || flags > 3) {
        fprintf(stderr, "usage: bench_lwc_memory [rows [cols [tokens [epochs [batch "
                        "[flags (0-3: 1 QUANT_ACT, 2 BORROW)]]]]]]\n");
        return 2;
    }
    bench_print_cpu();
    float *w = malloc((size_t)rows * (size_t)cols * sizeof *w);
    float *x = malloc((size_t)tokens * (size_t)cols * sizeof *x);
    if (!w || !x) {
        fprintf(stderr, "out of memory for the layer\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)(0.04 * (bench_uniform() - 0.5));
    bench_fill_outliers(x, tokens, cols);

    bench_counter cnt = {0, 0};
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.alloc = bench_count_alloc;
    cp.free = bench_count_free;
    cp.alloc_user = &cnt;
    dq_context *ctx = NULL;
    check(dq_context_create(&cp, &ctx), "dq_context_create");
    cnt.live = cnt.peak = 0; /* the context's own block is not LWC's */

    const double wbytes = (double)rows * (double)cols * sizeof(float);
    const double xbytes = (double)tokens * (double)cols * sizeof(float);
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.epochs = epochs;
    lp.batch_tokens = batch;
    lp.flags = flags;
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    wq.bits = 4;
    wq.scheme = DQ_QUANT_ASYM;

    const long rss_before = bench_status_kb("VmRSS");
    const int reset_create = reset_peak_rss();
    dq_lwc *l = NULL;
    check(dq_lwc_create(ctx, &lp, &wq, w, rows, cols, cols, x, tokens, cols, &l),
          "dq_lwc_create");
    const long hwm_create = bench_status_kb("VmHWM");
    const size_t after_create = cnt.live, peak_create = cnt.peak;
    const int reset_train = reset_peak_rss();
    float loss = 0;
    const double t0 = bench_now();
    check(dq_lwc_train(l, &loss), "dq_lwc_train");
    const double train_s = bench_now() - t0;
    const long hwm_train = bench_status_kb("VmHWM");

    const double mib = 1048576.0, kib = 1024.0;
    printf("\nLWC %" PRId64 " x %" PRId64 " weight, 4-bit ASYM per row, %" PRId64 " tokens, "
           "batch %d, %d epoch(s), flags %u (%s%s); last training loss %.6g\n",
           rows, cols, tokens, (int)batch, (int)epochs, (unsigned)flags,
           flags & DQ_LWC_F_BORROW ? "w and x borrowed" : "w and x copied",
           flags & DQ_LWC_F_QUANT_ACT ? ", QUANT_ACT" : "", (double)loss);
    printf("float weight bytes (w):        %.1f MiB (activations %.1f MiB = %.3f x w; both the "
           "caller's)\n", wbytes / mib, xbytes / mib, xbytes / wbytes);
    printf("process RSS before create:     %.1f MiB = %.3f x w (caller's w and x, program, "
           "libraries)\n", (double)rss_before / kib, (double)rss_before * kib / wbytes);
    const char *note_c = reset_create ? "" : " (peak not reset: since the start)";
    const char *note_t = reset_train ? "" : " (peak not reset: since the start)";
    printf("peak process RSS, create:      %.1f MiB = %.3f x w%s\n", (double)hwm_create / kib,
           (double)hwm_create * kib / wbytes, note_c);
    printf("peak process RSS, training:    %.1f MiB = %.3f x w (+%.1f MiB = %.3f x w over "
           "the RSS before create)%s\n",
           (double)hwm_train / kib, (double)hwm_train * kib / wbytes,
           (double)(hwm_train - rss_before) / kib,
           (double)(hwm_train - rss_before) * kib / wbytes, note_t);
    printf("LWC allocations:               %.1f MiB held after create (peak %.1f MiB); peak "
           "%.1f MiB = %.3f x w\n", (double)after_create / mib, (double)peak_create / mib,
           (double)cnt.peak / mib, (double)cnt.peak / wbytes);
    printf("caller's w + LWC's peak:       %.3f x w\n", 1.0 + (double)cnt.peak / wbytes);
    printf("dq_lwc_train:                  %.2f s wall\n", train_s);
    bench_print_load(" after the run");
    dq_lwc_free(l);
    if (cnt.live != 0)
        printf("warning: %zu bytes still allocated after dq_lwc_free\n", cnt.live);
    dq_context_free(ctx);
    free(w);
    free(x);
    return 0;
}
