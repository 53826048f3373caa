/* Plan and packed-matrix files: the public writer and reader on top of the safetensors
 * container (dq_safetensors.c). Names and metadata keys are specified in doc/formats.md. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise */
#include <fcntl.h>
#include <inttypes.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dq_handle.h"
#include "dq_gemm_simd.h"
#include "dq_hash.h"
#include "dq_internal.h"
#include "dq_linear.h"
#include "dq_plan.h"
#include "dq_plan_binding.h"
#include "dq_qmatrix.h"
#include "dq_quant_rule.h"
#include "dq_rotation.h"
#include "dq_safetensors.h"

/* The version a writer writes: 3, with checksums (doc/formats.md, "Checksums"). Version 2
 * added the blocked layer layout; files of versions 1 and 2 have no checksums. */
#define FILE_VERSION_WRITTEN 3
#define FILE_VERSION_CHECKSUMS 3

/* Largest plan width a file may declare: plans whose parts are all identities carry no tensor
 * that would bound the width by the file size. */
#define MAX_PLAN_COLS ((int64_t)1 << 24)
/* Most rotation slots of a stored plan (plans built here have at most 65). */
#define MAX_PLAN_SLOTS 1024

#define FILE_PARAMS_MIN_SIZE (offsetof(dq_file_params, max_header_bytes) + sizeof(uint64_t))

struct dq_file_writer {
    uint64_t tag; /* DQ__TAG_FILE_WRITER (dq_handle.h) */
    dq_context ctx;
    dq__st_entry *e;
    size_t n, cap;
    dq__st_meta *meta;
    size_t n_meta, cap_meta;
    /* Plans added so far (prefix, fingerprint): the layers added later must name one of them
     * and match it. Not written to the file. */
    struct writer_plan {
        char *prefix;
        uint64_t fingerprint;
    } *plans;
    size_t n_plans, cap_plans;
    /* Spooling (dq_file_writer_spool): each tensor's bytes go at once to this unlinked file at
     * spool_end, and its entry keeps only the offset. -1: the bytes stay in memory. */
    int spool_fd;
    uint64_t spool_end;
};
DQ__HANDLE_LAYOUT(struct dq_file_writer);

struct dq_file_reader {
    uint64_t tag; /* DQ__TAG_FILE_READER (dq_handle.h) */
    dq_context ctx;
    uint32_t flags; /* DQ_FILE_F_* of the params it was created with */
    uint8_t *owned; /* the data section copied, or NULL */
    dq__st_file f;
    void *map;      /* the file mapped by dq_file_reader_open with DQ_FILE_F_BORROW, or NULL */
    size_t map_size;
    size_t page;    /* the page size, with map */
    /* Bounded reading: the most one call may allocate for the file (max_alloc_bytes, resolved)
     * and the file's size, for messages; borrowed: the data are read in place (the caller's
     * buffer or the mapping). */
    uint64_t max_alloc, file_size;
    bool borrowed;
};
DQ__HANDLE_LAYOUT(struct dq_file_reader);

DQ_API dq_status dq_file_params_init(dq_file_params *p, size_t struct_size)
{
    const dq_file_params defaults = {
        .struct_size = sizeof defaults,
        .flags = 0,
        .max_header_bytes = DQ__ST_MAX_HEADER,
        .max_alloc_bytes = 0,
    };
    return dq__params_init(p, struct_size, FILE_PARAMS_MIN_SIZE, &defaults, sizeof defaults);
}

/* ---- small helpers ---- */

static char *dup_str(const dq_context *ctx, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = dq__alloc(ctx, n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* "<prefix>.<part>" in a new string. */
static char *join(const dq_context *ctx, const char *prefix, const char *part)
{
    size_t lp = strlen(prefix), lq = strlen(part);
    char *s = dq__alloc(ctx, lp + lq + 2);
    if (s) {
        memcpy(s, prefix, lp);
        s[lp] = '.';
        memcpy(s + lp + 1, part, lq + 1);
    }
    return s;
}

/* "<prefix>.<a><i><b>", e.g. "<prefix>.rot0.block_size". */
static char *join_idx(const dq_context *ctx, const char *prefix, const char *a, long long i,
                      const char *b)
{
    char part[96];
    snprintf(part, sizeof part, "%s%lld%s", a, i, b);
    return join(ctx, prefix, part);
}

static void put_le32(uint8_t *o, uint32_t v)
{
    for (int k = 0; k < 4; k++)
        o[k] = (uint8_t)(v >> (8 * k));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static void encode_f32(uint8_t *o, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        put_le32(o + 4 * i, u);
    }
}

static void decode_f32(float *x, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = get_le32(p + 4 * i);
        memcpy(&x[i], &u, 4);
    }
}

/* Strict decimal: digits only, no sign, no leading zero, at most max. */
static bool parse_int(const char *s, int64_t max, int64_t *v)
{
    if (!s || !*s || (s[0] == '0' && s[1]))
        return false;
    int64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        int64_t d = *s - '0';
        if (x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *v = x;
    return true;
}

/* ---- checksums (doc/formats.md, "Checksums") ---- */

#define HASH_KEY "__hash__"     /* metadata: the header's checksum */
#define HASH_PREFIX "__hash__." /* metadata "__hash__.<name>": the checksum of tensor <name> */
#define HASH_PREFIX_LEN 9
#define HASH_SEED_TENSOR 0x4451544e53523031ULL /* "DQTNSR01" */
#define HASH_SEED_HEADER 0x4451484541443031ULL /* "DQHEAD01" */

/* "__hash__" and "__hash__.<anything>" are the checksums' names: no tensor, metadata key or
 * object prefix may take them. */
static bool reserved_name(const char *s)
{
    return strncmp(s, HASH_KEY, HASH_PREFIX_LEN - 1) == 0 &&
           (s[HASH_PREFIX_LEN - 1] == '\0' || s[HASH_PREFIX_LEN - 1] == '.');
}

/* A tensor's name, dtype and shape as the checksums take them. */
static void hash_tensor_head(dq__hash *h, const char *name, int32_t dtype, int32_t ndim,
                             const int64_t *shape)
{
    dq__hash_str(h, name);
    dq__hash_str(h, dq__st_dtype_name(dtype));
    dq__hash_u64(h, (uint64_t)ndim);
    for (int32_t d = 0; d < ndim; d++)
        dq__hash_u64(h, (uint64_t)shape[d]);
}

/* The checksum of a tensor: its name, dtype and shape, then its bytes. */
static uint64_t tensor_checksum(const char *name, int32_t dtype, int32_t ndim,
                                const int64_t *shape, const uint8_t *bytes, size_t nbytes)
{
    dq__hash h;
    dq__hash_init(&h, HASH_SEED_TENSOR);
    hash_tensor_head(&h, name, dtype, ndim, shape);
    dq__hash_update(&h, bytes, nbytes);
    return dq__hash_final(&h);
}

/* Exactly 16 lowercase hex digits. */
static bool parse_hex64(const char *v, uint64_t *out)
{
    uint64_t x = 0;
    size_t n = 0;
    for (; v[n] && n < 17; n++) {
        const char ch = v[n];
        const int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                                                                 : -1;
        if (d < 0)
            return false;
        x = x << 4 | (uint64_t)d;
    }
    if (n != 16)
        return false;
    *out = x;
    return true;
}

/* The header checksum of a parsed file: every metadata pair but "__hash__" in key order, then
 * every tensor's name, dtype, shape and data offsets in name order. */
static uint64_t file_header_checksum(const dq__st_file *f)
{
    dq__hash h;
    dq__hash_init(&h, HASH_SEED_HEADER);
    uint64_t n = 0;
    for (size_t i = 0; i < f->n_meta; i++) {
        const char *key = f->strs + f->meta[i].key, *value = f->strs + f->meta[i].value;
        if (strcmp(key, HASH_KEY) == 0)
            continue;
        dq__hash_str(&h, key);
        dq__hash_str(&h, value);
        n++;
    }
    dq__hash_u64(&h, n);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const dq__st_tensor *t = &f->tensors[i];
        hash_tensor_head(&h, t->name, t->dtype, t->ndim, t->shape);
        dq__hash_u64(&h, (uint64_t)t->begin);
        dq__hash_u64(&h, (uint64_t)t->end);
    }
    dq__hash_u64(&h, (uint64_t)f->n_tensors);
    return dq__hash_final(&h);
}

/* True when every code of a group with this scale and zero point dequantizes to a finite
 * float (the quantization rule's own test: it makes no other groups, so the writer refuses
 * the others and a reader can refuse them too). */
static bool dequant_finite(float scale, float zero, int32_t bits, int32_t scheme)
{
    return dq__qr_dequant_finite(bits, scheme, scale, zero);
}

/* ---- writer ---- */

DQ_API dq_status dq_file_writer_create(dq_context *ctx, dq_file_writer **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    const dq_context *c = dq__ctx(ctx);
    dq_file_writer *w = dq__calloc(c, 1, sizeof *w);
    if (!w)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "%zu bytes for the writer", sizeof *w);
    dq__context_keep(&w->ctx, c);
    w->tag = DQ__TAG_FILE_WRITER;
    w->spool_fd = -1;
    w->cap_meta = 8;
    w->meta = dq__calloc(c, w->cap_meta, sizeof *w->meta);
    char version[16];
    snprintf(version, sizeof version, "%d", FILE_VERSION_WRITTEN);
    if (w->meta) {
        w->meta[0].key = dup_str(c, "format");
        w->meta[0].value = dup_str(c, "duquant");
        w->meta[1].key = dup_str(c, "format_version");
        w->meta[1].value = dup_str(c, version);
        w->n_meta = 2;
    }
    if (!w->meta || !w->meta[0].key || !w->meta[0].value || !w->meta[1].key ||
        !w->meta[1].value) {
        dq_file_writer_free(w);
        return DQ_FAIL(c, DQ_ERR_NOMEM, "the writer's format metadata");
    }
    *out = w;
    return DQ_OK;
}

/* Drops everything added after the writer held n entries and n_meta pairs (their spooled
 * bytes are overwritten by the next tensors). */
static void truncate_writer(dq_file_writer *w, size_t n, size_t n_meta)
{
    while (w->n > n) {
        w->n--;
        dq__free(&w->ctx, w->e[w->n].name);
        dq__free(&w->ctx, w->e[w->n].bytes);
        if (w->spool_fd >= 0)
            w->spool_end = w->e[w->n].spool_offset;
    }
    while (w->n_meta > n_meta) {
        w->n_meta--;
        dq__free(&w->ctx, w->meta[w->n_meta].key);
        dq__free(&w->ctx, w->meta[w->n_meta].value);
    }
}

DQ_API void dq_file_writer_free(dq_file_writer *w)
{
    if (!w)
        return;
    DQ_CHECK_HANDLE_FREE(w, DQ__H_FILE_WRITER, "w");
    DQ_HANDLE_RETIRE(w, DQ__H_FILE_WRITER);
    dq_context c = w->ctx;
    truncate_writer(w, 0, 0);
    for (size_t i = 0; i < w->n_plans; i++)
        dq__free(&c, w->plans[i].prefix);
    dq__free(&c, w->plans);
    dq__free(&c, w->e);
    dq__free(&c, w->meta);
    if (w->spool_fd >= 0)
        close(w->spool_fd); /* unlinked when created: closing removes it */
    dq__free(&c, w);
    dq__context_drop(&c);
}

DQ_API dq_status dq_file_writer_spool(dq_file_writer *w, const char *path)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    if (!w)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "w is NULL");
    if (!path || !*path)
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "path is %s", path ? "empty" : "NULL");
    if (w->spool_fd >= 0 || w->n > 0)
        return DQ_FAIL(&w->ctx, DQ_ERR_BAD_STATE, "%s",
                       w->spool_fd >= 0 ? "the writer already spools"
                                        : "tensors were added before spooling was asked for");
    dq_status st = dq__spool_open(&w->ctx, __func__, path, &w->spool_fd);
    w->spool_end = 0;
    return st;
}

static bool name_taken(const dq_file_writer *w, const char *name)
{
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return true;
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta[i].key, name) == 0)
            return true;
    return false;
}

static bool valid_name(const char *s)
{
    return s && *s && dq__st_text_ok(s, strlen(s)) && strcmp(s, "__metadata__") != 0 &&
           !reserved_name(s);
}

/* Records "__hash__.<name>" = the checksum of the tensor just added (names are valid, so the
 * key is new). */
static dq_status push_checksum(dq_file_writer *w, const char *name, uint64_t sum)
{
    const size_t ln = strlen(name);
    char *key = dq__alloc(&w->ctx, HASH_PREFIX_LEN + ln + 1);
    char *value = dq__alloc(&w->ctx, 17);
    if (!key || !value ||
        dq__st_grow(&w->ctx, (void **)&w->meta, &w->cap_meta, sizeof *w->meta,
                    w->n_meta + 1) != DQ_OK) {
        dq__free(&w->ctx, key);
        dq__free(&w->ctx, value);
        return DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "checksum of tensor '%s'", name);
    }
    memcpy(key, HASH_PREFIX, HASH_PREFIX_LEN);
    memcpy(key + HASH_PREFIX_LEN, name, ln + 1);
    snprintf(value, 17, "%016" PRIx64, sum);
    w->meta[w->n_meta].key = key;
    w->meta[w->n_meta].value = value;
    w->n_meta++;
    return DQ_OK;
}

/* Takes ownership of name and bytes (freed on failure too). */
static dq_status push_entry(dq_file_writer *w, char *name, int32_t dtype, int32_t ndim,
                            const int64_t *shape, uint8_t *bytes, size_t nbytes)
{
    dq_status st;
    if (!name || (nbytes && !bytes)) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "%zu bytes for tensor '%s'", nbytes,
                     name ? name : "(name)");
        goto fail;
    }
    if (!valid_name(name) || name_taken(w, name)) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "tensor name '%s' %s", name,
                     valid_name(name) ? "is already used" : "is not a valid name");
        goto fail;
    }
    if ((st = dq__st_grow(&w->ctx, (void **)&w->e, &w->cap, sizeof *w->e, w->n + 1)) != DQ_OK)
        goto fail;
    dq__st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = dtype;
    e->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++)
        e->shape[d] = shape[d];
    e->bytes = bytes;
    e->nbytes = nbytes;
    if ((st = push_checksum(w, name, tensor_checksum(name, dtype, ndim, shape, bytes, nbytes))) !=
        DQ_OK) {
        w->n--;
        goto fail;
    }
    if (w->spool_fd >= 0) {
        char why[128];
        e->spool_offset = w->spool_end;
        if (dq__pwrite_all(w->spool_fd, bytes, nbytes, w->spool_end) != 0) {
            st = DQ_FAIL(&w->ctx, DQ_ERR_IO, "tensor '%s': write %zu bytes to the spool file: %s",
                         name, nbytes, dq__errno_text(errno, why, sizeof why));
            /* Drop the entry and its checksum: the writer stays as it was. */
            w->n--;
            w->n_meta--;
            dq__free(&w->ctx, w->meta[w->n_meta].key);
            dq__free(&w->ctx, w->meta[w->n_meta].value);
            goto fail;
        }
        w->spool_end += nbytes;
        e->bytes = NULL;
        dq__free(&w->ctx, bytes);
    }
    return DQ_OK;
fail:
    dq__free(&w->ctx, name);
    dq__free(&w->ctx, bytes);
    return st;
}

/* Takes ownership of key (freed on failure); value is copied. */
static dq_status push_meta(dq_file_writer *w, char *key, const char *value)
{
    dq_status st;
    char *v = NULL;
    if (!key) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "metadata key allocation");
        goto fail;
    }
    if (!valid_name(key) || name_taken(w, key)) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "metadata key '%s' %s", key,
                     valid_name(key) ? "is already used" : "is not a valid name");
        goto fail;
    }
    if (!dq__st_text_ok(value, strlen(value))) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG,
                     "value of metadata key '%s' is not valid text (UTF-8 without controls)",
                     key);
        goto fail;
    }
    if (!(v = dup_str(&w->ctx, value))) {
        st = DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "value of metadata key '%s'", key);
        goto fail;
    }
    st = dq__st_grow(&w->ctx, (void **)&w->meta, &w->cap_meta, sizeof *w->meta, w->n_meta + 1);
    if (st != DQ_OK)
        goto fail;
    w->meta[w->n_meta].key = key;
    w->meta[w->n_meta].value = v;
    w->n_meta++;
    return DQ_OK;
