/* Private declarations of the plan object (the run-time side, dq_plan.c), through which the
 * offline builder (lib/offline/dq_plan_build.c) fills a new plan. Never installed. */
#ifndef DQ_PLAN_H
#define DQ_PLAN_H

#include "dq_rotation.h"

/* Most permutations (rotation slots - 1) a plan holds. */
#define DQ_MAX_PERMUTATION_TIMES 64

/* A new plan of cols channels with n_rot rotation slots and n_rot - 1 permutation slots, all
 * NULL (identity), and room for cols smoothing factors when smooth. */
dq_status dq__plan_alloc(const dq_context *ctx, int64_t cols, int32_t n_rot, bool smooth,
                         dq_plan **out);
/* The slots of a plan being filled: cols factors (NULL without smoothing), n_rot rotations and
 * n_rot - 1 permutations (NULL when n_rot < 2). What is stored there belongs to the plan. */
float *dq__plan_smooth(dq_plan *pl);
dq_rotation **dq__plan_rotations(dq_plan *pl);
int64_t **dq__plan_permutations(dq_plan *pl);

/* y[:, j] = x[:, perm[j]] for rows rows; x and y must not overlap. */
void dq__gather_cols(const int64_t *perm, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t rows, int64_t cols);

#endif /* DQ_PLAN_H */
