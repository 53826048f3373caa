/* .npy format 1.0: magic, version, header length, a Python dict literal padded with spaces
 * and a newline so the data starts on a 64-byte boundary, then the raw data. */
#include "npy.h"

#include <stdio.h>
#include <string.h>

int l2c_npy_write_f32(const char *path, const float *x, int64_t rows, int64_t cols)
{
    char dict[256];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    if (n < 0 || n > 180)
        return -1;
    size_t header = 10 + (size_t)n + 1, pad = (64 - header % 64) % 64;
    memset(dict + n, ' ', pad);
    dict[(size_t)n + pad] = '\n';
    size_t dict_len = (size_t)n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(dict_len & 0xff), (unsigned char)(dict_len >> 8)};
    /* The data is written as the host stores floats: every target of this project is
     * little-endian, which the header declares. */
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre &&
             fwrite(dict, 1, dict_len, f) == dict_len &&
             fwrite(x, sizeof *x, (size_t)(rows * cols), f) == (size_t)(rows * cols);
    return fclose(f) == 0 && ok ? 0 : -1;
}
