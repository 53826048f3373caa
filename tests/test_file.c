/* Plan and packed-matrix files: round trips, determinism, and every class of malformed input. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_unseal.h"
#include "test_alloc.h"
#include "dq_check_run.h"

/* ---- fixtures ---- */

static dq_plan *make_plan(int64_t cols, int32_t bs, uint32_t flags, int32_t method)
{
    enum { ROWS = 48 };
    float *x = malloc(sizeof(float) * ROWS * (size_t)cols);
    test_rng rng = {7};
    test_fill_activations(&rng, x, ROWS, cols, cols, 1);
    dq_plan_params p;
    dq_plan_params_init(&p, sizeof p);
    p.flags = flags;
    p.block_size = bs;
    p.method = method;
    p.max_rotation_step = 8;
    float *wabs = malloc(sizeof(float) * (size_t)cols);
    for (int64_t j = 0; j < cols; j++)
        wabs[j] = 0.5f + (float)(j % 5) * 0.1f;
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_build_from_sample(NULL, &p, NULL, x, ROWS, cols, cols, wabs, &pl),
                     DQ_OK);
    free(x);
    free(wabs);
    return pl;
}

static dq_qmatrix *make_qmatrix(int64_t rows, int64_t cols, int32_t bits, int32_t scheme,
                                int32_t group)
{
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    test_rng rng = {11};
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)test_rng_normal(&rng);
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.bits = bits;
    p.scheme = scheme;
    p.group_size = group;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, rows, cols, cols, NULL, NULL, &q), DQ_OK);
    free(w);
    return q;
}

/* Serialises w into a new buffer. */
static uint8_t *to_buffer(const dq_file_writer *w, size_t *size)
{
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *buf = malloc(*size);
    size_t again = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, *size, &again), DQ_OK);
    ck_assert_uint_eq(again, *size);
    return buf;
}

/* A file with one plan "p" and one matrix "q". */
static uint8_t *sample_file(size_t *size)
{
    dq_plan *pl = make_plan(40, 16, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
    dq_qmatrix *q = make_qmatrix(3, 7, 4, DQ_QUANT_ASYM, 4);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(w, "q", q), DQ_OK);
    uint8_t *buf = to_buffer(w, size);
    dq_file_writer_free(w);
    dq_plan_free(pl);
    dq_qmatrix_free(q);
    return buf;
}

static dq_status open_buf(const void *buf, size_t size, dq_file_reader **r)
{
    return dq_file_reader_from_buffer(NULL, NULL, buf, size, r);
}

/* A container from a JSON header text and data bytes. */
static uint8_t *make_raw(const char *json, const void *data, size_t data_size, size_t *size)
{
    size_t n = strlen(json);
    *size = 8 + n + data_size;
    uint8_t *b = malloc(*size + 1);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(b + 8, json, n);
    if (data_size)
        memcpy(b + 8 + n, data, data_size);
    return b;
}

#define META "\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\"}"

/* Opening the raw container gives want (and no reader unless DQ_OK). */
static void expect_raw(const char *json, const void *data, size_t data_size, dq_status want)
{
    size_t size;
    uint8_t *b = make_raw(json, data, data_size, &size);
    dq_file_reader *r = (dq_file_reader *)1;
    dq_status st = open_buf(b, size, &r);
    if (st != want)
        fprintf(stderr, "header %s: got %s, want %s\n", json, dq_status_name(st),
                dq_status_name(want));
    ck_assert_int_eq(st, want);
    if (want == DQ_OK)
        ck_assert_ptr_nonnull(r);
    else
        ck_assert_ptr_null(r);
    dq_file_reader_free(r);
    free(b);
}

/* Replaces the first occurrence of from by to inside the JSON header of buf, without its
 * checksums (test_unseal), fixing the length; returns a new buffer. */
static uint8_t *patch_header(const uint8_t *sealed, size_t sealed_size, const char *from,
                             const char *to, size_t *out_size)
{
    size_t size;
    uint8_t *buf = test_unseal(sealed, sealed_size, &size);
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | buf[k];
    char *json = malloc(n + 1);
    memcpy(json, buf + 8, n);
    json[n] = 0;
    char *at = strstr(json, from);
    ck_assert_msg(at != NULL, "pattern %s not in header", from);
    size_t lf = strlen(from), lt = strlen(to), nn = n - lf + lt;
    char *j2 = malloc(nn + 1);
    memcpy(j2, json, (size_t)(at - json));
    memcpy(j2 + (at - json), to, lt);
    memcpy(j2 + (at - json) + lt, at + lf, n - (size_t)(at - json) - lf);
    j2[nn] = 0;
    uint8_t *b = make_raw(j2, buf + 8 + n, size - 8 - n, out_size);
    free(json);
    free(j2);
    free(buf);
    return b;
}

/* Byte offset (from the file start) of tensor name's data, read from the header text. */
static size_t data_offset(const uint8_t *buf, const char *name)
{
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | buf[k];
    char *json = malloc(n + 1);
    memcpy(json, buf + 8, n);
    json[n] = 0;
    char key[128];
    snprintf(key, sizeof key, "\"%s\":{", name);
    char *at = strstr(json, key);
    ck_assert_ptr_nonnull(at);
    char *off = strstr(at, "\"data_offsets\":[");
    ck_assert_ptr_nonnull(off);
    size_t begin = strtoull(off + strlen("\"data_offsets\":["), NULL, 10);
    free(json);
    return 8 + n + begin;
}

static void put_f32(uint8_t *p, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    for (int k = 0; k < 4; k++)
        p[k] = (uint8_t)(u >> (8 * k));
}

/* The plan "p" of buf patched by fn must fail to load with want (the container itself opens). */
static void expect_plan_error(const uint8_t *buf, size_t size, dq_status want)
{
    dq_file_reader *r = NULL;
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    dq_plan *pl = (dq_plan *)1;
    dq_status st = dq_file_reader_get_plan(r, NULL, "p", &pl);
    ck_assert_int_eq(st, want);
    ck_assert_ptr_null(pl);
    dq_file_reader_free(r);
}

static void expect_qmatrix_error(const uint8_t *buf, size_t size, dq_status want)
{
    dq_file_reader *r = NULL;
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    dq_qmatrix *q = (dq_qmatrix *)1;
    dq_status st = dq_file_reader_get_qmatrix(r, NULL, "q", &q);
    ck_assert_int_eq(st, want);
    ck_assert_ptr_null(q);
    dq_file_reader_free(r);
}

