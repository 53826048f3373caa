// The public headers compile alone as C++ and link with C linkage.
#include "duquant_experimental.h"

#include <cstring>

int main()
{
    dq_quant_params p;
    if (dq_quant_params_init(&p, sizeof p) != DQ_OK)
        return 1;
    return std::strcmp(dq_version_string(), DQ_VERSION_STRING) == 0 ? 0 : 1;
}
