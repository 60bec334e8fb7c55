/* vectorAddDrv: load the PTX, launch on a stream, time it with events, check on the host. */
#include "common.h"

#include <math.h>
#include <string.h>

static int run_on(int ordinal, const char *ptx, int n)
{
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction add, saxpy;
    CHECK(cuDeviceGet(&dev, ordinal));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&add, mod, "vectorAdd"));
    CHECK(cuModuleGetFunction(&saxpy, mod, "saxpy"));
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (int i = 0; i < n; i++) { a[i] = (float)i * 0.5f; b[i] = 1.0f / (float)(i + 1); c[i] = 0; }
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, bytes));
    CHECK(cuMemAlloc(&db, bytes));
    CHECK(cuMemAlloc(&dc, bytes));
    CUstream s;
    CUevent start, stop;
    CHECK(cuStreamCreate(&s, 0));
    int least = 1, greatest = 1;
    CHECK(cuCtxGetStreamPriorityRange(&least, &greatest));
    printf("stream priorities %d (least) .. %d (greatest)\n", least, greatest);
    CUstream s2;  /* the result is read on a second stream that waits for the kernel's event */
    CHECK(cuStreamCreateWithPriority(&s2, CU_STREAM_NON_BLOCKING, greatest));
    CHECK(cuEventCreate(&start, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&stop, CU_EVENT_DEFAULT));
    CHECK(cuMemcpyHtoDAsync(da, a, bytes, s));
    CHECK(cuMemcpyHtoDAsync(db, b, bytes, s));
    CHECK(cuEventRecord(start, s));
    int threads = 256, blocks = (n + threads - 1) / threads;
    void *args[] = {&da, &db, &dc, &n};
    CHECK(cuLaunchKernel(add, blocks, 1, 1, threads, 1, 1, 0, s, args, NULL));
    CHECK(cuEventRecord(stop, s));
    CHECK(cuStreamWaitEvent(s2, stop, CU_EVENT_WAIT_DEFAULT));
    CHECK(cuMemcpyDtoHAsync(c, dc, bytes, s2));
    CHECK(cuStreamSynchronize(s2));
    CHECK(cuStreamDestroy(s2));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuEventSynchronize(stop));
    CHECK(cuStreamQuery(s));
    CHECK(cuEventQuery(stop));
    float ms = -1;
    CHECK(cuEventElapsedTime(&ms, start, stop));
    int ok = ms >= 0;
    for (int i = 0; i < n && ok; i++) ok = fabsf(c[i] - (a[i] + b[i])) < 1e-5f;
    printf("[vectorAdd of %d elements on device %d] sum check: %s (c[1]=%.4f = %.4f + %.4f), %.3f ms\n", n, ordinal,
           ok ? "PASSED" : "FAILED", c[1], a[1], b[1], ms);
    /* saxpy: a float before the pointers (padding in the parameter buffer) */
    float alpha = 2.0f;
    void *sargs[] = {&alpha, &da, &db, &n};
    CHECK(cuLaunchKernel(saxpy, blocks, 1, 1, threads, 1, 1, 0, NULL, sargs, NULL));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(c, db, bytes));
    int ok2 = 1;
    for (int i = 0; i < n && ok2; i++) ok2 = fabsf(c[i] - (2.0f * a[i] + b[i])) < 1e-3f;
    printf("[saxpy on device %d] check: %s\n", ordinal, ok2 ? "PASSED" : "FAILED");
    CHECK(cuEventDestroy(start));
    CHECK(cuEventDestroy(stop));
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuModuleUnload(mod));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    free(a);
    free(b);
    free(c);
    return ok && ok2;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s KERNELS.ptx\n", argv[0]); return 2; }
    char *ptx = read_file(argv[1]);
    int count = 0, ok = 1;
    CHECK(cuInit(0));
    CHECK(cuDeviceGetCount(&count));
    for (int i = 0; i < count; i++) ok &= run_on(i, ptx, 50000);
    free(ptx);
    printf(ok ? "Test PASSED\n" : "Test FAILED\n");
    return ok ? 0 : 1;
}
