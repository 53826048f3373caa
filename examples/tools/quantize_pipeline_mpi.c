/* duquant-quantize's pipeline over MPI ranks (quantize_pipeline.h). Messages, all on
 * MPI_COMM_WORLD: the windows (broadcast from rank 0), the hidden states (TAG_STATES, rank to
 * the next rank owning blocks), block 0's chosen blocks under --block-choice first
 * (TAG_CHOICE, rank 0 to every other rank owning blocks), and at the end each rank's report
 * (gathered on rank 0). A rank that fails prints its rank and the reason and calls MPI_Abort,
 * so mpirun ends every rank and exits non-zero before any index is written. */
#define _POSIX_C_SOURCE 200809L
#include "quantize_pipeline.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <mpi.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { TAG_STATES = 1, TAG_CHOICE = 2 };
#define INDEX_NAME TOOL_INDEX_NAME
/* Floats per message: MPI counts are ints. */
#define CHUNK ((int64_t)1 << 28)

static int g_rank, g_size;

/* Started by a launcher (mpirun, mpiexec, srun): it names the rank in the environment. A
 * program started alone stays out of MPI (a singleton MPI_Init costs time and leaves
 * allocations that leak checkers report). */
static int launched(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                       "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

static int g_mpi;

int qt_pipeline_init(int *argc, char ***argv, int *rank, int *size)
{
    *rank = 0;
    *size = 1;
    if (!launched())
        return 0;
    g_mpi = 1;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        fprintf(stderr, "MPI_Init failed\n");
        return -1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    *rank = g_rank;
    *size = g_size;
    return 0;
}

void qt_pipeline_finish(void)
{
    if (g_mpi)
        MPI_Finalize();
}

/* Names this rank and what failed (the cause is printed above), then ends the job. */
static void fail(const char *what)
{
    fprintf(stderr, "duquant-quantize: rank %d of %d failed: %s\n", g_rank, g_size, what);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* not reached */
}

static void inject_failure(void)
{
    const char *v = getenv(QT_FAIL_ENV);
    char *end = NULL;
    if (!v)
        return;
    long r = strtol(v, &end, 10);
    if (end == v || *end != ':' || r != g_rank)
        return;
    if (strcmp(end + 1, "kill") == 0) {
        fprintf(stderr, "rank %d: killing itself (%s)\n", g_rank, QT_FAIL_ENV);
        fflush(stderr);
        raise(SIGKILL);
    }
    fprintf(stderr, "rank %d: failure injected by %s\n", g_rank, QT_FAIL_ENV);
    fail("injected failure");
}

/* Completes req, sleeping between tests: a blocking MPI_Recv polls the network on a full core
 * (Open MPI), which a rank waiting minutes for block 0's choice takes from the ranks still
 * working when they share cores. 0, or -1 when the request failed. */
static int wait_idle(MPI_Request *req)
{
    struct timespec nap = {0, 2000000}; /* 2 ms */
    for (;;) {
        int done = 0;
        if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return -1;
        if (done)
            return 0;
        nanosleep(&nap, NULL);
    }
}

/* Block 0's chosen blocks from rank 0; returns the seconds waited. */
static double recv_choice(int32_t *blocks)
{
    double t0 = MPI_Wtime();
    MPI_Request req;
    if (MPI_Irecv(blocks, L2C_N_INPUTS, MPI_INT32_T, 0, TAG_CHOICE, MPI_COMM_WORLD, &req) !=
            MPI_SUCCESS ||
        wait_idle(&req))
        fail("receiving block 0's choice");
    return MPI_Wtime() - t0;
}

static void send_floats(const float *x, int64_t n, int to, int tag)
{
    for (int64_t at = 0; at < n; at += CHUNK) {
        int64_t k = n - at < CHUNK ? n - at : CHUNK;
        if (MPI_Send(x + at, (int)k, MPI_FLOAT, to, tag, MPI_COMM_WORLD) != MPI_SUCCESS)
            fail("sending the hidden states");
    }
}

static void recv_floats(float *x, int64_t n, int from, int tag)
{
    for (int64_t at = 0; at < n; at += CHUNK) {
        int64_t k = n - at < CHUNK ? n - at : CHUNK;
        MPI_Request req;
        if (MPI_Irecv(x + at, (int)k, MPI_FLOAT, from, tag, MPI_COMM_WORLD, &req) !=
                MPI_SUCCESS ||
            wait_idle(&req))
            fail("receiving the hidden states");
    }
}

/* Block 0 chooses the blocks every later block reuses (--block-choice first with a block to
 * choose): the other ranks wait for its choice. */
static int choose_first(const qt_run *r)
{
    const l2c_quant_options *q = &r->o.q;
    return q->block_choice == L2C_BLOCK_FIRST && r->method->plan_flags &&
           (q->block_size == 0 || q->hadamard_block == 0);
}

/* The relative cost of block l. Block 0's choice of blocks delays every rank alike (each waits
 * for it before its first block), so it counts for nothing in the balance. */
static double block_cost(const qt_run *r, int32_t l)
{
    return l == 0 && choose_first(r) ? 0.0 : 1.0;
}

/* first[k], k = 0..size: rank k owns blocks [first[k], first[k + 1]), contiguous, each range
 * ending where the cost so far is nearest to (k + 1) / size of the whole; ranks beyond the
 * number of blocks own none. */
static void partition(const qt_run *r, int32_t n_layers, int size, int32_t *first)
{
    double total = 0, acc = 0;
    for (int32_t l = 0; l < n_layers; l++)
        total += block_cost(r, l);
    first[0] = 0;
    int32_t l = 0;
    for (int k = 0; k < size; k++) {
        int32_t left = size - k - 1; /* ranks after this one */
        double target = total * (k + 1) / size;
        int32_t end = l;
        if (l < n_layers)
            end = l + 1; /* at least one block while there are blocks */
        double at = acc + (end > l ? block_cost(r, l) : 0);
        while (end < n_layers && n_layers - end > left &&
               at + 0.5 * block_cost(r, end) < target) {
            at += block_cost(r, end);
            end++;
        }
        if (left == 0)
            end = n_layers, at = total;
        acc = at;
        first[k + 1] = end;
        l = end;
    }
}

/* The names of the tensors of a saved shard, one per line (malloc'ed), and its size. */
static char *shard_names(const char *path, int64_t *bytes, json_t **meta)
{
    FILE *f = fopen(path, "rb");
    unsigned char head[8];
    char *hdr = NULL, *names = NULL;
    json_t *j = NULL;
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || fread(head, 1, 8, f) != 8)
        goto out;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | head[i];
    if (n > (uint64_t)st.st_size || !(hdr = malloc(n)) || fread(hdr, 1, n, f) != n)
        goto out;
    json_error_t je;
    if (!(j = json_loadb(hdr, n, 0, &je)) || !json_is_object(j))
        goto out;
    size_t len = 1;
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) len += strlen(k) + 1;
    if (!(names = malloc(len)))
        goto out;
    size_t at = 0;
    json_object_foreach(j, k, v)
    {
        if (strcmp(k, "__metadata__") == 0)
            continue;
        at += (size_t)sprintf(names + at, "%s\n", k);
    }
    names[at] = '\0';
    *bytes = (int64_t)st.st_size;
    if (meta) {
        *meta = json_incref(json_object_get(j, "__metadata__"));
        if (!*meta) {
            free(names);
            names = NULL;
        }
    }
