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

/* The header is parsed twice over the same bytes. The first pass checks everything that does
 * not need the whole table (syntax, text, each tensor's dtype, shape and offsets against the
 * data size) and counts what the table holds; after one allocation of exactly that size the
 * second pass fills it. Names, keys and values are decoded into one string buffer (never longer
 * than the header); metadata pairs are two 32-bit offsets into it. */
typedef struct cursor {
    const dq_context *ctx;
    const uint8_t *p, *end;
    const uint8_t *start; /* first byte of the JSON header, for offsets in messages */
    bool fill;            /* second pass: store into f */
    dq__st_file *f;
    uint64_t data_size;
    size_t n_tensors, n_meta, n_dims, n_strs; /* counted (first pass) or filled (second) */
    size_t cap_dims; /* second pass: what the first counted; more means the bytes changed */
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

/* dq__st_text_ok fed one decoded byte at a time. */
typedef struct utf8_state {
    uint32_t cp, min;
    int need; /* continuation bytes still expected */
} utf8_state;

static bool utf8_feed(utf8_state *u, uint8_t b)
{
    if (u->need == 0) {
        if (b < 0x20)
            return false;
        if (b < 0x80)
            return true;
        if ((b & 0xE0) == 0xC0)
            u->need = 1, u->cp = b & 0x1F, u->min = 0x80;
        else if ((b & 0xF0) == 0xE0)
            u->need = 2, u->cp = b & 0x0F, u->min = 0x800;
        else if ((b & 0xF8) == 0xF0)
            u->need = 3, u->cp = b & 0x07, u->min = 0x10000;
        else
            return false;
        return true;
    }
    if ((b & 0xC0) != 0x80)
        return false;
    u->cp = (u->cp << 6) | (b & 0x3F);
    if (--u->need == 0)
        return u->cp >= u->min && u->cp <= 0x10FFFF && !(u->cp >= 0xD800 && u->cp <= 0xDFFF);
    return true;
}

/* Parses a JSON string, decoding it into dst (its first cap bytes; dst may be NULL with cap
 * 0); *len receives the decoded length, whether it fit or not. No NUL is written. Escapes are
 * decoded (the result is never longer than the source), NUL and lone surrogates are rejected,
 * and the result must be UTF-8 without control characters. */
static dq_status parse_string(cursor *c, uint8_t *dst, size_t cap, size_t *len)
{
    *len = 0;
    if (!accept(c, '"'))
        return JSON_FAIL(c, "expected a string");
    utf8_state u = {0, 0, 0};
    size_t n = 0;
    for (;;) {
        if (u.need == 0) { /* a run of plain ASCII is copied at once */
            const uint8_t *q = c->p;
            while (q < c->end && *q >= 0x20 && *q < 0x80 && *q != '"' && *q != '\\')
                q++;
            const size_t run = (size_t)(q - c->p);
            if (run) {
                if (n < cap)
                    memcpy(dst + n, c->p, cap - n < run ? cap - n : run);
                n += run;
                c->p = q;
            }
        }
        if (c->p >= c->end)
            return JSON_FAIL(c, "unterminated string");
        uint8_t ch = *c->p, buf[4];
        size_t k = 1;
        if (ch == '"') {
            c->p++;
            break;
        }
        if (ch < 0x20)
            return JSON_FAIL(c, "control character 0x%02x in a string", (unsigned)ch);
        if (ch != '\\') {
            c->p++;
            buf[0] = ch;
        } else {
            if (c->end - c->p < 2)
                return JSON_FAIL(c, "unterminated string");
            ch = c->p[1];
            c->p += 2;
            uint32_t cp, lo;
            switch (ch) {
            case '"': buf[0] = '"'; break;
            case '\\': buf[0] = '\\'; break;
            case '/': buf[0] = '/'; break;
            case 'b': buf[0] = '\b'; break;
            case 'f': buf[0] = '\f'; break;
            case 'n': buf[0] = '\n'; break;
            case 'r': buf[0] = '\r'; break;
            case 't': buf[0] = '\t'; break;
            case 'u':
                if (!read_hex4(c, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                    return JSON_FAIL(c, "bad \\u escape (NUL, lone low surrogate or not hex)");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u')
                        return JSON_FAIL(c, "high surrogate without a low one");
                    c->p += 2;
                    if (!read_hex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return JSON_FAIL(c, "high surrogate without a low one");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                k = put_utf8(buf, cp);
                break;
            default:
                return JSON_FAIL(c, "unknown escape '\\%c'", ch >= 0x20 && ch < 0x7f ? ch : '?');
            }
        }
        /* Control characters may arrive escaped; they are not allowed in names or values. */
        for (size_t i = 0; i < k; i++) {
            if (!utf8_feed(&u, buf[i]))
                return JSON_FAIL(c, "string is not UTF-8 text without control characters");
            if (n < cap)
                dst[n] = buf[i];
            n++;
        }
    }
    if (u.need != 0)
        return JSON_FAIL(c, "string is not UTF-8 text without control characters");
    *len = n;
    return DQ_OK;
}

/* A string that is kept: decoded into the string buffer (second pass) or only counted; *off
 * receives its offset there. */
static dq_status parse_kept_string(cursor *c, size_t *off)
{
    *off = c->n_strs;
    size_t len;
    uint8_t *dst = c->fill ? (uint8_t *)c->f->strs + c->n_strs : NULL;
    const size_t cap = c->fill ? c->f->strs_size - c->n_strs : 0;
    dq_status st = parse_string(c, dst, cap, &len);
    if (st != DQ_OK)
        return st;
    if (c->fill) {
        if (len >= cap)
            return JSON_FAIL(c, "the header changed while it was read");
        dst[len] = 0; /* the first pass counted len + 1 bytes for it */
    }
    c->n_strs += len + 1;
    return DQ_OK;
}

/* A string compared with known words: kept in word when at most 15 bytes long (NUL-terminated),
 * else word is "". */
static dq_status parse_word(cursor *c, char word[16])
{
    size_t len;
    dq_status st = parse_string(c, (uint8_t *)word, 15, &len);
    word[len < 16 ? len : 0] = 0;
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

static dq_status parse_dtype(cursor *c, const char *name, int32_t *dtype)
{
    char word[16];
    dq_status st = parse_word(c, word);
    if (st != DQ_OK)
        return st;
    for (int32_t d = 0; d < DQ__ST_N_DTYPES; d++)
        if (strcmp(word, dtypes[d].name) == 0) {
            *dtype = d;
            return DQ_OK;
        }
    return JSON_FAIL(c, "tensor '%s': unknown dtype \"%s\"", name, word);
}

static dq_status parse_shape(cursor *c, const char *name, int32_t *ndim, int64_t *shape)
{
    if (!accept(c, '['))
        return JSON_FAIL(c, "tensor '%s': expected '[' of shape", name);
    *ndim = 0;
    if (accept(c, ']'))
        return DQ_OK;
    do {
        uint64_t v;
        if (*ndim == DQ__ST_MAX_DIMS)
            return JSON_FAIL(c, "tensor '%s': more than %d dimensions", name, DQ__ST_MAX_DIMS);
        if (!parse_uint(c, INT64_MAX, &v))
            return JSON_FAIL(c, "tensor '%s': shape[%d] is not an integer in [0, 2^63)", name,
                             (int)*ndim);
        shape[(*ndim)++] = (int64_t)v;
    } while (accept(c, ','));
    return accept(c, ']') ? DQ_OK : JSON_FAIL(c, "tensor '%s': expected ']' of shape", name);
}

static dq_status parse_offsets(cursor *c, const char *name, dq__st_tensor *t)
{
    uint64_t b, e;
    if (!accept(c, '[') || !parse_uint(c, SIZE_MAX, &b) || !accept(c, ',') ||
        !parse_uint(c, SIZE_MAX, &e) || !accept(c, ']'))
        return JSON_FAIL(c, "tensor '%s': data_offsets is not [begin, end]", name);
    if (b > e)
        return JSON_FAIL(c, "tensor '%s': data_offsets begin %llu > end %llu", name,
                         (unsigned long long)b, (unsigned long long)e);
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return DQ_OK;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]}: each field exactly once; the byte
 * count matches dtype and shape and the range lies in the data section. */
static dq_status parse_tensor(cursor *c, const char *name, dq__st_tensor *t, int64_t *shape)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "tensor '%s': expected '{'", name);
    bool seen[3] = {false, false, false};
    dq_status st = DQ_OK;
    do {
        char field[16];
        if ((st = parse_word(c, field)) != DQ_OK)
            return st;
        int which = strcmp(field, "dtype") == 0          ? 0
                    : strcmp(field, "shape") == 0        ? 1
                    : strcmp(field, "data_offsets") == 0 ? 2
                                                         : -1;
        if (which < 0 || seen[which] || !accept(c, ':'))
            return JSON_FAIL(c, "tensor '%s': %s", name,
                             which < 0      ? "unknown field"
                             : seen[which] ? "repeated field"
                                           : "expected ':'");
        seen[which] = true;
        st = which == 0 ? parse_dtype(c, name, &t->dtype)
             : which == 1 ? parse_shape(c, name, &t->ndim, shape)
                          : parse_offsets(c, name, t);
        if (st != DQ_OK)
            return st;
    } while (accept(c, ','));
    if (!accept(c, '}'))
        return JSON_FAIL(c, "tensor '%s': expected '}'", name);
    if (!seen[0] || !seen[1] || !seen[2])
        return JSON_FAIL(c, "tensor '%s': no %s", name,
                         !seen[0] ? "dtype" : !seen[1] ? "shape" : "data_offsets");
    size_t bytes = dq__st_dtype_size(t->dtype);
    /* A zero anywhere in the shape means no data, whatever the other dimensions. */
    for (int32_t d = 0; d < t->ndim; d++)
        if (shape[d] == 0)
            bytes = 0;
    for (int32_t d = 0; d < t->ndim && bytes != 0; d++)
        if ((uint64_t)shape[d] > SIZE_MAX || !dq__mul_size(bytes, (size_t)shape[d], &bytes))
            return DQ_FAIL(c->ctx, DQ_ERR_FORMAT, "tensor '%s': shape overflows size_t at "
                           "dimension %d", name, (int)d);
    if (t->end - t->begin != bytes)
        return DQ_FAIL(c->ctx, DQ_ERR_FORMAT, "tensor '%s': data_offsets span %zu bytes, dtype "
                       "%s and shape need %zu", name, t->end - t->begin,
                       dq__st_dtype_name(t->dtype), bytes);
    if (t->end > c->data_size)
        return DQ_FAIL(c->ctx, DQ_ERR_FORMAT, "tensor '%s': data ends at %zu, past the %llu "
                       "data bytes", name, t->end, (unsigned long long)c->data_size);
    return DQ_OK;
}

static dq_status parse_metadata(cursor *c)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "__metadata__: expected '{'");
    if (accept(c, '}'))
        return DQ_OK;
    do {
        size_t key, value;
        dq_status st = parse_kept_string(c, &key);
        if (st != DQ_OK)
            return st;
        if (!accept(c, ':'))
            return JSON_FAIL(c, "metadata: expected ':' after a key");
        if ((st = parse_kept_string(c, &value)) != DQ_OK)
            return st;
        if (c->fill) {
            if (c->n_meta >= c->f->n_meta)
                return JSON_FAIL(c, "the header changed while it was read");
            c->f->meta[c->n_meta] = (dq__st_pair){(uint32_t)key, (uint32_t)value};
        }
        c->n_meta++;
    } while (accept(c, ','));
    return accept(c, '}') ? DQ_OK : JSON_FAIL(c, "__metadata__: expected '}'");
}

