/* Hugging Face tokenizer.json: BPE with merges and byte fallback, LLaMA-family normalizers,
 * pre-tokenizer and decoder (see hf_tokenizer.h). JSON is read with jansson. */
#include "hf_tokenizer.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Errors */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int fail(char *err, size_t err_len, int code, const char *fmt, ...)
{
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---------------------------------------------------------------------------------------- */
/* Growable buffers */

typedef struct bytes {
    char *p;
    size_t n, cap;
} bytes;

static int bytes_reserve(bytes *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->n)
        return -1;
    size_t need = b->n + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int bytes_add(bytes *b, const char *s, size_t n)
{
    if (bytes_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

typedef struct idvec {
    int32_t *p;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        if (cap > SIZE_MAX / sizeof *v->p)
            return -1;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return -1;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = id;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Hash tables: token text -> id, (left id, right id) -> merge */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ull;
    return key ^ (key >> 33);
}

typedef struct merge_slot {
    uint64_t key; /* (left << 32) | right, UINT64_MAX when empty */
    int32_t rank, id;
} merge_slot;

typedef enum { NORM_PREPEND, NORM_REPLACE } norm_kind;
typedef enum { DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } dec_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef struct norm_step {
    norm_kind kind;
    char *from, *to; /* PREPEND: to only */
} norm_step;

typedef struct dec_step {
    dec_kind kind;
    char *from, *to;        /* REPLACE; METASPACE: from = replacement */
    char *strip;            /* STRIP: the character */
    int32_t start, stop;    /* STRIP */
    prepend_scheme prepend; /* METASPACE */
} dec_step;

typedef struct added_token {
    int32_t id;
    int special, normalized;
    char *match; /* what is looked for: the content, normalized when normalized */
    size_t match_len;
} added_token;

struct hf_tokenizer {
    int32_t n_vocab; /* one past the largest id */
    char **text;     /* [n_vocab], NULL for an unused id */
    uint32_t *len;   /* [n_vocab] */
    uint8_t *special;
    int32_t *slots; /* text hash: ids, -1 when empty */
    size_t n_slots;
    merge_slot *merges;
    size_t n_merge_slots;
    int32_t byte_id[256]; /* <0xNN>, -1 when absent */
    int32_t unk, bos, eos;
    int byte_fallback, fuse_unk, ignore_merges;
    norm_step *norm;
    int32_t n_norm;
    int has_metaspace, metaspace_split;
    prepend_scheme metaspace_prepend;
    char *metaspace; /* replacement text */
    dec_step *dec;
    int32_t n_dec;
    added_token *added;
    int32_t n_added;
    uint8_t added_first[2][256]; /* [normalized][byte]: some added token starts with it */
};

static int32_t find_id(const hf_tokenizer *t, const char *s, size_t n)
{
    if (!t->slots)
        return -1;
    size_t mask = t->n_slots - 1;
    for (size_t i = (size_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = t->slots[i];
        if (id < 0)
            return -1;
        if (t->len[id] == n && memcmp(t->text[id], s, n) == 0)
            return id;
    }
}

/* Fills the text hash from t->text (every id that has a text). */
static int build_text_hash(hf_tokenizer *t, int32_t count)
{
    size_t n = 16;
    while (n < (size_t)count * 2)
        n *= 2;
    t->slots = malloc(n * sizeof *t->slots);
    if (!t->slots)
        return -1;
    memset(t->slots, 0xff, n * sizeof *t->slots);
    t->n_slots = n;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!t->text[id])
            continue;
        size_t i = (size_t)hash_bytes(t->text[id], t->len[id]) & (n - 1);
        while (t->slots[i] >= 0)
            i = (i + 1) & (n - 1);
        t->slots[i] = id;
    }
    return 0;
}

static const merge_slot *find_merge(const hf_tokenizer *t, int32_t a, int32_t b)
{
    if (!t->merges)
        return NULL;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->n_merge_slots - 1;
    for (size_t i = (size_t)hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (t->merges[i].key == key)
            return &t->merges[i];
        if (t->merges[i].key == UINT64_MAX)
            return NULL;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* UTF-8 */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

static int utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len((const unsigned char *)s + i, n - i);
        if (!l)
            return 0;
        i += l;
    }
    return 1;
}

/* Replaces every occurrence of from (non-empty) with to in s[0..n), appending to out. */
static int replace_all(bytes *out, const char *s, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    size_t i = 0;
    while (i < n) {
        if (n - i >= fl && memcmp(s + i, from, fl) == 0) {
            if (bytes_add(out, to, tl))
                return -1;
            i += fl;
        } else {
            if (bytes_add(out, s + i, 1))
                return -1;
            i++;
        }
    }
    return bytes_add(out, "", 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Loading */

typedef struct loader {
    const char *name; /* the file, for messages */
    char *err;
    size_t err_len;
} loader;

static void tokenizer_release(hf_tokenizer *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->text && i < t->n_vocab; i++)
        free(t->text[i]);
    free(t->text);
    free(t->len);
    free(t->special);
    free(t->slots);
    free(t->merges);
    for (int32_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].from);
        free(t->norm[i].to);
    }
    free(t->norm);
    for (int32_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].from);
        free(t->dec[i].to);
        free(t->dec[i].strip);
    }
    free(t->dec);
    free(t->metaspace);
    for (int32_t i = 0; i < t->n_added; i++)
        free(t->added[i].match);
    free(t->added);
    free(t);
}

void hf_tokenizer_free(hf_tokenizer *t)
{
    tokenizer_release(t);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

#define NOMEM(L) fail((L)->err, (L)->err_len, HF_ERR_NOMEM, "%s: out of memory", (L)->name)

/* A member of obj that must be a string; key path names it in messages. */
static int get_string(const loader *L, json_t *obj, const char *path, const char *key,
                      const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s.%s: missing", L->name, path, key);
    if (!json_is_string(v))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s.%s: expected a string", L->name,
                    path, key);
    *out = json_string_value(v);
    return HF_OK;
}

/* An optional boolean member (absent or null: def). */
static int get_bool(const loader *L, json_t *obj, const char *path, const char *key, int def,
                    int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return HF_OK;
    }
    if (!json_is_boolean(v))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s.%s: expected true or false",
                    L->name, path, key);
    *out = json_is_true(v);
    return HF_OK;
}

