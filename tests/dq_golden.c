/* Golden-vector access: manifest parsing and strictly checked raw array loading. */
#define _POSIX_C_SOURCE 200809L
#include "dq_golden.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef DQ_DEFAULT_GOLDEN_DIR
#define DQ_DEFAULT_GOLDEN_DIR "../shared/golden"
#endif

const char *golden_dir(void)
{
    const char *env = getenv("DUQUANT_GOLDEN_DIR");
    return (env && *env) ? env : DQ_DEFAULT_GOLDEN_DIR;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long size;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out;
    buf = malloc((size_t)size + 1);
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    if (buf) {
        buf[size] = '\0';
        *len = (size_t)size;
    }
out:
    fclose(f);
    return buf;
}

static int cmp_case(const void *a, const void *b)
{
    return strcmp(((const golden_case *)a)->name, ((const golden_case *)b)->name);
}

int golden_list(golden_case **cases, int *absent)
{
    *cases = NULL;
    *absent = 0;
    const char *root = golden_dir();
    DIR *d = opendir(root);
    if (!d) {
        *absent = 1;
        return 0;
    }
    int n = 0, cap = 0, rc = 0;
    golden_case *list = NULL;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4400];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s/manifest.json", root, e->d_name);
        if (stat(path, &st) != 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            golden_case *t = realloc(list, (size_t)cap * sizeof *t);
            if (!t) {
                rc = -1;
                break;
            }
            list = t;
        }
        golden_case *gc = &list[n];
        memset(gc, 0, sizeof *gc);
        snprintf(gc->name, sizeof gc->name, "%s", e->d_name);
        snprintf(gc->dir, sizeof gc->dir, "%s/%s", root, e->d_name);
        size_t len = 0;
        char *text = read_file(path, &len);
        gc->manifest = text ? json_parse(text, len) : NULL;
        free(text);
        n++;
        if (!gc->manifest || !json_get(gc->manifest, "files")) {
            fprintf(stderr, "golden: %s: manifest.json is malformed\n", gc->name);
            rc = -1;
            break;
        }
    }
    closedir(d);
    if (rc != 0) {
        golden_free_cases(list, n);
        return -1;
    }
    if (n > 1)
        qsort(list, (size_t)n, sizeof *list, cmp_case);
    *cases = list;
    return n;
}

void golden_free_cases(golden_case *cases, int n)
{
    for (int i = 0; i < n; i++)
        json_free(cases[i].manifest);
    free(cases);
}

int golden_number(const golden_case *gc, const char *section, const char *key, double *out)
{
    const json_value *v = json_get(json_get(gc->manifest, section), key);
    if (!v || (v->type != JSON_NUMBER && v->type != JSON_BOOL))
        return -1;
    *out = v->number;
    return 0;
}

const char *golden_string(const golden_case *gc, const char *section, const char *key)
{
    const json_value *v = json_get(json_get(gc->manifest, section), key);
    return (v && v->type == JSON_STRING) ? v->string : NULL;
}

int golden_has(const golden_case *gc, const char *name)
{
    return json_get(json_get(gc->manifest, "files"), name) != NULL;
}

static int load_raw(const golden_case *gc, const char *name, const char *dtype, void **data,
                    int64_t *rows, int64_t *cols)
{
    *data = NULL;
    const json_value *f = json_get(json_get(gc->manifest, "files"), name);
    const json_value *file = json_get(f, "file"), *dt = json_get(f, "dtype");
    const json_value *shape = json_get(f, "shape");
    if (!f || !file || file->type != JSON_STRING || !dt || dt->type != JSON_STRING || !shape ||
        shape->type != JSON_ARRAY || shape->n < 1 || shape->n > 2) {
        fprintf(stderr, "golden: %s: manifest entry for %s is missing or malformed\n", gc->name,
                name);
        return -1;
    }
    if (strcmp(dt->string, dtype) != 0 || strchr(file->string, '/')) {
        fprintf(stderr, "golden: %s: %s has dtype %s, expected %s\n", gc->name, name, dt->string,
                dtype);
        return -1;
    }
    int64_t dims[2] = {1, 1};
    for (size_t i = 0; i < shape->n; i++) {
        const json_value *d = shape->items[i];
        if (d->type != JSON_NUMBER || d->number < 1 || d->number > 1e8 ||
            d->number != (double)(int64_t)d->number) {
            fprintf(stderr, "golden: %s: %s has a bad shape\n", gc->name, name);
            return -1;
        }
        dims[i] = (int64_t)d->number;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", gc->dir, file->string);
    size_t len = 0;
    char *buf = read_file(path, &len);
    size_t want = (size_t)dims[0] * (size_t)dims[1] * 4;
    if (!buf || len != want) {
        fprintf(stderr, "golden: %s: %s: %s (%zu bytes, expected %zu)\n", gc->name, file->string,
                buf ? "wrong size" : strerror(errno), len, want);
        free(buf);
        return -1;
    }
    *data = buf;
    *rows = dims[0];
    *cols = dims[1];
    return 0;
}

int golden_load_f32(const golden_case *gc, const char *name, float **data, int64_t *rows,
                    int64_t *cols)
{
    return load_raw(gc, name, "float32", (void **)data, rows, cols);
}

int golden_load_i32(const golden_case *gc, const char *name, int32_t **data, int64_t *rows,
                    int64_t *cols)
{
    return load_raw(gc, name, "int32", (void **)data, rows, cols);
}
