/* Integrity of stored files (doc/formats.md, "Checksums" and "Objects"): checksums of every
 * tensor and of the header, the manifest of each object, the bounds of stored scales, and
 * sweeps of single-byte header edits and data bit flips of a small plan file and a small layer
 * file: every edited file either fails to load with an error status or loads and gives
 * bit-identical outputs. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"
#include "test_unseal.h"
#include "dq_check_run.h"

enum { C = 12, OUT = 5, TOK = 3 };

/* The Sylvester Hadamard matrix over sqrt(n), n a power of two, built here (the library's
 * builder belongs to the offline side, absent from inference-only builds). */
static void hadamard(int n, float *h)
{
    const float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            h[i * n + j] = (__builtin_popcount((unsigned)(i & j)) & 1) ? -s : s;
}

/* A plan of width 12: smoothing, Hadamard blocks of 4, a permutation, blocks of 8 and 4. */
static dq_plan *small_plan(void)
{
    float smooth[C], h4[16], h8[64], hdata[80];
    int64_t perm[C];
    for (int j = 0; j < C; j++) {
        smooth[j] = 1.0f + (float)j / 8.0f;
        perm[j] = (j / 4) * 4 + 3 - j % 4;
    }
    hadamard(4, h4);
    hadamard(8, h8);
    memcpy(hdata, h8, sizeof h8);
    memcpy(hdata + 64, h4, sizeof h4);
    dq_rotation *r[2] = {NULL, NULL};
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, C, 4, 0, h4, 16, &r[0]), DQ_OK);
    ck_assert_int_eq(dq_rotation_from_matrices(NULL, C, 8, 0, hdata, 80, &r[1]), DQ_OK);
    const int64_t *perms[1] = {perm};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(NULL, C, smooth, 2, (const dq_rotation *const *)r, perms,
                                      &pl),
                     DQ_OK);
    dq_rotation_free(r[0]);
    dq_rotation_free(r[1]);
    return pl;
}

static void fill_x(float *x)
{
    for (int i = 0; i < TOK * C; i++)
        x[i] = (float)((i * 7) % 17) / 4.0f - 2.0f;
}

/* Weights transformed by pl and packed (bits, scheme, group 4). */
static dq_qmatrix *small_weights(const dq_plan *pl, int32_t bits, int32_t scheme)
{
    float w[OUT * C];
    for (int i = 0; i < OUT * C; i++)
        w[i] = (float)((i * 5) % 11) / 4.0f - 1.25f;
    dq_quant_params qp;
    dq_quant_params_init(&qp, sizeof qp);
    qp.bits = bits;
    qp.scheme = scheme;
    qp.group_size = 4;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack_transformed(NULL, &qp, pl, w, OUT, C, C, NULL, NULL, &q),
                     DQ_OK);
    return q;
}

static uint8_t *serialise(const dq_file_writer *w, size_t *size)
{
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, size), DQ_OK);
    uint8_t *b = malloc(*size);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, b, *size, size), DQ_OK);
    return b;
}

/* The plan file: plan "p". */
static uint8_t *plan_file(size_t *size)
{
    dq_plan *pl = small_plan();
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    uint8_t *b = serialise(w, size);
    dq_file_writer_free(w);
    dq_plan_free(pl);
    return b;
}

/* The layer file: plan "p", layer "l0" (packed matrix, 8-bit SYM activations, bias) and layer
 * "l1" (blocked layout, 4-bit SYM weights, 4-bit activations, no bias), both reading "p". */
static uint8_t *layer_file(size_t *size)
{
    dq_plan *pl = small_plan();
    dq_qmatrix *q0 = small_weights(pl, 4, DQ_QUANT_ASYM), *q1 = small_weights(pl, 4, DQ_QUANT_SYM);
    const float bias[OUT] = {0.5f, -0.25f, 2.0f, 0.0f, -1.5f};
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    lp.act_bits = 8;
    lp.act_scheme = DQ_QUANT_SYM;
    lp.act_clip_ratio = 0.75f;
    dq_linear_params lp1;
    dq_linear_params_init(&lp1, sizeof lp1);
    lp1.act_bits = 4;
    dq_linear *l1 = NULL;
    ck_assert_int_eq(dq_linear_create(NULL, &lp1, pl, q1, NULL, &l1), DQ_OK);
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "p", pl), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear(w, "l0", &lp, "p", q0, bias), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(w, "l1", l1, "p"), DQ_OK);
    uint8_t *b = serialise(w, size);
    dq_file_writer_free(w);
    dq_linear_free(l1);
    dq_qmatrix_free(q0);
    dq_qmatrix_free(q1);
    dq_plan_free(pl);
    return b;
}

