/* Extensible params structs: older (smaller) and newer (larger) callers, garbage sizes. */
#include <check.h>
#include <stddef.h>
#include <string.h>

#include "duquant.h"
#include "dq_check_run.h"

/* A caller compiled against a future header whose struct has one more member. */
typedef struct {
    dq_quant_params known;
    uint32_t future_member;
} future_quant_params;

START_TEST(init_rejects_null_and_bad_sizes)
{
    dq_quant_params p;
    ck_assert_int_eq(dq_quant_params_init(NULL, sizeof p), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_quant_params_init(&p, 4), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_quant_params_init(&p, 0), DQ_ERR_STRUCT_SIZE);
    ck_assert_int_eq(dq_quant_params_init(&p, DQ_PARAMS_MAX_SIZE + 1), DQ_ERR_STRUCT_SIZE);
    dq_context_params c;
    ck_assert_int_eq(dq_context_params_init(NULL, sizeof c), DQ_ERR_INVALID_ARG);
    ck_assert_int_eq(dq_context_params_init(&c, 3), DQ_ERR_STRUCT_SIZE);
}
END_TEST

START_TEST(init_writes_defaults)
{
    dq_quant_params p;
    memset(&p, 0xAB, sizeof p);
    ck_assert_int_eq(dq_quant_params_init(&p, sizeof p), DQ_OK);
    ck_assert_uint_eq(p.struct_size, sizeof p);
    ck_assert_uint_eq(p.flags, 0);
    ck_assert_int_eq(p.bits, 4);
    ck_assert_int_eq(p.scheme, DQ_QUANT_ASYM);
    ck_assert_int_eq(p.group_size, 0);
    ck_assert_float_eq(p.clip_ratio, 1.0f);
}
END_TEST

START_TEST(init_never_writes_past_struct_size)
{
    unsigned char buf[sizeof(future_quant_params) + 16];
    memset(buf, 0xCD, sizeof buf);
    size_t size = offsetof(dq_quant_params, clip_ratio) + sizeof(float);
    ck_assert_int_eq(dq_quant_params_init((dq_quant_params *)(void *)buf, size), DQ_OK);
    for (size_t i = size; i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], 0xCD);
}
END_TEST

START_TEST(larger_struct_with_zero_tail_is_accepted)
{
    future_quant_params fp;
    memset(&fp, 0, sizeof fp);
    ck_assert_int_eq(dq_quant_params_init(&fp.known, sizeof fp), DQ_OK);
    ck_assert_uint_eq(fp.known.struct_size, sizeof fp);
    ck_assert_uint_eq(fp.future_member, 0);
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &fp.known, w, 1, 4, 4, NULL, NULL, &q), DQ_OK);
    dq_qmatrix_free(q);
}
END_TEST

START_TEST(larger_struct_with_unknown_member_set_is_refused)
{
    future_quant_params fp;
    memset(&fp, 0, sizeof fp);
    dq_quant_params_init(&fp.known, sizeof fp);
    fp.future_member = 1;
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    dq_qmatrix *q = (dq_qmatrix *)1;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &fp.known, w, 1, 4, 4, NULL, NULL, &q),
                     DQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(q);
}
END_TEST

START_TEST(garbage_struct_size_is_refused_at_use)
{
    dq_quant_params p;
    dq_quant_params_init(&p, sizeof p);
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    dq_qmatrix *q = (dq_qmatrix *)1;
    p.struct_size = 2;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 1, 4, 4, NULL, NULL, &q), DQ_ERR_STRUCT_SIZE);
    ck_assert_ptr_null(q);
    p.struct_size = 1u << 20;
    ck_assert_int_eq(dq_qmatrix_pack(NULL, &p, w, 1, 4, 4, NULL, NULL, &q), DQ_ERR_STRUCT_SIZE);
    dq_context_params c;
    dq_context_params_init(&c, sizeof c);
    c.struct_size = 1;
    dq_context *ctx = (dq_context *)1;
    ck_assert_int_eq(dq_context_create(&c, &ctx), DQ_ERR_STRUCT_SIZE);
    ck_assert_ptr_null(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("params");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, init_rejects_null_and_bad_sizes);
    tcase_add_test(tc, init_writes_defaults);
    tcase_add_test(tc, init_never_writes_past_struct_size);
    tcase_add_test(tc, larger_struct_with_zero_tail_is_accepted);
    tcase_add_test(tc, larger_struct_with_unknown_member_set_is_refused);
    tcase_add_test(tc, garbage_struct_size_is_refused_at_use);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
