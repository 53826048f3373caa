/* Extensible params structs: a caller's struct may be older (smaller) or newer (larger) than
 * the library's, as long as the bytes the library does not know are zero. */
#include <string.h>

#include "dq_internal.h"

dq_status dq__params_init(void *p, size_t struct_size, size_t min_size, const void *defaults,
                          size_t known_size)
{
    if (!p)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "p is NULL");
    if (struct_size < min_size || struct_size > DQ_PARAMS_MAX_SIZE)
        return DQ_FAIL(NULL, DQ_ERR_STRUCT_SIZE, "struct_size %zu outside [%zu, %d]", struct_size,
                       min_size, (int)DQ_PARAMS_MAX_SIZE);
    /* Never write past what the caller owns; members it does not have keep no value. */
    memset(p, 0, struct_size);
    memcpy(p, defaults, struct_size < known_size ? struct_size : known_size);
    uint32_t size = (uint32_t)struct_size;
    memcpy(p, &size, sizeof size);
    return DQ_OK;
}

dq_status dq__params_read_at(const dq_context *ctx, const char *func, const char *what,
                             void *dst, size_t known_size, size_t min_size, const void *user)
{
    if (!user)
        return DQ_OK;
    uint32_t size;
    memcpy(&size, user, sizeof size);
    if (size < min_size || size > DQ_PARAMS_MAX_SIZE)
        return dq__fail(ctx, DQ_ERR_STRUCT_SIZE, func, "%s->struct_size %u outside [%zu, %d]",
                        what, (unsigned)size, min_size, (int)DQ_PARAMS_MAX_SIZE);
    const unsigned char *bytes = user;
    for (size_t i = known_size; i < size; i++)
        if (bytes[i] != 0)
            return dq__fail(ctx, DQ_ERR_UNSUPPORTED, func,
                            "%s: byte %zu is %u, beyond the %zu bytes this library knows "
                            "(struct_size %u); unknown members must be zero",
                            what, i, (unsigned)bytes[i], known_size, (unsigned)size);
    memcpy(dst, user, size < known_size ? size : known_size);
    return DQ_OK;
}

dq_status dq__params_read(void *dst, size_t known_size, size_t min_size, const void *user)
{
    return dq__params_read_at(NULL, "dq__params_read", "params", dst, known_size, min_size,
                              user);
}
