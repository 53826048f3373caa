/* Golden files of the file format: the files in tests/data were written by this library.
 * The check regenerates each file from fixed parts and compares the bytes, loads the stored
 * objects, writes them again and compares the bytes, and compares the loaded objects with the
 * regenerated ones. Any change of the format makes it fail. The files of format version 1
 * (written by 1.0 and 1.1, without checksums) are kept: they must still load, give the same
 * objects, and write back as the version-3 files.
 * Usage: golden_file DATA_DIR          check
 *        golden_file --write DATA_DIR  (re)write the files (only for a deliberate new version) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);           \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

/* A plan of width 12: smoothing 1 + j/8, Hadamard blocks of 4 (shared), the permutation that
 * reverses each block order, then blocks of 8 with a shorter last block of 4. */
static dq_status make_plan(dq_plan **out)
{
    enum { C = 12 };
    float smooth[C], h4[16], h8[64], hdata[64 + 16];
    int64_t perm[C];
    for (int j = 0; j < C; j++) {
        smooth[j] = 1.0f + (float)j / 8.0f;
        perm[j] = (j / 4) * 4 + 3 - j % 4;
    }
    dq_rotation_hadamard(4, h4, 4);
    dq_rotation_hadamard(8, h8, 8);
    memcpy(hdata, h8, sizeof h8);
    memcpy(hdata + 64, h4, sizeof h4);
    dq_rotation *r[2] = {NULL, NULL};
    dq_status st = dq_rotation_from_matrices(NULL, C, 4, 0, h4, 16, &r[0]);
    if (st == DQ_OK)
        st = dq_rotation_from_matrices(NULL, C, 8, 0, hdata, 80, &r[1]);
    const int64_t *perms[1] = {perm};
    if (st == DQ_OK)
        st = dq_plan_assemble(NULL, C, smooth, 2, (const dq_rotation *const *)r, perms, out);
    dq_rotation_free(r[0]);
    dq_rotation_free(r[1]);
    return st;
}

/* A 3 x 5 weight quantized with 4-bit ASYM groups of 2, and a 2 x 4 with 8-bit SYM rows. */
static dq_status make_qmatrix(int which, dq_qmatrix **out)
{
    float w[15];
    for (int i = 0; i < 15; i++)
        w[i] = (float)((i * 5) % 11) / 4.0f - 1.25f;
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    if (which == 0) {
        p.group_size = 2;
        return dq_qmatrix_pack(NULL, &p, w, 3, 5, 5, NULL, NULL, out);
    }
    if (which == 1) {
        p.bits = 8;
        p.scheme = DQ_QUANT_SYM;
        return dq_qmatrix_pack(NULL, &p, w, 2, 4, 4, NULL, NULL, out);
    }
    float w2[36];
    for (int i = 0; i < 36; i++)
        w2[i] = (float)((i * 7) % 13) / 6.0f - 1.0f;
    return dq_qmatrix_pack(NULL, &p, w2, 3, 12, 12, NULL, NULL, out);
}

static void linear_params(dq_linear_params *p)
{
    dq_linear_params_init(p, sizeof *p);
    p->act_bits = 8;
    p->act_scheme = DQ_QUANT_SYM;
    p->act_clip_ratio = 0.75f;
}

/* Version 3 (what this library writes) and version 1, the same objects. */
static const char *const files[] = {"plan_v3.safetensors", "layer_v3.safetensors"};
static const char *const files_v1[] = {"plan_v1.safetensors", "layer_v1.safetensors"};

/* The writer for golden file k from the given objects (in this fixed order). */
static dq_status fill(int k, dq_file_writer *w, const dq_plan *pl, const dq_qmatrix *q0,
                      const dq_qmatrix *q1, const dq_qmatrix *q2)
{
    dq_status st = DQ_OK;
    if (k == 0)
        return dq_file_writer_add_plan(w, "layers.0.attn_in", pl);
    const float bias[3] = {0.5f, -0.25f, 2.0f};
    const int64_t n = 3;
    if ((st = dq_file_writer_add_metadata(w, "model", "golden")) != DQ_OK ||
        (st = dq_file_writer_add_plan(w, "l0.plan", pl)) != DQ_OK ||
        (st = dq_file_writer_add_qmatrix(w, "l0.w", q0)) != DQ_OK ||
        (st = dq_file_writer_add_qmatrix(w, "l0.v", q1)) != DQ_OK ||
        (st = dq_file_writer_add_tensor_f32(w, "l0.bias", bias, 1, &n)) != DQ_OK)
        return st;
    dq_linear_params lp;
    linear_params(&lp);
    if ((st = dq_file_writer_add_linear(w, "l0.lin", &lp, "l0.plan", q2, bias)) != DQ_OK)
        return st;
    /* The library's dequantization, for readers that decode the codes themselves. */
    float deq[15];
    const int64_t shape[2] = {3, 5};
    if ((st = dq_qmatrix_dequantize(q0, deq, 5)) != DQ_OK)
        return st;
    return dq_file_writer_add_tensor_f32(w, "check.l0.w.dequantized", deq, 2, shape);
}

