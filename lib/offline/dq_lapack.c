/* Dense factorizations through LAPACKE: SVD (polar factor), QR, triangular solves. The only file
 * that includes lapacke.h. Column-major calls with workspace from the context, so LAPACKE never
 * allocates behind the context's allocator: a row-major matrix handed over as column-major is
 * its transpose, and the wrappers account for that instead of copying through LAPACKE. */
#include <lapacke.h>
#include <string.h>

#include "dq_refine.h"

/* Workspace size from a LAPACK query, as a count of doubles. */
/* A factorization that fails (non-finite input, no convergence) is DQ_ERR_NONFINITE, which the
 * refinement loops recover from (they keep their best iterate): a warning, not an error. */
#define LAPACK_FAIL(ctx, ...) (dq__log((ctx), DQ_LOG_WARN, __VA_ARGS__), DQ_ERR_NONFINITE)

static size_t query_size(double q)
{
    return q < 1.0 ? 1 : (size_t)q + 1;
}

dq_status dq__lapack_polar(const dq_context *ctx, int32_t n, const double *m, double *r)
{
    const size_t nn = (size_t)n * (size_t)n;
    const lapack_int ln = n;
    double *a = dq__alloc(ctx, 3 * nn * sizeof(double) + (size_t)n * sizeof(double));
    lapack_int *iwork = dq__alloc(ctx, 8 * (size_t)n * sizeof(lapack_int));
    double *work = NULL, q = 0.0;
    dq_status st = DQ_OK;
    if (!a || !iwork) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "workspace of the %dx%d SVD", (int)n, (int)n);
        goto out;
    }
    double *u = a + nn, *vt = u + nn, *s = vt + nn;
    /* Column-major, the array holds m^T = V S U^T: LAPACK's U is our V and its V^T our U^T. */
    memcpy(a, m, nn * sizeof(double));
    lapack_int info;
    if ((info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'A', ln, ln, a, ln, s, u, ln, vt, ln, &q,
                                    -1, iwork)) != 0) {
        st = LAPACK_FAIL(ctx, "dgesdd workspace query (n %d): info %d", (int)n,
                     (int)info);
        goto out;
    }
    if (!(work = dq__alloc(ctx, query_size(q) * sizeof(double)))) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu doubles of dgesdd workspace", query_size(q));
        goto out;
    }
    if ((info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'A', ln, ln, a, ln, s, u, ln, vt, ln, work,
                                    (lapack_int)query_size(q), iwork)) != 0) {
        st = LAPACK_FAIL(ctx, "dgesdd (n %d): info %d (non-finite input or no "
                     "convergence)", (int)n, (int)info);
        goto out;
    }
    /* Column-major P = U_lapack * VT_lapack = (U V^T)^T, i.e. U V^T read row-major. */
    memset(r, 0, nn * sizeof(double));
    for (int32_t j = 0; j < n; j++)
        for (int32_t k = 0; k < n; k++) {
            const double f = vt[(size_t)k + (size_t)j * (size_t)n];
            const double *uk = u + (size_t)k * (size_t)n;
            double *rj = r + (size_t)j * (size_t)n;
            for (int32_t i = 0; i < n; i++)
                rj[i] += uk[i] * f;
        }
out:
    dq__free(ctx, a);
    dq__free(ctx, iwork);
    dq__free(ctx, work);
    return st;
}

dq_status dq__lapack_qr(const dq_context *ctx, int32_t n, const double *z, double *q, double *t)
{
    const size_t nn = (size_t)n * (size_t)n;
    const lapack_int ln = n;
    double *a = dq__alloc(ctx, nn * sizeof(double) + (size_t)n * sizeof(double));
    double *work = NULL, q1 = 0.0, q2 = 0.0;
    dq_status st = DQ_OK;
    lapack_int info;
    if (!a) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "workspace of the %dx%d QR", (int)n, (int)n);
        goto out;
    }
    double *tau = a + nn;
    for (int32_t i = 0; i < n; i++) /* column-major copy of z */
        for (int32_t j = 0; j < n; j++)
            a[(size_t)i + (size_t)j * (size_t)n] = z[(size_t)i * (size_t)n + (size_t)j];
    if ((info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, ln, ln, a, ln, tau, &q1, -1)) != 0 ||
        (info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, ln, ln, ln, a, ln, tau, &q2, -1)) != 0) {
        st = LAPACK_FAIL(ctx, "dgeqrf/dorgqr workspace query (n %d): info %d",
                     (int)n, (int)info);
        goto out;
    }
    size_t lw = query_size(q1 > q2 ? q1 : q2);
    if (!(work = dq__alloc(ctx, lw * sizeof(double)))) {
        st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu doubles of QR workspace", lw);
        goto out;
    }
    if ((info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, ln, ln, a, ln, tau, work,
                                    (lapack_int)lw)) != 0) {
        st = LAPACK_FAIL(ctx, "dgeqrf (n %d): info %d", (int)n, (int)info);
        goto out;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            t[(size_t)i * (size_t)n + (size_t)j] =
                j >= i ? a[(size_t)i + (size_t)j * (size_t)n] : 0.0;
    if ((info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, ln, ln, ln, a, ln, tau, work,
                                    (lapack_int)lw)) != 0) {
        st = LAPACK_FAIL(ctx, "dorgqr (n %d): info %d", (int)n, (int)info);
        goto out;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++)
            q[(size_t)i * (size_t)n + (size_t)j] = a[(size_t)i + (size_t)j * (size_t)n];
    /* Fix the signs so the factorization is unique: a negative diagonal entry of t flips row j
     * of t and column j of q. */
    for (int32_t j = 0; j < n; j++)
        if (t[(size_t)j * (size_t)n + (size_t)j] < 0.0) {
            for (int32_t k = 0; k < n; k++) {
                t[(size_t)j * (size_t)n + (size_t)k] = -t[(size_t)j * (size_t)n + (size_t)k];
                q[(size_t)k * (size_t)n + (size_t)j] = -q[(size_t)k * (size_t)n + (size_t)j];
            }
        }
out:
    dq__free(ctx, a);
    dq__free(ctx, work);
    return st;
}

dq_status dq__lapack_solve_tt(int32_t n, const double *t, double *b)
{
    /* y = b t^-T solves t y^T = b^T. Read column-major, b is b^T and t is t^T (lower), so
     * solving op(L) X = B with op = transpose gives X = y^T column-major: y row-major. */
    const lapack_int ln = n;
    lapack_int info = LAPACKE_dtrtrs_work(LAPACK_COL_MAJOR, 'L', 'T', 'N', ln, ln, t, ln, b, ln);
    return info == 0 ? DQ_OK
                     : LAPACK_FAIL(NULL, "dtrtrs (n %d): info %d (singular "
                               "triangle)", (int)n, (int)info);
}
