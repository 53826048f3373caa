/* Randomised Hadamard rotations of any width (QuaRot style): diag(random signs) * H_n / sqrt(n)
 * with H_n = H_{2^k} (Sylvester) (x) H_m, H_m from Paley's first or second construction, and a
 * seeded random orthogonal matrix for widths no construction here reaches. */
#include <math.h>
#include <string.h>

#include "dq_handle.h"
#include "dq_random.h"
#include "dq_transform.h"

/* Largest width of the pure function: Hadamard constructions need only O(n) scratch, but a
 * caller buffer of n^2 floats beyond this is no longer a practical rotation. */
#define DQ_MAX_HADAMARD_WIDTH 65536

static bool is_prime(int64_t q)
{
    if (q < 2)
        return false;
    for (int64_t d = 2; d * d <= q; d++)
        if (q % d == 0)
            return false;
    return true;
}

/* The construction for width n (n >= 1): *kind and the order m of the Paley factor (1 for
 * Sylvester, n for the random fallback). The smallest Paley order that works is taken. */
void dq__hadamard_plan(int64_t n, int32_t *kind, int64_t *m)
{
    int64_t odd = n;
    while (odd % 2 == 0)
        odd /= 2;
    if (odd == 1) {
        *kind = DQ_HADAMARD_SYLVESTER;
        *m = 1;
        return;
    }
    for (int64_t o = odd; o <= n; o *= 2) {
        if (o % 4 == 0 && is_prime(o - 1) && (o - 1) % 4 == 3) {
            *kind = DQ_HADAMARD_PALEY1;
            *m = o;
            return;
        }
        if (o % 4 == 0 && is_prime(o / 2 - 1) && (o / 2 - 1) % 4 == 1) {
            *kind = DQ_HADAMARD_PALEY2;
            *m = o;
            return;
        }
    }
    *kind = DQ_HADAMARD_RANDOM_ORTHOGONAL;
    *m = n;
}

/* Quadratic character of a mod the prime q: 0, 1 or -1 (residues listed in res). */
static int chi(const int8_t *res, int64_t q, int64_t a)
{
    a %= q;
    if (a < 0)
        a += q;
    return a == 0 ? 0 : (res[a] ? 1 : -1);
}

/* Paley's conference-type core C of order q + 1 (entry (i, j) of the bordered Jacobsthal
 * matrix); skew for q = 3 mod 4, symmetric for q = 1 mod 4. */
static int paley_core(const int8_t *res, int64_t q, int64_t i, int64_t j)
{
    if (i == 0 && j == 0)
        return 0;
    if (i == 0)
        return 1;
    if (j == 0)
        return q % 4 == 3 ? -1 : 1;
    return chi(res, q, j - i);
}

/* Entry (i, j) of the +-1 Paley matrix of order m. Type I: I + C. Type II: C (x) [1 -1; -1 -1]
 * + I (x) [1 1; 1 -1]. */
static int paley_entry(int32_t kind, const int8_t *res, int64_t q, int64_t i, int64_t j)
{
    if (kind == DQ_HADAMARD_PALEY1)
        return (i == j) + paley_core(res, q, i, j);
    int64_t a = i / 2, b = j / 2, r = i % 2, s = j % 2;
    int c = paley_core(res, q, a, b) * ((r == 0 && s == 0) ? 1 : -1);
    int d = a == b ? ((r == 1 && s == 1) ? -1 : 1) : 0;
    return c + d;
}

dq_status dq__random_hadamard(const dq_context *ctx, int64_t n, uint64_t seed, float *out,
                              int64_t ldo, int32_t *kind_out)
{
    int32_t kind;
    int64_t m;
    dq__hadamard_plan(n, &kind, &m);
    if (kind_out)
        *kind_out = kind;
    uint64_t state = dq__seed_mix(seed, 0x5167u);
    if (kind == DQ_HADAMARD_RANDOM_ORTHOGONAL) {
        if (n > DQ_MAX_BLOCK)
            return DQ_FAIL(ctx, DQ_ERR_UNSUPPORTED,
                           "width %lld has no Hadamard construction here and is above %d for "
                           "the random orthogonal fallback", (long long)n, DQ_MAX_BLOCK);
        dq_status st = dq__random_orthogonal(ctx, (int32_t)n, dq__seed_mix(seed, 1), out, ldo);
        if (st != DQ_OK)
            return st;
    } else {
        int64_t q = kind == DQ_HADAMARD_PALEY1 ? m - 1 : m / 2 - 1;
        int8_t *res = NULL;
        if (kind != DQ_HADAMARD_SYLVESTER) {
            if (!(res = dq__calloc(ctx, (size_t)q, 1)))
                return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%lld bytes of quadratic residues",
                               (long long)q);
            for (int64_t x = 1; x < q; x++)
                res[(x * x) % q] = 1;
        }
        const float h = (float)(1.0 / sqrt((double)n));
        for (int64_t i = 0; i < n; i++) {
            float *row = out + (size_t)i * (size_t)ldo;
            for (int64_t j = 0; j < n; j++) {
                /* H_{2^k} (x) H_m: index = outer * m + inner. */
                int64_t oi = i / m, oj = j / m;
                int sign = (__builtin_popcountll((unsigned long long)(oi & oj)) & 1) ? -1 : 1;
                if (res)
                    sign *= paley_entry(kind, res, q, i % m, j % m);
                row[j] = sign > 0 ? h : -h;
            }
        }
        dq__free(ctx, res);
    }
    /* Random signs on the left: rows flipped, so x * R flips input channels first. */
    for (int64_t i = 0; i < n; i++) {
        if (dq__splitmix64(&state) >> 63) {
            float *row = out + (size_t)i * (size_t)ldo;
            for (int64_t j = 0; j < n; j++)
                row[j] = -row[j];
        }
    }
    return DQ_OK;
}

DQ_API dq_status dq_rotation_hadamard_kind(int64_t n, int32_t *kind, int64_t *order)
{
    if (!kind && !order)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "kind and order are both NULL");
    if (n < 1 || n > DQ_MAX_HADAMARD_WIDTH)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "width %lld outside [1, %d]", (long long)n,
                       DQ_MAX_HADAMARD_WIDTH);
    int32_t k;
    int64_t m;
    dq__hadamard_plan(n, &k, &m);
    if (kind)
        *kind = k;
    if (order)
        *order = m;
    return DQ_OK;
}

DQ_API dq_status dq_rotation_random_hadamard(int32_t n, uint64_t seed, float *out, int64_t ldo,
                                             int32_t *kind)
{
    if (!out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    if (n < 1 || n > DQ_MAX_HADAMARD_WIDTH || ldo < n)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "width %d outside [1, %d] or ldo %lld < width",
                       (int)n, DQ_MAX_HADAMARD_WIDTH, (long long)ldo);
    return dq__random_hadamard(NULL, n, seed, out, ldo, kind);
}