static dq_status parse_top(cursor *c)
{
    if (!accept(c, '{'))
        return JSON_FAIL(c, "expected '{'");
    bool seen_meta = false;
    if (!accept(c, '}')) {
        do {
            /* A tensor name or "__metadata__": decoded where a name is kept (the string buffer
             * has room for "__metadata__" after the last name), or into a short copy for
             * messages in the first pass. */
            char first[64];
            size_t len, off = c->n_strs;
            uint8_t *dst = c->fill ? (uint8_t *)c->f->strs + off : (uint8_t *)first;
            const size_t cap = c->fill ? c->f->strs_size - off : sizeof first - 1;
            dq_status st = parse_string(c, dst, cap, &len);
            if (st != DQ_OK)
                return st;
            if (len == 12 && memcmp(dst, "__metadata__", 12) == 0) {
                if (seen_meta || !accept(c, ':'))
                    return JSON_FAIL(c, "%s", seen_meta ? "second __metadata__"
                                                        : "__metadata__: expected ':'");
                seen_meta = true;
                st = parse_metadata(c);
            } else {
                if (c->fill && len >= cap)
                    return JSON_FAIL(c, "the header changed while it was read");
                dst[len < cap ? len : cap] = 0;
                const char *name = (const char *)dst;
                c->n_strs += len + 1;
                if (len == 0 || !accept(c, ':'))
                    return JSON_FAIL(c, "%s", len == 0 ? "empty tensor name"
                                                       : "expected ':' after a tensor name");
                dq__st_tensor t;
                int64_t shape[DQ__ST_MAX_DIMS];
                memset(&t, 0, sizeof t);
                if ((st = parse_tensor(c, name, &t, shape)) != DQ_OK)
                    return st;
                if (c->fill) {
                    if (c->n_tensors >= c->f->n_tensors || (size_t)t.ndim > c->cap_dims - c->n_dims)
                        return JSON_FAIL(c, "the header changed while it was read");
                    int64_t *dims = c->f->dims + c->n_dims;
                    for (int32_t d = 0; d < t.ndim; d++)
                        dims[d] = shape[d];
                    t.name = name;
                    t.shape = dims;
                    c->f->tensors[c->n_tensors] = t;
                }
                c->n_dims += (size_t)t.ndim;
                c->n_tensors++;
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

/* ---- sorting the table: in place, no allocation, O(n log n) on any input ---- */

typedef int (*cmp_fn)(const void *ctx, const void *a, const void *b);

static void swap_rec(uint8_t *a, uint8_t *b, size_t size)
{
    uint8_t t[64]; /* records are at most 64 bytes */
    memcpy(t, a, size);
    memcpy(a, b, size);
    memcpy(b, t, size);
}

static void sift_down(uint8_t *base, size_t size, size_t root, size_t n, cmp_fn cmp,
                      const void *ctx)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && cmp(ctx, base + child * size, base + (child + 1) * size) < 0)
            child++;
        if (cmp(ctx, base + root * size, base + child * size) >= 0)
            return;
        swap_rec(base + root * size, base + child * size, size);
        root = child;
    }
}

/* Introsort: quicksort (median of three, Hoare partition), heapsort once depth levels are used
 * up, insertion sort below 16 records. */
static void sort_part(uint8_t *base, size_t n, size_t size, cmp_fn cmp, const void *ctx,
                      int depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            for (size_t i = n / 2; i-- > 0;)
                sift_down(base, size, i, n, cmp, ctx);
            for (size_t end = n; end-- > 1;) {
                swap_rec(base, base + end * size, size);
                sift_down(base, size, 0, end, cmp, ctx);
            }
            return;
        }
        uint8_t *a = base, *m = base + n / 2 * size, *z = base + (n - 1) * size;
        if (cmp(ctx, m, a) < 0)
            swap_rec(m, a, size);
        if (cmp(ctx, z, m) < 0) {
            swap_rec(z, m, size);
            if (cmp(ctx, m, a) < 0)
                swap_rec(m, a, size);
        }
        swap_rec(a, m, size); /* the pivot goes first */
        size_t i = 0, j = n;
        for (;;) {
            do
                i++;
            while (i < n && cmp(ctx, base + i * size, base) < 0);
            do
                j--;
            while (cmp(ctx, base + j * size, base) > 0);
            if (i >= j)
                break;
            swap_rec(base + i * size, base + j * size, size);
        }
        swap_rec(base, base + j * size, size);
        /* Recurse into the smaller side, loop on the larger: O(log n) stack. */
        const size_t nl = j, nr = n - j - 1;
        if (nl < nr) {
            sort_part(base, nl, size, cmp, ctx, depth);
            base += (j + 1) * size;
            n = nr;
        } else {
            sort_part(base + (j + 1) * size, nr, size, cmp, ctx, depth);
            n = nl;
        }
    }
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && cmp(ctx, base + (j - 1) * size, base + j * size) > 0; j--)
            swap_rec(base + (j - 1) * size, base + j * size, size);
}

