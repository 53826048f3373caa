/* A reader that maps its file gives back the pages of the tensors it copies out: the copies and
 * everything read later stay exact, and on Linux the pages leave the process's memory. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <check.h>
#include <limits.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dq_test.h"
#include "duquant.h"
#include "dq_check_run.h"

enum {
    COLS = 2048,       /* the plan's width and the layer's inputs */
    BS = 32,           /* 32 x 32 matrices: 4 KiB each, like a 7B-shaped model's plans */
    ROWS = 64,         /* the layer's outputs */
    EMB_ROWS = 1024,   /* "emb": EMB_ROWS x COLS floats, 8 MiB */
    TOKENS = 5
};

/* Rotation of COLS channels, one matrix per block: 2 x 2 turns by angles from r. */
static dq_rotation *turns(test_rng *r)
{
    float *m = calloc((size_t)COLS * BS, sizeof *m);
    for (int64_t b = 0; b < COLS / BS; b++) {
        float *blk = m + (size_t)b * BS * BS;
        for (int k = 0; k < BS; k += 2) {
            const double a = 6.283185307179586 * test_rng_uniform(r);
            blk[k * BS + k] = (float)cos(a);
            blk[k * BS + k + 1] = (float)sin(a);
            blk[(k + 1) * BS + k] = (float)-sin(a);
            blk[(k + 1) * BS + k + 1] = (float)cos(a);
        }
    }
    dq_rotation *rot = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, COLS, BS, 1, m, (int64_t)COLS * BS, &rot),
                     DQ_OK);
    free(m);
    return rot;
}

typedef struct model {
    float *emb;
    dq_plan *plan;
    dq_linear *lin;
    char path[PATH_MAX];
} model;

/* Writes "emb", the plan "P" (smoothing, two rotations, a permutation) and the layer "L" on it
 * in the blocked layout to a new file. */
static void model_write(model *m, const char *name)
{
    test_rng r = {41};
    m->emb = malloc((size_t)EMB_ROWS * COLS * sizeof(float));
    test_fill_activations(&r, m->emb, EMB_ROWS, COLS, COLS, 1);
    float smooth[COLS];
    int64_t perm[COLS];
    for (int64_t j = 0; j < COLS; j++) {
        smooth[j] = 0.5f + (float)test_rng_uniform(&r);
        perm[j] = (j * 7 + 3) % COLS; /* 7 is prime to 2048 */
    }
    dq_rotation *rots[2] = {turns(&r), turns(&r)};
    const int64_t *perms[1] = {perm};
    ck_assert_int_eq(dq_plan_assemble(NULL, COLS, smooth, 2, (const dq_rotation *const *)rots,
                                      perms, &m->plan),
                     DQ_OK);
    dq_rotation_free(rots[0]);
    dq_rotation_free(rots[1]);
    float *w = malloc((size_t)ROWS * COLS * sizeof *w);
    test_fill_activations(&r, w, ROWS, COLS, COLS, 1);
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(
        dq_qmatrix_pack_transformed(NULL, &qp, m->plan, w, ROWS, COLS, COLS, NULL, NULL, &q),
        DQ_OK);
    free(w);
    ck_assert_int_eq(dq_linear_create(NULL, NULL, m->plan, q, NULL, &m->lin), DQ_OK);
    dq_qmatrix_free(q);
    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &fw), DQ_OK);
    const int64_t shape[2] = {EMB_ROWS, COLS};
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(fw, "emb", m->emb, 2, shape), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "P", m->plan), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(fw, "L", m->lin, "P"), DQ_OK);
    char rel[64];
    snprintf(rel, sizeof rel, "test_file_pages_%s_%ld.safetensors", name, (long)getpid());
    ck_assert_int_eq(dq_file_writer_save(fw, rel), DQ_OK);
    dq_file_writer_free(fw);
    ck_assert_ptr_nonnull(realpath(rel, m->path));
}

static void model_free(model *m)
{
    remove(m->path);
    free(m->emb);
    dq_plan_free(m->plan);
    dq_linear_free(m->lin);
}

