/* llama2.c tokenizer (tokenizer.bin format): byte-fallback BPE merged by score, as run.c does. */
#ifndef L2C_TOKENIZER_H
#define L2C_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum { L2C_BOS = 1, L2C_EOS = 2, L2C_BYTE0 = 3 };

typedef struct l2c_token_entry {
    const char *str;
    int32_t id;
} l2c_token_entry;

typedef struct l2c_tokenizer {
    int32_t vocab_size;
    int32_t max_token_length;
    char **vocab;
    float *scores;
    l2c_token_entry *sorted; /* sorted by string, for lookups */
} l2c_tokenizer;

int l2c_tokenizer_load(const char *path, int32_t vocab_size, l2c_tokenizer *t, char *err,
                       size_t err_len);
void l2c_tokenizer_free(l2c_tokenizer *t);

/* Encodes text (NUL-terminated) as run.c does: optional BOS, a space prepended to non-empty
 * text, UTF-8 code points looked up or spelled as byte tokens, then pairs merged by best score.
 * tokens needs strlen(text) + 2 entries. Returns the count, or -1 when out of memory. */
int64_t l2c_encode(const l2c_tokenizer *t, const char *text, int bos, int32_t *tokens);

/* Appends the text of token after prev to buf (size cap, kept NUL-terminated), dropping the
 * leading space after BOS and unprintable bytes, as run.c prints. */
void l2c_decode_append(const l2c_tokenizer *t, int32_t prev, int32_t token, char *buf,
                       size_t cap);

#endif
