/* A fast 64-bit checksum for the integrity of stored tensors and headers (doc/formats.md,
 * "Checksums"). Not a cryptographic hash: it detects accidental changes (bit flips, truncated
 * or edited files), not deliberate forgeries.
 *
 * Definition (all arithmetic modulo 2^64, words read little-endian on any host):
 *  - four lanes start at seed + L0..L3;
 *  - each full 32-byte stripe feeds its words w0..w3 to the lanes: v_i = rotl(v_i ^ w_i * M, 29) * A;
 *  - at the end h = seed ^ (length * B), then for each lane h = rotl(h ^ fin(v_i), 27) * B;
 *    each remaining full 8-byte word w: h = rotl(h ^ w * M, 31) * A; the last 1..7 bytes, as a
 *    little-endian word padded with zeros: h = rotl(h ^ w * M, 23) * B;
 *  - the checksum is fin(h), fin(x) = x ^= x >> 31; x *= F0; x ^= x >> 29; x *= F1; x ^= x >> 32.
 * Every step is invertible in the word it takes, so two inputs of the same length that differ
 * in only one 8-byte word (a single bit flip, any change of up to 8 aligned bytes) always have
 * different checksums. */
#ifndef DQ_HASH_H
#define DQ_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct dq__hash {
    uint64_t lane[4];
    uint64_t seed;
    uint64_t total;   /* bytes fed so far */
    uint8_t buf[32];  /* a partial stripe */
    size_t nbuf;
} dq__hash;

void dq__hash_init(dq__hash *h, uint64_t seed);
void dq__hash_update(dq__hash *h, const void *data, size_t len);
/* Feeds v as 8 little-endian bytes. */
void dq__hash_u64(dq__hash *h, uint64_t v);
/* Feeds the string s and its terminating NUL. */
void dq__hash_str(dq__hash *h, const char *s);
/* The checksum of everything fed so far; h is left as it was (more may be fed). */
uint64_t dq__hash_final(const dq__hash *h);
/* One call: the checksum of len bytes at data. */
uint64_t dq__hash64(uint64_t seed, const void *data, size_t len);

#endif /* DQ_HASH_H */
