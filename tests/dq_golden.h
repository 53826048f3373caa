/* Access to reference test vectors in $DUQUANT_GOLDEN_DIR (test support only). */
#ifndef DQ_GOLDEN_H
#define DQ_GOLDEN_H

#include <stdint.h>

#include "dq_json.h"

/* Exit code meson reads as "skipped". */
#define GOLDEN_SKIP 77

typedef struct golden_case {
    char name[256];
    char dir[4096];
    json_value *manifest;
} golden_case;

/* $DUQUANT_GOLDEN_DIR, else the build-time default (../shared/golden beside the source tree). */
const char *golden_dir(void);

/* Lists the case folders (those holding manifest.json) in sorted order. Returns the count, 0 when
 * the directory is absent or empty (*absent says which), -1 on error (a manifest that does not
 * parse counts as an error). Free with golden_free_cases. */
int golden_list(golden_case **cases, int *absent);
void golden_free_cases(golden_case *cases, int n);

/* A numeric (or boolean) member of the manifest's "params"/"scalars"; -1 when missing. */
int golden_number(const golden_case *gc, const char *section, const char *key, double *out);
/* A string member of "params"; NULL when missing. */
const char *golden_string(const golden_case *gc, const char *section, const char *key);

/* True when the manifest lists the named array. */
int golden_has(const golden_case *gc, const char *name);

/* Loads the named array after checking dtype, shape (1 or 2 dims) and file size against the
 * manifest. Returns 0, or -1 with a message on stderr when anything is malformed. rows/cols
 * receive the shape (a 1-D array of n has rows = n, cols = 1). Free the data with free(). */
int golden_load_f32(const golden_case *gc, const char *name, float **data, int64_t *rows,
                    int64_t *cols);
int golden_load_i32(const golden_case *gc, const char *name, int32_t **data, int64_t *rows,
                    int64_t *cols);

#endif
