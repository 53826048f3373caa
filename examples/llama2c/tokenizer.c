/* llama2.c's tokenizer: vocabulary with merge scores, byte fallback at ids 3..258. */
#include "tokenizer.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_entries(const void *a, const void *b)
{
    return strcmp(((const l2c_token_entry *)a)->str, ((const l2c_token_entry *)b)->str);
}

static int32_t lookup(const l2c_tokenizer *t, const char *s)
{
    int32_t lo = 0, hi = t->vocab_size - 1;
    while (lo <= hi) {
        int32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s, t->sorted[mid].str);
        if (c == 0)
            return t->sorted[mid].id;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

int l2c_tokenizer_load(const char *path, int32_t vocab_size, l2c_tokenizer *t, char *err,
                       size_t err_len)
{
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open", path);
        return -1;
    }
    t->vocab_size = vocab_size;
    t->vocab = calloc((size_t)vocab_size, sizeof *t->vocab);
    t->scores = calloc((size_t)vocab_size, sizeof *t->scores);
    t->sorted = calloc((size_t)vocab_size, sizeof *t->sorted);
    int ok = t->vocab && t->scores && t->sorted &&
             fread(&t->max_token_length, sizeof(int32_t), 1, f) == 1 &&
             t->max_token_length > 0 && t->max_token_length < 4096;
    for (int32_t i = 0; ok && i < vocab_size; i++) {
        int32_t len = 0;
        ok = fread(&t->scores[i], sizeof(float), 1, f) == 1 &&
             fread(&len, sizeof len, 1, f) == 1 && len >= 0 && len <= t->max_token_length &&
             (t->vocab[i] = malloc((size_t)len + 1)) != NULL &&
             fread(t->vocab[i], 1, (size_t)len, f) == (size_t)len;
        if (ok)
            t->vocab[i][len] = '\0';
        t->sorted[i].str = t->vocab[i];
        t->sorted[i].id = i;
    }
    fclose(f);
    if (!ok) {
        snprintf(err, err_len, "%s: malformed or truncated tokenizer", path);
        l2c_tokenizer_free(t);
        return -1;
    }
    qsort(t->sorted, (size_t)vocab_size, sizeof *t->sorted, cmp_entries);
    return 0;
}

void l2c_tokenizer_free(l2c_tokenizer *t)
{
    for (int32_t i = 0; t->vocab && i < t->vocab_size; i++)
        free(t->vocab[i]);
    free(t->vocab);
    free(t->scores);
    free(t->sorted);
    memset(t, 0, sizeof *t);
}

int64_t l2c_encode(const l2c_tokenizer *t, const char *text, int bos, int32_t *tokens)
{
    size_t cap = (size_t)t->max_token_length * 2 + 3;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    int64_t n = 0;
    if (bos)
        tokens[n++] = L2C_BOS;
    if (text[0] != '\0') {
        int32_t space = lookup(t, " ");
        if (space >= 0)
            tokens[n++] = space;
    }
    /* One UTF-8 code point at a time (at most 4 bytes). */
    size_t len = 0;
    for (const char *c = text; *c != '\0'; c++) {
        if (((unsigned char)*c & 0xC0) != 0x80)
            len = 0;
        buf[len++] = *c;
        buf[len] = '\0';
        if (((unsigned char)c[1] & 0xC0) == 0x80 && len < 4)
            continue;
        int32_t id = lookup(t, buf);
        if (id >= 0)
            tokens[n++] = id;
        else
            for (size_t i = 0; i < len; i++)
                tokens[n++] = (unsigned char)buf[i] + L2C_BYTE0;
        len = 0;
    }
    /* Merge the adjacent pair whose concatenation has the best score until none is left. */
    for (;;) {
        float best = -1e10f;
        int32_t best_id = -1;
        int64_t best_at = -1;
        for (int64_t i = 0; i + 1 < n; i++) {
            size_t a = strlen(t->vocab[tokens[i]]), b = strlen(t->vocab[tokens[i + 1]]);
            if (a + b + 1 > cap)
                continue;
            memcpy(buf, t->vocab[tokens[i]], a);
            memcpy(buf + a, t->vocab[tokens[i + 1]], b + 1);
            int32_t id = lookup(t, buf);
            if (id >= 0 && t->scores[id] > best) {
                best = t->scores[id];
                best_id = id;
                best_at = i;
            }
        }
        if (best_at < 0)
            break;
        tokens[best_at] = best_id;
        memmove(tokens + best_at + 1, tokens + best_at + 2,
                (size_t)(n - best_at - 2) * sizeof *tokens);
        n--;
    }
    free(buf);
    return n;
}

void l2c_decode_append(const l2c_tokenizer *t, int32_t prev, int32_t token, char *buf,
                       size_t cap)
{
    if (token < 0 || token >= t->vocab_size)
        return;
    const char *piece = t->vocab[token];
    if (prev == L2C_BOS && piece[0] == ' ')
        piece++;
    char byte[2] = {0, 0};
    unsigned int v;
    if (strlen(piece) == 6 && sscanf(piece, "<0x%02X>", &v) == 1) {
        byte[0] = (char)v;
        piece = byte;
    }
    if (piece[0] != '\0' && piece[1] == '\0' && !isprint((unsigned char)piece[0]) &&
        !isspace((unsigned char)piece[0]))
        return;
    size_t used = strlen(buf), add = strlen(piece);
    if (used + add + 1 > cap)
        add = cap - used - 1;
    memcpy(buf + used, piece, add);
    buf[used + add] = '\0';
}
