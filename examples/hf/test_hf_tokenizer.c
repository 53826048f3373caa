/* Checks of the tokenizer.json reader.
 *   test_hf_tokenizer unit FIXTURES   small in-memory tokenizers (merge order, byte fallback,
 *                                     unk, added tokens, Metaspace, decoder steps) and the bad
 *                                     files of FIXTURES (tests/data/hf)
 *   test_hf_tokenizer real MODELS DATA the 656k model's tokenizer against its token files
 *                                     (MODELS/tinystories-656k, DATA/calib.txt, dev.txt);
 *                                     exits 77 (skip) when MODELS is absent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_tokenizer.h"

static int failures;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            failures++;                                                                           \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);                    \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
        }                                                                                         \
    } while (0)

/* Vocabulary: specials, byte tokens for \n and é, ▁ a b c ab ▁a; merges by rank:
 * "a b" (0), "▁ a" (1), "ab c" is absent on purpose. MERGES and the front are filled in. */
#define VOCAB                                                                                     \
    "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"<0x0A>\": 3, \"<0xC3>\": 4, "          \
    "\"<0xA9>\": 5, \"\\u2581\": 6, \"a\": 7, \"b\": 8, \"c\": 9, \"ab\": 10, \"\\u2581a\": 11}"
#define ADDED                                                                                     \
    "\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true, "                 \
    "\"normalized\": false}, {\"id\": 1, \"content\": \"<s>\", \"special\": true, "             \
    "\"normalized\": false}, {\"id\": 2, \"content\": \"</s>\", \"special\": true, "            \
    "\"normalized\": false}]"

static const char llama_json[] =
    "{\"version\": \"1.0\", " ADDED ", "
    "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
    "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, "
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]}, "
    "\"pre_tokenizer\": null, "
    "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
    "{\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
    "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}}, "
    "\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"}, "
    "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
    "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}, "
    "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", "
    "\"fuse_unk\": true, \"byte_fallback\": true, " VOCAB ", "
    "\"merges\": [\"a b\", \"\\u2581 a\"]}}";

/* The same vocabulary with pair merges, a Metaspace pre-tokenizer and decoder, no unk fusing. */
static const char metaspace_json[] =
    "{" ADDED ", \"normalizer\": null, "
    "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
    "\"prepend_scheme\": \"first\", \"split\": true}, "
    "\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
    "\"prepend_scheme\": \"first\", \"split\": true}, "
    "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": false, "
    "\"byte_fallback\": false, " VOCAB ", \"merges\": [[\"a\", \"b\"], [\"\\u2581\", \"a\"]]}}";

/* The older spelling: add_prefix_space instead of prepend_scheme, no split key (split). */
static const char legacy_json[] =
    "{" ADDED ", "
    "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
    "\"add_prefix_space\": true}, "
    "\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
    "\"add_prefix_space\": true}, "
    "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", " VOCAB ", "
    "\"merges\": [\"a b\", \"\\u2581 a\"]}}";

/* A Replace with a Regex pattern: not supported. */
static const char regex_json[] =
    "{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, "
    "\"content\": \" \"}, \"model\": {\"type\": \"BPE\", " VOCAB ", \"merges\": []}}";

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", (int)ids[i]);
    fputc('\n', stderr);
}

static void expect_encode(const hf_tokenizer *t, const char *text, uint32_t flags,
                          const int32_t *want, size_t n_want)
{
    int32_t ids[64];
    size_t n = 0;
    char err[256];
    int rc = hf_tokenizer_encode(t, text, strlen(text), flags, ids, 64, &n, err, sizeof err);
    CHECK(rc == HF_OK, "encode \"%s\": %s", text, err);
    if (rc == HF_OK && !ids_equal(ids, n, want, n_want)) {
        CHECK(0, "encode \"%s\" gives other ids", text);
        print_ids("got", ids, n);
        print_ids("want", want, n_want);
    }
}