fail:
    dq__free(&w->ctx, key);
    dq__free(&w->ctx, v);
    return st;
}

static dq_status push_meta_int(dq_file_writer *w, char *key, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return push_meta(w, key, buf);
}

DQ_API dq_status dq_file_writer_add_metadata(dq_file_writer *w, const char *key,
                                             const char *value)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    if (!w || !key || !value)
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !w ? "w" : !key ? "key" : "value");
    return push_meta(w, dup_str(&w->ctx, key), value);
}

static dq_status add_f32(dq_file_writer *w, char *name, const float *data, int32_t ndim,
                         const int64_t *shape)
{
    size_t n = 1, bytes;
    /* A 0 anywhere in the shape means no data, whatever the other dimensions. */
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] == 0)
            n = 0;
    for (int32_t d = 0; d < ndim && n != 0; d++)
        if (!dq__mul_size(n, (size_t)shape[d], &n)) {
            dq_status st = DQ_FAIL(&w->ctx, DQ_ERR_OVERFLOW,
                                   "tensor '%s': element count overflows at dimension %d",
                                   name ? name : "", (int)d);
            dq__free(&w->ctx, name);
            return st;
        }
    if (!dq__mul_size(n, 4, &bytes)) {
        dq_status st = DQ_FAIL(&w->ctx, DQ_ERR_OVERFLOW, "tensor '%s': %zu floats overflow size_t",
                               name ? name : "", n);
        dq__free(&w->ctx, name);
        return st;
    }
    uint8_t *b = bytes ? dq__alloc(&w->ctx, bytes) : NULL;
    if (b)
        encode_f32(b, data, n);
    return push_entry(w, name, DQ__ST_F32, ndim, shape, b, bytes);
}

DQ_API dq_status dq_file_writer_add_tensor_f32(dq_file_writer *w, const char *name,
                                               const float *data, int32_t ndim,
                                               const int64_t *shape)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    if (!w || !name || (ndim > 0 && !shape))
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !w ? "w" : !name ? "name" : "shape");
    if (ndim < 0 || ndim > DQ_FILE_MAX_DIMS)
        return DQ_FAIL(&w->ctx, DQ_ERR_SHAPE, "tensor '%s': ndim %d outside [0, %d]", name,
                       (int)ndim, DQ_FILE_MAX_DIMS);
    int64_t count = 1;
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return DQ_FAIL(&w->ctx, DQ_ERR_SHAPE, "tensor '%s': shape[%d] %lld < 0", name,
                           (int)d, (long long)shape[d]);
        else if (shape[d] == 0)
            count = 0; /* no data, whatever the other dimensions (doc/formats.md) */
    for (int32_t d = 0; d < ndim && count != 0; d++) {
        if (count > INT64_MAX / shape[d])
            return DQ_FAIL(&w->ctx, DQ_ERR_OVERFLOW,
                           "tensor '%s': element count overflows at shape[%d] %lld", name,
                           (int)d, (long long)shape[d]);
        count *= shape[d];
    }
    if (count > 0 && !data)
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "tensor '%s': data is NULL for %lld elements",
                       name, (long long)count);
    return add_f32(w, dup_str(&w->ctx, name), data, ndim, shape);
}

static bool valid_prefix(const char *prefix)
{
    return valid_name(prefix);
}

static dq_status add_plan_parts(dq_file_writer *w, const char *prefix, const dq_plan *pl)
{
    const dq_context *c = &w->ctx;
    int64_t cols;
    int32_t has_s, n_rot;
    dq_status st = dq_plan_width(pl, &cols);
    if (st == DQ_OK)
        st = dq_plan_layout(pl, &has_s, &n_rot);
    if (st != DQ_OK)
        return st;
    if ((st = push_meta(w, join(c, prefix, "type"), "plan")) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "cols"), cols)) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "n_rotations"), n_rot)) != DQ_OK)
        return st;
    if (has_s) {
        float *s = dq__alloc(c, (size_t)cols * sizeof(float));
        if (!s)
            return DQ_FAIL(c, DQ_ERR_NOMEM, "plan '%s': %lld smoothing scales", prefix,
                           (long long)cols);
        st = dq_plan_smooth_scales(pl, s, cols);
        if (st == DQ_OK)
            st = add_f32(w, join(c, prefix, "smooth"), s, 1, &cols);
        dq__free(c, s);
        if (st != DQ_OK)
            return st;
    }
    for (int32_t i = 0; i < n_rot; i++) {
        const dq_rotation *r;
        if ((st = dq_plan_rotation(pl, i, &r)) != DQ_OK)
            return st;
        if (!r)
            continue;
        int32_t bs;
        int64_t nm;
        if ((st = dq_rotation_layout(r, NULL, &bs, NULL, &nm)) != DQ_OK ||
            (st = push_meta_int(w, join_idx(c, prefix, "rot", i, ".block_size"), bs)) != DQ_OK ||
            (st = push_meta_int(w, join_idx(c, prefix, "rot", i, ".n_matrices"), nm)) != DQ_OK)
            return st;
        for (int64_t m = 0; m < nm; m++) {
            int32_t size;
            if ((st = dq_rotation_matrix(r, m, NULL, 0, &size)) != DQ_OK)
                return st;
            float *mat = dq__alloc(c, (size_t)size * (size_t)size * sizeof(float));
            if (!mat)
                return DQ_FAIL(c, DQ_ERR_NOMEM, "plan '%s': rotation matrix of size %d", prefix,
                               (int)size);
            st = dq_rotation_matrix(r, m, mat, size, &size);
            char part[64];
            snprintf(part, sizeof part, "rot%d.m%lld", (int)i, (long long)m);
            const int64_t shape[2] = {size, size};
            if (st == DQ_OK)
                st = add_f32(w, join(c, prefix, part), mat, 2, shape);
            dq__free(c, mat);
            if (st != DQ_OK)
                return st;
        }
    }
    for (int32_t i = 0; i + 1 < n_rot; i++) {
        size_t bytes = (size_t)cols * 8;
        int64_t *perm = dq__alloc(c, (size_t)cols * sizeof(int64_t));
        uint8_t *b = dq__alloc(c, bytes);
        st = perm && b ? dq_plan_permutation(pl, i, perm, cols)
                       : DQ_FAIL(c, DQ_ERR_NOMEM, "plan '%s': permutation of %lld", prefix,
                                 (long long)cols);
        if (st == DQ_OK) {
            for (int64_t j = 0; j < cols; j++) {
                put_le32(b + 8 * j, (uint32_t)(uint64_t)perm[j]);
                put_le32(b + 8 * j + 4, (uint32_t)((uint64_t)perm[j] >> 32));
            }
            st = push_entry(w, join_idx(c, prefix, "perm", i, ""), DQ__ST_I64, 1, &cols, b, bytes);
            b = NULL;
        }
        dq__free(c, perm);
        dq__free(c, b);
        if (st != DQ_OK)
            return st;
    }
    return DQ_OK;
}

/* Records the fingerprint of the plan just added under prefix. */
static dq_status remember_plan(dq_file_writer *w, const char *prefix, const dq_plan *pl)
{
    uint64_t fp;
    dq_status st = dq__plan_fingerprint(&w->ctx, pl, &fp);
    if (st != DQ_OK)
        return DQ_FAIL(&w->ctx, st, "no scratch to fingerprint the plan '%s'", prefix);
    if ((st = dq__st_grow(&w->ctx, (void **)&w->plans, &w->cap_plans, sizeof *w->plans,
                          w->n_plans + 1)) != DQ_OK)
        return DQ_FAIL(&w->ctx, st, "no memory to record the plan '%s'", prefix);
    char *name = dup_str(&w->ctx, prefix);
    if (!name)
        return DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "no memory to record the plan '%s'", prefix);
    w->plans[w->n_plans].prefix = name;
    w->plans[w->n_plans].fingerprint = fp;
    w->n_plans++;
    return DQ_OK;
}

DQ_API dq_status dq_file_writer_add_plan(dq_file_writer *w, const char *prefix,
                                         const dq_plan *pl)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    DQ_CHECK_HANDLE(w ? &w->ctx : NULL, pl, DQ__H_PLAN, "pl");
    if (!w || !pl || !valid_prefix(prefix))
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s", !w ? "w is NULL"
                       : !pl ? "pl is NULL" : "prefix is NULL, empty or not valid text");
    size_t n = w->n, n_meta = w->n_meta;
    dq_status st = add_plan_parts(w, prefix, pl);
    if (st == DQ_OK)
        st = remember_plan(w, prefix, pl);
    if (st != DQ_OK)
        truncate_writer(w, n, n_meta);
    return st;
}

static dq_status add_qmatrix_parts(dq_file_writer *w, const char *prefix, const dq_qmatrix *q)
{
    const dq_context *c = &w->ctx;
    dq_status st;
    /* Only what a reader accepts (dequant_finite). */
    for (size_t g = 0; g < (size_t)q->rows * (size_t)q->groups_per_row; g++)
        if (!dequant_finite(q->scales[g], q->zeros ? q->zeros[g] : 0.0f, q->bits, q->scheme))
            return DQ_FAIL(c, DQ_ERR_OVERFLOW, "'%s': group %zu (scale %g, zero point %g) "
                           "dequantizes beyond the float range", prefix, g,
                           (double)q->scales[g], q->zeros ? (double)q->zeros[g] : 0.0);
    if ((st = push_meta(w, join(c, prefix, "type"), "qmatrix")) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "cols"), q->cols)) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "bits"), q->bits)) != DQ_OK ||
        (st = push_meta(w, join(c, prefix, "scheme"),
                        q->scheme == DQ_QUANT_SYM ? "sym" : "asym")) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "group_size"), q->group_size)) != DQ_OK)
        return st;
    if (q->plan_fingerprint) { /* absent: packed without a plan */
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, q->plan_fingerprint);
        if ((st = push_meta(w, join(c, prefix, "plan_fingerprint"), hex)) != DQ_OK)
            return st;
    }
    const int64_t pshape[2] = {q->rows, (int64_t)q->row_bytes};
    uint8_t *packed = dq__alloc(c, q->nbytes);
    if (packed)
        memcpy(packed, q->packed, q->nbytes);
    if ((st = push_entry(w, join(c, prefix, "packed"), DQ__ST_U8, 2, pshape, packed,
                         q->nbytes)) != DQ_OK)
        return st;
    const int64_t gshape[2] = {q->rows, q->groups_per_row};
    if ((st = add_f32(w, join(c, prefix, "scales"), q->scales, 2, gshape)) != DQ_OK)
        return st;
    if (q->zeros)
        st = add_f32(w, join(c, prefix, "zeros"), q->zeros, 2, gshape);
    return st;
}

DQ_API dq_status dq_file_writer_add_qmatrix(dq_file_writer *w, const char *prefix,
                                            const dq_qmatrix *q)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    DQ_CHECK_HANDLE(w ? &w->ctx : NULL, q, DQ__H_QMATRIX, "q");
    if (!w || !q || !valid_prefix(prefix))
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s", !w ? "w is NULL"
                       : !q ? "q is NULL" : "prefix is NULL, empty or not valid text");
    size_t n = w->n, n_meta = w->n_meta;
    dq_status st = add_qmatrix_parts(w, prefix, q);
    if (st != DQ_OK)
        truncate_writer(w, n, n_meta);
    return st;
}

static int cmp_meta_ptr(const void *a, const void *b)
{
    return strcmp((*(const dq__st_meta *const *)a)->key, (*(const dq__st_meta *const *)b)->key);
}

typedef struct placed_entry {
    const dq__st_entry *e;
    uint64_t begin; /* data offset, as dq__st_write places it */
} placed_entry;

static int cmp_placed(const void *a, const void *b)
{
    return strcmp(((const placed_entry *)a)->e->name, ((const placed_entry *)b)->e->name);
}

/* The header checksum of the file the writer writes, as file_header_checksum computes it from
 * the parsed file. */
static dq_status writer_header_checksum(const dq_file_writer *w, uint64_t *sum)
{
    const dq_context *c = &w->ctx;
    const dq__st_meta **m = dq__calloc(c, w->n_meta + 1, sizeof *m);
    placed_entry *t = dq__calloc(c, w->n + 1, sizeof *t);
    if (!m || !t) {
        dq__free(c, m);
        dq__free(c, t);
        return DQ_FAIL(c, DQ_ERR_NOMEM, "%zu metadata pairs and %zu tensors to checksum",
                       w->n_meta, w->n);
    }
    for (size_t i = 0; i < w->n_meta; i++)
        m[i] = &w->meta[i];
    /* dq__st_write's order: 8-byte elements first, then 4, 2 and 1, consecutive from 0. */
    uint64_t off = 0;
    size_t k = 0;
    for (int pass = 0; pass < DQ__ST_N_PASSES; pass++)
        for (size_t i = 0; i < w->n; i++)
            if (dq__st_dtype_size(w->e[i].dtype) == dq__st_order_size(pass)) {
                t[k].e = &w->e[i];
                t[k++].begin = off;
                off += w->e[i].nbytes;
            }
    qsort(m, w->n_meta, sizeof *m, cmp_meta_ptr);
    qsort(t, k, sizeof *t, cmp_placed);
    dq__hash h;
    dq__hash_init(&h, HASH_SEED_HEADER);
    for (size_t i = 0; i < w->n_meta; i++) {
        dq__hash_str(&h, m[i]->key);
        dq__hash_str(&h, m[i]->value);
    }
    dq__hash_u64(&h, (uint64_t)w->n_meta);
    for (size_t i = 0; i < k; i++) {
        hash_tensor_head(&h, t[i].e->name, t[i].e->dtype, t[i].e->ndim, t[i].e->shape);
        dq__hash_u64(&h, t[i].begin);
        dq__hash_u64(&h, t[i].begin + t[i].e->nbytes);
    }
    dq__hash_u64(&h, (uint64_t)k);
    *sum = dq__hash_final(&h);
    dq__free(c, m);
    dq__free(c, t);
    return DQ_OK;
}

/* The metadata as written: the pairs added, then key ("__hash__") = the header's checksum,
 * written into value (17 bytes). *out is freed by the caller. */
static dq_status final_meta(const dq_file_writer *w, char *key, char *value, dq__st_meta **out)
{
    uint64_t sum = 0;
    dq_status st = writer_header_checksum(w, &sum);
    if (st != DQ_OK)
        return st;
    dq__st_meta *meta = dq__alloc(&w->ctx, (w->n_meta + 1) * sizeof *meta);
    if (!meta)
        return DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "%zu metadata pairs", w->n_meta + 1);
    snprintf(value, 17, "%016" PRIx64, sum);
    memcpy(meta, w->meta, w->n_meta * sizeof *meta);
    meta[w->n_meta].key = key;
    meta[w->n_meta].value = value;
    *out = meta;
    return DQ_OK;
}

/* Visits the tensors in the order of the data section (dq__st_write's). */
#define FOR_EACH_IN_FILE_ORDER(w, e)                                                   \
    for (int pass_ = 0; pass_ < DQ__ST_N_PASSES; pass_++)                              \
        for (const dq__st_entry *e = (w)->e; e < (w)->e + (w)->n; e++)                 \
            if (dq__st_dtype_size(e->dtype) == dq__st_order_size(pass_))

