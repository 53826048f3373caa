/* The only file that includes cblas.h: dimension checks against CBLAS's int, then the call.
 * The host owns BLAS threading; nothing here touches BLAS global state. */
#include <cblas.h>
#include <limits.h>

#include "dq_internal.h"

static bool fits_int(int64_t v)
{
    return v >= 0 && v <= INT_MAX;
}

dq_status dq__sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                    int64_t ldc)
{
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc))
        return DQ_FAIL(NULL, DQ_ERR_BLAS,
                       "m %lld, n %lld, k %lld, lda %lld, ldb %lld, ldc %lld: one is outside "
                       "[0, INT_MAX] of CBLAS",
                       (long long)m, (long long)n, (long long)k, (long long)lda, (long long)ldb,
                       (long long)ldc);
    if (m == 0 || n == 0)
        return DQ_OK;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda, b,
                (int)ldb, beta, c, (int)ldc);
    return DQ_OK;
}
