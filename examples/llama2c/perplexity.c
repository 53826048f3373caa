/* Reads story files and measures perplexity window by window. */
#include "perplexity.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *l2c_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
            if (len)
                *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

/* Strips white space at both ends in place; returns the new start. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int l2c_text_load(const char *path, const l2c_tokenizer *tk, l2c_text *out)
{
    static const char sep[] = "<|endoftext|>";
    memset(out, 0, sizeof *out);
    char *text = l2c_read_file(path, NULL);
    if (!text) {
        fprintf(stderr, "%s: cannot read\n", path);
        return -1;
    }
    size_t len = strlen(text);
    /* Tokens never outnumber bytes + 2 per story; stories never outnumber separators + 1. */
    int64_t max_stories = 1;
    for (const char *p = text; (p = strstr(p, sep)) != NULL; p += sizeof sep - 1)
        max_stories++;
    out->tokens = malloc((len + 2 * (size_t)max_stories + 1) * sizeof *out->tokens);
    out->story_start = malloc(((size_t)max_stories + 1) * sizeof *out->story_start);
    int rc = -1;
    if (!out->tokens || !out->story_start)
        goto out;
    char *story = text;
    for (;;) {
        char *next = strstr(story, sep);
        if (next)
            *next = '\0';
        char *s = trim(story);
        if (*s != '\0') {
            int64_t n = l2c_encode(tk, s, 1, out->tokens + out->n_tokens);
            if (n < 0)
                goto out;
            out->story_start[out->n_stories++] = out->n_tokens;
            out->n_tokens += n;
        }
        if (!next)
            break;
        story = next + sizeof sep - 1;
    }
    out->story_start[out->n_stories] = out->n_tokens;
    rc = 0;
out:
    free(text);
    if (rc) {
        fprintf(stderr, "%s: out of memory\n", path);
        l2c_text_free(out);
    }
    return rc;
}

void l2c_text_free(l2c_text *t)
{
    free(t->tokens);
    free(t->story_start);
    memset(t, 0, sizeof *t);
}

int64_t l2c_windows(const l2c_text *t, int64_t window, int64_t max_windows, l2c_window **out)
{
    int64_t cap = 16, n = 0;
    l2c_window *w = malloc((size_t)cap * sizeof *w);
    if (!w)
        return -1;
    for (int64_t s = 0; s < t->n_stories; s++)
        for (int64_t at = t->story_start[s]; at < t->story_start[s + 1]; at += window) {
            int64_t len = t->story_start[s + 1] - at;
            len = len < window ? len : window;
            if (len < 2 || (max_windows > 0 && n >= max_windows))
                continue;
            if (n == cap) {
                l2c_window *grown = realloc(w, (size_t)(cap *= 2) * sizeof *w);
                if (!grown) {
                    free(w);
                    return -1;
                }
                w = grown;
            }
            w[n].start = at;
            w[n++].len = len;
        }
    *out = w;
    return n;
}

int l2c_mean_nll(const l2c_net *net, const l2c_text *t, const l2c_window *w, int64_t n_windows,
                 double *nll, int64_t *predicted)
{
    return l2c_mean_nll_rows(net, t, w, n_windows, 0, INT64_MAX, nll, predicted);
}

int l2c_mean_nll_rows(const l2c_net *net, const l2c_text *t, const l2c_window *w,
                      int64_t n_windows, int64_t row_lo, int64_t row_hi, double *nll,
                      int64_t *predicted)
{
    int64_t vocab = net->m->c.vocab_size, max_len = 0;
    for (int64_t i = 0; i < n_windows; i++)
        max_len = w[i].len > max_len ? w[i].len : max_len;
    float *logits = malloc((size_t)(max_len * vocab) * sizeof *logits + 1);
    if (!logits) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    double sum = 0;
    int64_t count = 0, row = 0;
    int rc = 0;
    for (int64_t i = 0; i < n_windows && rc == 0 && row < row_hi; row += w[i++].len) {
        const int32_t *tok = t->tokens + w[i].start;
        if (row + w[i].len <= row_lo)
            continue; /* no row of this window is counted: no need to run it */
        if ((rc = l2c_forward(net, tok, w[i].len, logits)) != 0)
            break;
        for (int64_t p = 0; p + 1 < w[i].len; p++) {
            if (row + p < row_lo || row + p >= row_hi)
                continue;
            const float *z = logits + p * vocab;
            double mx = z[0], s = 0;
            for (int64_t j = 1; j < vocab; j++)
                mx = z[j] > mx ? z[j] : mx;
            for (int64_t j = 0; j < vocab; j++)
                s += exp((double)z[j] - mx);
            sum += mx + log(s) - (double)z[tok[p + 1]];
            count++;
        }
    }
    free(logits);
    *nll = count ? sum / (double)count : 0;
    *predicted = count;
    return rc;
}
