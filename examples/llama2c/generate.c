/* Greedy decoding with a key/value cache: the prompt runs once, then each step runs only the
 * token it appended. */
#include "generate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int l2c_generate(const l2c_net *net, const l2c_tokenizer *tk, const char *prompt, int32_t steps,
                 char *text, size_t cap)
{
    int64_t vocab = net->m->c.vocab_size, max_len = net->m->c.seq_len;
    int64_t room = (int64_t)strlen(prompt) + 2 + (steps > 0 ? steps : 0);
    int32_t *tokens = malloc((size_t)room * sizeof *tokens);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    l2c_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    int rc = -1;
    if (!tokens || !logits || cap == 0)
        goto out;
    int64_t n = l2c_encode(tk, prompt, 1, tokens);
    if (n < 0 || n > max_len)
        goto out;
    if (l2c_kv_cache_init(&kv, net->m, room < max_len ? room : max_len))
        goto out;
    text[0] = '\0';
    for (int64_t i = 1; i < n; i++)
        l2c_decode_append(tk, tokens[i - 1], tokens[i], text, cap);
    for (int32_t s = 0; s < steps && n < max_len; s++) {
        /* The tokens the cache does not hold yet: the prompt, then the last one appended. */
        if (l2c_forward_cached(net, &kv, tokens + kv.len, n - kv.len, logits, 1))
            goto out;
        int32_t best = 0;
        for (int32_t j = 1; j < vocab; j++)
            best = logits[j] > logits[best] ? j : best;
        if (best == L2C_BOS)
            break;
        l2c_decode_append(tk, tokens[n - 1], best, text, cap);
        tokens[n++] = best;
    }
    rc = 0;
out:
    l2c_kv_cache_free(&kv);
    free(tokens);
    free(logits);
    return rc;
}
