/* Dispatched integer products: the fastest kernel this CPU runs (AVX-512 VNNI, AVX2, portable;
 * from the features dq_cpu.h probes once), on the context's threads (dq_pool.h).
 * Every integer variant gives the portable kernels' bits; the weight-only ones agree with it
 * within float rounding (dq_gemm_simd.h) and with each other bit for bit (dq_gemm_simd.c picks
 * and splits). */
#include "dq_gemm.h"
#include "dq_gemm_simd.h"

void dq__quantize_tokens(const float *x, int64_t rows, int64_t cols, int64_t ldx, int32_t bits,
                         int32_t scheme, float clip, uint8_t *codes, int64_t code_ld,
                         float *scales, int32_t *zeros, const dq_context *ctx)
{
    dq__quantize_tokens_isa(dq__gemm_isa_best(), x, rows, cols, ldx, bits, scheme, clip, codes,
                            code_ld, scales, zeros, ctx);
}

void dq__quantize_groups(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                         int64_t group_len, int32_t bits, int32_t scheme, float clip,
                         uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros,
                         const dq_context *ctx)
{
    dq__quantize_groups_isa(dq__gemm_isa_best(), x, rows, cols, ldx, group_len, bits, scheme,
                            clip, codes, code_ld, scales, zeros, ctx);
}

dq_status dq__gemm_w_a(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                       int64_t ldy, const dq_context *ctx)
{
    return dq__gemm_w_a_isa(dq__gemm_isa_best(), w, a, bias, y, ldy, ctx);
}

void dq__gemm_w_a_work(const dq__wprep *w, const dq__aq *a, const float *bias, float *y,
                       int64_t ldy, const dq_context *ctx, void *work)
{
    dq__gemm_w_a_isa_work(dq__gemm_isa_best(), w, a, bias, y, ldy, ctx, work);
}

void dq__gemm_w_f32(const dq__wprep *w, const float *x, int64_t rows, int64_t ldx,
                    const float *bias, float *y, int64_t ldy, const dq_context *ctx)
{
    dq__gemm_w_f32_isa(dq__gemm_isa_best(), w, x, rows, ldx, bias, y, ldy, ctx);
}
