/* Safetensors container: strict, bounded JSON header parser and deterministic writer.
 * The parser reads only the schema safetensors defines (no general JSON values), so nesting is
 * bounded by construction: header object -> tensor entry or metadata object -> array/string. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_safetensors.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[DQ__ST_N_DTYPES] = {
    [DQ__ST_BOOL] = {"BOOL", 1}, [DQ__ST_U8] = {"U8", 1},     [DQ__ST_I8] = {"I8", 1},
    [DQ__ST_U16] = {"U16", 2},   [DQ__ST_I16] = {"I16", 2},   [DQ__ST_F16] = {"F16", 2},
    [DQ__ST_BF16] = {"BF16", 2}, [DQ__ST_U32] = {"U32", 4},   [DQ__ST_I32] = {"I32", 4},
    [DQ__ST_F32] = {"F32", 4},   [DQ__ST_U64] = {"U64", 8},   [DQ__ST_I64] = {"I64", 8},
    [DQ__ST_F64] = {"F64", 8},
};

const char *dq__st_dtype_name(int32_t dtype)
{
    return dtype >= 0 && dtype < DQ__ST_N_DTYPES ? dtypes[dtype].name : NULL;
}

size_t dq__st_dtype_size(int32_t dtype)
{
    return dtype >= 0 && dtype < DQ__ST_N_DTYPES ? dtypes[dtype].size : 0;
}

bool dq__st_text_ok(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x20)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

/* ---- reader ---- */

typedef struct cursor {
    const dq_context *ctx;
    const uint8_t *p, *end;
    const uint8_t *start; /* first byte of the JSON header, for offsets in messages */
} cursor;

/* Logs "func: JSON header byte N: <what>" and returns DQ_ERR_FORMAT. */
static dq_status json_fail(const cursor *c, const char *func, const char *fmt, ...)
    DQ_PRINTF(3, 4);
static dq_status json_fail(const cursor *c, const char *func, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return dq__fail(c->ctx, DQ_ERR_FORMAT, func, "JSON header byte %zu: %s",
                    (size_t)(c->p - c->start), what);
}
#define JSON_FAIL(c, ...) json_fail((c), __func__, __VA_ARGS__)

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Skips whitespace, then consumes ch. */
static bool accept(cursor *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == (uint8_t)ch) {
        c->p++;
        return true;
    }
    return false;
}

static int hex_value(uint8_t h)
{
    if (h >= '0' && h <= '9')
        return h - '0';
    if (h >= 'a' && h <= 'f')
        return h - 'a' + 10;
    if (h >= 'A' && h <= 'F')
        return h - 'A' + 10;
    return -1;
}

static bool read_hex4(cursor *c, uint32_t *v)
{
    if (c->end - c->p < 4)
        return false;
    *v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex_value(c->p[k]);
        if (h < 0)
            return false;
        *v = (*v << 4) | (uint32_t)h;
    }
    c->p += 4;
    return true;
}

static size_t put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a JSON string into a new NUL-terminated buffer. Escapes are decoded (a \u escape never
 * yields more bytes than its six source bytes), NUL and lone surrogates are rejected, and the
 * result must be valid UTF-8. */
