/* Packed quantized matrices: round-trip error bounds, groups, clipping, layout, bad input. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "test_alloc.h"
#include "dq_check_run.h"

static float *random_matrix(test_rng *r, int64_t rows, int64_t cols, int64_t ld)
{
    float *x = malloc((size_t)(rows * ld) * sizeof *x);
    test_fill_activations(r, x, rows, cols, ld, 1);
    return x;
}

static dq_quant_params quant_params(int32_t bits, int32_t scheme, int32_t group, float clip)
{
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    p.bits = bits;
    p.scheme = scheme;
    p.group_size = group;
    p.clip_ratio = clip;
    return p;
}

/* Unclipped groups: every element is within half a step of its dequantized value. */
START_TEST(dequantize_error_within_half_step)
{
    test_rng r = {11};
    const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 8}, {7, 64, 64}, {16, 129, 140}, {5, 33, 33}};
    const int32_t groups[] = {0, 1, 7, 16, 32, 1000};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1], ld = shapes[s][2];
        float *x = random_matrix(&r, rows, cols, ld);
        float *y = malloc((size_t)(rows * ld) * sizeof *y);
        int64_t checked = 0;
        for (int bits = 4; bits <= 8; bits += 4)
            for (int scheme = 0; scheme <= 1; scheme++)
                for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
                    dq_quant_params p = quant_params(bits, scheme, groups[g], 1.0f);
                    dq_qmatrix *q = NULL;
                    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, x, rows, cols, ld, NULL, NULL, &q),
                                     DQ_OK);
                    int64_t gpr = 0;
                    ck_assert_int_eq(
                        dq_qmatrix_layout(q, NULL, NULL, NULL, NULL, NULL, &gpr, NULL), DQ_OK);
                    int64_t glen = groups[g] == 0 || groups[g] > cols ? cols : groups[g];
                    ck_assert_int_eq(gpr, (cols + glen - 1) / glen);
                    const float *scales = NULL, *zeros = NULL;
                    ck_assert_int_eq(dq_qmatrix_view(q, NULL, NULL, &scales, &zeros), DQ_OK);
                    ck_assert_int_eq(dq_qmatrix_dequantize(q, y, ld), DQ_OK);
                    for (int64_t i = 0; i < rows; i++)
                        for (int64_t j = 0; j < cols; j++) {
                            float sc = scales[i * gpr + j / glen];
                            /* The bound needs the reference clamps inactive: a one-element
                             * ASYM group has max == min, scale 1e-5 and a saturated zero. */
                            if (zeros && (sc <= 1e-5f || fabsf(zeros[i * gpr + j / glen]) >= 1e4f))
                                continue;
                            checked++;
                            double err = fabs((double)y[i * ld + j] - (double)x[i * ld + j]);
                            ck_assert_double_le(err, 0.5 * sc * (1 + 1e-5) +
                                                         1e-6 * fabs(x[i * ld + j]));
                        }
                    dq_qmatrix_free(q);
                }
        /* At least half of the 24 configurations per element qualify. */
        ck_assert_int_ge(checked, 12 * rows * cols);
        free(x);
        free(y);
    }
}
END_TEST