/* Outputs of a file: the plan "p" applied to fixed activations and, with layers, the forward
 * passes of "l0" and "l1" on them (out: TOK * (C + 2 * OUT) floats). The first error of the
 * open or any getter or call is returned. */
static dq_status outputs(const uint8_t *buf, size_t size, uint32_t flags, bool layers,
                         float *out)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = flags;
    dq_file_reader *r = NULL;
    dq_status st = dq_file_reader_from_buffer(NULL, &fp, buf, size, &r);
    if (st != DQ_OK)
        return st;
    dq_plan *pl = NULL;
    dq_linear *l0 = NULL, *l1 = NULL;
    float x[TOK * C];
    fill_x(x);
    st = dq_file_reader_get_plan(r, NULL, "p", &pl);
    if (st == DQ_OK) {
        memcpy(out, x, sizeof x);
        st = dq_plan_apply_act(pl, out, TOK, C, C, NULL, 0);
    }
    if (st == DQ_OK && layers)
        st = dq_file_reader_get_linear(r, NULL, "l0", pl, &l0);
    if (st == DQ_OK && layers)
        st = dq_file_reader_get_linear(r, NULL, "l1", pl, &l1);
    if (st == DQ_OK && layers)
        st = dq_linear_forward(l0, x, TOK, C, C, out + TOK * C, OUT, NULL, 0);
    if (st == DQ_OK && layers)
        st = dq_linear_forward(l1, x, TOK, C, C, out + TOK * (C + OUT), OUT, NULL, 0);
    dq_linear_free(l0);
    dq_linear_free(l1);
    dq_plan_free(pl);
    dq_file_reader_free(r);
    return st;
}

#define N_OUT (TOK * (C + 2 * OUT))

static size_t header_end(const uint8_t *buf)
{
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = n << 8 | buf[k];
    return 8 + (size_t)n;
}

static uint8_t *replace(const uint8_t *buf, size_t size, const char *from, const char *to)
{
    uint8_t *b = malloc(size);
    memcpy(b, buf, size);
    const size_t end = header_end(b), lf = strlen(from);
    ck_assert_uint_eq(lf, strlen(to));
    for (size_t i = 8; i + lf <= end; i++)
        if (memcmp(b + i, from, lf) == 0) {
            memcpy(b + i, to, lf);
            return b;
        }
    ck_abort_msg("'%s' not in the header", from);
    return NULL;
}

/* Byte offset (in the file) of the data of tensor name. */
static size_t data_at(const uint8_t *buf, const char *name)
{
    const size_t end = header_end(buf);
    char *json = malloc(end - 7);
    memcpy(json, buf + 8, end - 8);
    json[end - 8] = 0;
    char key[128];
    snprintf(key, sizeof key, "\"%s\":{", name);
    const char *at = strstr(json, key);
    ck_assert_msg(at != NULL, "tensor %s", name);
    const char *off = strstr(at, "\"data_offsets\":[");
    size_t begin = strtoull(off + strlen("\"data_offsets\":["), NULL, 10);
    free(json);
    return end + begin;
}

static void put_f32(uint8_t *p, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    for (int k = 0; k < 4; k++)
        p[k] = (uint8_t)(u >> (8 * k));
}

/* ---- the sweeps ---- */

/* Every single-byte change of the header (length field included) by a few replacement values:
 * the edited file fails with an error status or gives the original outputs bit for bit. */
