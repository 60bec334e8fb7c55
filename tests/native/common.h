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

/* A whole text file (a PTX module), NUL-terminated; exits on failure. */
static inline char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

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