/* A group that does not divide the row is quantized exactly as a matrix of its own would be. */
START_TEST(groups_match_separate_matrices)
{
    test_rng r = {5};
    int64_t rows = 4, cols = 23, group = 8;
    float *x = random_matrix(&r, rows, cols, cols);
    for (int scheme = 0; scheme <= 1; scheme++) {
        dq_quant_params p = quant_params(4, scheme, (int32_t)group, 1.0f);
        dq_qmatrix *q = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, x, rows, cols, cols, NULL, NULL, &q), DQ_OK);
        int32_t codes[4 * 23];
        ck_assert_int_eq(dq_qmatrix_unpack_codes(q, codes, cols), DQ_OK);
        const float *scales, *zeros;
        dq_qmatrix_view(q, NULL, NULL, &scales, &zeros);
        ck_assert(scheme == DQ_QUANT_SYM ? zeros == NULL : zeros != NULL);
        dq_quant_params whole = quant_params(4, scheme, 0, 1.0f);
        for (int64_t g = 0; g * group < cols; g++) {
            int64_t n = cols - g * group < group ? cols - g * group : group;
            dq_qmatrix *part = NULL;
            ck_assert_int_eq(
                dq_qmatrix_pack(NULL, &whole, x + g * group, rows, n, cols, NULL, NULL, &part),
                DQ_OK);
            int32_t pc[4 * 8];
            ck_assert_int_eq(dq_qmatrix_unpack_codes(part, pc, n), DQ_OK);
            const float *ps, *pz;
            dq_qmatrix_view(part, NULL, NULL, &ps, &pz);
            for (int64_t i = 0; i < rows; i++) {
                ck_assert_float_eq(scales[i * 3 + g], ps[i]);
                if (zeros)
                    ck_assert_float_eq(zeros[i * 3 + g], pz[i]);
                for (int64_t j = 0; j < n; j++)
                    ck_assert_int_eq(codes[i * cols + g * group + j], pc[i * n + j]);
            }
            dq_qmatrix_free(part);
        }
        dq_qmatrix_free(q);
    }
    free(x);
}
END_TEST

START_TEST(per_group_clip_equals_fixed_ratio)
{
    test_rng r = {3};
    int64_t rows = 6, cols = 40;
    float *x = random_matrix(&r, rows, cols, cols);
    float clip[6 * 3];
    for (int i = 0; i < 18; i++)
        clip[i] = 0.8f;
    dq_quant_params fixed = quant_params(4, DQ_QUANT_ASYM, 16, 0.8f);
    dq_quant_params plain = quant_params(4, DQ_QUANT_ASYM, 16, 1.0f);
    dq_qmatrix *a = NULL, *b = NULL, *c = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &fixed, x, rows, cols, cols, NULL, NULL, &a), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &plain, x, rows, cols, cols, clip, clip, &b), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &plain, x, rows, cols, cols, NULL, NULL, &c), DQ_OK);
    const uint8_t *pa, *pb, *pc;
    const float *sa, *sb, *sc;
    size_t na, nb;
    dq_qmatrix_view(a, &pa, &na, &sa, NULL);
    dq_qmatrix_view(b, &pb, &nb, &sb, NULL);
    dq_qmatrix_view(c, &pc, NULL, &sc, NULL);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_eq(na, (size_t)rows * 20);
    ck_assert_int_eq(memcmp(pa, pb, na), 0);
    ck_assert_int_eq(memcmp(sa, sb, 18 * sizeof(float)), 0);
    /* Clipping must change something, else the comparison above proves nothing. */
    ck_assert(memcmp(sa, sc, 18 * sizeof(float)) != 0);
    dq_qmatrix_free(a);
    dq_qmatrix_free(b);
    dq_qmatrix_free(c);
    free(x);
}
END_TEST

START_TEST(layout_and_view)
{
    float x[2 * 5] = {0, 1, 2, 3, 4, -4, -3, -2, -1, 0};
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, x, 2, 5, 5, NULL, NULL, &q), DQ_OK);
    int64_t rows, cols, gpr;
    int32_t bits, scheme, group;
    size_t row_bytes, nbytes;
    ck_assert_int_eq(dq_qmatrix_layout(q, &rows, &cols, &bits, &scheme, &group, &gpr, &row_bytes),
                     DQ_OK);
    ck_assert_int_eq(rows, 2);
    ck_assert_int_eq(cols, 5);
    ck_assert_int_eq(bits, 4);
    ck_assert_int_eq(scheme, DQ_QUANT_ASYM);
    ck_assert_int_eq(group, 0);
    ck_assert_int_eq(gpr, 1);
    ck_assert_uint_eq(row_bytes, 3);
    const uint8_t *packed;
    const float *scales, *zeros;
    ck_assert_int_eq(dq_qmatrix_view(q, &packed, &nbytes, &scales, &zeros), DQ_OK);
    ck_assert_uint_eq(nbytes, 6);
    /* Row 0: min 0, max 4 -> scale 4/15, zero 0, codes round(x * 15 / 4). */
    ck_assert_float_eq(scales[0], 4.0f / 15.0f);
    ck_assert_float_eq(zeros[0], 0.0f);
    ck_assert_uint_eq(packed[0], 0x40); /* codes 0, 4 */
    /* 2 / (4/15) is 7.4999998 in float: the formula is evaluated in float32, as documented. */
    uint8_t code2 = (uint8_t)rintf(2.0f / scales[0]), code3 = (uint8_t)rintf(3.0f / scales[0]);
    ck_assert_uint_eq(code2, 7);
    ck_assert_uint_eq(packed[1], (uint8_t)(code2 | code3 << 4));
    ck_assert_uint_eq(packed[2], 0x0F); /* code 15, padding nibble 0 */
    ck_assert_int_eq(dq_qmatrix_layout(NULL, &rows, NULL, NULL, NULL, NULL, NULL, NULL),
                     DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_qmatrix_view(NULL, &packed, NULL, NULL, NULL), DQ_ERR_INVALID_ARG);
    dq_qmatrix_free(q);
}
END_TEST

