/* Spooling file writers (dq_file_writer_spool): the same bytes as a writer keeping the data in
 * memory, writer memory that does not grow with the data (a counting allocator on the
 * context), and failures (folders, file size limit, allocation) that leave no file, no
 * temporary and no leak. */
#define _XOPEN_SOURCE 700

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dq_check_run.h"
#include "dq_test.h"
#include "duquant.h"
#include "test_count_alloc.h"

typedef struct log_capture {
    int count;
    char last[1024];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR)
        return;
    c->count++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

/* A context counting its allocations in c (NULL: not counted) and logging errors to cap. */
static dq_context *make_ctx(counter *c, log_capture *cap)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    if (c) {
        p.alloc = count_alloc;
        p.free = count_free;
        p.alloc_user = c;
    }
    if (cap) {
        memset(cap, 0, sizeof *cap);
        p.log = capture_log;
        p.log_user = cap;
    }
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

/* ---- folders and files ---- */

static void make_dir(char *dir, size_t cap, const char *name)
{
    snprintf(dir, cap, "test_file_spool_%s_%ld", name, (long)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Entries of dir other than ".", ".." and keep (NULL: none kept). */
static int count_entries(const char *dir, const char *keep)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            !(keep && !strcmp(e->d_name, keep)))
            n++;
    closedir(d);
    return n;
}

static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    uint8_t *b = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return b;
}

static bool file_equals(const char *path, const uint8_t *want, size_t size)
{
    size_t n = 0;
    uint8_t *b = slurp(path, &n);
    bool eq = b && n == size && memcmp(b, want, size) == 0;
    free(b);
    return eq;
}

static uint8_t *writer_bytes(const dq_file_writer *w, size_t *size)
{
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *b = malloc(*size);
    ck_assert_ptr_nonnull(b);
    size_t again = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, b, *size, &again), DQ_OK);
    ck_assert_uint_eq(again, *size);
    return b;
}

/* ---- the objects written: every kind of tensor a writer stores ---- */

enum { IN = 48, OUT = 20, SAMPLE = 32 };

typedef struct objects {
    dq_plan *plan;          /* smoothing, two greedy rotations and a permutation */
    dq_plan *hadamard;      /* another kind of plan */
    dq_qmatrix *asym, *sym; /* transformed by plan: zero points / none, groups of 16 */
    dq_qmatrix *plain;      /* packed without a plan */
    dq_linear *layer;       /* blocked layout */
    float bias[OUT];
    float table[5 * 7];
} objects;

static dq_plan *build_plan(int32_t method, uint32_t flags)
{
    float *x = malloc(sizeof(float) * SAMPLE * IN), wabs[IN];
    test_rng rng = {3};
    test_fill_activations(&rng, x, SAMPLE, IN, IN, 1);
    for (int j = 0; j < IN; j++)
        wabs[j] = 0.25f + (float)(j % 7) * 0.125f;
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    p.flags = flags;
    p.block_size = 16;
    p.method = method;
    p.max_rotation_step = 8;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, SAMPLE, IN, IN, wabs, &pl),
                     DQ_OK);
    free(x);
    return pl;
}

static dq_qmatrix *pack(const dq_plan *pl, int32_t scheme, int32_t group)
{
    float w[OUT * IN];
    test_rng rng = {11};
    for (int i = 0; i < OUT * IN; i++)
        w[i] = (float)test_rng_normal(&rng);
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.scheme = scheme;
    p.group_size = group;
    dq_qmatrix *q = NULL;
    if (pl)
        ck_assert_int_eq(
            dq_qmatrix_pack_transformed(NULL, &p, pl, w, OUT, IN, IN, NULL, NULL, &q), DQ_OK);
    else
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, OUT, IN, IN, NULL, NULL, &q), DQ_OK);
    return q;
}

