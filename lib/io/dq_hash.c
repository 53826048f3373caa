/* The 64-bit checksum of dq_hash.h. */
#include "dq_hash.h"

#include <string.h>

#define M 0x9c2b9d9f2ae75e2fULL  /* word multiplier */
#define A 0x82ff349d4f876aa3ULL  /* lane multiplier */
#define B 0xe06c85afbaec4ef7ULL  /* merge multiplier */
#define F0 0xe7158a8021f64545ULL /* finalizer */
#define F1 0xbc95ad20819ed6b7ULL

static const uint64_t lane_start[4] = {
    0xbc7ba9e38be9794dULL, 0xcd317c68022dd18dULL, 0x8eca73657965c0ffULL, 0x5a1f3c2b9d0e4871ULL};

static inline uint64_t rotl(uint64_t x, int r)
{
    return x << r | x >> (64 - r);
}

static inline uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

static inline uint64_t fin(uint64_t x)
{
    x ^= x >> 31;
    x *= F0;
    x ^= x >> 29;
    x *= F1;
    x ^= x >> 32;
    return x;
}

static inline void stripe(uint64_t *v, const uint8_t *p)
{
    v[0] = rotl(v[0] ^ le64(p) * M, 29) * A;
    v[1] = rotl(v[1] ^ le64(p + 8) * M, 29) * A;
    v[2] = rotl(v[2] ^ le64(p + 16) * M, 29) * A;
    v[3] = rotl(v[3] ^ le64(p + 24) * M, 29) * A;
}

void dq__hash_init(dq__hash *h, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->seed = seed;
    for (int i = 0; i < 4; i++)
        h->lane[i] = seed + lane_start[i];
}

void dq__hash_update(dq__hash *h, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (len == 0)
        return;
    h->total += len;
    if (h->nbuf) {
        size_t take = 32 - h->nbuf < len ? 32 - h->nbuf : len;
        memcpy(h->buf + h->nbuf, p, take);
        h->nbuf += take;
        p += take;
        len -= take;
        if (h->nbuf < 32)
            return;
        stripe(h->lane, h->buf);
        h->nbuf = 0;
    }
    for (; len >= 32; p += 32, len -= 32)
        stripe(h->lane, p);
    if (len) {
        memcpy(h->buf, p, len);
        h->nbuf = len;
    }
}

void dq__hash_u64(dq__hash *h, uint64_t v)
{
    uint8_t b[8];
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)(v >> (8 * k));
    dq__hash_update(h, b, 8);
}

void dq__hash_str(dq__hash *h, const char *s)
{
    dq__hash_update(h, s, strlen(s) + 1);
}

uint64_t dq__hash_final(const dq__hash *h)
{
    uint64_t x = h->seed ^ h->total * B;
    for (int i = 0; i < 4; i++)
        x = rotl(x ^ fin(h->lane[i]), 27) * B;
    const uint8_t *p = h->buf;
    size_t n = h->nbuf;
    for (; n >= 8; p += 8, n -= 8)
        x = rotl(x ^ le64(p) * M, 31) * A;
    if (n) {
        uint8_t last[8] = {0};
        memcpy(last, p, n);
        x = rotl(x ^ le64(last) * M, 23) * B;
    }
    return fin(x);
}

uint64_t dq__hash64(uint64_t seed, const void *data, size_t len)
{
    dq__hash h;
    dq__hash_init(&h, seed);
    dq__hash_update(&h, data, len);
    return dq__hash_final(&h);
}
