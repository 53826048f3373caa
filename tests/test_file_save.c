/* Saving files: the old file stays whole and loadable whatever fails (file size limit, a
 * killed writer, refused folders), special files are refused and kept, symbolic links keep
 * pointing to a complete file, and readers never see a partial file. */
#define _XOPEN_SOURCE 700

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "duquant.h"
#include "dq_check_run.h"

/* ---- fixtures ---- */

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

static dq_context *capture_ctx(log_capture *c)
{
    memset(c, 0, sizeof *c);
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.log = capture_log;
    p.log_user = c;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

/* A writer holding one tensor of n floats, all equal to v. */
static dq_file_writer *make_writer(dq_context *ctx, int64_t n, float v)
{
    float *x = malloc(sizeof(float) * (size_t)n);
    ck_assert_ptr_nonnull(x);
    for (int64_t i = 0; i < n; i++)
        x[i] = v + (float)(i % 7);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", x, 1, &n), DQ_OK);
    free(x);
    return w;
}

static uint8_t *writer_bytes(const dq_file_writer *w, size_t *size)
{
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *b = malloc(*size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, b, *size, size), DQ_OK);
    return b;
}

/* The whole file, or NULL when it cannot be opened. */
static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    size_t k;
    while ((k = fread(b + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap)
            b = realloc(b, cap *= 2);
    }
    fclose(f);
    *size = n;
    return b;
}

static bool file_equals(const char *path, const uint8_t *want, size_t size)
{
    size_t n;
    uint8_t *b = slurp(path, &n);
    bool eq = b && n == size && memcmp(b, want, size) == 0;
    free(b);
    return eq;
}

/* A fresh folder for one test. */
static void make_dir(char *dir, size_t cap, const char *name)
{
    snprintf(dir, cap, "test_file_save_%s_%ld", name, (long)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "chmod -R u+w '%s' 2>/dev/null; rm -rf '%s'", dir, dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Entries of dir other than ".", ".." and keep (NULL: none kept). */
static int count_other_entries(const char *dir, const char *keep1, const char *keep2)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if ((keep1 && !strcmp(e->d_name, keep1)) || (keep2 && !strcmp(e->d_name, keep2)))
            continue;
        n++;
    }
    closedir(d);
    return n;
}

static bool loads(const char *path)
{
    dq_file_reader *r = NULL;
    dq_status st = dq_file_reader_open(NULL, NULL, path, &r);
    int64_t nt = 0;
    if (st == DQ_OK)
        st = dq_file_reader_count(r, &nt, NULL);
    dq_file_reader_free(r);
    return st == DQ_OK && nt == 1;
}

/* ---- tests ---- */

START_TEST(save_replaces_and_leaves_no_temporary)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "basic");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    dq_file_writer *a = make_writer(NULL, 100, 1.0f), *b = make_writer(NULL, 300, 2.0f);
    size_t na, nb;
    uint8_t *ba = writer_bytes(a, &na), *bb = writer_bytes(b, &nb);
    mode_t mask = umask(022);
    ck_assert_int_eq(dq_file_writer_save(a, path), DQ_OK);
    umask(mask);
    ck_assert(file_equals(path, ba, na));
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0644);
    /* Replacing keeps the permission bits of the replaced file. */
    ck_assert_int_eq(chmod(path, 0600), 0);
    ck_assert_int_eq(dq_file_writer_save(b, path), DQ_OK);
    ck_assert(file_equals(path, bb, nb));
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(count_other_entries(dir, "m.safetensors", NULL), 0);
    /* A bare file name saves into the current folder. */
    ck_assert_int_eq(chdir(dir), 0);
    ck_assert_int_eq(dq_file_writer_save(a, "m.safetensors"), DQ_OK);
    ck_assert_int_eq(chdir(".."), 0);
    ck_assert(file_equals(path, ba, na));
    free(ba);
    free(bb);
    dq_file_writer_free(a);
    dq_file_writer_free(b);
    remove_dir(dir);
}
END_TEST

