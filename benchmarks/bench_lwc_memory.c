/* Memory LWC allocates: dq_lwc_create and dq_lwc_train on one layer, every byte they allocate
 * counted by an allocator on the context (current and peak), against the float weight's bytes.
 *
 *   bench_lwc_memory [rows [cols [tokens [epochs [batch [flags]]]]]]
 *                    defaults 4096 11008 512 1 128 0 (flags 1: DQ_LWC_F_QUANT_ACT)
 *
 * The weight (rows x cols, random) and the activations (tokens x cols, bench_fill_outliers) are
 * the caller's buffers and are not counted; the ratio is the context's peak over the weight's
 * bytes. The process's peak resident memory (VmHWM) is printed before creation (the caller's
 * buffers written) and after training, with the wall time of dq_lwc_train. */
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

int main(int argc, char **argv)
{
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 4096;
    const int64_t cols = argc > 2 ? atoll(argv[2]) : 11008;
    const int64_t tokens = argc > 3 ? atoll(argv[3]) : 512;
    const int32_t epochs = argc > 4 ? atoi(argv[4]) : 1;
    const int32_t batch = argc > 5 ? atoi(argv[5]) : 128;
    const uint32_t flags = argc > 6 ? (uint32_t)atoi(argv[6]) : 0u;
    if (rows < 1 || cols < 1 || tokens < 1 || epochs < 1 || batch < 1 || flags > 1) {
        fprintf(stderr, "usage: bench_lwc_memory [rows [cols [tokens [epochs [batch "
                        "[flags (0 or 1)]]]]]]\n");
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
    const long hwm_before = bench_status_kb("VmHWM");
    dq_lwc_params lp;
    dq_lwc_params_init(&lp, sizeof lp);
    lp.epochs = epochs;
    lp.batch_tokens = batch;
    lp.flags = flags;
    dq_quant_params wq;
    dq_quant_params_init(&wq, sizeof wq);
    wq.bits = 4;
    wq.scheme = DQ_QUANT_ASYM;
    dq_lwc *l = NULL;
    check(dq_lwc_create(ctx, &lp, &wq, w, rows, cols, cols, x, tokens, cols, &l),
          "dq_lwc_create");
    const size_t after_create = cnt.live, peak_create = cnt.peak;
    float loss = 0;
    const double t0 = bench_now();
    check(dq_lwc_train(l, &loss), "dq_lwc_train");
    const double train_s = bench_now() - t0;
    const long hwm_after = bench_status_kb("VmHWM");
    printf("\nLWC %" PRId64 " x %" PRId64 " weight, 4-bit ASYM per row, %" PRId64 " tokens, "
           "batch %d, %d epoch(s), flags %u; last training loss %.6g\n",
           rows, cols, tokens, (int)batch, (int)epochs, (unsigned)flags, (double)loss);
    printf("float weight bytes:          %.1f MiB (activations %.1f MiB, the caller's)\n",
           wbytes / 1048576.0, xbytes / 1048576.0);
    printf("held after dq_lwc_create:    %.1f MiB (peak %.1f MiB)\n",
           (double)after_create / 1048576.0, (double)peak_create / 1048576.0);
    printf("peak through the context:    %.1f MiB = %.3f x the float weight bytes\n",
           (double)cnt.peak / 1048576.0, (double)cnt.peak / wbytes);
    printf("VmHWM before create:         %.1f MiB\n", (double)hwm_before / 1024.0);
    printf("VmHWM after train:           %.1f MiB (+%.1f MiB = %.3f x the weight bytes)\n",
           (double)hwm_after / 1024.0, (double)(hwm_after - hwm_before) / 1024.0,
           (double)(hwm_after - hwm_before) * 1024.0 / wbytes);
    printf("dq_lwc_train:                %.2f s wall\n", train_s);
    bench_print_load(" after the run");
    dq_lwc_free(l);
    if (cnt.live != 0)
        printf("warning: %zu bytes still allocated after dq_lwc_free\n", cnt.live);
    dq_context_free(ctx);
    free(w);
    free(x);
    return 0;
}
