/* The packed key/value cache: each head of each token quantized on its own (asymmetric, 4 or 8
 * bits, the quantization rule of dq_quant_rule.h), optionally after the head's orthonormal
 * Walsh-Hadamard transform, which spreads an outlier channel over the whole head. */
#include <math.h>
#include <string.h>

#include "dq_internal.h"
#include "dq_quant_rule.h"

#define KV_PARAMS_MIN_SIZE (offsetof(dq_kv_params, clip_ratio) + sizeof(float))
#define KV_MAX_HEAD 1024
#define KV_MAX_HEADS 65536
/* Scale and zero point of a head record, two native floats. */
#define KV_HEAD_META (2 * sizeof(float))

DQ_API dq_status dq_kv_params_init(dq_kv_params *p, size_t struct_size)
{
    const dq_kv_params defaults = {
        .struct_size = sizeof defaults,
        .flags = 0,
        .bits = 4,
        .head_size = 128,
        .n_heads = 1,
        .clip_ratio = 1.0f,
    };
    return dq__params_init(p, struct_size, KV_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

static bool is_pow2(int32_t n)
{
    return n > 0 && (n & (n - 1)) == 0;
}

/* Reads and validates the caller's params (NULL: the defaults) for func. */
static dq_status read_params(const char *func, const dq_kv_params *user, dq_kv_params *p)
{
    dq_kv_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(NULL, func, "p", p, sizeof *p, KV_PARAMS_MIN_SIZE, user);
    if (st != DQ_OK)
        return st;
    if (p->flags & ~(uint32_t)DQ_KV_F_ROTATE)
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "p->flags 0x%x: unknown bits 0x%x",
                        (unsigned)p->flags, (unsigned)(p->flags & ~(uint32_t)DQ_KV_F_ROTATE));
    if (p->bits != 4 && p->bits != 8)
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "p->bits %d, expected 4 or 8",
                        (int)p->bits);
    if (p->head_size < 1 || p->head_size > KV_MAX_HEAD)
        return dq__fail(NULL, DQ_ERR_SHAPE, func, "p->head_size %d outside [1, %d]",
                        (int)p->head_size, KV_MAX_HEAD);
    if (p->n_heads < 1 || p->n_heads > KV_MAX_HEADS)
        return dq__fail(NULL, DQ_ERR_SHAPE, func, "p->n_heads %d outside [1, %d]",
                        (int)p->n_heads, KV_MAX_HEADS);
    if (!(p->clip_ratio > 0.0f && p->clip_ratio <= 1.0f))
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "p->clip_ratio %g outside (0, 1]",
                        (double)p->clip_ratio);
    return DQ_OK;
}

/* Bytes of one head's codes and of one head record. */
static size_t code_bytes(const dq_kv_params *p)
{
    return p->bits == 8 ? (size_t)p->head_size : ((size_t)p->head_size + 1) / 2;
}

static size_t head_bytes(const dq_kv_params *p)
{
    return KV_HEAD_META + code_bytes(p);
}

/* Bytes of `tokens` tokens (validated params, tokens >= 0); false on overflow. */
static bool cache_bytes(const dq_kv_params *p, int64_t tokens, size_t *bytes)
{
    size_t token;
    return dq__mul_size(head_bytes(p), (size_t)p->n_heads, &token) &&
           dq__array_bytes(tokens, token, bytes);
}

DQ_API dq_status dq_kv_size(const dq_kv_params *params, int64_t tokens, size_t *bytes)
{
    if (!bytes)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "bytes is NULL");
    dq_kv_params p;
    dq_status st = read_params(__func__, params, &p);
    if (st != DQ_OK)
        return st;
    if (tokens < 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "tokens %lld < 0", (long long)tokens);
    if (!cache_bytes(&p, tokens, bytes))
        return DQ_FAIL(NULL, DQ_ERR_OVERFLOW, "%lld tokens of %d heads do not fit size_t",
                       (long long)tokens, (int)p.n_heads);
    return DQ_OK;
}

/* h <- x * H_n / sqrt(n) (H_n Sylvester, symmetric) by the fast transform, in double so that
 * no partial sum of finite floats can overflow; n a power of two. */
static void fwht(const float *x, int32_t n, double *h)
{
    for (int32_t i = 0; i < n; i++)
        h[i] = x[i];
    for (int32_t len = 1; len < n; len *= 2)
        for (int32_t i = 0; i < n; i += 2 * len)
            for (int32_t j = i; j < i + len; j++) {
                const double a = h[j], b = h[j + len];
                h[j] = a + b;
                h[j + len] = a - b;
            }
    const double norm = 1.0 / sqrt((double)n);
    for (int32_t i = 0; i < n; i++)
        h[i] *= norm;
}