/* A Replace step's String pattern and content. */
static int get_replace(const loader *L, json_t *obj, const char *path, char **from, char **to)
{
    json_t *pat = json_object_get(obj, "pattern");
    if (!json_is_object(pat))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s.pattern: expected an object",
                    L->name, path);
    json_t *str = json_object_get(pat, "String");
    if (!json_is_string(str)) {
        const char *kind = json_object_iter_key(json_object_iter(pat));
        return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                    "%s: %s.pattern: unsupported pattern kind \"%s\" (supported: String)",
                    L->name, path, kind ? kind : "");
    }
    if (json_string_length(str) == 0)
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s.pattern.String: empty", L->name,
                    path);
    const char *content = NULL;
    int rc = get_string(L, obj, path, "content", &content);
    if (rc)
        return rc;
    *from = dup_str(json_string_value(str));
    *to = dup_str(content);
    if (!*from || !*to)
        return NOMEM(L);
    return HF_OK;
}

static int get_type(const loader *L, json_t *obj, const char *path, const char **type)
{
    if (!json_is_object(obj))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s: expected an object or null",
                    L->name, path);
    return get_string(L, obj, path, "type", type);
}

static int parse_normalizer_step(const loader *L, hf_tokenizer *t, json_t *obj,
                                 const char *path)
{
    const char *type = NULL;
    int rc = get_type(L, obj, path, &type);
    if (rc)
        return rc;
    norm_step *s = &t->norm[t->n_norm];
    memset(s, 0, sizeof *s);
    if (strcmp(type, "Prepend") == 0) {
        const char *p = NULL;
        if ((rc = get_string(L, obj, path, "prepend", &p)))
            return rc;
        s->kind = NORM_PREPEND;
        t->n_norm++;
        if (!(s->to = dup_str(p)))
            return NOMEM(L);
        return HF_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        s->kind = NORM_REPLACE;
        t->n_norm++;
        return get_replace(L, obj, path, &s->from, &s->to);
    }
    return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                "%s: %s.type: unsupported normalizer \"%s\" (supported: Prepend, Replace, "
                "Sequence of those)",
                L->name, path, type);
}

static int parse_normalizer(const loader *L, hf_tokenizer *t, json_t *root)
{
    json_t *n = json_object_get(root, "normalizer");
    if (!n || json_is_null(n))
        return HF_OK;
    const char *type;
    int rc = get_type(L, n, "normalizer", &type);
    if (rc)
        return rc;
    if (strcmp(type, "Sequence") != 0) {
        if (!(t->norm = calloc(1, sizeof *t->norm)))
            return NOMEM(L);
        return parse_normalizer_step(L, t, n, "normalizer");
    }
    json_t *list = json_object_get(n, "normalizers");
    if (!json_is_array(list))
        return fail(L->err, L->err_len, HF_ERR_FORMAT,
                    "%s: normalizer.normalizers: expected an array", L->name);
    size_t count = json_array_size(list);
    if (count > 64)
        return fail(L->err, L->err_len, HF_ERR_RANGE,
                    "%s: normalizer.normalizers: %zu steps (at most 64)", L->name, count);
    if (count && !(t->norm = calloc(count, sizeof *t->norm)))
        return NOMEM(L);
    for (size_t i = 0; i < count; i++) {
        char path[64];
        snprintf(path, sizeof path, "normalizer.normalizers[%zu]", i);
        if ((rc = parse_normalizer_step(L, t, json_array_get(list, i), path)))
            return rc;
    }
    return HF_OK;
}

/* Metaspace options shared by the pre-tokenizer and the decoder. */
static int parse_metaspace(const loader *L, json_t *obj, const char *path, char **replacement,
                           prepend_scheme *scheme, int *split)
{
    const char *r = NULL;
    int rc = get_string(L, obj, path, "replacement", &r);
    if (rc)
        return rc;
    if (strlen(r) == 0 || utf8_len((const unsigned char *)r, strlen(r)) != strlen(r))
        return fail(L->err, L->err_len, HF_ERR_FORMAT,
                    "%s: %s.replacement: \"%s\" is not one character", L->name, path, r);
    json_t *ps = json_object_get(obj, "prepend_scheme");
    if (ps && !json_is_null(ps)) {
        const char *s = json_string_value(ps);
        if (!s)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s.prepend_scheme: expected a string", L->name, path);
        if (strcmp(s, "always") == 0)
            *scheme = PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0)
            *scheme = PREPEND_FIRST;
        else if (strcmp(s, "never") == 0)
            *scheme = PREPEND_NEVER;
        else
            return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                        "%s: %s.prepend_scheme: unsupported value \"%s\" (supported: always, "
                        "first, never)",
                        L->name, path, s);
    } else {
        int add = 1;
        if ((rc = get_bool(L, obj, path, "add_prefix_space", 1, &add)))
            return rc;
        *scheme = add ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    if (split && (rc = get_bool(L, obj, path, "split", 1, split)))
        return rc;
    if (!(*replacement = dup_str(r)))
        return NOMEM(L);
    return HF_OK;
}

static int parse_pre_tokenizer(const loader *L, hf_tokenizer *t, json_t *root)
{
    json_t *p = json_object_get(root, "pre_tokenizer");
    if (!p || json_is_null(p))
        return HF_OK;
    const char *type;
    int rc = get_type(L, p, "pre_tokenizer", &type);
    if (rc)
        return rc;
    const char *path = "pre_tokenizer";
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: pre_tokenizer.pretokenizers: expected an array", L->name);
        if (json_array_size(list) == 0)
            return HF_OK;
        if (json_array_size(list) > 1)
            return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                        "%s: pre_tokenizer.pretokenizers: %zu steps (supported: one Metaspace)",
                        L->name, json_array_size(list));
        p = json_array_get(list, 0);
        path = "pre_tokenizer.pretokenizers[0]";
        if ((rc = get_type(L, p, path, &type)))
            return rc;
    }
    if (strcmp(type, "Metaspace") != 0)
        return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                    "%s: %s.type: unsupported pre-tokenizer \"%s\" (supported: null, Metaspace)",
                    L->name, path, type);
    t->has_metaspace = 1;
    return parse_metaspace(L, p, path, &t->metaspace, &t->metaspace_prepend,
                           &t->metaspace_split);
}