static void sort_records(void *base, size_t n, size_t size, cmp_fn cmp, const void *ctx)
{
    uint8_t *b = base;
    size_t i = 1;
    while (i < n && cmp(ctx, b + (i - 1) * size, b + i * size) <= 0)
        i++;
    if (i >= n)
        return; /* already in order (common: writers that sort) */
    int depth = 0;
    for (size_t k = n; k > 1; k >>= 1)
        depth += 2;
    sort_part(b, n, size, cmp, ctx, depth);
}

static int cmp_tensor_name(const void *ctx, const void *a, const void *b)
{
    (void)ctx;
    return strcmp(((const dq__st_tensor *)a)->name, ((const dq__st_tensor *)b)->name);
}

static int cmp_tensor_range(const void *ctx, const void *a, const void *b)
{
    (void)ctx;
    const dq__st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_meta_key(const void *ctx, const void *a, const void *b)
{
    const char *strs = ctx;
    return strcmp(strs + ((const dq__st_pair *)a)->key, strs + ((const dq__st_pair *)b)->key);
}

/* Names and keys are unique; the tensors tile the data section exactly, in offset order,
 * without gaps or overlaps. Leaves tensors sorted by name and metadata by key. */
static dq_status validate(const dq_context *ctx, dq__st_file *f)
{
    if (f->n_tensors == 0 && f->data_size != 0)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "%zu data bytes but no tensor", f->data_size);
    sort_records(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_range, NULL);
    size_t pos = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        if (f->tensors[i].begin != pos)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor '%s' begins at %zu, expected %zu (gap or "
                           "overlap)", f->tensors[i].name, f->tensors[i].begin, pos);
        pos = f->tensors[i].end;
    }
    if (pos != f->data_size)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensors end at %zu of %zu data bytes", pos,
                       f->data_size);
    sort_records(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name, NULL);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "tensor name '%s' appears twice",
                           f->tensors[i].name);
    sort_records(f->meta, f->n_meta, sizeof *f->meta, cmp_meta_key, f->strs);
    for (size_t i = 1; i < f->n_meta; i++)
        if (strcmp(f->strs + f->meta[i - 1].key, f->strs + f->meta[i].key) == 0)
            return DQ_FAIL(ctx, DQ_ERR_FORMAT, "metadata key '%s' appears twice",
                           f->strs + f->meta[i].key);
    return DQ_OK;
}

