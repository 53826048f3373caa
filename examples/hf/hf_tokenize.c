/* hf-tokenize: encodes a story file with a Hugging Face tokenizer.json and writes the ids as
 * little-endian int32. The text is split at every "<|endoftext|>"; each story, stripped of
 * surrounding white space, is encoded with BOS first (the token files of the perplexity
 * protocol). The output is written to a temporary file and renamed, so a failure leaves no
 * output behind and an existing file untouched. */
#define _POSIX_C_SOURCE 200809L /* mkstemp, fdopen */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hf_tokenizer.h"

#define MAX_TEXT_BYTES ((size_t)1 << 30)

static void usage(FILE *f)
{
    fprintf(f, "usage: hf-tokenize --tokenizer tokenizer.json --text FILE --out FILE\n"
               "  --tokenizer FILE  Hugging Face tokenizer.json (BPE)\n"
               "  --text FILE       stories separated by <|endoftext|>\n"
               "  --out FILE        ids, little-endian int32, BOS first in each story\n");
}

/* Reads a whole file (at most MAX_TEXT_BYTES); NULL with a message on failure. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "hf-tokenize: %s: cannot open\n", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fprintf(stderr, "hf-tokenize: %s: out of memory\n", path);
            break;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n > MAX_TEXT_BYTES) {
            fprintf(stderr, "hf-tokenize: %s: larger than %zu bytes\n", path, MAX_TEXT_BYTES);
            free(buf);
            buf = NULL;
            break;
        }
        if (got == 0) {
            if (ferror(f)) {
                fprintf(stderr, "hf-tokenize: %s: read error\n", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
        if (n == cap) {
            char *grown = realloc(buf, cap * 2);
            if (!grown)
                free(buf);
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Writes the ids to path through a temporary file in the same folder. */
static int write_ids(const char *path, const int32_t *ids, size_t n)
{
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 8);
    if (!tmp) {
        fprintf(stderr, "hf-tokenize: out of memory\n");
        return -1;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".XXXXXX", 8);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, "hf-tokenize: %s: cannot create\n", path);
        free(tmp);
        return -1;
    }
    FILE *f = fdopen(fd, "wb");
    int ok = f != NULL;
    if (!f)
        close(fd);
    for (size_t i = 0; ok && i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8),
                              (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
        ok = fwrite(b, 1, 4, f) == 4;
    }
    if (f && fflush(f) != 0)
        ok = 0;
    if (f && fsync(fileno(f)) != 0)
        ok = 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "hf-tokenize: %s: cannot write\n", path);
        unlink(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *tok_path = NULL, *text_path = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char **dst = strcmp(a, "--tokenizer") == 0 ? &tok_path
                           : strcmp(a, "--text") == 0    ? &text_path
                           : strcmp(a, "--out") == 0     ? &out_path
                                                         : NULL;
        if (!dst) {
            fprintf(stderr, "hf-tokenize: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "hf-tokenize: %s needs a value\n", a);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!tok_path || !text_path || !out_path) {
        fprintf(stderr, "hf-tokenize: --tokenizer, --text and --out are required\n");
        usage(stderr);
        return 2;
    }
    char err[512];
    hf_tokenizer *t = NULL;
    if (hf_tokenizer_load(tok_path, &t, err, sizeof err) != HF_OK) {
        fprintf(stderr, "hf-tokenize: %s\n", err);
        return 1;
    }
    int rc = 1;
    size_t len = 0, n_ids = 0, n_stories = 0;
    int32_t *ids = NULL;
    char *text = read_file(text_path, &len);
    if (!text)
        goto out;
    if (hf_tokenizer_encode_stories(t, text, len, &ids, &n_ids, &n_stories, err, sizeof err) !=
        HF_OK) {
        fprintf(stderr, "hf-tokenize: %s: %s\n", text_path, err);
        goto out;
    }
    if (n_stories == 0) {
        fprintf(stderr, "hf-tokenize: %s: no story (the text is empty)\n", text_path);
        goto out;
    }
    if (write_ids(out_path, ids, n_ids))
        goto out;
    fprintf(stderr, "hf-tokenize: %s: %zu stories, %zu tokens -> %s\n", text_path, n_stories,
            n_ids, out_path);
    rc = 0;
out:
    free(ids);
    free(text);
    hf_tokenizer_free(t);
    return rc;
}