static void header_sweep(const uint8_t *buf, size_t size, bool layers, const char *what)
{
    static const float zero[N_OUT];
    float want[N_OUT], got[N_OUT];
    memcpy(want, zero, sizeof want);
    ck_assert_int_eq(outputs(buf, size, 0, layers, want), DQ_OK);
    const size_t end = header_end(buf);
    uint8_t *b = malloc(size);
    memcpy(b, buf, size);
    long edits = 0, loaded = 0;
    for (size_t i = 0; i < end; i++) {
        const uint8_t orig = buf[i];
        const uint8_t vals[6] = {orig ^ 0x01, orig ^ 0x20, '0', '9', ' ', '"'};
        for (int v = 0; v < 6; v++) {
            if (vals[v] == orig)
                continue;
            b[i] = vals[v];
            memcpy(got, zero, sizeof got);
            const dq_status st = outputs(b, size, 0, layers, got);
            edits++;
            if (st == DQ_OK) {
                loaded++;
                ck_assert_msg(memcmp(got, want, sizeof got) == 0,
                              "%s: byte %zu 0x%02x -> 0x%02x loads with other outputs", what, i,
                              orig, vals[v]);
            } else {
                ck_assert_int_lt(st, 0);
            }
        }
        b[i] = orig;
    }
    printf("%s: %ld header edits of %zu bytes, %ld loaded (all with identical outputs)\n", what,
           edits, end, loaded);
    free(b);
}

/* Seeded single-bit flips of the data section: each must fail (a checksum covers every data
 * bit, and a change of one 8-byte word is always detected) or, trusted, at least not crash. */
static void data_flips(const uint8_t *buf, size_t size, bool layers, const char *what)
{
    static const float zero[N_OUT];
    float want[N_OUT], got[N_OUT];
    memcpy(want, zero, sizeof want);
    ck_assert_int_eq(outputs(buf, size, 0, layers, want), DQ_OK);
    const size_t end = header_end(buf), bits = (size - end) * 8;
    uint8_t *b = malloc(size);
    memcpy(b, buf, size);
    uint64_t s = 0x9e3779b97f4a7c15u;
    long loaded = 0, trusted_loaded = 0;
    enum { FLIPS = 300 };
    for (int k = 0; k < FLIPS; k++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        const size_t bit = (size_t)(s % bits);
        b[end + bit / 8] ^= (uint8_t)(1u << (bit % 8));
        memcpy(got, zero, sizeof got);
        dq_status st = outputs(b, size, 0, layers, got);
        if (st == DQ_OK) {
            loaded++;
            ck_assert_msg(memcmp(got, want, sizeof got) == 0, "%s: data bit %zu flipped loads",
                          what, bit);
        }
        if (outputs(b, size, DQ_FILE_F_TRUSTED, layers, got) == DQ_OK)
            trusted_loaded++;
        b[end + bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    printf("%s: %d data bit flips, %ld loaded (%ld with DQ_FILE_F_TRUSTED, which skips the data "
           "checksums)\n", what, FLIPS, loaded, trusted_loaded);
    ck_assert_int_eq(loaded, 0);
    free(b);
}

START_TEST(plan_file_sweeps)
{
    size_t size;
    uint8_t *buf = plan_file(&size);
    header_sweep(buf, size, false, "plan file");
    data_flips(buf, size, false, "plan file");
    free(buf);
}
END_TEST

START_TEST(layer_file_sweeps)
{
    size_t size;
    uint8_t *buf = layer_file(&size);
    header_sweep(buf, size, true, "layer file");
    data_flips(buf, size, true, "layer file");
    free(buf);
}
END_TEST

/* ---- the cases one by one ---- */

static void expect_open(const uint8_t *b, size_t size, uint32_t flags, dq_status want)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = flags;
    dq_file_reader *r = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, b, size, &r), want);
    if (want != DQ_OK)
        ck_assert_ptr_null(r);
    dq_file_reader_free(r);
}

/* n_rotations "2" -> "0": with checksums the header checksum refuses the file; without them
 * (a file of version 1 or 2) the parts the plan does not know refuse the plan. */