static void expect_decode(const hf_tokenizer *t, const int32_t *ids, size_t n, uint32_t flags,
                          const char *want)
{
    char buf[256], err[256];
    size_t len = 0;
    int rc = hf_tokenizer_decode(t, ids, n, flags, buf, sizeof buf, &len, err, sizeof err);
    CHECK(rc == HF_OK, "decode: %s", err);
    CHECK(rc != HF_OK || (len == strlen(want) && strcmp(buf, want) == 0),
          "decode gives \"%s\", want \"%s\"", buf, want);
}

static void unit_llama(void)
{
    char err[256];
    hf_tokenizer *t = NULL;
    int rc = hf_tokenizer_load_buffer(llama_json, sizeof llama_json - 1, "llama.json", &t, err,
                                      sizeof err);
    CHECK(rc == HF_OK, "load: %s", err);
    if (rc != HF_OK)
        return;
    CHECK(hf_tokenizer_vocab_size(t) == 12, "vocab size %d", (int)hf_tokenizer_vocab_size(t));
    CHECK(hf_tokenizer_bos(t) == 1, "bos %d", (int)hf_tokenizer_bos(t));
    CHECK(hf_tokenizer_eos(t) == 2, "eos %d", (int)hf_tokenizer_eos(t));
    CHECK(hf_tokenizer_find(t, "\xE2\x96\x81" "a", 4) == 11, "find ▁a");
    CHECK(hf_tokenizer_token(t, 10) && strcmp(hf_tokenizer_token(t, 10), "ab") == 0, "token 10");
    CHECK(hf_tokenizer_token(t, 12) == NULL && hf_tokenizer_token(t, -1) == NULL, "token range");

    /* "a b" has rank 0 and goes first although "▁ a" comes first in the text: ▁ ab, not ▁a b.
     * \n and é are not in the vocabulary: their bytes. */
    const int32_t w1[] = {1, 6, 10, 6, 9, 3, 4, 5};
    expect_encode(t, "ab c\n\xC3\xA9", HF_ENCODE_BOS, w1, 8);
    const int32_t w1e[] = {6, 10, 6, 9, 3, 4, 5, 2};
    expect_encode(t, "ab c\n\xC3\xA9", HF_ENCODE_EOS, w1e, 8);
    expect_decode(t, w1, 8, HF_DECODE_SKIP_SPECIAL, "ab c\n\xC3\xA9");
    expect_decode(t, w1, 8, 0, "<s> ab c\n\xC3\xA9");
    /* Without "a b" next to it, "▁ a" merges, twice. */
    const int32_t w2[] = {11, 11};
    expect_encode(t, "a a", 0, w2, 2);
    /* z has neither a token nor byte tokens: unknown, and a run of them is one <unk>. */
    const int32_t w3[] = {11, 0, 7};
    expect_encode(t, "azza", 0, w3, 3);
    /* Added tokens in the text; each piece after them is normalized on its own. */
    const int32_t w4[] = {11, 1, 6, 8};
    expect_encode(t, "a<s>b", 0, w4, 4);
    const int32_t w5[] = {11, 0, 8};
    expect_encode(t, "a<s>b", HF_ENCODE_NO_ADDED, w5, 3);
    expect_encode(t, "", 0, NULL, 0);
    const int32_t w6[] = {1};
    expect_encode(t, "", HF_ENCODE_BOS, w6, 1);
    /* A lone byte token is not UTF-8: U+FFFD per byte. */
    const int32_t w7[] = {7, 4, 4, 8};
    expect_decode(t, w7, 4, 0, "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");

    /* Buffers too small, bad ids, bad text. */
    int32_t ids[4];
    size_t n = 0;
    rc = hf_tokenizer_encode(t, "ab c\n\xC3\xA9", 7, 0, ids, 4, &n, err, sizeof err);
    CHECK(rc == HF_ERR_RANGE && n == 7, "small id buffer: rc %d n %zu", rc, n);
    rc = hf_tokenizer_encode(t, "a\xC3", 2, 0, ids, 4, &n, err, sizeof err);
    CHECK(rc == HF_ERR_ARG && strstr(err, "UTF-8"), "invalid UTF-8: rc %d (%s)", rc, err);
    rc = hf_tokenizer_encode(t, "a\xED\xA0\x80", 4, 0, ids, 4, &n, err, sizeof err);
    CHECK(rc == HF_ERR_ARG, "surrogate: rc %d", rc);
    char small[4];
    size_t len = 0;
    rc = hf_tokenizer_decode(t, w1, 8, 0, small, sizeof small, &len, err, sizeof err);
    CHECK(rc == HF_ERR_RANGE && len == strlen("<s> ab c\n\xC3\xA9") && small[0] == '\0',
          "small text buffer: rc %d len %zu", rc, len);
    const int32_t bad[] = {7, 12};
    rc = hf_tokenizer_decode(t, bad, 2, 0, small, sizeof small, &len, err, sizeof err);
    CHECK(rc == HF_ERR_ARG && strstr(err, "ids[1]"), "bad id: rc %d (%s)", rc, err);
    CHECK(hf_tokenizer_set_special(t, 12, -1, err, sizeof err) == HF_ERR_ARG, "set bos 12");
    CHECK(hf_tokenizer_set_special(t, 2, 1, err, sizeof err) == HF_OK, "set bos 2: %s", err);
    const int32_t w8[] = {2, 11, 1};
    expect_encode(t, "a", HF_ENCODE_BOS | HF_ENCODE_EOS, w8, 3);

    /* Stories: separators, surrounding white space, empty stories left out. */
    CHECK(hf_tokenizer_set_special(t, 1, 2, err, sizeof err) == HF_OK, "set back: %s", err);
    static const char stories[] = "  ab \n<|endoftext|>\n\n<|endoftext|>a a<|endoftext|>\n";
    int32_t *all = NULL;
    size_t n_all = 0, n_stories = 0;
    rc = hf_tokenizer_encode_stories(t, stories, sizeof stories - 1, &all, &n_all, &n_stories,
                                     err, sizeof err);
    const int32_t w9[] = {1, 6, 10, 1, 11, 11};
    CHECK(rc == HF_OK && n_stories == 2 && ids_equal(all, n_all, w9, 6),
          "stories: rc %d, %zu stories, %zu ids (%s)", rc, n_stories, n_all, err);
    free(all);
    hf_tokenizer_free(t);
}