static dq_status parse_string(cursor *c, char **out)
{
    *out = NULL;
    if (!accept(c, '"'))
        return JSON_FAIL(c, "expected a string");
    const uint8_t *q = c->p;
    while (q < c->end && *q != '"') {
        if (*q == '\\' && q + 1 < c->end)
            q++;
        q++;
    }
    if (q >= c->end)
        return JSON_FAIL(c, "unterminated string");
    size_t raw = (size_t)(q - c->p);
    uint8_t *s = dq__alloc(c->ctx, raw + 1);
    if (!s)
        return DQ_FAIL(c->ctx, DQ_ERR_NOMEM, "%zu bytes for a string", raw + 1);
    size_t n = 0;
    dq_status st = DQ_ERR_FORMAT;
    while (c->p < q) {
        uint8_t ch = *c->p++;
        if (ch < 0x20) {
            st = JSON_FAIL(c, "control character 0x%02x in a string", (unsigned)ch);
            goto out;
        }
        if (ch != '\\') {
            s[n++] = ch;
            continue;
        }
        ch = *c->p++;
        uint32_t cp;
        switch (ch) {
        case '"': s[n++] = '"'; break;
        case '\\': s[n++] = '\\'; break;
        case '/': s[n++] = '/'; break;
        case 'b': s[n++] = '\b'; break;
        case 'f': s[n++] = '\f'; break;
        case 'n': s[n++] = '\n'; break;
        case 'r': s[n++] = '\r'; break;
        case 't': s[n++] = '\t'; break;
        case 'u':
            if (!read_hex4(c, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) {
                st = JSON_FAIL(c, "bad \\u escape (NUL, lone low surrogate or not hex)");
                goto out;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (q - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u') {
                    st = JSON_FAIL(c, "high surrogate without a low one");
                    goto out;
                }
                c->p += 2;
                if (!read_hex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    st = JSON_FAIL(c, "high surrogate without a low one");
                    goto out;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (c->p > q) {
                st = JSON_FAIL(c, "\\u escape runs past the string");
                goto out;
            }
            n += put_utf8(s + n, cp);
            break;
        default:
            st = JSON_FAIL(c, "unknown escape '\\%c'", ch >= 0x20 && ch < 0x7f ? ch : '?');
            goto out;
        }
    }
    c->p = q + 1;
    s[n] = 0;
    /* Control characters may arrive escaped; they are not allowed in names or values either. */
    if (!dq__st_text_ok((const char *)s, n)) {
        st = JSON_FAIL(c, "string is not UTF-8 text without control characters");
        goto out;
    }
    *out = (char *)s;
    s = NULL;
    st = DQ_OK;
out:
    dq__free(c->ctx, s);
    return st;
}

/* A non-negative JSON integer (no sign, fraction, exponent or leading zero) up to max. */
static bool parse_uint(cursor *c, uint64_t max, uint64_t *v)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return false;
    if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9')
        return false;
    uint64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        uint64_t d = (uint64_t)(*c->p++ - '0');
        if (x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
        return false;
    *v = x;
    return true;
}

dq_status dq__st_grow(const dq_context *ctx, void **arr, size_t *cap, size_t elem, size_t need)
{
    if (need <= *cap)
        return DQ_OK;
    size_t ncap = *cap ? *cap : 8, bytes;
    while (ncap < need) {
        if (!dq__mul_size(ncap, 2, &ncap))
            return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "%zu elements overflow size_t", need);
    }
    if (!dq__mul_size(ncap, elem, &bytes))
        return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "%zu elements of %zu bytes overflow size_t", ncap,
                       elem);
    void *n = dq__alloc(ctx, bytes);
    if (!n)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu bytes for %zu elements", bytes, ncap);
    if (*cap)
        memcpy(n, *arr, *cap * elem);
    dq__free(ctx, *arr);
    *arr = n;
    *cap = ncap;
    return DQ_OK;
}

static dq_status parse_dtype(cursor *c, int32_t *dtype)
{
    char *s;
    dq_status st = parse_string(c, &s);
    if (st != DQ_OK)
        return st;
    st = DQ_ERR_FORMAT;
    for (int32_t d = 0; d < DQ__ST_N_DTYPES; d++)
        if (strcmp(s, dtypes[d].name) == 0) {
            *dtype = d;
            st = DQ_OK;
        }
    if (st != DQ_OK)
        st = JSON_FAIL(c, "unknown dtype \"%.64s\"", s);
    dq__free(c->ctx, s);
    return st;
}

static dq_status parse_shape(cursor *c, dq__st_tensor *t)
{
    if (!accept(c, '['))
        return JSON_FAIL(c, "tensor '%s': expected '[' of shape", t->name);
    t->ndim = 0;
    if (accept(c, ']'))
        return DQ_OK;
    do {
        uint64_t v;
        if (t->ndim == DQ__ST_MAX_DIMS)
            return JSON_FAIL(c, "tensor '%s': more than %d dimensions", t->name,
                             DQ__ST_MAX_DIMS);
        if (!parse_uint(c, INT64_MAX, &v))
            return JSON_FAIL(c, "tensor '%s': shape[%d] is not an integer in [0, 2^63)",
                             t->name, (int)t->ndim);
        t->shape[t->ndim++] = (int64_t)v;
    } while (accept(c, ','));
    return accept(c, ']') ? DQ_OK : JSON_FAIL(c, "tensor '%s': expected ']' of shape", t->name);
}

static dq_status parse_offsets(cursor *c, dq__st_tensor *t)
{
    uint64_t b, e;
    if (!accept(c, '[') || !parse_uint(c, SIZE_MAX, &b) || !accept(c, ',') ||
        !parse_uint(c, SIZE_MAX, &e) || !accept(c, ']'))
        return JSON_FAIL(c, "tensor '%s': data_offsets is not [begin, end]", t->name);
    if (b > e)
        return JSON_FAIL(c, "tensor '%s': data_offsets begin %llu > end %llu", t->name,
                         (unsigned long long)b, (unsigned long long)e);
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return DQ_OK;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]}: each field exactly once. */
static dq_status parse_tensor(cursor *c, dq__st_tensor *t)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "tensor '%s': expected '{'", t->name);
    bool seen[3] = {false, false, false};
    dq_status st = DQ_OK;
    do {
        char *field;
        if ((st = parse_string(c, &field)) != DQ_OK)
            return st;
        int which = strcmp(field, "dtype") == 0          ? 0
                    : strcmp(field, "shape") == 0        ? 1
                    : strcmp(field, "data_offsets") == 0 ? 2
                                                         : -1;
        dq__free(c->ctx, field);
        if (which < 0 || seen[which] || !accept(c, ':'))
            return JSON_FAIL(c, "tensor '%s': %s", t->name,
                             which < 0      ? "unknown field"
                             : seen[which] ? "repeated field"
                                           : "expected ':'");
        seen[which] = true;
        st = which == 0 ? parse_dtype(c, &t->dtype)
             : which == 1 ? parse_shape(c, t)
                          : parse_offsets(c, t);
        if (st != DQ_OK)
            return st;
    } while (accept(c, ','));
    if (!accept(c, '}'))
        return JSON_FAIL(c, "tensor '%s': expected '}'", t->name);
    if (!seen[0] || !seen[1] || !seen[2])
        return JSON_FAIL(c, "tensor '%s': no %s", t->name,
                         !seen[0] ? "dtype" : !seen[1] ? "shape" : "data_offsets");
    return DQ_OK;
}