out:
    json_decref(j);
    free(hdr);
    if (f)
        fclose(f);
    return names;
}

static void shard_name(char *dst, size_t n, int k, int count)
{
    snprintf(dst, n, "model-%05d-of-%05d.dq.safetensors", k + 1, count);
}

/* The index (tensor name -> shard, and the run's settings from rank 0's shard), written to a
 * temporary name and renamed. names: the ranks' name lists back to back, at offs. */
static int write_index(const char *dir, json_t *meta0, int count, const char *names,
                       const int *offs, const int64_t *bytes)
{
    json_t *root = json_object(), *md = json_object(), *map = json_object();
    int64_t total = 0;
    for (int k = 0; k < count; k++)
        total += bytes[k];
    json_object_set_new(root, "metadata", md);
    json_object_set_new(root, "weight_map", map);
    json_object_set_new(md, "total_size", json_integer(total));
    json_object_set_new(md, "shard.count", json_integer(count));
    const char *k;
    json_t *v;
    json_object_foreach(meta0, k, v)
    {
        int run = strcmp(k, "model.config_json") == 0 || strcmp(k, "tokenizer.json") == 0 ||
                  strncmp(k, "__hash__", 8) == 0 || strncmp(k, "quant.layers.", 13) == 0 ||
                  strncmp(k, "shard.", 6) == 0 || strncmp(k, "layers.", 7) == 0;
        if (!run)
            json_object_set(md, k, v);
    }
    for (int s = 0; s < count; s++) {
        char file[64];
        shard_name(file, sizeof file, s, count);
        for (const char *p = names + offs[s]; *p;) {
            const char *e = strchr(p, '\n');
            if (!e)
                break;
            char name[1024];
            size_t len = (size_t)(e - p) < sizeof name - 1 ? (size_t)(e - p) : sizeof name - 1;
            memcpy(name, p, len);
            name[len] = '\0';
            json_object_set_new(map, name, json_string(file));
            p = e + 1;
        }
    }
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/%s", dir, INDEX_NAME);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int rc = json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (rc != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "%s: cannot write the index: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Bytes of block l's tensors in the float checkpoint (what this rank maps and reads). */
static int64_t block_bytes(const qt_run *r, int32_t l)
{
    int64_t n = 0;
    if (r->tm.hm) {
        char prefix[64];
        int len = snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
        const hf_checkpoint *ck = &r->tm.hm->ck;
        for (int64_t i = 0; i < ck->n_tensors; i++)
            if (strncmp(ck->tensors[i].name, prefix, (size_t)len) == 0)
                n += (int64_t)ck->tensors[i].nbytes;
        return n;
    }
    int64_t out_dim, in_dim;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        l2c_model_weight(&r->tm.m, l, k, &out_dim, &in_dim);
        n += out_dim * in_dim;
    }
    return (n + 2 * r->tm.m.c.dim) * (int64_t)sizeof(float);
}

