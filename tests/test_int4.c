/* Raw 4-bit packing: layout, round trips for random codes and odd widths, bad arguments. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"
#include "dq_check_run.h"

START_TEST(layout_low_nibble_first)
{
    int32_t codes[3] = {0x3, 0xA, 0x7};
    uint8_t out[2] = {0xFF, 0xFF};
    ck_assert_int_eq(dq_int4_pack(codes, 3, out, sizeof out), DQ_OK);
    ck_assert_uint_eq(out[0], 0xA3);
    ck_assert_uint_eq(out[1], 0x07); /* odd tail: high nibble zero */
    int32_t neg[2] = {-1, -8};
    ck_assert_int_eq(dq_int4_pack(neg, 2, out, sizeof out), DQ_OK);
    ck_assert_uint_eq(out[0], 0x8F);
}
END_TEST

START_TEST(packed_size)
{
    ck_assert_uint_eq(dq_int4_packed_size(0), 0);
    ck_assert_uint_eq(dq_int4_packed_size(1), 1);
    ck_assert_uint_eq(dq_int4_packed_size(2), 1);
    ck_assert_uint_eq(dq_int4_packed_size(7), 4);
    ck_assert_uint_eq(dq_int4_packed_size(-3), 0);
}
END_TEST

START_TEST(round_trip_random_codes)
{
    test_rng r = {7};
    int64_t widths[] = {1, 2, 3, 15, 16, 17, 255, 1000, 1001};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int64_t n = widths[w];
        for (int is_signed = 0; is_signed <= 1; is_signed++) {
            int32_t *codes = malloc((size_t)n * sizeof *codes);
            int32_t *back = malloc((size_t)n * sizeof *back);
            size_t nb = dq_int4_packed_size(n);
            uint8_t *packed = malloc(nb);
            for (int64_t i = 0; i < n; i++)
                codes[i] = (int32_t)(test_rng_u64(&r) % 16) - (is_signed ? 8 : 0);
            ck_assert_int_eq(dq_int4_pack(codes, n, packed, nb), DQ_OK);
            ck_assert_int_eq(dq_int4_unpack(packed, nb, n, is_signed, back), DQ_OK);
            ck_assert_int_eq(memcmp(codes, back, (size_t)n * sizeof *codes), 0);
            free(codes);
            free(back);
            free(packed);
        }
    }
}
END_TEST

START_TEST(bad_arguments_write_nothing)
{
    int32_t codes[4] = {1, 2, 3, 4};
    uint8_t out[2] = {0x55, 0x55};
    ck_assert_int_eq(dq_int4_pack(NULL, 4, out, 2), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_int4_pack(codes, 4, NULL, 2), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_int4_pack(codes, 0, out, 2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_int4_pack(codes, -4, out, 2), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_int4_pack(codes, 4, out, 1), DQ_ERR_BUFFER);
    codes[3] = 16;
    ck_assert_int_eq(dq_int4_pack(codes, 4, out, 2), DQ_ERR_INVALID_ARG);
    codes[3] = -9;
    ck_assert_int_eq(dq_int4_pack(codes, 4, out, 2), DQ_ERR_INVALID_ARG);
    ck_assert_uint_eq(out[0], 0x55);
    ck_assert_uint_eq(out[1], 0x55);

    int32_t back[4] = {42, 42, 42, 42};
    ck_assert_int_eq(dq_int4_unpack(NULL, 2, 4, 0, back), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_int4_unpack(out, 2, 4, 0, NULL), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_int4_unpack(out, 2, 0, 0, back), DQ_ERR_SHAPE);
    ck_assert_int_eq(dq_int4_unpack(out, 1, 4, 0, back), DQ_ERR_BUFFER);
    ck_assert_int_eq(back[0], 42);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("int4");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, layout_low_nibble_first);
    tcase_add_test(tc, packed_size);
    tcase_add_test(tc, round_trip_random_codes);
    tcase_add_test(tc, bad_arguments_write_nothing);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
