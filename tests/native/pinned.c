/* Page-locked staging buffers as a data loader uses them: several cuMemAllocHost/cuMemHostAlloc
 * buffers, filled on the host, copied to the device synchronously and on a stream, copied back into
 * other page-locked buffers, checked; copies of a part of a buffer (an offset into it, an odd
 * length); a buffer freed and allocated again; and a pageable buffer beside them. */
#include "common.h"
#include <string.h>

static unsigned pattern(unsigned i, unsigned seed) { return (i * 2654435761u) ^ seed; }

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 0) : (size_t)8 << 20;  /* bytes per buffer */
    size_t words = n / 4;
    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    unsigned *src[3], *dst[3];
    CUdeviceptr d[3];
    for (int b = 0; b < 3; b++) {
        CHECK(cuMemAllocHost((void **)&src[b], n));
        CHECK(cuMemHostAlloc((void **)&dst[b], n, CU_MEMHOSTALLOC_PORTABLE));
        CHECK(cuMemAlloc(&d[b], n));
        for (size_t i = 0; i < words; i++) src[b][i] = pattern((unsigned)i, (unsigned)b);
    }
    CHECK(cuMemcpyHtoD(d[0], src[0], n));
    CHECK(cuMemcpyHtoDAsync(d[1], src[1], n, s));
    CHECK(cuMemcpyHtoDAsync(d[2], src[2], n, s));
    CHECK(cuMemcpyDtoH(dst[0], d[0], n));
    CHECK(cuMemcpyDtoHAsync(dst[1], d[1], n, s));
    CHECK(cuMemcpyDtoHAsync(dst[2], d[2], n, s));
    CHECK(cuStreamSynchronize(s));
    for (int b = 0; b < 3; b++)
        if (memcmp(src[b], dst[b], n)) { fprintf(stderr, "buffer %d differs after the round trip\n", b); return 1; }
    printf("3 page-locked buffers of %zu bytes: round trip ok\n", n);

    /* a part of a buffer: 1001 bytes from offset 4099 of src[0] into offset 77 of the device copy */
    memset(dst[0], 0, n);
    CHECK(cuMemcpyHtoD(d[0] + 77, (char *)src[1] + 4099, 1001));
    CHECK(cuMemcpyDtoH((char *)dst[0] + 13, d[0] + 77, 1001));
    if (memcmp((char *)dst[0] + 13, (char *)src[1] + 4099, 1001) || ((char *)dst[0])[12] || ((char *)dst[0])[1014]) {
        fprintf(stderr, "partial copy differs\n");
        return 1;
    }
    printf("partial copies: ok\n");

    /* pageable memory beside page-locked memory */
    unsigned *plain = malloc(n);
    CHECK(cuMemcpyDtoH(plain, d[2], n));
    if (memcmp(plain, src[2], n)) { fprintf(stderr, "pageable copy differs\n"); return 1; }
    free(plain);

    /* free and allocate again; the new buffer works like the first */
    CHECK(cuMemFreeHost(src[0]));
    CHECK(cuMemAllocHost((void **)&src[0], n));
    for (size_t i = 0; i < words; i++) src[0][i] = pattern((unsigned)i, 99u);
    CHECK(cuMemcpyHtoDAsync(d[0], src[0], n, s));
    CHECK(cuMemcpyDtoHAsync(dst[0], d[0], n, s));
    CHECK(cuStreamSynchronize(s));
    if (memcmp(src[0], dst[0], n)) { fprintf(stderr, "reallocated buffer differs\n"); return 1; }
    printf("freed and allocated again: ok\n");
    for (int b = 0; b < 3; b++) {
        CHECK(cuMemFreeHost(src[b]));
        CHECK(cuMemFreeHost(dst[b]));
        CHECK(cuMemFree(d[b]));
    }
    CHECK(cuStreamDestroy(s));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("Result = PASS\n");
    return 0;
}
