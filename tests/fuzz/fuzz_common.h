/* Shared pieces of the numeric and differential fuzz targets: a reader of the fuzzer's bytes
 * (zeros once they run out), a seeded generator for bulk values, value fills with the shapes
 * hostile data takes (huge finite, tiny and subnormal, constant rows, ties, NaN and infinity),
 * and the check macro: a violated contract aborts, so libFuzzer reports it as a crash. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: contract violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* A status is one of the set given as a bit mask over -status (DQ_OK is bit 0). */
#define ST(s) (1u << (unsigned)(-(s)))
#define CHECK_STATUS(st, allowed)                                                          \
    do {                                                                                   \
        const int32_t st_ = (st);                                                          \
        if (st_ > 0 || st_ < -31 || !((allowed) & ST(st_))) {                              \
            fprintf(stderr, "%s:%d: undocumented status %d from %s\n", __FILE__, __LINE__, \
                    (int)st_, #st);                                                        \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

typedef struct fz {
    const uint8_t *d;
    size_t n, pos;
    uint64_t rng;
} fz;

static inline uint8_t fz_u8(fz *f)
{
    return f->pos < f->n ? f->d[f->pos++] : 0;
}

static inline uint32_t fz_u16(fz *f)
{
    uint32_t lo = fz_u8(f);
    return lo | (uint32_t)fz_u8(f) << 8;
}

static inline uint32_t fz_u32(fz *f)
{
    uint32_t lo = fz_u16(f);
    return lo | fz_u16(f) << 16;
}

static inline float fz_raw_float(fz *f)
{
    uint32_t b = fz_u32(f);
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* splitmix64 */
static inline uint64_t fz_next(fz *f)
{
    uint64_t z = (f->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double fz_unit(fz *f)
{
    return (double)(fz_next(f) >> 11) * 0x1p-53;
}

/* A dimension 0..max: half the byte values give small interesting sizes (remainders of tiles,
 * blocks, steps and groups), the other half any size up to max. */
static inline int64_t fz_dim(fz *f, int64_t max)
{
    static const int64_t table[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 0};
    const uint8_t b = fz_u8(f);
    int64_t v = b < 128 ? table[b % 16] : (int64_t)(b - 128) * (max + 1) / 128;
    return v > max ? max : v;
}

/* Value styles. */
enum {
    FZ_NORMAL = 0,   /* Laplace-like noise with outlier channels over many decades */
    FZ_TIES = 1,     /* small integers and halves: quantizer ties */
    FZ_HUGE = 2,     /* finite values up to FLT_MAX */
    FZ_TINY = 3,     /* subnormals, FLT_MIN, zeros */
    FZ_CONST = 4,    /* constant rows */
    FZ_SPECIAL = 5,  /* NaN and infinities sprinkled into normal data */
    FZ_STYLES = 6
};

static inline float fz_value(fz *f, int style, int64_t col, float scale)
{
    const double u = fz_unit(f) * 2.0 - 1.0;
    switch (style) {
    case FZ_TIES:
        return (float)((int)(u * 16.0)) * 0.5f;
    case FZ_HUGE: {
        const double m = fz_unit(f);
        if (m < 0.25)
            return (float)(u * FLT_MAX);
        if (m < 0.5)
            return (float)(u * 1e30);
        return (float)(u * scale);
    }
    case FZ_TINY: {
        const double m = fz_unit(f);
        if (m < 0.3)
            return (float)(u * FLT_MIN * 4.0); /* subnormal or near FLT_MIN */
        if (m < 0.5)
            return 0.0f;
        if (m < 0.6)
            return u < 0 ? -FLT_MIN : FLT_MIN;
        return (float)(u * 1e-30);
    }
    default: {
        double v = u * u * u * scale;
        if (col % 17 == 3)
            v *= 50.0; /* outlier channel */
        return (float)v;
    }
    }
}

/* Fills rows x cols (ld) with the style; returns 1 when every written value is finite. A few
 * fuzzer-chosen positions get the fuzzer's own bit patterns (finite ones only unless
 * allow_special). */
static inline int fz_fill(fz *f, float *x, int64_t rows, int64_t cols, int64_t ld, int style,
                          int allow_special)
{
    const uint8_t e = fz_u8(f);
    const float scale = ldexpf(1.0f, (int)(e % 41) - 20);
    if (!allow_special && style == FZ_SPECIAL)
        style = FZ_NORMAL;
    for (int64_t i = 0; i < rows; i++) {
        const float c = fz_value(f, style == FZ_CONST ? FZ_NORMAL : style, i, scale);
        const int64_t zero_row = (e & 0x80) && i % 3 == 1;
        for (int64_t j = 0; j < cols; j++)
            x[i * ld + j] = zero_row ? 0.0f : style == FZ_CONST ? c : fz_value(f, style, j, scale);
    }
    int finite = 1;
    const int64_t n = rows * cols;
    if (n > 0) {
        if (style == FZ_SPECIAL) {
            const int k = 1 + fz_u8(f) % 4;
            for (int t = 0; t < k; t++) {
                const int64_t p = (int64_t)(fz_next(f) % (uint64_t)n);
                const uint8_t which = fz_u8(f) % 3;
                x[(p / cols) * ld + p % cols] =
                    which == 0 ? NAN : which == 1 ? INFINITY : -INFINITY;
            }
        }
        const int patches = fz_u8(f) % 3;
        for (int t = 0; t < patches; t++) {
            const int64_t p = (int64_t)(fz_u16(f) % (uint64_t)n);
            float v = fz_raw_float(f);
            if (!allow_special && !isfinite(v))
                v = 0.0f;
            x[(p / cols) * ld + p % cols] = v;
        }
        for (int64_t i = 0; i < rows && finite; i++)
            for (int64_t j = 0; j < cols; j++)
                if (!isfinite(x[i * ld + j])) {
                    finite = 0;
                    break;
                }
    }
    return finite;
}

static inline void *fz_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    return p;
}

/* A buffer of n floats set to a sentinel bit pattern, and its check. */
#define FZ_SENTINEL 0x7FBADBADu
static inline float *fz_sentinel(int64_t n)
{
    float *p = fz_alloc((size_t)n * sizeof(float));
    const uint32_t b = FZ_SENTINEL;
    for (int64_t i = 0; i < n; i++)
        memcpy(&p[i], &b, sizeof b);
    return p;
}

static inline int fz_untouched(const float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &p[i], sizeof b);
        if (b != FZ_SENTINEL)
            return 0;
    }
    return 1;
}

static inline int fz_all_finite(const float *p, int64_t rows, int64_t cols, int64_t ld)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            if (!isfinite(p[i * ld + j]))
                return 0;
    return 1;
}

#endif
