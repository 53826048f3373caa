/* Private layout of dq_qmatrix, shared by the files that read packed matrices directly. */
#ifndef DQ_QMATRIX_H
#define DQ_QMATRIX_H

#include "dq_handle.h"
#include "dq_internal.h"

struct dq_qmatrix {
    uint64_t tag; /* DQ__TAG_QMATRIX (dq_handle.h) */
    dq_context ctx;
    int64_t rows, cols;
    int32_t bits, scheme, group_size; /* group_size as requested: 0 = whole row */
    int64_t group_len;                /* effective elements per group */
    int64_t groups_per_row;
    size_t row_bytes;
    size_t nbytes;
    uint8_t *packed;
    float *scales;
    float *zeros; /* NULL for SYM */
    uint64_t plan_fingerprint; /* plan the weights were transformed by; 0 = none */
};
DQ__HANDLE_LAYOUT(struct dq_qmatrix);

/* A zeroed matrix object allocated with ctx, tagged and holding its copy of ctx, so that
 * dq_qmatrix_free releases it on any later failure; NULL when out of memory. */
struct dq_qmatrix *dq__qmatrix_new(const dq_context *ctx);

/* The caller's quantization params (NULL: defaults) validated into p, failures logged for func
 * (the public function). */
dq_status dq__quant_params_read(const dq_context *ctx, const char *func,
                                const dq_quant_params *user, dq_quant_params *p);

/* Stores code q of element j of a packed row (ASYM 0..2^bits-1, SYM signed). */
static inline void dq__qmatrix_store_code(uint8_t *row, int32_t bits, int64_t j, int32_t q)
{
    if (bits == 8)
        row[j] = (uint8_t)(q & 0xFF);
    else if (j & 1)
        row[j / 2] = (uint8_t)((row[j / 2] & 0x0F) | ((q & 0xF) << 4));
    else
        row[j / 2] = (uint8_t)((row[j / 2] & 0xF0) | (q & 0xF));
}

/* Stored code of element j of a packed row: ASYM 0..2^bits-1, SYM signed. */
static inline int32_t dq__qmatrix_code(const struct dq_qmatrix *q, const uint8_t *row, int64_t j)
{
    int32_t v = q->bits == 8 ? row[j] : (row[j / 2] >> (4 * (j & 1))) & 0xF;
    int32_t half = 1 << (q->bits - 1);
    return (q->scheme == DQ_QUANT_SYM && v >= half) ? v - 2 * half : v;
}

#endif
