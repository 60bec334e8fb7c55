/* Shared by the C test programs: check a driver call the way NVIDIA's samples do. */
#ifndef TESTS_NATIVE_COMMON_H
#define TESTS_NATIVE_COMMON_H
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

static inline void check_cu(CUresult err, const char *what, const char *file, int line)
{
    if (err != CUDA_SUCCESS) {
        const char *name = NULL, *text = NULL;
        cuGetErrorName(err, &name);
        cuGetErrorString(err, &text);
        fprintf(stderr, "CUDA error %d (%s: %s) from %s at %s:%d\n", (int)err, name ? name : "?",
                text ? text : "?", what, file, line);
        exit(1);
    }
}
#define CHECK(call) check_cu((call), #call, __FILE__, __LINE__)

/* A call expected to fail with a given status. */
#define EXPECT(call, want)                                                                          \
    do {                                                                                            \
        CUresult got_ = (call);                                                                     \
        if (got_ != (want)) {                                                                       \
            fprintf(stderr, "%s returned %d, expected %d (%s) at %s:%d\n", #call, (int)got_, (int)(want), \
                    #want, __FILE__, __LINE__);                                                     \
            exit(1);                                                                                \
        }                                                                                           \
        printf("ok: %s -> %s\n", #call, #want);                                                     \
    } while (0)
#endif
