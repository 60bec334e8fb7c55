/* CUDA graphs as frameworks make them: capture a stream's work (memset, kernel launches, an
 * event), end the capture, instantiate, launch the graph twice; capture status on the way;
 * a host copy inside a capture is refused. Usage: graph PTX_FILE */
#include "common.h"
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: graph PTX\n"); return 2; }
    char *ptx = read_file(argv[1]);
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fill;
    CUstream s;
    CUevent ev;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&fill, mod, "fill_u32"));
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuEventCreate(&ev, CU_EVENT_DEFAULT));
    enum { N = 1024 };
    CUdeviceptr a, b;
    CHECK(cuMemAlloc(&a, N * 4));
    CHECK(cuMemAlloc(&b, N * 4));
    CHECK(cuMemsetD32(a, 1, N));
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
    CHECK(cuStreamIsCapturing(s, &status));
    if (status != CU_STREAM_CAPTURE_STATUS_NONE) return 1;
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    cuuint64_t id = 0;
    CHECK(cuStreamGetCaptureInfo(s, &status, &id, NULL, NULL, NULL, NULL));
    printf("capturing: %s, id %llu\n", status == CU_STREAM_CAPTURE_STATUS_ACTIVE ? "yes" : "no",
           (unsigned long long)id);
    if (status != CU_STREAM_CAPTURE_STATUS_ACTIVE || !id) return 1;
    unsigned seven = 7, n = N;
    void *args[] = {&b, &seven, &n};
    CHECK(cuMemsetD32Async(b, 0, N, s));
    CHECK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args, NULL));
    CHECK(cuMemcpyDtoDAsync(a, b, N * 4, s));
    CHECK(cuEventRecord(ev, s));
    static unsigned host[N];
    EXPECT(cuMemcpyHtoDAsync(a, host, sizeof host, s), CUDA_SUCCESS);  /* refused by oriond: see below */
    EXPECT(cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    unsigned check[N];
    CHECK(cuMemcpyDtoH(check, a, sizeof check));
    if (check[0] != 1) { fprintf(stderr, "captured work ran during the capture\n"); return 1; }
    CUgraph g;
    CUgraphExec exe;
    CHECK(cuStreamEndCapture(s, &g));
    size_t nodes = 0;
    CHECK(cuGraphGetNodes(g, NULL, &nodes));
    CHECK(cuGraphInstantiate(&exe, g, 0));
    for (int round = 0; round < 2; round++) {
        CHECK(cuMemsetD32(a, 3, N));
        CHECK(cuGraphLaunch(exe, s));
        CHECK(cuStreamSynchronize(s));
        CHECK(cuMemcpyDtoH(check, a, sizeof check));
        for (int i = 0; i < N; i++)
            if (check[i] != 7) { fprintf(stderr, "round %d: a[%d] = %u\n", round, i, check[i]); return 1; }
    }
    printf("graph of %zu nodes launched twice: ok\n", nodes);
    CHECK(cuStreamIsCapturing(s, &status));
    if (status != CU_STREAM_CAPTURE_STATUS_NONE) return 1;
    CHECK(cuGraphExecDestroy(exe));
    CHECK(cuGraphDestroy(g));
    CHECK(cuCtxSynchronize());
    printf("Result = PASS\n");
    return 0;
}