static dq_file_reader *open_file(const char *path, uint32_t flags)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = flags;
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_open(NULL, &fp, path, &r), DQ_OK);
    return r;
}

/* y = the plan applied to fixed activations (TOKENS x COLS, malloc'ed). */
static float *plan_output(const dq_plan *pl)
{
    test_rng r = {42};
    float *x = malloc((size_t)TOKENS * COLS * sizeof *x);
    test_fill_activations(&r, x, TOKENS, COLS, COLS, 1);
    ck_assert_int_eq(dq_plan_apply_act(pl, x, TOKENS, COLS, COLS, NULL, 0), DQ_OK);
    return x;
}

/* The layer's outputs on fixed activations (TOKENS x ROWS, malloc'ed). */
static float *layer_output(const dq_linear *lin)
{
    test_rng r = {43};
    float *x = malloc((size_t)TOKENS * COLS * sizeof *x);
    float *y = malloc((size_t)TOKENS * ROWS * sizeof *y);
    test_fill_activations(&r, x, TOKENS, COLS, COLS, 1);
    ck_assert_int_eq(dq_linear_forward(lin, x, TOKENS, COLS, COLS, y, ROWS, NULL, 0), DQ_OK);
    free(x);
    return y;
}

static void same_floats(const float *a, const float *b, size_t n, const char *what)
{
    ck_assert_msg(memcmp(a, b, n * sizeof *a) == 0, "%s differs", what);
}

/* Through a mapping reader, each getter called twice gives the same data as a copying reader
 * (the second call reads pages the first gave back), and a layer created after the copies,
 * which reads its weights in place next to them, computes the same bits. */
START_TEST(copies_read_the_same_twice)
{
    model m;
    model_write(&m, "twice");
    dq_file_reader *mapped = open_file(m.path, DQ_FILE_F_BORROW);
    dq_file_reader *copied = open_file(m.path, 0);
    const size_t n_emb = (size_t)EMB_ROWS * COLS;
    float *emb = malloc(n_emb * sizeof *emb);
    float *want_plan = plan_output(m.plan), *want_layer = layer_output(m.lin);
    dq_linear *before = NULL;
    ck_assert_int_eq(dq_file_reader_get_linear(mapped, NULL, "L", m.plan, &before), DQ_OK);
    for (int round = 0; round < 2; round++) {
        memset(emb, 0, n_emb * sizeof *emb);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(mapped, "emb", emb, (int64_t)n_emb),
                         DQ_OK);
        same_floats(emb, m.emb, n_emb, "emb");
        dq_plan *pl = NULL;
        ck_assert_int_eq(dq_file_reader_get_plan(mapped, NULL, "P", &pl), DQ_OK);
        float *y = plan_output(pl);
        same_floats(y, want_plan, (size_t)TOKENS * COLS, "the loaded plan's output");
        free(y);
        dq_linear *lin = NULL;
        ck_assert_int_eq(dq_file_reader_get_linear(mapped, NULL, "L", pl, &lin), DQ_OK);
        y = layer_output(lin);
        same_floats(y, want_layer, (size_t)TOKENS * ROWS, "a layer created after the copies");
        free(y);
        dq_linear_free(lin);
        dq_plan_free(pl);
    }
    /* The layer created before the copies reads the same, and so does the copying reader. */
    float *y = layer_output(before);
    same_floats(y, want_layer, (size_t)TOKENS * ROWS, "a layer created before the copies");
    free(y);
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(copied, NULL, "P", &pl), DQ_OK);
    y = plan_output(pl);
    same_floats(y, want_plan, (size_t)TOKENS * COLS, "the copying reader's plan");
    free(y);
    dq_plan_free(pl);
    dq_linear_free(before);
    free(emb);
    free(want_plan);
    free(want_layer);
    dq_file_reader_free(mapped);
    dq_file_reader_free(copied);
    model_free(&m);
}
END_TEST

/* A reader that borrows the caller's buffer gives nothing back: the buffer (page-aligned, so
 * that whole pages lie inside its tensors) keeps every byte through the copies. */