static void unit_metaspace(void)
{
    char err[256];
    hf_tokenizer *t = NULL;
    int rc = hf_tokenizer_load_buffer(metaspace_json, sizeof metaspace_json - 1, "meta.json", &t,
                                      err, sizeof err);
    CHECK(rc == HF_OK, "load: %s", err);
    if (rc != HF_OK)
        return;
    CHECK(hf_tokenizer_bos(t) == 1 && hf_tokenizer_eos(t) == 2, "bos/eos by name");
    /* Split at each ▁: ▁ab ▁ab, each merged as a word. */
    const int32_t w1[] = {6, 10, 6, 10};
    expect_encode(t, "ab ab", 0, w1, 4);
    expect_decode(t, w1, 4, 0, "ab ab");
    /* A leading space already gives the ▁: no second one. */
    expect_encode(t, " ab ab", 0, w1, 4);
    /* No byte fallback, no fusing: one <unk> per unknown character. */
    const int32_t w2[] = {11, 0, 0};
    expect_encode(t, "azz", 0, w2, 3);
    /* After an added token the scheme "first" prepends nothing. */
    const int32_t w3[] = {11, 2, 10};
    expect_encode(t, "a</s>ab", 0, w3, 3);
    hf_tokenizer_free(t);

    t = NULL;
    rc = hf_tokenizer_load_buffer(legacy_json, sizeof legacy_json - 1, "legacy.json", &t, err,
                                  sizeof err);
    CHECK(rc == HF_OK, "legacy: %s", err);
    if (rc == HF_OK) {
        /* add_prefix_space: ▁ before every piece, also after an added token. */
        const int32_t w4[] = {11, 2, 6, 10, 6, 10};
        expect_encode(t, "a</s>ab ab", 0, w4, 6);
        expect_decode(t, w4 + 2, 4, 0, "ab ab");
    }
    hf_tokenizer_free(t);
    t = NULL;
    rc = hf_tokenizer_load_buffer(regex_json, sizeof regex_json - 1, "regex.json", &t, err,
                                  sizeof err);
    CHECK(rc == HF_ERR_UNSUPPORTED && t == NULL && strstr(err, "regex.json: normalizer.pattern") &&
              strstr(err, "\"Regex\""),
          "regex: rc %d (%s)", rc, err);
}