DQ_API dq_status dq_file_writer_to_buffer(const dq_file_writer *w, void *buf, size_t cap,
                                          size_t *size)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    if (!w || !size)
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !w ? "w" : "size");
    char key[] = HASH_KEY, value[17];
    dq__st_meta *meta = NULL;
    dq_status st = final_meta(w, key, value, &meta);
    if (st != DQ_OK)
        return st;
    size_t head = 0, need = 0;
    st = dq__st_write_head(&w->ctx, w->e, w->n, meta, w->n_meta + 1, NULL, 0, &head, &need);
    if (st == DQ_OK) {
        *size = need;
        if (buf && cap < need)
            st = DQ_FAIL(&w->ctx, DQ_ERR_BUFFER, "cap %zu < %zu bytes needed", cap, need);
        else if (buf && w->spool_fd < 0)
            st = dq__st_write(&w->ctx, w->e, w->n, meta, w->n_meta + 1, buf, cap, &need);
        else if (buf)
            st = dq__st_write_head(&w->ctx, w->e, w->n, meta, w->n_meta + 1, buf, cap, &head,
                                   &need);
    }
    dq__free(&w->ctx, meta);
    if (st != DQ_OK || !buf || w->spool_fd < 0)
        return st;
    /* Spooled: the data section read back from the spool file. */
    uint8_t *o = (uint8_t *)buf + head;
    FOR_EACH_IN_FILE_ORDER(w, e) {
        char why[128];
        if (dq__pread_all(w->spool_fd, o, e->nbytes, e->spool_offset) != 0)
            return DQ_FAIL(&w->ctx, DQ_ERR_IO, "tensor '%s': read %zu bytes of the spool file: %s",
                           e->name, e->nbytes, dq__errno_text(errno, why, sizeof why));
        o += e->nbytes;
    }
    return DQ_OK;
}

/* dq_file_writer_save's data: the header, then each tensor from memory or, through a buffer of
 * SPOOL_CHUNK bytes, from the spool file. */
#define SPOOL_CHUNK ((size_t)1 << 20)

typedef struct save_job {
    const dq_file_writer *w;
    const uint8_t *head;
    size_t head_size;
    uint8_t *chunk; /* SPOOL_CHUNK bytes, spooling writers only */
} save_job;

static dq_status fill_file(void *user, int fd, const char *tmp)
{
    const save_job *j = user;
    const dq_file_writer *w = j->w;
    char why[128];
    if (dq__write_all(fd, j->head, j->head_size) != 0)
        goto write_failed;
    FOR_EACH_IN_FILE_ORDER(w, e) {
        if (w->spool_fd < 0) {
            if (dq__write_all(fd, e->bytes, e->nbytes) != 0)
                goto write_failed;
            continue;
        }
        for (size_t done = 0; done < e->nbytes;) {
            size_t k = e->nbytes - done < SPOOL_CHUNK ? e->nbytes - done : SPOOL_CHUNK;
            if (dq__pread_all(w->spool_fd, j->chunk, k, e->spool_offset + done) != 0)
                return dq__fail(&w->ctx, DQ_ERR_IO, "dq_file_writer_save",
                                "tensor '%s': read %zu bytes of the spool file: %s", e->name, k,
                                dq__errno_text(errno, why, sizeof why));
            if (dq__write_all(fd, j->chunk, k) != 0)
                goto write_failed;
            done += k;
        }
    }
    return DQ_OK;
write_failed:
    return dq__fail(&w->ctx, DQ_ERR_IO, "dq_file_writer_save", "write '%s': %s", tmp,
                    dq__errno_text(errno, why, sizeof why));
}

DQ_API dq_status dq_file_writer_save(const dq_file_writer *w, const char *path)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    if (!w)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "w is NULL");
    if (!path || !*path)
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "path is %s", path ? "empty" : "NULL");
    char key[] = HASH_KEY, value[17];
    dq__st_meta *meta = NULL;
    dq_status st = final_meta(w, key, value, &meta);
    if (st != DQ_OK)
        return st;
    save_job j = {w, NULL, 0, NULL};
    uint8_t *head = NULL;
    size_t total = 0;
    st = dq__st_write_head(&w->ctx, w->e, w->n, meta, w->n_meta + 1, NULL, 0, &j.head_size,
                           &total);
    if (st == DQ_OK) {
        head = dq__alloc(&w->ctx, j.head_size);
        j.chunk = w->spool_fd >= 0 ? dq__alloc(&w->ctx, SPOOL_CHUNK) : NULL;
        if (!head || (w->spool_fd >= 0 && !j.chunk))
            st = DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "%zu bytes for the header of '%s'%s",
                         j.head_size, path, w->spool_fd >= 0 ? " and a copy buffer" : "");
    }
    if (st == DQ_OK)
        st = dq__st_write_head(&w->ctx, w->e, w->n, meta, w->n_meta + 1, head, j.head_size,
                               &j.head_size, &total);
    j.head = head;
    /* Temporary file, fsync, rename, fsync of the folder: the old file stays whole until the
     * new one is complete. */
    if (st == DQ_OK)
        st = dq__save_atomic_fill(&w->ctx, __func__, path, fill_file, &j);
    dq__free(&w->ctx, head);
    dq__free(&w->ctx, j.chunk);
    dq__free(&w->ctx, meta);
    return st;
}

/* ---- reader ---- */

/* Objects in the blocked layout (format version 2), defined at the end of the file. */
static bool is_blocked(const dq_file_reader *r, const char *prefix, dq_status *st);
static dq_status get_qmatrix_blocked(const dq_file_reader *r, const dq_context *c,
                                     const char *prefix, dq_qmatrix **out);
static dq_status get_linear_blocked(const dq_file_reader *r, const dq_context *c,
                                    const char *prefix, const char *wprefix,
                                    const dq_linear_params *p, const dq_plan *plan,
                                    dq_linear **out);

static dq_status read_file_params(const dq_context *ctx, const char *func,
                                  const dq_file_params *user, dq_file_params *p)
{
    dq_file_params_init(p, sizeof *p);
    dq_status st = dq__params_read_at(ctx, func, "params", p, sizeof *p, FILE_PARAMS_MIN_SIZE,
                                      user);
    if (st != DQ_OK)
        return st;
    if ((p->flags & ~(uint32_t)(DQ_FILE_F_BORROW | DQ_FILE_F_TRUSTED)) != 0)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func, "params->flags 0x%x has unknown bits",
                        (unsigned)p->flags);
    if (p->max_header_bytes < 2 || p->max_header_bytes > DQ__ST_MAX_HEADER)
        return dq__fail(ctx, DQ_ERR_INVALID_ARG, func,
                        "params->max_header_bytes %llu outside [2, %llu]",
                        (unsigned long long)p->max_header_bytes,
                        (unsigned long long)DQ__ST_MAX_HEADER);
    return DQ_OK;
}

/* Files of version 3 carry checksums: the header's ("__hash__", checked here, when the file is
 * opened, whatever the flags) and each tensor's ("__hash__.<name>", checked by verify_tensor
 * when a getter reads the tensor). Files of versions 1 and 2 have none; a file that has
 * "__hash__" is held to its checksums whatever its version. */
static dq_status check_checksums(const dq_context *c, const dq__st_file *f, int64_t version)
{
    const char *v = dq__st_meta_find(f, HASH_KEY);
    if (!v) {
        if (version >= FILE_VERSION_CHECKSUMS)
            return DQ_FAIL(c, DQ_ERR_FORMAT, "format_version %lld but no metadata '%s' (the "
                           "header checksum)", (long long)version, HASH_KEY);
        return DQ_OK;
    }
    uint64_t want, got = file_header_checksum(f);
    if (!parse_hex64(v, &want))
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s' is '%.40s', expected 16 lowercase hex "
                       "digits", HASH_KEY, v);
    if (got != want)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "header checksum %016" PRIx64 " differs from the "
                       "recorded %016" PRIx64 " (metadata '%s'): the header was changed", got,
                       want, HASH_KEY);
    /* Every tensor has its checksum and every checksum its tensor. */
    size_t n_sums = 0;
    for (size_t i = 0; i < f->n_meta; i++) {
        const char *key = f->strs + f->meta[i].key, *value = f->strs + f->meta[i].value;
        if (strncmp(key, HASH_PREFIX, HASH_PREFIX_LEN) != 0)
            continue;
        uint64_t x;
        if (!parse_hex64(value, &x))
            return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s' is '%.40s', expected 16 lowercase "
                           "hex digits", key, value);
        if (!dq__st_find(f, key + HASH_PREFIX_LEN))
            return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s' is the checksum of a tensor the "
                           "file does not hold", key);
        n_sums++;
    }
    if (n_sums != f->n_tensors)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "%zu tensors but %zu checksums ('%s<name>'): a tensor "
                       "has none", f->n_tensors, n_sums, HASH_PREFIX);
    return DQ_OK;
}

/* The tensor's bytes against its checksum, unless the reader was told to trust its data
 * (DQ_FILE_F_TRUSTED) or the file has no checksums (versions 1 and 2). Logs through the
 * reader's context. */
static dq_status verify_tensor(const dq_file_reader *r, const dq__st_tensor *t)
{
    const dq_context *c = &r->ctx;
    if ((r->flags & DQ_FILE_F_TRUSTED) || !dq__st_meta_find(&r->f, HASH_KEY))
        return DQ_OK;
    char small[192], *key = small;
    const size_t ln = strlen(t->name);
    if (HASH_PREFIX_LEN + ln + 1 > sizeof small && !(key = dq__alloc(c, HASH_PREFIX_LEN + ln + 1)))
        return DQ_FAIL(c, DQ_ERR_NOMEM, "checksum key of tensor '%s'", t->name);
    memcpy(key, HASH_PREFIX, HASH_PREFIX_LEN);
    memcpy(key + HASH_PREFIX_LEN, t->name, ln + 1);
    const char *v = dq__st_meta_find(&r->f, key);
    if (key != small)
        dq__free(c, key);
    uint64_t want;
    if (!v || !parse_hex64(v, &want)) /* checked when the file was opened */
        return DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' has no valid checksum", t->name);
    const uint64_t got = tensor_checksum(t->name, t->dtype, t->ndim, t->shape,
                                         r->f.data + t->begin, t->end - t->begin);
    if (got != want)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s': checksum %016" PRIx64 " of its name, "
                       "dtype, shape and bytes differs from the recorded %016" PRIx64 ": the "
                       "file was changed", t->name, got, want);
    return DQ_OK;
}

/* The container must say it is ours, in a version this library reads. */
static dq_status check_format(const dq_context *c, const dq__st_file *f)
{
    const char *fmt = dq__st_meta_find(f, "format");
    const char *ver = dq__st_meta_find(f, "format_version");
    int64_t v;
    if (!fmt || strcmp(fmt, "duquant") != 0)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata 'format' is %s%s%s, expected \"duquant\"",
                       fmt ? "\"" : "", fmt ? fmt : "absent", fmt ? "\"" : "");
    if (!parse_int(ver, INT32_MAX, &v) || v < 1)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata 'format_version' is '%s', expected a "
                       "positive integer", ver ? ver : "(absent)");
    if (v > DQ_FILE_FORMAT_VERSION)
        return DQ_FAIL(c, DQ_ERR_UNSUPPORTED, "format_version %lld is newer than %d, the newest "
                       "this library reads", (long long)v, DQ_FILE_FORMAT_VERSION);
    return check_checksums(c, f, v);
}

/* Bounded reading. Opening reads the 8-byte length and the header only, validates them (the
 * tensor table against the file's size, the format metadata), and only then reads or maps the
 * data section. The default limit of what one call may allocate for a file: 4 times its size
 * plus 16 MiB (the header's table is at most about twice the header, a data copy the data
 * size, a loaded object at most about twice the bytes it is read from). */
#define ALLOC_DEFAULT_FACTOR 4
#define ALLOC_DEFAULT_EXTRA ((uint64_t)16 << 20)

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

/* Where a new reader's bytes come from: a buffer, or an open regular file. */
typedef struct reader_src {
    const char *func; /* the public function, for messages */
    const uint8_t *buf; /* NULL for a file */
    int fd;
    const char *path;
    uint64_t size;
} reader_src;