START_TEST(n_rotations_edit)
{
    size_t size, usize;
    float out[N_OUT];
    uint8_t *buf = plan_file(&size);
    uint8_t *b = replace(buf, size, "\"p.n_rotations\":\"2\"", "\"p.n_rotations\":\"0\"");
    expect_open(b, size, 0, DQ_ERR_FORMAT);
    expect_open(b, size, DQ_FILE_F_TRUSTED, DQ_ERR_FORMAT);
    free(b);
    uint8_t *u = test_unseal(buf, size, &usize);
    ck_assert_int_eq(outputs(u, usize, 0, false, out), DQ_OK);
    for (int k = 0; k < 2; k++) {
        const char *to = k == 0 ? "\"p.n_rotations\":\"0\"" : "\"p.n_rotations\":\"1\"";
        b = replace(u, usize, "\"p.n_rotations\":\"2\"", to);
        expect_open(b, usize, 0, DQ_OK);
        ck_assert_int_eq(outputs(b, usize, 0, false, out), DQ_ERR_FORMAT);
        free(b);
    }
    free(u);
    free(buf);
}
END_TEST

/* A renamed bias is never taken as "no bias". */
START_TEST(renamed_bias)
{
    size_t size, usize;
    float out[N_OUT];
    uint8_t *buf = layer_file(&size);
    const char *renames[] = {"\"l0.biaz\":{", "\"l0xbias\":{", "\"l0.Bias\":{"};
    for (int k = 0; k < 3; k++) {
        uint8_t *b = replace(buf, size, "\"l0.bias\":{", renames[k]);
        expect_open(b, size, 0, DQ_ERR_FORMAT); /* the header checksum */
        free(b);
    }
    /* Without checksums: a name under the layer's prefix that it does not know. */
    uint8_t *u = test_unseal(buf, size, &usize);
    ck_assert_int_eq(outputs(u, usize, 0, true, out), DQ_OK);
    uint8_t *b = replace(u, usize, "\"l0.bias\":{", "\"l0.biaz\":{");
    ck_assert_int_eq(outputs(b, usize, 0, true, out), DQ_ERR_FORMAT);
    free(b);
    free(u);
    free(buf);
}
END_TEST

/* Names the loader does not know under an object's prefix are errors; objects nested under
 * another's prefix are not the other's parts. */
START_TEST(stray_and_nested_names)
{
    dq_plan *pl = small_plan();
    dq_qmatrix *q = small_weights(pl, 4, DQ_QUANT_ASYM);
    const float extra = 1.0f;
    const int64_t one = 1;
    for (int k = 0; k < 4; k++) {
        dq_file_writer *w = NULL;
        ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
        /* The plan nested under the layer's prefix ("l0.p"). */
        ck_assert_int_eq(dq_file_writer_add_plan(w, "l0.p", pl), DQ_OK);
        ck_assert_int_eq(dq_file_writer_add_linear(w, "l0", NULL, "l0.p", q, NULL), DQ_OK);
        if (k == 1)
            ck_assert_int_eq(dq_file_writer_add_metadata(w, "l0.note", "x"), DQ_OK);
        if (k == 2)
            ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "l0.p.extra", &extra, 1, &one),
                             DQ_OK);
        if (k == 3)
            ck_assert_int_eq(dq_file_writer_add_metadata(w, "l0.weight.rows", "5"), DQ_OK);
        size_t size;
        uint8_t *b = serialise(w, &size);
        dq_file_reader *r = NULL;
        ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, b, size, &r), DQ_OK);
        dq_plan *lp = NULL;
        dq_linear *lin = NULL;
        const dq_status pst = dq_file_reader_get_plan(r, NULL, "l0.p", &lp);
        ck_assert_int_eq(pst, k == 2 ? DQ_ERR_FORMAT : DQ_OK);
        if (k != 2)
            ck_assert_int_eq(dq_file_reader_get_linear(r, NULL, "l0", lp, &lin),
                             k == 0 ? DQ_OK : DQ_ERR_FORMAT);
        dq_linear_free(lin);
        dq_plan_free(lp);
        dq_file_reader_free(r);
        free(b);
        dq_file_writer_free(w);
    }
    dq_qmatrix_free(q);
    dq_plan_free(pl);
}
END_TEST

/* A stored scale of 3e38 (4-bit codes up to 15: 4.5e39) is no scale a writer makes: refused
 * by the reader (trusted, or without checksums, so that the checksum does not refuse it
 * first), in both layouts; the writer refuses weights whose groups would need one. */