/* Reads a whole file; NULL when it cannot. */
static char *slurp_path(const char *path, size_t *len)
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
            *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

/* A bad file: the code, and the message names the file and what is wrong. */
static void expect_bad(const char *dir, const char *file, int code, const char *what)
{
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    hf_tokenizer *t = (hf_tokenizer *)&path; /* must be reset to NULL */
    int rc = hf_tokenizer_load(path, &t, err, sizeof err);
    CHECK(rc == code && t == NULL && strstr(err, path) && strstr(err, what),
          "%s: rc %d (want %d), message \"%s\" (want the path and \"%s\")", file, rc, code, err,
          what);
    if (rc == code)
        printf("ok: %s: %s\n", file, err);
    if (rc == HF_OK)
        hf_tokenizer_free(t);
}

static void unit_files(const char *dir)
{
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/valid.json", dir);
    hf_tokenizer *t = NULL;
    int rc = hf_tokenizer_load(path, &t, err, sizeof err);
    CHECK(rc == HF_OK, "valid.json: %s", err);
    hf_tokenizer_free(t);
    expect_bad(dir, "no-such-file.json", HF_ERR_IO, "cannot open");
    expect_bad(dir, "missing_model.json", HF_ERR_FORMAT, "model: missing");
    expect_bad(dir, "missing_vocab.json", HF_ERR_FORMAT, "model.vocab: missing");
    expect_bad(dir, "unknown_model.json", HF_ERR_UNSUPPORTED, "model.type: unsupported model "
                                                              "\"WordPiece\"");
    expect_bad(dir, "bad_normalizer.json", HF_ERR_UNSUPPORTED,
               "normalizer.normalizers[1].type: unsupported normalizer \"NFKC\"");
    expect_bad(dir, "bad_pre_tokenizer.json", HF_ERR_UNSUPPORTED,
               "pre_tokenizer.type: unsupported pre-tokenizer \"ByteLevel\"");
    expect_bad(dir, "bad_decoder.json", HF_ERR_UNSUPPORTED,
               "decoder.decoders[1].type: unsupported decoder \"WordPiece\"");
    expect_bad(dir, "bad_merge.json", HF_ERR_FORMAT, "model.merges[1]: token \"c\"");
    expect_bad(dir, "malformed.json", HF_ERR_FORMAT, "malformed JSON at line");
    expect_bad(dir, "truncated.json", HF_ERR_FORMAT, "malformed JSON at line");
    /* Every cut of a good file and every single-byte change: an error or a tokenizer, never a
     * crash or a leak (the valgrind setup and the sanitizer builds check the latter). */
    size_t len = 0;
    char *json = slurp_path(path, &len);
    CHECK(json != NULL, "cannot read %s", path);
    size_t cut_errors = 0, flips_loaded = 0;
    for (size_t cut = 0; json && cut < len; cut++) {
        t = (hf_tokenizer *)json;
        rc = hf_tokenizer_load_buffer(json, cut, "cut.json", &t, err, sizeof err);
        cut_errors += rc == HF_ERR_FORMAT && t == NULL && strstr(err, "cut.json") != NULL;
        hf_tokenizer_free(t);
    }
    CHECK(cut_errors == len, "%zu of %zu cuts of valid.json give a format error", cut_errors, len);
    static const char flips[] = {'"', '{', '}', '[', ']', ',', ':', '0', 'x', ' ', '\\', '\x80'};
    for (size_t i = 0; json && i < len; i++) {
        char keep = json[i];
        for (size_t f = 0; f < sizeof flips; f++) {
            json[i] = flips[f];
            t = NULL;
            rc = hf_tokenizer_load_buffer(json, len, "flip.json", &t, err, sizeof err);
            CHECK((rc == HF_OK) == (t != NULL) && (rc == HF_OK || err[0] != '\0'),
                  "flip at %zu: rc %d", i, rc);
            if (t) { /* what loads must work */
                int32_t ids[64];
                size_t n = 0;
                char text[256];
                if (hf_tokenizer_encode(t, "ab ba", 5, 0, ids, 64, &n, NULL, 0) == HF_OK)
                    hf_tokenizer_decode(t, ids, n, 0, text, sizeof text, &n, NULL, 0);
                flips_loaded++;
            }
            hf_tokenizer_free(t);
        }
        json[i] = keep;
    }
    printf("ok: %zu cuts and %zu byte changes of valid.json (%zu still load)\n", len,
           len * sizeof flips, flips_loaded);
    free(json);
    rc = hf_tokenizer_load(NULL, &t, err, sizeof err);
    CHECK(rc == HF_ERR_ARG && t == NULL, "NULL path: rc %d", rc);
    CHECK(hf_tokenizer_load(path, NULL, NULL, 0) == HF_ERR_ARG, "NULL out");
    hf_tokenizer_free(NULL);
}

