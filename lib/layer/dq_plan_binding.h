/* Plans bound to the weights they transformed: fingerprints and references. Never installed. */
#ifndef DQ_PLAN_BINDING_H
#define DQ_PLAN_BINDING_H

#include <stdatomic.h>

#include "dq_internal.h"

/* Takes one more reference to pl (NULL: none) and returns it; dq__plan_release drops one
 * (dq_plan_free drops the creator's, once). */
dq_plan *dq__plan_retain(const dq_plan *pl);
void dq__plan_release(const dq_plan *pl);

/* The plan compiled for the fused route (dq_online.h), made on the first call, with the
 * plan's own context, and kept by the plan until its last reference goes: every layer on one
 * plan (the three attention projections, say) shares one. Safe to call from any number of
 * threads. The codes of dq__online_create on failure (nothing kept). */
struct dq__online;
dq_status dq__plan_online(const dq_plan *pl, const struct dq__online **out);

/* Fingerprint of a valid plan (never 0); scratch comes from ctx (NULL = defaults):
 * DQ_ERR_NOMEM when it cannot be allocated. */
dq_status dq__plan_fingerprint(const dq_context *ctx, const dq_plan *pl, uint64_t *out);

/* The check of dq_linear_create: plan (NULL = none) against the fingerprint the weights
 * recorded. DQ_ERR_MISMATCH (logged, naming both fingerprints) when weights recorded one and
 * plan is NULL or differs; a DQ_LOG_WARN line when plan is given and weights recorded none.
 * func names the caller in the log. */
dq_status dq__plan_check_binding(const dq_context *ctx, const char *func, const dq_plan *plan,
                                 uint64_t weights_fp);

#endif