/* Each class of bad input: the documented code, no handle, nothing left allocated. */
static void expect_pack_error(const dq_quant_params *p, const float *w, int64_t rows,
                              int64_t cols, int64_t ld, const float *hi, const float *lo,
                              dq_status want)
{
    test_alloc a = {0};
    dq_context *ctx = test_alloc_context(&a);
    dq_qmatrix *q = (dq_qmatrix *)1;
    ck_assert_int_eq(dq_qmatrix_pack(ctx, p, w, rows, cols, ld, hi, lo, &q), want);
    ck_assert_ptr_null(q);
    dq_context_free(ctx);
    ck_assert_int_eq(a.live, 0);
}

START_TEST(bad_null_pointers)
{
    float w[8] = {0};
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, 2, 4, 4, NULL, NULL, NULL),
                     DQ_ERR_INVALID_ARG);
    expect_pack_error(NULL, NULL, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    int32_t codes[8];
    float out[8];
    ck_assert_int_eq(dq_qmatrix_unpack_codes(NULL, codes, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_qmatrix_dequantize(NULL, out, 4), DQ_ERR_INVALID_ARG);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, 2, 4, 4, NULL, NULL, &q), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_unpack_codes(q, NULL, 4), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_qmatrix_dequantize(q, NULL, 4), DQ_ERR_INVALID_ARG);
    dq_qmatrix_free(q);
}
END_TEST

START_TEST(bad_sizes)
{
    float w[8] = {0};
    expect_pack_error(NULL, w, 0, 4, 4, NULL, NULL, DQ_ERR_SHAPE);
    expect_pack_error(NULL, w, 2, 0, 4, NULL, NULL, DQ_ERR_SHAPE);
    expect_pack_error(NULL, w, -1, 4, 4, NULL, NULL, DQ_ERR_SHAPE);
    expect_pack_error(NULL, w, 2, -4, 4, NULL, NULL, DQ_ERR_SHAPE);
}
END_TEST

START_TEST(bad_leading_dimension)
{
    float w[8] = {0};
    expect_pack_error(NULL, w, 2, 4, 3, NULL, NULL, DQ_ERR_SHAPE);
    expect_pack_error(NULL, w, 2, 4, -4, NULL, NULL, DQ_ERR_SHAPE);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, w, 2, 4, 4, NULL, NULL, &q), DQ_OK);
    int32_t codes[8] = {0};
    float out[8] = {0};
    ck_assert_int_eq(dq_qmatrix_unpack_codes(q, codes, 3), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_qmatrix_dequantize(q, out, 3), DQ_ERR_SHAPE);
    dq_qmatrix_free(q);
}
END_TEST

START_TEST(sizes_that_overflow)
{
    float w[8] = {0};
    /* Never dereferenced: the span check fails first. */
    expect_pack_error(NULL, w, INT64_MAX / 2, 4, INT64_MAX / 4, NULL, NULL, DQ_ERR_OVERFLOW);
    expect_pack_error(NULL, w, 3, INT64_MAX / 2, INT64_MAX / 2, NULL, NULL, DQ_ERR_OVERFLOW);
    expect_pack_error(NULL, w, (int64_t)1 << 40, (int64_t)1 << 30, (int64_t)1 << 30, NULL, NULL,
                      DQ_ERR_OVERFLOW);
}
END_TEST

