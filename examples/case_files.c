/* Reading the reference cases' files (see case_files.h). */
#include "case_files.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *case_read_file(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *size = n;
            }
        }
    }
    fclose(f);
    return buf;
}

float *case_read_f32(const char *dir, const char *name, int64_t n)
{
    char path[4096];
    long size = 0;
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    char *buf = case_read_file(path, &size);
    if (buf && size != (long)(n * (int64_t)sizeof(float))) {
        free(buf);
        buf = NULL;
    }
    return (float *)buf;
}

/* The manifests' params objects are flat, so a key search is enough. */
int case_manifest_number(const char *text, const char *key, double *out)
{
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = strstr(text, pattern);
    if (!p)
        return -1;
    p += strlen(pattern);
    while (*p == ' ')
        p++;
    if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
        *out = *p == 't';
        return 0;
    }
    char *end;
    *out = strtod(p, &end);
    return end == p ? -1 : 0;
}

void case_synthetic_layer(float *x, int64_t t, int64_t c, float *w, int64_t out)
{
    uint64_t s = 2024;
    for (int64_t i = 0; i < t * c + out * c; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = ((double)(s >> 11) + 0.5) / 9007199254740992.0 - 0.5;
        double v = (u < 0 ? 1 : -1) * log(1 - 2 * fabs(u));
        if (i < t * c)
            x[i] = (float)(v * (i % c % 61 == 7 ? 40.0 : 1.0));
        else
            w[i - t * c] = (float)(0.02 * v);
    }
    x[5 * c + 100] = 1500.0f;
    x[77 * c + 300] = -1800.0f;
}
