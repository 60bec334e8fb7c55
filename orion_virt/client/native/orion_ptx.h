/* What a PTX module says of its kernels' parameters: a check on the layout oriond answers. */
#ifndef ORION_PTX_H
#define ORION_PTX_H

#include <stddef.h>
#include <stdint.h>

/* The byte size of each parameter of `.entry name` in the PTX text ptx[0..len): the count (0
 * or more, at most cap sizes written), or -1 when the text has no such entry or its parameter
 * list is not understood (then nothing can be checked). Linear in len; never reads past it. */
int orion_ptx_param_sizes(const char *ptx, size_t len, const char *name, uint32_t *sizes, int cap);

/* Whether an image (cuModuleLoadData's bytes) is PTX text rather than a cubin or a fatbin. */
int orion_ptx_is_text(const void *image, size_t len);

#endif