START_TEST(non_finite_data)
{
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    w[5] = NAN;
    expect_pack_error(NULL, w, 2, 4, 4, NULL, NULL, DQ_ERR_NONFINITE);
    w[5] = INFINITY;
    expect_pack_error(NULL, w, 2, 4, 4, NULL, NULL, DQ_ERR_NONFINITE);
    w[5] = -INFINITY;
    expect_pack_error(NULL, w, 2, 4, 4, NULL, NULL, DQ_ERR_NONFINITE);
    /* Padding between rows (ld > cols) is never read. */
    float padded[2 * 6] = {1, 2, 3, 4, NAN, INFINITY, 5, 6, 7, 8, NAN, NAN};
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, NULL, padded, 2, 4, 6, NULL, NULL, &q), DQ_OK);
    dq_qmatrix_free(q);
}
END_TEST

START_TEST(bad_params_values)
{
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    dq_quant_params p = quant_params(3, DQ_QUANT_ASYM, 0, 1.0f);
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    p = quant_params(4, 2, 0, 1.0f);
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    p = quant_params(4, DQ_QUANT_ASYM, -2, 1.0f);
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    const float bad_ratios[] = {0.0f, -0.5f, 1.5f, NAN};
    for (size_t i = 0; i < 4; i++) {
        p = quant_params(4, DQ_QUANT_ASYM, 0, bad_ratios[i]);
        expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    }
    p = quant_params(4, DQ_QUANT_ASYM, 0, 1.0f);
    p.flags = 0x80;
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_INVALID_ARG);
    float clip[2] = {0.9f, 0.0f};
    p = quant_params(4, DQ_QUANT_ASYM, 0, 1.0f);
    expect_pack_error(&p, w, 2, 4, 4, clip, NULL, DQ_ERR_INVALID_ARG);
    clip[1] = NAN;
    expect_pack_error(&p, w, 2, 4, 4, NULL, clip, DQ_ERR_INVALID_ARG);
}
END_TEST

START_TEST(bad_struct_size)
{
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    dq_quant_params p = quant_params(4, DQ_QUANT_ASYM, 0, 1.0f);
    p.struct_size = 8;
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_STRUCT_SIZE);
    p.struct_size = DQ_PARAMS_MAX_SIZE + 4;
    expect_pack_error(&p, w, 2, 4, 4, NULL, NULL, DQ_ERR_STRUCT_SIZE);
}
END_TEST

/* ---- clip arrays with their length (dq_qmatrix_pack_clipped) ---- */

static int same_matrix(const dq_qmatrix *a, const dq_qmatrix *b)
{
    const uint8_t *pa, *pb;
    const float *sa, *sb, *za, *zb;
    size_t na, nb;
    int64_t ga, rows;
    ck_assert_int_eq(dq_qmatrix_view(a, &pa, &na, &sa, &za), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_view(b, &pb, &nb, &sb, &zb), DQ_OK);
    ck_assert_int_eq(dq_qmatrix_layout(a, &rows, NULL, NULL, NULL, NULL, &ga, NULL), DQ_OK);
    const size_t ng = (size_t)(rows * ga);
    return na == nb && memcmp(pa, pb, na) == 0 && memcmp(sa, sb, ng * sizeof(float)) == 0 &&
           (za == NULL) == (zb == NULL) && (!za || memcmp(za, zb, ng * sizeof(float)) == 0);
}

/* Per-group factors give what dq_qmatrix_pack gives; per-row factors equal the same factor
 * repeated over the row's groups; an allocation of exactly the stated length is never read
 * past (ASan); any other length is refused before anything is read. */