/* Applies both plans to the same activations; the results must be identical. */
static void expect_same_plan(const dq_plan *a, const dq_plan *b, int64_t cols)
{
    enum { ROWS = 9 };
    int64_t wa, wb;
    ck_assert_int_eq(dq_plan_width(a, &wa), DQ_OK);
    ck_assert_int_eq(dq_plan_width(b, &wb), DQ_OK);
    ck_assert_int_eq(wa, cols);
    ck_assert_int_eq(wb, cols);
    float *x = malloc(sizeof(float) * ROWS * (size_t)cols);
    float *y = malloc(sizeof(float) * ROWS * (size_t)cols);
    test_rng rng = {3};
    test_fill_activations(&rng, x, ROWS, cols, cols, 1);
    memcpy(y, x, sizeof(float) * ROWS * (size_t)cols);
    ck_assert_int_eq(dq_plan_apply_act(a, x, ROWS, cols, cols, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_plan_apply_act(b, y, ROWS, cols, cols, NULL, 0), DQ_OK);
    ck_assert_int_eq(memcmp(x, y, sizeof(float) * ROWS * (size_t)cols), 0);
    int32_t sa, sb, na, nb;
    ck_assert_int_eq(dq_plan_layout(a, &sa, &na), DQ_OK);
    ck_assert_int_eq(dq_plan_layout(b, &sb, &nb), DQ_OK);
    ck_assert_int_eq(sa, sb);
    ck_assert_int_eq(na, nb);
    free(x);
    free(y);
}

static void expect_same_qmatrix(const dq_qmatrix *a, const dq_qmatrix *b)
{
    int64_t ra, ca, rb, cb, ga, gb;
    int32_t ba, sa, za, bb, sb, zb;
    size_t rowa, rowb, na, nb;
    ck_assert_int_eq(dq_qmatrix_layout(a, &ra, &ca, &ba, &sa, &za, &ga, &rowa), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_layout(b, &rb, &cb, &bb, &sb, &zb, &gb, &rowb), DQ_OK);
    ck_assert(ra == rb && ca == cb && ba == bb && sa == sb && za == zb && ga == gb &&
              rowa == rowb);
    const uint8_t *pa, *pb;
    const float *sca, *scb, *zea, *zeb;
    ck_assert_int_eq(dq_qmatrix_view(a, &pa, &na, &sca, &zea), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(b, &pb, &nb, &scb, &zeb), DQ_OK);
    ck_assert_uint_eq(na, nb);
    ck_assert_int_eq(memcmp(pa, pb, na), 0);
    ck_assert_int_eq(memcmp(sca, scb, sizeof(float) * (size_t)(ra * ga)), 0);
    ck_assert_int_eq(zea == NULL, zeb == NULL);
    if (zea)
        ck_assert_int_eq(memcmp(zea, zeb, sizeof(float) * (size_t)(ra * ga)), 0);
    float *da = malloc(sizeof(float) * (size_t)(ra * ca));
    float *db = malloc(sizeof(float) * (size_t)(ra * ca));
    ck_assert_int_eq(dq_qmatrix_dequantize(a, da, ca), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_dequantize(b, db, ca), DQ_OK);
    ck_assert_int_eq(memcmp(da, db, sizeof(float) * (size_t)(ra * ca)), 0);
    free(da);
    free(db);
}

/* ---- round trips ---- */

static void plan_round_trip(int64_t cols, int32_t bs, uint32_t flags, int32_t method)
{
    dq_plan *pl = make_plan(cols, bs, flags, method);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "layers.0.attn", pl), DQ_OK);
    size_t size;
    uint8_t *buf = to_buffer(w, &size);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    dq_plan *back = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "layers.0.attn", &back), DQ_OK);
    expect_same_plan(pl, back, cols);
    /* Re-writing the loaded plan gives the same bytes. */
    dq_file_writer *w2 = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w2), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w2, "layers.0.attn", back), DQ_OK);
    size_t size2;
    uint8_t *buf2 = to_buffer(w2, &size2);
    ck_assert_uint_eq(size, size2);
    ck_assert_int_eq(memcmp(buf, buf2, size), 0);
    free(buf2);
    dq_file_writer_free(w2);
    dq_plan_free(back);
    dq_file_reader_free(r);
    free(buf);
    dq_file_writer_free(w);
    dq_plan_free(pl);
}

START_TEST(plan_round_trip_default)
{
    plan_round_trip(72, 16, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY); /* shorter last block */
    plan_round_trip(64, 16, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
}
END_TEST

START_TEST(plan_round_trip_variants)
{
    plan_round_trip(40, 8, DQ_PLAN_F_DEFAULT | DQ_PLAN_F_PER_BLOCK_R, DQ_ROT_METHOD_GREEDY);
    plan_round_trip(32, 8, DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE, DQ_ROT_METHOD_HADAMARD);
    plan_round_trip(30, 32, DQ_PLAN_F_SMOOTH, DQ_ROT_METHOD_GREEDY);
    plan_round_trip(20, 4, DQ_PLAN_F_ROTATE, DQ_ROT_METHOD_RANDOM);
}
END_TEST

START_TEST(qmatrix_round_trip)
{
    const struct {
        int64_t rows, cols;
        int32_t bits, scheme, group;
    } cases[] = {
        {5, 7, 4, DQ_QUANT_ASYM, 0}, {4, 33, 4, DQ_QUANT_ASYM, 8}, {3, 9, 4, DQ_QUANT_SYM, 4},
        {6, 16, 8, DQ_QUANT_ASYM, 0}, {2, 5, 8, DQ_QUANT_SYM, 100},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        dq_qmatrix *q = make_qmatrix(cases[k].rows, cases[k].cols, cases[k].bits,
                                     cases[k].scheme, cases[k].group);
        dq_file_writer *w = NULL;
        ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
        ck_assert_int_eq(dq_file_writer_add_qmatrix(w, "m", q), DQ_OK);
        size_t size;
        uint8_t *buf = to_buffer(w, &size);
        dq_file_reader *r = NULL;
        ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
        dq_qmatrix *back = NULL;
        ck_assert_int_eq(dq_file_reader_get_qmatrix(r, NULL, "m", &back), DQ_OK);
        expect_same_qmatrix(q, back);
        int32_t dtype, ndim;
        int64_t shape[DQ_FILE_MAX_DIMS];
        ck_assert_int_eq(dq_file_reader_tensor_info(r, "m.packed", &dtype, &ndim, shape), DQ_OK);
        ck_assert_int_eq(dtype, DQ_DTYPE_U8);
        ck_assert_int_eq(ndim, 2);
        ck_assert_int_eq(shape[0], cases[k].rows);
        ck_assert_int_eq(dq_file_reader_tensor_info(r, "m.zeros", NULL, NULL, NULL),
                         cases[k].scheme == DQ_QUANT_ASYM ? DQ_OK : DQ_ERR_FORMAT);
        dq_qmatrix_free(back);
        dq_file_reader_free(r);
        free(buf);
        dq_file_writer_free(w);
        dq_qmatrix_free(q);
    }
}
END_TEST

START_TEST(tensors_metadata_and_listing)
{
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    const float v[6] = {1.5f, -2.0f, NAN, INFINITY, 0.0f, -0.0f};
    const int64_t shape[2] = {2, 3};
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "b", v, 2, shape), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "a\"q\\uo\xc3\xa9", v, 1, shape + 1),
                     DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "scalar", v, 0, NULL), DQ_OK);
    const int64_t zero = 0;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "empty", NULL, 1, &zero), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "model", "tiny \"llama\""), DQ_OK);
    size_t size;
    uint8_t *buf = to_buffer(w, &size);
    ck_assert_uint_eq((size_t)buf[0] % 8, 0); /* the header is padded to 8 bytes */

    /* Borrowed and copied readers see the same. */
    for (int borrow = 0; borrow < 2; borrow++) {
        dq_file_params p;
        dq_file_params_init(&p, sizeof p);
        p.flags = borrow ? DQ_FILE_F_BORROW : 0;
        dq_file_reader *r = NULL;
        ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_OK);
        int64_t nt, nm;
        ck_assert_int_eq(dq_file_reader_count(r, &nt, &nm), DQ_OK);
        ck_assert_int_eq(nt, 4);
        ck_assert_int_eq(nm, 8); /* format, format_version, model, 4 + 1 checksums */
        char name[64];
        size_t len;
        ck_assert_int_eq(dq_file_reader_tensor_name(r, 0, name, sizeof name, &len), DQ_OK);
        ck_assert_str_eq(name, "a\"q\\uo\xc3\xa9");
        ck_assert_int_eq(dq_file_reader_tensor_name(r, 0, name, len, &len), DQ_ERR_BUFFER);
        ck_assert_int_eq(dq_file_reader_tensor_name(r, 4, name, sizeof name, &len),
                         DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_file_reader_metadata_key(r, 0, name, sizeof name, &len), DQ_OK);
        ck_assert_str_eq(name, "__hash__");
        ck_assert_int_eq(dq_file_reader_metadata_key(r, 5, name, sizeof name, &len), DQ_OK);
        ck_assert_str_eq(name, "format");
        ck_assert_int_eq(dq_file_reader_metadata(r, "model", name, sizeof name, &len), DQ_OK);
        ck_assert_str_eq(name, "tiny \"llama\"");
        ck_assert_int_eq(dq_file_reader_metadata(r, "format_version", name, sizeof name, &len),
                         DQ_OK);
        ck_assert_str_eq(name, "3");
        ck_assert_int_eq(dq_file_reader_metadata(r, "nope", name, sizeof name, &len),
                         DQ_ERR_FORMAT);
        float out[6];
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "b", out, 6), DQ_OK);
        ck_assert_int_eq(memcmp(out, v, sizeof v), 0); /* NaN and -0 bit for bit */
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "b", out, 5), DQ_ERR_SHAPE);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "scalar", out, 1), DQ_OK);
        ck_assert_float_eq(out[0], 1.5f);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "empty", NULL, 0), DQ_OK);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "c", out, 6), DQ_ERR_FORMAT);
        int32_t dtype, ndim;
        int64_t sh[DQ_FILE_MAX_DIMS];
        ck_assert_int_eq(dq_file_reader_tensor_info(r, "b", &dtype, &ndim, sh), DQ_OK);
        ck_assert_int_eq(dtype, DQ_DTYPE_F32);
        ck_assert_int_eq(ndim, 2);
        ck_assert(sh[0] == 2 && sh[1] == 3);
        /* Objects that are not there. */
        dq_plan *pl = (dq_plan *)1;
        ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "b", &pl), DQ_ERR_FORMAT);
        ck_assert_ptr_null(pl);
        dq_file_reader_free(r);
    }
    free(buf);
    dq_file_writer_free(w);
}
END_TEST

