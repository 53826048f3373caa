/* Greedy generation from a prompt. */
#ifndef L2C_GENERATE_H
#define L2C_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "tokenizer.h"

/* Encodes prompt with BOS, then appends the most likely token steps times (stopping at BOS,
 * which starts a new story, or at the model's context length) and writes the decoded text,
 * prompt included, to text (cap bytes, NUL-terminated). Returns 0 or -1. */
int l2c_generate(const l2c_net *net, const l2c_tokenizer *tk, const char *prompt, int32_t steps,
                 char *text, size_t cap);

#endif