/* The head as it is quantized (rotated or not) into y; false when a value is not finite. */
static bool head_values(const dq_kv_params *p, const float *x, float *y)
{
    const int32_t n = p->head_size;
    if (!(p->flags & DQ_KV_F_ROTATE)) {
        for (int32_t i = 0; i < n; i++)
            if (!isfinite(y[i] = x[i]))
                return false;
        return true;
    }
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    double h[KV_MAX_HEAD];
    fwht(x, n, h);
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(y[i] = (float)h[i]))
            return false;
    return true;
}

/* Checks shared by rotate and quantize: x, tokens, ldx. */
static dq_status check_rows(const char *func, const dq_kv_params *p, const void *x,
                            int64_t tokens, int64_t ldx)
{
    const int64_t width = (int64_t)p->head_size * p->n_heads;
    if (tokens < 0)
        return dq__fail(NULL, DQ_ERR_SHAPE, func, "tokens %lld < 0", (long long)tokens);
    if (ldx < width)
        return dq__fail(NULL, DQ_ERR_SHAPE, func, "ldx %lld < n_heads * head_size %lld",
                        (long long)ldx, (long long)width);
    if (tokens > 0 && !x)
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "x is NULL");
    int64_t span;
    if (tokens > 0 && (!dq__mul_i64(tokens - 1, ldx, &span) || !dq__add_i64(span, width, &span) ||
                       !dq__array_bytes(span, sizeof(float), &(size_t){0})))
        return dq__fail(NULL, DQ_ERR_OVERFLOW, func, "%lld tokens with ldx %lld overflow",
                        (long long)tokens, (long long)ldx);
    return DQ_OK;
}

DQ_API dq_status dq_kv_rotate(const dq_kv_params *params, float *x, int64_t tokens, int64_t ldx)
{
    dq_kv_params p;
    dq_status st = read_params(__func__, params, &p);
    if (st != DQ_OK)
        return st;
    if (!is_pow2(p.head_size))
        return DQ_FAIL(NULL, DQ_ERR_UNSUPPORTED, "p->head_size %d is not a power of two",
                       (int)p.head_size);
    if ((st = check_rows(__func__, &p, x, tokens, ldx)) != DQ_OK)
        return st;
    p.flags |= DQ_KV_F_ROTATE;
    float y[KV_MAX_HEAD];
    /* All or nothing: every head is checked before any is written. */
    for (int64_t t = 0; t < tokens; t++)
        for (int32_t h = 0; h < p.n_heads; h++)
            if (!head_values(&p, x + t * ldx + (int64_t)h * p.head_size, y))
                return DQ_FAIL(NULL, DQ_ERR_NONFINITE,
                               "token %lld head %d: a value is not finite (before or after "
                               "the rotation)",
                               (long long)t, (int)h);
    for (int64_t t = 0; t < tokens; t++)
        for (int32_t h = 0; h < p.n_heads; h++) {
            float *xh = x + t * ldx + (int64_t)h * p.head_size;
            head_values(&p, xh, y);
            memcpy(xh, y, (size_t)p.head_size * sizeof *y);
        }
    return DQ_OK;
}

/* Scale and zero point of a head's values y; false when the rule refuses them. */
static bool head_params(const dq_kv_params *p, const float *y, float *scale, float *zero)
{
    float mn = y[0], mx = y[0];
    for (int32_t i = 1; i < p->head_size; i++) {
        mn = y[i] < mn ? y[i] : mn;
        mx = y[i] > mx ? y[i] : mx;
    }
    return dq__qr_params(p->bits, DQ_QUANT_ASYM, mn, mx, p->clip_ratio, p->clip_ratio, scale,
                         zero);
}

static void write_head(const dq_kv_params *p, const float *y, float scale, float zero,
                       uint8_t *rec)
{
    memcpy(rec, &scale, sizeof scale);
    memcpy(rec + sizeof scale, &zero, sizeof zero);
    uint8_t *codes = rec + KV_HEAD_META;
    const int32_t n = p->head_size;
    if (p->bits == 8) {
        for (int32_t i = 0; i < n; i++)
            codes[i] = (uint8_t)dq__qr_code(8, DQ_QUANT_ASYM, y[i], scale, zero);
        return;
    }
    memset(codes, 0, code_bytes(p));
    for (int32_t i = 0; i < n; i++)
        codes[i / 2] |= (uint8_t)(dq__qr_code(4, DQ_QUANT_ASYM, y[i], scale, zero) << 4 * (i & 1));
}

/* Checks that tokens [first, first + tokens) lie within a cache of cache_size bytes and sets
 * *offset to the byte offset of token first. */