START_TEST(output_is_deterministic_and_sized)
{
    size_t a_size, b_size;
    uint8_t *a = sample_file(&a_size), *b = sample_file(&b_size);
    ck_assert_uint_eq(a_size, b_size);
    ck_assert_int_eq(memcmp(a, b, a_size), 0);
    /* Data follows the header at an 8-byte boundary and every tensor is aligned to its type. */
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | a[k];
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_uint_eq(data_offset(a, "p.perm0") % 8, 0);
    ck_assert_uint_eq(data_offset(a, "p.smooth") % 4, 0);
    free(a);
    free(b);
}
END_TEST

START_TEST(save_and_open_file)
{
    size_t size;
    uint8_t *buf = sample_file(&size);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    dq_plan *pl = NULL;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "p", &pl), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_qmatrix(r, NULL, "q", &q), DQ_OK);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(w, "q", q), DQ_OK);
    const char *path = "test_file_roundtrip.safetensors";
    ck_assert_int_eq(dq_file_writer_save(w, path), DQ_OK);
    ck_assert_int_eq(dq_file_writer_save(w, "no/such/dir/x.safetensors"), DQ_ERR_IO);
    dq_file_reader *r2 = NULL;
    ck_assert_int_eq(dq_file_reader_open(NULL, NULL, path, &r2), DQ_OK);
    dq_plan *pl2 = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r2, NULL, "p", &pl2), DQ_OK);
    expect_same_plan(pl, pl2, 40);
    /* The saved file holds exactly the bytes of the buffer form. */
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    uint8_t *disk = malloc(size + 1);
    ck_assert_uint_eq(fread(disk, 1, size + 1, f), size);
    fclose(f);
    ck_assert_int_eq(memcmp(disk, buf, size), 0);
    free(disk);
    /* A header longer than the configured limit is refused before the file is read. */
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    p.max_header_bytes = 64;
    dq_file_reader *r3 = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_open(NULL, &p, path, &r3), DQ_ERR_FORMAT);
    ck_assert_ptr_null(r3);
    /* Borrowing maps the file: the same objects as the copying reader. */
    p.flags = DQ_FILE_F_BORROW;
    p.max_header_bytes = 1 << 20;
    ck_assert_int_eq(dq_file_reader_open(NULL, &p, path, &r3), DQ_OK);
    dq_plan *pl3 = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r3, NULL, "p", &pl3), DQ_OK);
    dq_plan_free(pl3);
    dq_file_reader_free(r3);
    ck_assert_int_eq(dq_file_reader_open(NULL, NULL, "no/such/file", &r3), DQ_ERR_IO);
    remove(path);
    dq_plan_free(pl2);
    dq_file_reader_free(r2);
    dq_file_writer_free(w);
    dq_plan_free(pl);
    dq_qmatrix_free(q);
    dq_file_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(rotation_from_matrices)
{
    dq_rotation_params p;
    dq_rotation_params_init(&p, sizeof p);
    p.method = DQ_ROT_METHOD_RANDOM;
    p.block_size = 8;
    for (int per_block = 0; per_block < 2; per_block++) {
        p.flags = per_block ? DQ_ROT_F_PER_BLOCK : 0;
        dq_rotation *r = NULL;
        ck_assert_int_eq(dq_rotation_create(NULL, &p, NULL, 0, 20, 0, &r), DQ_OK);
        int64_t nm;
        ck_assert_int_eq(dq_rotation_layout(r, NULL, NULL, NULL, &nm), DQ_OK);
        float data[3 * 64];
        int64_t n = 0;
        for (int64_t m = 0; m < nm; m++) {
            int32_t size;
            ck_assert_int_eq(dq_rotation_matrix(r, m, NULL, 0, &size), DQ_OK);
            ck_assert_int_eq(dq_rotation_matrix(r, m, data + n, size, &size), DQ_OK);
            n += (int64_t)size * size;
        }
        dq_rotation *back = NULL;
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, data, n, &back),
                         DQ_OK);
        float x[3 * 20], y[3 * 20];
        for (int i = 0; i < 60; i++)
            x[i] = y[i] = (float)((i * 7) % 11) - 5.0f;
        ck_assert_int_eq(dq_rotation_apply(r, x, 3, 20, 20), DQ_OK);
        ck_assert_int_eq(dq_rotation_apply(back, y, 3, 20, 20), DQ_OK);
        ck_assert_int_eq(memcmp(x, y, sizeof x), 0);
        ck_assert_int_eq(dq_rotation_trace(back, 0, NULL, NULL, NULL, NULL, NULL, 0),
                         DQ_ERR_BAD_STATE);
        dq_rotation *bad = (dq_rotation *)1;
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, data, n - 1, &bad),
                         DQ_ERR_SHAPE);
        ck_assert_ptr_null(bad);
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 1, per_block, data, n, &bad),
                         DQ_ERR_SHAPE);
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, NULL, n, &bad),
                         DQ_ERR_INVALID_ARG);
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, data, n, NULL),
                         DQ_ERR_INVALID_ARG);
        float keep = data[5];
        data[5] = NAN;
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, data, n, &bad),
                         DQ_ERR_NONFINITE);
        data[5] = keep * 3.0f + 1.0f; /* a row that is no longer of unit norm */
        ck_assert_int_eq(dq_rotation_from_matrices(NULL, 20, 8, per_block, data, n, &bad),
                         DQ_ERR_INVALID_ARG);
        ck_assert_ptr_null(bad);
        dq_rotation_free(back);
        dq_rotation_free(r);
    }
}
END_TEST

/* ---- writer errors ---- */

