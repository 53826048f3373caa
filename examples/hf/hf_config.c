/* Reads config.json with jansson and keeps what the engine needs. */
#include "hf_config.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int fail(char *err, size_t err_len, const char *path, const char *field, const char *fmt,
                ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(err, err_len, "%s: field '%s': %s", path, field, msg);
    return -1;
}

/* An integer field in [lo, hi]; *out = def when absent and def_ok. */
static int get_int(const json_t *root, const char *path, const char *key, int64_t lo, int64_t hi,
                   int def_ok, int32_t def, int32_t *out, char *err, size_t err_len)
{
    const json_t *v = json_object_get(root, key);
    if (!v || (def_ok && json_is_null(v))) { /* null: the default, as transformers reads it */
        if (!def_ok)
            return fail(err, err_len, path, key, "missing");
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return fail(err, err_len, path, key, "expected an integer");
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return fail(err, err_len, path, key, "%lld is outside [%lld, %lld]", (long long)x,
                    (long long)lo, (long long)hi);
    *out = (int32_t)x;
    return 0;
}

/* A positive finite number; *out = def when absent and def_ok. */
static int get_number(const json_t *root, const char *path, const char *key, int def_ok,
                      double def, double *out, char *err, size_t err_len)
{
    const json_t *v = json_object_get(root, key);
    if (!v) {
        if (!def_ok)
            return fail(err, err_len, path, key, "missing");
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return fail(err, err_len, path, key, "expected a number");
    double x = json_number_value(v);
    if (!(x > 0 && x < 1e300))
        return fail(err, err_len, path, key, "expected a positive number, got %g", x);
    *out = x;
    return 0;
}

/* A token id: an integer, null (-1) or a list whose first element counts; def when absent. */
static int get_token(const json_t *root, const char *path, const char *key, int32_t def,
                     int32_t vocab, int32_t *out, char *err, size_t err_len)
{
    const json_t *v = json_object_get(root, key);
    if (json_is_array(v))
        v = json_array_size(v) ? json_array_get(v, 0) : json_null();
    if (!v) {
        *out = def < vocab ? def : -1;
        return 0;
    }
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
        return fail(err, err_len, path, key, "expected a token id below vocab_size %d", vocab);
    *out = (int32_t)json_integer_value(v);
    return 0;
}

/* Fails when a field the engine cannot honour is true. */
static int refuse_true(const json_t *root, const char *path, const char *key, const char *what,
                       char *err, size_t err_len)
{
    const json_t *v = json_object_get(root, key);
    if (v && !json_is_boolean(v))
        return fail(err, err_len, path, key, "expected true or false");
    if (json_is_true(v))
        return fail(err, err_len, path, key, "true, but %s are not supported", what);
    return 0;
}

static int refuse_set(const json_t *root, const char *path, const char *key, const char *what,
                      char *err, size_t err_len)
{
    const json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v))
        return fail(err, err_len, path, key, "set, but %s is not supported (must be null)", what);
    return 0;
}

static int check(const json_t *root, const char *path, hf_config *c, char *err, size_t err_len)
{
    const json_t *mt = json_object_get(root, "model_type");
    if (!mt)
        return fail(err, err_len, path, "model_type", "missing");
    const char *type = json_string_value(mt);
    if (!type || (strcmp(type, "llama") != 0 && strcmp(type, "mistral") != 0))
        return fail(err, err_len, path, "model_type",
                    "'%.40s' is not supported (llama or mistral)", type ? type : "(not a string)");
    snprintf(c->model_type, sizeof c->model_type, "%s", type);

    const json_t *act = json_object_get(root, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
        return fail(err, err_len, path, "hidden_act", "'%.40s' is not supported (silu)",
                    json_is_string(act) ? json_string_value(act) : "(not a string)");
    if (refuse_set(root, path, "rope_scaling", "rotary scaling", err, err_len) ||
        refuse_true(root, path, "attention_bias", "attention biases", err, err_len) ||
        refuse_true(root, path, "mlp_bias", "MLP biases", err, err_len))
        return -1;
    if (strcmp(type, "mistral") == 0 &&
        refuse_set(root, path, "sliding_window", "sliding-window attention", err, err_len))
        return -1;

    /* Bounds keep every size product far below overflow. */
    if (get_int(root, path, "hidden_size", 1, 65536, 0, 0, &c->hidden_size, err, err_len) ||
        get_int(root, path, "intermediate_size", 1, 262144, 0, 0, &c->intermediate_size, err,
                err_len) ||
        get_int(root, path, "num_hidden_layers", 1, 1024, 0, 0, &c->num_hidden_layers, err,
                err_len) ||
        get_int(root, path, "num_attention_heads", 1, 65536, 0, 0, &c->num_attention_heads, err,
                err_len) ||
        get_int(root, path, "num_key_value_heads", 1, c->num_attention_heads, 1,
                c->num_attention_heads, &c->num_key_value_heads, err, err_len) ||
        get_int(root, path, "vocab_size", 1, 1 << 22, 0, 0, &c->vocab_size, err, err_len) ||
        get_int(root, path, "max_position_embeddings", 1, 1 << 24, 1, 2048,
                &c->max_position_embeddings, err, err_len) ||
        get_number(root, path, "rms_norm_eps", 0, 0, &c->rms_norm_eps, err, err_len) ||
        get_number(root, path, "rope_theta", 1, 10000.0, &c->rope_theta, err, err_len) ||
        get_token(root, path, "bos_token_id", 1, c->vocab_size, &c->bos_token_id, err,
                  err_len) ||
        get_token(root, path, "eos_token_id", 2, c->vocab_size, &c->eos_token_id, err, err_len))
        return -1;
    if (c->num_attention_heads % c->num_key_value_heads)
        return fail(err, err_len, path, "num_key_value_heads",
                    "%d does not divide num_attention_heads %d", c->num_key_value_heads,
                    c->num_attention_heads);
    const json_t *hd = json_object_get(root, "head_dim");
    if (hd && !json_is_null(hd)) {
        if (get_int(root, path, "head_dim", 2, 4096, 0, 0, &c->head_dim, err, err_len))
            return -1;
    } else {
        if (c->hidden_size % c->num_attention_heads)
            return fail(err, err_len, path, "num_attention_heads",
                        "%d does not divide hidden_size %d (and head_dim is absent)",
                        c->num_attention_heads, c->hidden_size);
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    if (c->head_dim % 2)
        return fail(err, err_len, path, "head_dim", "%d is odd (rotary pairs need even)",
                    c->head_dim);
    if ((int64_t)c->head_dim * c->num_attention_heads > 262144)
        return fail(err, err_len, path, "head_dim", "%d x %d heads is implausibly wide",
                    c->head_dim, c->num_attention_heads);
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return fail(err, err_len, path, "tie_word_embeddings", "expected true or false");
    c->tie_word_embeddings = json_is_true(tie);
    return 0;
}

int hf_config_load(const char *path, hf_config *c, char *err, size_t err_len)
{
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, err_len, "%s: cannot read JSON (line %d: %s)", path, jerr.line, jerr.text);
        return -1;
    }
    int rc = json_is_object(root) ? check(root, path, c, err, err_len)
                                  : fail(err, err_len, path, "(top level)", "expected an object");
    json_decref(root);
    if (rc)
        memset(c, 0, sizeof *c);
    return rc;
}