START_TEST(file_size_limit_keeps_old_file)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "efbig");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    dq_file_writer *a = make_writer(NULL, 100, 1.0f);
    size_t na;
    uint8_t *ba = writer_bytes(a, &na);
    ck_assert_int_eq(dq_file_writer_save(a, path), DQ_OK);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* The child may write at most 4 KiB per file; the new file needs 64 KiB. */
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(10);
        log_capture cap;
        dq_context *ctx = capture_ctx(&cap);
        dq_file_writer *b = make_writer(ctx, 16384, 2.0f);
        dq_status st = dq_file_writer_save(b, path);
        int code = st != DQ_ERR_IO                               ? 11
                   : cap.count != 1                              ? 12
                   : !strstr(cap.last, "dq_file_writer_save")    ? 13
                   : !strstr(cap.last, strerror(EFBIG))          ? 14
                   : !strstr(cap.last, dir)                      ? 15
                                                                 : 0;
        dq_file_writer_free(b);
        dq_context_free(ctx);
        /* The parent's allocations too, so that leak checkers see a clean child. */
        free(ba);
        dq_file_writer_free(a);
        _exit(code);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert(file_equals(path, ba, na));
    ck_assert(loads(path));
    ck_assert_int_eq(count_other_entries(dir, "m.safetensors", NULL), 0);
    free(ba);
    dq_file_writer_free(a);
    remove_dir(dir);
}
END_TEST

/* Name of the temporary file in dir (other than the target), if any. */
static bool has_temporary(const char *dir)
{
    return count_other_entries(dir, "m.safetensors", NULL) > 0;
}

START_TEST(killed_writer_keeps_old_file)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "kill");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    dq_file_writer *a = make_writer(NULL, 1000, 1.0f);
    /* 64 MiB: long enough to be caught between creating and renaming its temporary file. */
    dq_file_writer *b = make_writer(NULL, (int64_t)16 << 20, 2.0f);
    size_t na, nb;
    uint8_t *ba = writer_bytes(a, &na), *bb = writer_bytes(b, &nb);
    ck_assert_int_eq(dq_file_writer_save(a, path), DQ_OK);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        for (;;)
            if (dq_file_writer_save(b, path) != DQ_OK)
                _exit(1);
    }
    /* Kill the writer as soon as a save is under way (bounded wait, not a timing assertion). */
    bool seen = false;
    for (int i = 0; i < 20000 && !seen; i++) {
        seen = has_temporary(dir);
        if (!seen) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    kill(pid, SIGKILL);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(seen);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* The target is the old file or a complete new one, never a part. */
    ck_assert(file_equals(path, ba, na) || file_equals(path, bb, nb));
    ck_assert(loads(path));
    /* A killed process cannot remove its temporary file: at most one is left, never the
     * target. */
    ck_assert_int_le(count_other_entries(dir, "m.safetensors", NULL), 1);
    free(ba);
    free(bb);
    dq_file_writer_free(a);
    dq_file_writer_free(b);
    remove_dir(dir);
}
END_TEST

START_TEST(unwritable_places_are_io_errors)
{
    char dir[256], path[300], bad[400];
    make_dir(dir, sizeof dir, "places");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    log_capture cap;
    dq_context *ctx = capture_ctx(&cap);
    dq_file_writer *a = make_writer(ctx, 100, 1.0f);
    size_t na;
    uint8_t *ba = writer_bytes(a, &na);
    ck_assert_int_eq(dq_file_writer_save(a, path), DQ_OK);
    ck_assert_int_eq(cap.count, 0);

    /* A folder that does not exist (fails for root too). */
    snprintf(bad, sizeof bad, "%s/no/such/m.safetensors", dir);
    ck_assert_int_eq(dq_file_writer_save(a, bad), DQ_ERR_IO);
    ck_assert_int_eq(cap.count, 1);
    ck_assert_ptr_nonnull(strstr(cap.last, "dq_file_writer_save"));
    ck_assert_ptr_nonnull(strstr(cap.last, bad));
    ck_assert_ptr_nonnull(strstr(cap.last, "No such file or directory"));
    ck_assert_ptr_nonnull(strstr(cap.last, "DQ_ERR_IO"));

    /* A path below a regular file (fails for root too); the file is untouched. */
    snprintf(bad, sizeof bad, "%s/x", path);
    ck_assert_int_eq(dq_file_writer_save(a, bad), DQ_ERR_IO);
    ck_assert_int_eq(cap.count, 2);
    ck_assert_ptr_nonnull(strstr(cap.last, "Not a directory"));
    ck_assert(file_equals(path, ba, na));

    /* A read-only folder: permissions do not apply to root. */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(dir, 0555), 0);
        dq_file_writer *b = make_writer(ctx, 300, 2.0f);
        ck_assert_int_eq(dq_file_writer_save(b, path), DQ_ERR_IO);
        ck_assert_ptr_nonnull(strstr(cap.last, "Permission denied"));
        ck_assert_int_eq(chmod(dir, 0755), 0);
        ck_assert(file_equals(path, ba, na));
        dq_file_writer_free(b);
    }
    ck_assert_int_eq(count_other_entries(dir, "m.safetensors", NULL), 0);

    /* Arguments. */
    ck_assert_int_eq(dq_file_writer_save(a, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cap.last, "path"));
    ck_assert_int_eq(dq_file_writer_save(a, ""), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_save(NULL, path), DQ_ERR_INVALID_ARG);
    free(ba);
    dq_file_writer_free(a);
    dq_context_free(ctx);
    remove_dir(dir);
}
END_TEST

