/* Zero-copy as NVIDIA's simpleZeroCopy sample does it: page-locked memory allocated with
 * CU_MEMHOSTALLOC_DEVICEMAP, its device address from cuMemHostGetDevicePointer, a kernel that
 * writes it, and the host reading the result with no copy. Argument 1: the PTX module; argument
 * 2 "unsupported-ok": a backend without a device address space for host memory may refuse. */
#include "common.h"
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: zero_copy MODULE.ptx [unsupported-ok]\n"); return 2; }
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction f;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    int can_map = 0;
    CHECK(cuDeviceGetAttribute(&can_map, CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, dev));
    printf("can map host memory: %d\n", can_map);
    char *ptx = read_file(argv[1]);
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&f, mod, "fill_u32"));
    enum { N = 1 << 20 };
    unsigned *h = NULL;
    CHECK(cuMemHostAlloc((void **)&h, N * 4, CU_MEMHOSTALLOC_DEVICEMAP));
    memset(h, 0, N * 4);
    CUdeviceptr d = 0;
    CUresult st = cuMemHostGetDevicePointer(&d, h, 0);
    if (st == CUDA_ERROR_NOT_SUPPORTED && argc > 2 && !strcmp(argv[2], "unsupported-ok")) {
        printf("zero-copy: CUDA_ERROR_NOT_SUPPORTED\n");
        return 0;
    }
    CHECK(st);
    printf("device pointer %s the host pointer\n", d == (CUdeviceptr)(uintptr_t)h ? "is" : "differs from");
    unsigned v = 0xC0FFEEu;
    int n = N;
    void *args[] = {&d, &v, &n};
    CHECK(cuLaunchKernel(f, (N + 255) / 256, 1, 1, 256, 1, 1, 0, 0, args, NULL));
    CHECK(cuCtxSynchronize());
    for (int i = 0; i < N; i++)
        if (h[i] != v) { fprintf(stderr, "element %d is %#x, not %#x\n", i, h[i], v); return 1; }
    printf("zero-copy: the kernel wrote %d elements of host memory: ok\n", N);
    CHECK(cuMemFreeHost(h));
    CHECK(cuModuleUnload(mod));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("Result = PASS\n");
    return 0;
}