START_TEST(writer_rejects_bad_input_and_stays_unchanged)
{
    dq_plan *pl = make_plan(24, 8, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
    dq_qmatrix *q = make_qmatrix(2, 6, 4, DQ_QUANT_ASYM, 0);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "x", pl), DQ_OK);
    size_t before, after;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &before), DQ_OK);
    /* Same prefix again: the second plan collides on its first name; the metadata key of a
     * tensor name collides too; nothing of the failed additions remains. */
    ck_assert_int_eq(dq_file_writer_add_plan(w, "x", pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(w, "x", q), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "x.smooth", "v"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "format", "other"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "k", "line\nbreak"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "\xff", "v"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "", "v"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(NULL, "k", "v"), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "k", NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "", pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "y", NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(w, NULL, q), DQ_ERR_INVALID_ARG);
    const float v[2] = {1, 2};
    int64_t shape[DQ_FILE_MAX_DIMS + 1] = {2, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "__metadata__", v, 1, shape),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, DQ_FILE_MAX_DIMS + 1, shape),
                     DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, -1, shape), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", NULL, 1, shape), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 1, NULL), DQ_ERR_INVALID_ARG);
    const int64_t neg = -2, huge[2] = {INT64_MAX / 2, 4};
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 1, &neg), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", v, 2, huge), DQ_ERR_OVERFLOW);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &after), DQ_OK);
    ck_assert_uint_eq(before, after);
    uint8_t small[16];
    ck_assert_int_eq(dq_file_writer_to_buffer(w, small, sizeof small, &after), DQ_ERR_BUFFER);
    ck_assert_uint_eq(before, after);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_save(w, NULL), DQ_ERR_INVALID_ARG);
    dq_file_writer_free(w);
    dq_file_writer_free(NULL);
    dq_file_reader_free(NULL);
    dq_plan_free(pl);
    dq_qmatrix_free(q);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    size_t size;
    uint8_t *buf = sample_file(&size);
    dq_plan *pl = make_plan(24, 8, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
    /* Fail each allocation in turn (the context is allocation 1) until the whole sequence
     * succeeds: open, load both objects, write them back. */
    bool done = false;
    for (long k = 2; !done; k++) {
        test_alloc a = {0};
        dq_context *ctx = test_alloc_context(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = k;
        dq_file_reader *r = NULL;
        dq_plan *lp = NULL;
        dq_qmatrix *q = NULL;
        dq_file_writer *w = NULL;
        dq_status st = dq_file_reader_from_buffer(ctx, NULL, buf, size, &r);
        if (st == DQ_OK)
            st = dq_file_reader_get_plan(r, ctx, "p", &lp);
        if (st == DQ_OK)
            st = dq_file_reader_get_qmatrix(r, ctx, "q", &q);
        if (st == DQ_OK)
            st = dq_file_writer_create(ctx, &w);
        if (st == DQ_OK)
            st = dq_file_writer_add_plan(w, "p", pl);
        if (st == DQ_OK)
            st = dq_file_writer_add_qmatrix(w, "q", q);
        if (st == DQ_OK) {
            st = dq_file_writer_save(w, "test_file_alloc.safetensors");
            remove("test_file_alloc.safetensors");
        }
        if (a.total >= k)
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
        else
            done = st == DQ_OK;
        ck_assert(st == DQ_OK || st == DQ_ERR_NOMEM);
        dq_file_writer_free(w);
        dq_qmatrix_free(q);
        dq_plan_free(lp);
        dq_file_reader_free(r);
        dq_context_free(ctx);
        ck_assert_int_eq(a.live, 0);
    }
    dq_plan_free(pl);
    free(buf);
}
END_TEST

/* ---- malformed containers ---- */

START_TEST(truncated_files)
{
    size_t size;
    uint8_t *buf = sample_file(&size);
    for (size_t n = 0; n < size; n++) {
        dq_file_reader *r = (dq_file_reader *)1;
        ck_assert_int_eq(open_buf(buf, n, &r), DQ_ERR_FORMAT);
        ck_assert_ptr_null(r);
    }
    /* One byte too many is a data section longer than its tensors. */
    uint8_t *longer = malloc(size + 1);
    memcpy(longer, buf, size);
    longer[size] = 0;
    dq_file_reader *r = (dq_file_reader *)1;
    ck_assert_int_eq(open_buf(longer, size + 1, &r), DQ_ERR_FORMAT);
    free(longer);
    free(buf);
}
END_TEST

START_TEST(bad_header_length)
{
    size_t size;
    uint8_t *buf = sample_file(&size);
    const uint64_t lens[] = {0, 1, size - 7, size, UINT64_MAX, (uint64_t)1 << 40};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        uint8_t head[8];
        memcpy(head, buf, 8);
        for (int b = 0; b < 8; b++)
            buf[b] = (uint8_t)(lens[k] >> (8 * b));
        dq_file_reader *r = (dq_file_reader *)1;
        ck_assert_int_eq(open_buf(buf, size, &r), DQ_ERR_FORMAT);
        ck_assert_ptr_null(r);
        memcpy(buf, head, 8);
    }
    /* A valid file whose header exceeds a lower configured limit. */
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    p.max_header_bytes = 100;
    dq_file_reader *r = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_ERR_FORMAT);
    p.max_header_bytes = 1;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_ERR_INVALID_ARG);
    p.max_header_bytes = ((uint64_t)100 << 20) + 1;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_ERR_INVALID_ARG);
    p.max_header_bytes = 1 << 20;
    p.flags = 8;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_ERR_INVALID_ARG);
    p.struct_size = 4;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &p, buf, size, &r), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, NULL, size, &r), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, buf, size, NULL), DQ_ERR_INVALID_ARG);
    free(buf);
}
END_TEST

#define T4 "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

START_TEST(bad_json)
{
    const float one = 1.0f;
    expect_raw("{" META "," T4 "}", &one, 4, DQ_OK); /* the control case */
    expect_raw("{" META "," T4 "}   \n\t", &one, 4, DQ_OK);
    const char *bad[] = {
        "[" META "]",
        "{" META "," T4,
        "{" META "," T4 ",}",
        "{" META "," T4 "}x",
        "{" META "," T4 "}}",
        "{" META " " T4 "}",
        "{" META ",\"t\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t:{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\udc00\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\u001f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\\u12\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\x01\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\xc3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
        "\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
        "\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":F32,\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{" META ",\"t\":[]}",
        "{" META ",\"t\":null}",
        "{" META "," T4 "," T4 "}",
        "{" META "," META "," T4 "}",
        "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\",\"format\":\"x\"},"
        T4 "}",
        "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":1}," T4 "}",
        "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\",\"k\":{}}," T4 "}",
        "{\"__metadata__\":[]," T4 "}",
        "{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
        "\"data_offsets\":[0,4]}}",
        " ",
        "{",
        "\"",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        expect_raw(bad[k], &one, 4, DQ_ERR_FORMAT);
    /* An escaped name that decodes to something valid is accepted. */
    expect_raw("{" META ",\"\\u0074\\ud83d\\ude00\":{\"dtype\":\"F32\",\"shape\":[1],"
               "\"data_offsets\":[0,4]}}",
               &one, 4, DQ_OK);
    /* A shape of 8 dimensions is the limit. */
    expect_raw("{" META ",\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1],"
               "\"data_offsets\":[0,4]}}",
               &one, 4, DQ_OK);
}
END_TEST

START_TEST(bad_offsets_and_sizes)
{
    uint8_t data[24] = {0};
    const char *M = "{" META ",";
    char json[512];
#define CASE(body, n, want)                                                                    \
    do {                                                                                       \
        snprintf(json, sizeof json, "%s%s}", M, body);                                         \
        expect_raw(json, data, n, want);                                                       \
    } while (0)
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}",
         12, DQ_OK);
    /* Listed out of offset order is fine: offsets, not the text, order the data. */
    CASE("\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}",
         12, DQ_OK);
    /* begin > end, end past the data, a gap, an overlap, not starting at 0, data left over. */
    CASE("\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}", 4, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 4, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}",
         12, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}",
         8, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}", 8, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 8, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",
         4, DQ_ERR_FORMAT);
    /* Byte count differs from dtype x shape; shape products that overflow. */
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}", 8, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}", 0,
         DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807],"
         "\"data_offsets\":[0,18446744073709551615]}",
         0, DQ_ERR_FORMAT);
    CASE("\"a\":{\"dtype\":\"U8\",\"shape\":[0,4611686018427387904],\"data_offsets\":[0,0]}", 0,
         DQ_OK); /* zero elements: no overflow, no data */
    /* No tensors at all is a valid (if empty) file, but only without data. */
    expect_raw("{" META "}", data, 0, DQ_OK);
    expect_raw("{" META "}", data, 4, DQ_ERR_FORMAT);
#undef CASE
}
END_TEST

START_TEST(wrong_format_or_version)
{
    const float one = 1.0f;
    expect_raw("{" T4 "}", &one, 4, DQ_ERR_FORMAT);
    expect_raw("{\"__metadata__\":{\"format\":\"pt\",\"format_version\":\"1\"}," T4 "}", &one, 4,
               DQ_ERR_FORMAT);
    expect_raw("{\"__metadata__\":{\"format\":\"duquant\"}," T4 "}", &one, 4, DQ_ERR_FORMAT);
    const char *versions[] = {"0", "01", "x", "", "-1", "1.0", " 1", "99999999999"};
    for (size_t k = 0; k < sizeof versions / sizeof versions[0]; k++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"%s\"}," T4 "}",
                 versions[k]);
        expect_raw(json, &one, 4, DQ_ERR_FORMAT);
    }
    expect_raw("{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"4\"}," T4 "}", &one,
               4, DQ_ERR_UNSUPPORTED);
}
END_TEST

/* ---- malformed objects inside valid containers ---- */

/* The sample file without checksums: edits reach the object checks. */
static uint8_t *unsealed_sample_file(size_t *size)
{
    size_t sealed_size;
    uint8_t *sealed = sample_file(&sealed_size);
    uint8_t *buf = test_unseal(sealed, sealed_size, size);
    free(sealed);
    return buf;
}