static dq_status check_range(const char *func, const dq_kv_params *p, const void *cache,
                             size_t cache_size, int64_t first, int64_t tokens, size_t *offset)
{
    if (first < 0)
        return dq__fail(NULL, DQ_ERR_SHAPE, func, "first %lld < 0", (long long)first);
    int64_t end;
    size_t need;
    if (!dq__add_i64(first, tokens, &end) || !cache_bytes(p, end, &need))
        return dq__fail(NULL, DQ_ERR_OVERFLOW, func,
                        "tokens %lld from %lld of %d heads do not fit size_t",
                        (long long)tokens, (long long)first, (int)p->n_heads);
    if (tokens > 0 && !cache)
        return dq__fail(NULL, DQ_ERR_INVALID_ARG, func, "cache is NULL");
    if (tokens > 0 && cache_size < need)
        return dq__fail(NULL, DQ_ERR_BUFFER, func,
                        "cache_size %zu < %zu bytes needed up to token %lld", cache_size, need,
                        (long long)end);
    cache_bytes(p, first, offset);
    return DQ_OK;
}

DQ_API dq_status dq_kv_quantize(const dq_kv_params *params, const float *x, int64_t tokens,
                                int64_t ldx, void *cache, size_t cache_size, int64_t first)
{
    dq_kv_params p;
    dq_status st = read_params(__func__, params, &p);
    if (st != DQ_OK)
        return st;
    if ((p.flags & DQ_KV_F_ROTATE) && !is_pow2(p.head_size))
        return DQ_FAIL(NULL, DQ_ERR_UNSUPPORTED, "p->head_size %d is not a power of two "
                       "(DQ_KV_F_ROTATE)", (int)p.head_size);
    size_t offset;
    if ((st = check_rows(__func__, &p, x, tokens, ldx)) != DQ_OK ||
        (st = check_range(__func__, &p, cache, cache_size, first, tokens, &offset)) != DQ_OK)
        return st;
    float y[KV_MAX_HEAD], scale, zero;
    for (int64_t t = 0; t < tokens; t++)
        for (int32_t h = 0; h < p.n_heads; h++)
            if (!head_values(&p, x + t * ldx + (int64_t)h * p.head_size, y) ||
                !head_params(&p, y, &scale, &zero))
                return DQ_FAIL(NULL, DQ_ERR_NONFINITE,
                               "token %lld head %d: a value is not finite%s, or the range "
                               "overflows",
                               (long long)t, (int)h,
                               p.flags & DQ_KV_F_ROTATE ? " (before or after the rotation)" : "");
    uint8_t *rec = (uint8_t *)cache + offset;
    for (int64_t t = 0; t < tokens; t++)
        for (int32_t h = 0; h < p.n_heads; h++, rec += head_bytes(&p)) {
            head_values(&p, x + t * ldx + (int64_t)h * p.head_size, y);
            head_params(&p, y, &scale, &zero);
            write_head(&p, y, scale, zero, rec);
        }
    return DQ_OK;
}

DQ_API dq_status dq_kv_dequantize(const dq_kv_params *params, const void *cache,
                                  size_t cache_size, int32_t head, int64_t first,
                                  int64_t tokens, float *out, int64_t ldo)
{
    dq_kv_params p;
    dq_status st = read_params(__func__, params, &p);
    if (st != DQ_OK)
        return st;
    if (head < 0 || head >= p.n_heads)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "head %d outside [0, %d)", (int)head,
                       (int)p.n_heads);
    if (tokens < 0)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "tokens %lld < 0", (long long)tokens);
    if (ldo < p.head_size)
        return DQ_FAIL(NULL, DQ_ERR_SHAPE, "ldo %lld < head_size %d", (long long)ldo,
                       (int)p.head_size);
    if (tokens > 0 && !out)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "out is NULL");
    int64_t span;
    if (tokens > 0 && (!dq__mul_i64(tokens - 1, ldo, &span) ||
                       !dq__add_i64(span, p.head_size, &span) ||
                       !dq__array_bytes(span, sizeof(float), &(size_t){0})))
        return DQ_FAIL(NULL, DQ_ERR_OVERFLOW, "%lld tokens with ldo %lld overflow",
                       (long long)tokens, (long long)ldo);
    size_t offset;
    if ((st = check_range(__func__, &p, cache, cache_size, first, tokens, &offset)) != DQ_OK)
        return st;
    const size_t stride = head_bytes(&p) * (size_t)p.n_heads;
    const uint8_t *rec = (const uint8_t *)cache + offset + head_bytes(&p) * (size_t)head;
    for (int64_t t = 0; t < tokens; t++, rec += stride) {
        float scale, zero;
        memcpy(&scale, rec, sizeof scale);
        memcpy(&zero, rec + sizeof scale, sizeof zero);
        const uint8_t *codes = rec + KV_HEAD_META;
        float *o = out + t * ldo;
        for (int32_t i = 0; i < p.head_size; i++) {
            const int32_t q = p.bits == 8 ? codes[i] : (codes[i / 2] >> 4 * (i & 1)) & 0xF;
            o[i] = ((float)q - zero) * scale;
        }
    }
    return DQ_OK;
}
