/* Two devices in one program, as a data-parallel step uses them: a context, a stream and memory
 * on each, a kernel on each, the result of device 0 copied to device 1 through the host, and the
 * mistakes a program can make across devices refused. Run with ORION_VGPU=2; with a second
 * argument "strict" (a cross-node session, each device on another server) a kernel of one device
 * on a stream of the other must be refused at once with CUDA_ERROR_INVALID_HANDLE. */
#include "common.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define N 4096

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s KERNELS.ptx\n", argv[0]); return 2; }
    char *ptx = read_file(argv[1]);
    int count = 0;
    CHECK(cuInit(0));
    CHECK(cuDeviceGetCount(&count));
    if (count < 2) { fprintf(stderr, "needs 2 devices, found %d\n", count); return 2; }
    CUdevice dev[2];
    CUcontext ctx[2];
    CUmodule mod[2];
    CUfunction add[2];
    CUstream st[2];
    CUdeviceptr a[2], b[2], c[2];
    int n = N;
    size_t bytes = N * sizeof(float);
    static float ha[N], hb[N], hc[N];
    for (int i = 0; i < N; i++) { ha[i] = (float)i; hb[i] = 2.0f * (float)i; }
    for (int d = 0; d < 2; d++) {
        char name[256];
        size_t total = 0;
        CHECK(cuDeviceGet(&dev[d], d));
        CHECK(cuDeviceGetName(name, sizeof name, dev[d]));
        CHECK(cuDeviceTotalMem(&total, dev[d]));
        printf("device %d: %s, %zu MiB\n", d, name, total >> 20);
        CHECK(cuCtxCreate(&ctx[d], NULL, 0, dev[d]));
        CHECK(cuModuleLoadData(&mod[d], ptx));
        CHECK(cuModuleGetFunction(&add[d], mod[d], "vectorAdd"));
        CHECK(cuStreamCreate(&st[d], CU_STREAM_NON_BLOCKING));
        CHECK(cuMemAlloc(&a[d], bytes));
        CHECK(cuMemAlloc(&b[d], bytes));
        CHECK(cuMemAlloc(&c[d], bytes));
        CUdevice got;
        CHECK(cuCtxGetDevice(&got));
        if (got != dev[d]) { fprintf(stderr, "context %d is on device %d\n", d, (int)got); return 1; }
    }
    /* device 0: c0 = a + b; device 1: c1 = c0 (through the host) + b */
    CHECK(cuCtxSetCurrent(ctx[0]));
    CHECK(cuMemcpyHtoDAsync(a[0], ha, bytes, st[0]));
    CHECK(cuMemcpyHtoDAsync(b[0], hb, bytes, st[0]));
    void *args0[] = {&a[0], &b[0], &c[0], &n};
    CHECK(cuLaunchKernel(add[0], (N + 255) / 256, 1, 1, 256, 1, 1, 0, st[0], args0, NULL));
    CHECK(cuMemcpyDtoHAsync(hc, c[0], bytes, st[0]));
    CHECK(cuStreamSynchronize(st[0]));
    CHECK(cuCtxSetCurrent(ctx[1]));
    CHECK(cuMemcpyHtoD(a[1], hc, bytes));
    CHECK(cuMemcpyHtoD(b[1], hb, bytes));
    void *args1[] = {&a[1], &b[1], &c[1], &n};
    CHECK(cuLaunchKernel(add[1], (N + 255) / 256, 1, 1, 256, 1, 1, 0, st[1], args1, NULL));
    CHECK(cuStreamSynchronize(st[1]));
    memset(hc, 0, sizeof hc);
    CHECK(cuMemcpyDtoH(hc, c[1], bytes));
    int ok = 1;
    for (int i = 0; i < N && ok; i++) ok = fabsf(hc[i] - 5.0f * (float)i) < 1e-3f;
    printf("two-device chain: %s (c[7] = %.1f, expected %.1f)\n", ok ? "PASSED" : "FAILED", hc[7], 35.0);

    /* peer access and peer copies, as cudaDeviceEnablePeerAccess and cudaMemcpyPeer issue them */
    int can01 = -1, can00 = -1;
    CHECK(cuDeviceCanAccessPeer(&can01, dev[0], dev[1]));
    CHECK(cuDeviceCanAccessPeer(&can00, dev[0], dev[0]));
    printf("can access peer: 0->1 %d, 0->0 %d\n", can01, can00);
    if (can00 != 0) { fprintf(stderr, "a device is not its own peer\n"); ok = 0; }
    if (can01 == 1) {
        CHECK(cuCtxSetCurrent(ctx[1]));
        CHECK(cuCtxEnablePeerAccess(ctx[0], 0));
        EXPECT(cuCtxEnablePeerAccess(ctx[0], 0), CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
        CHECK(cuMemsetD32(c[1], 0, N));
        CHECK(cuMemcpyPeer(c[1], ctx[1], c[0], ctx[0], bytes));  /* c0 = a + b = 3i */
        CHECK(cuMemcpyPeerAsync(b[1], ctx[1], c[0], ctx[0], bytes, st[1]));
        CHECK(cuStreamSynchronize(st[1]));
        static float h1[N], h2[N];
        CHECK(cuMemcpyDtoH(h1, c[1], bytes));
        CHECK(cuMemcpyDtoH(h2, b[1], bytes));
        int peer_ok = 1;
        for (int i = 0; i < N && peer_ok; i++) peer_ok = h1[i] == 3.0f * (float)i && h2[i] == 3.0f * (float)i;
        printf("peer copy device 0 -> device 1: %s\n", peer_ok ? "PASSED" : "FAILED");
        ok &= peer_ok;
        CHECK(cuCtxDisablePeerAccess(ctx[0]));
        EXPECT(cuCtxDisablePeerAccess(ctx[0]), CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);
    } else if (can01 != 0) {
        fprintf(stderr, "cuDeviceCanAccessPeer answered %d\n", can01);
        ok = 0;
    }
    /* the unified copies (cudaMemcpyDefault): the pointers say the direction */
    {
        static float h1[N], h2[N];
        for (int i = 0; i < N; i++) h1[i] = (float)(7 * i);
        CHECK(cuCtxSetCurrent(ctx[0]));
        CHECK(cuMemcpy(a[0], (CUdeviceptr)(uintptr_t)h1, bytes));                 /* host -> device 0 */
        CHECK(cuMemcpyAsync(b[0], a[0], bytes, st[0]));                           /* device 0 -> device 0 */
        CHECK(cuMemcpyAsync((CUdeviceptr)(uintptr_t)h2, b[0], bytes, st[0]));     /* device 0 -> host */
        CHECK(cuStreamSynchronize(st[0]));
        int uni_ok = !memcmp(h1, h2, bytes);
        memset(h2, 0, bytes);
        CHECK(cuMemcpy((CUdeviceptr)(uintptr_t)h2, (CUdeviceptr)(uintptr_t)h1, bytes));  /* host -> host */
        uni_ok &= !memcmp(h1, h2, bytes);
        EXPECT(cuMemcpy(a[0] + bytes - 4, (CUdeviceptr)(uintptr_t)h1, 8), CUDA_ERROR_INVALID_VALUE);
        printf("unified copies: %s\n", uni_ok ? "PASSED" : "FAILED");
        ok &= uni_ok;
    }
    if (argc > 2 && !strcmp(argv[2], "strict"))
        EXPECT(cuLaunchKernel(add[1], 1, 1, 1, 32, 1, 1, 0, st[0], args1, NULL), CUDA_ERROR_INVALID_HANDLE);
    EXPECT(cuDeviceGet(&dev[0], 2), CUDA_ERROR_INVALID_DEVICE);

    for (int d = 0; d < 2; d++) {
        CHECK(cuCtxSetCurrent(ctx[d]));
        CHECK(cuMemFree(a[d]));
        CHECK(cuMemFree(b[d]));
        CHECK(cuMemFree(c[d]));
        CHECK(cuStreamDestroy(st[d]));
        CHECK(cuModuleUnload(mod[d]));
        CHECK(cuCtxDestroy(ctx[d]));
    }
    free(ptx);
    printf(ok ? "Test PASSED\n" : "Test FAILED\n");
    return ok ? 0 : 1;
}