static int parse_decoder_step(const loader *L, hf_tokenizer *t, json_t *obj, const char *path)
{
    const char *type = NULL;
    int rc = get_type(L, obj, path, &type);
    if (rc)
        return rc;
    dec_step *s = &t->dec[t->n_dec];
    memset(s, 0, sizeof *s);
    if (strcmp(type, "Replace") == 0) {
        s->kind = DEC_REPLACE;
        t->n_dec++;
        return get_replace(L, obj, path, &s->from, &s->to);
    }
    if (strcmp(type, "ByteFallback") == 0) {
        s->kind = DEC_BYTE_FALLBACK;
        t->n_dec++;
        return HF_OK;
    }
    if (strcmp(type, "Fuse") == 0) {
        s->kind = DEC_FUSE;
        t->n_dec++;
        return HF_OK;
    }
    if (strcmp(type, "Strip") == 0) {
        const char *c = NULL;
        if ((rc = get_string(L, obj, path, "content", &c)))
            return rc;
        if (strlen(c) == 0 || utf8_len((const unsigned char *)c, strlen(c)) != strlen(c))
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s.content: \"%s\" is not one character", L->name, path, c);
        json_t *start = json_object_get(obj, "start"), *stop = json_object_get(obj, "stop");
        if (!json_is_integer(start) || !json_is_integer(stop) || json_integer_value(start) < 0 ||
            json_integer_value(stop) < 0 || json_integer_value(start) > INT32_MAX ||
            json_integer_value(stop) > INT32_MAX)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s: start and stop must be non-negative integers", L->name, path);
        s->kind = DEC_STRIP;
        s->start = (int32_t)json_integer_value(start);
        s->stop = (int32_t)json_integer_value(stop);
        t->n_dec++;
        if (!(s->strip = dup_str(c)))
            return NOMEM(L);
        return HF_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        s->kind = DEC_METASPACE;
        t->n_dec++;
        return parse_metaspace(L, obj, path, &s->from, &s->prepend, NULL);
    }
    return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                "%s: %s.type: unsupported decoder \"%s\" (supported: Replace, ByteFallback, "
                "Fuse, Strip, Metaspace, Sequence of those)",
                L->name, path, type);
}

static int parse_decoder(const loader *L, hf_tokenizer *t, json_t *root)
{
    json_t *d = json_object_get(root, "decoder");
    if (!d || json_is_null(d))
        return HF_OK;
    const char *type;
    int rc = get_type(L, d, "decoder", &type);
    if (rc)
        return rc;
    if (strcmp(type, "Sequence") != 0) {
        if (!(t->dec = calloc(1, sizeof *t->dec)))
            return NOMEM(L);
        return parse_decoder_step(L, t, d, "decoder");
    }
    json_t *list = json_object_get(d, "decoders");
    if (!json_is_array(list))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: decoder.decoders: expected an array",
                    L->name);
    size_t count = json_array_size(list);
    if (count > 64)
        return fail(L->err, L->err_len, HF_ERR_RANGE,
                    "%s: decoder.decoders: %zu steps (at most 64)", L->name, count);
    if (count && !(t->dec = calloc(count, sizeof *t->dec)))
        return NOMEM(L);
    for (size_t i = 0; i < count; i++) {
        char path[64];
        snprintf(path, sizeof path, "decoder.decoders[%zu]", i);
        if ((rc = parse_decoder_step(L, t, json_array_get(list, i), path)))
            return rc;
    }
    return HF_OK;
}

/* An id member: an integer in [0, HF_TOKENIZER_MAX_VOCAB). */
static int check_id(const loader *L, json_t *v, const char *path, const char *key, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= HF_TOKENIZER_MAX_VOCAB)
        return fail(L->err, L->err_len, HF_ERR_FORMAT,
                    "%s: %s%s: expected an id in [0, %d)", L->name, path, key,
                    (int)HF_TOKENIZER_MAX_VOCAB);
    *id = (int32_t)json_integer_value(v);
    return HF_OK;
}

/* Applies the normalizer steps to s[0..n), into out (reset first). */
static int normalize(const hf_tokenizer *t, const char *s, size_t n, bytes *out, bytes *tmp)
{
    out->n = 0;
    if (bytes_add(out, s, n))
        return -1;
    for (int32_t i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        tmp->n = 0;
        if (st->kind == NORM_PREPEND) {
            if (out->n == 0)
                continue;
            if (bytes_add(tmp, st->to, strlen(st->to)) || bytes_add(tmp, out->p, out->n))
                return -1;
        } else if (replace_all(tmp, out->p, out->n, st->from, st->to)) {
            return -1;
        }
        bytes swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return 0;
}

static int parse_added(const loader *L, hf_tokenizer *t, json_t *root)
{
    json_t *list = json_object_get(root, "added_tokens");
    if (!list || json_is_null(list))
        return HF_OK;
    if (!json_is_array(list))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: added_tokens: expected an array",
                    L->name);
    size_t count = json_array_size(list);
    if (count > (size_t)HF_TOKENIZER_MAX_VOCAB)
        return fail(L->err, L->err_len, HF_ERR_RANGE, "%s: added_tokens: %zu entries", L->name,
                    count);
    if (count && !(t->added = calloc(count, sizeof *t->added)))
        return NOMEM(L);
    for (size_t i = 0; i < count; i++) {
        json_t *a = json_array_get(list, i);
        char path[64];
        snprintf(path, sizeof path, "added_tokens[%zu]", i);
        if (!json_is_object(a))
            return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: %s: expected an object",
                        L->name, path);
        int32_t id = 0;
        const char *content = NULL;
        int rc = check_id(L, json_object_get(a, "id"), path, ".id", &id);
        if (rc || (rc = get_string(L, a, path, "content", &content)))
            return rc;
        size_t clen = strlen(content);
        if (clen == 0 || clen > HF_TOKENIZER_MAX_TOKEN_BYTES)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s.content: length %zu (1 to %d bytes)", L->name, path, clen,
                        HF_TOKENIZER_MAX_TOKEN_BYTES);
        static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
        for (int f = 0; f < 3; f++) {
            int v = 0;
            if ((rc = get_bool(L, a, path, flags[f], 0, &v)))
                return rc;
            if (v)
                return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                            "%s: %s.%s: true is not supported (token \"%s\")", L->name, path,
                            flags[f], content);
        }
        int special = 0, normalized = 0;
        if ((rc = get_bool(L, a, path, "special", 0, &special)) ||
            (rc = get_bool(L, a, path, "normalized", !special, &normalized)))
            return rc;
        int32_t existing = find_id(t, content, clen);
        if (existing >= 0 && existing != id)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s: \"%s\" has id %d in model.vocab, not %d", L->name, path,
                        content, (int)existing, (int)id);
        if (id < t->n_vocab && t->text[id] &&
            (t->len[id] != clen || memcmp(t->text[id], content, clen) != 0))
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: %s: id %d is \"%s\" in model.vocab, not \"%s\"", L->name, path,
                        (int)id, t->text[id], content);
        added_token *at = &t->added[t->n_added++];
        at->id = id;
        at->special = special;
        at->normalized = normalized;
        if (id >= t->n_vocab) { /* grow the id space */
            int32_t n = id + 1;
            char **text = realloc(t->text, (size_t)n * sizeof *text);
            if (text)
                t->text = text;
            uint32_t *len = realloc(t->len, (size_t)n * sizeof *len);
            if (len)
                t->len = len;
            uint8_t *sp = realloc(t->special, (size_t)n);
            if (sp)
                t->special = sp;
            if (!text || !len || !sp)
                return NOMEM(L);
            for (int32_t k = t->n_vocab; k < n; k++) {
                t->text[k] = NULL;
                t->len[k] = 0;
                t->special[k] = 0;
            }
            t->n_vocab = n;
        }
        if (!t->text[id]) {
            if (!(t->text[id] = dup_str(content)))
                return NOMEM(L);
            t->len[id] = (uint32_t)clen;
        }
        t->special[id] = (uint8_t)special;
    }
    return HF_OK;
}

