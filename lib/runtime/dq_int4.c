/* Scalar quantization rules (DESIGN.md 4.7) and raw nibble packing. */
#include <math.h>

#include "dq_internal.h"
#include "dq_quant_rule.h"

void dq__quant_params(dq__qspec s, const float *x, int64_t n, float hi, float lo, float *scale,
                      float *zero)
{
    float mn = x[0], mx = x[0];
    bool nan = false;
    for (int64_t i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
        nan |= x[i] != x[i];
    }
    /* A NaN is skipped by the comparisons above (unless first): pass it on to the rule. */
    dq__qr_params(s.bits, s.scheme, nan ? NAN : mn, mx, hi, lo, scale, zero);
}

int32_t dq__quant_code(dq__qspec s, float x, float scale, float zero)
{
    return dq__qr_code(s.bits, s.scheme, x, scale, zero);
}

DQ_API size_t dq_int4_packed_size(int64_t n)
{
    if (n < 0 || (uint64_t)n >= SIZE_MAX)
        return 0;
    return (size_t)(n / 2 + (n & 1));
}

DQ_API dq_status dq_int4_pack(const int32_t *codes, int64_t n, uint8_t *out, size_t out_bytes)
{
    if (!codes || !out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !codes ? "codes" : "out");
    if (n <= 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %lld, expected > 0", (long long)n);
    if (out_bytes < dq_int4_packed_size(n))
        return DQ_FAIL(NULL, DQ_ERR_BUFFER, "out_bytes %zu < %zu needed for n %lld", out_bytes,
                       dq_int4_packed_size(n), (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (codes[i] < -8 || codes[i] > 15)
            return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "codes[%lld] %d outside [-8, 15]",
                           (long long)i, (int)codes[i]);
    for (int64_t k = 0; k < n / 2; k++)
        out[k] = (uint8_t)((codes[2 * k] & 0xF) | ((codes[2 * k + 1] & 0xF) << 4));
    if (n & 1)
        out[n / 2] = (uint8_t)(codes[n - 1] & 0xF);
    return DQ_OK;
}

DQ_API dq_status dq_int4_unpack(const uint8_t *in, size_t in_bytes, int64_t n, int32_t is_signed,
                                int32_t *codes)
{
    if (!in || !codes)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !in ? "in" : "codes");
    if (n <= 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "n %lld, expected > 0", (long long)n);
    if (in_bytes < dq_int4_packed_size(n))
        return DQ_FAIL(NULL, DQ_ERR_BUFFER, "in_bytes %zu < %zu needed for n %lld", in_bytes,
                       dq_int4_packed_size(n), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        int32_t v = (in[i / 2] >> (4 * (i & 1))) & 0xF;
        codes[i] = (is_signed && v >= 8) ? v - 16 : v;
    }
    return DQ_OK;
}