/* n bytes at offset off of the source into dst; a file that ends early is DQ_ERR_IO. */
static dq_status src_read(const dq_context *c, const reader_src *s, uint64_t off, uint8_t *dst,
                          size_t n)
{
    if (s->buf) {
        memcpy(dst, s->buf + off, n);
        return DQ_OK;
    }
    char why[128];
    size_t done = 0;
    while (done < n) {
        const size_t chunk = n - done < ((size_t)1 << 30) ? n - done : (size_t)1 << 30;
        const ssize_t got = pread(s->fd, dst + done, chunk, (off_t)(off + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return dq__fail(c, DQ_ERR_IO, s->func, "read '%s': %s", s->path,
                            dq__errno_text(errno, why, sizeof why));
        if (got == 0)
            return dq__fail(c, DQ_ERR_IO, s->func, "read '%s': %llu of %llu bytes (file shrank)",
                            s->path, (unsigned long long)(off + done),
                            (unsigned long long)s->size);
        done += (size_t)got;
    }
    return DQ_OK;
}

/* A byte for the data pointer of a reader without data (no tensor has bytes). */
static const uint8_t no_data[1];

/* Creates the reader: header first, validated, then the data section read (copied), borrowed
 * from the caller's buffer or mapped (DQ_FILE_F_BORROW). */
static dq_status reader_create(const dq_context *c, const dq_file_params *p,
                               const reader_src *src, dq_file_reader **out)
{
    const char *what = src->path ? src->path : "buffer";
    if (src->size < 8)
        return dq__fail(c, DQ_ERR_FORMAT, src->func,
                        "'%s': %llu bytes, shorter than the 8-byte header length", what,
                        (unsigned long long)src->size);
    const uint64_t limit = p->max_alloc_bytes
                               ? p->max_alloc_bytes
                               : sat_add(sat_mul(src->size, ALLOC_DEFAULT_FACTOR),
                                         ALLOC_DEFAULT_EXTRA);
    uint8_t head[8], *hbuf = NULL;
    uint64_t n;
    dq_status st = src_read(c, src, 0, head, 8);
    if (st != DQ_OK || (st = dq__st_header_length(c, head, src->size, p->max_header_bytes,
                                                  &n)) != DQ_OK)
        return st;
    const uint64_t data_size = src->size - 8 - n;
    const uint8_t *header = src->buf ? src->buf + 8 : NULL;
    /* Held at once: the reader, the header read (files), its table; then the reader, the table
     * and the data. */
    const uint64_t base = sizeof(dq_file_reader);
    if (base > limit)
        return dq__fail(c, DQ_ERR_NOMEM, src->func, "'%s': max_alloc_bytes %llu is below the "
                        "reader's own %llu bytes", what, (unsigned long long)limit,
                        (unsigned long long)base);
    if (!header) {
        if (n > limit - base)
            return dq__fail(c, DQ_ERR_NOMEM, src->func, "'%s': a header of %llu bytes, more "
                            "than the %llu allowed (dq_file_params.max_alloc_bytes)", what,
                            (unsigned long long)n, (unsigned long long)limit);
        if (!(hbuf = dq__alloc(c, (size_t)n)))
            return dq__fail(c, DQ_ERR_NOMEM, src->func, "'%s': %llu bytes for the header", what,
                            (unsigned long long)n);
        if ((st = src_read(c, src, 8, hbuf, (size_t)n)) != DQ_OK) {
            dq__free(c, hbuf);
            return st;
        }
        header = hbuf;
    }
    dq_file_reader *r = dq__calloc(c, 1, sizeof *r);
    if (!r) {
        dq__free(c, hbuf);
        return dq__fail(c, DQ_ERR_NOMEM, src->func, "%zu bytes for the reader", sizeof *r);
    }
    dq__context_keep(&r->ctx, c);
    r->tag = DQ__TAG_FILE_READER;
    r->flags = p->flags;
    r->max_alloc = limit;
    r->file_size = src->size;
    r->borrowed = (p->flags & DQ_FILE_F_BORROW) != 0;
    /* The table holds its own copy of every string: the header buffer goes right after. */
    st = dq__st_parse_header(c, header, (size_t)n, data_size, limit - base - (hbuf ? n : 0),
                             &r->f);
    dq__free(c, hbuf);
    if (st == DQ_OK)
        st = check_format(c, &r->f);
    if (st == DQ_OK && !r->borrowed && data_size > limit - base - r->f.alloc_bytes)
        st = dq__fail(c, DQ_ERR_NOMEM, src->func, "'%s': a data section of %llu bytes, more "
                      "than the %llu allowed after the header's table "
                      "(dq_file_params.max_alloc_bytes %llu)", what,
                      (unsigned long long)data_size,
                      (unsigned long long)(limit - base - r->f.alloc_bytes),
                      (unsigned long long)limit);
    if (st == DQ_OK && data_size == 0) {
        r->f.data = no_data;
    } else if (st == DQ_OK && r->borrowed && src->buf) {
        r->f.data = src->buf + 8 + n;
    } else if (st == DQ_OK && r->borrowed) {
        /* Mapped read-only: the reader and the layers it creates read the pages in place. */
        void *map = mmap(NULL, (size_t)src->size, PROT_READ, MAP_PRIVATE, src->fd, 0);
        if (map == MAP_FAILED) {
            char why[128];
            const int e = errno;
            st = dq__fail(c, e == ENOMEM ? DQ_ERR_NOMEM : DQ_ERR_IO, src->func,
                          "mmap '%s' (%llu bytes): %s", what, (unsigned long long)src->size,
                          dq__errno_text(e, why, sizeof why));
        } else {
            const long page = sysconf(_SC_PAGESIZE);
            r->map = map;
            r->map_size = (size_t)src->size;
            r->page = page > 0 ? (size_t)page : 4096;
            r->f.data = (const uint8_t *)map + 8 + n;
        }
    } else if (st == DQ_OK) {
        if (!(r->owned = dq__alloc(c, (size_t)data_size)))
            st = dq__fail(c, DQ_ERR_NOMEM, src->func, "'%s': %llu bytes for the data section",
                          what, (unsigned long long)data_size);
        else if ((st = src_read(c, src, 8 + n, r->owned, (size_t)data_size)) == DQ_OK)
            r->f.data = r->owned;
    }
    if (st != DQ_OK) {
        dq_file_reader_free(r);
        return st;
    }
    *out = r;
    return DQ_OK;
}

DQ_API dq_status dq_file_reader_from_buffer(dq_context *ctx, const dq_file_params *params,
                                            const void *buf, size_t size, dq_file_reader **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_file_params p;
    dq_status st = read_file_params(ctx, __func__, params, &p);
    if (st != DQ_OK)
        return st;
    if (!buf)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "buf is NULL");
    const reader_src src = {__func__, buf, -1, NULL, size};
    return reader_create(dq__ctx(ctx), &p, &src, out);
}

DQ_API dq_status dq_file_reader_open(dq_context *ctx, const dq_file_params *params,
                                     const char *path, dq_file_reader **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    dq_file_params p;
    dq_status st = read_file_params(ctx, __func__, params, &p);
    if (st != DQ_OK)
        return st;
    if (!path)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "path is NULL");
    const dq_context *c = dq__ctx(ctx);
    char why[128];
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return DQ_FAIL(c, DQ_ERR_IO, "open '%s': %s", path,
                       dq__errno_text(errno, why, sizeof why));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = DQ_FAIL(c, DQ_ERR_IO, "fstat '%s': %s", path, dq__errno_text(errno, why, sizeof why));
    } else if (!S_ISREG(sb.st_mode)) {
        st = DQ_FAIL(c, DQ_ERR_IO, "'%s' is not a regular file (mode %o)", path,
                     (unsigned)sb.st_mode);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = DQ_FAIL(c, DQ_ERR_OVERFLOW, "'%s' is %lld bytes, more than memory can address",
                     path, (long long)sb.st_size);
    } else {
        const reader_src src = {__func__, NULL, fd, path, (uint64_t)sb.st_size};
        st = reader_create(c, &p, &src, out);
    }
    close(fd);
    return st;
}

DQ_API void dq_file_reader_free(dq_file_reader *r)
{
    if (!r)
        return;
    DQ_CHECK_HANDLE_FREE(r, DQ__H_FILE_READER, "r");
    DQ_HANDLE_RETIRE(r, DQ__H_FILE_READER);
    dq_context c = r->ctx;
    dq__st_clear(&c, &r->f);
    dq__free(&c, r->owned);
    if (r->map)
        munmap(r->map, r->map_size);
    dq__free(&c, r);
    dq__context_drop(&c);
}

DQ_API dq_status dq_file_reader_count(const dq_file_reader *r, int64_t *n_tensors,
                                      int64_t *n_metadata)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "r is NULL");
    if (n_tensors)
        *n_tensors = (int64_t)r->f.n_tensors;
    if (n_metadata)
        *n_metadata = (int64_t)r->f.n_meta;
    return DQ_OK;
}

static dq_status copy_text(const dq_context *c, const char *func, const char *s, char *dst,
                           size_t cap, size_t *len)
{
    size_t n = strlen(s);
    if (len)
        *len = n;
    if (!dst)
        return DQ_OK;
    if (cap <= n)
        return dq__fail(c, DQ_ERR_BUFFER, func, "cap %zu < %zu bytes of '%s' and its NUL", cap,
                        n + 1, s);
    memcpy(dst, s, n + 1);
    return DQ_OK;
}

DQ_API dq_status dq_file_reader_tensor_name(const dq_file_reader *r, int64_t i, char *name,
                                            size_t cap, size_t *len)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r || (!name && !len))
        return DQ_FAIL(r ? &r->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !r ? "r" : "name and len are both");
    if (i < 0 || (uint64_t)i >= r->f.n_tensors)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "i %lld outside [0, %llu)", (long long)i,
                       (unsigned long long)r->f.n_tensors);
    return copy_text(&r->ctx, __func__, r->f.tensors[i].name, name, cap, len);
}

DQ_API dq_status dq_file_reader_metadata_key(const dq_file_reader *r, int64_t i, char *key,
                                             size_t cap, size_t *len)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r || (!key && !len))
        return DQ_FAIL(r ? &r->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !r ? "r" : "key and len are both");
    if (i < 0 || (uint64_t)i >= r->f.n_meta)
        return DQ_FAIL(&r->ctx, DQ_ERR_INVALID_ARG, "i %lld outside [0, %llu)", (long long)i,
                       (unsigned long long)r->f.n_meta);
    return copy_text(&r->ctx, __func__, dq__st_meta_key(&r->f, (size_t)i), key, cap, len);
}

DQ_API dq_status dq_file_reader_metadata(const dq_file_reader *r, const char *key, char *value,
                                         size_t cap, size_t *len)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r || !key || (!value && !len))
        return DQ_FAIL(r ? &r->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !r ? "r" : !key ? "key" : "value and len are both");
    const char *v = dq__st_meta_find(&r->f, key);
    if (!v)
        return DQ_FAIL(&r->ctx, DQ_ERR_FORMAT, "no metadata key '%s'", key);
    return copy_text(&r->ctx, __func__, v, value, cap, len);
}

DQ_API dq_status dq_file_reader_tensor_info(const dq_file_reader *r, const char *name,
                                            int32_t *dtype, int32_t *ndim, int64_t *shape)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r || !name)
        return DQ_FAIL(r ? &r->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL", !r ? "r" : "name");
    const dq__st_tensor *t = dq__st_find(&r->f, name);
    if (!t)
        return DQ_FAIL(&r->ctx, DQ_ERR_FORMAT, "no tensor '%s'", name);
    if (dtype)
        *dtype = t->dtype; /* DQ__ST_* are the DQ_DTYPE_* numbers */
    if (ndim)
        *ndim = t->ndim;
    if (shape)
        for (int32_t d = 0; d < t->ndim; d++)
            shape[d] = t->shape[d];
    return DQ_OK;
}

/* The bytes of tensor t: every read of a tensor's data goes through here. */
static const uint8_t *tensor_bytes(const dq_file_reader *r, const dq__st_tensor *t)
{
    return r->f.data + t->begin;
}

/* Gives back the pages of the mapping wholly inside bytes [begin, end) of the data section. */
static void drop_pages(const dq_file_reader *r, size_t begin, size_t end)
{
#if defined(__linux__) && defined(MADV_DONTNEED)
    const uintptr_t base = (uintptr_t)r->f.data, page = r->page;
    const uintptr_t a = (base + begin + page - 1) / page * page, b = (base + end) / page * page;
    if (b > a)
        (void)madvise((void *)a, b - a, MADV_DONTNEED); /* a hint: a failure changes nothing */
#else
    (void)r, (void)begin, (void)end;
#endif
}

/* After a getter copied tensors t[0..n) (NULL entries skipped) out of a mapped file, the pages
 * they were read from are given back: else every copied byte stays in memory twice, in the
 * copy and in the file's page (a 7B-shaped model's plans and embeddings: about 260 MB). The
 * mapping is private and read-only, so none of its pages was ever written: MADV_DONTNEED only
 * drops the process's reference, and a later read faults the page in again from the file,
 * same bytes. Pages that hold bytes of other tensors (which layers may read in place) stay;
 * tensors that lie next to each other count as one range, so a plan's many small matrices
 * give back all but their two edge pages. A caller's buffer is never touched. */
static void give_back(const dq_file_reader *r, const dq__st_tensor *const *t, size_t n)
{
    if (!r->map)
        return;
    size_t lo = SIZE_MAX, hi = 0, sum = 0;
    for (size_t i = 0; i < n; i++)
        if (t[i]) {
            lo = t[i]->begin < lo ? t[i]->begin : lo;
            hi = t[i]->end > hi ? t[i]->end : hi;
            sum += t[i]->end - t[i]->begin;
        }
    if (sum == 0)
        return;
    /* Tensors never overlap (dq__st_parse_header): equal sizes mean no gap between them. */
    if (sum == hi - lo) {
        drop_pages(r, lo, hi);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (t[i])
            drop_pages(r, t[i]->begin, t[i]->end);
}

/* Adds bytes, what a getter is about to allocate for the object under prefix (from declared
 * sizes), to the call's running total *used and checks it against the reader's limit:
 * DQ_ERR_NOMEM beyond it, both figures logged for func. */
static dq_status take_alloc(const dq_file_reader *r, const dq_context *c, const char *func,
                            const char *prefix, const char *what, uint64_t bytes, uint64_t *used)
{
    *used = sat_add(*used, bytes);
    if (*used <= r->max_alloc)
        return DQ_OK;
    return dq__fail(c, DQ_ERR_NOMEM, func,
                    "'%s': %s: %llu bytes in all, more than the %llu allowed "
                    "(dq_file_params.max_alloc_bytes; 0 = 4 x the file's %llu bytes + 16 MiB)",
                    prefix, what, (unsigned long long)*used, (unsigned long long)r->max_alloc,
                    (unsigned long long)r->file_size);
}

static size_t n_elems(const dq__st_tensor *t)
{
    return (t->end - t->begin) / dq__st_dtype_size(t->dtype);
}

DQ_API dq_status dq_file_reader_get_tensor_f32(const dq_file_reader *r, const char *name,
                                               float *out, int64_t n)
{
    DQ_CHECK_HANDLE(NULL, r, DQ__H_FILE_READER, "r");
    if (!r || !name || (!out && n > 0))
        return DQ_FAIL(r ? &r->ctx : NULL, DQ_ERR_INVALID_ARG, "%s is NULL",
                       !r ? "r" : !name ? "name" : "out");
    const dq__st_tensor *t = dq__st_find(&r->f, name);
    if (!t)
        return DQ_FAIL(&r->ctx, DQ_ERR_FORMAT, "no tensor '%s'", name);
    if (t->dtype != DQ__ST_F32)
        return DQ_FAIL(&r->ctx, DQ_ERR_FORMAT, "tensor '%s' has dtype %d, expected F32 (%d)",
                       name, (int)t->dtype, DQ__ST_F32);
    if (n < 0 || (uint64_t)n != n_elems(t))
        return DQ_FAIL(&r->ctx, DQ_ERR_SHAPE, "tensor '%s': n %lld, the tensor has %zu elements",
                       name, (long long)n, n_elems(t));
    dq_status st = verify_tensor(r, t);
    if (st != DQ_OK)
        return st;
    decode_f32(out, tensor_bytes(r, t), (size_t)n);
    give_back(r, &t, 1);
    return DQ_OK;
}

/* The tensor "<prefix>.<part>" with the given dtype and 1-D or 2-D shape (dim1 < 0: 1-D),
 * its checksum verified; NULL when absent, different or changed (a checksum mismatch is
 * logged by verify_tensor). */
static const dq__st_tensor *find_part(const dq_file_reader *r, const char *name, int32_t dtype,
                                      int64_t dim0, int64_t dim1)
{
    const dq__st_tensor *t = name ? dq__st_find(&r->f, name) : NULL;
    if (!t || t->dtype != dtype || t->ndim != (dim1 < 0 ? 1 : 2) || t->shape[0] != dim0 ||
        (dim1 >= 0 && t->shape[1] != dim1) || verify_tensor(r, t) != DQ_OK)
        return NULL;
    return t;
}

/* True when the name "<prefix>.<rest>" belongs to an object stored under a longer prefix
 * "<prefix>.<head>" (a layer's weights "<prefix>.weight", or any object placed inside another
 * one's prefix): metadata "<prefix>.<head>.type" names an object kind. */
static bool in_nested_object(const dq_file_reader *r, const char *name, size_t lp, bool *nomem)
{
    for (const char *d = strchr(name + lp + 1, '.'); d; d = strchr(d + 1, '.')) {
        const size_t hl = (size_t)(d - name);
        char *key = dq__alloc(&r->ctx, hl + sizeof ".type");
        if (!key) {
            *nomem = true;
            return false;
        }
        memcpy(key, name, hl);
        memcpy(key + hl, ".type", sizeof ".type");
        const char *v = dq__st_meta_find(&r->f, key);
        dq__free(&r->ctx, key);
        if (v && (strcmp(v, "plan") == 0 || strcmp(v, "qmatrix") == 0 ||
                  strcmp(v, "linear") == 0))
            return true;
    }
    return false;
}

/* <0, 0 or >0 as name sorts (strcmp) before, among or after the names "<prefix>.<rest>". */
static int cmp_under(const char *name, const char *prefix, size_t lp)
{
    const int c = strncmp(name, prefix, lp);
    return c ? c : (int)(unsigned char)name[lp] - (int)(unsigned char)'.';
}

static const char *tensor_name_at(const dq_file_reader *r, size_t i)
{
    return r->f.tensors[i].name;
}

static const char *meta_key_at(const dq_file_reader *r, size_t i)
{
    return dq__st_meta_key(&r->f, i);
}

/* Counts the names "<prefix>.<rest>" outside nested objects among n sorted names (name_at(r, i)
 * is the i-th): a binary search, then the run. */
static size_t count_under(const dq_file_reader *r, const char *(*name_at)(const dq_file_reader *,
                                                                          size_t),
                          size_t n, const char *prefix, size_t lp, bool *nomem)
{
    size_t lo = 0, hi = n, count = 0;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (cmp_under(name_at(r, mid), prefix, lp) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < n && !*nomem && cmp_under(name_at(r, i), prefix, lp) == 0; i++)
        count += !in_nested_object(r, name_at(r, i), lp, nomem);
    return count;
}

/* The manifest rule: the names under "<prefix>." (tensors and metadata keys, except those of
 * nested objects) are exactly the expect parts the loader of the object's kind read. Any other
 * name is a renamed, stray or unknown part: DQ_ERR_FORMAT, never ignored. */
static dq_status check_parts(const dq_file_reader *r, const dq_context *c, const char *prefix,
                             const char *kind, size_t expect)
{
    const size_t lp = strlen(prefix);
    bool nomem = false;
    /* Tensors are sorted by name and metadata by key. */
    size_t n = count_under(r, tensor_name_at, r->f.n_tensors, prefix, lp, &nomem);
    n += count_under(r, meta_key_at, r->f.n_meta, prefix, lp, &nomem);
    if (nomem)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "metadata keys under '%s'", prefix);
    if (n != expect)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "%s '%s': %zu names under '%s.', but its parts are "
                       "%zu: a part is renamed, or a name is not a part of a %s", kind, prefix,
                       n, prefix, expect, kind);
    return DQ_OK;
}

