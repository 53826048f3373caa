/* Bounded reading: the reader validates a file's header before it reads or maps the data, keeps
 * the header's table compact, checks declared sizes against the bytes present, and keeps what
 * it allocates for a file under dq_file_params.max_alloc_bytes. Every bound is asserted on the
 * bytes the library asked its allocator for (a counting allocator on the context). */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dq_check_run.h"
#include "dq_test.h"
#include "duquant.h"
#include "test_count_alloc.h"

/* Starts a measurement: the peak from now on, above what is live now. */
static size_t mark(counter *c)
{
    c->peak = c->live;
    return c->live;
}

/* ---- files made by hand ---- */

/* A container: 8-byte length, header (padded with spaces to a multiple of 8), data. */
static uint8_t *container(const char *json, const void *data, size_t data_size, size_t *size)
{
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    *size = 8 + padded + data_size;
    uint8_t *b = malloc(*size);
    ck_assert_ptr_nonnull(b);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)padded >> (8 * k));
    memcpy(b + 8, json, n);
    memset(b + 8 + n, ' ', padded - n);
    if (data_size)
        memcpy(b + 8 + padded, data, data_size);
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t size)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, size, f), size);
    ck_assert_int_eq(fclose(f), 0);
}

/* A file of 8 + header + data_size bytes whose data section is a hole (no disk blocks): the
 * header declares one U8 tensor "x" covering it all. */
static void sparse_file(const char *path, const char *format, uint64_t data_size)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"__metadata__\":{\"format\":\"%s\",\"format_version\":\"1\"},"
             "\"x\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]}}",
             format, (unsigned long long)data_size, (unsigned long long)data_size);
    size_t size;
    uint8_t *b = container(json, NULL, 0, &size);
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, b, size), (ssize_t)size);
    ck_assert_int_eq(ftruncate(fd, (off_t)(size + data_size)), 0);
    ck_assert_int_eq(close(fd), 0);
    free(b);
}

#define TWO_GB ((uint64_t)2 << 30)

/* ---- 1. the header before the data ---- */

START_TEST(large_foreign_file_fails_from_its_header)
{
    /* 2 GiB of data in a safetensors file that is not ours: refused from the header alone,
     * copying or mapping. Before, the whole file was read first (2 GiB allocated). */
    const char *path = "test_file_bounded_foreign.safetensors";
    sparse_file(path, "other", TWO_GB);
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    for (int borrow = 0; borrow < 2; borrow++) {
        p.flags = borrow ? DQ_FILE_F_BORROW : 0;
        const size_t base = mark(&cnt);
        dq_file_reader *r = (dq_file_reader *)1;
        ck_assert_int_eq(dq_file_reader_open(ctx, &p, path, &r), DQ_ERR_FORMAT);
        ck_assert_ptr_null(r);
        ck_assert_uint_le(cnt.peak - base, 4096); /* the header and its table */
        ck_assert_uint_eq(cnt.live, base);
    }
    /* Our format, mapped: the 2 GiB are never read; only the table is allocated. */
    sparse_file(path, "duquant", TWO_GB);
    p.flags = DQ_FILE_F_BORROW;
    size_t base = mark(&cnt);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_open(ctx, &p, path, &r), DQ_OK);
    ck_assert_uint_le(cnt.peak - base, 4096);
    int64_t shape[DQ_FILE_MAX_DIMS];
    ck_assert_int_eq(dq_file_reader_tensor_info(r, "x", NULL, NULL, shape), DQ_OK);
    ck_assert_int_eq(shape[0], (int64_t)TWO_GB);
    dq_file_reader_free(r);
    /* Copying it under a limit smaller than the data: refused before the data is read. */
    p.flags = 0;
    p.max_alloc_bytes = 1 << 20;
    base = mark(&cnt);
    ck_assert_int_eq(dq_file_reader_open(ctx, &p, path, &r), DQ_ERR_NOMEM);
    ck_assert_ptr_null(r);
    ck_assert_uint_le(cnt.peak - base, 4096);
    dq_context_free(ctx);
    remove(path);
}
END_TEST

