/* Bounded reading: the peak resident memory and the time of opening hostile and normal files.
 *
 *   bench_reader_memory [dir [size]]   dir for the temporary files (default "."), layer size
 *                                      (default 4096: a size x size W4 layer, groups of 128;
 *                                      a multiple of 32)
 *
 * Each case runs in a fresh process (this program run again), which reports its peak resident
 * memory (VmHWM) before and after the case, the peak of the bytes the library allocated (a
 * counting allocator on the context), the status and the wall and processor time:
 *  - a 2 GiB safetensors file that is not a duquant file (a sparse file: a hole for its data),
 *    opened copying and mapped: refused from its header;
 *  - a header of about 100 MiB of metadata pairs (the largest accepted), keys in order and
 *    shuffled: the table it makes, against the header's size;
 *  - a 176-byte plan file declaring 8388608 rotation matrices: dq_file_reader_get_plan;
 *  - a file holding a size x size layer in both layouts, opened copying and mapped, each layer
 *    created with dq_file_reader_get_linear;
 *  - a file holding a size x size F32 tensor and a plan of width size (smoothing, two
 *    rotations of 32 x 32 matrices, a permutation), opened copying and mapped, both copied out
 *    (dq_file_reader_get_tensor_f32, dq_file_reader_get_plan): the growth of the process's
 *    memory (RssAnon + RssFile) against the bytes copied. The mapped reader gives back the
 *    pages it copied from (1.0x: the copies only); the copying reader's data section stays
 *    (about 2.0x). */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_common.h"
#include "duquant.h"

static void die(const char *what)
{
    fprintf(stderr, "bench_reader_memory: %s\n", what);
    exit(1);
}

static void check(dq_status st, const char *what)
{
    if (st != DQ_OK) {
        fprintf(stderr, "%s: %s\n", what, dq_status_name(st));
        exit(1);
    }
}

/* ---- the files ---- */

static void write_header(FILE *f, uint64_t n)
{
    for (int k = 0; k < 8; k++)
        fputc((int)((n >> (8 * k)) & 0xFF), f);
}

/* A safetensors file of one U8 tensor of data_size bytes, metadata format = "other"; the
 * data section is a hole. */
