/* The generated function tables (procaddr_gen.c, made by tools/gen_native.py) as the
 * hand-written code sees them; no cuda.h here, so procaddr_gen.c can declare every driver
 * function without its prototype. */
#ifndef ORION_PROCADDR_H
#define ORION_PROCADDR_H

#include <stddef.h>

#define ORION_API __attribute__((visibility("default")))

/* Every function the library exports, remoted, hand-written or a stub, sorted by name. */
typedef struct {
    const char *name;
    void *fn;
} orion_export;

/* From CUDA version minver on, cuGetProcAddress(name, flags) is orion_exports[target]
 * (-1: the driver has none). Sorted by name, flags, minver. flags: 0 default, 1 legacy
 * stream, 2 per-thread default stream. */
typedef struct {
    const char *name;
    unsigned char flags;
    int minver;
    int target;
} orion_proc;

extern const char *const orion_stub_names[];
extern const orion_export orion_exports[];
extern const orion_proc orion_procs[];
/* The driver API version the client implements (its table's): what cuDriverGetVersion says. */
extern const int orion_driver_version;
extern const size_t orion_nprocs, orion_nexports, orion_nstubs;

/* What a stub does: logs the function's name once and returns CUDA_ERROR_NOT_SUPPORTED. */
int orion_unsupported(size_t stub);

#endif
