/* cuMemHostRegister as programs use it: page-lock memory the program already has (a malloc'ed
 * buffer, an unaligned piece of one, a buffer on the stack), copy to and from the device through it,
 * synchronously and on a stream, and let go of it. The bytes a program had before registering are
 * the bytes it has after, and after unregistering.  usage: host_register [MiB] */
#include "common.h"

#include <stdint.h>
#include <string.h>

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31u + seed)) return 0;
    return 1;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31u + seed);
}

int main(int argc, char **argv)
{
    size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 8) << 20;
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    int supported = 0;
    CHECK(cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED, dev));
    printf("host register supported: %d\n", supported);
    int ok = 1;

    unsigned char *src = malloc(n), *dst = malloc(n);
    if (!src || !dst) return 2;
    fill(src, n, 7);
    memset(dst, 0, n);
    CHECK(cuMemHostRegister(src, n, CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP));
    CHECK(cuMemHostRegister(dst, n, 0));
    printf("bytes kept by registering: %s\n", same(src, n, 7) ? "yes" : "NO");
    ok &= same(src, n, 7);
    EXPECT(cuMemHostRegister(src + 4096, 4096, 0), CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    unsigned int flags = 0;
    CHECK(cuMemHostGetFlags(&flags, src));
    printf("flags of the registered buffer: %u\n", flags);

    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, n));
    CHECK(cuMemcpyHtoD(d, src, n));
    CHECK(cuMemcpyDtoH(dst, d, n));
    int round = same(dst, n, 7);
    printf("[%zu MiB through registered memory] round trip: %s\n", n >> 20, round ? "PASSED" : "FAILED");
    ok &= round;

    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    fill(src, n, 99);  /* the program writes its registered memory as before */
    memset(dst, 0, n);
    CHECK(cuMemcpyHtoDAsync(d, src, n, s));
    CHECK(cuMemcpyDtoHAsync(dst, d, n, s));
    CHECK(cuStreamSynchronize(s));
    round = same(dst, n, 99);
    printf("[async on a stream] round trip: %s\n", round ? "PASSED" : "FAILED");
    ok &= round;

    CUdeviceptr dp = 0;
    CUresult st = cuMemHostGetDevicePointer(&dp, src, 0);
    const char *name = "?";
    cuGetErrorName(st, &name);
    printf("device pointer of registered memory: %s\n", st == CUDA_SUCCESS ? "yes" : name);

    /* a piece that starts and ends inside pages, beside an unregistered neighbour */
    unsigned char *piece = malloc(3 * 4096);
    if (!piece) return 2;
    fill(piece, 3 * 4096, 3);
    CHECK(cuMemHostRegister(piece + 100, 8000, 0));
    CHECK(cuMemcpyHtoD(d, piece + 100, 8000));
    memset(dst, 0, 8000);
    CHECK(cuMemcpyDtoH(dst, d, 8000));
    round = memcmp(dst, piece + 100, 8000) == 0 && same(piece, 3 * 4096, 3);
    printf("[an unaligned piece] round trip, neighbours kept: %s\n", round ? "PASSED" : "FAILED");
    ok &= round;
    CHECK(cuMemHostUnregister(piece + 100));
    piece[0] = 1;  /* the neighbour stays ordinary memory */
    free(piece);

    unsigned char stack[16384];
    fill(stack, sizeof stack, 5);
    CHECK(cuMemHostRegister(stack, sizeof stack, 0));
    CHECK(cuMemcpyHtoD(d, stack, sizeof stack));
    memset(stack, 0, sizeof stack);
    CHECK(cuMemcpyDtoH(stack, d, sizeof stack));
    round = same(stack, sizeof stack, 5);
    printf("[a buffer on the stack] round trip: %s\n", round ? "PASSED" : "FAILED");
    ok &= round;
    CHECK(cuMemHostUnregister(stack));

    CHECK(cuMemHostUnregister(src));
    CHECK(cuMemHostUnregister(dst));
    int kept = same(src, n, 99);
    printf("bytes kept by unregistering: %s\n", kept ? "yes" : "NO");
    ok &= kept;
    fill(src, n, 1);
    ok &= same(src, n, 1);
    EXPECT(cuMemHostUnregister(src), CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
    EXPECT(cuMemFreeHost(dst), CUDA_ERROR_INVALID_VALUE);
    free(src);
    free(dst);
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(d));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf(ok ? "Test PASSED\n" : "Test FAILED\n");
    return ok ? 0 : 1;
}