/* The text each added token is matched by (needs the normalizer); ids must be hashed. */
static int prepare_added(const loader *L, hf_tokenizer *t)
{
    bytes out = {0}, tmp = {0};
    int rc = HF_OK;
    for (int32_t i = 0; i < t->n_added && rc == HF_OK; i++) {
        added_token *a = &t->added[i];
        const char *c = t->text[a->id];
        if (a->normalized) {
            if (normalize(t, c, t->len[a->id], &out, &tmp)) {
                rc = NOMEM(L);
                break;
            }
            a->match = malloc(out.n + 1);
            if (a->match) {
                if (out.n)
                    memcpy(a->match, out.p, out.n);
                a->match[out.n] = '\0';
            }
            a->match_len = out.n;
        } else {
            a->match = dup_str(c);
            a->match_len = t->len[a->id];
        }
        if (!a->match)
            rc = NOMEM(L);
        else if (a->match_len)
            t->added_first[a->normalized ? 1 : 0][(unsigned char)a->match[0]] = 1;
    }
    free(out.p);
    free(tmp.p);
    return rc;
}

static int parse_bos(const loader *L, hf_tokenizer *t, json_t *root)
{
    t->bos = t->eos = -1;
    json_t *pp = json_object_get(root, "post_processor");
    if (json_is_object(pp)) {
        const char *type = json_string_value(json_object_get(pp, "type"));
        json_t *single = json_object_get(pp, "single");
        if (type && strcmp(type, "TemplateProcessing") == 0 && json_is_array(single) &&
            json_array_size(single) > 0) {
            json_t *st = json_object_get(json_array_get(single, 0), "SpecialToken");
            if (st) {
                const char *name = json_string_value(json_object_get(st, "id"));
                if (!name)
                    return fail(L->err, L->err_len, HF_ERR_FORMAT,
                                "%s: post_processor.single[0].SpecialToken.id: expected a "
                                "string",
                                L->name);
                json_t *sp = json_object_get(json_object_get(pp, "special_tokens"), name);
                json_t *ids = json_object_get(sp, "ids");
                int32_t id = -1;
                if (json_is_array(ids) && json_array_size(ids) == 1) {
                    int rc = check_id(L, json_array_get(ids, 0), "post_processor.special_tokens.",
                                      "ids[0]", &id);
                    if (rc)
                        return rc;
                } else {
                    id = find_id(t, name, strlen(name));
                }
                if (id < 0 || id >= t->n_vocab || !t->text[id])
                    return fail(L->err, L->err_len, HF_ERR_FORMAT,
                                "%s: post_processor: special token \"%s\" is not in the "
                                "vocabulary",
                                L->name, name);
                t->bos = id;
            }
        }
    }
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>",
                                            "<|end_story|>"};
    for (int i = 0; t->bos < 0 && i < 2; i++)
        t->bos = find_id(t, bos_names[i], strlen(bos_names[i]));
    for (int i = 0; t->eos < 0 && i < 4; i++)
        t->eos = find_id(t, eos_names[i], strlen(eos_names[i]));
    return HF_OK;
}

