/* Runtime version query; the numbers come from meson's project(version:). */
#include "dq_internal.h"

DQ_API int32_t dq_version_number(void)
{
    return DQ_VERSION_NUMBER;
}

DQ_API const char *dq_version_string(void)
{
    return DQ_VERSION_STRING;
}