static void make_objects(objects *o)
{
    memset(o, 0, sizeof *o);
    o->plan = build_plan(DQ_ROT_METHOD_GREEDY, DQ_PLAN_F_DEFAULT);
    o->hadamard = build_plan(DQ_ROT_METHOD_HADAMARD, DQ_PLAN_F_ROTATE);
    o->asym = pack(o->plan, DQ_QUANT_ASYM, 16);
    o->sym = pack(o->plan, DQ_QUANT_SYM, 0);
    o->plain = pack(NULL, DQ_QUANT_ASYM, 0);
    for (int i = 0; i < OUT; i++)
        o->bias[i] = 0.25f * (float)i - 1.0f;
    for (int i = 0; i < 5 * 7; i++)
        o->table[i] = (float)i / 3.0f;
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = 4;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, o->plan, o->sym, o->bias, &o->layer), DQ_OK);
}

static void free_objects(objects *o)
{
    dq_linear_free(o->layer);
    dq_qmatrix_free(o->asym);
    dq_qmatrix_free(o->sym);
    dq_qmatrix_free(o->plain);
    dq_plan_free(o->plan);
    dq_plan_free(o->hadamard);
}

/* The same calls on any writer: metadata, float tensors (a matrix, a vector, a scalar, an
 * empty one), two plans, packed matrices, linear layers in both layouts, and two refused
 * additions in between (their parts are dropped again). Stops at the first failure. */
static dq_status add_all(dq_file_writer *w, const objects *o)
{
    const int64_t shape[2] = {5, 7}, empty[2] = {3, 0}, vec = 35;
    const float one = 1.5f;
    dq_status st;
    if ((st = dq_file_writer_add_metadata(w, "model", "spool test")) != DQ_OK ||
        (st = dq_file_writer_add_tensor_f32(w, "table", o->table, 2, shape)) != DQ_OK ||
        (st = dq_file_writer_add_plan(w, "p", o->plan)) != DQ_OK)
        return st;
    /* Refused halfway through (the prefix's parts are taken): nothing of it stays. */
    if (dq_file_writer_add_qmatrix(w, "p", o->asym) == DQ_OK)
        return DQ_ERR_BAD_STATE;
    if ((st = dq_file_writer_add_qmatrix(w, "q.asym", o->asym)) != DQ_OK ||
        (st = dq_file_writer_add_plan(w, "h", o->hadamard)) != DQ_OK ||
        (st = dq_file_writer_add_tensor_f32(w, "vector", o->table, 1, &vec)) != DQ_OK ||
        (st = dq_file_writer_add_tensor_f32(w, "scalar", &one, 0, NULL)) != DQ_OK ||
        (st = dq_file_writer_add_tensor_f32(w, "empty", NULL, 2, empty)) != DQ_OK ||
        (st = dq_file_writer_add_qmatrix(w, "q.plain", o->plain)) != DQ_OK ||
        (st = dq_file_writer_add_linear(w, "l.packed", NULL, "p", o->asym, o->bias)) != DQ_OK)
        return st;
    if (dq_file_writer_add_linear_layer(w, "l.blocked", o->layer, "h") == DQ_OK)
        return DQ_ERR_BAD_STATE; /* the wrong plan */
    if ((st = dq_file_writer_add_linear_layer(w, "l.blocked", o->layer, "p")) != DQ_OK ||
        (st = dq_file_writer_add_metadata(w, "last", "after the layers")) != DQ_OK)
        return st;
    return DQ_OK;
}

/* The bytes of a writer without spooling given add_all. */
static uint8_t *reference_bytes(const objects *o, size_t *size)
{
    dq_context *ctx = make_ctx(NULL, NULL);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(add_all(w, o), DQ_OK);
    uint8_t *b = writer_bytes(w, size);
    dq_file_writer_free(w);
    dq_context_free(ctx);
    return b;
}

/* ---- tests ---- */