START_TEST(bad_plans)
{
    size_t size, n2;
    uint8_t *buf = unsealed_sample_file(&size);
    uint8_t *b;
    /* Missing or wrong metadata. */
    const char *meta_patches[][2] = {
        {"\"p.type\":\"plan\"", "\"p.type\":\"qmatrix\""},
        {"\"p.type\":\"plan\"", "\"p.typo\":\"plan\""},
        {"\"p.cols\":\"40\"", "\"p.cols\":\"41\""},
        {"\"p.cols\":\"40\"", "\"p.cols\":\"0\""},
        {"\"p.cols\":\"40\"", "\"p.cols\":\"4O\""},
        {"\"p.cols\":\"40\"", "\"p.cols\":\"99999999999999999999\""},
        {"\"p.n_rotations\":\"2\"", "\"p.n_rotations\":\"3\""},
        {"\"p.n_rotations\":\"2\"", "\"p.n_rotations\":\"100000\""},
        {"\"p.rot0.block_size\":\"16\"", "\"p.rot0.block_size\":\"8\""},
        {"\"p.rot0.block_size\":\"16\"", "\"p.rot0.block_size\":\"1\""},
        {"\"p.rot0.n_matrices\":\"2\"", "\"p.rot0.n_matrices\":\"5\""},
        {"\"p.rot0.n_matrices\":\"2\"", "\"p.rot0.n_matrix\":\"2\""},
        {"\"p.perm0\":{", "\"p.perm9\":{"},
        {"\"p.rot1.m1\":{", "\"p.rot1.m7\":{"},
        {"\"p.smooth\":{\"dtype\":\"F32\",\"shape\":[40]", "\"p.smooth\":{\"dtype\":\"I32\","
                                                         "\"shape\":[40]"},
        {"\"p.smooth\":{\"dtype\":\"F32\",\"shape\":[40]", "\"p.smooth\":{\"dtype\":\"F32\","
                                                         "\"shape\":[4,10]"},
    };
    for (size_t k = 0; k < sizeof meta_patches / sizeof meta_patches[0]; k++) {
        b = patch_header(buf, size, meta_patches[k][0], meta_patches[k][1], &n2);
        expect_plan_error(b, n2, DQ_ERR_FORMAT);
        free(b);
    }
    /* n_rotations "1" would drop the second rotation and the permutation, which are still
     * there: parts the plan does not know are an error, not ignored (since 1.2). */
    b = patch_header(buf, size, "\"p.n_rotations\":\"2\"", "\"p.n_rotations\":\"1\"", &n2);
    expect_plan_error(b, n2, DQ_ERR_FORMAT);
    free(b);
    dq_file_reader *r = NULL;
    dq_plan *pl = NULL;

    /* Bad values in the data. */
    b = malloc(size);
    memcpy(b, buf, size);
    size_t off = data_offset(b, "p.smooth");
    put_f32(b + off + 4, NAN);
    expect_plan_error(b, size, DQ_ERR_NONFINITE);
    put_f32(b + off + 4, -1.0f);
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    put_f32(b + off + 4, 0.0f);
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    off = data_offset(b, "p.rot0.m0");
    put_f32(b + off, INFINITY);
    expect_plan_error(b, size, DQ_ERR_NONFINITE);
    put_f32(b + off, 5.0f);
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    off = data_offset(b, "p.perm0");
    memcpy(b + off, b + off + 8, 8); /* a repeated index */
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    b[off + 7] = 0x80; /* negative */
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    b[off] = 40; /* out of range */
    expect_plan_error(b, size, DQ_ERR_FORMAT);
    free(b);

    /* Bad prefixes and arguments. */
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    pl = (dq_plan *)1;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "nope", &pl), DQ_ERR_FORMAT);
    ck_assert_ptr_null(pl);
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "q", &pl), DQ_ERR_FORMAT);
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "", &pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_reader_get_plan(NULL, NULL, "p", &pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, "p", NULL), DQ_ERR_INVALID_ARG);
    dq_file_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(bad_qmatrices)
{
    size_t size, n2;
    uint8_t *buf = unsealed_sample_file(&size); /* q: 3 x 7, 4-bit ASYM, group 4 */
    uint8_t *b;
    const char *meta_patches[][2] = {
        {"\"q.type\":\"qmatrix\"", "\"q.type\":\"plan\""},
        {"\"q.bits\":\"4\"", "\"q.bits\":\"5\""},
        {"\"q.bits\":\"4\"", "\"q.bits\":\"8\""},
        {"\"q.cols\":\"7\"", "\"q.cols\":\"9\""},
        {"\"q.cols\":\"7\"", "\"q.cols\":\"-7\""},
        {"\"q.scheme\":\"asym\"", "\"q.scheme\":\"sym\""},
        {"\"q.scheme\":\"asym\"", "\"q.scheme\":\"ASYM\""},
        {"\"q.group_size\":\"4\"", "\"q.group_size\":\"2\""},
        {"\"q.group_size\":\"4\"", "\"q.group_size\":\"\""},
        {"\"q.zeros\":{", "\"q.zeroes\":{"},
        {"\"q.scales\":{\"dtype\":\"F32\"", "\"q.scales\":{\"dtype\":\"I32\""},
        {"\"q.packed\":{\"dtype\":\"U8\",\"shape\":[3,4]", "\"q.packed\":{\"dtype\":\"I8\","
                                                         "\"shape\":[3,4]"},
        {"\"q.packed\":{\"dtype\":\"U8\",\"shape\":[3,4]", "\"q.packed\":{\"dtype\":\"U8\","
                                                         "\"shape\":[12]"},
        {"\"q.packed\":{\"dtype\":\"U8\",\"shape\":[3,4]", "\"q.packed\":{\"dtype\":\"U8\","
                                                         "\"shape\":[2,6]"},
    };
    for (size_t k = 0; k < sizeof meta_patches / sizeof meta_patches[0]; k++) {
        b = patch_header(buf, size, meta_patches[k][0], meta_patches[k][1], &n2);
        expect_qmatrix_error(b, n2, DQ_ERR_FORMAT);
        free(b);
    }
    b = malloc(size);
    memcpy(b, buf, size);
    size_t off = data_offset(b, "q.scales");
    put_f32(b + off + 8, NAN);
    expect_qmatrix_error(b, size, DQ_ERR_NONFINITE);
    put_f32(b + off + 8, 0.0f);
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    put_f32(b + off + 8, -0.5f);
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    put_f32(b + off + 8, 1e-39f); /* positive, below any scale the writer makes */
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    off = data_offset(b, "q.zeros");
    put_f32(b + off, 2.5f);
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    put_f32(b + off, INFINITY);
    expect_qmatrix_error(b, size, DQ_ERR_NONFINITE);
    put_f32(b + off, 1e6f);
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    memcpy(b, buf, size);
    off = data_offset(b, "q.packed");
    b[off + 3] |= 0xF0; /* the unused nibble after element 6 of row 0 */
    expect_qmatrix_error(b, size, DQ_ERR_FORMAT);
    free(b);
    free(buf);
}
END_TEST

/* ---- quantized layers ---- */

