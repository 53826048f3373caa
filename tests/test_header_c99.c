/* The public headers compile alone as strict C99 (built with -std=c99 -pedantic-errors): the
 * experimental header includes the stable one. */
#include "duquant_experimental.h"

int main(void)
{
    dq_context_params p;
    if (dq_context_params_init(&p, sizeof p) != DQ_OK)
        return 1;
    return dq_version_number() == DQ_VERSION_NUMBER ? 0 : 1;
}
