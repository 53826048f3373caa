/* Story texts, evaluation windows and the perplexity protocol.
 *
 * A text file holds stories separated by lines `<|endoftext|>`. Each story (trimmed of
 * surrounding white space) is encoded with BOS first, as llama2.c does. Each story is cut into
 * non-overlapping windows of at most `window` tokens (default 256); every window runs from
 * position 0 with an empty cache, and a window of n tokens predicts its last n - 1 tokens. The
 * perplexity is exp of the negative log-likelihood averaged over all predicted tokens. */
#ifndef L2C_PERPLEXITY_H
#define L2C_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "tokenizer.h"

typedef struct l2c_text {
    int32_t *tokens;
    int64_t n_tokens;
    int64_t *story_start; /* n_stories + 1 offsets into tokens */
    int64_t n_stories;
} l2c_text;

typedef struct l2c_window {
    int64_t start, len;
} l2c_window;

int l2c_text_load(const char *path, const l2c_tokenizer *tk, l2c_text *out);
/* A whole file, NUL-terminated and malloc'ed (*len, when len is not NULL, without the NUL);
 * NULL when it cannot be read. */
char *l2c_read_file(const char *path, size_t *len);
void l2c_text_free(l2c_text *t);

/* The windows of the protocol, in file order; max_windows > 0 keeps only the first ones.
 * Windows of a single token predict nothing and are left out. Returns the count, -1 on
 * out of memory. *out is malloc'ed. */
int64_t l2c_windows(const l2c_text *t, int64_t window, int64_t max_windows, l2c_window **out);

/* Mean negative log-likelihood (natural log) over the predicted tokens of the windows.
 * Returns 0 or the forward pass's error. */
int l2c_mean_nll(const l2c_net *net, const l2c_text *t, const l2c_window *w, int64_t n_windows,
                 double *nll, int64_t *predicted);

/* l2c_mean_nll over the predictions made at rows [row_lo, row_hi) of the windows' stream
 * (the windows' tokens counted one after the other, as calibration observes them): each
 * window is run whole, only those rows are counted, and windows wholly outside are skipped. */
int l2c_mean_nll_rows(const l2c_net *net, const l2c_text *t, const l2c_window *w,
                      int64_t n_windows, int64_t row_lo, int64_t row_hi, double *nll,
                      int64_t *predicted);

#endif