START_TEST(spooled_bytes_equal_memory_bytes)
{
    char dir[256], other[256], path[300], path2[300];
    make_dir(dir, sizeof dir, "same");
    make_dir(other, sizeof other, "other");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    snprintf(path2, sizeof path2, "%s/n.safetensors", other);
    objects o;
    make_objects(&o);
    size_t n_ref;
    uint8_t *ref = reference_bytes(&o, &n_ref);

    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_OK);
    ck_assert_int_eq(add_all(w, &o), DQ_OK);
    /* The spool file is unlinked at once: nothing shows in the folder while adding. */
    ck_assert_int_eq(count_entries(dir, NULL), 0);
    size_t n;
    uint8_t *b = writer_bytes(w, &n);
    ck_assert_uint_eq(n, n_ref);
    ck_assert(memcmp(b, ref, n) == 0);
    free(b);
    ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
    ck_assert(file_equals(path, ref, n_ref));
    /* Another folder, and the same path again (the spool is read, never consumed). */
    ck_assert_int_eq(dq_file_writer_save(w, path2), DQ_OK);
    ck_assert(file_equals(path2, ref, n_ref));
    ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
    ck_assert(file_equals(path, ref, n_ref));
    dq_file_writer_free(w);
    ck_assert_int_eq(count_entries(dir, "m.safetensors"), 0);
    ck_assert_int_eq(count_entries(other, "n.safetensors"), 0);

    /* The saved file loads; a layer from it is the layer written. */
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_open(NULL, NULL, path, &r), DQ_OK);
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "p", &pl), DQ_OK);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.blocked", pl, &lin), DQ_OK);
    dq_linear_free(lin);
    dq_plan_free(pl);
    dq_file_reader_free(r);

    free(ref);
    free_objects(&o);
    remove_dir(dir);
    remove_dir(other);
}
END_TEST

/* 64 MiB of tensors added to a spooling writer: what it holds afterwards stays under a bound
 * that does not depend on the data, each addition needs at most one tensor's copy, and saving
 * one copy buffer; a writer keeping the data holds all of it. */
START_TEST(writer_memory_is_bounded)
{
    enum { N_TENSORS = 64 };
    const size_t tensor_bytes = (size_t)1 << 20, bound = (size_t)256 << 10;
    const int64_t n = (int64_t)(tensor_bytes / sizeof(float));
    float *x = malloc(tensor_bytes);
    ck_assert_ptr_nonnull(x);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i % 1000) * 0.001f;
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "bounded");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    for (int spool = 1; spool >= 0; spool--) {
        counter c = {0};
        dq_context *ctx = make_ctx(&c, NULL);
        size_t base = c.live;
        dq_file_writer *w = NULL;
        ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
        if (spool)
            ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_OK);
        size_t most_live = 0, most_peak = 0;
        for (int t = 0; t < N_TENSORS; t++) {
            char name[32];
            snprintf(name, sizeof name, "t%d", t);
            size_t before = c.peak = c.live;
            ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, name, x, 1, &n), DQ_OK);
            most_peak = c.peak - before > most_peak ? c.peak - before : most_peak;
            most_live = c.live - base > most_live ? c.live - base : most_live;
        }
        if (spool) {
            ck_assert_msg(most_live < bound, "spooling writer holds %zu bytes", most_live);
            ck_assert_msg(most_peak < tensor_bytes + bound, "one addition took %zu bytes",
                          most_peak);
            size_t before = c.peak = c.live;
            ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
            /* The header and one copy buffer of 1 MiB. */
            ck_assert_msg(c.peak - before < ((size_t)1 << 20) + bound, "saving took %zu bytes",
                          c.peak - before);
        } else {
            ck_assert_uint_ge(most_live, N_TENSORS * tensor_bytes);
            /* The same file. */
            size_t nb;
            uint8_t *b = writer_bytes(w, &nb);
            ck_assert(file_equals(path, b, nb));
            free(b);
        }
        dq_file_writer_free(w);
        dq_context_free(ctx);
        ck_assert_uint_eq(c.live, 0);
    }
    free(x);
    remove_dir(dir);
}
END_TEST

