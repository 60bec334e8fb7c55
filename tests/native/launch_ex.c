/* cuLaunchKernelEx and cuLaunchCooperativeKernel as cuDNN, CUTLASS and the runtime's
 * cudaLaunchKernelEx issue them: attributes that change nothing (priority, programmatic stream
 * serialisation, a 1x1x1 cluster), a cooperative launch, the packed-buffer form, thread-block
 * clusters where the device has them (refused where it has not), a cluster that does not divide the
 * grid, and an attribute the client does not remote.  usage: launch_ex KERNELS.ptx */
#include "common.h"

#include <math.h>
#include <string.h>

static int n = 1 << 16;
static float *a, *b, *c;
static CUdeviceptr da, db, dc;

static int check(const char *what)
{
    CHECK(cuMemcpyDtoH(c, dc, (size_t)n * sizeof(float)));
    int ok = 1;
    for (int i = 0; i < n && ok; i++) ok = fabsf(c[i] - (a[i] + b[i])) < 1e-5f;
    printf("[%s] sum check: %s\n", what, ok ? "PASSED" : "FAILED");
    CHECK(cuMemsetD32(dc, 0, (size_t)n));
    return ok;
}

static CUlaunchConfig config_of(CUlaunchAttribute *attrs, unsigned count, CUstream s)
{
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = (unsigned)(n / 256);
    cfg.gridDimY = cfg.gridDimZ = 1;
    cfg.blockDimX = 256;
    cfg.blockDimY = cfg.blockDimZ = 1;
    cfg.hStream = s;
    cfg.attrs = attrs;
    cfg.numAttrs = count;
    return cfg;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: %s KERNELS.ptx\n", argv[0]); return 2; }
    char *ptx = read_file(argv[1]);
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction add;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&add, mod, "vectorAdd"));
    size_t bytes = (size_t)n * sizeof(float);
    a = malloc(bytes), b = malloc(bytes), c = malloc(bytes);
    for (int i = 0; i < n; i++) { a[i] = (float)i; b[i] = 0.25f * (float)(i % 7); }
    CHECK(cuMemAlloc(&da, bytes));
    CHECK(cuMemAlloc(&db, bytes));
    CHECK(cuMemAlloc(&dc, bytes));
    CHECK(cuMemcpyHtoD(da, a, bytes));
    CHECK(cuMemcpyHtoD(db, b, bytes));
    CHECK(cuMemsetD32(dc, 0, (size_t)n));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    void *args[] = {&da, &db, &dc, &n};
    int ok = 1;

    int least = 0, greatest = 0;
    CHECK(cuCtxGetStreamPriorityRange(&least, &greatest));
    CUlaunchAttribute plain[3];
    memset(plain, 0, sizeof plain);
    plain[0].id = CU_LAUNCH_ATTRIBUTE_PRIORITY;
    plain[0].value.priority = greatest;
    plain[1].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    plain[1].value.programmaticStreamSerializationAllowed = 1;
    plain[2].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    plain[2].value.clusterDim.x = plain[2].value.clusterDim.y = plain[2].value.clusterDim.z = 1;
    CUlaunchConfig cfg = config_of(plain, 3, s);
    CHECK(cuLaunchKernelEx(&cfg, add, args, NULL));
    CHECK(cuStreamSynchronize(s));
    ok &= check("cuLaunchKernelEx: priority, programmatic serialisation, 1x1x1 cluster");

    unsigned char packed[28];
    memset(packed, 0, sizeof packed);
    memcpy(packed, &da, 8);
    memcpy(packed + 8, &db, 8);
    memcpy(packed + 16, &dc, 8);
    memcpy(packed + 24, &n, 4);
    size_t packed_size = sizeof packed;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, packed, CU_LAUNCH_PARAM_BUFFER_SIZE, &packed_size,
                     CU_LAUNCH_PARAM_END};
    cfg = config_of(plain, 1, NULL);
    CHECK(cuLaunchKernelEx(&cfg, add, NULL, extra));
    CHECK(cuCtxSynchronize());
    ok &= check("cuLaunchKernelEx: packed parameter buffer");

    CHECK(cuLaunchCooperativeKernel(add, (unsigned)(n / 256), 1, 1, 256, 1, 1, 0, s, args));
    CHECK(cuStreamSynchronize(s));
    ok &= check("cuLaunchCooperativeKernel");

    int clusters = 0;
    CHECK(cuDeviceGetAttribute(&clusters, CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH, dev));
    CUlaunchAttribute cl[2];
    memset(cl, 0, sizeof cl);
    cl[0].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    cl[0].value.clusterDim.x = 2;
    cl[0].value.clusterDim.y = cl[0].value.clusterDim.z = 1;
    cl[1].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE;
    cl[1].value.clusterSchedulingPolicyPreference = CU_CLUSTER_SCHEDULING_POLICY_SPREAD;
    cfg = config_of(cl, 2, s);
    CUresult st = cuLaunchKernelEx(&cfg, add, args, NULL);
    if (st == CUDA_SUCCESS) st = cuStreamSynchronize(s);
    if (clusters) {
        CHECK(st);
        ok &= check("cuLaunchKernelEx: clusters of 2 blocks, spread");
        cl[0].value.clusterDim.x = 3;  /* 256 blocks are no multiple of 3 */
        cfg = config_of(cl, 1, s);
        st = cuLaunchKernelEx(&cfg, add, args, NULL);
        if (st == CUDA_SUCCESS) st = cuStreamSynchronize(s);
        EXPECT(st, CUDA_ERROR_INVALID_CLUSTER_SIZE);
    } else {
        const char *name = "?";
        cuGetErrorName(st, &name);
        printf("clusters of 2 blocks on a device without cluster launch: %s\n", name);
        ok &= st != CUDA_SUCCESS;
    }
    CHECK(cuCtxSynchronize());

    CUlaunchAttribute window;
    memset(&window, 0, sizeof window);
    window.id = CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW;
    window.value.accessPolicyWindow.base_ptr = (void *)(uintptr_t)da;
    window.value.accessPolicyWindow.num_bytes = bytes;
    window.value.accessPolicyWindow.hitRatio = 1.0f;
    window.value.accessPolicyWindow.hitProp = CU_ACCESS_PROPERTY_PERSISTING;
    window.value.accessPolicyWindow.missProp = CU_ACCESS_PROPERTY_STREAMING;
    cfg = config_of(&window, 1, s);
    st = cuLaunchKernelEx(&cfg, add, args, NULL);
    if (st == CUDA_SUCCESS) {
        CHECK(cuStreamSynchronize(s));
        ok &= check("cuLaunchKernelEx: an access policy window");
    } else {
        EXPECT(st, CUDA_ERROR_NOT_SUPPORTED);
    }

    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuModuleUnload(mod));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    free(a);
    free(b);
    free(c);
    free(ptx);
    printf(ok ? "Test PASSED\n" : "Test FAILED\n");
    return ok ? 0 : 1;
}