/* Reads "model": vocab, merges and the BPE options. */
static int parse_model(const loader *L, hf_tokenizer *t, json_t *root)
{
    json_t *m = json_object_get(root, "model");
    if (!m)
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model: missing", L->name);
    if (!json_is_object(m))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model: expected an object",
                    L->name);
    json_t *type = json_object_get(m, "type");
    if (type && !json_is_string(type))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model.type: expected a string",
                    L->name);
    /* Files written before the type key existed hold a BPE model when they have merges. */
    if (type ? strcmp(json_string_value(type), "BPE") != 0 : !json_object_get(m, "merges"))
        return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                    "%s: model.type: unsupported model \"%s\" (supported: BPE)", L->name,
                    type ? json_string_value(type) : "(none, no merges)");
    json_t *dropout = json_object_get(m, "dropout");
    if (dropout && !json_is_null(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                    "%s: model.dropout: only null or 0 is supported", L->name);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(m, affixes[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return fail(L->err, L->err_len, HF_ERR_UNSUPPORTED,
                        "%s: model.%s: only null is supported", L->name, affixes[i]);
    }
    int rc;
    if ((rc = get_bool(L, m, "model", "byte_fallback", 0, &t->byte_fallback)) ||
        (rc = get_bool(L, m, "model", "fuse_unk", 0, &t->fuse_unk)) ||
        (rc = get_bool(L, m, "model", "ignore_merges", 0, &t->ignore_merges)))
        return rc;

    json_t *vocab = json_object_get(m, "vocab");
    if (!vocab)
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model.vocab: missing", L->name);
    if (!json_is_object(vocab))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model.vocab: expected an object",
                    L->name);
    size_t count = json_object_size(vocab);
    if (count == 0 || count > (size_t)HF_TOKENIZER_MAX_VOCAB)
        return fail(L->err, L->err_len, HF_ERR_FORMAT,
                    "%s: model.vocab: %zu entries (1 to %d)", L->name, count,
                    (int)HF_TOKENIZER_MAX_VOCAB);
    int32_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        int32_t id = 0;
        char path[80];
        snprintf(path, sizeof path, "model.vocab[\"%.40s\"]", key);
        if ((rc = check_id(L, v, path, "", &id)))
            return rc;
        if (id > max_id)
            max_id = id;
    }
    t->n_vocab = max_id + 1;
    t->text = calloc((size_t)t->n_vocab, sizeof *t->text);
    t->len = calloc((size_t)t->n_vocab, sizeof *t->len);
    t->special = calloc((size_t)t->n_vocab, 1);
    if (!t->text || !t->len || !t->special)
        return NOMEM(L);
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        size_t n = strlen(key);
        if (n == 0 || n > HF_TOKENIZER_MAX_TOKEN_BYTES)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: model.vocab[\"%.40s\"]: length %zu (1 to %d bytes)", L->name, key,
                        n, HF_TOKENIZER_MAX_TOKEN_BYTES);
        if (t->text[id])
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: model.vocab: id %d is both \"%s\" and \"%s\"", L->name, (int)id,
                        t->text[id], key);
        if (!(t->text[id] = dup_str(key)))
            return NOMEM(L);
        t->len[id] = (uint32_t)n;
    }
    if (build_text_hash(t, (int32_t)count))
        return NOMEM(L);

    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_id[b] = find_id(t, s, 6);
    }
    t->unk = -1;
    json_t *unk = json_object_get(m, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk))
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: model.unk_token: expected a string or null", L->name);
        t->unk = find_id(t, json_string_value(unk), json_string_length(unk));
        if (t->unk < 0)
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: model.unk_token: \"%s\" is not in model.vocab", L->name,
                        json_string_value(unk));
    }

    json_t *merges = json_object_get(m, "merges");
    if (!merges)
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model.merges: missing", L->name);
    if (!json_is_array(merges))
        return fail(L->err, L->err_len, HF_ERR_FORMAT, "%s: model.merges: expected an array",
                    L->name);
    size_t n_merges = json_array_size(merges);
    if (n_merges > (size_t)INT32_MAX / 4)
        return fail(L->err, L->err_len, HF_ERR_RANGE, "%s: model.merges: %zu entries", L->name,
                    n_merges);
    size_t slots = 16;
    while (slots < n_merges * 2)
        slots *= 2;
    t->merges = malloc(slots * sizeof *t->merges);
    if (!t->merges)
        return NOMEM(L);
    for (size_t i = 0; i < slots; i++)
        t->merges[i].key = UINT64_MAX;
    t->n_merge_slots = slots;
    bytes joined = {0};
    for (size_t r = 0; r < n_merges; r++) {
        json_t *e = json_array_get(merges, r);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e)) {
            /* "a b": exactly one space (tokens holding a space need the pair form). */
            a = json_string_value(e);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(joined.p);
                return fail(L->err, L->err_len, HF_ERR_FORMAT,
                            "%s: model.merges[%zu]: \"%s\" is not two tokens separated by one "
                            "space",
                            L->name, r, a);
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            al = strlen(a);
            bl = strlen(b);
        } else {
            free(joined.p);
            return fail(L->err, L->err_len, HF_ERR_FORMAT,
                        "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", L->name, r);
        }
        int32_t ia = find_id(t, a, al), ib = find_id(t, b, bl);
        joined.n = 0;
        if (bytes_add(&joined, a, al) || bytes_add(&joined, b, bl)) {
            free(joined.p);
            return NOMEM(L);
        }
        int32_t ij = find_id(t, joined.p, joined.n);
        if (ia < 0 || ib < 0 || ij < 0) {
            int which = ia < 0 ? 0 : ib < 0 ? 1 : 2;
            int wl = which == 0 ? (int)al : which == 1 ? (int)bl : (int)joined.n;
            const char *ws = which == 0 ? a : which == 1 ? b : joined.p;
            rc = fail(L->err, L->err_len, HF_ERR_FORMAT,
                      "%s: model.merges[%zu]: %s \"%.*s\" is not in model.vocab", L->name, r,
                      which == 2 ? "the merged token" : "token", wl > 200 ? 200 : wl, ws);
            free(joined.p);
            return rc;
        }
        /* A repeated pair keeps its last rank, as the Hugging Face reader does. */
        uint64_t k = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
        size_t i = (size_t)hash_pair(k) & (slots - 1);
        while (t->merges[i].key != UINT64_MAX && t->merges[i].key != k)
            i = (i + 1) & (slots - 1);
        t->merges[i].key = k;
        t->merges[i].rank = (int32_t)r;
        t->merges[i].id = ij;
    }
    free(joined.p);
    return HF_OK;
}

int hf_tokenizer_load_buffer(const char *json, size_t len, const char *name, hf_tokenizer **out,
                             char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!out)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_load: out is NULL");
    *out = NULL;
    if (!name)
        name = "tokenizer.json";
    if (!json)
        return fail(err, err_len, HF_ERR_ARG, "%s: no JSON text", name);
    if (len > HF_TOKENIZER_MAX_FILE_BYTES)
        return fail(err, err_len, HF_ERR_RANGE, "%s: %zu bytes (at most %zu)", name, len,
                    HF_TOKENIZER_MAX_FILE_BYTES);
    loader L = {name, err, err_len};
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return fail(err, err_len, HF_ERR_FORMAT, "%s: malformed JSON at line %d column %d: %s",
                    name, je.line, je.column, je.text);
    int rc;
    hf_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        rc = NOMEM(&L);
        goto out;
    }
    if (!json_is_object(root)) {
        rc = fail(err, err_len, HF_ERR_FORMAT, "%s: expected a JSON object at the top", name);
        goto out;
    }
    if ((rc = parse_model(&L, t, root)) || (rc = parse_normalizer(&L, t, root)) ||
        (rc = parse_pre_tokenizer(&L, t, root)) || (rc = parse_decoder(&L, t, root)) ||
        (rc = parse_added(&L, t, root)))
        goto out;
    /* Added tokens may have grown the id space: hash every text again. */
    free(t->slots);
    t->slots = NULL;
    int32_t texts = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        texts += t->text[i] != NULL;
    if (build_text_hash(t, texts)) {
        rc = NOMEM(&L);
        goto out;
    }
    if ((rc = prepare_added(&L, t)) || (rc = parse_bos(&L, t, root)))
        goto out;
    *out = t;
    t = NULL;
out:
    tokenizer_release(t);
    json_decref(root);
    return rc;
}