typedef struct parse_state {
    dq__st_file f;
    size_t cap_tensors, cap_meta;
} parse_state;

static dq_status parse_metadata(cursor *c, parse_state *ps)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "__metadata__: expected '{'");
    if (accept(c, '}'))
        return DQ_OK;
    do {
        dq_status st = dq__st_grow(c->ctx, (void **)&ps->f.meta, &ps->cap_meta, sizeof(dq__st_meta),
                            ps->f.n_meta + 1);
        if (st != DQ_OK)
            return st;
        dq__st_meta *m = &ps->f.meta[ps->f.n_meta];
        m->key = m->value = NULL;
        if ((st = parse_string(c, &m->key)) != DQ_OK)
            return st;
        ps->f.n_meta++;
        if (!accept(c, ':'))
            return JSON_FAIL(c, "metadata '%s': expected ':'", m->key);
        if ((st = parse_string(c, &m->value)) != DQ_OK)
            return st;
    } while (accept(c, ','));
    return accept(c, '}') ? DQ_OK : JSON_FAIL(c, "__metadata__: expected '}'");
}

static dq_status parse_header(cursor *c, parse_state *ps)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "expected '{'");
    bool seen_meta = false;
    if (!accept(c, '}')) {
        do {
            char *key;
            dq_status st = parse_string(c, &key);
            if (st != DQ_OK)
                return st;
            if (strcmp(key, "__metadata__") == 0) {
                dq__free(c->ctx, key);
                if (seen_meta || !accept(c, ':'))
                    return JSON_FAIL(c, "%s", seen_meta ? "second __metadata__"
                                                        : "__metadata__: expected ':'");
                seen_meta = true;
                st = parse_metadata(c, ps);
            } else {
                st = dq__st_grow(c->ctx, (void **)&ps->f.tensors, &ps->cap_tensors,
                          sizeof(dq__st_tensor), ps->f.n_tensors + 1);
                if (st != DQ_OK) {
                    dq__free(c->ctx, key);
                    return st;
                }
                dq__st_tensor *t = &ps->f.tensors[ps->f.n_tensors++];
                memset(t, 0, sizeof *t);
                t->name = key;
                if (key[0] == 0 || !accept(c, ':'))
                    return JSON_FAIL(c, "%s", key[0] == 0 ? "empty tensor name"
                                                          : "expected ':' after a tensor name");
                st = parse_tensor(c, t);
            }
            if (st != DQ_OK)
                return st;
        } while (accept(c, ','));
        if (!accept(c, '}'))
            return JSON_FAIL(c, "expected ',' or '}'");
    }
    skip_ws(c); /* writers pad the header with spaces */
    return c->p == c->end ? DQ_OK : JSON_FAIL(c, "bytes after the JSON object");
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const dq__st_tensor *)a)->name, ((const dq__st_tensor *)b)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
    return strcmp(((const dq__st_meta *)a)->key, ((const dq__st_meta *)b)->key);
}