START_TEST(offsets_checked_against_the_file_size)
{
    /* A tensor that ends past the file: refused from the header (nothing read past it). */
    const char *json = "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\"},"
                       "\"x\":{\"dtype\":\"F32\",\"shape\":[268435456],"
                       "\"data_offsets\":[0,1073741824]}}";
    size_t size;
    const float one = 1.0f;
    uint8_t *b = container(json, &one, sizeof one, &size);
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    const size_t base = mark(&cnt);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_ERR_FORMAT);
    const char *path = "test_file_bounded_short.safetensors";
    write_file(path, b, size);
    ck_assert_int_eq(dq_file_reader_open(ctx, NULL, path, &r), DQ_ERR_FORMAT);
    ck_assert_uint_le(cnt.peak - base, 4096);
    remove(path);
    free(b);
    dq_context_free(ctx);
}
END_TEST

/* ---- 2. a compact table ---- */

/* A header of about target bytes of metadata pairs, keys in a shuffled order. */
static char *metadata_json(size_t target, size_t *n_pairs, test_rng *rng)
{
    const size_t n = target / 26; /* "k0000000":"value0000000", */
    uint32_t *order = malloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(test_rng_u64(rng) % i);
        uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    char *json = malloc(n * 32 + 128);
    size_t pos = (size_t)sprintf(json, "{\"__metadata__\":{\"format\":\"duquant\","
                                       "\"format_version\":\"1\"");
    for (size_t i = 0; i < n; i++)
        pos += (size_t)sprintf(json + pos, ",\"k%07u\":\"value%07u\"", order[i], order[i] * 3);
    strcpy(json + pos, "}}");
    free(order);
    *n_pairs = n + 2;
    return json;
}

static void check_metadata_table(dq_file_reader *r, size_t n_pairs)
{
    int64_t nt, nm;
    ck_assert_int_eq(dq_file_reader_count(r, &nt, &nm), DQ_OK);
    ck_assert_int_eq(nt, 0);
    ck_assert_int_eq(nm, (int64_t)n_pairs);
    /* Keys in byte order; each finds its value. */
    char prev[32] = "", key[32], value[32], want[32];
    for (int64_t i = 0; i < nm; i++) {
        ck_assert_int_eq(dq_file_reader_metadata_key(r, i, key, sizeof key, NULL), DQ_OK);
        ck_assert_msg(strcmp(prev, key) < 0, "key %lld '%s' after '%s'", (long long)i, key, prev);
        strcpy(prev, key);
        if (key[0] != 'k')
            continue;
        ck_assert_int_eq(dq_file_reader_metadata(r, key, value, sizeof value, NULL), DQ_OK);
        snprintf(want, sizeof want, "value%07u", (unsigned)(strtoul(key + 1, NULL, 10) * 3));
        ck_assert_str_eq(value, want);
    }
}

START_TEST(metadata_table_is_compact)
{
    /* 4 MiB of metadata pairs: the table is at most twice the header (before: one 64-byte
     * aligned allocation per key and per value, 27x the header). */
    test_rng rng = {5};
    size_t n_pairs, size;
    char *json = metadata_json((size_t)4 << 20, &n_pairs, &rng);
    uint8_t *b = container(json, NULL, 0, &size);
    const size_t header = size - 8;
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    size_t base = mark(&cnt);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_OK);
    ck_assert_uint_le(cnt.peak - base, 2 * header);
    check_metadata_table(r, n_pairs);
    dq_file_reader_free(r);
    /* From a file: the header read, then its table (3x the header at most). */
    const char *path = "test_file_bounded_meta.safetensors";
    write_file(path, b, size);
    base = mark(&cnt);
    ck_assert_int_eq(dq_file_reader_open(ctx, NULL, path, &r), DQ_OK);
    ck_assert_uint_le(cnt.peak - base, 3 * header);
    check_metadata_table(r, n_pairs);
    dq_file_reader_free(r);
    ck_assert_uint_eq(cnt.live, base);
    /* The same under a limit below the table: DQ_ERR_NOMEM, nothing allocated. */
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    p.max_alloc_bytes = header / 2;
    base = mark(&cnt);
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, &p, b, size, &r), DQ_ERR_NOMEM);
    ck_assert_uint_le(cnt.peak - base, header / 2);
    remove(path);
    free(b);
    free(json);
    dq_context_free(ctx);
}
END_TEST

/* Checks that the reader lists keys and names in strictly increasing byte order and finds
 * each of them. */
