/* The elementwise pass of LWC's fake quantization, portable and AVX-512 (same IEEE operations,
 * bit for bit), behind one dispatch. */
#ifndef DQ_LWC_KERNELS_H
#define DQ_LWC_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* For x = src[0..len) of one group with its scale and zero point: v = x / scale, r = rint(v),
 * code = r + zero (asym) or r, q = code clamped to [bottom, top] (as clampf: NaN-free
 * compares), dst = (q - zero) * scale (asym) or q * scale, and when part is not NULL the STE
 * partial dw^/ds: r - v where code was not clamped, else q - zero (asym) or q. */
typedef void dq__lwc_fake_quant_fn(const float *src, int64_t len, float scale, float zero,
                                   float bottom, float top, bool asym, float *dst, float *part);

dq__lwc_fake_quant_fn dq__lwc_fake_quant_portable;
dq__lwc_fake_quant_fn dq__lwc_fake_quant_avx512;

/* The fastest variant this CPU runs. */
dq__lwc_fake_quant_fn *dq__lwc_fake_quant_best(void);

#endif
