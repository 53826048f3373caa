/* Status codes: every code has a distinct name and description; unknown codes are handled. */
#include <check.h>
#include <string.h>

#include "duquant.h"
#include "dq_check_run.h"

static const dq_status all_codes[] = {
    DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_NOMEM, DQ_ERR_SHAPE, DQ_ERR_BAD_STATE, DQ_ERR_STRUCT_SIZE,
    DQ_ERR_UNSUPPORTED, DQ_ERR_BLAS, DQ_ERR_FORMAT, DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW,
    DQ_ERR_BUFFER, DQ_ERR_MISMATCH, DQ_ERR_IO,
};
#define N_CODES (sizeof all_codes / sizeof all_codes[0])

START_TEST(names_are_distinct_and_prefixed)
{
    for (size_t i = 0; i < N_CODES; i++) {
        const char *n = dq_status_name(all_codes[i]);
        ck_assert_ptr_nonnull(n);
        ck_assert_int_eq(strncmp(n, "DQ_", 3), 0);
        ck_assert_str_ne(n, "DQ_ERR_UNKNOWN");
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(n, dq_status_name(all_codes[j]));
    }
    ck_assert_str_eq(dq_status_name(DQ_OK), "DQ_OK");
    ck_assert_str_eq(dq_status_name(DQ_ERR_SHAPE), "DQ_ERR_SHAPE");
}
END_TEST

START_TEST(strings_are_distinct)
{
    for (size_t i = 0; i < N_CODES; i++) {
        const char *s = dq_status_string(all_codes[i]);
        ck_assert_ptr_nonnull(s);
        ck_assert_int_gt((int)strlen(s), 3);
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(s, dq_status_string(all_codes[j]));
    }
}
END_TEST

START_TEST(unknown_codes)
{
    ck_assert_str_eq(dq_status_name(-9999), "DQ_ERR_UNKNOWN");
    ck_assert_str_eq(dq_status_name(12345), "DQ_ERR_UNKNOWN");
    ck_assert_str_eq(dq_status_string(-9999), "unknown status code");
}
END_TEST

START_TEST(codes_are_frozen)
{
    /* Values are part of the ABI: bindings hard-code them. */
    ck_assert_int_eq(DQ_OK, 0);
    ck_assert_int_eq(DQ_ERR_INVALID_ARG, -1);
    ck_assert_int_eq(DQ_ERR_NOMEM, -2);
    ck_assert_int_eq(DQ_ERR_SHAPE, -3);
    ck_assert_int_eq(DQ_ERR_BAD_STATE, -4);
    ck_assert_int_eq(DQ_ERR_STRUCT_SIZE, -5);
    ck_assert_int_eq(DQ_ERR_UNSUPPORTED, -6);
    ck_assert_int_eq(DQ_ERR_BLAS, -7);
    ck_assert_int_eq(DQ_ERR_FORMAT, -8);
    ck_assert_int_eq(DQ_ERR_NONFINITE, -9);
    ck_assert_int_eq(DQ_ERR_OVERFLOW, -10);
    ck_assert_int_eq(DQ_ERR_BUFFER, -11);
    ck_assert_int_eq(DQ_ERR_MISMATCH, -12);
    ck_assert_int_eq(DQ_ERR_IO, -13);
}
END_TEST

START_TEST(version_matches_header)
{
    ck_assert_int_eq(dq_version_number(), DQ_VERSION_NUMBER);
    ck_assert_str_eq(dq_version_string(), DQ_VERSION_STRING);
    ck_assert_int_eq(DQ_VERSION_NUMBER,
                     DQ_VERSION_MAJOR * 10000 + DQ_VERSION_MINOR * 100 + DQ_VERSION_PATCH);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, names_are_distinct_and_prefixed);
    tcase_add_test(tc, strings_are_distinct);
    tcase_add_test(tc, unknown_codes);
    tcase_add_test(tc, codes_are_frozen);
    tcase_add_test(tc, version_matches_header);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