void dq__st_clear(const dq_context *ctx, dq__st_file *f)
{
    dq__free(ctx, f->block);
    memset(f, 0, sizeof *f);
}

dq_status dq__st_header_length(const dq_context *ctx, const uint8_t *head, uint64_t size,
                               uint64_t max_header, uint64_t *n)
{
    *n = 0;
    if (size < 8)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "%llu bytes, shorter than the 8-byte header length",
                       (unsigned long long)size);
    uint64_t len = 0;
    for (int k = 7; k >= 0; k--)
        len = (len << 8) | head[k];
    if (max_header > DQ__ST_MAX_HEADER)
        max_header = DQ__ST_MAX_HEADER;
    if (len < 2 || len > max_header || len > size - 8)
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "header length %llu outside [2, %llu] (limit %llu, "
                       "%llu bytes after the length)", (unsigned long long)len,
                       (unsigned long long)(max_header < size - 8 ? max_header : size - 8),
                       (unsigned long long)max_header, (unsigned long long)(size - 8));
    *n = len;
    return DQ_OK;
}

dq_status dq__st_parse_header(const dq_context *ctx, const uint8_t *header, size_t n,
                              uint64_t data_size, uint64_t max_alloc, dq__st_file *out)
{
    memset(out, 0, sizeof *out);
    if (n > DQ__ST_MAX_HEADER || data_size > SIZE_MAX) /* offsets into strs fit 32 bits */
        return DQ_FAIL(ctx, DQ_ERR_FORMAT, "header of %zu bytes, data section of %llu bytes",
                       n, (unsigned long long)data_size);
    cursor c = {ctx, header, header + n, header, false, out, data_size, 0, 0, 0, 0, 0};
    dq_status st = parse_top(&c);
    if (st != DQ_OK)
        return st;
    /* One block: tensors, their dimensions, metadata pairs, then the strings (16 bytes spare
     * for "__metadata__" decoded after the last name). Every count is below n. */
    const size_t bt = c.n_tensors * sizeof(dq__st_tensor), bd = c.n_dims * sizeof(int64_t);
    const size_t bm = c.n_meta * sizeof(dq__st_pair), bs = c.n_strs + 16;
    const size_t total = bt + bd + bm + bs;
    if (total > max_alloc)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "the header's table (%zu tensors, %zu metadata pairs, "
                       "%zu string bytes) needs %zu bytes, more than the %llu allowed "
                       "(dq_file_params.max_alloc_bytes)", c.n_tensors, c.n_meta, c.n_strs,
                       total, (unsigned long long)max_alloc);
    uint8_t *block = dq__alloc(ctx, total);
    if (!block)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "%zu bytes for the header's table", total);
    dq__st_file *f = out;
    f->block = block;
    f->alloc_bytes = total;
    f->tensors = (dq__st_tensor *)(void *)block;
    f->dims = (int64_t *)(void *)(block + bt);
    f->meta = (dq__st_pair *)(void *)(block + bt + bd);
    f->strs = (char *)(block + bt + bd + bm);
    f->strs_size = bs;
    f->data_size = (size_t)data_size;
    f->n_tensors = c.n_tensors; /* the second pass stores at most these */
    f->n_meta = c.n_meta;
    cursor fill = {ctx, header, header + n, header, true, f, data_size, 0, 0, 0, 0, c.n_dims};
    /* The same bytes again: the same result, now stored. */
    if ((st = parse_top(&fill)) == DQ_OK &&
        (fill.n_tensors != c.n_tensors || fill.n_meta != c.n_meta))
        st = DQ_FAIL(ctx, DQ_ERR_FORMAT, "the header changed while it was read");
    if (st == DQ_OK)
        st = validate(ctx, f);
    if (st != DQ_OK)
        dq__st_clear(ctx, f);
    return st;
}

