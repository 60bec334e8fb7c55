/* Page-locked host memory and stream-ordered allocation as frameworks use them: cuMemHostAlloc
 * buffers for async copies, the device's default pool, cuMemAllocFromPoolAsync within the quota
 * and past it, cuMemFreeAsync, pool attributes, pointer attributes of host memory. */
#include "common.h"
#include <string.h>

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    enum { N = 1 << 20 };
    unsigned *h = NULL, *back = NULL;
    CHECK(cuMemHostAlloc((void **)&h, N * 4, CU_MEMHOSTALLOC_PORTABLE));
    CHECK(cuMemAllocHost((void **)&back, N * 4));
    for (unsigned i = 0; i < N; i++) h[i] = i ^ 0x5a5a5a5au;
    CUmemoryPool pool;
    CHECK(cuDeviceGetDefaultMemPool(&pool, dev));
    cuuint64_t threshold = ~0ull, got = 0;
    CHECK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold));
    CHECK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &got));
    if (got != threshold) return 1;
    CUdeviceptr d;
    CHECK(cuMemAllocFromPoolAsync(&d, N * 4, pool, s));
    CHECK(cuMemcpyHtoDAsync(d, h, N * 4, s));
    CHECK(cuMemcpyDtoHAsync(back, d, N * 4, s));
    CHECK(cuStreamSynchronize(s));
    if (memcmp(h, back, N * 4)) { fprintf(stderr, "pool round trip differs\n"); return 1; }
    printf("pool allocation round trip: ok\n");
    size_t fr = 0, tot = 0;
    CHECK(cuMemGetInfo(&fr, &tot));
    printf("free %zu MiB of %zu MiB with 4 MiB from the pool\n", fr >> 20, tot >> 20);
    CUdeviceptr big;
    EXPECT(cuMemAllocAsync(&big, tot, s), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(cuMemFreeAsync(d, s));
    CHECK(cuStreamSynchronize(s));
    size_t fr2 = 0;
    CHECK(cuMemGetInfo(&fr2, &tot));
    if (fr2 != fr + N * 4) { fprintf(stderr, "freed memory not back: %zu vs %zu\n", fr2, fr); return 1; }
    unsigned type = 99;
    CUpointer_attribute a = CU_POINTER_ATTRIBUTE_MEMORY_TYPE;
    void *data = &type;
    CHECK(cuPointerGetAttributes(1, &a, &data, (CUdeviceptr)(uintptr_t)(h + 10)));
    printf("page-locked pointer: memory type %u\n", type);
    if (type != CU_MEMORYTYPE_HOST) return 1;
    CHECK(cuMemFreeHost(h));
    CHECK(cuMemFreeHost(back));
    EXPECT(cuMemFreeHost(h), CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemFree(0));
    CHECK(cuStreamDestroy(s));
    CHECK(cuCtxSynchronize());
    printf("Result = PASS\n");
    return 0;
}