START_TEST(scale_out_of_range)
{
    size_t size, usize;
    float out[N_OUT];
    uint8_t *buf = layer_file(&size);
    uint8_t *u = test_unseal(buf, size, &usize);
    const struct {
        const uint8_t *file;
        size_t size;
        uint32_t flags;
    } files[2] = {{buf, size, DQ_FILE_F_TRUSTED}, {u, usize, 0}};
    for (int f = 0; f < 2; f++) {
        uint8_t *b = malloc(files[f].size);
        memcpy(b, files[f].file, files[f].size);
        ck_assert_int_eq(outputs(b, files[f].size, files[f].flags, true, out), DQ_OK);
        const size_t at = data_at(b, "l0.weight.scales");
        put_f32(b + at, 3e38f);
        ck_assert_int_eq(outputs(b, files[f].size, files[f].flags, true, out), DQ_ERR_FORMAT);
        memcpy(b, files[f].file, files[f].size);
        put_f32(b + data_at(b, "l0.weight.scales") + 4, 1e36f); /* large, but finite codes */
        ck_assert_int_eq(outputs(b, files[f].size, files[f].flags, true, out), DQ_OK);
        memcpy(b, files[f].file, files[f].size);
        put_f32(b + data_at(b, "l1.weight.meta") + 4 * 2, 3e38f); /* row 2's scale, group 0 */
        ck_assert_int_eq(outputs(b, files[f].size, files[f].flags, true, out), DQ_ERR_FORMAT);
        free(b);
    }
    free(u);
    free(buf);

    /* A constant group of 3e38 in 4 bits would need scale 3e38, whose top code dequantizes
     * beyond FLT_MAX: the quantizer refuses it, so no such group reaches a writer. */
    float w[2 * 4];
    for (int i = 0; i < 8; i++)
        w[i] = i < 4 ? 3e38f : 1.0f;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, 2, 4, 4, NULL, NULL, &q), DQ_ERR_NONFINITE);
    ck_assert_ptr_null(q);
}
END_TEST

/* Version 3 needs its checksums; edited checksums, shapes or names are refused; a data change
 * is refused unless the reader trusts the data. */
START_TEST(checksum_rules)
{
    size_t size, usize;
    float want[N_OUT], out[N_OUT];
    uint8_t *buf = layer_file(&size);
    ck_assert_int_eq(outputs(buf, size, 0, true, want), DQ_OK);
    char v[8];
    size_t len;
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, buf, size, &r), DQ_OK);
    ck_assert_int_eq(dq_file_reader_metadata(r, "format_version", v, sizeof v, &len), DQ_OK);
    ck_assert_str_eq(v, "3");
    ck_assert_int_eq(DQ_FILE_FORMAT_VERSION, 3);
    dq_file_reader_free(r);

    /* Without checksums but claiming version 3. */
    uint8_t *u = test_unseal(buf, size, &usize);
    expect_open(u, usize, 0, DQ_OK); /* as version 2 */
    uint8_t *b = replace(u, usize, "\"format_version\":\"2\"", "\"format_version\":\"3\"");
    expect_open(b, usize, 0, DQ_ERR_FORMAT);
    expect_open(b, usize, DQ_FILE_F_TRUSTED, DQ_ERR_FORMAT);
    free(b);
    free(u);
    /* A shape swapped in the header (same byte count), a checksum digit, a version. */
    const char *edits[][2] = {
        {"\"shape\":[5,3]", "\"shape\":[3,5]"},
        {"\"format_version\":\"3\"", "\"format_version\":\"2\""},
        {"\"__hash__\":\"", "\"__hash_-\":\""},
    };
    for (int k = 0; k < 3; k++) {
        b = replace(buf, size, edits[k][0], edits[k][1]);
        expect_open(b, size, 0, DQ_ERR_FORMAT);
        expect_open(b, size, DQ_FILE_F_TRUSTED, DQ_ERR_FORMAT);
        free(b);
    }
    /* A bias value changed in the data: refused, unless trusted (then the new value is used). */
    b = malloc(size);
    memcpy(b, buf, size);
    put_f32(b + data_at(b, "l0.bias"), 0.625f);
    ck_assert_int_eq(outputs(b, size, 0, true, out), DQ_ERR_FORMAT);
    ck_assert_int_eq(outputs(b, size, DQ_FILE_F_BORROW, true, out), DQ_ERR_FORMAT);
    ck_assert_int_eq(outputs(b, size, DQ_FILE_F_TRUSTED, true, out), DQ_OK);
    ck_assert_int_ne(memcmp(out, want, sizeof out), 0);
    /* dq_file_reader_get_tensor_f32 checks too. */
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, b, size, &r), DQ_OK);
    float bias[OUT];
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "l0.bias", bias, OUT), DQ_ERR_FORMAT);
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "p.smooth", bias, 0), DQ_ERR_SHAPE);
    dq_file_reader_free(r);
    free(b);
    /* Unknown flag bits are still refused. */
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = 4;
    r = (dq_file_reader *)1;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, &fp, buf, size, &r), DQ_ERR_INVALID_ARG);
    free(buf);

    /* A raw container of version 3 without "__hash__". */
    const char *json = "{\"__metadata__\":{\"format\":\"duquant\",\"format_version\":\"3\"}}";
    const size_t n = strlen(json);
    uint8_t raw[128];
    for (int k = 0; k < 8; k++)
        raw[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(raw + 8, json, n);
    expect_open(raw, 8 + n, 0, DQ_ERR_FORMAT);
}
END_TEST