/* Metadata "<prefix>.<part>" as an integer in [0, max]; false when absent or malformed. */
static bool meta_int(const dq_file_reader *r, const char *prefix, const char *part, int64_t max,
                     int64_t *v, dq_status *st)
{
    char *key = join(&r->ctx, prefix, part);
    if (!key) {
        *st = DQ_FAIL(&r->ctx, DQ_ERR_NOMEM, "metadata key '%s.%s'", prefix, part);
        return false;
    }
    const char *text = dq__st_meta_find(&r->f, key);
    bool ok = parse_int(text, max, v);
    if (!ok)
        *st = DQ_FAIL(&r->ctx, DQ_ERR_FORMAT, "metadata '%s' is %s%s%s, expected an integer in "
                      "[0, %lld]", key, text ? "'" : "", text ? text : "absent",
                      text ? "'" : "", (long long)max);
    dq__free(&r->ctx, key);
    return ok;
}

static bool meta_is(const dq_file_reader *r, const char *prefix, const char *part,
                    const char *want, dq_status *st)
{
    char *key = join(&r->ctx, prefix, part);
    if (!key) {
        *st = DQ_FAIL(&r->ctx, DQ_ERR_NOMEM, "metadata key '%s.%s'", prefix, part);
        return false;
    }
    const char *v = dq__st_meta_find(&r->f, key);
    dq__free(&r->ctx, key);
    return v && strcmp(v, want) == 0;
}

static bool meta_has(const dq_file_reader *r, const char *prefix, const char *part,
                     dq_status *st)
{
    char *key = join(&r->ctx, prefix, part);
    if (!key) {
        *st = DQ_FAIL(&r->ctx, DQ_ERR_NOMEM, "metadata key '%s.%s'", prefix, part);
        return false;
    }
    bool has = dq__st_meta_find(&r->f, key) != NULL;
    dq__free(&r->ctx, key);
    return has;
}

/* Rotation slot i of the plan under prefix, or NULL (identity) when the file has none. */
static dq_status load_rotation(const dq_file_reader *r, dq_context *ctx, const char *prefix,
                               int32_t i, int64_t cols, uint64_t *used, dq_rotation **out)
{
    const dq_context *c = dq__ctx(ctx);
    *out = NULL;
    dq_status st = DQ_ERR_FORMAT;
    int64_t bs, nm;
    char bs_key[48], nm_key[48];
    snprintf(bs_key, sizeof bs_key, "rot%d.block_size", (int)i);
    snprintf(nm_key, sizeof nm_key, "rot%d.n_matrices", (int)i);
    if (!meta_has(r, prefix, bs_key, &st))
        return st == DQ_ERR_NOMEM ? st : DQ_OK;
    if (!meta_int(r, prefix, bs_key, 4096, &bs, &st) ||
        !meta_int(r, prefix, nm_key, INT64_MAX, &nm, &st))
        return st;
    if (bs < 2)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.%s' is %lld, expected >= 2", prefix,
                       bs_key, (long long)bs);
    int64_t n_blocks = cols / bs + (cols % bs != 0), full = cols / bs;
    int64_t shared = (full > 0) + (cols % bs != 0);
    bool per_block = nm == n_blocks;
    if (!per_block && nm != shared)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.%s' is %lld, expected %lld (one per "
                       "block) or %lld (shared) for cols %lld", prefix, nm_key, (long long)nm,
                       (long long)n_blocks, (long long)shared, (long long)cols);
    /* The declared sizes against the bytes present, before anything is allocated: every
     * matrix is a tensor of its own, of len x len floats. cols <= MAX_PLAN_COLS and
     * bs <= 4096 keep these counts far from overflowing. */
    const uint64_t ubs = (uint64_t)bs, rem = (uint64_t)(cols % bs);
    const uint64_t floats = (per_block ? (uint64_t)full : full > 0) * ubs * ubs + rem * rem;
    if ((uint64_t)nm > r->f.n_tensors || floats * 4 > r->f.data_size)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "rotation '%s.rot%d' declares %lld matrices of %llu "
                       "floats in all; the file holds %zu tensors, %zu data bytes", prefix,
                       (int)i, (long long)nm, (unsigned long long)floats, r->f.n_tensors,
                       r->f.data_size);
    /* Its floats read, then the rotation (per block: its matrix index; per matrix: size,
     * offset, search slot) and its copy in the plan. */
    const uint64_t rot_bytes = 8 * (uint64_t)n_blocks + 16 * (uint64_t)nm + 4 * floats;
    if ((st = take_alloc(r, c, "dq_file_reader_get_plan", prefix, "rotation matrices",
                         8 * (uint64_t)nm + 4 * floats + 2 * rot_bytes, used)) != DQ_OK)
        return st;
    size_t total = 0;
    const dq__st_tensor **parts = dq__calloc(c, (size_t)nm, sizeof *parts);
    if (!parts)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "%lld rotation matrices of '%s'", (long long)nm, prefix);
    st = DQ_OK;
    for (int64_t m = 0; m < nm && st == DQ_OK; m++) {
        int64_t len = per_block ? (cols - m * bs < bs ? cols - m * bs : bs)
                                : (m == 0 && full > 0 ? bs : cols % bs);
        char part[64];
        snprintf(part, sizeof part, "rot%d.m%lld", (int)i, (long long)m);
        char *name = join(c, prefix, part);
        if (!name) {
            st = DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.%s'", prefix, part);
            break;
        }
        parts[m] = find_part(r, name, DQ__ST_F32, len, len);
        if (!parts[m])
            st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is absent or not F32 [%lld, %lld]", name,
                         (long long)len, (long long)len);
        dq__free(c, name);
        if (st == DQ_OK)
            total += n_elems(parts[m]);
    }
    float *data = st == DQ_OK ? dq__alloc(c, total * sizeof(float)) : NULL;
    if (st == DQ_OK && !data)
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "%zu floats of rotation '%s.rot%d'", total, prefix, (int)i);
    if (st == DQ_OK) {
        size_t off = 0;
        for (int64_t m = 0; m < nm; m++) {
            decode_f32(data + off, tensor_bytes(r, parts[m]), n_elems(parts[m]));
            off += n_elems(parts[m]);
        }
        give_back(r, parts, (size_t)nm);
        char what[96];
        snprintf(what, sizeof what, "rotation '%s.rot%d'", prefix, (int)i);
        /* The rotation keeps the floats just decoded: no second copy. */
        st = dq__rotation_take_matrices(c, "dq_file_reader_get_plan", what, DQ_ERR_FORMAT,
                                        cols, (int32_t)bs, per_block, data, (int64_t)total,
                                        out);
    }
    if (st != DQ_OK)
        dq__free(c, data);
    dq__free(c, parts);
    return st;
}

static dq_status load_permutation(const dq_file_reader *r, const dq_context *c,
                                  const char *prefix, int32_t i, int64_t cols, uint64_t *used,
                                  int64_t **out)
{
    *out = NULL;
    char *name = join_idx(c, prefix, "perm", i, "");
    if (!name)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.perm%d'", prefix, (int)i);
    const dq__st_tensor *t = find_part(r, name, DQ__ST_I64, cols, -1);
    if (!t) {
        dq_status e = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is absent or not I64 [%lld]", name,
                              (long long)cols);
        dq__free(c, name);
        return e;
    }
    dq__free(c, name);
    /* Read and checked here, copied and checked again by the plan: 18 bytes per column. */
    dq_status st = take_alloc(r, c, "dq_file_reader_get_plan", prefix, "permutations",
                              18 * (uint64_t)cols, used);
    if (st != DQ_OK)
        return st;
    int64_t *perm = dq__alloc(c, (size_t)cols * sizeof(int64_t));
    uint8_t *seen = dq__calloc(c, (size_t)cols, 1);
    st = perm && seen ? DQ_OK
                      : DQ_FAIL(c, DQ_ERR_NOMEM, "permutation of %lld", (long long)cols);
    for (int64_t j = 0; j < cols && st == DQ_OK; j++) {
        uint64_t v = get_le64(tensor_bytes(r, t) + 8 * (size_t)j);
        if (v >= (uint64_t)cols || seen[v])
            st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s.perm%d'[%lld] = %llu is %s", prefix,
                         (int)i, (long long)j, (unsigned long long)v,
                         v >= (uint64_t)cols ? "out of range" : "a repeat");
        else
            seen[v] = 1;
        perm[j] = (int64_t)v;
    }
    give_back(r, &t, 1);
    dq__free(c, seen);
    if (st != DQ_OK) {
        dq__free(c, perm);
        return st;
    }
    *out = perm;
    return DQ_OK;
}

DQ_API dq_status dq_file_reader_get_plan(const dq_file_reader *r, dq_context *ctx,
                                         const char *prefix, dq_plan **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, r, DQ__H_FILE_READER, "r", out);
    DQ_CHECK_HANDLE_OUT(r ? &r->ctx : NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!r || !valid_prefix(prefix))
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "%s",
                       !r ? "r is NULL" : "prefix is NULL, empty or not valid text");
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_ERR_FORMAT;
    int64_t cols, n_rot;
    if (!meta_is(r, prefix, "type", "plan", &st))
        return st == DQ_ERR_NOMEM ? st
                                  : DQ_FAIL(c, st, "metadata '%s.type' is not \"plan\"", prefix);
    if (!meta_int(r, prefix, "cols", MAX_PLAN_COLS, &cols, &st) ||
        !meta_int(r, prefix, "n_rotations", MAX_PLAN_SLOTS, &n_rot, &st))
        return st;
    if (cols < 1)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.cols' is 0", prefix);
    if (n_rot > DQ_MAX_PERMUTATION_TIMES + 1)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.n_rotations' is %lld, a plan holds at most "
                       "%d", prefix, (long long)n_rot, DQ_MAX_PERMUTATION_TIMES + 1);

    float *smooth = NULL;
    uint64_t used = 0; /* bytes this call allocates for the file, from the declared sizes */
    if ((st = take_alloc(r, c, __func__, prefix, "rotation slots",
                         16 * ((uint64_t)n_rot + 1), &used)) != DQ_OK)
        return st;
    dq_rotation **rots = dq__calloc(c, (size_t)n_rot + 1, sizeof *rots);
    int64_t **perms = dq__calloc(c, (size_t)n_rot + 1, sizeof *perms);
    st = rots && perms ? DQ_OK
                       : DQ_FAIL(c, DQ_ERR_NOMEM, "%lld rotation slots", (long long)n_rot);
    char *name = st == DQ_OK ? join(c, prefix, "smooth") : NULL;
    if (st == DQ_OK && !name)
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.smooth'", prefix);
    if (st == DQ_OK && dq__st_find(&r->f, name)) {
        const dq__st_tensor *t = find_part(r, name, DQ__ST_F32, cols, -1);
        /* Read here, copied by the plan. */
        if (t && (st = take_alloc(r, c, __func__, prefix, "smoothing scales",
                                  8 * (uint64_t)cols, &used)) != DQ_OK)
            t = NULL;
        smooth = t ? dq__alloc(c, (size_t)cols * sizeof(float)) : NULL;
        st = st != DQ_OK ? st
             : !t        ? DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is not F32 [%lld]", name,
                                 (long long)cols)
             : !smooth ? DQ_FAIL(c, DQ_ERR_NOMEM, "%lld smoothing scales", (long long)cols)
                       : DQ_OK;
        if (st == DQ_OK) {
            decode_f32(smooth, tensor_bytes(r, t), (size_t)cols);
            give_back(r, &t, 1);
            for (int64_t j = 0; j < cols && st == DQ_OK; j++)
                st = !isfinite(smooth[j])  ? DQ_FAIL(c, DQ_ERR_NONFINITE, "tensor '%s'[%lld] is "
                                                     "not finite", name, (long long)j)
                     : !(smooth[j] > 0.0f) ? DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s'[%lld] = %g, "
                                                     "expected > 0", name, (long long)j,
                                                     (double)smooth[j])
                                           : DQ_OK;
        }
    }
    dq__free(c, name);
    for (int32_t i = 0; i < n_rot && st == DQ_OK; i++)
        st = load_rotation(r, ctx, prefix, i, cols, &used, &rots[i]);
    for (int32_t i = 0; i + 1 < n_rot && st == DQ_OK; i++)
        st = load_permutation(r, c, prefix, i, cols, &used, &perms[i]);
    if (st == DQ_OK) {
        /* type, cols, n_rotations, the smoothing scales, each stored slot's block_size,
         * n_matrices and matrices, the permutations: nothing else. */
        size_t parts = 3 + (smooth != NULL) + (n_rot > 0 ? (size_t)n_rot - 1 : 0);
        for (int64_t i = 0; i < n_rot && st == DQ_OK; i++) {
            int64_t nm = 0;
            if (rots[i] && (st = dq_rotation_layout(rots[i], NULL, NULL, NULL, &nm)) == DQ_OK)
                parts += 2 + (size_t)nm;
        }
        if (st == DQ_OK)
            st = check_parts(r, c, prefix, "plan", parts);
    }
    /* The parts were checked as they were read (what dq_plan_assemble checks): the plan takes
     * them over instead of copying them, one copy of every rotation less at the peak. */
    dq_plan *pl = NULL;
    if (st == DQ_OK && (st = dq__plan_alloc(c, cols, (int32_t)n_rot, smooth != NULL, &pl)) ==
                           DQ_OK) {
        if (smooth)
            memcpy(dq__plan_smooth(pl), smooth, (size_t)cols * sizeof(float));
        dq_rotation **pr = dq__plan_rotations(pl);
        int64_t **pp = dq__plan_permutations(pl);
        for (int64_t i = 0; i < n_rot; i++) {
            pr[i] = rots[i], rots[i] = NULL;
            if (i + 1 < n_rot)
                pp[i] = perms[i], perms[i] = NULL;
        }
        *out = pl;
    }
    for (int64_t i = 0; rots && perms && i < n_rot; i++) {
        dq_rotation_free(rots[i]);
        dq__free(c, perms[i]);
    }
    dq__free(c, rots);
    dq__free(c, perms);
    dq__free(c, smooth);
    return st;
}

/* "<prefix>.plan_fingerprint": 16 lowercase hex digits, not all zero; absent (files written
 * before 1.2, or weights packed without a plan) = 0. */
static dq_status read_plan_fingerprint(const dq_file_reader *r, const char *prefix,
                                       uint64_t *fp)
{
    *fp = 0;
    char *key = join(&r->ctx, prefix, "plan_fingerprint");
    if (!key)
        return DQ_FAIL(&r->ctx, DQ_ERR_NOMEM, "no memory for the key '%s.plan_fingerprint'",
                       prefix);
    const char *v = dq__st_meta_find(&r->f, key);
    dq__free(&r->ctx, key);
    if (!v)
        return DQ_OK;
    uint64_t x = 0;
    size_t n = 0;
    for (; v[n] && n < 17; n++) {
        char ch = v[n];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0)
            break;
        x = x << 4 | (uint64_t)d;
    }
    if (n != 16 || v[n] || x == 0)
        return DQ_FAIL(&r->ctx, DQ_ERR_FORMAT,
                       "metadata '%s.plan_fingerprint' is '%.40s', want 16 lowercase hex "
                       "digits, not all zero",
                       prefix, v);
    *fp = x;
    return DQ_OK;
}

