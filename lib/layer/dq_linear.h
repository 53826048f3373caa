/* Private interface of dq_linear for the file code: layers built from prepared weights (which
 * may borrow a mapped file) and what a writer reads back from a layer. */
#ifndef DQ_LINEAR_H
#define DQ_LINEAR_H

#include "dq_gemm.h"

/* A layer over prepared weights w, which it takes over (freed on failure too). p must already
 * be valid (read through dq__params_read and checked); bias (w->rows floats, finite) is copied,
 * plan borrowed as in dq_linear_create. */
dq_status dq__linear_create_prepared(const dq_context *ctx, const dq_linear_params *p,
                                     const dq_plan *plan, dq__wprep *w, const float *bias,
                                     dq_linear **out);

/* The checks dq_linear_create makes of params, weights and bias (not of a plan), logged for
 * func; *p receives the params as read. */
dq_status dq__linear_check(const dq_context *ctx, const char *func,
                           const dq_linear_params *params, const dq_qmatrix *weights,
                           const float *bias, dq_linear_params *p);

/* The layer's prepared weights, its activation settings and its bias (NULL when none). */
const dq__wprep *dq__linear_weights(const dq_linear *lin);
void dq__linear_act(const dq_linear *lin, int32_t *act_bits, int32_t *act_scheme,
                    float *act_clip, int32_t *act_group);
const float *dq__linear_bias(const dq_linear *lin);
/* The plan the layer holds a reference to (NULL = identity). */
const dq_plan *dq__linear_plan(const dq_linear *lin);

#endif
