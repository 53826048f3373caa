/* Status code names and descriptions. */
#include "dq_internal.h"

typedef struct {
    dq_status code;
    const char *name;
    const char *text;
} status_entry;

static const status_entry status_table[] = {
    {DQ_OK, "DQ_OK", "success"},
    {DQ_ERR_INVALID_ARG, "DQ_ERR_INVALID_ARG", "invalid argument"},
    {DQ_ERR_NOMEM, "DQ_ERR_NOMEM", "out of memory"},
    {DQ_ERR_SHAPE, "DQ_ERR_SHAPE", "matrix shape mismatch"},
    {DQ_ERR_BAD_STATE, "DQ_ERR_BAD_STATE", "object not in a state that allows this call"},
    {DQ_ERR_STRUCT_SIZE, "DQ_ERR_STRUCT_SIZE", "params struct_size is not a valid size"},
    {DQ_ERR_UNSUPPORTED, "DQ_ERR_UNSUPPORTED", "unsupported option or non-zero unknown params"},
    {DQ_ERR_BLAS, "DQ_ERR_BLAS", "dimensions exceed what BLAS can take"},
    {DQ_ERR_FORMAT, "DQ_ERR_FORMAT", "malformed serialised data"},
    {DQ_ERR_NONFINITE, "DQ_ERR_NONFINITE", "NaN or infinity in input data"},
    {DQ_ERR_OVERFLOW, "DQ_ERR_OVERFLOW", "size computation overflows"},
    {DQ_ERR_BUFFER, "DQ_ERR_BUFFER", "buffer too small"},
    {DQ_ERR_MISMATCH, "DQ_ERR_MISMATCH", "objects that must belong together do not"},
    {DQ_ERR_IO, "DQ_ERR_IO", "file system error"},
};

static const status_entry *find_status(dq_status s)
{
    for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
        if (status_table[i].code == s)
            return &status_table[i];
    return NULL;
}

DQ_API const char *dq_status_name(dq_status s)
{
    const status_entry *e = find_status(s);
    return e ? e->name : "DQ_ERR_UNKNOWN";
}

DQ_API const char *dq_status_string(dq_status s)
{
    const status_entry *e = find_status(s);
    return e ? e->text : "unknown status code";
}