START_TEST(spool_refusals)
{
    char dir[256], path[300], bad[400];
    make_dir(dir, sizeof dir, "refusals");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    log_capture cap;
    dq_context *ctx = make_ctx(NULL, &cap);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(NULL, path), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_spool(w, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_spool(w, ""), DQ_ERR_INVALID_ARG);
    /* A folder that does not exist, and a "folder" that is a file. */
    snprintf(bad, sizeof bad, "%s/missing/m.safetensors", dir);
    ck_assert_int_eq(dq_file_writer_spool(w, bad), DQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(cap.last, "dq_file_writer_spool"));
    ck_assert_ptr_nonnull(strstr(cap.last, bad));
    ck_assert_ptr_nonnull(strstr(cap.last, strerror(ENOENT)));
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(bad, sizeof bad, "%s/x", path);
    ck_assert_int_eq(dq_file_writer_spool(w, bad), DQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(cap.last, strerror(ENOTDIR)));
    /* A folder without write permission (root writes anyway: then it succeeds). */
    char ro[300], ro_path[350];
    snprintf(ro, sizeof ro, "%s/ro", dir);
    ck_assert_int_eq(mkdir(ro, 0555), 0);
    snprintf(ro_path, sizeof ro_path, "%s/m.safetensors", ro);
    if (access(ro, W_OK) != 0) {
        ck_assert_int_eq(dq_file_writer_spool(w, ro_path), DQ_ERR_IO);
        ck_assert_ptr_nonnull(strstr(cap.last, strerror(EACCES)));
    }
    ck_assert_int_eq(count_entries(ro, NULL), 0);
    /* After refusals the writer still works, in memory; metadata may precede spooling. */
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "k", "v"), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_ERR_BAD_STATE);
    dq_file_writer_free(w);
    /* Too late once a tensor is in. */
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    const float v = 1.0f;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "s", &v, 0, NULL), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_ERR_BAD_STATE);
    ck_assert_ptr_nonnull(strstr(cap.last, "before spooling"));
    dq_file_writer_free(w);
    dq_context_free(ctx);
    ck_assert_int_eq(count_entries(dir, "m.safetensors") - 1, 0); /* only ro/ */
    remove_dir(dir);
}
END_TEST

/* Saving a spooling writer into a folder that refuses: DQ_ERR_IO, no file anywhere, and the
 * writer saves afterwards. */
START_TEST(save_failure_leaves_nothing)
{
    char dir[256], path[300], bad[400];
    make_dir(dir, sizeof dir, "savefail");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    objects o;
    make_objects(&o);
    size_t n_ref;
    uint8_t *ref = reference_bytes(&o, &n_ref);
    log_capture cap;
    dq_context *ctx = make_ctx(NULL, &cap);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_OK);
    ck_assert_int_eq(add_all(w, &o), DQ_OK);
    snprintf(bad, sizeof bad, "%s/missing/m.safetensors", dir);
    ck_assert_int_eq(dq_file_writer_save(w, bad), DQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(cap.last, "dq_file_writer_save"));
    ck_assert_int_eq(dq_file_writer_save(w, dir), DQ_ERR_IO); /* a folder */
    ck_assert_int_eq(count_entries(dir, NULL), 0);
    ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
    ck_assert(file_equals(path, ref, n_ref));
    dq_file_writer_free(w);
    dq_context_free(ctx);
    ck_assert_int_eq(count_entries(dir, "m.safetensors"), 0);
    free(ref);
    free_objects(&o);
    remove_dir(dir);
}
END_TEST

/* Sets the soft file size limit (the hard one stays); returns the old soft limit. */
static rlim_t set_fsize(rlim_t soft)
{
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = soft;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    return old;
}

/* A spool write that fails (the file size limit) is DQ_ERR_IO and leaves the writer as it
 * was: later additions and the saved file are those of a writer that never saw the call. */
