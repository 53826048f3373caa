/* Fuzz target for the file reader: opens the input as a file buffer and calls every getter.
 * Built with clang -fsanitize=fuzzer (tests/fuzz/build.sh); tests/fuzz/replay.c runs the same
 * entry over a corpus with any compiler. Any accepted object must survive a write-read cycle:
 * a violation aborts, so the fuzzer reports it as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duquant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A loaded plan or matrix is written again and must load again. */
static void round_trip(const dq_plan *pl, const dq_qmatrix *q)
{
    dq_file_writer *w = NULL;
    if (dq_file_writer_create(NULL, &w) != DQ_OK)
        abort();
    if ((pl && dq_file_writer_add_plan(w, "x", pl) != DQ_OK) ||
        (q && dq_file_writer_add_qmatrix(w, "x", q) != DQ_OK))
        abort();
    size_t size = 0;
    if (dq_file_writer_to_buffer(w, NULL, 0, &size) != DQ_OK)
        abort();
    uint8_t *buf = malloc(size);
    if (!buf || dq_file_writer_to_buffer(w, buf, size, &size) != DQ_OK)
        abort();
    dq_file_reader *r = NULL;
    if (dq_file_reader_from_buffer(NULL, NULL, buf, size, &r) != DQ_OK)
        abort();
    dq_plan *pl2 = NULL;
    dq_qmatrix *q2 = NULL;
    if ((pl && dq_file_reader_get_plan(r, NULL, "x", &pl2) != DQ_OK) ||
        (q && dq_file_reader_get_qmatrix(r, NULL, "x", &q2) != DQ_OK))
        abort();
    dq_plan_free(pl2);
    dq_qmatrix_free(q2);
    dq_file_reader_free(r);
    dq_file_writer_free(w);
    free(buf);
}

static void use_plan(const dq_plan *pl)
{
    int64_t cols = 0;
    if (dq_plan_width(pl, &cols) != DQ_OK || cols < 1)
        abort();
    if (cols <= 4096) {
        float *x = calloc((size_t)cols * 2, sizeof(float));
        if (!x)
            abort();
        for (int64_t j = 0; j < cols * 2; j++)
            x[j] = (float)(j % 7) - 3.0f;
        if (dq_plan_apply_act(pl, x, 2, cols, cols, NULL, 0) != DQ_OK)
            abort();
        free(x);
    }
    round_trip(pl, NULL);
}

static void use_qmatrix(const dq_qmatrix *q)
{
    int64_t rows = 0, cols = 0;
    if (dq_qmatrix_layout(q, &rows, &cols, NULL, NULL, NULL, NULL, NULL) != DQ_OK)
        abort();
    if (rows * cols <= (1 << 20)) {
        float *d = malloc(sizeof(float) * (size_t)(rows * cols));
        if (!d || dq_qmatrix_dequantize(q, d, cols) != DQ_OK)
            abort();
        free(d);
    }
    round_trip(NULL, q);
}

/* A layer is loaded with the plan its metadata names (when that loads) and run once. */
static void use_linear(const dq_file_reader *r, const char *prefix)
{
    char key[600], plan_prefix[512];
    size_t len;
    dq_plan *pl = NULL;
    snprintf(key, sizeof key, "%s.plan", prefix);
    if (dq_file_reader_metadata(r, key, plan_prefix, sizeof plan_prefix, &len) == DQ_OK &&
        dq_file_reader_get_plan(r, NULL, plan_prefix, &pl) != DQ_OK)
        pl = NULL; /* a broken plan: the layer is still tried with the identity */
    dq_linear *lin = NULL;
    if (dq_file_reader_get_linear(r, NULL, prefix, pl, &lin) == DQ_OK) {
        int64_t in = 0, out = 0;
        if (dq_linear_layout(lin, &in, &out) != DQ_OK)
            abort();
        if (in * out <= (1 << 20)) {
            float *x = calloc((size_t)in * 2, sizeof(float));
            float *y = calloc((size_t)out * 2, sizeof(float));
            if (!x || !y)
                abort();
            for (int64_t j = 0; j < in * 2; j++)
                x[j] = (float)(j % 5) - 2.0f;
            if (dq_linear_forward(lin, x, 2, in, in, y, out, NULL, 0) != DQ_OK)
                abort();
            free(x);
            free(y);
        }
    }
    dq_linear_free(lin);
    dq_plan_free(pl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dq_file_params p;
    dq_file_params_init(&p, sizeof p);
    /* Borrow: the input buffer is exactly size bytes, so ASan sees any read past it. */
    p.flags = DQ_FILE_F_BORROW;
    dq_file_reader *r = NULL;
    if (dq_file_reader_from_buffer(NULL, &p, data, size, &r) != DQ_OK)
        return 0;
    int64_t nt = 0, nm = 0;
    dq_file_reader_count(r, &nt, &nm);
    char name[512], value[512];
    size_t len;
    for (int64_t i = 0; i < nt; i++) {
        if (dq_file_reader_tensor_name(r, i, name, sizeof name, &len) != DQ_OK)
            continue;
        int32_t dtype = -1, ndim = 0;
        int64_t shape[DQ_FILE_MAX_DIMS];
        if (dq_file_reader_tensor_info(r, name, &dtype, &ndim, shape) != DQ_OK)
            abort(); /* a listed name must be found */
        int64_t n = 1;
        /* F32 only: the container checked 4 * n bytes without overflow, so n fits. */
        for (int32_t d = 0; d < ndim && dtype == DQ_DTYPE_F32; d++)
            n *= shape[d];
        if (dtype == DQ_DTYPE_F32 && n <= (1 << 22)) {
            float *out = malloc(sizeof(float) * (size_t)(n ? n : 1));
            if (!out || dq_file_reader_get_tensor_f32(r, name, out, n) != DQ_OK)
                abort();
            free(out);
        }
    }
    for (int64_t i = 0; i < nm; i++) {
        if (dq_file_reader_metadata_key(r, i, name, sizeof name, &len) != DQ_OK)
            continue;
        if (dq_file_reader_metadata(r, name, value, sizeof value, &len) != DQ_OK &&
            dq_file_reader_metadata(r, name, NULL, 0, &len) != DQ_OK)
            abort();
        /* Every "<prefix>.type" names an object to load. */
        size_t kl = strlen(name);
        if (kl > 5 && strcmp(name + kl - 5, ".type") == 0) {
            name[kl - 5] = 0;
            dq_plan *pl = NULL;
            dq_qmatrix *q = NULL;
            if (dq_file_reader_get_plan(r, NULL, name, &pl) == DQ_OK)
                use_plan(pl);
            if (dq_file_reader_get_qmatrix(r, NULL, name, &q) == DQ_OK)
                use_qmatrix(q);
            dq_plan_free(pl);
            dq_qmatrix_free(q);
            use_linear(r, name);
        }
    }
    dq_file_reader_free(r);
    return 0;
}