/* The stories of data/NAME.txt encode to models/tinystories-656k/NAME.tok exactly, and each
 * story without <unk> decodes back to its text and encodes back to its ids. */
static void real_file(const hf_tokenizer *t, const char *models, const char *data,
                      const char *name, size_t want_stories, size_t want_ids,
                      size_t want_unk)
{
    char path[1024], err[512];
    size_t text_len = 0, tok_len = 0;
    snprintf(path, sizeof path, "%s/%s.txt", data, name);
    char *text = slurp_path(path, &text_len);
    CHECK(text != NULL, "cannot read %s", path);
    snprintf(path, sizeof path, "%s/tinystories-656k/%s.tok", models, name);
    char *tok = slurp_path(path, &tok_len);
    CHECK(tok != NULL, "cannot read %s", path);
    int32_t *ids = NULL;
    size_t n = 0, stories = 0;
    if (text && tok) {
        int rc = hf_tokenizer_encode_stories(t, text, text_len, &ids, &n, &stories, err,
                                             sizeof err);
        CHECK(rc == HF_OK, "%s: %s", name, err);
        size_t n_ref = tok_len / 4;
        CHECK(tok_len % 4 == 0 && n_ref == want_ids, "%s.tok: %zu bytes", name, tok_len);
        CHECK(stories == want_stories, "%s: %zu stories, want %zu", name, stories, want_stories);
        CHECK(n == n_ref, "%s: %zu ids, the token file has %zu", name, n, n_ref);
        size_t first_diff = n < n_ref ? n : n_ref;
        for (size_t i = 0; i < (n < n_ref ? n : n_ref); i++) {
            const unsigned char *b = (const unsigned char *)tok + 4 * i;
            int32_t ref = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                                    (uint32_t)b[3] << 24);
            if (ref != ids[i]) {
                first_diff = i;
                break;
            }
        }
        CHECK(n == n_ref && first_diff == n, "%s: first difference at id %zu", name,
              first_diff);
        if (n == n_ref && first_diff == n)
            printf("ok: %s: %zu stories, %zu ids equal to %s.tok\n", name, stories, n, name);
    }
    /* Round trip, story by story (ids from BOS to the next BOS). */
    size_t round_trips = 0, stories_with_unk = 0;
    int32_t unk = hf_tokenizer_find(t, "<unk>", 5);
    char *buf = malloc(text_len + 1);
    for (size_t s = 0; ids && buf && s < n;) {
        size_t e = s + 1;
        while (e < n && ids[e] != hf_tokenizer_bos(t))
            e++;
        int has_unk = 0;
        for (size_t i = s; i < e; i++)
            has_unk |= ids[i] == unk;
        if (has_unk) { /* <unk> cannot decode to what it stood for */
            stories_with_unk++;
            s = e;
            continue;
        }
        size_t len = 0;
        int rc = hf_tokenizer_decode(t, ids + s, e - s, HF_DECODE_SKIP_SPECIAL, buf, text_len + 1,
                                     &len, err, sizeof err);
        CHECK(rc == HF_OK, "%s: decode: %s", name, err);
        int32_t again[8192];
        size_t m = 0;
        if (rc == HF_OK)
            rc = hf_tokenizer_encode(t, buf, len, HF_ENCODE_BOS, again, 8192, &m, err,
                                     sizeof err);
        CHECK(rc == HF_OK && ids_equal(again, m, ids + s, e - s),
              "%s: story at id %zu does not round-trip", name, s);
        /* The decoded text is the story itself. */
        CHECK(rc == HF_OK && len > 0 && strstr(text, buf) != NULL,
              "%s: decoded story at id %zu is not in the text", name, s);
        round_trips += rc == HF_OK;
        s = e;
    }
    CHECK(round_trips + stories_with_unk == want_stories && stories_with_unk == want_unk,
          "%s: %zu stories round-trip, %zu hold <unk> (want %zu)", name, round_trips,
          stories_with_unk, want_unk);
    if (ids)
        printf("ok: %s: %zu stories decode to their text and encode back, %zu hold <unk>\n",
               name, round_trips, stories_with_unk);
    free(buf);
    free(ids);
    free(text);
    free(tok);
}