START_TEST(failed_spool_write_leaves_writer_unchanged)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "efbig");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    objects o;
    make_objects(&o);
    float *big = calloc(1 << 16, sizeof(float));
    ck_assert_ptr_nonnull(big);
    const int64_t n_big = 1 << 16; /* 256 KiB, beyond the limit below */
    log_capture cap;
    dq_context *ctx = make_ctx(NULL, &cap);
    dq_file_writer *w = NULL, *ref = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_create(NULL, &ref), DQ_OK);
    ck_assert_int_eq(dq_file_writer_spool(w, path), DQ_OK);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    rlim_t old = set_fsize(64 << 10);
    dq_status st_big = dq_file_writer_add_tensor_f32(w, "big", big, 1, &n_big);
    char msg_big[1024];
    snprintf(msg_big, sizeof msg_big, "%s", cap.last);
    /* A plan whose later parts no longer fit: all or nothing. */
    dq_status st_plan = DQ_OK;
    for (int i = 0; i < 64 && st_plan == DQ_OK; i++) {
        char name[32];
        snprintf(name, sizeof name, "fill%d", i);
        st_plan = dq_file_writer_add_plan(w, name, o.plan);
        if (st_plan == DQ_OK)
            ck_assert_int_eq(dq_file_writer_add_plan(ref, name, o.plan), DQ_OK);
    }
    /* Saving under a lower limit fails too, and leaves nothing. */
    set_fsize(16 << 10);
    dq_status st_save = dq_file_writer_save(w, path);
    set_fsize(old);
    signal(SIGXFSZ, old_handler);
    ck_assert_int_eq(st_big, DQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(msg_big, "'big'"));
    ck_assert_ptr_nonnull(strstr(msg_big, strerror(EFBIG)));
    ck_assert_int_eq(st_plan, DQ_ERR_IO);
    ck_assert_int_eq(st_save, DQ_ERR_IO);
    ck_assert_int_eq(count_entries(dir, NULL), 0);
    /* Adding after the failed writes: the same names are free again. */
    ck_assert_int_eq(add_all(w, &o), DQ_OK);
    ck_assert_int_eq(add_all(ref, &o), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "big", big, 1, &n_big), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(ref, "big", big, 1, &n_big), DQ_OK);
    ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
    size_t n_ref;
    uint8_t *b = writer_bytes(ref, &n_ref);
    ck_assert(file_equals(path, b, n_ref));
    free(b);
    dq_file_writer_free(w);
    dq_file_writer_free(ref);
    dq_context_free(ctx);
    ck_assert_int_eq(count_entries(dir, "m.safetensors"), 0);
    free(big);
    free_objects(&o);
    remove_dir(dir);
}
END_TEST

/* Every allocation of create, spool, the additions and save failing in turn: each failure is
 * an error, leaks nothing and leaves no file; the run that succeeds writes the reference. */
START_TEST(allocation_failure_sweep)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "nomem");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    objects o;
    make_objects(&o);
    size_t n_ref;
    uint8_t *ref = reference_bytes(&o, &n_ref);
    bool done = false;
    long failures = 0;
    for (long k = 1; !done && k < 100000; k++) {
        counter c = {0};
        c.fail_at = k;
        dq_context *ctx = NULL;
        dq_context_params p;
        dq_context_params_init(&p, sizeof p);
        p.alloc = count_alloc;
        p.free = count_free;
        p.alloc_user = &c;
        log_capture quiet;
        p.log = capture_log;
        p.log_user = &quiet;
        if (dq_context_create(&p, &ctx) != DQ_OK) {
            ck_assert_uint_eq(c.live, 0);
            continue;
        }
        dq_file_writer *w = NULL;
        dq_status st = dq_file_writer_create(ctx, &w);
        if (st == DQ_OK)
            st = dq_file_writer_spool(w, path);
        if (st == DQ_OK)
            st = add_all(w, &o);
        if (st == DQ_OK)
            st = dq_file_writer_save(w, path);
        dq_file_writer_free(w);
        dq_context_free(ctx);
        ck_assert_uint_eq(c.live, 0);
        if (st == DQ_OK) {
            ck_assert(file_equals(path, ref, n_ref));
            ck_assert_int_eq(count_entries(dir, "m.safetensors"), 0);
            done = c.calls < k; /* no allocation failed */
            ck_assert_int_eq(unlink(path), 0);
        } else {
            ck_assert_msg(st == DQ_ERR_NOMEM, "allocation %ld: %s", k, dq_status_name(st));
            ck_assert_int_eq(count_entries(dir, NULL), 0);
            failures++;
        }
    }
    ck_assert(done);
    ck_assert_int_gt(failures, 100);
    free(ref);
    free_objects(&o);
    remove_dir(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("file_spool");
    TCase *tc = tcase_create("spool");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, spooled_bytes_equal_memory_bytes);
    tcase_add_test(tc, writer_memory_is_bounded);
    tcase_add_test(tc, spool_refusals);
    tcase_add_test(tc, save_failure_leaves_nothing);
    tcase_add_test(tc, failed_spool_write_leaves_writer_unchanged);
    tcase_add_test(tc, allocation_failure_sweep);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(suite(), 0);
}
