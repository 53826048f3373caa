/* Private declarations of the offline side (lib/offline): calibration, smoothing, rotation
 * search, permutation and plan building. The run-time objects they build are declared in
 * lib/layer/dq_rotation.h and dq_plan.h. Never installed. */
#ifndef DQ_TRANSFORM_H
#define DQ_TRANSFORM_H

#include "dq_internal.h"
#include "dq_rotation.h"

/* Largest greedy step count accepted from a caller. */
#define DQ_MAX_STEPS 65536

/* Hadamard blocks exist only for power-of-two lengths: full blocks and a shorter last one. */
static inline bool dq__hadamard_fits(int64_t cols, int32_t bs)
{
    int64_t rem = cols % bs;
    return (cols < bs || (bs & (bs - 1)) == 0) && (rem == 0 || (rem & (rem - 1)) == 0);
}

/* Validated options for building a rotation (from dq_rotation_params or dq_plan_params). */
typedef struct dq__rot_opts {
    int32_t method;
    int32_t block_size;
    int32_t max_steps;
    bool row_rule;
    bool per_block;
    bool random_qprime;
    bool hadamard_base; /* H_n instead of Rot_n as the greedy base */
    uint64_t seed;
    const float *qprime; /* (block_size - 1)^2 or NULL */
    bool plain_search;   /* the unpruned search (the oracle of tests and benchmarks) */
} dq__rot_opts;

/* Builds a rotation for cols channels; x (rows x cols, ldx, already validated and finite) is
 * the sample for GREEDY and unused otherwise. */
dq_status dq__rotation_build(const dq_context *ctx, const dq__rot_opts *o, const float *x,
                             int64_t rows, int64_t cols, int64_t ldx, dq_rotation **out);

/* Seeded Haar-random orthogonal n x n matrix into out (ldo). */
dq_status dq__random_orthogonal(const dq_context *ctx, int32_t n, uint64_t seed, float *out,
                                int64_t ldo);
/* How dq__random_orthogonal_with orthogonalises; every path gives the same bits. */
enum {
    DQ__ORTH_GROUPS,          /* columns in groups, the CPU's best variant */
    DQ__ORTH_ONE_COLUMN,      /* one column at a time (the oracle of benchmarks) */
    DQ__ORTH_GROUPS_PORTABLE, /* columns in groups, the portable variant (tests) */
    DQ__ORTH_GROUPS_AVX2,     /* columns in groups, the AVX2 variant where the CPU has AVX2 */
};
/* The same with the redraw threshold explicit (>= 0): a column whose remainder after
 * projecting out the earlier columns has norm <= min_norm is drawn again, at most 16 draws in
 * all (1e-6 in dq__random_orthogonal; tests raise it to reach redraws); path: a DQ__ORTH_*. */
dq_status dq__random_orthogonal_with(const dq_context *ctx, int32_t n, uint64_t seed,
                                     double min_norm, int32_t path, float *out, int64_t ldo);
/* n standard normal values by Box-Muller from the stream *state (splitmix64). */
void dq__gaussian_fill(uint64_t *state, double *v, int64_t n);

/* The randomised Hadamard construction for width n (dq_rotation_hadamard_kind) and the matrix
 * itself into out (n x n, ldo); *kind (may be NULL) receives the construction used. */
void dq__hadamard_plan(int64_t n, int32_t *kind, int64_t *m);
dq_status dq__random_hadamard(const dq_context *ctx, int64_t n, uint64_t seed, float *out,
                              int64_t ldo, int32_t *kind);

/* Mixes a seed with a stream number so that each random draw has its own stream. */
uint64_t dq__seed_mix(uint64_t seed, uint64_t stream);

/* Per-column max |x| over rows, folded into absmax (which the caller initialises). */
void dq__col_absmax(const float *x, int64_t rows, int64_t cols, int64_t ld, float *absmax);

/* Smoothing factors and zigzag permutation on validated arguments (see duquant.h). */
void dq__smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n, float alpha,
                        float *scale);
dq_status dq__zigzag(const dq_context *ctx, const float *key, int64_t n, int32_t block_size,
                     int64_t *perm);

/* Calibrator access for plan building: the sample materialised into a new buffer allocated
 * with ctx (rows x cols, contiguous), or DQ_ERR_BAD_STATE when none is available. */
dq_status dq__calib_take_sample(const dq_calib *c, const dq_context *ctx, float **sample,
                                int64_t *rows);
int64_t dq__calib_cols(const dq_calib *c);
int64_t dq__calib_token_count(const dq_calib *c);
const float *dq__calib_absmax_ptr(const dq_calib *c);

#endif /* DQ_TRANSFORM_H */