static uint8_t *serialise(const dq_file_writer *w, size_t *size)
{
    if (dq_file_writer_to_buffer(w, NULL, 0, size) != DQ_OK)
        return NULL;
    uint8_t *b = malloc(*size);
    if (b && dq_file_writer_to_buffer(w, b, *size, size) != DQ_OK) {
        free(b);
        return NULL;
    }
    return b;
}

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = n > 0 ? malloc((size_t)n) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return b;
}

static int same_plan(const dq_plan *a, const dq_plan *b)
{
    float x[2 * 12], y[2 * 12];
    for (int i = 0; i < 24; i++)
        x[i] = y[i] = (float)(i % 5) - 2.0f + (i == 7 ? 10.0f : 0.0f);
    CHECK(dq_plan_apply_act(a, x, 2, 12, 12, NULL, 0) == DQ_OK);
    CHECK(dq_plan_apply_act(b, y, 2, 12, 12, NULL, 0) == DQ_OK);
    double err = 0;
    for (int i = 0; i < 24; i++)
        err = fmax(err, fabs((double)x[i] - y[i]));
    printf("    plan apply: max |diff| %.3g (tolerance 0)\n", err);
    CHECK(err == 0);
    return 0;
}

static int same_qmatrix(const dq_qmatrix *a, const dq_qmatrix *b)
{
    int64_t ra, ca, rb, cb;
    CHECK(dq_qmatrix_layout(a, &ra, &ca, NULL, NULL, NULL, NULL, NULL) == DQ_OK);
    CHECK(dq_qmatrix_layout(b, &rb, &cb, NULL, NULL, NULL, NULL, NULL) == DQ_OK);
    CHECK(ra == rb && ca == cb && ra * ca <= 64);
    float da[64], db[64];
    CHECK(dq_qmatrix_dequantize(a, da, ca) == DQ_OK);
    CHECK(dq_qmatrix_dequantize(b, db, cb) == DQ_OK);
    printf("    qmatrix %lldx%lld dequantized: %s\n", (long long)ra, (long long)ca,
           memcmp(da, db, sizeof(float) * (size_t)(ra * ca)) == 0 ? "identical" : "DIFFERENT");
    CHECK(memcmp(da, db, sizeof(float) * (size_t)(ra * ca)) == 0);
    return 0;
}

/* The stored layer (with the stored plan) against one made from the regenerated parts. */
static int same_linear(const dq_file_reader *r, const dq_plan *pl, const dq_plan *lp,
                       const dq_qmatrix *q2)
{
    const float bias[3] = {0.5f, -0.25f, 2.0f};
    dq_linear_params p;
    linear_params(&p);
    dq_linear *a = NULL, *b = NULL;
    CHECK(dq_linear_create(NULL, &p, pl, q2, bias, &a) == DQ_OK);
    CHECK(dq_file_reader_get_linear(r, NULL, "l0.lin", lp, &b) == DQ_OK);
    float x[2 * 12], ya[6], yb[6];
    for (int i = 0; i < 24; i++)
        x[i] = (float)(i % 7) - 3.0f;
    CHECK(dq_linear_forward(a, x, 2, 12, 12, ya, 3, NULL, 0) == DQ_OK);
    CHECK(dq_linear_forward(b, x, 2, 12, 12, yb, 3, NULL, 0) == DQ_OK);
    printf("    linear layer forward: %s\n",
           memcmp(ya, yb, sizeof ya) == 0 ? "identical" : "DIFFERENT");
    CHECK(memcmp(ya, yb, sizeof ya) == 0);
    dq_linear_free(a);
    dq_linear_free(b);
    return 0;
}