int hf_tokenizer_load(const char *path, hf_tokenizer **out, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!out)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_load: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, err_len, HF_ERR_IO, "%s: cannot open", path);
    /* Read to the end, whatever the file is (a pipe has no size), up to the limit. */
    bytes b = {0};
    int rc = HF_OK;
    for (;;) {
        if (bytes_reserve(&b, 1 << 16)) {
            rc = fail(err, err_len, HF_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        size_t got = fread(b.p + b.n, 1, b.cap - b.n - 1, f);
        b.n += got;
        if (b.n > HF_TOKENIZER_MAX_FILE_BYTES) {
            rc = fail(err, err_len, HF_ERR_RANGE, "%s: larger than %zu bytes", path,
                      HF_TOKENIZER_MAX_FILE_BYTES);
            break;
        }
        if (got == 0) {
            if (ferror(f))
                rc = fail(err, err_len, HF_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc == HF_OK)
        rc = hf_tokenizer_load_buffer(b.p, b.n, path, out, err, err_len);
    free(b.p);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Accessors */

int32_t hf_tokenizer_vocab_size(const hf_tokenizer *t)
{
    return t ? t->n_vocab : 0;
}

int32_t hf_tokenizer_bos(const hf_tokenizer *t)
{
    return t ? t->bos : -1;
}

int32_t hf_tokenizer_eos(const hf_tokenizer *t)
{
    return t ? t->eos : -1;
}

const char *hf_tokenizer_token(const hf_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || id >= t->n_vocab)
        return NULL;
    return t->text[id];
}

int32_t hf_tokenizer_find(const hf_tokenizer *t, const char *text, size_t len)
{
    if (!t || !text)
        return -1;
    return find_id(t, text, len);
}

int hf_tokenizer_set_special(hf_tokenizer *t, int32_t bos, int32_t eos, char *err,
                             size_t err_len)
{
    if (!t)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_set_special: tokenizer is NULL");
    if (bos < -1 || bos >= t->n_vocab || (bos >= 0 && !t->text[bos]))
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_set_special: bos %d is not a token",
                    (int)bos);
    if (eos < -1 || eos >= t->n_vocab || (eos >= 0 && !t->text[eos]))
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_set_special: eos %d is not a token",
                    (int)eos);
    t->bos = bos;
    t->eos = eos;
    return HF_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding */

typedef struct symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int alive;
} symbol;

typedef struct merge_cand {
    int32_t rank, pos, id;
} merge_cand;

typedef struct work {
    symbol *sym;
    size_t n_sym, cap_sym;
    merge_cand *heap;
    size_t n_heap, cap_heap;
    bytes norm, tmp, word;
} work;

static void work_free(work *w)
{
    free(w->sym);
    free(w->heap);
    free(w->norm.p);
    free(w->tmp.p);
    free(w->word.p);
}

static int cand_less(const merge_cand *a, const merge_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(work *w, merge_cand c)
{
    if (w->n_heap == w->cap_heap) {
        size_t cap = w->cap_heap ? w->cap_heap * 2 : 64;
        merge_cand *h = realloc(w->heap, cap * sizeof *h);
        if (!h)
            return -1;
        w->heap = h;
        w->cap_heap = cap;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
    return 0;
}

static merge_cand heap_pop(work *w)
{
    merge_cand top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const merge_cand *best = &last;
        if (l < n && cand_less(&w->heap[l], best)) {
            m = l;
            best = &w->heap[l];
        }
        if (r < n && cand_less(&w->heap[r], best))
            m = r;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int sym_push(work *w, int32_t id)
{
    if (w->n_sym == w->cap_sym) {
        size_t cap = w->cap_sym ? w->cap_sym * 2 : 64;
        symbol *s = realloc(w->sym, cap * sizeof *s);
        if (!s)
            return -1;
        w->sym = s;
        w->cap_sym = cap;
    }
    if (w->n_sym >= (size_t)INT32_MAX)
        return -1;
    symbol *s = &w->sym[w->n_sym];
    s->id = id;
    s->prev = (int32_t)w->n_sym - 1;
    s->next = -1;
    s->alive = 1;
    if (w->n_sym)
        w->sym[w->n_sym - 1].next = (int32_t)w->n_sym;
    w->n_sym++;
    return 0;
}

static int push_merge_at(const hf_tokenizer *t, work *w, int32_t pos)
{
    int32_t next = w->sym[pos].next;
    if (next < 0)
        return 0;
    const merge_slot *m = find_merge(t, w->sym[pos].id, w->sym[next].id);
    if (!m)
        return 0;
    merge_cand c = {m->rank, pos, m->id};
    return heap_push(w, c);
}

/* BPE on one word (bytes of valid UTF-8), appending ids to out. */
static int bpe_word(const hf_tokenizer *t, work *w, const char *s, size_t n, idvec *out)
{
    if (n == 0)
        return 0;
    if (t->ignore_merges) {
        int32_t id = find_id(t, s, n);
        if (id >= 0)
            return idvec_push(out, id);
    }
    w->n_sym = 0;
    w->n_heap = 0;
    int32_t unk_pending = 0; /* an unknown run not yet added */
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len((const unsigned char *)s + i, n - i);
        if (cl == 0) /* not reached: texts are checked, the JSON strings are UTF-8 */
            cl = 1;
        int32_t id = find_id(t, s + i, cl);
        if (id >= 0) {
            if (unk_pending && sym_push(w, t->unk))
                return -1;
            unk_pending = 0;
            if (sym_push(w, id))
                return -1;
        } else {
            int all = t->byte_fallback;
            for (size_t k = 0; all && k < cl; k++)
                all = t->byte_id[(unsigned char)s[i + k]] >= 0;
            if (all) {
                /* As the Hugging Face model does, byte tokens go in ahead of an unknown run
                 * still pending. */
                for (size_t k = 0; k < cl; k++)
                    if (sym_push(w, t->byte_id[(unsigned char)s[i + k]]))
                        return -1;
            } else if (t->unk >= 0) {
                if (unk_pending && !t->fuse_unk && sym_push(w, t->unk))
                    return -1;
                unk_pending = 1;
            }
        }
        i += cl;
    }
    if (unk_pending && sym_push(w, t->unk))
        return -1;
    for (size_t i = 0; i + 1 < w->n_sym; i++)
        if (push_merge_at(t, w, (int32_t)i))
            return -1;
    while (w->n_heap) {
        merge_cand c = heap_pop(w);
        symbol *a = &w->sym[c.pos];
        if (!a->alive || a->next < 0)
            continue;
        symbol *b = &w->sym[a->next];
        const merge_slot *m = find_merge(t, a->id, b->id);
        if (!m || m->id != c.id)
            continue;
        a->id = c.id;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0)
            w->sym[b->next].prev = c.pos;
        if ((a->prev >= 0 && push_merge_at(t, w, a->prev)) || push_merge_at(t, w, c.pos))
            return -1;
    }
    for (int32_t i = w->n_sym ? 0 : -1; i >= 0; i = w->sym[i].next)
        if (idvec_push(out, w->sym[i].id))
            return -1;
    return 0;
}

/* Pre-tokenizes one normalized piece and runs BPE on each word. first: the piece starts the
 * text (for Metaspace's "first" scheme). */
static int encode_piece(const hf_tokenizer *t, work *w, const char *s, size_t n, int first,
                        idvec *out)
{
    if (n == 0)
        return 0;
    if (!t->has_metaspace)
        return bpe_word(t, w, s, n, out);
    bytes *pw = &w->word;
    pw->n = 0;
    const char *rep = t->metaspace;
    size_t rl = strlen(rep);
    if (replace_all(pw, s, n, " ", rep))
        return -1;
    int starts = pw->n >= rl && memcmp(pw->p, rep, rl) == 0;
    if (!starts && (t->metaspace_prepend == PREPEND_ALWAYS ||
                    (t->metaspace_prepend == PREPEND_FIRST && first))) {
        if (bytes_add(pw, rep, rl))
            return -1;
        memmove(pw->p + rl, pw->p, pw->n - rl);
        memcpy(pw->p, rep, rl);
    }
    if (!t->metaspace_split)
        return bpe_word(t, w, pw->p, pw->n, out);
    /* Split so that each replacement character starts a word. */
    size_t start = 0;
    for (size_t i = 1; i <= pw->n; i++) {
        if (i == pw->n || (pw->n - i >= rl && memcmp(pw->p + i, rep, rl) == 0)) {
            if (bpe_word(t, w, pw->p + start, i - start, out))
                return -1;
            start = i;
        }
    }
    return 0;
}

/* Earliest, then longest, match of an added token in s[from..n) among those with the given
 * normalized flag. Returns the index into t->added or -1; *at receives the offset. */
static int32_t find_added(const hf_tokenizer *t, const char *s, size_t n, size_t from,
                          int normalized, size_t *at)
{
    const uint8_t *first = t->added_first[normalized ? 1 : 0];
    for (size_t i = from; i < n; i++) {
        if (!first[(unsigned char)s[i]])
            continue;
        int32_t best = -1;
        for (int32_t k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized || a->match_len == 0 || a->match_len > n - i ||
                a->match[0] != s[i] || memcmp(a->match, s + i, a->match_len) != 0)
                continue;
            if (best < 0 || a->match_len > t->added[best].match_len)
                best = k;
        }
        if (best >= 0) {
            *at = i;
            return best;
        }
    }
    return -1;
}

/* One piece of raw text between added tokens: normalize, split at normalized added tokens. */
static int encode_raw_piece(const hf_tokenizer *t, work *w, const char *s, size_t n, int first,
                            int look_added, idvec *out)
{
    if (n == 0)
        return 0;
    if (normalize(t, s, n, &w->norm, &w->tmp))
        return -1;
    const char *p = w->norm.p;
    size_t len = w->norm.n, pos = 0;
    /* norm may be reused by nothing below: encode_piece uses word, tmp stays free. */
    while (pos < len) {
        size_t at = len;
        int32_t k = look_added ? find_added(t, p, len, pos, 1, &at) : -1;
        if (encode_piece(t, w, p + pos, (k >= 0 ? at : len) - pos, first && pos == 0, out))
            return -1;
        if (k < 0)
            break;
        if (idvec_push(out, t->added[k].id))
            return -1;
        pos = at + t->added[k].match_len;
    }
    return 0;
}

static int encode_into(const hf_tokenizer *t, work *w, const char *text, size_t len,
                       uint32_t flags, idvec *out, char *err, size_t err_len)
{
    if ((flags & HF_ENCODE_BOS) && t->bos < 0)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_encode: the tokenizer has no BOS");
    if ((flags & HF_ENCODE_EOS) && t->eos < 0)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_encode: the tokenizer has no EOS");
    if (len > ((size_t)1 << 30))
        return fail(err, err_len, HF_ERR_RANGE,
                    "hf_tokenizer_encode: text of %zu bytes (at most 1 GiB)", len);
    if (!utf8_valid(text, len))
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_encode: the text is not valid UTF-8");
    int look = !(flags & HF_ENCODE_NO_ADDED);
    if ((flags & HF_ENCODE_BOS) && idvec_push(out, t->bos))
        goto nomem;
    size_t pos = 0;
    while (pos <= len) {
        size_t at = len;
        int32_t k = look ? find_added(t, text, len, pos, 0, &at) : -1;
        if (encode_raw_piece(t, w, text + pos, (k >= 0 ? at : len) - pos, pos == 0, look, out))
            goto nomem;
        if (k < 0)
            break;
        if (idvec_push(out, t->added[k].id))
            goto nomem;
        pos = at + t->added[k].match_len;
    }
    if ((flags & HF_ENCODE_EOS) && idvec_push(out, t->eos))
        goto nomem;
    return HF_OK;
nomem:
    return fail(err, err_len, HF_ERR_NOMEM, "hf_tokenizer_encode: out of memory");
}

int hf_tokenizer_encode(const hf_tokenizer *t, const char *text, size_t len, uint32_t flags,
                        int32_t *ids, size_t cap, size_t *n_ids, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!t || (!text && len) || (!ids && cap) || !n_ids)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_encode: NULL argument");
    *n_ids = 0;
    work w = {0};
    idvec out = {0};
    int rc = encode_into(t, &w, text ? text : "", len, flags, &out, err, err_len);
    work_free(&w);
    if (rc == HF_OK) {
        *n_ids = out.n;
        if (out.n > cap)
            rc = fail(err, err_len, HF_ERR_RANGE,
                      "hf_tokenizer_encode: %zu ids do not fit in %zu", out.n, cap);
        else if (out.n)
            memcpy(ids, out.p, out.n * sizeof *ids);
    }
    free(out.p);
    return rc;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int hf_tokenizer_encode_stories(const hf_tokenizer *t, const char *text, size_t len,
                                int32_t **ids, size_t *n_ids, size_t *n_stories, char *err,
                                size_t err_len)
{
    static const char sep[] = "<|endoftext|>";
    const size_t sl = sizeof sep - 1;
    if (err && err_len)
        err[0] = '\0';
    if (!t || (!text && len) || !ids || !n_ids || !n_stories)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_encode_stories: NULL argument");
    *ids = NULL;
    *n_ids = *n_stories = 0;
    work w = {0};
    idvec out = {0};
    size_t stories = 0;
    int rc = HF_OK;
    for (size_t pos = 0; pos <= len && rc == HF_OK;) {
        size_t end = pos;
        while (end < len && !(len - end >= sl && memcmp(text + end, sep, sl) == 0))
            end++;
        size_t a = pos, b = end;
        while (a < b && is_space(text[a]))
            a++;
        while (b > a && is_space(text[b - 1]))
            b--;
        if (b > a) {
            rc = encode_into(t, &w, text + a, b - a, HF_ENCODE_BOS, &out, err, err_len);
            stories++;
        }
        if (end == len)
            break;
        pos = end + sl;
    }
    work_free(&w);
    if (rc != HF_OK) {
        free(out.p);
        return rc;
    }
    *ids = out.p;
    *n_ids = out.n;
    *n_stories = stories;
    return HF_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding */

/* A list of token texts: pieces of one buffer. */
typedef struct strlist {
    bytes buf;
    size_t *off, *len;
    size_t n, cap;
} strlist;

static void strlist_free(strlist *l)
{
    free(l->buf.p);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof *l);
}

static int strlist_add(strlist *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *off = realloc(l->off, cap * sizeof *off);
        if (off)
            l->off = off;
        size_t *len = realloc(l->len, cap * sizeof *len);
        if (len)
            l->len = len;
        if (!off || !len)
            return -1;
        l->cap = cap;
    }
    l->off[l->n] = l->buf.n;
    l->len[l->n] = n;
    l->n++;
    return bytes_add(&l->buf, s, n);
}

