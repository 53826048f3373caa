/* safetensors files through a memory map, headers through jansson. */
#define _DEFAULT_SOURCE /* madvise, MADV_DONTNEED */
#include "hf_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The safetensors format caps its header at 100 MB. */
#define HF_MAX_HEADER ((uint64_t)100 << 20)

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return -1;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Bytes per element of every safetensors dtype; 0 for an unknown name. */
static int dtype_size(const char *name, hf_dtype *kind)
{
    static const struct {
        const char *name;
        int size;
        hf_dtype kind;
    } table[] = {
        {"F32", 4, HF_DTYPE_F32},   {"F16", 2, HF_DTYPE_F16},     {"BF16", 2, HF_DTYPE_BF16},
        {"F64", 8, HF_DTYPE_OTHER}, {"I64", 8, HF_DTYPE_OTHER},   {"U64", 8, HF_DTYPE_OTHER},
        {"I32", 4, HF_DTYPE_OTHER}, {"U32", 4, HF_DTYPE_OTHER},   {"I16", 2, HF_DTYPE_OTHER},
        {"U16", 2, HF_DTYPE_OTHER}, {"I8", 1, HF_DTYPE_OTHER},    {"U8", 1, HF_DTYPE_OTHER},
        {"BOOL", 1, HF_DTYPE_OTHER}, {"F8_E4M3", 1, HF_DTYPE_OTHER},
        {"F8_E5M2", 1, HF_DTYPE_OTHER},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0) {
            *kind = table[i].kind;
            return table[i].size;
        }
    return 0;
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const hf_tensor *)a)->name, ((const hf_tensor *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const hf_tensor *x = *(const hf_tensor *const *)a, *y = *(const hf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void shard_close(hf_shard *s)
{
    if (s->map)
        munmap((void *)(uintptr_t)s->map, s->size);
    free(s->path);
    memset(s, 0, sizeof *s);
}

/* Maps path into s. */
static int shard_map(const char *path, hf_shard *s, char *err, size_t err_len)
{
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail(err, err_len, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, err_len, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return fail(err, err_len, "%s: %lld bytes, shorter than the 8-byte header length", path,
                    (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return fail(err, err_len, "%s: cannot map: %s", path, strerror(errno));
    s->map = map;
    s->size = (size_t)st.st_size;
    if (!(s->path = dup_str(path))) {
        shard_close(s);
        return fail(err, err_len, "%s: out of memory", path);
    }
    return 0;
}

/* One header entry into t; the name is set by the caller. */
static int parse_entry(const hf_shard *s, uint64_t data_start, const char *name,
                       const json_t *v, hf_tensor *t, char *err, size_t err_len)
{
    const char *path = s->path;
    const json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape");
    const json_t *off = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(sh) ||
        !json_is_array(off) || json_array_size(off) != 2)
        return fail(err, err_len,
                    "%s: tensor '%s': expected an object with dtype, shape and data_offsets "
                    "[begin, end]",
                    path, name);
    int size = dtype_size(json_string_value(dt), &t->dtype);
    if (!size)
        return fail(err, err_len, "%s: tensor '%s': unknown dtype '%.20s'", path, name,
                    json_string_value(dt));
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", json_string_value(dt));
    if (json_array_size(sh) > HF_MAX_DIMS)
        return fail(err, err_len, "%s: tensor '%s': %zu dimensions (at most %d)", path, name,
                    json_array_size(sh), HF_MAX_DIMS);
    t->n_dims = (int32_t)json_array_size(sh);
    uint64_t numel = 1;
    for (int32_t d = 0; d < t->n_dims; d++) {
        const json_t *e = json_array_get(sh, (size_t)d);
        json_int_t x = json_is_integer(e) ? json_integer_value(e) : -1;
        if (x < 0 || (uint64_t)x > ((uint64_t)1 << 40))
            return fail(err, err_len, "%s: tensor '%s': bad shape entry %d", path, name, d);
        t->shape[d] = x;
        if (x > 0 && numel > ((uint64_t)1 << 48) / (uint64_t)x)
            return fail(err, err_len, "%s: tensor '%s': implausibly many elements", path, name);
        numel *= (uint64_t)x;
        if (numel > ((uint64_t)1 << 48))
            return fail(err, err_len, "%s: tensor '%s': implausibly many elements", path, name);
    }
    t->numel = (int64_t)numel;
    const json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
    json_int_t begin = json_is_integer(b) ? json_integer_value(b) : -1;
    json_int_t end = json_is_integer(e) ? json_integer_value(e) : -1;
    uint64_t data_size = s->size - data_start;
    if (begin < 0 || end < begin || (uint64_t)end > data_size)
        return fail(err, err_len,
                    "%s: tensor '%s': data_offsets [%lld, %lld] outside the %llu data bytes "
                    "(truncated or inconsistent file)",
                    path, name, (long long)begin, (long long)end, (unsigned long long)data_size);
    if ((uint64_t)(end - begin) != numel * (uint64_t)size)
        return fail(err, err_len,
                    "%s: tensor '%s': %lld bytes for %llu elements of %s (expected %llu)", path,
                    name, (long long)(end - begin), (unsigned long long)numel, t->dtype_name,
                    (unsigned long long)(numel * (uint64_t)size));
    t->offset = data_start + (uint64_t)begin;
    t->nbytes = (uint64_t)(end - begin);
    return 0;
}

/* Parses the header of shard `index`. With want (a weight_map), keeps only the tensors it maps
 * to this shard's file name `file`; otherwise keeps all. Appends to ck->tensors. */
static int parse_shard(hf_checkpoint *ck, int32_t index, const json_t *want, const char *file,
                       char *err, size_t err_len)
{
    const hf_shard *s = &ck->shards[index];
    const unsigned char *p = s->map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    if (n > s->size - 8 || n > HF_MAX_HEADER)
        return fail(err, err_len,
                    "%s: header length %llu exceeds the file (%zu bytes) or the 100 MB limit "
                    "(truncated or not a safetensors file)",
                    s->path, (unsigned long long)n, s->size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, err_len, "%s: header is not valid JSON (column %d: %s)", s->path,
                    jerr.column, jerr.text);
    int rc = -1;
    hf_tensor **by_off = NULL;
    if (!json_is_object(root)) {
        fail(err, err_len, "%s: header is not a JSON object", s->path);
        goto out;
    }
    size_t cap = (size_t)ck->n_tensors + json_object_size(root);
    hf_tensor *grown = realloc(ck->tensors, (cap ? cap : 1) * sizeof *grown);
    if (!grown) {
        fail(err, err_len, "%s: out of memory", s->path);
        goto out;
    }
    ck->tensors = grown;
    int64_t first = ck->n_tensors;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v)
    {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        if (want) {
            const char *f = json_string_value(json_object_get(want, name));
            if (!f || strcmp(f, file) != 0)
                continue;
        }
        hf_tensor *t = &ck->tensors[ck->n_tensors];
        memset(t, 0, sizeof *t);
        t->shard = index;
        if (parse_entry(s, 8 + n, name, v, t, err, err_len))
            goto out;
        if (!(t->name = dup_str(name))) {
            fail(err, err_len, "%s: out of memory", s->path);
            goto out;
        }
        ck->n_tensors++;
    }
    /* Byte ranges must not overlap. */
    int64_t count = ck->n_tensors - first;
    if (count > 1) {
        if (!(by_off = malloc((size_t)count * sizeof *by_off))) {
            fail(err, err_len, "%s: out of memory", s->path);
            goto out;
        }
        for (int64_t i = 0; i < count; i++)
            by_off[i] = &ck->tensors[first + i];
        qsort(by_off, (size_t)count, sizeof *by_off, cmp_offset);
        for (int64_t i = 1; i < count; i++)
            if (by_off[i]->offset < by_off[i - 1]->offset + by_off[i - 1]->nbytes) {
                fail(err, err_len, "%s: tensors '%s' and '%s' overlap", s->path,
                     by_off[i - 1]->name, by_off[i]->name);
                goto out;
            }
    }
    rc = 0;
out:
    free(by_off);
    json_decref(root);
    return rc;
}

static int add_shard(hf_checkpoint *ck, const char *path, char *err, size_t err_len)
{
    hf_shard *grown = realloc(ck->shards, (size_t)(ck->n_shards + 1) * sizeof *grown);
    if (!grown)
        return fail(err, err_len, "%s: out of memory", path);
    ck->shards = grown;
    if (shard_map(path, &ck->shards[ck->n_shards], err, err_len))
        return -1;
    ck->n_shards++;
    return 0;
}

/* The shards of an index: every distinct file of its weight_map, in first-mention order. */
static int open_index(hf_checkpoint *ck, const char *dir, char *err, size_t err_len)
{
    const char *path = ck->origin;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, err_len, "%s: cannot read JSON (line %d: %s)", path, jerr.line,
                    jerr.text);
    int rc = -1;
    char *shard_path = NULL;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        fail(err, err_len, "%s: key 'weight_map': missing, empty or not an object", path);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v)
    {
        const char *file = json_string_value(v);
        if (!file || !*file || strchr(file, '/') || strcmp(file, "..") == 0) {
            fail(err, err_len, "%s: weight_map entry '%s': expected a file name in %s", path,
                 name, dir);
            goto out;
        }
        int32_t seen = 0;
        for (int32_t i = 0; i < ck->n_shards && !seen; i++) {
            const char *base = strrchr(ck->shards[i].path, '/');
            seen = strcmp(base ? base + 1 : ck->shards[i].path, file) == 0;
        }
        if (seen)
            continue;
        free(shard_path);
        if (!(shard_path = join(dir, file))) {
            fail(err, err_len, "%s: out of memory", path);
            goto out;
        }
        char sub[512];
        if (add_shard(ck, shard_path, sub, sizeof sub)) {
            fail(err, err_len, "%s: weight_map: shard '%s' (tensor '%s'): %s", path, file, name,
                 sub);
            goto out;
        }
        if (parse_shard(ck, ck->n_shards - 1, map, file, err, err_len))
            goto out;
    }
    /* Every tensor the index names must be in the shard it names (each kept tensor is one
     * distinct entry of the map, so equal counts mean none is missing). */
    json_object_foreach(map, name, v)
    {
        int64_t i = ck->n_tensors == (int64_t)json_object_size(map) ? 0 : -1;
        for (int64_t j = 0; i < 0 && j < ck->n_tensors; j++)
            i = strcmp(ck->tensors[j].name, name) == 0 ? j : -1;
        if (i < 0) {
            fail(err, err_len, "%s: weight_map: tensor '%s' is not in its shard '%s'", path,
                 name, json_string_value(v));
            goto out;
        }
    }
    rc = 0;
out:
    free(shard_path);
    json_decref(root);
    return rc;
}

int hf_checkpoint_open(const char *dir, hf_checkpoint *ck, char *err, size_t err_len)
{
    memset(ck, 0, sizeof *ck);
    char *single = join(dir, "model.safetensors");
    char *index = join(dir, "model.safetensors.index.json");
    int rc = -1;
    if (!single || !index) {
        fail(err, err_len, "%s: out of memory", dir);
        goto out;
    }
    if (access(single, F_OK) == 0) {
        ck->origin = single, single = NULL;
        if (add_shard(ck, ck->origin, err, err_len) || parse_shard(ck, 0, NULL, NULL, err, err_len))
            goto out;
    } else if (access(index, F_OK) == 0) {
        ck->origin = index, index = NULL;
        if (open_index(ck, dir, err, err_len))
            goto out;
    } else {
        fail(err, err_len, "%s: neither model.safetensors nor model.safetensors.index.json", dir);
        goto out;
    }
    if (ck->n_tensors > 1)
        qsort(ck->tensors, (size_t)ck->n_tensors, sizeof *ck->tensors, cmp_tensor);
    rc = 0;
out:
    free(single);
    free(index);
    if (rc)
        hf_checkpoint_close(ck);
    return rc;
}

void hf_checkpoint_close(hf_checkpoint *ck)
{
    for (int64_t i = 0; i < ck->n_tensors; i++)
        free(ck->tensors[i].name);
    free(ck->tensors);
    for (int32_t i = 0; i < ck->n_shards; i++)
        shard_close(&ck->shards[i]);
    free(ck->shards);
    free(ck->origin);
    memset(ck, 0, sizeof *ck);
}

const hf_tensor *hf_checkpoint_find(const hf_checkpoint *ck, const char *name)
{
    hf_tensor key;
    key.name = (char *)(uintptr_t)name;
    if (!ck->n_tensors)
        return NULL;
    return bsearch(&key, ck->tensors, (size_t)ck->n_tensors, sizeof key, cmp_tensor);
}

float hf_bf16_to_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float hf_f16_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | man << 13; /* inf, nan */
    } else if (exp != 0) {
        u = sign | (exp + 112) << 23 | man << 13; /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        u = sign; /* zero */
    } else {
        /* Subnormal: man * 2^-24, exact in float. */
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Gives the pages of [p, p + n) back to the page cache. */
static void release(const unsigned char *base, size_t size, uint64_t off, uint64_t n)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || n == 0)
        return;
    uint64_t lo = off / (uint64_t)page * (uint64_t)page;
    uint64_t hi = off + n;
    if (hi > size)
        hi = size;
    madvise((void *)(uintptr_t)(base + lo), (size_t)(hi - lo), MADV_DONTNEED);
}

