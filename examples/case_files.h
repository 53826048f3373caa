/* Reading the reference cases' files (DESIGN.md, golden/): raw float32 arrays and the flat
 * numbers of a manifest. Shared by the example programs that print side-by-side tables. */
#ifndef EXAMPLES_CASE_FILES_H
#define EXAMPLES_CASE_FILES_H

#include <stdint.h>

/* The whole file, NUL-terminated, malloc'ed; *size receives its length. NULL on failure. */
char *case_read_file(const char *path, long *size);

/* dir/name.f32 when it holds exactly n float32 values (malloc'ed), else NULL. */
float *case_read_f32(const char *dir, const char *name, int64_t n);

/* The number (or true / false as 1 / 0) after "key": in manifest text; -1 when absent. */
int case_manifest_number(const char *text, const char *key, double *out);

#endif
