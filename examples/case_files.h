/* Inputs of the example programs that print side-by-side tables: the reference cases' files
 * (DESIGN.md, golden/: raw float32 arrays and the flat numbers of a manifest) and the
 * synthetic layer used without them. */
#ifndef EXAMPLES_CASE_FILES_H
#define EXAMPLES_CASE_FILES_H

#include <stdint.h>

/* The whole file, NUL-terminated, malloc'ed; *size receives its length. NULL on failure. */
char *case_read_file(const char *path, long *size);

/* dir/name.f32 when it holds exactly n float32 values (malloc'ed), else NULL. */
float *case_read_f32(const char *dir, const char *name, int64_t n);

/* The number (or true / false as 1 / 0) after "key": in manifest text; -1 when absent. */
int case_manifest_number(const char *text, const char *key, double *out);

/* The stand-in layer when no reference cases are found: x (t x c) Laplace activations with
 * every 61st channel from 7 scaled 40x and two massive values (rows 5 and 77, which t must
 * exceed; c must exceed 300), w (out x c) Laplace weights of scale 0.02; seeded, so every
 * program sees the same layer. */
void case_synthetic_layer(float *x, int64_t t, int64_t c, float *w, int64_t out);

#endif
