/* Writer memory: a model's worth of packed layers written by a writer keeping the data in memory
 * (the baseline) and by a spooling one (dq_file_writer_spool), in the same run.
 *
 *   bench_writer_memory [dir [layers [size]]]   dir for the files (default "."), the number of
 *                                               size x size W4 layers (default 64 and 4096:
 *                                               8.3 MiB each with its scales, 532 MiB in all)
 *
 * Each writer runs in a fresh child process and reports its peak resident memory (VmHWM), the
 * peak of the bytes the library allocated (a counting allocator on the context), the time of
 * the additions and of the save, and the file's size; the two files must be identical. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "duquant.h"

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "bench_writer_memory: %s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

typedef struct result {
    long hwm_kb;
    size_t lib_peak;
    double add_s, save_s;
} result;

/* One writer: n_layers copies of one packed layer under distinct names, then the save. */
static void run_writer(int spool, const char *path, int64_t n_layers, int64_t size, result *r)
{
    bench_counter cnt = {0, 0};
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.alloc = bench_count_alloc;
    cp.free = bench_count_free;
    cp.alloc_user = &cnt;
    dq_context *ctx = NULL;
    check(dq_context_create(&cp, &ctx), "dq_context_create");
    float *w = malloc(sizeof(float) * (size_t)(size * size));
    if (!w)
        exit(1);
    bench_seed(1);
    for (int64_t i = 0; i < size * size; i++)
        w[i] = (float)(bench_uniform() - 0.5);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.group_size = 128;
    dq_qmatrix *q = NULL;
    check(dq_qmatrix_pack(NULL, &qp, w, size, size, size, NULL, NULL, &q), "dq_qmatrix_pack");
    free(w);
    size_t base = cnt.live;
    cnt.peak = cnt.live;
    dq_file_writer *fw = NULL;
    check(dq_file_writer_create(ctx, &fw), "dq_file_writer_create");
    if (spool)
        check(dq_file_writer_spool(fw, path), "dq_file_writer_spool");
    double t0 = bench_now();
    for (int64_t l = 0; l < n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "layers.%lld.w", (long long)l);
        check(dq_file_writer_add_qmatrix(fw, name, q), "dq_file_writer_add_qmatrix");
    }
    r->add_s = bench_now() - t0;
    t0 = bench_now();
    check(dq_file_writer_save(fw, path), "dq_file_writer_save");
    r->save_s = bench_now() - t0;
    r->lib_peak = cnt.peak - base;
    r->hwm_kb = bench_status_kb("VmHWM");
    dq_file_writer_free(fw);
    dq_qmatrix_free(q);
    dq_context_free(ctx);
}

static void run_case(int spool, const char *path, int64_t n_layers, int64_t size, result *r)
{
    int fd[2];
    if (pipe(fd) != 0)
        exit(1);
    pid_t pid = fork();
    if (pid < 0)
        exit(1);
    if (pid == 0) {
        close(fd[0]);
        result mine;
        run_writer(spool, path, n_layers, size, &mine);
        _exit(write(fd[1], &mine, sizeof mine) == (ssize_t)sizeof mine ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], r, sizeof *r);
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof *r || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench_writer_memory: the %s case failed\n",
                spool ? "spooling" : "in-memory");
        exit(1);
    }
}

static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    static char ba[1 << 16], bb[1 << 16];
    while (same) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        same = na == nb && memcmp(ba, bb, na) == 0;
        if (na == 0)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    int64_t n_layers = argc > 2 ? atoll(argv[2]) : 64, size = argc > 3 ? atoll(argv[3]) : 4096;
    if (n_layers < 1 || size < 128 || size % 128) {
        fprintf(stderr, "usage: bench_writer_memory [dir [layers >= 1 [size, a multiple of "
                        "128]]]\n");
        return 2;
    }
    char mem_path[4096], spool_path[4096];
    snprintf(mem_path, sizeof mem_path, "%s/bench_writer_memory.mem.dq", dir);
    snprintf(spool_path, sizeof spool_path, "%s/bench_writer_memory.spool.dq", dir);
    bench_print_cpu();
    bench_print_load(" before");
    result mem, spool;
    run_case(0, mem_path, n_layers, size, &mem);
    run_case(1, spool_path, n_layers, size, &spool);
    bench_print_load(" after");
    struct stat st;
    if (stat(spool_path, &st) != 0 || !same_file(mem_path, spool_path)) {
        fprintf(stderr, "bench_writer_memory: the two files differ\n");
        return 1;
    }
    printf("%lld layers %lld x %lld W4 (groups of 128), file %.1f MiB\n", (long long)n_layers,
           (long long)size, (long long)size, (double)st.st_size / 1048576.0);
    printf("%-10s %12s %16s %10s %10s\n", "writer", "VmHWM MiB", "library peak MiB", "add s",
           "save s");
    const result *rs[2] = {&mem, &spool};
    const char *names[2] = {"in memory", "spooling"};
    for (int i = 0; i < 2; i++)
        printf("%-10s %12.1f %16.2f %10.2f %10.2f\n", names[i], (double)rs[i]->hwm_kb / 1024.0,
               (double)rs[i]->lib_peak / 1048576.0, rs[i]->add_s, rs[i]->save_s);
    printf("spooling / in memory: VmHWM %.3f, library peak %.4f, add + save time %.2f\n",
           (double)spool.hwm_kb / (double)mem.hwm_kb,
           (double)spool.lib_peak / (double)mem.lib_peak,
           (spool.add_s + spool.save_s) / (mem.add_s + mem.save_s));
    unlink(mem_path);
    unlink(spool_path);
    return 0;
}
