/* A small strict JSON reader for golden-vector manifests (test support only). */
#ifndef DQ_JSON_H
#define DQ_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    double number;         /* JSON_NUMBER, JSON_BOOL (0/1) */
    char *string;          /* JSON_STRING */
    size_t n;              /* JSON_ARRAY / JSON_OBJECT: number of children */
    char **keys;           /* JSON_OBJECT */
    struct json_value **items;
} json_value;

/* Parses text[0..len); NULL on any syntax error. */
json_value *json_parse(const char *text, size_t len);
void json_free(json_value *v);
/* Member of an object, or NULL when v is not an object or has no such key. */
const json_value *json_get(const json_value *v, const char *key);

#endif
