/* Private declarations of rotation refinement (DFRot, DartQuant) and of the LAPACK wrappers
 * it uses. Never installed. */
#ifndef DQ_REFINE_H
#define DQ_REFINE_H

#include "dq_transform.h"

/* Validated refinement options (from dq_refine_params). */
typedef struct dq__refine_opts {
    int32_t method;        /* DQ_REFINE_* */
    int32_t iterations;
    float learning_rate;   /* DartQuant */
    float weight_exponent; /* DFRot */
    int64_t batch_rows;    /* DartQuant, 0 = every row */
    int32_t act_bits;      /* DFRot target quantizer */
    int32_t act_scheme;
    float act_clip_ratio;
    uint64_t seed;
} dq__refine_opts;

/* Reads and validates user params (NULL = defaults). */
dq_status dq__refine_read(const dq_refine_params *user, dq__refine_opts *o);
/* As dq__refine_read, logging a rejected field through ctx for func. */
dq_status dq__refine_read_at(const dq_context *ctx, const char *func,
                             const dq_refine_params *user, dq__refine_opts *o);

/* A new rotation with start's layout, every matrix refined on x (rows x cols, ldx, validated and
 * finite); stream distinguishes the random draws of several calls with one seed. */
dq_status dq__rotation_refine(const dq_context *ctx, const dq__refine_opts *o,
                              const dq_rotation *start, const float *x, int64_t rows,
                              int64_t cols, int64_t ldx, uint64_t stream, dq_rotation **out);

/* ---- LAPACK (dq_lapack.c, the only file that includes lapacke.h) ----
 * Square n x n row-major double matrices; scratch comes from ctx. DQ_ERR_NONFINITE when LAPACK
 * reports a failure (no convergence, singular factor). */

/* r = U V^T for m = U S V^T (the orthogonal polar factor: the Procrustes solution). */
dq_status dq__lapack_polar(const dq_context *ctx, int32_t n, const double *m, double *r);
/* z = q * t with q orthogonal and t upper triangular with a non-negative diagonal. */
dq_status dq__lapack_qr(const dq_context *ctx, int32_t n, const double *z, double *q, double *t);
/* b <- b * t^-T for upper triangular t (b is n x n). */
dq_status dq__lapack_solve_tt(int32_t n, const double *t, double *b);

#endif /* DQ_REFINE_H */