static int cmp_range(const void *a, const void *b)
{
    const dq__st_tensor *x = *(const dq__st_tensor *const *)a;
    const dq__st_tensor *y = *(const dq__st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Byte counts match dtype and shape; names and keys are unique; the tensors tile the data
 * section exactly, in offset order, without gaps or overlaps. */
static dq_status validate(const dq_context *ctx, dq__st_file *f)
{
    for (size_t i = 0; i < f->n_tensors; i++) {
        dq__st_tensor *t = &f->tensors[i];
        size_t bytes = dq__st_dtype_size(t->dtype);
        /* A zero anywhere in the shape means no data, whatever the other dimensions. */
        for (int32_t d = 0; d < t->ndim; d++)
            if (t->shape[d] == 0)
                bytes = 0;
        for (int32_t d = 0; d < t->ndim && bytes != 0; d++)
            if ((uint64_t)t->shape[d] > SIZE_MAX ||
                !dq__mul_size(bytes, (size_t)t->shape[d], &bytes))
                return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor '%s': shape overflows size_t at "
                               "dimension %d", t->name, (int)d);
        if (t->end - t->begin != bytes)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor '%s': data_offsets span %zu bytes, dtype "
                           "%s and shape need %zu", t->name, t->end - t->begin,
                           dq__st_dtype_name(t->dtype), bytes);
        if (t->end > f->data_size)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor '%s': data ends at %zu, past the %zu "
                           "data bytes", t->name, t->end, f->data_size);
    }
    if (f->n_tensors > 1)
        qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor name '%s' appears twice",
                           f->tensors[i].name);
    if (f->n_meta > 1)
        qsort(f->meta, f->n_meta, sizeof *f->meta, cmp_meta_key);
    for (size_t i = 1; i < f->n_meta; i++)
        if (strcmp(f->meta[i - 1].key, f->meta[i].key) == 0)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "metadata key '%s' appears twice", f->meta[i].key);

    if (f->n_tensors == 0)
        return f->data_size == 0 ? DQ_OK
                                 : DQ_FAIL(ctx, DQ_ERR_FORMAT, "%zu data bytes but no tensor",
                                           f->data_size);
    const dq__st_tensor **order = dq__alloc(ctx, f->n_tensors * sizeof *order);
    if (!order)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu tensors", f->n_tensors);
    for (size_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, cmp_range);
    size_t pos = 0;
    dq_status st = DQ_OK;
    for (size_t i = 0; i < f->n_tensors && st == DQ_OK; i++) {
        if (order[i]->begin != pos)
            st = DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor '%s' begins at %zu, expected %zu (gap or "
                         "overlap)", order[i]->name, order[i]->begin, pos);
        pos = order[i]->end;
    }
    if (st == DQ_OK && pos != f->data_size)
        st = DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensors end at %zu of %zu data bytes", pos,
                     f->data_size);
    dq__free(ctx, order);
    return st;
}

void dq__st_clear(const dq_context *ctx, dq__st_file *f)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        dq__free(ctx, f->tensors[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        dq__free(ctx, f->meta[i].key);
        dq__free(ctx, f->meta[i].value);
    }
    dq__free(ctx, f->tensors);
    dq__free(ctx, f->meta);
    memset(f, 0, sizeof *f);
}

dq_status dq__st_parse(const dq_context *ctx, const uint8_t *buf, size_t size,
                       uint64_t max_header, dq__st_file *out)
{
    memset(out, 0, sizeof *out);
    if (size < 8)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "%zu bytes, shorter than the 8-byte header length",
                       size);
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = (n << 8) | buf[k];
    if (max_header > DQ__ST_MAX_HEADER)
        max_header = DQ__ST_MAX_HEADER;
    if (n < 2 || n > max_header || n > size - 8)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "header length %llu outside [2, %llu] (limit %llu, "
                       "%zu bytes after the length)", (unsigned long long)n,
                       (unsigned long long)(max_header < size - 8 ? max_header : size - 8),
                       (unsigned long long)max_header, size - 8);
    parse_state ps;
    memset(&ps, 0, sizeof ps);
    cursor c = {ctx, buf + 8, buf + 8 + n, buf + 8};
    ps.f.data = buf + 8 + n;
    ps.f.data_size = size - 8 - (size_t)n;
    dq_status st = parse_header(&c, &ps);
    if (st == DQ_OK)
        st = validate(ctx, &ps.f);
    if (st != DQ_OK) {
        dq__st_clear(ctx, &ps.f);
        return st;
    }
    *out = ps.f;
    return DQ_OK;
}