static void check_order(dq_file_reader *r)
{
    int64_t nt, nm;
    ck_assert_int_eq(dq_file_reader_count(r, &nt, &nm), DQ_OK);
    char prev[64] = "", k[64], v[64];
    for (int64_t i = 0; i < nm; i++) {
        ck_assert_int_eq(dq_file_reader_metadata_key(r, i, k, sizeof k, NULL), DQ_OK);
        ck_assert_int_lt(strcmp(prev, k), 0);
        ck_assert_int_eq(dq_file_reader_metadata(r, k, v, sizeof v, NULL), DQ_OK);
        strcpy(prev, k);
    }
    prev[0] = 0;
    for (int64_t i = 0; i < nt; i++) {
        ck_assert_int_eq(dq_file_reader_tensor_name(r, i, k, sizeof k, NULL), DQ_OK);
        ck_assert_int_lt(strcmp(prev, k), 0);
        ck_assert_int_eq(dq_file_reader_tensor_info(r, k, NULL, NULL, NULL), DQ_OK);
        strcpy(prev, k);
    }
}

START_TEST(table_sorts_and_rejects_duplicates)
{
    /* Keys and names in sorted, reversed and shuffled order, many sharing long prefixes or
     * equal up to their last byte: listed in byte order; one repeated key or name anywhere is
     * DQ_ERR_FORMAT. */
    test_rng rng = {9};
    for (int trial = 0; trial < 60; trial++) {
        const int n = 1 + (int)(test_rng_u64(&rng) % 400), order = trial % 3;
        const int dup_kind = trial % 4; /* 0, 1: none; 2: a key; 3: a name */
        int *ids = malloc((size_t)n * sizeof *ids);
        ck_assert_ptr_nonnull(ids);
        for (int i = 0; i < n; i++)
            ids[i] = order == 1 ? n - 1 - i : i;
        if (order == 2)
            for (int i = n; i > 1; i--) {
                int j = (int)(test_rng_u64(&rng) % (uint64_t)i), t = ids[i - 1];
                ids[i - 1] = ids[j];
                ids[j] = t;
            }
        const int dup_at = n > 1 ? 1 + (int)(test_rng_u64(&rng) % (uint64_t)(n - 1)) : -1;
        const int dup_of = dup_at > 0 ? (int)(test_rng_u64(&rng) % (uint64_t)dup_at) : -1;
        const bool dup = dup_kind >= 2 && dup_at > 0;
        const size_t cap = (size_t)n * 160 + 256;
        char *json = malloc(cap);
        ck_assert_ptr_nonnull(json);
        size_t pos = (size_t)snprintf(json, cap, "{\"__metadata__\":{\"format\":\"duquant\","
                                                "\"format_version\":\"1\"");
        for (int i = 0; i < n; i++) {
            const int id = dup && dup_kind == 2 && i == dup_at ? ids[dup_of] : ids[i];
            pos += (size_t)snprintf(json + pos, cap - pos, ",\"prefix.shared.by.all.%d\":\"%d\"",
                                    id, i);
        }
        pos += (size_t)snprintf(json + pos, cap - pos, "}");
        for (int i = 0; i < n; i++) {
            const int id = dup && dup_kind == 3 && i == dup_at ? ids[dup_of] : ids[i];
            pos += (size_t)snprintf(json + pos, cap - pos,
                                    ",\"layers.%d.w\":{\"dtype\":\"U8\",\"shape\":[%d],"
                                    "\"data_offsets\":[%d,%d]}",
                                    id, i % 2, i / 2, i / 2 + i % 2);
        }
        snprintf(json + pos, cap - pos, "}");
        size_t size;
        uint8_t data[256] = {0};
        uint8_t *b = container(json, data, (size_t)n / 2, &size);
        dq_file_reader *r = NULL;
        const dq_status st = dq_file_reader_from_buffer(NULL, NULL, b, size, &r);
        ck_assert_msg(st == (dup ? DQ_ERR_FORMAT : DQ_OK), "trial %d: %d", trial, (int)st);
        if (r) {
            int64_t nt, nm;
            ck_assert_int_eq(dq_file_reader_count(r, &nt, &nm), DQ_OK);
            ck_assert_int_eq(nt, n);
            ck_assert_int_eq(nm, n + 2);
            check_order(r);
        }
        dq_file_reader_free(r);
        free(b);
        free(json);
        free(ids);
    }
}
END_TEST

