/* Copies larger than one message: HtoD, DtoD and DtoH (blocking and async) of MIB mebibytes,
 * checked byte for byte. Usage: big_copy MIB */
#include "common.h"
#include <string.h>

int main(int argc, char **argv)
{
    size_t n = (size_t)(argc > 1 ? atol(argv[1]) : 8) << 20;
    unsigned char *a = malloc(n), *b = malloc(n);
    if (!a || !b) { fprintf(stderr, "no host memory for %zu bytes\n", n); return 2; }
    for (size_t i = 0; i < n; i += 4096) a[i] = (unsigned char)(i >> 12);
    a[n - 1] = 0xA5;
    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    CUdeviceptr d1, d2;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuStreamCreate(&s, 0));
    CHECK(cuMemAlloc(&d1, n));
    CHECK(cuMemAlloc(&d2, n));
    CHECK(cuMemcpyHtoD(d1, a, n));
    CHECK(cuMemcpyDtoD(d2, d1, n));
    CHECK(cuMemcpyDtoH(b, d2, n));
    if (memcmp(a, b, n)) { fprintf(stderr, "blocking round trip differs\n"); return 1; }
    memset(b, 0, n);
    CHECK(cuMemcpyHtoDAsync(d2, a, n, s));
    CHECK(cuMemcpyDtoHAsync(b, d2, n, s));
    CHECK(cuStreamSynchronize(s));
    if (memcmp(a, b, n)) { fprintf(stderr, "async round trip differs\n"); return 1; }
    printf("round trips of %zu MiB: ok\n", n >> 20);
    CHECK(cuMemFree(d1));
    CHECK(cuMemFree(d2));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    return 0;
}