START_TEST(linear_round_trip_and_errors)
{
    enum { IN = 40, OUT = 6, T = 5 };
    dq_plan *pl = make_plan(IN, 16, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
    float w[OUT * IN], bias[OUT], x[T * IN], y1[T * OUT], y2[T * OUT];
    test_rng rng = {5};
    for (int i = 0; i < OUT * IN; i++)
        w[i] = (float)test_rng_normal(&rng);
    for (int i = 0; i < OUT; i++)
        bias[i] = (float)i - 2.5f;
    test_fill_activations(&rng, x, T, IN, IN, 1);
    ck_assert_int_eq(dq_plan_transform_weight(pl, w, OUT, IN, IN), DQ_OK);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, OUT, IN, IN, NULL, NULL, &q), DQ_OK);
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = 8;
    lp.act_scheme = DQ_QUANT_SYM;
    lp.act_clip_ratio = 0.9f;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &lp, pl, q, bias, &lin), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(lin, x, T, IN, IN, y1, OUT, NULL, 0), DQ_OK);

    dq_file_writer *fw = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &fw), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(fw, "l.in", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", &lp, "l.in", q, bias), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.k", NULL, NULL, q, NULL), DQ_OK);
    /* Invalid layers are refused and leave nothing behind. */
    size_t before, after;
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &before), DQ_OK);
    float bad_bias[OUT] = {0, 0, NAN, 0, 0, 0};
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.v", &lp, NULL, q, bad_bias),
                     DQ_ERR_NONFINITE);
    dq_linear_params bad = lp;
    bad.act_bits = 5;
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.v", &bad, NULL, q, bias),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.q", &lp, NULL, q, bias),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.v", &lp, "", q, bias), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_linear(fw, "l.v", &lp, NULL, NULL, bias),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &after), DQ_OK);
    ck_assert_uint_eq(before, after);
    size_t size;
    uint8_t *buf = to_buffer(fw, &size);

    dq_file_reader *r = NULL;
    ck_assert_int_eq(open_buf(buf, size, &r), DQ_OK);
    char plan_name[32];
    size_t len;
    ck_assert_int_eq(dq_file_reader_metadata(r, "l.q.plan", plan_name, sizeof plan_name, &len),
                     DQ_OK);
    dq_plan *lpl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, NULL, plan_name, &lpl), DQ_OK);
    dq_linear *back = NULL;
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", lpl, &back), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(back, x, T, IN, IN, y2, OUT, NULL, 0), DQ_OK);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(back);
    /* Defaults and no bias: the same as a layer made directly. */
    dq_linear *k1 = NULL, *k2 = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, pl, q, NULL, &k1), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.k", lpl, &k2), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(k1, x, T, IN, IN, y1, OUT, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(k2, x, T, IN, IN, y2, OUT, NULL, 0), DQ_OK);
    ck_assert_int_eq(memcmp(y1, y2, sizeof y1), 0);
    dq_linear_free(k1);
    dq_linear_free(k2);
    /* A plan of another width, a missing layer, bad arguments. */
    dq_plan *other = make_plan(24, 8, DQ_PLAN_F_DEFAULT, DQ_ROT_METHOD_GREEDY);
    back = (dq_linear *)1;
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", other, &back), DQ_ERR_SHAPE);
    ck_assert_ptr_null(back);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.v", lpl, &back), DQ_ERR_FORMAT);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.in", lpl, &back), DQ_ERR_FORMAT);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "", lpl, &back), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", lpl, NULL), DQ_ERR_INVALID_ARG);
    dq_plan_free(other);
    dq_file_reader_free(r);

    /* Malformed layer parts. */
    const char *patches[][2] = {
        {"\"l.q.act_bits\":\"8\"", "\"l.q.act_bits\":\"5\""},
        {"\"l.q.act_bits\":\"8\"", "\"l.q.act_bits\":\"08\""},
        {"\"l.q.act_scheme\":\"sym\"", "\"l.q.act_scheme\":\"Sym\""},
        {"\"l.q.type\":\"linear\"", "\"l.q.type\":\"plan\""},
        {"\"l.q.weight.packed\":{", "\"l.q.weight.pecked\":{"},
        {"\"l.q.bias\":{\"dtype\":\"F32\",\"shape\":[6]",
         "\"l.q.bias\":{\"dtype\":\"F32\",\"shape\":[2,3]"},
        {"\"l.q.act_clip_ratio\":{\"dtype\":\"F32\",\"shape\":[]",
         "\"l.q.act_clip_ratio\":{\"dtype\":\"F32\",\"shape\":[1]"},
    };
    for (size_t k = 0; k < sizeof patches / sizeof patches[0]; k++) {
        size_t n2;
        uint8_t *b = patch_header(buf, size, patches[k][0], patches[k][1], &n2);
        ck_assert_int_eq(open_buf(b, n2, &r), DQ_OK);
        back = (dq_linear *)1;
        ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", lpl, &back), DQ_ERR_FORMAT);
        ck_assert_ptr_null(back);
        dq_file_reader_free(r);
        free(b);
    }
    /* Bad values in the data of the file without checksums. */
    size_t sealed_size = size;
    uint8_t *sealed = buf;
    buf = test_unseal(sealed, sealed_size, &size);
    free(sealed);
    uint8_t *b = malloc(size);
    const float values[3] = {1.5f, 0.0f, NAN};
    const dq_status want[3] = {DQ_ERR_FORMAT, DQ_ERR_FORMAT, DQ_ERR_NONFINITE};
    for (int k = 0; k < 3; k++) {
        memcpy(b, buf, size);
        put_f32(b + data_offset(b, "l.q.act_clip_ratio"), values[k]);
        ck_assert_int_eq(open_buf(b, size, &r), DQ_OK);
        ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", lpl, &back), want[k]);
        dq_file_reader_free(r);
    }
    memcpy(b, buf, size);
    put_f32(b + data_offset(b, "l.q.bias") + 4, INFINITY);
    ck_assert_int_eq(open_buf(b, size, &r), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l.q", lpl, &back), DQ_ERR_NONFINITE);
    dq_file_reader_free(r);
    free(b);
    free(buf);
    dq_plan_free(lpl);
    dq_file_writer_free(fw);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
    dq_plan_free(pl);
}
END_TEST

/* ---- layers in the blocked layout (format version 2) and zero-copy loading ---- */

/* Counts the bytes an allocation-counting context has live, at its peak, and in its largest
 * single allocation. */
typedef struct byte_count {
    size_t live, peak, largest, total;
} byte_count;

#define COUNT_HEAD 64

static void *count_alloc(void *user, size_t size, size_t align)
{
    byte_count *b = user;
    if (align < COUNT_HEAD)
        align = COUNT_HEAD;
    size_t rounded = (size + COUNT_HEAD + align - 1) / align * align;
    uint8_t *p = aligned_alloc(align, rounded);
    if (!p)
        return NULL;
    memcpy(p + align - sizeof(size_t) - sizeof(size_t), &size, sizeof size);
    memcpy(p + align - sizeof(size_t), &align, sizeof align);
    b->live += size;
    b->total += size;
    b->peak = b->live > b->peak ? b->live : b->peak;
    b->largest = size > b->largest ? size : b->largest;
    return p + align;
}

static void count_free(void *user, void *ptr)
{
    if (!ptr)
        return;
    byte_count *b = user;
    uint8_t *q = ptr;
    size_t size, align;
    memcpy(&size, q - sizeof(size_t) - sizeof(size_t), sizeof size);
    memcpy(&align, q - sizeof(size_t), sizeof align);
    b->live -= size;
    free(q - align);
}

static dq_context *count_context(byte_count *b)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = count_alloc;
    p.free = count_free;
    p.alloc_user = b;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    /* count from here: the context's own block is not the layer's */
    *b = (byte_count){0};
    return ctx;
}

static dq_qmatrix *packed_weights(test_rng *r, int64_t rows, int64_t cols, int32_t bits,
                                  int32_t scheme, int32_t group)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    test_fill_activations(r, w, rows, cols, cols, 1);
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.bits = bits;
    p.scheme = scheme;
    p.group_size = group;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, rows, cols, cols, NULL, NULL, &q), DQ_OK);
    free(w);
    return q;
}

/* Outputs of two layers on the same tokens are equal bit for bit. */
static void same_outputs(const dq_linear *a, const dq_linear *b, test_rng *r)
{
    int64_t in, out, in2, out2;
    ck_assert_int_eq(dq_linear_layout(a, &in, &out), DQ_OK);
    ck_assert_int_eq(dq_linear_layout(b, &in2, &out2), DQ_OK);
    ck_assert_int_eq(in, in2);
    ck_assert_int_eq(out, out2);
    const int64_t tokens = 9;
    float *x = malloc((size_t)(tokens * in) * sizeof *x);
    float *ya = malloc((size_t)(tokens * out) * sizeof *ya);
    float *yb = malloc((size_t)(tokens * out) * sizeof *yb);
    test_fill_activations(r, x, tokens, in, in, 1);
    ck_assert_int_eq(dq_linear_forward(a, x, tokens, in, in, ya, out, NULL, 0), DQ_OK);
    ck_assert_int_eq(dq_linear_forward(b, x, tokens, in, in, yb, out, NULL, 0), DQ_OK);
    ck_assert(memcmp(ya, yb, (size_t)(tokens * out) * sizeof *ya) == 0);
    free(x);
    free(ya);
    free(yb);
}

static void same_qmatrix(const dq_qmatrix *a, const dq_qmatrix *b)
{
    int64_t ra, ca, ga, rb, cb, gb;
    int32_t ba, sa, gsa, bb, sb, gsb;
    ck_assert_int_eq(dq_qmatrix_layout(a, &ra, &ca, &ba, &sa, &gsa, &ga, NULL), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_layout(b, &rb, &cb, &bb, &sb, &gsb, &gb, NULL), DQ_OK);
    ck_assert(ra == rb && ca == cb && ba == bb && sa == sb && gsa == gsb && ga == gb);
    const uint8_t *pa, *pb;
    const float *sca, *scb, *za, *zb;
    size_t na, nb;
    ck_assert_int_eq(dq_qmatrix_view(a, &pa, &na, &sca, &za), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(b, &pb, &nb, &scb, &zb), DQ_OK);
    ck_assert(na == nb && memcmp(pa, pb, na) == 0);
    ck_assert(memcmp(sca, scb, (size_t)(ra * ga) * sizeof(float)) == 0);
    ck_assert((za == NULL) == (zb == NULL));
    if (za)
        ck_assert(memcmp(za, zb, (size_t)(ra * ga) * sizeof(float)) == 0);
}

/* A file holding lin in the blocked layout as "L", and its plan (NULL: none) as "P". */
static uint8_t *layer_file_with_plan(const dq_linear *lin, const dq_plan *plan, size_t *size)
{
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    if (plan)
        ck_assert_int_eq(dq_file_writer_add_plan(w, "P", plan), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(w, "L", lin, plan ? "P" : NULL), DQ_OK);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *buf = malloc(*size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, *size, size), DQ_OK);
    dq_file_writer_free(w);
    return buf;
}

