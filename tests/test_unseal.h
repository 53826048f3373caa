/* Test helper: a file written by the library, without its checksums and marked as a version-2
 * file (doc/formats.md: files before version 3 carry none and load without them). Tests that
 * edit a file's header or data to reach an object's own checks use it, since the checksums of
 * a version-3 file would refuse the edit first. */
#ifndef TEST_UNSEAL_H
#define TEST_UNSEAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint8_t *test_unseal(const uint8_t *buf, size_t size, size_t *out_size)
{
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = n << 8 | buf[k];
    char *json = malloc(n + 1), *out = malloc(n + 1);
    memcpy(json, buf + 8, n);
    json[n] = 0;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        /* The writer puts format and format_version first: every checksum pair follows a
         * comma, and its value is 16 hex digits. */
        if (strncmp(json + i, ",\"__hash__", 10) == 0 &&
            (json[i + 10] == '"' || json[i + 10] == '.')) {
            const char *v = strstr(json + i + 10, "\":\"");
            i = (size_t)(v - json) + 3 + 16 + 1;
            continue;
        }
        out[o++] = json[i++];
    }
    out[o] = 0;
    char *ver = strstr(out, "\"format_version\":\"3\"");
    if (ver)
        ver[18] = '2';
    const size_t hn = (o + 7) / 8 * 8, data = size - 8 - (size_t)n;
    uint8_t *b = malloc(8 + hn + data);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)hn >> (8 * k));
    memcpy(b + 8, out, o);
    memset(b + 8 + o, ' ', hn - o);
    memcpy(b + 8 + hn, buf + 8 + n, data);
    *out_size = 8 + hn + data;
    free(json);
    free(out);
    return b;
}

#endif /* TEST_UNSEAL_H */
