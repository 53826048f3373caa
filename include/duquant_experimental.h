/* libduquant experimental interface: research and inspection calls outside the stability
 * promise of duquant.h. Anything here may change or disappear in any release; its symbols live
 * in the version node DUQUANT_EXPERIMENTAL, which the ABI check does not hold to a baseline.
 * Include duquant.h first (this header includes it). */
#ifndef DUQUANT_EXPERIMENTAL_H
#define DUQUANT_EXPERIMENTAL_H

#include "duquant.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* DUQUANT_EXPERIMENTAL_H */