START_TEST(pack_clipped_checks_lengths)
{
    test_rng r = {31};
    const int64_t rows = 5, cols = 70;
    float *x = random_matrix(&r, rows, cols, cols);
    for (int32_t group = 0; group <= 16; group += 16) {
        dq_quant_params p = quant_params(4, DQ_QUANT_ASYM, group, 1.0f);
        const int64_t groups = group ? (cols + group - 1) / group : 1;
        float *per_group = malloc((size_t)(rows * groups) * sizeof(float));
        float *per_row = malloc((size_t)rows * sizeof(float));
        for (int64_t i = 0; i < rows; i++) {
            per_row[i] = 0.6f + 0.05f * (float)i;
            for (int64_t g = 0; g < groups; g++)
                per_group[i * groups + g] = per_row[i];
        }
        dq_qmatrix *a = NULL, *b = NULL, *c = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, x, rows, cols, cols, per_group, per_group, &a),
                         DQ_OK);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_group,
                                                 per_group, rows * groups, &b),
                         DQ_OK);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_row, NULL,
                                                 rows, &c),
                         DQ_OK);
        ck_assert(same_matrix(a, b));
        dq_qmatrix_free(c);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_row, per_row,
                                                 rows, &c),
                         DQ_OK);
        ck_assert(same_matrix(a, c));
        dq_qmatrix_free(a);
        dq_qmatrix_free(b);
        dq_qmatrix_free(c);
        /* wrong lengths: refused, *out NULL */
        c = (dq_qmatrix *)per_row;
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_row, NULL,
                                                 rows - 1, &c),
                         DQ_ERR_SHAPE);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_group, NULL,
                                                 rows * groups + 1, &c),
                         DQ_ERR_SHAPE);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, NULL, NULL, 3, &c),
                         DQ_ERR_SHAPE);
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_row, NULL, -1,
                                                 &c),
                         DQ_ERR_INVALID_ARG);
        /* no clip arrays: the params' ratio, as dq_qmatrix_pack with NULL */
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, NULL, NULL, 0, &c),
                         DQ_OK);
        ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, x, rows, cols, cols, NULL, NULL, &a), DQ_OK);
        ck_assert(same_matrix(a, c));
        /* a bad factor inside the stated length is still refused */
        per_row[rows - 1] = 1.5f;
        ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, x, rows, cols, cols, per_row, NULL,
                                                 rows, &b),
                         DQ_ERR_INVALID_ARG);
        dq_qmatrix_free(a);
        dq_qmatrix_free(c);
        free(per_group);
        free(per_row);
    }
    free(x);
}
END_TEST

/* A constant group of subnormal values got the constant rule's scale |v| < FLT_MIN, which the
 * file reader (rightly) refuses: a packed matrix did not load back (found by fuzz_numeric).
 * Such groups now take scale FLT_MIN, come back within FLT_MIN / 2 and load. */
START_TEST(subnormal_constant_groups_load_back)
{
    const float vals[] = {2.55737e-39f, -2.55737e-39f, 1e-45f, -1.1e-38f};
    for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++)
        for (int32_t bits = 4; bits <= 8; bits += 4) {
            float w[2 * 6];
            for (int j = 0; j < 12; j++)
                w[j] = j < 6 ? vals[v] : (float)j; /* row 0 constant, row 1 ordinary */
            dq_quant_params p;
            ck_assert_int_eq(dq_quant_params_init(&p, sizeof p), DQ_OK);
            p.bits = bits;
            p.group_size = 3;
            dq_qmatrix *q = NULL;
            ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 2, 6, 6, NULL, NULL, &q), DQ_OK);
            const float *scales = NULL;
            ck_assert_int_eq(dq_qmatrix_view(q, NULL, NULL, &scales, NULL), DQ_OK);
            for (int g = 0; g < 4; g++)
                ck_assert(scales[g] >= FLT_MIN);
            float d[12];
            ck_assert_int_eq(dq_qmatrix_dequantize(q, d, 6), DQ_OK);
            for (int j = 0; j < 6; j++)
                ck_assert(fabsf(d[j] - vals[v]) <= FLT_MIN / 2);
            dq_file_writer *fw = NULL;
            ck_assert_int_eq(dq_file_writer_create(NULL, &fw), DQ_OK);
            ck_assert_int_eq(dq_file_writer_add_qmatrix(fw, "q", q), DQ_OK);
            size_t size = 0;
            ck_assert_int_eq(dq_file_writer_to_buffer(fw, NULL, 0, &size), DQ_OK);
            void *buf = malloc(size);
            ck_assert_int_eq(dq_file_writer_to_buffer(fw, buf, size, &size), DQ_OK);
            dq_file_reader *r = NULL;
            ck_assert_int_eq(dq_file_reader_from_buffer(NULL, NULL, buf, size, &r), DQ_OK);
            dq_qmatrix *q2 = NULL;
            ck_assert_int_eq(dq_file_reader_get_qmatrix(r, NULL, "q", &q2), DQ_OK);
            dq_qmatrix_free(q2);
            dq_file_reader_free(r);
            free(buf);
            dq_file_writer_free(fw);
            dq_qmatrix_free(q);
        }
}
END_TEST