static int real(const char *models, const char *data)
{
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tinystories-656k/tokenizer.json", models);
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        printf("SKIP: %s is absent (the Hugging Face checkpoints live in ../shared/models)\n",
               path);
        return 77;
    }
    fclose(probe);
    hf_tokenizer *t = NULL;
    int rc = hf_tokenizer_load(path, &t, err, sizeof err);
    CHECK(rc == HF_OK, "%s", err);
    if (rc != HF_OK)
        return 1;
    CHECK(hf_tokenizer_vocab_size(t) == 2048, "vocab %d", (int)hf_tokenizer_vocab_size(t));
    CHECK(hf_tokenizer_bos(t) == 1 && hf_tokenizer_eos(t) == 2, "bos %d eos %d",
          (int)hf_tokenizer_bos(t), (int)hf_tokenizer_eos(t));
    real_file(t, models, data, "dev", 45, 6715, 0);
    real_file(t, models, data, "calib", 41, 7263, 1);
    /* The first ids of dev.tok as ../shared/models/README.md lists them. */
    static const char story[] = "Once upon a time";
    int32_t ids[16];
    size_t n = 0;
    rc = hf_tokenizer_encode(t, story, sizeof story - 1, HF_ENCODE_BOS, ids, 16, &n, err,
                             sizeof err);
    CHECK(rc == HF_OK && n >= 3 && ids[0] == 1 && ids[1] == 80, "Once upon a time: %s", err);
    /* The one character of calib.txt without a token: the vocabulary holds no byte tokens,
     * so byte fallback finds none and ’ is <unk>, as in calib.tok. */
    static const char quote[] = "\xE2\x80\x99";
    rc = hf_tokenizer_encode(t, quote, 3, 0, ids, 16, &n, err, sizeof err);
    CHECK(rc == HF_OK && n == 2 && ids[0] == 80 && ids[1] == hf_tokenizer_find(t, "<unk>", 5),
          "’: rc %d, %zu ids", rc, n);
    hf_tokenizer_free(t);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "unit") == 0) {
        unit_llama();
        unit_metaspace();
        unit_files(argv[2]);
    } else if (argc == 4 && strcmp(argv[1], "real") == 0) {
        int rc = real(argv[2], argv[3]);
        if (rc == 77)
            return 77;
    } else {
        fprintf(stderr, "usage: test_hf_tokenizer unit FIXTURES | real MODELS DATA\n");
        return 2;
    }
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("all checks passed\n");
    return failures ? 1 : 0;
}
