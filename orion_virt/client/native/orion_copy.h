/* Bulk copies between the application's memory and a ring, split over a few threads. */
#ifndef ORION_COPY_H
#define ORION_COPY_H

#include <stddef.h>

/* memcpy(dst, src, n); a copy of ORION_COPY_SPLIT bytes or more is split between the caller and
 * up to ORION_COPY_THREADS helper threads (default: a quarter of the CPUs this process may use,
 * at most 3; none on a machine of fewer than 8), which one core's memcpy cannot saturate the
 * memory bus with (measured on the H200 host: 7 GB/s from one thread). Thread-safe; the helpers
 * start on the first large copy and sleep on a futex between copies. */
void orion_copy(void *dst, const void *src, size_t n);

#endif