const dq__st_tensor *dq__st_find(const dq__st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *dq__st_meta_find(const dq__st_file *f, const char *key)
{
    size_t lo = 0, hi = f->n_meta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->meta[mid].key, key);
        if (c == 0)
            return f->meta[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- writer ---- */

/* Appends to a buffer that may be NULL (size counting only). */
typedef struct sink {
    uint8_t *buf;
    size_t pos;
} sink;

static void put(sink *s, const void *p, size_t n)
{
    if (s->buf && n) /* empty tensors have no bytes pointer */
        memcpy(s->buf + s->pos, p, n);
    s->pos += n;
}

static void put_str(sink *s, const char *str)
{
    put(s, str, strlen(str));
}

/* A JSON string; inputs passed dq__st_text_ok, so only quote and backslash need escapes. */
static void put_json_string(sink *s, const char *str)
{
    put(s, "\"", 1);
    for (const char *p = str; *p; p++) {
        if (*p == '"' || *p == '\\')
            put(s, "\\", 1);
        put(s, p, 1);
    }
    put(s, "\"", 1);
}

static void put_u64(sink *s, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0)
        put(s, &tmp[--n], 1);
}

/* Writing order: 8-byte elements first, then 4, 2, 1, so that every tensor starts at a
 * multiple of its element size (the header is padded to a multiple of 8). */
static void emit(const dq__st_entry *e, size_t n, const dq__st_meta *meta, size_t n_meta,
                 sink *s, size_t header_len, bool data)
{
    static const size_t sizes[4] = {8, 4, 2, 1};
    if (!data) {
        put(s, "{", 1);
        put_json_string(s, "__metadata__");
        put(s, ":{", 2);
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                put(s, ",", 1);
            put_json_string(s, meta[i].key);
            put(s, ":", 1);
            put_json_string(s, meta[i].value);
        }
        put(s, "}", 1);
    }
    size_t off = 0;
    for (int pass = 0; pass < 4; pass++)
        for (size_t i = 0; i < n; i++) {
            if (dq__st_dtype_size(e[i].dtype) != sizes[pass])
                continue;
            if (data) {
                put(s, e[i].bytes, e[i].nbytes);
                continue;
            }
            put(s, ",", 1);
            put_json_string(s, e[i].name);
            put_str(s, ":{\"dtype\":");
            put_json_string(s, dq__st_dtype_name(e[i].dtype));
            put_str(s, ",\"shape\":[");
            for (int32_t d = 0; d < e[i].ndim; d++) {
                if (d)
                    put(s, ",", 1);
                put_u64(s, (uint64_t)e[i].shape[d]);
            }
            put_str(s, "],\"data_offsets\":[");
            put_u64(s, off);
            put(s, ",", 1);
            off += e[i].nbytes;
            put_u64(s, off);
            put_str(s, "]}");
        }
    if (!data) {
        put(s, "}", 1);
        while (s->pos < header_len)
            put(s, " ", 1);
    }
}

dq_status dq__st_write(const dq_context *ctx, const dq__st_entry *entries, size_t n,
                       const dq__st_meta *meta, size_t n_meta, uint8_t *buf, size_t cap,
                       size_t *needed)
{
    sink count = {NULL, 0};
    emit(entries, n, meta, n_meta, &count, 0, false);
    size_t header = (count.pos + 7) / 8 * 8, total = 8 + header;
    for (size_t i = 0; i < n; i++)
        if (!dq__add_size(total, entries[i].nbytes, &total))
            return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "file size overflows size_t at tensor '%s'",
                           entries[i].name);
    *needed = total;
    if (!buf)
        return DQ_OK;
    if (cap < total)
        return DQ_FAIL(ctx, DQ_ERR_BUFFER, "cap %zu < %zu bytes needed", cap, total);
    for (int k = 0; k < 8; k++)
        buf[k] = (uint8_t)((uint64_t)header >> (8 * k));
    sink s = {buf + 8, 0};
    emit(entries, n, meta, n_meta, &s, header, false);
    emit(entries, n, meta, n_meta, &s, header, true);
    return DQ_OK;
}