/* ---- 3. declared sizes before allocation ---- */

static const char *const plan_176 =
    "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\",\"p.type\":\"plan\","
    "\"p.cols\":\"16777216\",\"p.n_rotations\":\"1\",\"p.rot0.block_size\":\"2\","
    "\"p.rot0.n_matrices\":\"8388608\"}}";

START_TEST(small_plan_file_allocates_little)
{
    /* 176 bytes declaring 8388608 rotation matrices: refused before any allocation sized by
     * the count (before: 64 MB for the matrices' table, then DQ_ERR_FORMAT). */
    size_t size;
    uint8_t *b = container(plan_176, NULL, 0, &size);
    ck_assert_uint_eq(size, 176);
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_OK);
    const size_t base = mark(&cnt);
    dq_plan *pl = (dq_plan *)1;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_ERR_FORMAT);
    ck_assert_ptr_null(pl);
    ck_assert_uint_le(cnt.peak - base, 4096);
    ck_assert_uint_eq(cnt.live, base);
    dq_file_reader_free(r);
    /* A caller built against 1.0 (no max_alloc_bytes in its struct) gets the same. */
    struct {
        uint32_t struct_size, flags;
        uint64_t max_header_bytes;
    } old;
    ck_assert_int_eq(dq_file_params_init((dq_file_params *)(void *)&old, sizeof old), DQ_OK);
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, (const dq_file_params *)(void *)&old, b,
                                                size, &r),
                     DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_ERR_FORMAT);
    ck_assert_uint_le(cnt.peak - base, 4096);
    dq_file_reader_free(r);
    free(b);
    dq_context_free(ctx);
}
END_TEST

/* A plan of cols channels with one rotation, blocks of 2 sharing one 2 x 2 identity matrix:
 * 16 bytes of data, yet the rotation keeps 8 bytes per block. */
static uint8_t *shared_rotation_plan(int64_t cols, size_t *size)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"1\","
             "\"p.type\":\"plan\",\"p.cols\":\"%lld\",\"p.n_rotations\":\"1\","
             "\"p.rot0.block_size\":\"2\",\"p.rot0.n_matrices\":\"1\"},"
             "\"p.rot0.m0\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
             (long long)cols);
    const float eye[4] = {1, 0, 0, 1};
    return container(json, eye, sizeof eye, size);
}

START_TEST(shared_rotation_bounded_by_limit)
{
    /* 2^24 channels from a 240-byte file would take 2 x 64 MB: over the default limit (4 x
     * the file + 16 MiB), refused before allocating. A caller who allows it gets the plan. */
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    size_t size;
    uint8_t *b = shared_rotation_plan((int64_t)1 << 24, &size);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_OK);
    size_t base = mark(&cnt);
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_ERR_NOMEM);
    ck_assert_uint_le(cnt.peak - base, 4096);
    dq_file_reader_free(r);
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    p.max_alloc_bytes = (uint64_t)1 << 28;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, &p, b, size, &r), DQ_OK);
    base = mark(&cnt);
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_OK);
    ck_assert_uint_le(cnt.peak - base, p.max_alloc_bytes);
    int64_t width;
    ck_assert_int_eq(dq_plan_width(pl, &width), DQ_OK);
    ck_assert_int_eq(width, (int64_t)1 << 24);
    dq_plan_free(pl);
    dq_file_reader_free(r);
    free(b);
    /* 2^20 channels (2 x 4 MB) are within the default limit. */
    b = shared_rotation_plan((int64_t)1 << 20, &size);
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_OK);
    dq_plan_free(pl);
    dq_file_reader_free(r);
    free(b);
    dq_context_free(ctx);
}
END_TEST

/* ---- 4. every call under the limit ---- */

