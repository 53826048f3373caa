/* Minimal NumPy .npy (format 1.0) writer for float32 matrices. */
#ifndef L2C_NPY_H
#define L2C_NPY_H

#include <stdint.h>

/* Writes rows x cols little-endian float32 values (row-major) to path; 0 or -1. */
int l2c_npy_write_f32(const char *path, const float *x, int64_t rows, int64_t cols);

#endif
