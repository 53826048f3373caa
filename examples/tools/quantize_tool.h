/* The work of duquant-quantize shared by its single-process loop (duquant_quantize.c) and its
 * pipeline over MPI ranks (quantize_pipeline_mpi.c): opening the float model and the
 * calibration text, the hidden states, the model file's header and one block's calibration,
 * quantization and writing. Everything here is per process; the pipeline adds the messages. */
#ifndef QUANTIZE_TOOL_H
#define QUANTIZE_TOOL_H

#include <stdint.h>
#include <stdio.h>

#include "duquant.h"
#include "quantize.h"
#include "tool_model.h"

typedef struct qt_options {
    const char *model, *tokenizer, *calib, *method, *out;
    int64_t tokens, window, sample_tokens;
    int32_t threads, sequential;
    l2c_quant_options q; /* input_block is set after block 0 with --block-choice first */
} qt_options;

/* Seconds spent per stage. */
typedef struct qt_times {
    double load, read, calib, quant, next, write;
} qt_times;

typedef struct qt_run {
    qt_options o;
    const l2c_method *method;
    dq_context *ctx;
    tool_model tm;
    l2c_text text;
    l2c_window *w;
    int64_t *len, n_w, total; /* the calibration windows' lengths, their count and sum */
    uint64_t calib_hash;      /* FNV-1a 64 of the calibration file */
    float *h, *h2;            /* hidden states of the total tokens; h2 with --sequential */
    dq_file_writer *fw;
    const char *out;          /* the file being written */
    int failed;               /* a writer call failed (message printed) */
    qt_times t;
    int tty;
} qt_run;

/* Parses the command line into o (defaults first). Returns 0, 1 after --help, -1 on an error
 * (message printed). */
int qt_parse_args(int argc, char **argv, qt_options *o);
/* The output's folder must exist and be writable: checked before any work. */
int qt_check_out(const char *path);

/* Creates the context and opens the model (its blocks stay in the checkpoint); with text, also
 * reads the calibration file, cuts the windows and embeds their tokens into r->h. Without
 * text, the embeddings and head of a Hugging Face folder are not read (r->len, r->n_w and
 * r->total are the caller's to set; qt_states allocates the states). 0 or -1 (message). */
int qt_open(qt_run *r, int text);
int qt_states(qt_run *r);
/* Starts the model file at path (spooled): the header's metadata, and with tables the token
 * embedding, final norm and head (then released for a Hugging Face folder). */
int qt_writer_open(qt_run *r, const char *path, int tables);
void qt_put_str(qt_run *r, const char *key, const char *v);
/* Block l's calibration on its input x (overwritten by the float block's output), its
 * quantization and its layers written; with seq (the same input as x), seq becomes the
 * quantized block's output. Block 0 fixes the blocks of every later one under
 * --block-choice first (r->o.q.input_block). */
int qt_block(qt_run *r, int32_t l, float *x, float *seq);
/* The float block l on x in place (no calibration). */
int qt_forward(qt_run *r, int32_t l, float *x);
int qt_save(qt_run *r, const char *path);
void qt_free(qt_run *r);

#endif
