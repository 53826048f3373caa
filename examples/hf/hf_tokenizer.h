/* Hugging Face tokenizer.json reader for LLaMA-family tokenizers: a BPE model with merges,
 * byte fallback and an unknown token, added and special tokens, the normalizers, the
 * pre-tokenizer and the decoder steps these tokenizers use.
 *
 * Supported (anything else is an error naming the field and its value):
 *   model         type "BPE": vocab, merges ("a b" strings or ["a", "b"] pairs), byte_fallback,
 *                 unk_token, fuse_unk, ignore_merges; dropout null or 0; no subword prefix or
 *                 end-of-word suffix.
 *   normalizer    null, Prepend, Replace (String pattern), or a Sequence of those.
 *   pre_tokenizer null, Metaspace (replacement, prepend_scheme always/first/never or the older
 *                 add_prefix_space, split), or a Sequence holding one Metaspace.
 *   decoder       null, Replace (String pattern), ByteFallback, Fuse, Strip, Metaspace, or a
 *                 Sequence of those.
 *   added_tokens  id, content, special, normalized; lstrip, rstrip and single_word false.
 *   post_processor: read only for the BOS token a TemplateProcessing puts first.
 *
 * Encoding follows the Hugging Face library: the text is split at added tokens (those with
 * normalized false matched in the raw text, the others in the normalized text), each remaining
 * piece is normalized and pre-tokenized, and each word is spelled in characters of the
 * vocabulary (else their UTF-8 bytes as <0xNN> tokens with byte fallback, else the unknown
 * token), then merged pair by pair, the pair of lowest merge rank first (the leftmost among
 * equals), until no listed pair is left.
 *
 * Errors: every function returns HF_OK (0) or a negative HF_ERR_* code and, when err is not
 * NULL, writes one line into err (err_len bytes, NUL-terminated) naming the file and the key at
 * fault. Nothing is left allocated on failure.
 *
 * Thread safety: a loaded tokenizer is immutable; encode and decode may run concurrently on
 * one tokenizer. */
#ifndef HF_TOKENIZER_H
#define HF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum {
    HF_OK = 0,
    HF_ERR_ARG = -1,         /* a NULL pointer or an out-of-range argument */
    HF_ERR_NOMEM = -2,       /* out of memory */
    HF_ERR_IO = -3,          /* the file cannot be opened or read */
    HF_ERR_FORMAT = -4,      /* malformed JSON, a missing or mistyped key, an inconsistency */
    HF_ERR_UNSUPPORTED = -5, /* a model type, normalizer, pre-tokenizer or decoder not handled */
    HF_ERR_RANGE = -6        /* an output buffer too small, or an input over the limits */
};

/* Limits on what a tokenizer file may hold. */
#define HF_TOKENIZER_MAX_FILE_BYTES ((size_t)1 << 30) /* tokenizer.json size */
#define HF_TOKENIZER_MAX_VOCAB ((int32_t)1 << 24)     /* ids are below this */
#define HF_TOKENIZER_MAX_TOKEN_BYTES 4096             /* one token's text */

/* Encode flags. */
#define HF_ENCODE_BOS 1u      /* put the BOS token first (an error if the tokenizer has none) */
#define HF_ENCODE_EOS 2u      /* put the EOS token last (an error if the tokenizer has none) */
#define HF_ENCODE_NO_ADDED 4u /* do not look for added tokens in the text: all of it is text */

/* Decode flags. */
#define HF_DECODE_SKIP_SPECIAL 1u /* leave special tokens (BOS, EOS, unk, ...) out */

typedef struct hf_tokenizer hf_tokenizer;

/* Reads a tokenizer.json file. *out is set to a new tokenizer (hf_tokenizer_free) or NULL. */
int hf_tokenizer_load(const char *path, hf_tokenizer **out, char *err, size_t err_len);

/* The same from JSON text in memory (len bytes, no NUL needed); name is used in messages. */
int hf_tokenizer_load_buffer(const char *json, size_t len, const char *name, hf_tokenizer **out,
                             char *err, size_t err_len);

/* Frees a tokenizer; NULL is a no-op. */
void hf_tokenizer_free(hf_tokenizer *t);

/* One past the largest token id (the vocabulary and the added tokens). */
int32_t hf_tokenizer_vocab_size(const hf_tokenizer *t);

/* The BOS and EOS ids, -1 when the tokenizer names none. BOS is the special token a
 * TemplateProcessing post-processor puts first, else an added token <s> or <|begin_of_text|>;
 * EOS an added token </s>, <|end_of_text|>, <|endoftext|> or <|end_story|>. */
int32_t hf_tokenizer_bos(const hf_tokenizer *t);
int32_t hf_tokenizer_eos(const hf_tokenizer *t);

/* Sets the BOS and EOS ids (for instance from config.json); -1 for none. HF_ERR_ARG when an id
 * is not a token of the tokenizer. Not thread-safe: call before sharing the tokenizer. */
int hf_tokenizer_set_special(hf_tokenizer *t, int32_t bos, int32_t eos, char *err,
                             size_t err_len);

/* The text of one token as stored (with its ▁ and <0xNN> spellings), NULL when id is not a
 * token. Borrowed until the tokenizer is freed. */
const char *hf_tokenizer_token(const hf_tokenizer *t, int32_t id);

/* Looks a token's text up; -1 when absent. */
int32_t hf_tokenizer_find(const hf_tokenizer *t, const char *text, size_t len);

/* Encodes len bytes of UTF-8 text (at most 1 GiB) into ids[0..cap). *n_ids receives the number
 * of ids; when it exceeds cap, nothing past cap is written and HF_ERR_RANGE is returned (call
 * again with a larger buffer; ids may be NULL when cap is 0). Invalid UTF-8 is HF_ERR_ARG.
 * A text of n bytes never needs more than n + 2 ids with the normalizers above plus the BOS
 * and EOS. */
int hf_tokenizer_encode(const hf_tokenizer *t, const char *text, size_t len, uint32_t flags,
                        int32_t *ids, size_t cap, size_t *n_ids, char *err, size_t err_len);

/* Decodes n ids into text through the decoder steps. Writes at most cap bytes into buf, always
 * NUL-terminated when cap > 0; *len receives the text's length without the NUL. HF_ERR_RANGE
 * when it does not fit (buf may be NULL when cap is 0), HF_ERR_ARG for an id that is not a
 * token. Byte tokens that do not form valid UTF-8 become U+FFFD, one per byte, as the Hugging
 * Face ByteFallback decoder does. */
int hf_tokenizer_decode(const hf_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags,
                        char *buf, size_t cap, size_t *len, char *err, size_t err_len);

/* Stories of a text file for the token files and the perplexity protocol: the text is split at
 * every "<|endoftext|>", each piece is stripped of surrounding white space, and each non-empty
 * piece is encoded with BOS first. *ids (malloc'ed, the caller frees it) receives all ids,
 * *n_ids their count, and *n_stories the number of stories. */
int hf_tokenizer_encode_stories(const hf_tokenizer *t, const char *text, size_t len,
                                int32_t **ids, size_t *n_ids, size_t *n_stories, char *err,
                                size_t err_len);

#endif
