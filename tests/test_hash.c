/* The file checksum's hash (lib/io/dq_hash.h, doc/formats.md "Checksums"): values pinned
 * (the same as tests/file_numpy.py's implementation from the documented definition gives),
 * input fed in any pieces hashes as in one call, and every single-bit change of an input
 * changes its hash. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "dq_hash.h"
#include "dq_check_run.h"

START_TEST(pinned_values)
{
    uint8_t b[100];
    for (int i = 0; i < 100; i++)
        b[i] = (uint8_t)i;
    ck_assert_uint_eq(dq__hash64(0, NULL, 0), 0x81a79b823422e3e5u);
    ck_assert_uint_eq(dq__hash64(0x4451544e53523031u, "abc", 3), 0x225bc1e021d35d06u);
    ck_assert_uint_eq(dq__hash64(1, b, 100), 0xc253c4a289921c8fu);
}
END_TEST

START_TEST(pieces_equal_one_call)
{
    uint8_t b[257];
    uint64_t s = 77;
    for (size_t i = 0; i < sizeof b; i++) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        b[i] = (uint8_t)(s >> 56);
    }
    for (size_t len = 0; len <= sizeof b; len++) {
        const uint64_t want = dq__hash64(9, b, len);
        for (size_t step = 1; step <= 40; step += 3) {
            dq__hash h;
            dq__hash_init(&h, 9);
            for (size_t o = 0; o < len; o += step)
                dq__hash_update(&h, b + o, len - o < step ? len - o : step);
            ck_assert_uint_eq(dq__hash_final(&h), want);
        }
    }
    dq__hash h;
    dq__hash_init(&h, 3);
    dq__hash_u64(&h, 0x0807060504030201u);
    dq__hash_str(&h, "ab");
    const uint8_t same[11] = {1, 2, 3, 4, 5, 6, 7, 8, 'a', 'b', 0};
    ck_assert_uint_eq(dq__hash_final(&h), dq__hash64(3, same, sizeof same));
}
END_TEST

START_TEST(every_bit_flip_changes_the_hash)
{
    uint8_t b[131];
    for (size_t i = 0; i < sizeof b; i++)
        b[i] = (uint8_t)(i * 37 + 11);
    for (size_t len = 1; len <= sizeof b; len += 13) {
        const uint64_t want = dq__hash64(5, b, len);
        ck_assert_uint_ne(dq__hash64(6, b, len), want); /* the seed counts */
        ck_assert_uint_ne(dq__hash64(5, b, len - 1), want);
        for (size_t bit = 0; bit < len * 8; bit++) {
            b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            ck_assert_uint_ne(dq__hash64(5, b, len), want);
            b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hash");
    TCase *tc = tcase_create("hash");
    tcase_add_test(tc, pinned_values);
    tcase_add_test(tc, pieces_equal_one_call);
    tcase_add_test(tc, every_bit_flip_changes_the_hash);
    suite_add_tcase(s, tc);
    return dq_check_run(s, 0);
}