DQ_API dq_status dq_file_reader_get_qmatrix(const dq_file_reader *r, dq_context *ctx,
                                            const char *prefix, dq_qmatrix **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, r, DQ__H_FILE_READER, "r", out);
    DQ_CHECK_HANDLE_OUT(r ? &r->ctx : NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!r || !valid_prefix(prefix))
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "%s",
                       !r ? "r is NULL" : "prefix is NULL, empty or not valid text");
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_ERR_FORMAT;
    if (is_blocked(r, prefix, &st))
        return get_qmatrix_blocked(r, c, prefix, out);
    if (st == DQ_ERR_NOMEM)
        return st;
    int64_t cols, bits, gs;
    int32_t scheme;
    if (!meta_is(r, prefix, "type", "qmatrix", &st))
        return st == DQ_ERR_NOMEM
                   ? st
                   : DQ_FAIL(c, st, "metadata '%s.type' is not \"qmatrix\"", prefix);
    if (!meta_int(r, prefix, "cols", INT64_MAX, &cols, &st) ||
        !meta_int(r, prefix, "bits", 8, &bits, &st) ||
        !meta_int(r, prefix, "group_size", INT32_MAX, &gs, &st))
        return st;
    if (cols < 1)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.cols' is 0", prefix);
    if (bits != 4 && bits != 8)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.bits' is %lld, expected 4 or 8", prefix,
                       (long long)bits);
    if (meta_is(r, prefix, "scheme", "asym", &st))
        scheme = DQ_QUANT_ASYM;
    else if (meta_is(r, prefix, "scheme", "sym", &st))
        scheme = DQ_QUANT_SYM;
    else
        return st == DQ_ERR_NOMEM
                   ? st
                   : DQ_FAIL(c, st, "metadata '%s.scheme' is not \"sym\" or \"asym\"", prefix);

    int64_t group_len = (gs == 0 || gs > cols) ? cols : gs;
    int64_t groups = cols / group_len + (cols % group_len != 0);
    size_t row_bytes = bits == 4 ? dq_int4_packed_size(cols) : (size_t)cols;
    char *pn = join(c, prefix, "packed"), *sn = join(c, prefix, "scales");
    char *zn = join(c, prefix, "zeros");
    const dq__st_tensor *tp = NULL, *ts = NULL, *tz = NULL;
    dq_qmatrix *q = NULL;
    if (!pn || !sn || !zn) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "tensor names under '%s'", prefix);
        goto out;
    }
    const dq__st_tensor *any = dq__st_find(&r->f, pn);
    if (!any || any->ndim != 2 || any->shape[0] < 1) {
        st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is %s", pn,
                     !any ? "absent" : "not 2-D with at least one row");
        goto out;
    }
    int64_t rows = any->shape[0];
    tp = find_part(r, pn, DQ__ST_U8, rows, (int64_t)row_bytes);
    ts = find_part(r, sn, DQ__ST_F32, rows, groups);
    tz = find_part(r, zn, DQ__ST_F32, rows, groups);
    if (!tp || !ts) {
        st = !tp ? DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is not U8 [%lld, %zu]", pn,
                           (long long)rows, row_bytes)
                 : DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is absent or not F32 [%lld, %lld]",
                           sn, (long long)rows, (long long)groups);
        goto out;
    }
    if ((scheme == DQ_QUANT_ASYM) != (tz != NULL) ||
        (scheme == DQ_QUANT_SYM && dq__st_find(&r->f, zn))) {
        st = DQ_FAIL(c, DQ_ERR_FORMAT, scheme == DQ_QUANT_ASYM
                     ? "tensor '%s' is absent or not F32 [%lld, %lld] (scheme asym)"
                     : "tensor '%s' present for scheme sym (%lld x %lld groups)", zn,
                     (long long)rows, (long long)groups);
        goto out;
    }
    /* type, cols, bits, scheme, group_size, packed, scales, zeros (ASYM), plan_fingerprint
     * (when present): nothing else. */
    st = DQ_OK;
    const size_t has_fp = meta_has(r, prefix, "plan_fingerprint", &st);
    if (st != DQ_OK || (st = check_parts(r, c, prefix, "packed matrix",
                                         7 + (tz != NULL) + has_fp)) != DQ_OK)
        goto out;
    size_t ng = n_elems(ts);
    uint64_t used = 0;
    if ((st = take_alloc(r, c, __func__, prefix, "packed matrix",
                         sizeof *q + (uint64_t)(tp->end - tp->begin) + 4 * (uint64_t)ng *
                                         (tz ? 2 : 1), &used)) != DQ_OK)
        goto out;
    if (!(q = dq__qmatrix_new(c))) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "%zu bytes for the matrix", sizeof *q);
        goto out;
    }
    q->packed = dq__alloc(c, tp->end - tp->begin);
    q->scales = dq__alloc(c, ng * sizeof(float));
    q->zeros = tz ? dq__alloc(c, ng * sizeof(float)) : NULL;
    if (!q->packed || !q->scales || (tz && !q->zeros)) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "%zu packed bytes and %zu groups of '%s'",
                     (size_t)(tp->end - tp->begin), ng, prefix);
        goto out;
    }
    q->rows = rows;
    q->cols = cols;
    q->bits = (int32_t)bits;
    q->scheme = scheme;
    q->group_size = (int32_t)gs;
    q->group_len = group_len;
    q->groups_per_row = groups;
    q->row_bytes = row_bytes;
    q->nbytes = tp->end - tp->begin;
    if ((st = read_plan_fingerprint(r, prefix, &q->plan_fingerprint)) != DQ_OK)
        goto out;
    memcpy(q->packed, tensor_bytes(r, tp), q->nbytes);
    decode_f32(q->scales, tensor_bytes(r, ts), ng);
    if (tz)
        decode_f32(q->zeros, tensor_bytes(r, tz), ng);
    const dq__st_tensor *copied[3] = {tp, ts, tz};
    give_back(r, copied, 3);
    st = DQ_OK;
    /* Scales are positive and finite, zero points finite integers, as the packer makes them. */
    for (size_t g = 0; g < ng && st == DQ_OK; g++) {
        if (!isfinite(q->scales[g]) || (q->zeros && !isfinite(q->zeros[g])))
            st = DQ_FAIL(c, DQ_ERR_NONFINITE, "tensor '%s'[%zu] is not finite",
                         !isfinite(q->scales[g]) ? sn : zn, g);
        else if (!(q->scales[g] >= DQ_QR_SCALE_FLOOR))
            st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s'[%zu] = %g, expected >= %g", sn, g,
                         (double)q->scales[g], (double)DQ_QR_SCALE_FLOOR);
        else if (q->zeros && (q->zeros[g] != nearbyintf(q->zeros[g]) ||
                              fabsf(q->zeros[g]) > DQ_QR_ZERO_LIMIT))
            st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s'[%zu] = %g, expected an integer in "
                         "[-%g, %g]", zn, g, (double)q->zeros[g], (double)DQ_QR_ZERO_LIMIT,
                         (double)DQ_QR_ZERO_LIMIT);
        else if (!dequant_finite(q->scales[g], q->zeros ? q->zeros[g] : 0.0f, q->bits,
                                 q->scheme))
            st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s'[%zu] = %g (zero point %g): its codes "
                         "dequantize beyond the float range, no writer makes that", sn, g,
                         (double)q->scales[g], q->zeros ? (double)q->zeros[g] : 0.0);
    }
    /* The unused high nibble after an odd row is zero: the encoding is canonical. */
    if (st == DQ_OK && bits == 4 && (cols & 1))
        for (int64_t i = 0; i < rows && st == DQ_OK; i++)
            if (q->packed[(size_t)i * row_bytes + row_bytes - 1] & 0xF0)
                st = DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s': row %lld has a nonzero unused high "
                             "nibble (odd cols %lld)", pn, (long long)i, (long long)cols);
out:
    dq__free(c, pn);
    dq__free(c, sn);
    dq__free(c, zn);
    if (st != DQ_OK) {
        dq_qmatrix_free(q);
        return st;
    }
    *out = q;
    return DQ_OK;
}

/* ---- quantized linear layers ---- */

static dq_status add_linear_parts(dq_file_writer *w, const char *prefix,
                                  const dq_linear_params *p, const char *plan_prefix,
                                  const dq_qmatrix *q, const float *bias)
{
    const dq_context *c = &w->ctx;
    char *wp = join(c, prefix, "weight");
    if (!wp)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.weight'", prefix);
    dq_status st = add_qmatrix_parts(w, wp, q);
    dq__free(c, wp);
    if (st != DQ_OK ||
        (st = push_meta(w, join(c, prefix, "type"), "linear")) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "act_bits"), p->act_bits)) != DQ_OK ||
        (st = push_meta(w, join(c, prefix, "act_scheme"),
                        p->act_scheme == DQ_QUANT_SYM ? "sym" : "asym")) != DQ_OK ||
        /* A scalar tensor keeps the float exact and independent of the C locale. */
        (st = add_f32(w, join(c, prefix, "act_clip_ratio"), &p->act_clip_ratio, 0, NULL)) !=
            DQ_OK ||
        (plan_prefix && (st = push_meta(w, join(c, prefix, "plan"), plan_prefix)) != DQ_OK))
        return st;
    if (bias) {
        const int64_t n = q->rows;
        st = add_f32(w, join(c, prefix, "bias"), bias, 1, &n);
    }
    return st;
}

/* The layer's plan must be a plan of this writer, the one its weights were transformed by. */
static dq_status check_linear_plan(const dq_file_writer *w, const char *prefix,
                                   const char *plan_prefix, uint64_t wfp)
{
    if (!plan_prefix) {
        if (wfp)
            return DQ_FAIL(&w->ctx, DQ_ERR_MISMATCH,
                           "layer '%s': plan_prefix is NULL but its weights were transformed "
                           "by plan %016" PRIx64,
                           prefix, wfp);
        return DQ_OK;
    }
    const struct writer_plan *found = NULL;
    for (size_t i = 0; i < w->n_plans && !found; i++)
        if (strcmp(w->plans[i].prefix, plan_prefix) == 0)
            found = &w->plans[i];
    if (!found)
        return DQ_FAIL(&w->ctx, DQ_ERR_MISMATCH,
                       "layer '%s': plan_prefix '%s' names no plan of this writer (add the plan "
                       "first with dq_file_writer_add_plan)",
                       prefix, plan_prefix);
    if (!wfp) {
        dq__log(&w->ctx, DQ_LOG_WARN,
                "dq_file_writer_add_linear: layer '%s': weights packed without a plan "
                "fingerprint: cannot check that plan '%s' (%016" PRIx64 ") transformed them",
                prefix, plan_prefix, found->fingerprint);
        return DQ_OK;
    }
    if (found->fingerprint != wfp)
        return DQ_FAIL(&w->ctx, DQ_ERR_MISMATCH,
                       "layer '%s': plan '%s' has fingerprint %016" PRIx64
                       ", the weights were transformed by plan %016" PRIx64,
                       prefix, plan_prefix, found->fingerprint, wfp);
    return DQ_OK;
}

DQ_API dq_status dq_file_writer_add_linear(dq_file_writer *w, const char *prefix,
                                           const dq_linear_params *p, const char *plan_prefix,
                                           const dq_qmatrix *weights, const float *bias)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    DQ_CHECK_HANDLE(w ? &w->ctx : NULL, weights, DQ__H_QMATRIX, "weights");
    if (!w || !weights || !valid_prefix(prefix) || (plan_prefix && !valid_name(plan_prefix)))
        return DQ_FAIL(w ? &w->ctx : NULL, DQ_ERR_INVALID_ARG, "%s", !w ? "w is NULL"
                       : !weights             ? "weights is NULL"
                       : !valid_prefix(prefix) ? "prefix is NULL, empty or not valid text"
                                              : "plan_prefix is empty or not valid text");
    /* The layer's own checks decide what is valid (the plan is checked below by fingerprint);
     * the params are then read as a layer reads them. */
    dq_linear_params checked;
    dq_status st = dq__linear_check(&w->ctx, __func__, p, weights, bias, &checked);
    if (st != DQ_OK)
        return st;
    /* The format has no field for them: a reader would quantize per token. */
    if (checked.act_group_size != 0)
        return DQ_FAIL(&w->ctx, DQ_ERR_UNSUPPORTED,
                       "layer '%s': act_group_size %d (activation groups are not stored in "
                       "files)", prefix, (int)checked.act_group_size);
    if ((st = check_linear_plan(w, prefix, plan_prefix, weights->plan_fingerprint)) != DQ_OK)
        return st;
    dq_linear_params lp;
    dq_linear_params_init(&lp, sizeof lp);
    if (p && (st = DQ_PARAMS_READ(&w->ctx, "p", &lp, sizeof lp,
                                  offsetof(dq_linear_params, flags) + sizeof(uint32_t), p)) !=
                 DQ_OK)
        return st;
    size_t n = w->n, n_meta = w->n_meta;
    st = add_linear_parts(w, prefix, &lp, plan_prefix, weights, bias);
    if (st != DQ_OK)
        truncate_writer(w, n, n_meta);
    return st;
}

/* A layer that names its plan ("<prefix>.plan") is loaded only with that plan: same
 * fingerprint as the plan stored under that name. Works for files written before 1.2 too. */
static dq_status check_named_plan(const dq_file_reader *r, dq_context *ctx, const char *prefix,
                                  const dq_plan *plan)
{
    const dq_context *c = dq__ctx(ctx);
    char *key = join(c, prefix, "plan");
    if (!key)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "no memory for a key of layer '%s'", prefix);
    const char *named = dq__st_meta_find(&r->f, key);
    dq__free(c, key);
    if (!named)
        return DQ_OK; /* the weights' own fingerprint, if any, is checked on creation */
    dq_plan *stored = NULL;
    uint64_t want, got;
    dq_status st = dq_file_reader_get_plan(r, ctx, named, &stored);
    if (st != DQ_OK)
        return DQ_FAIL(ctx, st == DQ_ERR_NOMEM ? st : DQ_ERR_FORMAT,
                       "layer '%s' names plan '%s', which does not load (%s)", prefix, named,
                       dq_status_name(st));
    st = dq__plan_fingerprint(c, stored, &want);
    dq_plan_free(stored);
    if (st == DQ_OK && plan)
        st = dq__plan_fingerprint(c, plan, &got);
    if (st != DQ_OK)
        return DQ_FAIL(ctx, st, "no scratch to fingerprint the plans of layer '%s'", prefix);
    if (!plan)
        return DQ_FAIL(ctx, DQ_ERR_MISMATCH,
                       "layer '%s' names plan '%s' (fingerprint %016" PRIx64 ") but plan is NULL",
                       prefix, named, want);
    if (got != want)
        return DQ_FAIL(ctx, DQ_ERR_MISMATCH,
                       "layer '%s': plan fingerprint %016" PRIx64 " differs from %016" PRIx64
                       ", the plan '%s' the file names",
                       prefix, got, want, named);
    return DQ_OK;
}

