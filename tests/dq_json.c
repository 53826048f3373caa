/* Recursive-descent JSON parser: objects, arrays, numbers, strings (escapes kept simple:
 * \" \\ \/ \b \f \n \r \t; \u escapes are rejected, manifests are ASCII). */
#include "dq_json.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p, *end;
    int depth;
} parser;

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && isspace((unsigned char)*ps->p))
        ps->p++;
}

static json_value *parse_value(parser *ps);

static char *parse_string_raw(parser *ps)
{
    if (ps->p >= ps->end || *ps->p != '"')
        return NULL;
    ps->p++;
    size_t cap = 16, n = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    while (ps->p < ps->end && *ps->p != '"') {
        char c = *ps->p++;
        if (c == '\\') {
            if (ps->p >= ps->end)
                goto fail;
            char e = *ps->p++;
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
            const char *hit = strchr(from, e);
            if (!hit || e == '\0')
                goto fail;
            c = to[hit - from];
        } else if ((unsigned char)c < 0x20) {
            goto fail;
        }
        if (n + 1 >= cap) {
            char *t = realloc(s, cap *= 2);
            if (!t)
                goto fail;
            s = t;
        }
        s[n++] = c;
    }
    if (ps->p >= ps->end)
        goto fail;
    ps->p++;
    s[n] = '\0';
    return s;
fail:
    free(s);
    return NULL;
}

static int push(json_value *v, char *key, json_value *item)
{
    json_value **items = realloc(v->items, (v->n + 1) * sizeof *items);
    if (!items)
        return -1;
    v->items = items;
    if (v->type == JSON_OBJECT) {
        char **keys = realloc(v->keys, (v->n + 1) * sizeof *keys);
        if (!keys)
            return -1;
        v->keys = keys;
        v->keys[v->n] = key;
    }
    v->items[v->n++] = item;
    return 0;
}

static json_value *parse_container(parser *ps, json_type type)
{
    char close = type == JSON_OBJECT ? '}' : ']';
    json_value *v = calloc(1, sizeof *v);
    if (!v || ++ps->depth > 64)
        goto fail;
    v->type = type;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (type == JSON_OBJECT) {
            if (!(key = parse_string_raw(ps)))
                goto fail;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                goto fail;
            }
            ps->p++;
        }
        json_value *item = parse_value(ps);
        if (!item || push(v, key, item) != 0) {
            free(key);
            json_free(item);
            goto fail;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return v;
        }
        goto fail;
    }
fail:
    json_free(v);
    return NULL;
}

static json_value *parse_value(parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return NULL;
    char c = *ps->p;
    if (c == '{')
        return parse_container(ps, JSON_OBJECT);
    if (c == '[')
        return parse_container(ps, JSON_ARRAY);
    json_value *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    static const struct { const char *word; json_type type; double value; } words[] = {
        {"true", JSON_BOOL, 1}, {"false", JSON_BOOL, 0}, {"null", JSON_NULL, 0},
        {"NaN", JSON_NUMBER, 0}, {"Infinity", JSON_NUMBER, 0}};
    if (c == '"') {
        v->type = JSON_STRING;
        if (!(v->string = parse_string_raw(ps)))
            goto fail;
        return v;
    }
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t l = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= l && memcmp(ps->p, words[i].word, l) == 0) {
            v->type = words[i].type;
            v->number = words[i].value;
            ps->p += l;
            return v;
        }
    }
    char buf[64];
    size_t n = 0;
    while (ps->p + n < ps->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", ps->p[n]))
        n++;
    if (n == 0)
        goto fail;
    memcpy(buf, ps->p, n);
    buf[n] = '\0';
    char *endp;
    v->type = JSON_NUMBER;
    v->number = strtod(buf, &endp);
    if (*endp != '\0')
        goto fail;
    ps->p += n;
    return v;
fail:
    json_free(v);
    return NULL;
}

json_value *json_parse(const char *text, size_t len)
{
    parser ps = {text, text + len, 0};
    json_value *v = parse_value(&ps);
    skip_ws(&ps);
    if (v && ps.p != ps.end) {
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(json_value *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        if (v->keys)
            free(v->keys[i]);
        json_free(v->items[i]);
    }
    free(v->keys);
    free(v->items);
    free(v->string);
    free(v);
}

const json_value *json_get(const json_value *v, const char *key)
{
    if (!v || v->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0)
            return v->items[i];
    return NULL;
}