static int check_file(int k, int v1, const char *dir, const dq_plan *pl, const dq_qmatrix *q0,
                      const dq_qmatrix *q1, const dq_qmatrix *q2)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, v1 ? files_v1[k] : files[k]);
    printf("%s\n", v1 ? files_v1[k] : files[k]);
    size_t disk_size, gen_size, re_size;
    uint8_t *disk = read_all(path, &disk_size);
    if (!disk) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    dq_file_writer *w = NULL;
    CHECK(dq_file_writer_create(NULL, &w) == DQ_OK);
    CHECK(fill(k, w, pl, q0, q1, q2) == DQ_OK);
    uint8_t *gen = serialise(w, &gen_size);
    CHECK(gen != NULL);
    if (v1) {
        /* Checked through its objects: they load, equal the regenerated ones, and write
         * back as the version-3 bytes. */
        printf("    format version 1: %zu bytes\n", disk_size);
        free(disk);
        disk = gen;
        disk_size = gen_size;
        gen = NULL;
    } else {
        printf("    regenerated: %zu bytes, stored: %zu bytes, %s\n", gen_size, disk_size,
               gen_size == disk_size && memcmp(gen, disk, disk_size) == 0 ? "identical"
                                                                          : "DIFFERENT");
        CHECK(gen_size == disk_size && memcmp(gen, disk, disk_size) == 0);
    }

    dq_file_reader *r = NULL;
    CHECK(dq_file_reader_open(NULL, NULL, path, &r) == DQ_OK);
    dq_plan *lp = NULL;
    dq_qmatrix *l0 = NULL, *l1 = NULL, *l2 = NULL;
    CHECK(dq_file_reader_get_plan(r, NULL, k == 0 ? "layers.0.attn_in" : "l0.plan", &lp) ==
          DQ_OK);
    CHECK(same_plan(pl, lp) == 0);
    if (k == 1) {
        CHECK(dq_file_reader_get_qmatrix(r, NULL, "l0.w", &l0) == DQ_OK);
        CHECK(dq_file_reader_get_qmatrix(r, NULL, "l0.v", &l1) == DQ_OK);
        CHECK(same_qmatrix(q0, l0) == 0);
        CHECK(same_qmatrix(q1, l1) == 0);
        CHECK(dq_file_reader_get_qmatrix(r, NULL, "l0.lin.weight", &l2) == DQ_OK);
        CHECK(same_qmatrix(q2, l2) == 0);
        CHECK(same_linear(r, pl, lp, q2) == 0);
        char v[32];
        size_t len;
        CHECK(dq_file_reader_metadata(r, "model", v, sizeof v, &len) == DQ_OK);
        CHECK(strcmp(v, "golden") == 0);
    }
    dq_file_writer *w2 = NULL;
    CHECK(dq_file_writer_create(NULL, &w2) == DQ_OK);
    CHECK(fill(k, w2, lp, l0, l1, l2) == DQ_OK);
    uint8_t *re = serialise(w2, &re_size);
    CHECK(re != NULL);
    printf("    re-written from the loaded objects: %s\n",
           re_size == disk_size && memcmp(re, disk, disk_size) == 0 ? "identical" : "DIFFERENT");
    CHECK(re_size == disk_size && memcmp(re, disk, disk_size) == 0);
    free(re);
    dq_file_writer_free(w2);
    dq_plan_free(lp);
    dq_qmatrix_free(l0);
    dq_qmatrix_free(l1);
    dq_qmatrix_free(l2);
    dq_file_reader_free(r);
    free(gen);
    dq_file_writer_free(w);
    free(disk);
    return 0;
}

int main(int argc, char **argv)
{
    int write = argc == 3 && strcmp(argv[1], "--write") == 0;
    if (argc != 2 && !write) {
        fprintf(stderr, "usage: golden_file [--write] DATA_DIR\n");
        return 2;
    }
    const char *dir = argv[argc - 1];
    dq_plan *pl = NULL;
    dq_qmatrix *q0 = NULL, *q1 = NULL, *q2 = NULL;
    CHECK(make_plan(&pl) == DQ_OK);
    CHECK(make_qmatrix(0, &q0) == DQ_OK);
    CHECK(make_qmatrix(1, &q1) == DQ_OK);
    CHECK(make_qmatrix(2, &q2) == DQ_OK);
    int failed = 0;
    for (int k = 0; k < 2; k++) {
        if (write) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, files[k]);
            dq_file_writer *w = NULL;
            CHECK(dq_file_writer_create(NULL, &w) == DQ_OK);
            CHECK(fill(k, w, pl, q0, q1, q2) == DQ_OK);
            CHECK(dq_file_writer_save(w, path) == DQ_OK);
            dq_file_writer_free(w);
            printf("wrote %s\n", path);
        } else {
            failed |= check_file(k, 0, dir, pl, q0, q1, q2);
            failed |= check_file(k, 1, dir, pl, q0, q1, q2);
        }
    }
    dq_plan_free(pl);
    dq_qmatrix_free(q0);
    dq_qmatrix_free(q1);
    dq_qmatrix_free(q2);
    printf("%s\n", failed ? "FAILED" : "all golden files match");
    return failed;
}
