/* The offline functions in a library built with -Dcalibration=disabled (the inference-only
 * build, which needs neither BLAS nor LAPACK): calibration, smoothing factors, base matrices,
 * rotation search and refinement, permutations, plan building and LWC. Each logs one line
 * through DQ_FAIL and returns DQ_ERR_UNSUPPORTED; creators set *out to NULL first and the free
 * functions accept what the creators return (NULL). The exported symbols are the same as in
 * the full build. Compiled instead of every other file of lib/offline/. */
#include "dq_internal.h"

#define NO_CALIBRATION(ctx) \
    DQ_FAIL((ctx), DQ_ERR_UNSUPPORTED, "built without calibration (-Dcalibration=disabled)")

/* ---- dq_calib ---- */

DQ_API dq_status dq_calib_params_init(dq_calib_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_create(dq_context *ctx, const dq_calib_params *params, int64_t cols,
                                 dq_calib **out)
{
    if (out)
        *out = NULL;
    (void)params, (void)cols;
    return NO_CALIBRATION(ctx);
}

DQ_API void dq_calib_free(dq_calib *cal)
{
    (void)cal;
}

DQ_API dq_status dq_calib_observe(dq_calib *cal, const float *x, int64_t rows, int64_t cols,
                                  int64_t ldx)
{
    (void)cal, (void)x, (void)rows, (void)cols, (void)ldx;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_merge(dq_calib *dst, const dq_calib *src)
{
    (void)dst, (void)src;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_tokens(const dq_calib *cal, int64_t *tokens)
{
    (void)cal, (void)tokens;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_absmax(const dq_calib *cal, float *out, int64_t n)
{
    (void)cal, (void)out, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_minmax(const dq_calib *cal, float *min, float *max, int64_t n)
{
    (void)cal, (void)min, (void)max, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_calib_sample(const dq_calib *cal, float *out, int64_t ldo, int64_t *rows)
{
    (void)cal, (void)out, (void)ldo, (void)rows;
    return NO_CALIBRATION(NULL);
}

/* ---- dq_lwc ---- */

DQ_API dq_status dq_lwc_params_init(dq_lwc_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API void dq_lwc_free(dq_lwc *l)
{
    (void)l;
}

DQ_API dq_status dq_lwc_create(dq_context *ctx, const dq_lwc_params *params,
                               const dq_quant_params *wq, const float *w, int64_t rows,
                               int64_t cols, int64_t ldw, const float *x, int64_t tokens,
                               int64_t ldx, dq_lwc **out)
{
    if (out)
        *out = NULL;
    (void)params, (void)wq, (void)w, (void)rows, (void)cols, (void)ldw, (void)x, (void)tokens,
        (void)ldx;
    return NO_CALIBRATION(ctx);
}

DQ_API dq_status dq_lwc_loss(const dq_lwc *l, float *loss, float *g_gamma, float *g_beta, int64_t n)
{
    (void)l, (void)loss, (void)g_gamma, (void)g_beta, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_train(dq_lwc *l, float *last_loss)
{
    (void)l, (void)last_loss;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_layout(const dq_lwc *l, int64_t *n_groups, int32_t *epochs_done)
{
    (void)l, (void)n_groups, (void)epochs_done;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_get_params(const dq_lwc *l, float *gamma, float *beta, int64_t n)
{
    (void)l, (void)gamma, (void)beta, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_set_params(dq_lwc *l, const float *gamma, const float *beta, int64_t n)
{
    (void)l, (void)gamma, (void)beta, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_factors(const dq_lwc *l, float *clip_hi, float *clip_lo, int64_t n)
{
    (void)l, (void)clip_hi, (void)clip_lo, (void)n;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_lwc_best(const dq_lwc *l, float *gamma, float *beta, int64_t n, float *loss)
{
    (void)l, (void)gamma, (void)beta, (void)n, (void)loss;
    return NO_CALIBRATION(NULL);
}

/* ---- dq_permute ---- */

DQ_API dq_status dq_permutation_zigzag(const float *key, int64_t n, int32_t block_size,
                                       int64_t *perm)
{
    (void)key, (void)n, (void)block_size, (void)perm;
    return NO_CALIBRATION(NULL);
}

/* ---- dq_plan_build ---- */

DQ_API dq_status dq_plan_params_init(dq_plan_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_plan_build(dq_context *ctx, const dq_plan_params *params, const dq_calib *calib,
                               const float *w_absmax, int64_t cols, dq_plan **out)
{
    if (out)
        *out = NULL;
    (void)params, (void)calib, (void)w_absmax, (void)cols;
    return NO_CALIBRATION(ctx);
}

DQ_API dq_status dq_plan_build_from_sample(dq_context *ctx, const dq_plan_params *params,
                                           const float *act_absmax, const float *sample,
                                           int64_t rows, int64_t cols, int64_t lds,
                                           const float *w_absmax, dq_plan **out)
{
    if (out)
        *out = NULL;
    (void)params, (void)act_absmax, (void)sample, (void)rows, (void)cols, (void)lds, (void)w_absmax;
    return NO_CALIBRATION(ctx);
}

/* ---- dq_refine ---- */

DQ_API dq_status dq_refine_params_init(dq_refine_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_refine(dq_context *ctx, const dq_refine_params *p,
                                    const dq_rotation *start, const float *x, int64_t rows,
                                    int64_t cols, int64_t ldx, dq_rotation **out)
{
    if (out)
        *out = NULL;
    (void)p, (void)start, (void)x, (void)rows, (void)cols, (void)ldx;
    return NO_CALIBRATION(ctx);
}

/* ---- dq_rotation_search ---- */

DQ_API dq_status dq_rotation_base(int32_t n, const float *qprime, float *out, int64_t ldo)
{
    (void)n, (void)qprime, (void)out, (void)ldo;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_hadamard(int32_t n, float *out, int64_t ldo)
{
    (void)n, (void)out, (void)ldo;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_random_orthogonal(int32_t n, uint64_t seed, float *out, int64_t ldo)
{
    (void)n, (void)seed, (void)out, (void)ldo;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_hadamard_kind(int64_t n, int32_t *kind, int64_t *order)
{
    (void)n, (void)kind, (void)order;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_random_hadamard(int32_t n, uint64_t seed, float *out, int64_t ldo,
                                             int32_t *kind)
{
    (void)n, (void)seed, (void)out, (void)ldo, (void)kind;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_params_init(dq_rotation_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_rotation_create(dq_context *ctx, const dq_rotation_params *p, const float *x,
                                    int64_t rows, int64_t cols, int64_t ldx, dq_rotation **out)
{
    if (out)
        *out = NULL;
    (void)p, (void)x, (void)rows, (void)cols, (void)ldx;
    return NO_CALIBRATION(ctx);
}

/* ---- dq_smooth ---- */

DQ_API dq_status dq_smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n,
                                   float alpha, float *scale)
{
    (void)act_absmax, (void)w_absmax, (void)n, (void)alpha, (void)scale;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_smooth_weight_absmax(const float *w, int64_t rows, int64_t cols, int64_t ldw,
                                         int32_t accumulate, float *absmax)
{
    (void)w, (void)rows, (void)cols, (void)ldw, (void)accumulate, (void)absmax;
    return NO_CALIBRATION(NULL);
}

/* ---- dq_hessian, GPTQ ---- */

DQ_API dq_status dq_hessian_create(dq_context *ctx, const dq_plan *plan, int64_t cols,
                                   dq_hessian **out)
{
    if (out)
        *out = NULL;
    (void)plan, (void)cols;
    return NO_CALIBRATION(ctx);
}

DQ_API void dq_hessian_free(dq_hessian *h)
{
    (void)h;
}

DQ_API dq_status dq_hessian_observe(dq_hessian *h, const float *x, int64_t rows, int64_t cols,
                                    int64_t ldx)
{
    (void)h, (void)x, (void)rows, (void)cols, (void)ldx;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_hessian_merge(dq_hessian *dst, const dq_hessian *src)
{
    (void)dst, (void)src;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_hessian_tokens(const dq_hessian *h, int64_t *tokens)
{
    (void)h, (void)tokens;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_hessian_matrix(const dq_hessian *h, double *out, int64_t ldo)
{
    (void)h, (void)out, (void)ldo;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_gptq_params_init(dq_gptq_params *p, size_t struct_size)
{
    (void)p, (void)struct_size;
    return NO_CALIBRATION(NULL);
}

DQ_API dq_status dq_gptq_pack(dq_context *ctx, const dq_gptq_params *gp,
                              const dq_quant_params *qp, const dq_hessian *h, const float *w,
                              int64_t rows, int64_t cols, int64_t ldw, const float *clip_hi,
                              const float *clip_lo, int64_t n_clip, dq_qmatrix **out)
{
    if (out)
        *out = NULL;
    (void)gp, (void)qp, (void)h, (void)w, (void)rows, (void)cols, (void)ldw, (void)clip_hi,
        (void)clip_lo, (void)n_clip;
    return NO_CALIBRATION(ctx);
}