dq_status dq__st_parse(const dq_context *ctx, const uint8_t *buf, size_t size,
                       uint64_t max_header, dq__st_file *out)
{
    memset(out, 0, sizeof *out);
    uint64_t n;
    dq_status st = dq__st_header_length(ctx, buf, size, max_header, &n);
    if (st == DQ_OK)
        st = dq__st_parse_header(ctx, buf + 8, (size_t)n, size - 8 - n, UINT64_MAX, out);
    if (st == DQ_OK)
        out->data = buf + 8 + n;
    return st;
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
        int c = strcmp(f->strs + f->meta[mid].key, key);
        if (c == 0)
            return f->strs + f->meta[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
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

/* Writing order (dq__st_order_size): 8-byte elements first, then 4, 2, 1, so that every tensor
 * starts at a multiple of its element size (the header is padded to a multiple of 8). */
static void emit(const dq__st_entry *e, size_t n, const dq__st_meta *meta, size_t n_meta,
                 sink *s, size_t header_len, bool data)
{
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
    for (int pass = 0; pass < DQ__ST_N_PASSES; pass++)
        for (size_t i = 0; i < n; i++) {
            if (dq__st_dtype_size(e[i].dtype) != dq__st_order_size(pass))
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

dq_status dq__st_write_head(const dq_context *ctx, const dq__st_entry *entries, size_t n,
                            const dq__st_meta *meta, size_t n_meta, uint8_t *buf, size_t cap,
                            size_t *head, size_t *total)
{
    sink count = {NULL, 0};
    emit(entries, n, meta, n_meta, &count, 0, false);
    size_t header = (count.pos + 7) / 8 * 8, sum = 8 + header;
    for (size_t i = 0; i < n; i++)
        if (!dq__add_size(sum, entries[i].nbytes, &sum))
            return DQ_FAIL(ctx, DQ_ERR_OVERFLOW, "file size overflows size_t at tensor '%s'",
                           entries[i].name);
    *head = 8 + header;
    *total = sum;
    if (!buf)
        return DQ_OK;
    if (cap < 8 + header)
        return DQ_FAIL(ctx, DQ_ERR_BUFFER, "cap %zu < %zu bytes needed", cap, 8 + header);
    for (int k = 0; k < 8; k++)
        buf[k] = (uint8_t)((uint64_t)header >> (8 * k));
    sink s = {buf + 8, 0};
    emit(entries, n, meta, n_meta, &s, header, false);
    return DQ_OK;
}

dq_status dq__st_write(const dq_context *ctx, const dq__st_entry *entries, size_t n,
                       const dq__st_meta *meta, size_t n_meta, uint8_t *buf, size_t cap,
                       size_t *needed)
{
    size_t head = 0, total = 0;
    dq_status st = dq__st_write_head(ctx, entries, n, meta, n_meta, NULL, 0, &head, &total);
    if (st != DQ_OK)
        return st;
    *needed = total;
    if (!buf)
        return DQ_OK;
    if (cap < total)
        return DQ_FAIL(ctx, DQ_ERR_BUFFER, "cap %zu < %zu bytes needed", cap, total);
    st = dq__st_write_head(ctx, entries, n, meta, n_meta, buf, cap, &head, &total);
    if (st != DQ_OK)
        return st;
    sink s = {buf + head, 0};
    emit(entries, n, meta, n_meta, &s, 0, true);
    return DQ_OK;
}
