/* Private declarations shared by the channel-transform files: calibration, smoothing,
 * rotation, permutation and plan. Never installed. */
#ifndef DQ_TRANSFORM_H
#define DQ_TRANSFORM_H

#include "dq_internal.h"

/* Largest block (and base-matrix) length: the reference's "whole row" block is 4096. */
#define DQ_MAX_BLOCK 4096
/* Largest greedy step count accepted from a caller. */
#define DQ_MAX_STEPS 65536

/* Channel blocks: block b covers [b * bs, min((b + 1) * bs, cols)). */
static inline int64_t dq__n_blocks(int64_t cols, int32_t bs)
{
    return cols / bs + (cols % bs != 0);
}
static inline int32_t dq__block_len(int64_t cols, int32_t bs, int64_t b)
{
    int64_t left = cols - b * bs;
    return (int32_t)(left < bs ? left : bs);
}

/* Hadamard blocks exist only for power-of-two lengths: full blocks and a shorter last one. */
static inline bool dq__hadamard_fits(int64_t cols, int32_t bs)
{
    int64_t rem = cols % bs;
    return (cols < bs || (bs & (bs - 1)) == 0) && (rem == 0 || (rem & (rem - 1)) == 0);
}

/* Block-diagonal rotation. Block b is multiplied by matrix mat_of_block[b]. A matrix found by
 * the greedy search keeps its record: steps + 1 ids, swapped channels and peaks. */
struct dq_rotation {
    dq_context ctx;
    int64_t cols;
    int32_t block_size;
    int32_t method;
    bool per_block;        /* one matrix per block, else shared by the full blocks */
    int64_t n_blocks;
    int64_t n_mats;
    int64_t *mat_of_block; /* n_blocks */
    int32_t *mat_size;     /* n_mats */
    size_t *mat_offset;    /* n_mats, float offsets into data */
    float *data;
    int32_t steps;         /* greedy steps per search (record length - 1) */
    int32_t *selected;     /* n_mats; -1 = matrix not found by a search */
    int64_t *ids;          /* n_mats * (steps + 1), NULL without a search */
    int32_t *swapped;      /* likewise */
    float *peaks;          /* likewise */
};

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
/* A deep copy allocated with ctx. */
dq_status dq__rotation_clone(const dq_context *ctx, const dq_rotation *src, dq_rotation **out);
/* out = in * blockdiag(R) for rows rows through the reproducible product, on ctx's threads
 * (plan building); in and out must not overlap. */
dq_status dq__rotation_rows_exact(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                                  int64_t ldo, int64_t rows, const dq_context *ctx);
/* The same through BLAS (applying plans). */
dq_status dq__rotation_rows(const dq_rotation *r, const float *in, int64_t ldi, float *out,
                            int64_t ldo, int64_t rows);

/* Reproducible c (m x n, ldc) = a (m x k, lda) * b (k x n, ldb): the same bits for any CPU
 * variant, row blocking or thread split (dq_blockmul.c). */
void dq__block_product(const float *a, int64_t lda, int64_t m, int32_t k, const float *b,
                       int64_t ldb, int32_t n, float *c, int64_t ldc);
/* The portable loops alone (the oracle of the CPU variants). */
void dq__block_product_portable(const float *a, int64_t lda, int64_t m, int32_t k,
                                const float *b, int64_t ldb, int32_t n, float *c, int64_t ldc);

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