DQ_API dq_status dq_file_reader_get_linear(const dq_file_reader *r, dq_context *ctx,
                                           const char *prefix, const dq_plan *plan,
                                           dq_linear **out)
{
    DQ_CHECK_HANDLE_OUT(NULL, r, DQ__H_FILE_READER, "r", out);
    DQ_CHECK_HANDLE_OUT(r ? &r->ctx : NULL, ctx, DQ__H_CONTEXT, "ctx", out);
    DQ_CHECK_HANDLE_OUT(ctx, plan, DQ__H_PLAN, "plan", out);
    if (!out)
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!r || !valid_prefix(prefix))
        return DQ_FAIL(ctx, DQ_ERR_INVALID_ARG, "%s",
                       !r ? "r is NULL" : "prefix is NULL, empty or not valid text");
    const dq_context *c = dq__ctx(ctx);
    dq_status st = DQ_ERR_FORMAT;
    dq_linear_params p;
    dq_linear_params_init(&p, sizeof p);
    int64_t bits;
    if (!meta_is(r, prefix, "type", "linear", &st))
        return st == DQ_ERR_NOMEM
                   ? st
                   : DQ_FAIL(c, st, "metadata '%s.type' is not \"linear\"", prefix);
    if (!meta_int(r, prefix, "act_bits", 8, &bits, &st))
        return st;
    p.act_bits = (int32_t)bits;
    if (meta_is(r, prefix, "act_scheme", "asym", &st))
        p.act_scheme = DQ_QUANT_ASYM;
    else if (meta_is(r, prefix, "act_scheme", "sym", &st))
        p.act_scheme = DQ_QUANT_SYM;
    else
        return st == DQ_ERR_NOMEM ? st
                                  : DQ_FAIL(c, st, "metadata '%s.act_scheme' is not \"sym\" or "
                                            "\"asym\"", prefix);
    char *key = join(c, prefix, "act_clip_ratio");
    if (!key)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.act_clip_ratio'", prefix);
    const dq__st_tensor *ct = dq__st_find(&r->f, key);
    dq__free(c, key);
    if (!ct || ct->dtype != DQ__ST_F32 || ct->ndim != 0)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s.act_clip_ratio' is %s", prefix,
                       !ct ? "absent" : "not an F32 scalar");
    if ((st = verify_tensor(r, ct)) != DQ_OK)
        return st;
    decode_f32(&p.act_clip_ratio, tensor_bytes(r, ct), 1);
    if (!isfinite(p.act_clip_ratio))
        return DQ_FAIL(c, DQ_ERR_NONFINITE, "tensor '%s.act_clip_ratio' is not finite", prefix);
    if (!(p.act_clip_ratio > 0.0f && p.act_clip_ratio <= 1.0f))
        return DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s.act_clip_ratio' = %g, expected in (0, 1]",
                       prefix, (double)p.act_clip_ratio);
    /* type, act_bits, act_scheme, act_clip_ratio, plan and bias (when present), and the
     * weights (a nested object, checked when loaded): nothing else. */
    char *bias_name = join(c, prefix, "bias");
    if (!bias_name)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.bias'", prefix);
    const size_t has_bias = dq__st_find(&r->f, bias_name) != NULL;
    dq__free(c, bias_name);
    st = DQ_OK;
    const size_t parts = 4 + has_bias + meta_has(r, prefix, "plan", &st);
    if (st != DQ_OK || (st = check_parts(r, c, prefix, "linear layer", parts)) != DQ_OK)
        return st;

    char *wp = join(c, prefix, "weight"), *bn = join(c, prefix, "bias");
    st = DQ_ERR_FORMAT;
    if (wp && (is_blocked(r, wp, &st) || st == DQ_ERR_NOMEM)) {
        uint64_t wfp = 0;
        if (st != DQ_ERR_NOMEM && (st = read_plan_fingerprint(r, wp, &wfp)) == DQ_OK &&
            (st = check_named_plan(r, ctx, prefix, plan)) == DQ_OK &&
            (st = dq__plan_check_binding(c, "dq_file_reader_get_linear", plan, wfp)) == DQ_OK)
            st = get_linear_blocked(r, c, prefix, wp, &p, plan, out);
        dq__free(c, wp);
        dq__free(c, bn);
        return st;
    }
    dq_qmatrix *q = NULL;
    float *bias = NULL;
    st = wp && bn ? dq_file_reader_get_qmatrix(r, ctx, wp, &q)
                  : DQ_FAIL(c, DQ_ERR_NOMEM, "tensor names under '%s'", prefix);
    int64_t rows = 0, cols = 0, width = 0;
    uint64_t used = 0;
    if (st == DQ_OK) {
        dq_qmatrix_layout(q, &rows, &cols, NULL, NULL, NULL, NULL, NULL);
        /* The packed matrix just loaded, then what the layer makes of it (its kernel form:
         * rows padded to blocks of 16, groups to whole steps) and the bias. */
        dq__wpack kl;
        const bool asym = q->zeros != NULL;
        st = dq__wpack_layout(q->bits, rows, cols, q->group_len, &kl) != DQ_OK
                 ? DQ_FAIL(c, DQ_ERR_FORMAT, "%s: %lld x %lld too large", wp, (long long)rows,
                           (long long)cols)
                 : take_alloc(r, c, __func__, prefix, "packed matrix, kernel form and bias",
                              q->nbytes + (uint64_t)rows * (uint64_t)q->groups_per_row * 4 *
                                              (asym ? 2 : 1) +
                                  kl.code_bytes + (uint64_t)kl.meta_count * sizeof(dq__gemm_meta) +
                                  (uint64_t)cols + 8 * (uint64_t)kl.groups + 8 * (uint64_t)rows,
                              &used);
    }
    if (st == DQ_OK && dq__st_find(&r->f, bn)) {
        const dq__st_tensor *t = find_part(r, bn, DQ__ST_F32, rows, -1);
        bias = t ? dq__alloc(c, (size_t)rows * sizeof(float)) : NULL;
        st = !t      ? DQ_FAIL(c, DQ_ERR_FORMAT, "tensor '%s' is not F32 [%lld]", bn,
                               (long long)rows)
             : !bias ? DQ_FAIL(c, DQ_ERR_NOMEM, "%lld bias values", (long long)rows)
                     : DQ_OK;
        if (st == DQ_OK) {
            decode_f32(bias, tensor_bytes(r, t), (size_t)rows);
            give_back(r, &t, 1);
            if (!dq__all_finite(bias, 1, rows, rows))
                st = DQ_FAIL(c, DQ_ERR_NONFINITE, "tensor '%s' is not finite", bn);
        }
    }
    /* What dq_linear_create would refuse, refused here as a fault of the file. */
    if (st == DQ_OK && p.act_bits != 0 && p.act_bits != 4 && p.act_bits != 8)
        st = DQ_FAIL(c, DQ_ERR_FORMAT, "metadata '%s.act_bits' is %d, expected 0, 4 or 8",
                     prefix, (int)p.act_bits);
    if (st == DQ_OK && plan && (dq_plan_width(plan, &width) != DQ_OK || width != cols))
        st = DQ_FAIL(c, DQ_ERR_SHAPE, "plan width %lld != cols %lld of '%s'", (long long)width,
                     (long long)cols, wp);
    if (st == DQ_OK)
        st = check_named_plan(r, ctx, prefix, plan);
    if (st == DQ_OK)
        st = dq_linear_create(ctx, &p, plan, q, bias, out); /* logs its own failure */
    dq_qmatrix_free(q);
    dq__free(c, bias);
    dq__free(c, wp);
    dq__free(c, bn);
    return st;
}

/* ---- layers in the blocked layout (format version 2): the repacked weights the kernels read,
 *      stored as they are in memory so that a mapped file is used in place ---- */

#define META_RECORD_BYTES ((int64_t)sizeof(dq__gemm_meta)) /* 16 scales, 16 zeros, 16 corr */

static void encode_meta(uint8_t *o, const dq__gemm_meta *m, size_t n)
{
    for (size_t i = 0; i < n; i++, o += META_RECORD_BYTES) {
        encode_f32(o, m[i].scale, DQ_GEMM_BLOCK);
        for (int k = 0; k < DQ_GEMM_BLOCK; k++) {
            put_le32(o + 64 + 4 * k, (uint32_t)m[i].zero[k]);
            put_le32(o + 128 + 4 * k, (uint32_t)m[i].corr[k]);
        }
    }
}

static void decode_meta(dq__gemm_meta *m, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++, p += META_RECORD_BYTES) {
        decode_f32(m[i].scale, p, DQ_GEMM_BLOCK);
        for (int k = 0; k < DQ_GEMM_BLOCK; k++) {
            m[i].zero[k] = (int32_t)get_le32(p + 64 + 4 * k);
            m[i].corr[k] = (int32_t)get_le32(p + 128 + 4 * k);
        }
    }
}

/* True when the stored records are the in-memory struct: little-endian host, no padding. */
static bool meta_is_native(void)
{
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
    return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && sizeof(dq__gemm_meta) == 192;
#else
    return false;
#endif
}

static dq_status add_linear_layer_parts(dq_file_writer *w, const char *prefix,
                                        const dq_linear *lin, const char *plan_prefix,
                                        uint64_t plan_fp)
{
    const dq_context *c = &w->ctx;
    const dq__wprep *wq = dq__linear_weights(lin);
    const dq__wpack *wp = wq->kernel;
    int32_t act_bits, act_scheme, act_group;
    float act_clip;
    dq__linear_act(lin, &act_bits, &act_scheme, &act_clip, &act_group);
    char *wpre = join(c, prefix, "weight");
    if (!wpre)
        return DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.weight'", prefix);
    dq_status st;
    uint8_t *meta = NULL, *codes = NULL;
    const size_t meta_bytes = wp->meta_count * (size_t)META_RECORD_BYTES;
    /* Only what a reader accepts (dequant_finite), as for a packed matrix. */
    const int32_t zbias = wq->bits == 4 ? 8 : 0;
    const int32_t shift = wq->scheme == DQ_QUANT_ASYM ? 1 << (wq->bits - 1) : 0;
    for (size_t i = 0; i < wp->meta_count; i++)
        for (int64_t o = 0; o < DQ_GEMM_BLOCK; o++) {
            const dq__gemm_meta *m = &wp->meta[i];
            const float zero = (float)(m->zero[o] - zbias + shift);
            if ((int64_t)(i / (size_t)wp->groups) * DQ_GEMM_BLOCK + o < wq->rows &&
                !dequant_finite(m->scale[o], zero, wq->bits, wq->scheme)) {
                dq__free(c, wpre);
                return DQ_FAIL(c, DQ_ERR_OVERFLOW, "'%s': a group (scale %g, zero point %g) "
                               "dequantizes beyond the float range", prefix,
                               (double)m->scale[o], (double)zero);
            }
        }
    if ((st = push_meta(w, join(c, wpre, "type"), "qmatrix")) != DQ_OK ||
        (st = push_meta(w, join(c, wpre, "layout"), "blocked16")) != DQ_OK ||
        (st = push_meta_int(w, join(c, wpre, "rows"), wq->rows)) != DQ_OK ||
        (st = push_meta_int(w, join(c, wpre, "cols"), wq->cols)) != DQ_OK ||
        (st = push_meta_int(w, join(c, wpre, "bits"), wq->bits)) != DQ_OK ||
        (st = push_meta(w, join(c, wpre, "scheme"),
                        wq->scheme == DQ_QUANT_SYM ? "sym" : "asym")) != DQ_OK ||
        (st = push_meta_int(w, join(c, wpre, "group_size"), wq->group_size)) != DQ_OK)
        goto out;
    if (plan_fp) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, plan_fp);
        if ((st = push_meta(w, join(c, wpre, "plan_fingerprint"), hex)) != DQ_OK)
            goto out;
    }
    if (!(meta = dq__alloc(c, meta_bytes)) || !(codes = dq__alloc(c, wp->code_bytes))) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "%zu meta and %zu code bytes of '%s'", meta_bytes,
                     wp->code_bytes, wpre);
        goto out;
    }
    encode_meta(meta, wp->meta, wp->meta_count);
    memcpy(codes, wp->codes, wp->code_bytes);
    /* The meta records first: with sizes multiples of 64 bytes, they start 4-byte aligned in
     * any file holding no other 1-byte tensors of odd size. */
    const int64_t mshape[2] = {(int64_t)wp->meta_count, META_RECORD_BYTES};
    const int64_t cshape[2] = {wp->blocks, wp->block_bytes};
    st = push_entry(w, join(c, wpre, "meta"), DQ__ST_U8, 2, mshape, meta, meta_bytes);
    meta = NULL;
    if (st != DQ_OK)
        goto out;
    st = push_entry(w, join(c, wpre, "blocks"), DQ__ST_U8, 2, cshape, codes, wp->code_bytes);
    codes = NULL;
    if (st != DQ_OK ||
        (st = push_meta(w, join(c, prefix, "type"), "linear")) != DQ_OK ||
        (st = push_meta_int(w, join(c, prefix, "act_bits"), act_bits)) != DQ_OK ||
        (st = push_meta(w, join(c, prefix, "act_scheme"),
                        act_scheme == DQ_QUANT_SYM ? "sym" : "asym")) != DQ_OK ||
        (st = add_f32(w, join(c, prefix, "act_clip_ratio"), &act_clip, 0, NULL)) != DQ_OK ||
        (plan_prefix && (st = push_meta(w, join(c, prefix, "plan"), plan_prefix)) != DQ_OK))
        goto out;
    if (dq__linear_bias(lin)) {
        const int64_t n = wq->rows;
        st = add_f32(w, join(c, prefix, "bias"), dq__linear_bias(lin), 1, &n);
    }
out:
    dq__free(c, meta);
    dq__free(c, codes);
    dq__free(c, wpre);
    return st;
}

DQ_API dq_status dq_file_writer_add_linear_layer(dq_file_writer *w, const char *prefix,
                                                 const dq_linear *lin, const char *plan_prefix)
{
    DQ_CHECK_HANDLE(NULL, w, DQ__H_FILE_WRITER, "w");
    DQ_CHECK_HANDLE(w ? &w->ctx : NULL, lin, DQ__H_LINEAR, "lin");
    if (!w)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "w is NULL");
    if (!lin)
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "lin is NULL");
    if (!valid_prefix(prefix))
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "prefix is not a valid name");
    if (plan_prefix && !valid_name(plan_prefix))
        return DQ_FAIL(&w->ctx, DQ_ERR_INVALID_ARG, "plan_prefix is not a valid name");
    /* The layer was bound to its plan when it was created: the file records that plan, which
     * must be the one this writer holds under plan_prefix. */
    uint64_t plan_fp = 0;
    const dq_plan *plan = dq__linear_plan(lin);
    dq_status st = plan ? dq__plan_fingerprint(&w->ctx, plan, &plan_fp) : DQ_OK;
    if (st != DQ_OK)
        return DQ_FAIL(&w->ctx, st, "layer '%s': no scratch to fingerprint its plan", prefix);
    if ((st = check_linear_plan(w, prefix, plan_prefix, plan_fp)) != DQ_OK)
        return st;
    int32_t act_bits, act_scheme, act_group;
    float act_clip;
    dq__linear_act(lin, &act_bits, &act_scheme, &act_clip, &act_group);
    /* The format has no field for them: a reader would quantize per token. */
    if (act_group != 0)
        return DQ_FAIL(&w->ctx, DQ_ERR_UNSUPPORTED,
                       "layer '%s': act_group_size %d (activation groups are not stored in "
                       "files)", prefix, (int)act_group);
    size_t n = w->n, n_meta = w->n_meta;
    st = add_linear_layer_parts(w, prefix, lin, plan_prefix, plan_fp);
    if (st != DQ_OK) {
        truncate_writer(w, n, n_meta);
        return DQ_FAIL(&w->ctx, st, "layer %s", prefix);
    }
    return DQ_OK;
}

/* Every record and code of a loaded blocked matrix is what dq__wpack_store_row makes from some
 * packed matrix: scales finite and > 0, zero points in range (0 for SYM), corr equal to the
 * codes' sums, padding (positions past a group, rows past the last) zero. */
