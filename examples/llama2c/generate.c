/* Greedy decoding with a key/value cache: the prompt runs once, then each step runs only the
 * token it appended. */
#include "generate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t l2c_greedy(const l2c_net *net, int32_t *tokens, int64_t n, int64_t room, int32_t steps,
                   int32_t stop_a, int32_t stop_b)
{
    int64_t vocab = net->m->c.vocab_size, max_len = net->m->c.seq_len;
    int64_t end = n + (steps > 0 ? steps : 0);
    end = end < room ? end : room;
    end = end < max_len ? end : max_len;
    float *logits = malloc((size_t)vocab * sizeof *logits);
    l2c_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    if (!logits || n < 1 || n > max_len || l2c_kv_cache_init_net(&kv, net, end > n ? end : n))
        n = -1;
    while (n > 0 && n < end) {
        /* The tokens the cache does not hold yet: the prompt, then the last one appended. */
        if (l2c_forward_cached(net, &kv, tokens + kv.len, n - kv.len, logits, 1)) {
            n = -1;
            break;
        }
        int32_t best = 0;
        for (int32_t j = 1; j < vocab; j++)
            best = logits[j] > logits[best] ? j : best;
        if (best == stop_a || best == stop_b)
            break;
        tokens[n++] = best;
    }
    l2c_kv_cache_free(&kv);
    free(logits);
    return n;
}

int l2c_generate(const l2c_net *net, const l2c_tokenizer *tk, const char *prompt, int32_t steps,
                 char *text, size_t cap)
{
    int64_t room = (int64_t)strlen(prompt) + 2 + (steps > 0 ? steps : 0);
    int32_t *tokens = malloc((size_t)room * sizeof *tokens);
    int rc = -1;
    if (!tokens || cap == 0)
        goto out;
    int64_t n = l2c_encode(tk, prompt, 1, tokens);
    if (n < 0 || (n = l2c_greedy(net, tokens, n, room, steps, L2C_BOS, -1)) < 0)
        goto out;
    text[0] = '\0';
    for (int64_t i = 1; i < n; i++)
        l2c_decode_append(tk, tokens[i - 1], tokens[i], text, cap);
    rc = 0;
out:
    free(tokens);
    return rc;
}

#ifdef L2C_WITH_HF
int l2c_generate_hf(const l2c_net *net, const hf_tokenizer *tk, const char *prompt,
                    int32_t steps, int32_t eos, char *text, size_t cap, char *err,
                    size_t err_len)
{
    /* A text of n bytes encodes to at most n + 2 ids with BOS (hf_tokenizer.h). */
    size_t plen = strlen(prompt), room = plen + 2 + (size_t)(steps > 0 ? steps : 0), n = 0;
    int64_t vocab = net->m->c.vocab_size, max_len = net->m->c.seq_len;
    int32_t *ids = malloc(room * sizeof *ids);
    char *all = NULL;
    int rc = -1;
    if (!ids || cap == 0) {
        snprintf(err, err_len, "out of memory");
        goto out;
    }
    if (hf_tokenizer_encode(tk, prompt, plen, HF_ENCODE_BOS, ids, room, &n, err, err_len))
        goto out;
    if ((int64_t)n > max_len) {
        snprintf(err, err_len, "the prompt's %zu tokens exceed the model's context of %lld", n,
                 (long long)max_len);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) {
            snprintf(err, err_len, "token %d of the prompt is beyond the model's vocabulary "
                     "of %lld: the tokenizer does not fit the model", ids[i], (long long)vocab);
            goto out;
        }
    int64_t got = l2c_greedy(net, ids, (int64_t)n, (int64_t)room, steps,
                             hf_tokenizer_bos(tk), eos);
    if (got < 0) {
        snprintf(err, err_len, "out of memory");
        goto out;
    }
    /* Decoded whole, so byte tokens join into characters; then cut to cap. */
    size_t len = 0;
    if (hf_tokenizer_decode(tk, ids, (size_t)got, HF_DECODE_SKIP_SPECIAL, NULL, 0, &len, err,
                            err_len) != HF_ERR_RANGE ||
        !(all = malloc(len + 1)) ||
        hf_tokenizer_decode(tk, ids, (size_t)got, HF_DECODE_SKIP_SPECIAL, all, len + 1, &len,
                            err, err_len)) {
        if (!all)
            snprintf(err, err_len, "out of memory");
        goto out;
    }
    len = len < cap - 1 ? len : cap - 1;
    memcpy(text, all, len);
    text[len] = '\0';
    rc = 0;
out:
    free(all);
    free(ids);
    return rc;
}
#endif