/* <0xNN>: the byte, else -1. */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Runs one decoder step from in to out (out is reset). */
static int decode_step(const dec_step *st, const strlist *in, strlist *out)
{
    out->n = 0;
    out->buf.n = 0;
    bytes acc = {0};
    int rc = 0;
    size_t n_bytes = 0;
    for (size_t i = 0; i < in->n && rc == 0; i++) {
        const char *s = in->buf.p + in->off[i];
        size_t n = in->len[i];
        switch (st->kind) {
        case DEC_REPLACE:
        case DEC_METASPACE: {
            /* Metaspace: the replacement becomes a space, except in the first token with a
             * prepend scheme, where it is dropped (as the Hugging Face decoder does). */
            const char *to = st->kind == DEC_REPLACE                     ? st->to
                             : i == 0 && st->prepend != PREPEND_NEVER ? ""
                                                                      : " ";
            acc.n = 0;
            rc = replace_all(&acc, s, n, st->from, to);
            if (rc == 0)
                rc = strlist_add(out, acc.p, acc.n);
            break;
        }
        case DEC_BYTE_FALLBACK: {
            int b = byte_token(s, n);
            if (b >= 0) {
                char c = (char)b;
                if (n_bytes == 0)
                    acc.n = 0;
                rc = bytes_add(&acc, &c, 1);
                n_bytes++;
            } else {
                if (n_bytes) {
                    if (utf8_valid(acc.p, acc.n))
                        rc = strlist_add(out, acc.p, acc.n);
                    else
                        for (size_t k = 0; k < n_bytes && rc == 0; k++)
                            rc = strlist_add(out, "\xEF\xBF\xBD", 3);
                    n_bytes = 0;
                }
                if (rc == 0)
                    rc = strlist_add(out, s, n);
            }
            break;
        }
        case DEC_FUSE:
            rc = bytes_add(&acc, s, n);
            break;
        case DEC_STRIP: {
            size_t cl = strlen(st->strip), a = 0, b = n;
            for (int32_t k = 0; k < st->start && b - a >= cl && memcmp(s + a, st->strip, cl) == 0;
                 k++)
                a += cl;
            for (int32_t k = 0;
                 k < st->stop && b - a >= cl && memcmp(s + b - cl, st->strip, cl) == 0; k++)
                b -= cl;
            rc = strlist_add(out, s + a, b - a);
            break;
        }
        }
    }
    if (rc == 0 && st->kind == DEC_BYTE_FALLBACK && n_bytes) {
        if (utf8_valid(acc.p, acc.n))
            rc = strlist_add(out, acc.p, acc.n);
        else
            for (size_t k = 0; k < n_bytes && rc == 0; k++)
                rc = strlist_add(out, "\xEF\xBF\xBD", 3);
    }
    if (rc == 0 && st->kind == DEC_FUSE)
        rc = strlist_add(out, acc.p ? acc.p : "", acc.n);
    free(acc.p);
    return rc;
}

