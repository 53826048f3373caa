/* Argument checks shared by every entry point that takes a matrix. */
#include <string.h>

#include "dq_internal.h"

dq_status dq__check_matrix_at(const dq_context *ctx, const char *func, const char *name,
                              const void *x, int64_t rows, int64_t cols, int64_t ld)
{
    if (!x)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "%s: ptr is NULL", name);
    if (rows <= 0)
        return dq__fail(ctx, DQ_ERR_SHAPE, func, "%s: rows %lld, expected > 0", name,
                        (long long)rows);
    if (cols <= 0)
        return dq__fail(ctx, DQ_ERR_SHAPE, func, "%s: cols %lld, expected > 0", name,
                        (long long)cols);
    if (ld < cols)
        return dq__fail(ctx, DQ_ERR_SHAPE, func, "%s: ld %lld < cols %lld", name, (long long)ld,
                        (long long)cols);
    /* (rows - 1) * ld + cols elements, and their bytes, must be addressable. */
    size_t span, bytes;
    if ((uint64_t)rows > SIZE_MAX || (uint64_t)ld > SIZE_MAX ||
        !dq__mul_size((size_t)(rows - 1), (size_t)ld, &span) ||
        !dq__add_size(span, (size_t)cols, &span) || !dq__mul_size(span, sizeof(float), &bytes) ||
        bytes > (size_t)INT64_MAX)
        return dq__fail(ctx, DQ_ERR_OVERFLOW, func,
                        "%s: rows %lld, cols %lld, ld %lld span more bytes than addressable",
                        name, (long long)rows, (long long)cols, (long long)ld);
    return DQ_OK;
}

bool dq__all_finite(const float *x, int64_t rows, int64_t cols, int64_t ld)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * (size_t)ld;
        /* An all-ones exponent marks Inf and NaN. Integer ORs, unlike a float sum, may be
         * reordered, so the compiler vectorises this loop. */
        uint32_t bad = 0;
        for (int64_t j = 0; j < cols; j++) {
            uint32_t u;
            memcpy(&u, &r[j], sizeof u);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
        }
        if (bad)
            return false;
    }
    return true;
}