/* Processor seconds of this process (user + system, all threads). */
static double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

typedef struct report {
    int32_t ok, names_len;
    int64_t shard_bytes;
    double t_written; /* since the common start */
} report;

int qt_pipeline_run(qt_run *r, int rank, int size)
{
    qt_options *o = &r->o;
    size_t ol = strlen(o->out);
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", (int)(ol > 1 && o->out[ol - 1] == '/' ? ol - 1 : ol),
             o->out);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "--out %s: under mpirun with %d ranks, a writable folder (DIR/) for "
                        "the shards\n",
                o->out, size);
        fail("bad --out");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double t_start = MPI_Wtime();
    /* An index from an earlier run must not name this run's shards before they are complete. */
    if (rank == 0) {
        char index[4200];
        snprintf(index, sizeof index, "%s/%s", dir, INDEX_NAME);
        if (unlink(index) != 0 && errno != ENOENT) {
            fprintf(stderr, "%s: cannot remove: %s\n", index, strerror(errno));
            fail("removing the earlier index");
        }
    }
    /* Rank 0 reads the text and embeds it; the others open only the config and blocks. */
    if (qt_open(r, rank == 0))
        fail("opening the model or the calibration text");
    int64_t head[3] = {r->n_w, r->total, (int64_t)r->calib_hash};
    MPI_Bcast(head, 3, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (rank != 0) {
        r->n_w = head[0], r->total = head[1], r->calib_hash = (uint64_t)head[2];
        if (!(r->len = malloc((size_t)r->n_w * sizeof *r->len)) || qt_states(r))
            fail("out of memory for the windows or hidden states");
    }
    MPI_Bcast(r->len, (int)r->n_w, MPI_INT64_T, 0, MPI_COMM_WORLD);

    int32_t n_layers = r->tm.m.c.n_layers;
    int32_t *first = malloc((size_t)(size + 1) * sizeof *first);
    if (!first)
        fail("out of memory");
    partition(r, n_layers, size, first);
    int32_t lo = first[rank], hi = first[rank + 1];
    int active = 0; /* ranks owning blocks: 0 .. active - 1 */
    while (active < size && first[active + 1] > first[active])
        active++;
    int prev = rank - 1, next = rank + 1 < active ? rank + 1 : -1;
    int64_t n = r->total * r->tm.m.c.dim;
    int first_choice = choose_first(r);
    int64_t sent = 0, sent_choice = 0, mapped = 0;
    double wait_states = 0, wait_choice = 0;
    for (int32_t l = lo; l < hi; l++)
        mapped += block_bytes(r, l);
    if (rank == 0)
        fprintf(stderr, "pipeline over %d ranks (%d owning blocks) with %s on %lld tokens%s\n",
                size, active, r->method->name, (long long)r->total,
                o->sequential ? " (each block's input from the quantized blocks)" : "");
    if (lo == hi) {
        fprintf(stderr, "rank %d of %d: no block (%d blocks)\n", rank, size, n_layers);
    } else {
        fprintf(stderr, "rank %d of %d: blocks %d..%d\n", rank, size, lo, hi - 1);
        inject_failure();
        char path[4200], file[64];
        shard_name(file, sizeof file, rank, active);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (qt_writer_open(r, path, rank == 0))
            fail("starting its shard");
        char v[32];
        snprintf(v, sizeof v, "%d", rank);
        qt_put_str(r, "shard.index", v);
        snprintf(v, sizeof v, "%d", active);
        qt_put_str(r, "shard.count", v);
        snprintf(v, sizeof v, "%d", lo);
        qt_put_str(r, "shard.first_layer", v);
        snprintf(v, sizeof v, "%d", hi - 1);
        qt_put_str(r, "shard.last_layer", v);
        if (r->failed)
            fail("writing its shard's metadata");
        double t0 = MPI_Wtime();
        if (prev >= 0)
            recv_floats(r->h, n, prev, TAG_STATES);
        wait_states = MPI_Wtime() - t0;
        /* Block 0's choice must be known before any later block is quantized. */
        int32_t *blocks = o->q.input_block;
        int need_choice = first_choice && lo > 0;
        if (o->sequential) {
            if (need_choice)
                wait_choice = recv_choice(blocks);
            for (int32_t l = lo; l < hi; l++) {
                memcpy(r->h2, r->h, (size_t)n * sizeof *r->h);
                if (qt_block(r, l, r->h2, r->h))
                    fail("quantizing a block");
                if (l == 0 && first_choice)
                    for (int k = 1; k < active; k++, sent_choice += sizeof o->q.input_block)
                        MPI_Send(blocks, L2C_N_INPUTS, MPI_INT32_T, k, TAG_CHOICE,
                                 MPI_COMM_WORLD);
                fprintf(stderr, "rank %d: block %d done\n", rank, l);
            }
            if (next >= 0)
                send_floats(r->h, n, next, TAG_STATES), sent += n * (int64_t)sizeof(float);
        } else {
            /* Forward first, keeping only the first block's input, so the next rank starts
             * early; then calibrate and quantize block by block from that input again: each
             * block's calibration pass computes the next block's input, as in one process,
             * so that one buffer of hidden states is held while quantizing, as there. */
            float *x = malloc((size_t)n * sizeof *x);
            if (!x)
                fail("out of memory for its first block's input");
            memcpy(x, r->h, (size_t)n * sizeof *r->h);
            /* The last rank passes nothing on: its blocks run once, while quantizing. */
            for (int32_t l = lo; next >= 0 && l < hi; l++)
                if (qt_forward(r, l, r->h))
                    fail("running a block");
            if (next >= 0)
                send_floats(r->h, n, next, TAG_STATES), sent += n * (int64_t)sizeof(float);
            free(r->h);
            r->h = NULL;
            if (need_choice)
                wait_choice = recv_choice(blocks);
            for (int32_t l = lo; l < hi; l++) {
                if (qt_block(r, l, x, NULL))
                    fail("quantizing a block");
                if (l == 0 && first_choice)
                    for (int k = 1; k < active; k++, sent_choice += sizeof o->q.input_block)
                        MPI_Send(blocks, L2C_N_INPUTS, MPI_INT32_T, k, TAG_CHOICE,
                                 MPI_COMM_WORLD);
                fprintf(stderr, "rank %d: block %d done\n", rank, l);
            }
            free(x);
        }
        if (qt_save(r, path))
            fail("saving its shard");
    }

    /* Every rank's report and tensor names on rank 0; the index only when all are in. */
    report me = {1, 0, 0, MPI_Wtime() - t_start};
    char *names = NULL;
    json_t *meta0 = NULL;
    if (lo < hi) {
        char path[4200], file[64];
        shard_name(file, sizeof file, rank, active);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        names = shard_names(path, &me.shard_bytes, rank == 0 ? &meta0 : NULL);
        if (!names)
            fail("reading back its shard's header");
        me.names_len = (int32_t)strlen(names) + 1;
    } else if (!(names = strdup("")))
        fail("out of memory");
    else
        me.names_len = 1;
    report *all = rank == 0 ? calloc((size_t)size, sizeof *all) : NULL;
    int *lens = rank == 0 ? calloc((size_t)size, sizeof *lens) : NULL;
    int *offs = rank == 0 ? calloc((size_t)size, sizeof *offs) : NULL;
    if (rank == 0 && (!all || !lens || !offs))
        fail("out of memory");
    /* The ranks finish at different times: wait for all without spinning. */
    MPI_Request all_in;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &all_in) != MPI_SUCCESS || wait_idle(&all_in))
        fail("waiting for the other ranks");
    MPI_Gather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, 0, MPI_COMM_WORLD);
    char *blob = NULL;
    int64_t blob_len = 0;
    if (rank == 0) {
        for (int k = 0; k < size; k++) {
            lens[k] = all[k].names_len;
            offs[k] = (int)blob_len;
            blob_len += lens[k];
        }
        if (blob_len > INT_MAX || !(blob = malloc((size_t)blob_len)))
            fail("out of memory for the tensor names");
    }
    MPI_Gatherv(names, me.names_len, MPI_CHAR, blob, lens, offs, MPI_CHAR, 0, MPI_COMM_WORLD);
    int rc = 0;
    if (rank == 0) {
        double last = 0;
        for (int k = 0; k < size; k++) {
            if (!all[k].ok) {
                fprintf(stderr, "rank %d reported a failure: no index written\n", k);
                rc = -1;
            }
            last = all[k].t_written > last ? all[k].t_written : last;
        }
        int64_t *bytes = malloc((size_t)size * sizeof *bytes);
        if (!bytes)
            fail("out of memory");
        for (int k = 0; k < size; k++)
            bytes[k] = all[k].shard_bytes;
        if (!rc && write_index(dir, meta0, active, blob, offs, bytes))
            fail("writing the index");
        free(bytes);
        if (!rc)
            fprintf(stderr, "wrote %s/%s and %d shards; last shard written %.2f s after the "
                            "start\n",
                    dir, INDEX_NAME, active, last);
    }
    const qt_times *t = &r->t;
    int boundaries = sent > 0 ? 1 : 0;
    char owned[64] = "no block";
    if (lo < hi)
        snprintf(owned, sizeof owned, "blocks %d..%d", lo, hi - 1);
    fprintf(stderr,
            "rank %d of %d: %s; sent %lld bytes of hidden states (%d block "
            "boundary x %lld tokens x %d x 4 = %lld) and %lld bytes of block choices; mapped "
            "%.1f MiB of its blocks' float tensors; peak RSS %.1f MiB; stages: load %.2f s, "
            "read blocks %.2f s, calibrate %.2f s, quantize %.2f s, forward %.2f s, write "
            "%.2f s; waited %.2f s for the hidden states, %.2f s for block 0's choice; shard "
            "written %.2f s after the start; %.2f processor s\n",
            rank, size, owned, (long long)sent, boundaries, (long long)r->total,
            r->tm.m.c.dim, (long long)(boundaries * n * (int64_t)sizeof(float)),
            (long long)sent_choice, (double)mapped / 1048576.0, tool_peak_rss_mib(), t->load,
            t->read, t->calib, t->quant, t->next, t->write, wait_states, wait_choice,
            me.t_written, cpu_s());
    json_decref(meta0);
    free(names);
    free(blob);
    free(all);
    free(lens);
    free(offs);
    free(first);
    return rc;
}