START_TEST(special_files_are_refused_and_kept)
{
    char dir[256], fifo[300], sub[300];
    make_dir(dir, sizeof dir, "special");
    log_capture cap;
    dq_context *ctx = capture_ctx(&cap);
    dq_file_writer *a = make_writer(ctx, 100, 1.0f);
    struct stat st;

    ck_assert_int_eq(stat("/dev/null", &st), 0);
    ck_assert(S_ISCHR(st.st_mode));
    ck_assert_int_eq(dq_file_writer_save(a, "/dev/null"), DQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(cap.last, "/dev/null"));
    ck_assert_ptr_nonnull(strstr(cap.last, "not a regular file"));
    ck_assert_int_eq(stat("/dev/null", &st), 0);
    ck_assert(S_ISCHR(st.st_mode));

    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(fifo, 0644), 0);
    ck_assert_int_eq(dq_file_writer_save(a, fifo), DQ_ERR_IO);
    ck_assert_int_eq(lstat(fifo, &st), 0);
    ck_assert(S_ISFIFO(st.st_mode));

    snprintf(sub, sizeof sub, "%s/sub", dir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    ck_assert_int_eq(dq_file_writer_save(a, sub), DQ_ERR_IO);
    ck_assert_int_eq(lstat(sub, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(cap.count, 3);
    /* Nothing was written anywhere. */
    ck_assert_int_eq(count_other_entries(dir, "fifo", "sub"), 0);
    ck_assert_int_eq(count_other_entries(sub, NULL, NULL), 0);
    dq_file_writer_free(a);
    dq_context_free(ctx);
    remove_dir(dir);
}
END_TEST

START_TEST(symlink_target_is_replaced_link_kept)
{
    char dir[256], real[300], link[300], dangling[300];
    make_dir(dir, sizeof dir, "link");
    snprintf(real, sizeof real, "%s/real.safetensors", dir);
    snprintf(link, sizeof link, "%s/link.safetensors", dir);
    dq_file_writer *a = make_writer(NULL, 100, 1.0f), *b = make_writer(NULL, 300, 2.0f);
    size_t na, nb;
    uint8_t *ba = writer_bytes(a, &na), *bb = writer_bytes(b, &nb);
    ck_assert_int_eq(dq_file_writer_save(a, real), DQ_OK);
    ck_assert_int_eq(symlink("real.safetensors", link), 0);
    ck_assert_int_eq(dq_file_writer_save(b, link), DQ_OK);
    struct stat st;
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert(file_equals(real, bb, nb));
    ck_assert(file_equals(link, bb, nb));
    ck_assert(loads(link));
    ck_assert_int_eq(count_other_entries(dir, "real.safetensors", "link.safetensors"), 0);
    /* A link to nothing is refused and left as it is. */
    snprintf(dangling, sizeof dangling, "%s/dangling", dir);
    ck_assert_int_eq(symlink("nowhere/x", dangling), 0);
    ck_assert_int_eq(dq_file_writer_save(a, dangling), DQ_ERR_IO);
    ck_assert_int_eq(lstat(dangling, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    /* A link to a special file is refused, the special file kept. */
    ck_assert_int_eq(unlink(link), 0);
    ck_assert_int_eq(symlink("/dev/null", link), 0);
    ck_assert_int_eq(dq_file_writer_save(a, link), DQ_ERR_IO);
    ck_assert_int_eq(stat("/dev/null", &st), 0);
    ck_assert(S_ISCHR(st.st_mode));
    ck_assert(file_equals(real, bb, nb));
    free(ba);
    free(bb);
    dq_file_writer_free(a);
    dq_file_writer_free(b);
    remove_dir(dir);
}
END_TEST

typedef struct save_loop {
    const char *path;
    dq_file_writer *w[2];
    int saves;
    dq_status st;
} save_loop;

static void *saver(void *arg)
{
    save_loop *s = arg;
    s->st = DQ_OK;
    for (int i = 0; i < s->saves && s->st == DQ_OK; i++)
        s->st = dq_file_writer_save(s->w[i & 1], s->path);
    return NULL;
}

/* The file at path holds a or b exactly and loads. */
static bool read_is_whole(const char *path, const uint8_t *a, size_t na, const uint8_t *b,
                          size_t nb)
{
    size_t n = 0;
    errno = 0;
    uint8_t *got = slurp(path, &n);
    bool ok = got && ((n == na && !memcmp(got, a, na)) || (n == nb && !memcmp(got, b, nb)));
    if (!ok)
        fprintf(stderr, "%s: %s, %zu bytes (want %zu or %zu)\n", path,
                got ? "other content" : strerror(errno), n, na, nb);
    free(got);
    bool l = loads(path);
    if (!l)
        fprintf(stderr, "%s: does not load\n", path);
    return ok && l;
}

START_TEST(readers_never_see_a_partial_file)
{
    char dir[256], path[300];
    make_dir(dir, sizeof dir, "readers");
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    save_loop s = {path, {make_writer(NULL, 20000, 1.0f), make_writer(NULL, 30000, 2.0f)}, 200,
                   DQ_OK};
    size_t na, nb;
    uint8_t *ba = writer_bytes(s.w[0], &na), *bb = writer_bytes(s.w[1], &nb);
    ck_assert_int_eq(dq_file_writer_save(s.w[1], path), DQ_OK);
    /* Readers in another process and in this one, while 200 saves replace the file. */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int code = 0;
        for (int i = 0; i < 400 && code == 0; i++)
            code = !read_is_whole(path, ba, na, bb, nb);
        free(ba);
        free(bb);
        dq_file_writer_free(s.w[0]);
        dq_file_writer_free(s.w[1]);
        _exit(code);
    }
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, saver, &s), 0);
    int bad = 0, reads = 0;
    for (; reads < 400; reads++)
        bad += !read_is_whole(path, ba, na, bb, nb);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_int_eq(s.st, DQ_OK);
    ck_assert_int_eq(bad, 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert(file_equals(path, bb, nb));
    ck_assert_int_eq(count_other_entries(dir, "m.safetensors", NULL), 0);
    free(ba);
    free(bb);
    dq_file_writer_free(s.w[0]);
    dq_file_writer_free(s.w[1]);
    remove_dir(dir);
}
END_TEST

START_TEST(missing_file_is_io_error_with_path)
{
    log_capture cap;
    dq_context *ctx = capture_ctx(&cap);
    dq_file_reader *r = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_open(ctx, NULL, "no/such/file.safetensors", &r), DQ_ERR_IO);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(cap.count, 1);
    ck_assert_ptr_nonnull(strstr(cap.last, "dq_file_reader_open"));
    ck_assert_ptr_nonnull(strstr(cap.last, "no/such/file.safetensors"));
    ck_assert_ptr_nonnull(strstr(cap.last, "No such file"));
    ck_assert_ptr_nonnull(strstr(cap.last, "DQ_ERR_IO"));
    /* A folder is not a file. */
    ck_assert_int_eq(dq_file_reader_open(ctx, NULL, ".", &r), DQ_ERR_IO);
    ck_assert_int_eq(cap.count, 2);
    ck_assert_ptr_nonnull(strstr(cap.last, "'.'"));
    dq_context_free(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_save");
    TCase *tc = tcase_create("save");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, save_replaces_and_leaves_no_temporary);
    tcase_add_test(tc, file_size_limit_keeps_old_file);
    tcase_add_test(tc, killed_writer_keeps_old_file);
    tcase_add_test(tc, unwritable_places_are_io_errors);
    tcase_add_test(tc, special_files_are_refused_and_kept);
    tcase_add_test(tc, symlink_target_is_replaced_link_kept);
    tcase_add_test(tc, readers_never_see_a_partial_file);
    tcase_add_test(tc, missing_file_is_io_error_with_path);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
