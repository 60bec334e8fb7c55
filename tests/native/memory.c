/* Device memory through the driver API: alloc, copies each way, memsets, info, quota, free. */
#include "common.h"

#include <stdint.h>
#include <string.h>

#define N (1 << 20)

int main(void)
{
    CUdevice dev;
    CUcontext ctx, cur = NULL;
    size_t free0 = 0, total = 0, free1 = 0;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuCtxCreate(&ctx, NULL, 0, dev)); /* CUDA 13: cuCtxCreate_v4 */
    CHECK(cuCtxGetCurrent(&cur));
    if (cur != ctx) { fprintf(stderr, "cuCtxGetCurrent is not the new context\n"); return 1; }
    CHECK(cuMemGetInfo(&free0, &total));
    printf("mem info: free %zu MiB, total %zu MiB\n", free0 >> 20, total >> 20);

    uint32_t *h = malloc(N * sizeof *h), *back = malloc(N * sizeof *back);
    for (uint32_t i = 0; i < N; i++) h[i] = i * 2654435761u;
    CUdeviceptr a, b;
    CHECK(cuMemAlloc(&a, N * sizeof *h));
    CHECK(cuMemAlloc(&b, N * sizeof *h));
    CHECK(cuMemGetInfo(&free1, &total));
    printf("after 2 x %zu MiB: free %zu MiB\n", (N * sizeof *h) >> 20, free1 >> 20);
    if (free0 - free1 < 2 * N * sizeof *h) { fprintf(stderr, "free memory did not shrink\n"); return 1; }

    CHECK(cuMemcpyHtoD(a, h, N * sizeof *h));
    CHECK(cuMemcpyDtoD(b, a, N * sizeof *h));
    memset(back, 0, N * sizeof *back);
    CHECK(cuMemcpyDtoH(back, b, N * sizeof *back));
    if (memcmp(h, back, N * sizeof *h)) { fprintf(stderr, "HtoD/DtoD/DtoH round trip differs\n"); return 1; }
    printf("HtoD, DtoD, DtoH of %zu bytes: PASSED\n", N * sizeof *h);

    CHECK(cuMemsetD32(a, 0xDEADBEEFu, N));
    CHECK(cuMemcpyDtoH(back, a, N * sizeof *back));
    for (uint32_t i = 0; i < N; i++)
        if (back[i] != 0xDEADBEEFu) { fprintf(stderr, "memsetD32 at %u: %08x\n", i, back[i]); return 1; }
    CHECK(cuMemsetD8(b + 1, 0x5A, 3));
    unsigned char bytes[8];
    CHECK(cuMemcpyDtoH(bytes, b, 8));
    const uint32_t *hw = h;
    unsigned char want0 = (unsigned char)hw[0];
    if (bytes[0] != want0 || bytes[1] != 0x5A || bytes[2] != 0x5A || bytes[3] != 0x5A) {
        fprintf(stderr, "memsetD8: %02x %02x %02x %02x\n", bytes[0], bytes[1], bytes[2], bytes[3]);
        return 1;
    }
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuMemsetD32Async(a, 7, N, s));
    CHECK(cuMemsetD8Async(b, 1, 16, s));
    CHECK(cuMemcpyDtoDAsync(b + 16, a, 64, s));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuMemcpyDtoHAsync(back, b, 80, s));
    CHECK(cuStreamSynchronize(s));
    const unsigned char *bb = (const unsigned char *)back;
    for (int i = 0; i < 16; i++) if (bb[i] != 1) { fprintf(stderr, "memsetD8Async\n"); return 1; }
    for (int i = 4; i < 20; i++) if (back[i] != 7) { fprintf(stderr, "memsetD32Async/DtoDAsync\n"); return 1; }
    printf("memset and async copies: PASSED\n");
    CHECK(cuStreamDestroy(s));

    /* over the vGPU's memory (ORION_GMEM) */
    CUdeviceptr big = 0;
    EXPECT(cuMemAlloc(&big, total + (1u << 20)), CUDA_ERROR_OUT_OF_MEMORY);

    CHECK(cuMemFree(a));
    CHECK(cuMemFree(b));
    size_t free2 = 0;
    CHECK(cuMemGetInfo(&free2, &total));
    printf("after free: free %zu MiB\n", free2 >> 20);
    if (free2 != free0) { fprintf(stderr, "memory not returned\n"); return 1; }
    CHECK(cuCtxDestroy(ctx));
    free(h);
    free(back);
    printf("Test PASSED\n");
    return 0;
}