/* Finite groups near FLT_MAX: SYM's lowest code (-8 at 4 bits) on a clipped group whose values
 * reach past the clip once dequantized to -inf after DQ_OK (found by fuzz_numeric). Such
 * groups are DQ_ERR_NONFINITE now; whatever packs dequantizes to finite values. */
START_TEST(groups_near_flt_max_dequantize_finite)
{
    const float w[4] = {-3.29365015e38f, 3.0e38f, 1.0f, -2.0f};
    const float hi[1] = {0.92f};
    dq_quant_params p;
    ck_assert_int_eq(dq_quant_params_init(&p, sizeof p), DQ_OK);
    p.scheme = DQ_QUANT_SYM;
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack_clipped(NULL, &p, w, 1, 4, 4, hi, NULL, 1, &q),
                     DQ_ERR_NONFINITE);
    ck_assert_ptr_null(q);
    /* SYM groups of subnormal values: raw scale max|x| / 127 rounds to 0; the scale is FLT_MIN
     * (the bound of duquant.h), not the all-zero group's 1e-5 (found by fuzz_numeric). */
    const float tiny[2] = {0.0f, 2.24207754e-44f};
    p.scheme = DQ_QUANT_SYM;
    p.bits = 8;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, tiny, 1, 2, 2, NULL, NULL, &q), DQ_OK);
    const float *sc = NULL;
    ck_assert_int_eq(dq_qmatrix_view(q, NULL, NULL, &sc, NULL), DQ_OK);
    ck_assert(sc[0] == FLT_MIN);
    dq_qmatrix_free(q);
    /* Ranges up to FLT_MAX, both schemes, 4 and 8 bits: finite or refused. */
    const float rows[][2] = {{0.0f, FLT_MAX}, {-FLT_MAX, 0.0f}, {-FLT_MAX / 2, FLT_MAX / 2},
                             {-1e38f, 2.4e38f}, {FLT_MAX, FLT_MAX / 3}};
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++)
        for (int32_t scheme = DQ_QUANT_ASYM; scheme <= DQ_QUANT_SYM; scheme++)
            for (int32_t bits = 4; bits <= 8; bits += 4) {
                p.scheme = scheme;
                p.bits = bits;
                const dq_status st = dq_qmatrix_pack(NULL, &p, rows[k], 1, 2, 2, NULL, NULL, &q);
                ck_assert(st == DQ_OK || st == DQ_ERR_NONFINITE);
                if (st == DQ_OK) {
                    float d[2];
                    ck_assert_int_eq(dq_qmatrix_dequantize(q, d, 2), DQ_OK);
                    ck_assert(isfinite(d[0]) && isfinite(d[1]));
                    dq_qmatrix_free(q);
                }
            }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("qmatrix");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, dequantize_error_within_half_step);
    tcase_add_test(tc, groups_match_separate_matrices);
    tcase_add_test(tc, per_group_clip_equals_fixed_ratio);
    tcase_add_test(tc, layout_and_view);
    tcase_add_test(tc, pack_clipped_checks_lengths);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, bad_null_pointers);
    tcase_add_test(bad, bad_sizes);
    tcase_add_test(bad, bad_leading_dimension);
    tcase_add_test(bad, sizes_that_overflow);
    tcase_add_test(bad, non_finite_data);
    tcase_add_test(bad, bad_params_values);
    tcase_add_test(bad, bad_struct_size);
    tcase_add_test(bad, subnormal_constant_groups_load_back);
    tcase_add_test(bad, groups_near_flt_max_dequantize_finite);
    suite_add_tcase(s, bad);
    return dq_check_run(s, 0);
}
