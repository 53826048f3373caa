/* The library's one random generator: splitmix64 (tiny, portable, and the same on every
 * platform), so that a seed gives the same rotations, refinements and LWC batches anywhere. */
#ifndef DQ_RANDOM_H
#define DQ_RANDOM_H

#include <stdint.h>

/* Next 64 random bits of the stream whose state is *state. */
static inline uint64_t dq__splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The starting state of stream number stream of seed (streams of one seed are far apart). */
static inline uint64_t dq__random_stream(uint64_t seed, uint64_t stream)
{
    return seed ^ (stream * 0xD1B54A32D192ED03ull);
}

#endif /* DQ_RANDOM_H */
