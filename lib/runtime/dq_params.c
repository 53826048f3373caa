/* Extensible params structs: a caller's struct may be older (smaller) or newer (larger) than
 * the library's, as long as the bytes the library does not know are zero. */
#include <string.h>

#include "dq_internal.h"

dq_status dq__params_init(void *p, size_t struct_size, size_t min_size, const void *defaults,
                          size_t known_size)
{
    if (!p)
        return DQ_ERR_INVALID_ARG;
    if (struct_size < min_size || struct_size > DQ_PARAMS_MAX_SIZE)
        return DQ_ERR_STRUCT_SIZE;
    /* Never write past what the caller owns; members it does not have keep no value. */
    memset(p, 0, struct_size);
    memcpy(p, defaults, struct_size < known_size ? struct_size : known_size);
    uint32_t size = (uint32_t)struct_size;
    memcpy(p, &size, sizeof size);
    return DQ_OK;
}

dq_status dq__params_read(void *dst, size_t known_size, size_t min_size, const void *user)
{
    if (!user)
        return DQ_OK;
    uint32_t size;
    memcpy(&size, user, sizeof size);
    if (size < min_size || size > DQ_PARAMS_MAX_SIZE)
        return DQ_ERR_STRUCT_SIZE;
    const unsigned char *bytes = user;
    for (size_t i = known_size; i < size; i++)
        if (bytes[i] != 0)
            return DQ_ERR_UNSUPPORTED;
    memcpy(dst, user, size < known_size ? size : known_size);
    return DQ_OK;
}
