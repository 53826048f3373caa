/* Memory held by quantized linear layers, and the peak resident memory of loading a file of
 * them through a mapped, borrowing reader (no weight copied) against the copying reader.
 *
 *   bench_memory [layers [size]]      defaults: 8 layers of 4096 x 4096, W4, whole rows
 *
 * Bytes held are counted by an allocator on the context (every byte the library allocates for
 * the layer, the layer's own structs included). Peak resident memory (VmHWM) is measured in a
 * fresh process (this program run again) that opens the file and creates every layer in it,
 * relative to the file's size and to the same process's VmHWM before opening the file. */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "duquant.h"

static dq_context *count_context(bench_counter *c)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = bench_count_alloc;
    p.free = bench_count_free;
    p.alloc_user = c;
    dq_context *ctx = NULL;
    if (dq_context_create(&p, &ctx) != DQ_OK) {
        fprintf(stderr, "context\n");
        exit(1);
    }
    c->live = c->peak = 0; /* the context's own block is not the layer's */
    return ctx;
}

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "%s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

static dq_qmatrix *random_weights(int64_t rows, int64_t cols)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    if (!w)
        exit(1);
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)(bench_uniform() - 0.5);
    dq_qmatrix *q = NULL;
    check(dq_qmatrix_pack(NULL, NULL, w, rows, cols, cols, NULL, NULL, &q), "pack");
    free(w);
    return q;
}

/* Child: open path (borrow: mapped), create every layer L<i>, print the peaks. */
static int child(const char *path, int borrow, int layers)
{
    const long before = bench_status_kb("VmHWM");
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = borrow ? DQ_FILE_F_BORROW : 0;
    dq_file_reader *r = NULL;
    check(dq_file_reader_open(NULL, &fp, path, &r), "open");
    dq_linear **lin = calloc((size_t)layers, sizeof *lin);
    for (int i = 0; i < layers; i++) {
        char name[32];
        snprintf(name, sizeof name, "L%d", i);
        check(dq_file_reader_get_linear(r, NULL, name, NULL, &lin[i]), "get_linear");
    }
    const long after = bench_status_kb("VmHWM"), rss = bench_status_kb("VmRSS");
    printf("%ld %ld %ld\n", before, after, rss);
    for (int i = 0; i < layers; i++)
        dq_linear_free(lin[i]);
    free(lin);
    dq_file_reader_free(r);
    return 0;
}

/* Runs this program as the child and reads its three numbers. */
static int measure(const char *self, const char *path, int borrow, int layers, long kb[3])
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        char b[4], l[16];
        snprintf(b, sizeof b, "%d", borrow);
        snprintf(l, sizeof l, "%d", layers);
        execl(self, self, "--child", path, b, l, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    int n = f ? fscanf(f, "%ld %ld %ld", &kb[0], &kb[1], &kb[2]) : 0;
    if (f)
        fclose(f);
    int status = 0;
    waitpid(pid, &status, 0);
    return n == 3 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "--child"))
        return child(argv[2], atoi(argv[3]), atoi(argv[4]));
    const int layers = argc > 1 ? atoi(argv[1]) : 8;
    const int64_t n = argc > 2 ? atoll(argv[2]) : 4096;
    if (layers < 1 || n < 16) {
        fprintf(stderr, "usage: bench_memory [layers >= 1 [size >= 16]]\n");
        return 2;
    }
    bench_print_cpu();
    bench_print_load("");

    /* 1. bytes held per weight, W4 whole rows, no plan (a plan is held once per input) */
    const int64_t sizes[] = {256, n};
    dq_qmatrix *big = NULL;
    for (int s = 0; s < 2; s++) {
        const int64_t rows = sizes[s], cols = sizes[s];
        dq_qmatrix *q = random_weights(rows, cols);
        bench_counter c;
        dq_context *ctx = count_context(&c);
        dq_linear *lin = NULL;
        check(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), "create");
        const double w = (double)(rows * cols);
        printf("%" PRId64 " x %" PRId64 " W4 layer from a packed matrix: holds %zu bytes, "
               "%.4f bytes/weight (peak while building %.4f); packed matrix %.4f bytes/weight\n",
               rows, cols, c.live, (double)c.live / w, (double)c.peak / w,
               (double)(rows * cols / 2 + rows * 8) / w);
        dq_linear_free(lin);
        dq_context_free(ctx);
        if (s == 1)
            big = q;
        else
            dq_qmatrix_free(q);
    }

    /* 2. a file of `layers` layers in the blocked layout */
    dq_linear *lin = NULL;
    check(dq_linear_create(NULL, NULL, NULL, big, NULL, &lin), "create");
    dq_file_writer *w = NULL;
    check(dq_file_writer_create(NULL, &w), "writer");
    for (int i = 0; i < layers; i++) {
        char name[32];
        snprintf(name, sizeof name, "L%d", i);
        check(dq_file_writer_add_linear_layer(w, name, lin, NULL), "add_linear_layer");
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/bench_memory_%ld.safetensors", (long)getpid());
    check(dq_file_writer_save(w, path), "save");
    dq_file_writer_free(w);
    size_t fsize = 0;
    FILE *f = fopen(path, "rb");
    if (f && fseek(f, 0, SEEK_END) == 0)
        fsize = (size_t)ftell(f);
    if (f)
        fclose(f);

    /* bytes a loaded layer holds: copying reader (freed after) and borrowing reader */
    for (int borrow = 0; borrow < 2; borrow++) {
        dq_file_params fp;
        dq_file_params_init(&fp, sizeof fp);
        fp.flags = borrow ? DQ_FILE_F_BORROW : 0;
        dq_file_reader *r = NULL;
        check(dq_file_reader_open(NULL, &fp, path, &r), "open");
        bench_counter c;
        dq_context *ctx = count_context(&c);
        dq_linear *back = NULL;
        check(dq_file_reader_get_linear(r, ctx, "L0", NULL, &back), "get_linear");
        printf("%" PRId64 " x %" PRId64 " W4 layer loaded (%s reader): holds %zu bytes, "
               "%.4f bytes/weight\n",
               n, n, borrow ? "mapped, borrowing" : "copying", c.live,
               (double)c.live / (double)(n * n));
        dq_linear_free(back);
        dq_context_free(ctx);
        dq_file_reader_free(r);
    }

    /* 3. peak resident memory of opening the file and creating every layer */
    printf("file: %d layers of %" PRId64 " x %" PRId64 ", %.2f MiB\n", layers, n, n,
           (double)fsize / 1048576.0);
    for (int borrow = 1; borrow >= 0; borrow--) {
        long kb[3];
        if (measure("/proc/self/exe", path, borrow, layers, kb) != 0) {
            printf("%s reader: measurement failed\n", borrow ? "mapped" : "copying");
            continue;
        }
        printf("%s reader: VmHWM %.2f MiB = %.3f x file size (%.3f x above the process's "
               "%.2f MiB before opening); VmRSS with every layer %.2f MiB\n",
               borrow ? "mapped, borrowing" : "copying", (double)kb[1] / 1024.0,
               (double)kb[1] * 1024.0 / (double)fsize,
               (double)(kb[1] - kb[0]) * 1024.0 / (double)fsize, (double)kb[0] / 1024.0,
               (double)kb[2] / 1024.0);
    }
    remove(path);
    dq_linear_free(lin);
    dq_qmatrix_free(big);
    return 0;
}