static dq_status check_blocked(const dq_context *c, const char *prefix, const dq__wprep *w,
                               dq__wpack *wp)
{
    const int32_t bias = w->bits == 4 ? 8 : 0;
    const int32_t shift = w->scheme == DQ_QUANT_ASYM ? 1 << (w->bits - 1) : 0;
    const int64_t last_len = w->cols - (w->groups - 1) * w->group_len;
    int64_t max_abs_zero = 0;
    for (int64_t b = 0; b < wp->blocks; b++) {
        const uint8_t *blk = wp->codes + (size_t)b * (size_t)wp->block_bytes;
        for (int64_t g = 0; g < wp->groups; g++) {
            const dq__gemm_meta *m = &wp->meta[(size_t)b * (size_t)wp->groups + (size_t)g];
            const int64_t len = g + 1 < wp->groups ? w->group_len : last_len;
            const int64_t padded = (g + 1 < wp->groups ? wp->group_steps : wp->last_steps) *
                                   DQ_GEMM_STEP;
            const int64_t kp0 = g * wp->group_steps * DQ_GEMM_STEP;
            /* The group's whole steps of real codes, summed a step at a time for all 16
             * lanes (the loop below would take minutes on a 7B model's 3 GB). */
            const int64_t full = len / DQ_GEMM_STEP;
            uint32_t raw[DQ_GEMM_BLOCK] = {0};
            for (int64_t st = 0; st < full; st++) {
                const uint8_t *p = blk + (size_t)(g * wp->group_steps + st) *
                                             (size_t)wp->step_bytes;
                if (w->bits == 4)
                    for (int i = 0; i < 4 * DQ_GEMM_BLOCK; i++)
                        raw[i / 4] += (uint32_t)(p[i] & 0xF) + (uint32_t)(p[i] >> 4);
                else
                    for (int i = 0; i < 4 * DQ_GEMM_BLOCK; i++)
                        raw[i / 4] += (uint32_t)(int32_t)(int8_t)p[i] +
                                      (uint32_t)(int32_t)(int8_t)p[4 * DQ_GEMM_BLOCK + i];
            }
            for (int64_t o = 0; o < DQ_GEMM_BLOCK; o++) {
                const bool real = b * DQ_GEMM_BLOCK + o < w->rows;
                const int64_t zw = (int64_t)m->zero[o] - bias;
                /* Codes are stored with the bias added: each whole step holds 8 of them. */
                uint32_t sum = real ? raw[o] - (uint32_t)(bias * DQ_GEMM_STEP * full) : 0;
                bool pad_ok = true;
                for (int64_t k = real ? full * DQ_GEMM_STEP : 0; k < padded; k++) {
                    const int32_t v = dq__wpack_stored(wp, blk, o, kp0 + k);
                    if (real && k < len)
                        sum += (uint32_t)(v - bias);
                    else
                        pad_ok = pad_ok && v == 0;
                }
                if (!pad_ok)
                    return DQ_FAIL(c, DQ_ERR_FORMAT, "%s.blocks: nonzero padding in block %lld",
                                   prefix, (long long)b);
                if (!real) {
                    uint32_t bits;
                    memcpy(&bits, &m->scale[o], sizeof bits);
                    if (bits != 0 || m->zero[o] != 0 || m->corr[o] != 0)
                        return DQ_FAIL(c, DQ_ERR_FORMAT, "%s.meta: nonzero padding row %lld",
                                       prefix, (long long)(b * DQ_GEMM_BLOCK + o));
                    continue;
                }
                const float sw = m->scale[o];
                if (!isfinite(sw))
                    return DQ_FAIL(c, DQ_ERR_NONFINITE, "%s.meta: scale of row %lld group %lld",
                                   prefix, (long long)(b * DQ_GEMM_BLOCK + o), (long long)g);
                if (!(sw >= DQ_QR_SCALE_FLOOR) || (w->scheme == DQ_QUANT_SYM && zw != 0) ||
                    zw + shift < -10000 || zw + shift > 10000 ||
                    !dequant_finite(sw, (float)(zw + shift), w->bits, w->scheme))
                    return DQ_FAIL(c, DQ_ERR_FORMAT,
                                   "%s.meta: row %lld group %lld: scale %g, zero point %lld",
                                   prefix, (long long)(b * DQ_GEMM_BLOCK + o), (long long)g,
                                   (double)sw, (long long)(zw + shift));
                if ((int32_t)(sum - (uint32_t)len * (uint32_t)zw) != m->corr[o])
                    return DQ_FAIL(c, DQ_ERR_FORMAT,
                                   "%s.meta: row %lld group %lld: corr %d, codes give %d",
                                   prefix, (long long)(b * DQ_GEMM_BLOCK + o), (long long)g,
                                   (int)m->corr[o],
                                   (int)(int32_t)(sum - (uint32_t)len * (uint32_t)zw));
                const int64_t az = zw < 0 ? -zw : zw;
                max_abs_zero = az > max_abs_zero ? az : max_abs_zero;
            }
        }
    }
    wp->max_abs_zero = max_abs_zero;
    return DQ_OK;
}

/* The weights of a blocked matrix under prefix. borrow: read the codes (and, when aligned,
 * the meta records) in place in the reader's data, which must then outlive them; else copy. */
static dq_status load_blocked(const dq_file_reader *r, const dq_context *c, const char *prefix,
                              bool borrow, uint64_t *used, dq__wprep **out)
{
    *out = NULL;
    dq_status st = DQ_ERR_FORMAT;
    int64_t rows, cols, bits, gs;
    int32_t scheme;
    if (!meta_is(r, prefix, "type", "qmatrix", &st) ||
        !meta_int(r, prefix, "rows", INT64_MAX, &rows, &st) || rows < 1 ||
        !meta_int(r, prefix, "cols", INT64_MAX, &cols, &st) || cols < 1 ||
        !meta_int(r, prefix, "bits", 8, &bits, &st) || (bits != 4 && bits != 8) ||
        !meta_int(r, prefix, "group_size", INT32_MAX, &gs, &st))
        return st == DQ_ERR_NOMEM ? st
                                  : DQ_FAIL(c, st, "%s: metadata type, rows, cols, bits or "
                                                   "group_size missing or out of range",
                                            prefix);
    if (meta_is(r, prefix, "scheme", "asym", &st))
        scheme = DQ_QUANT_ASYM;
    else if (meta_is(r, prefix, "scheme", "sym", &st))
        scheme = DQ_QUANT_SYM;
    else
        return DQ_FAIL(c, st, "%s.scheme: expected asym or sym", prefix);
    const int64_t group_len = (gs == 0 || gs > cols) ? cols : gs;
    dq__wpack layout;
    if ((st = dq__wpack_layout((int32_t)bits, rows, cols, group_len, &layout)) != DQ_OK)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "%s: %lld x %lld too large", prefix, (long long)rows,
                       (long long)cols);
    char *mn = join(c, prefix, "meta"), *bn = join(c, prefix, "blocks");
    dq__wprep *w = NULL;
    dq__wpack *wp = NULL;
    const dq__st_tensor *tm = NULL, *tb = NULL;
    st = DQ_ERR_NOMEM;
    if (!mn || !bn)
        goto out;
    tm = find_part(r, mn, DQ__ST_U8, (int64_t)layout.meta_count, META_RECORD_BYTES);
    tb = find_part(r, bn, DQ__ST_U8, layout.blocks, layout.block_bytes);
    if (!tm || !tb) {
        st = DQ_FAIL(c, DQ_ERR_FORMAT,
                     "%s: expected U8 tensors meta [%zu, %lld] and blocks [%lld, %lld]", prefix,
                     layout.meta_count, (long long)META_RECORD_BYTES, (long long)layout.blocks,
                     (long long)layout.block_bytes);
        goto out;
    }
    /* type, layout, rows, cols, bits, scheme, group_size, meta, blocks, plan_fingerprint
     * (when present): nothing else. */
    st = DQ_OK;
    const size_t parts = 9 + meta_has(r, prefix, "plan_fingerprint", &st);
    if (st != DQ_OK || (st = check_parts(r, c, prefix, "blocked matrix", parts)) != DQ_OK)
        goto out;
    /* The codes copied unless borrowed, the records copied unless used in place. */
    if ((st = take_alloc(r, c, "dq_file_reader_get_linear", prefix, "blocked weights",
                         sizeof(dq__wprep) + sizeof(dq__wpack) + (borrow ? 0 : layout.code_bytes) +
                             (uint64_t)layout.meta_count * sizeof(dq__gemm_meta),
                         used)) != DQ_OK)
        goto out;
    if (!(w = dq__calloc(c, 1, sizeof *w))) {
        st = DQ_ERR_NOMEM;
        goto out;
    }
    dq__context_keep(&w->ctx, c);
    w->rows = rows;
    w->cols = cols;
    w->bits = (int32_t)bits;
    w->scheme = scheme;
    w->group_size = (int32_t)gs;
    w->group_len = group_len;
    w->groups = layout.groups;
    const uint8_t *codes = tensor_bytes(r, tb), *meta = tensor_bytes(r, tm);
    /* Meta records are read as structs: in place only when aligned for them. Codes are read
     * byte-wise or with unaligned loads, so any address will do. */
    const bool meta_in_place = borrow && meta_is_native() &&
                               (uintptr_t)meta % _Alignof(dq__gemm_meta) == 0;
    if ((st = dq__wpack_create(w, borrow ? codes : NULL,
                               meta_in_place ? (const dq__gemm_meta *)(const void *)meta : NULL,
                               &wp)) != DQ_OK)
        goto out;
    if (!borrow)
        memcpy(wp->codes, codes, wp->code_bytes);
    if (!meta_in_place)
        decode_meta(wp->meta, meta, wp->meta_count);
    const dq__st_tensor *copied[2] = {meta_in_place ? NULL : tm, borrow ? NULL : tb};
    give_back(r, copied, 2);
    if ((st = check_blocked(c, prefix, w, wp)) != DQ_OK)
        goto out;
    dq__wpack_attach(w, wp);
    wp = NULL;
    *out = w;
    w = NULL;
out:
    if (wp) {
        dq__wpack_attach(w, wp);
    }
    dq__wprep_free(w);
    dq__free(c, mn);
    dq__free(c, bn);
    if (st == DQ_ERR_NOMEM)
        st = DQ_FAIL(c, st, "%s: out of memory", prefix);
    return st;
}

static bool is_blocked(const dq_file_reader *r, const char *prefix, dq_status *st)
{
    return meta_is(r, prefix, "layout", "blocked16", st);
}

/* The packed matrix held by a blocked one (the inverse of dq__wpack_store_row). */
static dq_status qmatrix_of_blocked(const dq_context *c, const dq__wprep *w, dq_qmatrix **out)
{
    *out = NULL;
    const size_t row_bytes = w->bits == 4 ? dq_int4_packed_size(w->cols) : (size_t)w->cols;
    const size_t ng = (size_t)w->rows * (size_t)w->groups;
    dq_qmatrix *q = dq__qmatrix_new(c);
    int8_t *row = dq__alloc(c, (size_t)w->cols);
    int32_t *zeros = dq__alloc(c, (size_t)w->groups * sizeof(int32_t));
    dq_status st = DQ_ERR_NOMEM;
    if (!q || !row || !zeros)
        goto out;
    q->packed = dq__calloc(c, (size_t)w->rows, row_bytes);
    q->scales = dq__alloc(c, ng * sizeof(float));
    q->zeros = w->scheme == DQ_QUANT_ASYM ? dq__alloc(c, ng * sizeof(float)) : NULL;
    if (!q->packed || !q->scales || (w->scheme == DQ_QUANT_ASYM && !q->zeros))
        goto out;
    q->rows = w->rows;
    q->cols = w->cols;
    q->bits = w->bits;
    q->scheme = w->scheme;
    q->group_size = w->group_size;
    q->group_len = w->group_len;
    q->groups_per_row = w->groups;
    q->row_bytes = row_bytes;
    q->nbytes = (size_t)w->rows * row_bytes;
    const int32_t shift = w->scheme == DQ_QUANT_ASYM ? 1 << (w->bits - 1) : 0;
    const int32_t mask = (1 << w->bits) - 1;
    for (int64_t i = 0; i < w->rows; i++) {
        const size_t gi = (size_t)i * (size_t)w->groups;
        dq__wprep_unpack_row(w, i, row, q->scales + gi, zeros);
        uint8_t *dst = q->packed + (size_t)i * row_bytes;
        for (int64_t j = 0; j < w->cols; j++) {
            const int32_t code = (row[j] + shift) & mask;
            if (w->bits == 8)
                dst[j] = (uint8_t)code;
            else
                dst[j / 2] |= (uint8_t)(code << (4 * (j & 1)));
        }
        if (q->zeros)
            for (int64_t g = 0; g < w->groups; g++)
                q->zeros[gi + (size_t)g] = (float)(zeros[g] + shift);
    }
    *out = q;
    q = NULL;
    st = DQ_OK;
out:
    dq_qmatrix_free(q);
    dq__free(c, row);
    dq__free(c, zeros);
    return st == DQ_OK ? st : DQ_FAIL(c, st, "packed matrix of %lld x %lld", (long long)w->rows,
                                      (long long)w->cols);
}

static dq_status get_qmatrix_blocked(const dq_file_reader *r, const dq_context *c,
                                     const char *prefix, dq_qmatrix **out)
{
    dq__wprep *w = NULL;
    uint64_t used = 0;
    dq_status st = load_blocked(r, c, prefix, true, &used, &w);
    if (st == DQ_OK)
        st = take_alloc(r, c, "dq_file_reader_get_qmatrix", prefix, "packed matrix",
                        sizeof(dq_qmatrix) +
                            (uint64_t)w->rows * (w->bits == 4 ? dq_int4_packed_size(w->cols)
                                                              : (uint64_t)w->cols) +
                            (uint64_t)w->rows * (uint64_t)w->groups * 4 *
                                (w->scheme == DQ_QUANT_ASYM ? 2 : 1) +
                            (uint64_t)w->cols + 4 * (uint64_t)w->groups,
                        &used);
    if (st == DQ_OK)
        st = qmatrix_of_blocked(c, w, out);
    dq__wprep_free(w);
    return st;
}

static dq_status get_linear_blocked(const dq_file_reader *r, const dq_context *c,
                                    const char *prefix, const char *wprefix,
                                    const dq_linear_params *p, const dq_plan *plan,
                                    dq_linear **out)
{
    if (p->act_bits != 0 && p->act_bits != 4 && p->act_bits != 8)
        return DQ_FAIL(c, DQ_ERR_FORMAT, "%s.act_bits %d: expected 0, 4 or 8", prefix,
                       (int)p->act_bits);
    dq__wprep *w = NULL;
    /* A borrowing reader's data outlive it as the caller promised: layers read them in place. */
    uint64_t used = 0;
    dq_status st = load_blocked(r, c, wprefix, r->borrowed, &used, &w);
    if (st == DQ_OK) /* the bias read, then copied by the layer */
        st = take_alloc(r, c, "dq_file_reader_get_linear", prefix, "blocked weights and bias",
                        8 * (uint64_t)w->rows, &used);
    if (st != DQ_OK) {
        dq__wprep_free(w);
        return st;
    }
    float *bias = NULL;
    char *bn = join(c, prefix, "bias");
    int64_t width;
    if (!bn) {
        st = DQ_FAIL(c, DQ_ERR_NOMEM, "tensor name '%s.bias'", prefix);
    } else if (dq__st_find(&r->f, bn)) {
        const dq__st_tensor *t = find_part(r, bn, DQ__ST_F32, w->rows, -1);
        bias = t ? dq__alloc(c, (size_t)w->rows * sizeof(float)) : NULL;
        st = !t ? DQ_FAIL(c, DQ_ERR_FORMAT, "%s: expected F32 [%lld]", bn, (long long)w->rows)
             : !bias ? DQ_FAIL(c, DQ_ERR_NOMEM, "%lld bias values of '%s'", (long long)w->rows,
                               bn)
                     : DQ_OK;
        if (st == DQ_OK) {
            decode_f32(bias, tensor_bytes(r, t), (size_t)w->rows);
            give_back(r, &t, 1);
            if (!dq__all_finite(bias, 1, w->rows, w->rows))
                st = DQ_FAIL(c, DQ_ERR_NONFINITE, "%s: not finite", bn);
        }
    }
    if (st == DQ_OK && plan && (dq_plan_width(plan, &width) != DQ_OK || width != w->cols))
        st = DQ_FAIL(c, DQ_ERR_SHAPE, "%s: plan width differs from in_features %lld", prefix,
                     (long long)w->cols);
    if (st == DQ_OK) {
        st = dq__linear_create_prepared(c, p, plan, w, bias, out);
        w = NULL;
    }
    dq__wprep_free(w);
    dq__free(c, bias);
    dq__free(c, bn);
    return st;
}