static dq_plan *identity_plan(int64_t cols, int32_t bs)
{
    const int64_t nb = cols / bs;
    float *m = calloc((size_t)(nb * bs * bs), sizeof *m);
    for (int64_t k = 0; k < nb; k++)
        for (int32_t i = 0; i < bs; i++)
            m[k * bs * bs + i * bs + i] = 1.0f;
    dq_rotation *rot[2] = {NULL, NULL};
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, cols, bs, 1, m, nb * bs * bs, &rot[0]),
                     DQ_OK);
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, cols, bs, 0, m, bs * bs, &rot[1]), DQ_OK);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    float *smooth = malloc((size_t)cols * sizeof *smooth);
    for (int64_t j = 0; j < cols; j++) {
        perm[j] = (j * 7 + 3) % cols;
        smooth[j] = 1.0f + (float)(j % 5) * 0.25f;
    }
    const int64_t *perms[1] = {perm};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, cols, smooth, 2, (const dq_rotation *const *)rot,
                                      perms, &pl),
                     DQ_OK);
    dq_rotation_free(rot[0]);
    dq_rotation_free(rot[1]);
    free(m);
    free(perm);
    free(smooth);
    return pl;
}

static dq_qmatrix *weights(int64_t rows, int64_t cols, int32_t group, const dq_plan *pl)
{
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.group_size = group;
    if (pl)
        ck_assert_int_eq(dq_plan_fingerprint(pl, &p.plan_fingerprint), DQ_OK);
    test_rng rng = {21};
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)test_rng_normal(&rng);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, rows, cols, cols, NULL, NULL, &q), DQ_OK);
    free(w);
    return q;
}

/* A file with plan "p" (96 channels), its layer "L" (40 x 96, groups of 32) in both layouts,
 * and a packed matrix "Q". */
static uint8_t *layer_file(size_t *size)
{
    dq_plan *pl = identity_plan(96, 16);
    dq_qmatrix *q = weights(40, 96, 32, pl);
    float bias[40];
    for (int i = 0; i < 40; i++)
        bias[i] = 0.01f * (float)i;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, NULL, pl, q, bias, &lin), DQ_OK);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(w, "L", NULL, "p", q, bias), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(w, "B", lin, "p"), DQ_OK);
    dq_qmatrix *q2 = weights(33, 17, 0, NULL);
    ck_assert_int_eq(dq_file_writer_add_qmatrix(w, "Q", q2), DQ_OK);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *b = malloc(*size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, b, *size, size), DQ_OK);
    dq_file_writer_free(w);
    dq_linear_free(lin);
    dq_qmatrix_free(q);
    dq_qmatrix_free(q2);
    dq_plan_free(pl);
    return b;
}

START_TEST(every_call_stays_under_the_limit)
{
    /* For limits from far too small to plenty: opening and each getter either succeed having
     * allocated at most the limit, or return DQ_ERR_NOMEM having allocated at most the limit.
     * With the default limit all succeed. */
    size_t size;
    uint8_t *b = layer_file(&size);
    counter cnt = {0};
    dq_context *ctx = count_context(&cnt);
    ck_assert_ptr_nonnull(ctx);
    const size_t idle = cnt.live; /* the context itself */
    int ok_all = 0;
    for (uint64_t limit = 256; limit <= ((uint64_t)1 << 22); limit = limit * 17 / 16) {
        for (int borrow = 0; borrow < 2; borrow++) {
            dq_file_params p;
            dq_file_params_init(&p, sizeof p);
            p.flags = borrow ? DQ_FILE_F_BORROW : 0;
            p.max_alloc_bytes = limit;
            size_t base = mark(&cnt);
            dq_file_reader *r = NULL;
            dq_status st = dq_file_reader_from_buffer(ctx, &p, b, size, &r);
            ck_assert_msg(st == DQ_OK || st == DQ_ERR_NOMEM, "open: %d", (int)st);
            ck_assert_msg(cnt.peak - base <= limit, "open: %zu > limit %llu", cnt.peak - base,
                          (unsigned long long)limit);
            if (st != DQ_OK)
                continue;
            int ok = 0;
            dq_plan *pl = NULL;
            base = mark(&cnt);
            st = dq_file_reader_get_plan(r, ctx, "p", &pl);
            ck_assert_msg(st == DQ_OK || st == DQ_ERR_NOMEM, "get_plan: %d", (int)st);
            ck_assert_msg(cnt.peak - base <= limit, "get_plan: %zu > limit %llu",
                          cnt.peak - base, (unsigned long long)limit);
            ok += st == DQ_OK;
            const char *layers[2] = {"L", "B"};
            for (int k = 0; k < 2 && pl; k++) {
                dq_linear *lin = NULL;
                base = mark(&cnt);
                st = dq_file_reader_get_linear(r, ctx, layers[k], pl, &lin);
                ck_assert_msg(st == DQ_OK || st == DQ_ERR_NOMEM, "get_linear %s: %d", layers[k],
                              (int)st);
                ck_assert_msg(cnt.peak - base <= limit, "get_linear %s: %zu > limit %llu",
                              layers[k], cnt.peak - base, (unsigned long long)limit);
                ok += st == DQ_OK;
                dq_linear_free(lin);
            }
            const char *mats[3] = {"Q", "L.weight", "B.weight"};
            for (int k = 0; k < 3; k++) {
                dq_qmatrix *q = NULL;
                base = mark(&cnt);
                st = dq_file_reader_get_qmatrix(r, ctx, mats[k], &q);
                ck_assert_msg(st == DQ_OK || st == DQ_ERR_NOMEM, "get_qmatrix %s: %d", mats[k],
                              (int)st);
                ck_assert_msg(cnt.peak - base <= limit, "get_qmatrix %s: %zu > limit %llu",
                              mats[k], cnt.peak - base, (unsigned long long)limit);
                ok += st == DQ_OK;
                dq_qmatrix_free(q);
            }
            ok_all += ok == 6;
            dq_plan_free(pl);
            dq_file_reader_free(r);
        }
    }
    ck_assert_int_gt(ok_all, 0); /* the largest limits load everything */
    ck_assert_uint_eq(cnt.live, idle);
    /* The default limit loads everything. */
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, b, size, &r), DQ_OK);
    dq_plan *pl = NULL;
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_file_reader_get_plan(r, ctx, "p", &pl), DQ_OK);
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "L", pl, &lin), DQ_OK);
    dq_linear_free(lin);
    ck_assert_int_eq(dq_file_reader_get_linear(r, ctx, "B", pl, &lin), DQ_OK);
    dq_linear_free(lin);
    dq_plan_free(pl);
    dq_file_reader_free(r);
    free(b);
    dq_context_free(ctx);
}
END_TEST