int hf_checkpoint_check(const hf_checkpoint *ck, const char *name, int32_t n_dims,
                        const int64_t *shape, char *err, size_t err_len)
{
    const hf_tensor *t = hf_checkpoint_find(ck, name);
    if (!t)
        return fail(err, err_len, "%s: tensor '%s': missing", ck->origin, name);
    const hf_shard *s = &ck->shards[t->shard];
    int same = t->n_dims == n_dims;
    for (int32_t d = 0; same && d < n_dims; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        char got[160] = "", want[160] = "";
        for (int32_t d = 0; d < t->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        for (int32_t d = 0; d < n_dims; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)shape[d]);
        return fail(err, err_len,
                    "%s: tensor '%s': shape [%s] disagrees with config.json (expected [%s])",
                    s->path, name, got, want);
    }
    if (t->dtype == HF_DTYPE_OTHER)
        return fail(err, err_len, "%s: tensor '%s': dtype %s (F32, F16 or BF16 supported)",
                    s->path, name, t->dtype_name);
    return 0;
}

int hf_checkpoint_read(const hf_checkpoint *ck, const char *name, int32_t n_dims,
                       const int64_t *shape, float *dst, char *err, size_t err_len)
{
    if (hf_checkpoint_check(ck, name, n_dims, shape, err, err_len))
        return -1;
    const hf_tensor *t = hf_checkpoint_find(ck, name);
    const hf_shard *s = &ck->shards[t->shard];
    const unsigned char *p = s->map + t->offset;
    int64_t n = t->numel;
    switch (t->dtype) {
    case HF_DTYPE_F32:
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&dst[i], &u, sizeof u);
        }
        break;
    case HF_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = hf_f16_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case HF_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = hf_bf16_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    default:
        return -1; /* refused by hf_checkpoint_check */
    }
    release(s->map, s->size, t->offset, t->nbytes);
    return 0;
}
