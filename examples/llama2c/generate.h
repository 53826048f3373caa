/* Greedy generation from a prompt. */
#ifndef L2C_GENERATE_H
#define L2C_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "tokenizer.h"
#ifdef L2C_WITH_HF
#include "hf_tokenizer.h"
#endif

/* Appends the most likely token to tokens[0..n) (room entries) up to steps times, stopping
 * before stop_a or stop_b (-1: none) and at the model's context length. Returns the new count,
 * or -1. */
int64_t l2c_greedy(const l2c_net *net, int32_t *tokens, int64_t n, int64_t room, int32_t steps,
                   int32_t stop_a, int32_t stop_b);

/* Encodes prompt with BOS, then appends the most likely token steps times (stopping at BOS,
 * which starts a new story, or at the model's context length) and writes the decoded text,
 * prompt included, to text (cap bytes, NUL-terminated). Returns 0 or -1. */
int l2c_generate(const l2c_net *net, const l2c_tokenizer *tk, const char *prompt, int32_t steps,
                 char *text, size_t cap);

#ifdef L2C_WITH_HF
/* The same with a Hugging Face tokenizer: the prompt encoded with its BOS first, generation
 * stopped at BOS or eos (-1: none), the text decoded without special tokens and cut to cap
 * bytes. Returns 0, or -1 with a message in err. */
int l2c_generate_hf(const l2c_net *net, const hf_tokenizer *tk, const char *prompt,
                    int32_t steps, int32_t eos, char *text, size_t cap, char *err,
                    size_t err_len);
#endif

#endif