int hf_tokenizer_decode(const hf_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags,
                        char *buf, size_t cap, size_t *len, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!t || (!ids && n) || (!buf && cap) || !len)
        return fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_decode: NULL argument");
    *len = 0;
    if (cap)
        buf[0] = '\0';
    strlist a = {0}, b = {0};
    int rc = HF_OK;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->text[id]) {
            rc = fail(err, err_len, HF_ERR_ARG, "hf_tokenizer_decode: ids[%zu] = %d is not a token",
                      i, (int)id);
            goto out;
        }
        if ((flags & HF_DECODE_SKIP_SPECIAL) && t->special[id])
            continue;
        if (strlist_add(&a, t->text[id], t->len[id]))
            goto nomem;
    }
    for (int32_t s = 0; s < t->n_dec; s++) {
        if (decode_step(&t->dec[s], &a, &b))
            goto nomem;
        strlist swap = a;
        a = b;
        b = swap;
    }
    size_t total = 0;
    for (size_t i = 0; i < a.n; i++)
        total += a.len[i];
    *len = total;
    if (total + 1 > cap) {
        rc = fail(err, err_len, HF_ERR_RANGE,
                  "hf_tokenizer_decode: %zu bytes of text do not fit in %zu", total, cap);
        goto out;
    }
    size_t at = 0;
    for (size_t i = 0; i < a.n; i++) {
        memcpy(buf + at, a.buf.p + a.off[i], a.len[i]);
        at += a.len[i];
    }
    buf[at] = '\0';
    goto out;
nomem:
    rc = fail(err, err_len, HF_ERR_NOMEM, "hf_tokenizer_decode: out of memory");
out:
    strlist_free(&a);
    strlist_free(&b);
    return rc;
}
