/* Cost of the file checksums (format version 3): a W4A4 layer of out x in weights stored in
 * the blocked layout, loaded from a borrowing reader (the file's bytes used in place) with
 * the tensor checksums verified, against DQ_FILE_F_TRUSTED (checksums of the data skipped),
 * measured in the same run, alternating. The difference over the bytes of the layer's tensors
 * is the rate the checksum runs at; the open (container parse and header checksum) is timed
 * apart.
 *
 * usage: bench_checksum [out [in [repeats]]]   defaults 4096 11008 7 */
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

typedef struct bench {
    const uint8_t *buf;
    size_t size;
    uint32_t flags;
    int get_layer;
} bench;

static void load(void *arg)
{
    const bench *b = arg;
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_BORROW | b->flags;
    dq_file_reader *r = NULL;
    check(dq_file_reader_from_buffer(NULL, &fp, b->buf, b->size, &r), "open");
    if (b->get_layer) {
        dq_linear *lin = NULL;
        check(dq_file_reader_get_linear(r, NULL, "l", NULL, &lin), "get_linear");
        dq_linear_free(lin);
    }
    dq_file_reader_free(r);
}

int main(int argc, char **argv)
{
    const int64_t out = argc > 1 ? atoll(argv[1]) : 4096, in = argc > 2 ? atoll(argv[2]) : 11008;
    const int reps = argc > 3 ? atoi(argv[3]) : 7;
    bench_print_cpu();
    float *w = malloc(sizeof(float) * (size_t)(out * in));
    if (!w)
        return 1;
    bench_seed(7);
    for (int64_t i = 0; i < out * in; i++)
        w[i] = (float)(bench_uniform() - 0.5);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.group_size = 128;
    dq_qmatrix *q = NULL;
    check(dq_qmatrix_pack(NULL, &qp, w, out, in, in, NULL, NULL, &q), "pack");
    free(w);
    dq_linear *lin = NULL;
    check(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin), "linear");
    dq_file_writer *fw = NULL;
    check(dq_file_writer_create(NULL, &fw), "writer");
    check(dq_file_writer_add_linear_layer(fw, "l", lin, NULL), "add");
    size_t size;
    check(dq_file_writer_to_buffer(fw, NULL, 0, &size), "size");
    uint8_t *buf = malloc(size);
    check(dq_file_writer_to_buffer(fw, buf, size, &size), "write");
    dq_file_writer_free(fw);
    dq_linear_free(lin);
    dq_qmatrix_free(q);

    bench verified = {buf, size, 0, 1}, trusted = {buf, size, DQ_FILE_F_TRUSTED, 1};
    bench open_only = {buf, size, 0, 0};
    /* Processor seconds: other jobs on a shared machine do not inflate them. */
    double tv[64], tt[64], wv[64], wt[64];
    for (int k = 0; k < reps && k < 64; k++) {
        wv[k] = bench_time(load, &verified, 1, 0);
        tv[k] = bench_last_cpu;
        wt[k] = bench_time(load, &trusted, 1, 0);
        tt[k] = bench_last_cpu;
    }
    const double v = bench_median(tv, reps), t = bench_median(tt, reps);
    printf("wall seconds (medians): verified %.3f, trusted %.3f\n", bench_median(wv, reps),
           bench_median(wt, reps));
    const double o = bench_time(load, &open_only, reps, 0);
    printf("layer %lld x %lld, 4-bit, group 128, blocked layout: file %.1f MB\n", (long long)out,
           (long long)in, (double)size / 1e6);
    printf("open (parse, header checksum): %.3f ms\n", o * 1e3);
    printf("get_linear, borrowing reader, processor time: verified %.2f ms, trusted %.2f ms\n",
           v * 1e3, t * 1e3);
    printf("checksums: %.2f ms of processor time for %.1f MB, %.2f GB/s\n", (v - t) * 1e3,
           (double)size / 1e6,
           v > t ? (double)size / (v - t) / 1e9 : 0.0);
    bench_print_load("");
    free(buf);
    return 0;
}