static uint8_t *layer_file(const dq_linear *lin, size_t *size)
{
    return layer_file_with_plan(lin, NULL, size);
}

/* Every format: the layer written in the blocked layout and loaded (copying or borrowing
 * reader) gives the same outputs bit for bit; its weight reads back as the same packed matrix;
 * the file says version 2. */
START_TEST(blocked_layer_round_trip)
{
    test_rng r = {501};
    const int32_t groups[] = {0, 64, 100};
    for (int32_t bits = 4; bits <= 8; bits += 4)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++)
            for (size_t g = 0; g < 3; g++)
                for (int32_t act = 0; act <= 8; act += 4) {
                    const int64_t rows = 37, cols = 172 + (int64_t)g;
                    dq_qmatrix *q = packed_weights(&r, rows, cols, bits, scheme, groups[g]);
                    float bias[37];
                    for (int i = 0; i < 37; i++)
                        bias[i] = (float)test_rng_normal(&r);
                    dq_linear_params lp;
                    dq_linear_params_init(&lp, sizeof lp);
                    lp.act_bits = act;
                    lp.act_scheme = scheme;
                    lp.act_clip_ratio = 0.9f;
                    dq_linear *lin = NULL;
                    ck_assert_int_eq(
                        dq_linear_create(NULL, &lp, NULL, q, act == 4 ? bias : NULL, &lin),
                        DQ_OK);
                    size_t size;
                    uint8_t *buf = layer_file(lin, &size);
                    for (int borrow = 0; borrow < 2; borrow++) {
                        dq_file_params fp;
                        dq_file_params_init(&fp, sizeof fp);
                        fp.flags = borrow ? DQ_FILE_F_BORROW : 0;
                        dq_file_reader *rd = NULL;
                        ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, buf, size, &rd),
                                         DQ_OK);
                        char v[8];
                        size_t len;
                        ck_assert_int_eq(
                            dq_file_reader_metadata(rd, "format_version", v, sizeof v, &len),
                            DQ_OK);
                        ck_assert_str_eq(v, "3");
                        dq_linear *back = NULL;
                        ck_assert_int_eq(dq_file_reader_get_linear(rd, NULL, "L", NULL, &back),
                                         DQ_OK);
                        dq_qmatrix *qb = NULL;
                        ck_assert_int_eq(dq_file_reader_get_qmatrix(rd, NULL, "L.weight", &qb),
                                         DQ_OK);
                        same_qmatrix(q, qb);
                        if (!borrow)
                            dq_file_reader_free(rd); /* the copied layer stands alone */
                        same_outputs(lin, back, &r);
                        dq_linear_free(back);
                        dq_qmatrix_free(qb);
                        if (borrow)
                            dq_file_reader_free(rd);
                    }
                    free(buf);
                    dq_linear_free(lin);
                    dq_qmatrix_free(q);
                }
}
END_TEST

/* A borrowing reader creates the layer without an allocation that grows with the weights:
 * every allocation is below an eighth of the packed codes, and together they are too; a
 * buffer at an odd address still loads (scale records copied), with the same outputs. */
START_TEST(borrowed_layer_copies_no_weights)
{
    test_rng r = {502};
    const int64_t rows = 512, cols = 1024; /* 256 KiB of 4-bit codes */
    dq_qmatrix *q = packed_weights(&r, rows, cols, 4, DQ_QUANT_ASYM, 0);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin), DQ_OK);
    size_t size;
    uint8_t *buf = layer_file(lin, &size);
    const size_t code_bytes = (size_t)(rows * cols / 2);
    ck_assert_uint_ge(size, code_bytes);
    ck_assert_uint_le(size, code_bytes + code_bytes / 32 + 4096);
    for (size_t offset = 0; offset < 4; offset++) {
        uint8_t *shifted = malloc(size + offset);
        memcpy(shifted + offset, buf, size);
        dq_file_params fp;
        dq_file_params_init(&fp, sizeof fp);
        fp.flags = DQ_FILE_F_BORROW;
        dq_file_reader *rd = NULL;
        ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, shifted + offset, size, &rd),
                         DQ_OK);
        byte_count bc = {0};
        dq_context *ctx = count_context(&bc);
        dq_linear *back = NULL;
        ck_assert_int_eq(dq_file_reader_get_linear(rd, ctx, "L", NULL, &back), DQ_OK);
        ck_assert_msg(bc.largest < code_bytes / 8 && bc.total < code_bytes / 8,
                      "offset %zu: largest %zu, total %zu bytes", offset, bc.largest, bc.total);
        same_outputs(lin, back, &r);
        dq_linear_free(back);
        ck_assert_uint_eq(bc.live, 0);
        dq_context_free(ctx);
        dq_file_reader_free(rd);
        free(shifted);
    }
    /* The copying reader copies the codes once, and nothing more is kept. */
    dq_file_reader *rd = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, buf, size, &rd), DQ_OK);
    byte_count bc = {0};
    dq_context *ctx = count_context(&bc);
    dq_linear *back = NULL;
    ck_assert_int_eq(dq_file_reader_get_linear(rd, ctx, "L", NULL, &back), DQ_OK);
    ck_assert_uint_ge(bc.live, code_bytes);
    ck_assert_uint_le(bc.live, code_bytes + code_bytes / 32 + 4096);
    dq_linear_free(back);
    dq_context_free(ctx);
    dq_file_reader_free(rd);
    free(buf);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
}
END_TEST

/* Bytes a layer holds: a whole-row W4 layer at most 0.52 bytes per weight plus a small
 * constant, whether created from a packed matrix or loaded from a version-1 file. */
START_TEST(layer_holds_half_a_byte_per_weight)
{
    test_rng r = {503};
    const int64_t rows = 1024, cols = 1024;
    dq_qmatrix *q = packed_weights(&r, rows, cols, 4, DQ_QUANT_ASYM, 0);
    byte_count bc = {0};
    dq_context *ctx = count_context(&bc);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), DQ_OK);
    const double limit = 0.52 * (double)(rows * cols) + 8192.0;
    ck_assert_msg((double)bc.live <= limit, "created: %zu bytes", bc.live);
    /* building it never needed more than the layer itself and one row of scratch */
    ck_assert_msg((double)bc.peak <= limit + (double)cols * 2, "peak %zu bytes", bc.peak);
    dq_linear_free(lin);
    ck_assert_uint_eq(bc.live, 0);
    /* the same layer through a version-1 file (the packed matrix is repacked on load) */
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(w, "L", NULL, NULL, q, NULL), DQ_OK);
    size_t size;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
    uint8_t *buf = malloc(size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, size, &size), DQ_OK);
    dq_file_writer_free(w);
    dq_file_reader *rd = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, buf, size, &rd), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(rd, ctx, "L", NULL, &lin), DQ_OK);
    dq_file_reader_free(rd);
    ck_assert_msg((double)bc.live <= limit, "loaded: %zu bytes", bc.live);
    dq_linear_free(lin);
    dq_context_free(ctx);
    free(buf);
    dq_qmatrix_free(q);
}
END_TEST

/* Old files: a version-1 layer file loads through a mapped, borrowing reader as through a
 * copying one, and converted to version 2 it gives the same outputs bit for bit. */
START_TEST(version1_layers_load_and_convert)
{
    test_rng r = {504};
    char path[4096];
    const char *here = __FILE__, *slash = strrchr(here, '/');
    snprintf(path, sizeof path, "%.*sdata/layer_v1.safetensors",
             slash ? (int)(slash - here + 1) : 0, here);
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_BORROW;
    dq_file_reader *mapped = NULL, *copied = NULL;
    ck_assert_msg(dq_file_reader_open(NULL, &fp, path, &mapped) == DQ_OK, "%s", path);
    ck_assert_int_eq(dq_file_reader_open(NULL, NULL, path, &copied), DQ_OK);
    dq_plan *plan = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(copied, NULL, "l0.plan", &plan), DQ_OK);
    dq_linear *a = NULL, *b = NULL, *c = NULL;
    ck_assert_int_eq(dq_file_reader_get_linear(copied, NULL, "l0.lin", plan, &a), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(mapped, NULL, "l0.lin", plan, &b), DQ_OK);
    same_outputs(a, b, &r);
    size_t size;
    uint8_t *buf = layer_file_with_plan(b, plan, &size);
    dq_file_reader *v2 = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, buf, size, &v2), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(v2, NULL, "L", plan, &c), DQ_OK);
    same_outputs(a, c, &r);
    dq_qmatrix *q1 = NULL, *q2 = NULL;
    ck_assert_int_eq(dq_file_reader_get_qmatrix(copied, NULL, "l0.lin.weight", &q1), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_qmatrix(v2, NULL, "L.weight", &q2), DQ_OK);
    same_qmatrix(q1, q2);
    dq_qmatrix_free(q1);
    dq_qmatrix_free(q2);
    dq_linear_free(a);
    dq_linear_free(b);
    dq_linear_free(c);
    dq_file_reader_free(v2);
    dq_file_reader_free(mapped);
    dq_file_reader_free(copied);
    dq_plan_free(plan);
    free(buf);
}
END_TEST