static void foreign_file(const char *path, uint64_t data_size)
{
    char json[256];
    int n = snprintf(json, sizeof json,
                     "{\"__metadata__\":{\"format\":\"other\"},\"x\":{\"dtype\":\"U8\","
                     "\"shape\":[%" PRIu64 "],\"data_offsets\":[0,%" PRIu64 "]}}",
                     data_size, data_size);
    const uint64_t padded = ((uint64_t)n + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    if (!f)
        die(path);
    write_header(f, padded);
    fwrite(json, 1, (size_t)n, f);
    for (uint64_t i = (uint64_t)n; i < padded; i++)
        fputc(' ', f);
    if (fflush(f) != 0 || ftruncate(fileno(f), (off_t)(8 + padded + data_size)) != 0)
        die("ftruncate");
    fclose(f);
}

/* A duquant file whose header is about target bytes of metadata pairs
 * "k<8 digits>":"value<8 digits>", keys in order or shuffled. */
static uint64_t metadata_file(const char *path, uint64_t target, int shuffled)
{
    const char *head = "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\"";
    const uint64_t pair = 28; /* ,"k00000000":"value00000000" */
    const uint32_t n = (uint32_t)((target - strlen(head) - 2) / pair);
    uint32_t *order = malloc((size_t)n * sizeof *order);
    if (!order)
        die("memory");
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    bench_seed(7);
    for (uint32_t i = n; shuffled && i > 1; i--) {
        uint32_t j = (uint32_t)(bench_rand64() % i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        die(path);
    write_header(f, 0); /* rewritten below */
    fputs(head, f);
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, ",\"k%08" PRIu32 "\":\"value%08" PRIu32 "\"", order[i], order[i]);
    fputs("}}", f);
    const uint64_t len = (uint64_t)ftell(f) - 8, padded = (len + 7) / 8 * 8;
    for (uint64_t i = len; i < padded; i++)
        fputc(' ', f);
    if (fseek(f, 0, SEEK_SET) != 0)
        die(path);
    write_header(f, padded);
    if (fclose(f) != 0)
        die(path);
    free(order);
    return padded;
}

static void plan_file(const char *path)
{
    const char *json =
        "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\",\"p.type\":\"plan\","
        "\"p.cols\":\"16777216\",\"p.n_rotations\":\"1\",\"p.rot0.block_size\":\"2\","
        "\"p.rot0.n_matrices\":\"8388608\"}}";
    const uint64_t n = strlen(json), padded = (n + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    if (!f)
        die(path);
    write_header(f, padded);
    fputs(json, f);
    for (uint64_t i = n; i < padded; i++)
        fputc(' ', f);
    fclose(f);
}

/* A size x size W4 layer (groups of 128, no plan) stored as "flat" (packed matrix) and as
 * "blocked" (the kernels' layout). */
static void layer_file(const char *path, int64_t size)
{
    float *w = malloc((size_t)(size * size) * sizeof *w);
    if (!w)
        die("memory");
    bench_seed(11);
    for (int64_t i = 0; i < size * size; i++)
        w[i] = (float)(bench_uniform() - 0.5);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.group_size = 128;
    dq_qmatrix *q = NULL;
    check(dq_qmatrix_pack(NULL, &qp, w, size, size, size, NULL, NULL, &q), "pack");
    free(w);
    dq_linear *lin = NULL;
    check(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin), "linear");
    dq_file_writer *fw = NULL;
    check(dq_file_writer_create(NULL, &fw), "writer");
    check(dq_file_writer_add_linear(fw, "flat", NULL, NULL, q, NULL), "add_linear");
    check(dq_file_writer_add_linear_layer(fw, "blocked", lin, NULL), "add_linear_layer");
    check(dq_file_writer_save(fw, path), "save");
    dq_file_writer_free(fw);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
}

/* A rotation of cols channels (cols a multiple of 32), one 32 x 32 matrix per block of 2 x 2
 * turns. */
static dq_rotation *turns(int64_t cols)
{
    const int64_t bs = 32;
    float *m = calloc((size_t)(cols * bs), sizeof *m);
    if (!m)
        die("memory");
    for (int64_t b = 0; b < cols / bs; b++)
        for (int64_t k = 0; k < bs; k += 2) {
            float *blk = m + b * bs * bs;
            const double a = 6.283185307179586 * bench_uniform();
            blk[k * bs + k] = blk[(k + 1) * bs + k + 1] = (float)cos(a);
            blk[k * bs + k + 1] = (float)sin(a);
            blk[(k + 1) * bs + k] = (float)-sin(a);
        }
    dq_rotation *r = NULL;
    check(dq_rotation_from_matrices(NULL, cols, (int32_t)bs, 1, m, cols * bs, &r), "rotation");
    free(m);
    return r;
}

/* "t": a size x size F32 tensor; "p": a plan of width size. Returns the bytes a reader copies
 * out of them (the tensor's floats, the plan's factors, matrices and permutation). */
static uint64_t copy_file(const char *path, int64_t size)
{
    float *t = malloc((size_t)(size * size) * sizeof *t);
    float *smooth = malloc((size_t)size * sizeof *smooth);
    int64_t *perm = malloc((size_t)size * sizeof *perm);
    if (!t || !smooth || !perm)
        die("memory");
    bench_seed(13);
    for (int64_t i = 0; i < size * size; i++)
        t[i] = (float)(bench_uniform() - 0.5);
    for (int64_t j = 0; j < size; j++) {
        smooth[j] = (float)(0.5 + bench_uniform());
        perm[j] = (j * 7 + 3) % size;
    }
    dq_rotation *rots[2] = {turns(size), turns(size)};
    const int64_t *perms[1] = {perm};
    dq_plan *pl = NULL;
    check(dq_plan_assemble(NULL, size, smooth, 2, (const dq_rotation *const *)rots, perms, &pl),
          "plan");
    dq_file_writer *fw = NULL;
    const int64_t shape[2] = {size, size};
    check(dq_file_writer_create(NULL, &fw), "writer");
    check(dq_file_writer_add_tensor_f32(fw, "t", t, 2, shape), "add_tensor_f32");
    check(dq_file_writer_add_plan(fw, "p", pl), "add_plan");
    check(dq_file_writer_save(fw, path), "save");
    dq_file_writer_free(fw);
    dq_plan_free(pl);
    dq_rotation_free(rots[0]);
    dq_rotation_free(rots[1]);
    free(t);
    free(smooth);
    free(perm);
    return (uint64_t)(size * size) * 4 + (uint64_t)size * (4 + 2 * 32 * 4 + 8);
}

/* ---- one case, in a fresh process ---- */

enum { CASE_OPEN, CASE_OPEN_MAPPED, CASE_PLAN, CASE_LAYERS, CASE_LAYERS_MAPPED, CASE_COPY,
       CASE_COPY_MAPPED };

/* Opens the file of copy_file and copies its tensor and plan out; prints the status, RssAnon
 * and RssFile (KiB) before opening and after the copies. */
static int copy_child(int what, const char *path)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = what == CASE_COPY_MAPPED ? DQ_FILE_F_BORROW : 0;
    const long anon0 = bench_status_kb("RssAnon"), file0 = bench_status_kb("RssFile");
    dq_file_reader *r = NULL;
    dq_status st = dq_file_reader_open(NULL, &fp, path, &r);
    int32_t ndim = 0;
    int64_t shape[DQ_FILE_MAX_DIMS] = {0};
    if (st == DQ_OK)
        st = dq_file_reader_tensor_info(r, "t", NULL, &ndim, shape);
    float *t = st == DQ_OK ? malloc((size_t)(shape[0] * shape[1]) * sizeof *t) : NULL;
    if (st == DQ_OK && t)
        st = dq_file_reader_get_tensor_f32(r, "t", t, shape[0] * shape[1]);
    dq_plan *pl = NULL;
    if (st == DQ_OK)
        st = dq_file_reader_get_plan(r, NULL, "p", &pl);
    printf("%d %ld %ld %ld %ld\n", (int)st, anon0, file0, bench_status_kb("RssAnon"),
           bench_status_kb("RssFile"));
    dq_plan_free(pl);
    free(t);
    dq_file_reader_free(r);
    return 0;
}

/* Runs a copy case in a new process; prints one line: name, status, figures. */
static void run_copy_case(const char *self, int what, const char *path, const char *name,
                          uint64_t copied)
{
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        char w[8];
        snprintf(w, sizeof w, "%d", what);
        execl(self, self, "--child", w, path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    int st = 0;
    long a0 = 0, f0 = 0, a1 = 0, f1 = 0;
    int got = f ? fscanf(f, "%d %ld %ld %ld %ld", &st, &a0, &f0, &a1, &f1) : 0;
    if (f)
        fclose(f);
    int status = 0;
    waitpid(pid, &status, 0);
    if (got != 5) {
        printf("%-34s failed to run\n", name);
        return;
    }
    const double mib = 1024.0, grown = (double)(a1 - a0 + f1 - f0) * 1024.0;
    printf("%-34s %-15s copied %7.1f MiB; from before the open RssAnon %+7.1f MiB, RssFile "
           "%+7.1f MiB: %+7.1f MiB = %5.2fx the bytes copied\n",
           name, dq_status_name(st), (double)copied / (mib * mib), (double)(a1 - a0) / mib,
           (double)(f1 - f0) / mib, grown / (mib * mib), grown / (double)copied);
    fflush(stdout);
}

static int child(int what, const char *path)
{
    bench_counter cnt = {0, 0};
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.alloc = bench_count_alloc;
    cp.free = bench_count_free;
    cp.alloc_user = &cnt;
    dq_context *ctx = NULL;
    check(dq_context_create(&cp, &ctx), "context");
    cnt.peak = cnt.live;
    const size_t idle = cnt.live;
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    if (what == CASE_OPEN_MAPPED || what == CASE_LAYERS_MAPPED)
        fp.flags = DQ_FILE_F_BORROW;
    const long before = bench_status_kb("VmHWM");
    const double t0 = bench_now(), c0 = bench_cpu_now();
    dq_file_reader *r = NULL;
    dq_status st = dq_file_reader_open(ctx, &fp, path, &r);
    if (st == DQ_OK && what == CASE_PLAN) {
        dq_plan *pl = NULL;
        st = dq_file_reader_get_plan(r, ctx, "p", &pl);
        dq_plan_free(pl);
    }
    dq_linear *layers[2] = {NULL, NULL};
    if (st == DQ_OK && (what == CASE_LAYERS || what == CASE_LAYERS_MAPPED)) {
        st = dq_file_reader_get_linear(r, ctx, "flat", NULL, &layers[0]);
        if (st == DQ_OK)
            st = dq_file_reader_get_linear(r, ctx, "blocked", NULL, &layers[1]);
    }
    const double t1 = bench_now(), c1 = bench_cpu_now();
    const long after = bench_status_kb("VmHWM");
    printf("%d %ld %ld %zu %.3f %.3f\n", (int)st, before, after, cnt.peak - idle, t1 - t0,
           c1 - c0);
    dq_linear_free(layers[0]);
    dq_linear_free(layers[1]);
    dq_file_reader_free(r);
    dq_context_free(ctx);
    return 0;
}

/* Runs the case in a new process; prints one line: name, status, figures. */
static void run_case(const char *self, int what, const char *path, const char *name,
                     uint64_t ref_bytes, const char *ref_name)
{
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        char w[8];
        snprintf(w, sizeof w, "%d", what);
        execl(self, self, "--child", w, path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    int st = 0;
    long before = 0, after = 0;
    size_t peak = 0;
    double wall = 0, cpu = 0;
    int got = f ? fscanf(f, "%d %ld %ld %zu %lf %lf", &st, &before, &after, &peak, &wall, &cpu)
                : 0;
    if (f)
        fclose(f);
    int status = 0;
    waitpid(pid, &status, 0);
    if (got != 6) {
        printf("%-34s failed to run\n", name);
        return;
    }
    const double mib = 1024.0 * 1024.0;
    printf("%-34s %-15s peak RSS %8.1f MiB (+%8.1f MiB) allocated %8.1f MiB = %6.2fx %s "
           "(%.1f MiB)  %6.3f s wall %6.3f s cpu\n",
           name, dq_status_name(st), (double)after / 1024.0, (double)(after - before) / 1024.0,
           (double)peak / mib, ref_bytes ? (double)peak / (double)ref_bytes : 0.0, ref_name,
           (double)ref_bytes / mib, wall, cpu);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--child"))
        return atoi(argv[2]) >= CASE_COPY ? copy_child(atoi(argv[2]), argv[3])
                                           : child(atoi(argv[2]), argv[3]);
    const char *dir = argc > 1 ? argv[1] : ".";
    const int64_t size = argc > 2 ? atoll(argv[2]) : 4096;
    if (size < 128 || size % 32 != 0) {
        fprintf(stderr, "usage: bench_reader_memory [dir [size >= 128, a multiple of 32]]\n");
        return 2;
    }
    bench_print_cpu();
    char foreign[4096], meta_sorted[4096], meta_shuffled[4096], plan[4096], layers[4096];
    snprintf(foreign, sizeof foreign, "%s/bench_reader_foreign.safetensors", dir);
    snprintf(meta_sorted, sizeof meta_sorted, "%s/bench_reader_meta_sorted.safetensors", dir);
    snprintf(meta_shuffled, sizeof meta_shuffled, "%s/bench_reader_meta_shuffled.safetensors",
             dir);
    snprintf(plan, sizeof plan, "%s/bench_reader_plan.safetensors", dir);
    snprintf(layers, sizeof layers, "%s/bench_reader_layers.safetensors", dir);

    const uint64_t two_gib = (uint64_t)2 << 30;
    foreign_file(foreign, two_gib);
    run_case(argv[0], CASE_OPEN, foreign, "2 GiB foreign file, copying", two_gib, "data");
    run_case(argv[0], CASE_OPEN_MAPPED, foreign, "2 GiB foreign file, mapped", two_gib, "data");
    remove(foreign);

    const uint64_t target = ((uint64_t)100 << 20) - 64;
    uint64_t h = metadata_file(meta_sorted, target, 0);
    run_case(argv[0], CASE_OPEN, meta_sorted, "100 MiB metadata header, in order", h, "header");
    remove(meta_sorted);
    h = metadata_file(meta_shuffled, target, 1);
    run_case(argv[0], CASE_OPEN, meta_shuffled, "100 MiB metadata header, shuffled", h,
             "header");
    remove(meta_shuffled);

    plan_file(plan);
    run_case(argv[0], CASE_PLAN, plan, "176-byte plan file, get_plan", 176, "file");
    remove(plan);

    layer_file(layers, size);
    FILE *f = fopen(layers, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0)
        die(layers);
    const uint64_t file_bytes = (uint64_t)ftell(f);
    fclose(f);
    char name[64];
    snprintf(name, sizeof name, "%lldx%lld layers, copying", (long long)size, (long long)size);
    run_case(argv[0], CASE_LAYERS, layers, name, file_bytes, "file");
    snprintf(name, sizeof name, "%lldx%lld layers, mapped", (long long)size, (long long)size);
    run_case(argv[0], CASE_LAYERS_MAPPED, layers, name, file_bytes, "file");
    remove(layers);

    char copy[4096];
    snprintf(copy, sizeof copy, "%s/bench_reader_copy.safetensors", dir);
    const uint64_t copied = copy_file(copy, size);
    snprintf(name, sizeof name, "%lldx%lld tensor + plan, copying", (long long)size,
             (long long)size);
    run_copy_case(argv[0], CASE_COPY, copy, name, copied);
    snprintf(name, sizeof name, "%lldx%lld tensor + plan, mapped", (long long)size,
             (long long)size);
    run_copy_case(argv[0], CASE_COPY_MAPPED, copy, name, copied);
    remove(copy);
    bench_print_load(" after");
    return 0;
}