/* The checksums' names are reserved. */
START_TEST(reserved_names)
{
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    const float x = 1.0f;
    const int64_t one = 1;
    dq_plan *pl = small_plan();
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "__hash__", "0123456789abcdef"),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "__hash__.t", "0123456789abcdef"),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "__hash__.t", &x, 1, &one),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_plan(w, "__hash__", pl), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_file_writer_add_metadata(w, "__hash__x", "free"), DQ_OK);
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "t", &x, 1, &one), DQ_OK);
    size_t size;
    uint8_t *b = serialise(w, &size);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, b, size, &r), DQ_OK);
    float y = 0.0f;
    ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, "t", &y, 1), DQ_OK);
    ck_assert(y == 1.0f);
    dq_file_reader_free(r);
    free(b);
    dq_plan_free(pl);
    dq_file_writer_free(w);
}
END_TEST

/* A shape with a 0 has no data, whatever the other dimensions and wherever the 0 is. */
START_TEST(zero_dimension_anywhere)
{
    const int64_t big = (int64_t)1 << 62;
    const int64_t shapes[3][3] = {{big, big, 0}, {0, big, big}, {big, 0, big}};
    dq_file_writer *w = NULL;
    ck_assert_int_eq(dq_file_writer_create(NULL, &w), DQ_OK);
    for (int k = 0; k < 3; k++) {
        char name[8];
        snprintf(name, sizeof name, "z%d", k);
        ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, name, NULL, 3, shapes[k]), DQ_OK);
    }
    const int64_t over[2] = {big, big};
    const float x = 0.0f;
    ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "o", &x, 2, over), DQ_ERR_OVERFLOW);
    size_t size;
    uint8_t *b = serialise(w, &size);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, b, size, &r), DQ_OK);
    for (int k = 0; k < 3; k++) {
        char name[8];
        snprintf(name, sizeof name, "z%d", k);
        int64_t shape[DQ_FILE_MAX_DIMS];
        int32_t ndim;
        ck_assert_int_eq(dq_file_reader_tensor_info(r, name, NULL, &ndim, shape), DQ_OK);
        ck_assert_int_eq(ndim, 3);
        ck_assert(memcmp(shape, shapes[k], sizeof shapes[k]) == 0);
        ck_assert_int_eq(dq_file_reader_get_tensor_f32(r, name, NULL, 0), DQ_OK);
    }
    dq_file_reader_free(r);
    free(b);
    dq_file_writer_free(w);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_integrity");
    TCase *tc = tcase_create("integrity");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, plan_file_sweeps);
    tcase_add_test(tc, layer_file_sweeps);
    tcase_add_test(tc, n_rotations_edit);
    tcase_add_test(tc, renamed_bias);
    tcase_add_test(tc, stray_and_nested_names);
    tcase_add_test(tc, scale_out_of_range);
    tcase_add_test(tc, checksum_rules);
    tcase_add_test(tc, reserved_names);
    tcase_add_test(tc, zero_dimension_anywhere);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
