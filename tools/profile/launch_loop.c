#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include <time.h>
int main(int argc, char **argv)
{
    int n = argc > 2 ? atoi(argv[2]) : 20000;
    const char *ptx = read_file(argv[1]);
    CUdevice dev; CUcontext ctx; CUmodule mod; CUfunction f; CUdeviceptr d;
    CHECK(cuInit(0)); CHECK(cuDeviceGet(&dev, 0)); CHECK(cuDevicePrimaryCtxRetain(&ctx, dev)); CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx)); CHECK(cuModuleGetFunction(&f, mod, "fill_u32"));
    CHECK(cuMemAlloc(&d, 64));
    unsigned v = 1; int z = 0; void *args[] = {&d, &v, &z};
    CHECK(cuCtxSynchronize());
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, 0, args, NULL));
    CHECK(cuCtxSynchronize());
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%d launches in %.3f s: %.0f/s\n", n, s, n / s);
    return 0;
}