/* The data offsets of tensor name in a file buffer (relative to the whole buffer). */
static size_t tensor_offset(const uint8_t *buf, const char *name)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    char key[128];
    snprintf(key, sizeof key, "\"%s\":{", name);
    char *json = malloc(n + 1);
    memcpy(json, buf + 8, n);
    json[n] = 0;
    const char *at = strstr(json, key);
    ck_assert_ptr_nonnull(at);
    const char *off = strstr(at, "\"data_offsets\":[");
    ck_assert_ptr_nonnull(off);
    size_t begin = strtoull(off + strlen("\"data_offsets\":["), NULL, 10);
    free(json);
    return 8 + n + begin;
}

/* A blocked layer whose records disagree with its codes, or hold bad scales, zero points or
 * padding, is refused with DQ_ERR_FORMAT (NaN: DQ_ERR_NONFINITE), borrowed or not. */
START_TEST(bad_blocked_layers)
{
    test_rng r = {505};
    dq_qmatrix *q = packed_weights(&r, 20, 40, 4, DQ_QUANT_SYM, 0);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin), DQ_OK);
    size_t size;
    uint8_t *buf = layer_file(lin, &size);
    const size_t meta = tensor_offset(buf, "L.weight.meta");
    const size_t codes = tensor_offset(buf, "L.weight.blocks");
    /* (offset, byte xor, expected) */
    const struct {
        size_t at;
        uint8_t x;
        dq_status want;
    } cases[] = {
        {codes, 0x01, DQ_ERR_FORMAT},              /* a code: corr disagrees */
        {codes + 40 * 8, 0x10, DQ_ERR_FORMAT},     /* past the last step: padding */
        {meta + 64 + 4 * 3, 0x01, DQ_ERR_FORMAT},  /* SYM zero point not 0 */
        {meta + 128 + 4 * 5, 0x01, DQ_ERR_FORMAT}, /* corr */
        {meta + 3, 0x80, DQ_ERR_FORMAT},           /* negative scale */
        {meta + 3, 0x7F, DQ_ERR_NONFINITE},        /* scale NaN or Inf */
        {meta + 192 + 4 * 7, 0x01, DQ_ERR_FORMAT}, /* row 23 of 20: padding row */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int borrow = 0; borrow < 2; borrow++) {
            uint8_t *bad = malloc(size);
            memcpy(bad, buf, size);
            bad[cases[k].at] ^= cases[k].x;
            if (cases[k].want == DQ_ERR_NONFINITE)
                bad[cases[k].at] |= 0x7F, bad[cases[k].at - 1] |= 0x80;
            dq_file_params fp;
            dq_file_params_init(&fp, sizeof fp);
            /* Trusted: the data checksums would refuse every case before the checks. */
            fp.flags = (borrow ? DQ_FILE_F_BORROW : 0) | DQ_FILE_F_TRUSTED;
            dq_file_reader *rd = NULL;
            ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, bad, size, &rd), DQ_OK);
            dq_linear *back = (dq_linear *)1;
            dq_qmatrix *qb = (dq_qmatrix *)1;
            ck_assert_msg(dq_file_reader_get_linear(rd, NULL, "L", NULL, &back) ==
                              cases[k].want,
                          "case %zu", k);
            ck_assert_ptr_null(back);
            ck_assert_int_eq(dq_file_reader_get_qmatrix(rd, NULL, "L.weight", &qb),
                             cases[k].want);
            ck_assert_ptr_null(qb);
            dq_file_reader_free(rd);
            free(bad);
        }
    free(buf);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
}
END_TEST

/* The code sums behind the corr check, taken a whole step at a time, then code by code in a
 * group's partial step: a valid layer loads, and one flipped code in a whole step or in the
 * partial one is refused, for 4- and 8-bit codes, whole rows and groups. */
START_TEST(blocked_sums_every_shape)
{
    const int64_t cols[] = {40, 44, 67};
    test_rng r = {606};
    for (int32_t bits = 4; bits <= 8; bits += 4)
        for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++)
            for (int32_t group = 0; group <= 32; group += 32) {
                dq_qmatrix *q = packed_weights(&r, 20, cols[c], bits, DQ_QUANT_ASYM, group);
                dq_linear *lin = NULL;
                ck_assert_int_eq(dq_linear_create(NULL, NULL, NULL, q, NULL, &lin), DQ_OK);
                size_t size;
                uint8_t *buf = layer_file(lin, &size);
                const size_t codes = tensor_offset(buf, "L.weight.blocks");
                const size_t step = bits == 4 ? 64 : 128;
                /* the last real code of output 1: a partial step unless cols is a multiple of 8 */
                const int64_t k = cols[c] - 1, s = k / 8, half = (k % 8) / 4, lane = k % 4;
                const size_t last = bits == 4 ? codes + (size_t)s * 64 + 4 + (size_t)lane
                                              : codes + (size_t)s * 128 + (size_t)half * 64 + 4 +
                                                    (size_t)lane;
                const uint8_t last_x = bits == 4 ? (uint8_t)(half ? 0x10 : 0x01) : 0x01;
                const struct {
                    size_t at;
                    uint8_t x;
                } flips[] = {{0, 0}, {codes + step + 8, 0x01}, {last, last_x}};
                for (size_t f = 0; f < sizeof flips / sizeof flips[0]; f++) {
                    uint8_t *bad = malloc(size);
                    memcpy(bad, buf, size);
                    bad[flips[f].at] ^= flips[f].x;
                    dq_file_params fp;
                    dq_file_params_init(&fp, sizeof fp);
                    fp.flags = DQ_FILE_F_BORROW | DQ_FILE_F_TRUSTED;
                    dq_file_reader *rd = NULL;
                    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, bad, size, &rd),
                                     DQ_OK);
                    dq_linear *back = NULL;
                    ck_assert_msg(dq_file_reader_get_linear(rd, NULL, "L", NULL, &back) ==
                                      (f == 0 ? DQ_OK : DQ_ERR_FORMAT),
                                  "bits %d cols %lld group %d flip %zu", (int)bits,
                                  (long long)cols[c], (int)group, f);
                    dq_linear_free(back);
                    dq_file_reader_free(rd);
                    free(bad);
                }
                free(buf);
                dq_linear_free(lin);
                dq_qmatrix_free(q);
            }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("round_trip");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, plan_round_trip_default);
    tcase_add_test(tc, plan_round_trip_variants);
    tcase_add_test(tc, qmatrix_round_trip);
    tcase_add_test(tc, tensors_metadata_and_listing);
    tcase_add_test(tc, output_is_deterministic_and_sized);
    tcase_add_test(tc, save_and_open_file);
    tcase_add_test(tc, rotation_from_matrices);
    tcase_add_test(tc, linear_round_trip_and_errors);
    tcase_add_test(tc, blocked_layer_round_trip);
    tcase_add_test(tc, borrowed_layer_copies_no_weights);
    tcase_add_test(tc, layer_holds_half_a_byte_per_weight);
    tcase_add_test(tc, version1_layers_load_and_convert);
    tcase_add_test(tc, bad_blocked_layers);
    tcase_add_test(tc, blocked_sums_every_shape);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, writer_rejects_bad_input_and_stays_unchanged);
    tcase_add_test(bad, allocation_failures_leak_nothing);
    tcase_add_test(bad, truncated_files);
    tcase_add_test(bad, bad_header_length);
    tcase_add_test(bad, bad_json);
    tcase_add_test(bad, bad_offsets_and_sizes);
    tcase_add_test(bad, wrong_format_or_version);
    tcase_add_test(bad, bad_plans);
    tcase_add_test(bad, bad_qmatrices);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
