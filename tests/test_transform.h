/* Utilities shared by the channel-transform test suites: naive (no BLAS) oracles built from a
 * plan's exported parts, orthogonality measures, and small utilities. */
#ifndef TEST_TRANSFORM_H
#define TEST_TRANSFORM_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dq_test.h"
#include "duquant.h"

/* max |M M^T - I| of an n x n matrix (ld), in double. */
static inline double test_orth_error(const float *m, int64_t n, int64_t ld)
{
    double worst = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t k = 0; k < n; k++)
                s += (double)m[i * ld + k] * (double)m[j * ld + k];
            worst = fmax(worst, fabs(s - (i == j ? 1.0 : 0.0)));
        }
    return worst;
}

/* Worst orthogonality error over every matrix of a rotation. */
static inline double test_rotation_orth_error(const dq_rotation *r)
{
    int64_t n_mats = 0;
    double worst = 0;
    dq_rotation_layout(r, NULL, NULL, NULL, &n_mats);
    for (int64_t m = 0; m < n_mats; m++) {
        int32_t n = 0;
        dq_rotation_matrix(r, m, NULL, 0, &n);
        float *a = malloc((size_t)n * (size_t)n * sizeof *a);
        dq_rotation_matrix(r, m, a, n, NULL);
        worst = fmax(worst, test_orth_error(a, n, n));
        free(a);
    }
    return worst;
}

/* x (rows x cols, ld) <- x * blockdiag(R) with naive double accumulation. */
static inline void test_rotation_naive(const dq_rotation *r, float *x, int64_t rows,
                                       int64_t cols, int64_t ld)
{
    int64_t n_blocks = 0;
    int32_t bs = 0;
    dq_rotation_layout(r, NULL, &bs, &n_blocks, NULL);
    double *acc = malloc((size_t)cols * sizeof *acc);
    for (int64_t b = 0; b < n_blocks; b++) {
        int32_t n = 0;
        int64_t m = 0;
        dq_rotation_block(r, b, &n, &m);
        float *a = malloc((size_t)n * (size_t)n * sizeof *a);
        dq_rotation_matrix(r, m, a, n, NULL);
        for (int64_t i = 0; i < rows; i++) {
            float *row = x + i * ld + b * bs;
            for (int32_t j = 0; j < n; j++) {
                acc[j] = 0;
                for (int32_t k = 0; k < n; k++)
                    acc[j] += (double)row[k] * (double)a[(size_t)k * (size_t)n + (size_t)j];
            }
            for (int32_t j = 0; j < n; j++)
                row[j] = (float)acc[j];
        }
        free(a);
    }
    free(acc);
}

/* x <- x * G (weight = 0) or W <- W * G^-T (weight = 1), from the plan's exported parts. */
static inline void test_plan_naive(const dq_plan *pl, float *x, int64_t rows, int64_t cols,
                                   int64_t ld, int weight)
{
    int32_t has_smooth = 0, n_rot = 0;
    dq_plan_layout(pl, &has_smooth, &n_rot);
    float *s = malloc((size_t)cols * sizeof *s);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    float *row = malloc((size_t)cols * sizeof *row);
    dq_plan_smooth_scales(pl, s, cols);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            x[i * ld + j] = weight ? x[i * ld + j] * s[j] : x[i * ld + j] / s[j];
    for (int32_t k = 0; k < n_rot; k++) {
        const dq_rotation *r = NULL;
        dq_plan_rotation(pl, k, &r);
        if (r)
            test_rotation_naive(r, x, rows, cols, ld);
        if (k + 1 < n_rot) {
            dq_plan_permutation(pl, k, perm, cols);
            for (int64_t i = 0; i < rows; i++) {
                for (int64_t j = 0; j < cols; j++)
                    row[j] = x[i * ld + perm[j]];
                memcpy(x + i * ld, row, (size_t)cols * sizeof *row);
            }
        }
    }
    free(s);
    free(perm);
    free(row);
}

/* 64-bit FNV-1a, to compare plans bit for bit across processes. */
static inline uint64_t test_fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

/* Digest of everything a plan exports. */
static inline uint64_t test_plan_digest(const dq_plan *pl)
{
    uint64_t h = 0xCBF29CE484222325ull;
    int64_t cols = 0;
    int32_t has_smooth = 0, n_rot = 0;
    dq_plan_width(pl, &cols);
    dq_plan_layout(pl, &has_smooth, &n_rot);
    float *s = malloc((size_t)cols * sizeof *s);
    int64_t *perm = malloc((size_t)cols * sizeof *perm);
    dq_plan_smooth_scales(pl, s, cols);
    h = test_fnv1a(h, s, (size_t)cols * sizeof *s);
    for (int32_t k = 0; k < n_rot; k++) {
        const dq_rotation *r = NULL;
        dq_plan_rotation(pl, k, &r);
        int64_t n_mats = 0;
        if (r)
            dq_rotation_layout(r, NULL, NULL, NULL, &n_mats);
        for (int64_t m = 0; m < n_mats; m++) {
            int32_t n = 0;
            dq_rotation_matrix(r, m, NULL, 0, &n);
            float *a = malloc((size_t)n * (size_t)n * sizeof *a);
            dq_rotation_matrix(r, m, a, n, NULL);
            h = test_fnv1a(h, a, (size_t)n * (size_t)n * sizeof *a);
            free(a);
        }
        if (k + 1 < n_rot) {
            dq_plan_permutation(pl, k, perm, cols);
            h = test_fnv1a(h, perm, (size_t)cols * sizeof *perm);
        }
    }
    free(s);
    free(perm);
    return h;
}

/* A rows x cols matrix with leading dimension ld filled with activations (see dq_test.h). */
static inline float *test_new_activations(test_rng *r, int64_t rows, int64_t cols, int64_t ld,
                                          int outliers)
{
    float *x = malloc((size_t)(rows * ld) * sizeof *x);
    for (int64_t i = 0; i < rows * ld; i++)
        x[i] = NAN; /* padding must never be read or written */
    test_fill_activations(r, x, rows, cols, ld, outliers);
    return x;
}

/* Gaussian weights (out x cols, ld) with a few large input channels. */
static inline float *test_new_weights(test_rng *r, int64_t out, int64_t cols, int64_t ld)
{
    float *w = malloc((size_t)(out * ld) * sizeof *w);
    for (int64_t i = 0; i < out * ld; i++)
        w[i] = NAN;
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < cols; j++)
            w[i * ld + j] = (float)(0.02 * test_rng_normal(r)) * (j % 29 == 5 ? 8.0f : 1.0f);
    return w;
}

#endif