START_TEST(allocation_failures_leak_nothing)
{
    /* Each allocation of opening (from a file: header, table, data) failed in turn. */
    size_t size;
    uint8_t *b = layer_file(&size);
    const char *path = "test_file_bounded_fail.safetensors";
    write_file(path, b, size);
    bool done = false;
    for (long k = 1; !done; k++) {
        counter cnt = {0};
        dq_context *ctx = count_context(&cnt);
        ck_assert_ptr_nonnull(ctx);
        cnt.calls = 0;
        cnt.fail_at = k;
        dq_file_reader *r = NULL;
        dq_status st = dq_file_reader_open(ctx, NULL, path, &r);
        if (cnt.calls >= k)
            ck_assert_int_eq(st, DQ_ERR_NOMEM);
        else
            done = st == DQ_OK;
        dq_file_reader_free(r);
        dq_context_free(ctx);
        ck_assert_uint_eq(cnt.live, 0);
    }
    remove(path);
    free(b);
}
END_TEST

START_TEST(params_max_alloc_bytes)
{
    dq_file_params p;
    ck_assert_int_eq(dq_file_params_init(&p, sizeof p), DQ_OK);
    ck_assert_uint_eq(p.max_alloc_bytes, 0);
    ck_assert_uint_eq(p.struct_size, sizeof p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_bounded");
    /* Cases run alone with CK_RUN_CASE: header, table, sizes, limit. */
    TCase *header = tcase_create("header"), *table = tcase_create("table");
    TCase *sizes = tcase_create("sizes"), *limit = tcase_create("limit");
    tcase_add_test(header, large_foreign_file_fails_from_its_header);
    tcase_add_test(header, offsets_checked_against_the_file_size);
    tcase_add_test(table, metadata_table_is_compact);
    tcase_add_test(table, table_sorts_and_rejects_duplicates);
    tcase_add_test(sizes, small_plan_file_allocates_little);
    tcase_add_test(sizes, shared_rotation_bounded_by_limit);
    tcase_add_test(limit, every_call_stays_under_the_limit);
    tcase_add_test(limit, allocation_failures_leak_nothing);
    tcase_add_test(limit, params_max_alloc_bytes);
    TCase *all[4] = {header, table, sizes, limit};
    for (int i = 0; i < 4; i++) {
        tcase_set_timeout(all[i], 120);
        suite_add_tcase(s, all[i]);
    }
    return dq_check_run(s, 0);
}
