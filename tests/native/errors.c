/* Error codes a driver-API program sees: before cuInit, bad handles, bad arguments, deferred errors. */
#include "common.h"

#include <string.h>

int main(int argc, char **argv)
{
    int n = 0;
    const char *s = NULL;
    CUdevice dev;
    CUcontext ctx = NULL;
    EXPECT(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT(cuCtxGetCurrent(&ctx), CUDA_ERROR_NOT_INITIALIZED);
    CHECK(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &s));
    printf("name of 2: %s\n", s);
    CHECK(cuGetErrorString(CUDA_ERROR_INVALID_HANDLE, &s));
    printf("string of 400: %s\n", s);
    EXPECT(cuGetErrorName((CUresult)123456, &s), CUDA_ERROR_INVALID_VALUE);

    CHECK(cuInit(0));
    CHECK(cuCtxGetCurrent(&ctx));
    if (ctx != NULL) { fprintf(stderr, "a current context before any was made\n"); return 1; }
    EXPECT(cuDeviceGet(&dev, 99), CUDA_ERROR_INVALID_DEVICE);
    EXPECT(cuDeviceGetCount(NULL), CUDA_ERROR_INVALID_VALUE);
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    EXPECT(cuStreamSynchronize((CUstream)(uintptr_t)0xdead), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuEventQuery((CUevent)(uintptr_t)0xbeef), CUDA_ERROR_INVALID_HANDLE);
    CUfunction f;
    EXPECT(cuModuleGetFunction(&f, (CUmodule)(uintptr_t)0x1234, "vectorAdd"), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuLaunchKernel((CUfunction)(uintptr_t)0x77, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL),
           CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuModuleLoadData(NULL, "x"), CUDA_ERROR_INVALID_VALUE);
    if (argc > 1) {
        char *ptx = read_file(argv[1]);
        CUmodule mod;
        CHECK(cuModuleLoadData(&mod, ptx));
        EXPECT(cuModuleGetFunction(&f, mod, "no_such_kernel"), CUDA_ERROR_NOT_FOUND);
        CHECK(cuModuleGetFunction(&f, mod, "fill_u32"));
        CUdeviceptr p;
        unsigned v = 3;
        int cnt = 4;
        CHECK(cuMemAlloc(&p, 16));
        void *args[] = {&p, &v, &cnt};
        void *extra[] = {CU_LAUNCH_PARAM_END};
        EXPECT(cuLaunchKernel(f, 1, 1, 1, 4, 1, 1, 0, NULL, args, extra), CUDA_ERROR_INVALID_VALUE);
        /* the same launch with its parameters packed in `extra`, as some libraries issue it */
        struct { CUdeviceptr p; unsigned v; int n; } packed = {p, 5, 4};
        size_t packed_size = sizeof packed;
        void *extra_buf[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE, &packed_size,
                             CU_LAUNCH_PARAM_END};
        CHECK(cuLaunchKernel(f, 1, 1, 1, 4, 1, 1, 0, NULL, NULL, extra_buf));
        unsigned five[4] = {0};
        CHECK(cuMemcpyDtoH(five, p, sizeof five));
        if (five[0] != 5 || five[3] != 5) { fprintf(stderr, "fill_u32 via extra wrote %u %u\n", five[0], five[3]); return 1; }
        printf("ok: a launch with its parameters packed in extra\n");
        EXPECT(cuLaunchKernel(f, 1, 1, 1, 4, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
        CHECK(cuLaunchKernel(f, 1, 1, 1, 4, 1, 1, 0, NULL, args, NULL));
        unsigned out[4] = {0};
        CHECK(cuMemcpyDtoH(out, p, sizeof out));
        if (out[0] != 3 || out[3] != 3) { fprintf(stderr, "fill_u32 wrote %u %u\n", out[0], out[3]); return 1; }
        CHECK(cuMemFree(p));
    }
    /* a NO_REPLY call that fails: its error comes back from the next synchronising call */
    EXPECT(cuMemFree((CUdeviceptr)0x999), CUDA_SUCCESS);
    CUresult deferred = cuCtxSynchronize();
    printf("deferred: %d\n", (int)deferred);
    if (deferred == CUDA_SUCCESS) { fprintf(stderr, "the failed cuMemFree was not reported\n"); return 1; }
    CHECK(cuCtxSynchronize());
    printf("Test PASSED\n");
    return 0;
}