START_TEST(borrowed_buffer_is_left_alone)
{
    model m;
    model_write(&m, "buffer");
    FILE *f = fopen(m.path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    const size_t size = (size_t)ftell(f);
    rewind(f);
    uint8_t *buf = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    uint8_t *copy = malloc(size);
    ck_assert(buf && copy);
    ck_assert_uint_eq(fread(buf, 1, size, f), size);
    fclose(f);
    memcpy(copy, buf, size);
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_BORROW;
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, buf, size, &r), DQ_OK);
    const size_t n_emb = (size_t)EMB_ROWS * COLS;
    float *emb = malloc(n_emb * sizeof *emb);
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "emb", emb, (int64_t)n_emb), DQ_OK);
    same_floats(emb, m.emb, n_emb, "emb");
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "P", &pl), DQ_OK);
    ck_assert_msg(memcmp(buf, copy, size) == 0, "the caller's buffer changed");
    dq_plan_free(pl);
    dq_file_reader_free(r);
    free(emb);
    free(buf);
    free(copy);
    model_free(&m);
}
END_TEST

/* Bytes of the process's memory that map path (the Rss lines of its /proc/self/smaps
 * entries); -1 when smaps cannot be read. */
static long long mapped_rss(const char *path)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[PATH_MAX + 256];
    long long total = 0, kb;
    int in_file = 0;
    const size_t lp = strlen(path);
    while (fgets(line, sizeof line, f)) {
        const size_t n = strcspn(line, "\n");
        line[n] = '\0';
        const char *dash = strchr(line, '-'), *space = strchr(line, ' ');
        if (dash && space && dash < space) /* "start-end perms offset dev inode path" */
            in_file = n >= lp && strcmp(line + n - lp, path) == 0 && line[n - lp - 1] == ' ';
        else if (in_file && sscanf(line, "Rss: %lld kB", &kb) == 1)
            total += kb * 1024;
    }
    fclose(f);
    return total;
}

/* Copying a tensor or a plan out of a mapped file leaves no more than a few pages of it in the
 * process's memory: without giving them back, all of it would stay, next to the copy. */
START_TEST(copied_pages_leave_the_process)
{
#ifndef __linux__
    fprintf(stderr, "copied_pages_leave_the_process: skipped, it reads /proc/self/smaps "
                    "(Linux only)\n");
#else
    model m;
    model_write(&m, "rss");
    dq_file_reader *mapped = open_file(m.path, DQ_FILE_F_BORROW);
    const long long before = mapped_rss(m.path);
    if (before < 0) {
        fprintf(stderr, "copied_pages_leave_the_process: skipped, /proc/self/smaps cannot be "
                        "read\n");
    } else {
        const size_t n_emb = (size_t)EMB_ROWS * COLS;
        float *emb = malloc(n_emb * sizeof *emb);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(mapped, "emb", emb, (int64_t)n_emb),
                         DQ_OK);
        const long long after_emb = mapped_rss(m.path);
        ck_assert_msg(after_emb - before < (long long)(n_emb * sizeof(float) / 8),
                      "an 8 MiB tensor copied out left %lld of its bytes mapped",
                      after_emb - before);
        /* 2 rotations of COLS / BS matrices of BS x BS floats, the smoothing factors and the
         * permutation. */
        const long long plan_bytes = (long long)(2 * COLS * BS + COLS) * 4 + COLS * 8;
        dq_plan *pl = NULL;
        ck_assert_int_eq(dq_file_reader_get_plan(mapped, NULL, "P", &pl), DQ_OK);
        const long long after_plan = mapped_rss(m.path);
        ck_assert_msg(after_plan - after_emb < plan_bytes / 4,
                      "a plan of %lld bytes copied out left %lld of them mapped", plan_bytes,
                      after_plan - after_emb);
        dq_plan_free(pl);
        free(emb);
    }
    dq_file_reader_free(mapped);
    model_free(&m);
#endif
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_pages");
    TCase *tc = tcase_create("pages");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, copies_read_the_same_twice);
    tcase_add_test(tc, copied_pages_leave_the_process);
    tcase_add_test(tc, borrowed_buffer_is_left_alone);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
