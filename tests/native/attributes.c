/* What libraries ask about kernels, limits and pointers before they launch: function
 * attributes, occupancy, context limits, pointer attributes. Usage: attributes PTX_FILE */
#include "common.h"
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: attributes PTX\n"); return 2; }
    char *ptx = read_file(argv[1]);
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction f;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&f, mod, "fill_u32"));
    int threads = 0, blocks = 0;
    CHECK(cuFuncGetAttribute(&threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f));
    CHECK(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 1024));
    CHECK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, 256, 0));
    CUlaunchAttribute cluster = {.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION};
    cluster.value.clusterDim.x = 2;
    cluster.value.clusterDim.y = cluster.value.clusterDim.z = 1;
    CUlaunchConfig cfg = {.gridDimX = 64, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 256, .blockDimY = 1,
                          .blockDimZ = 1, .attrs = &cluster, .numAttrs = 1};
    int clusters = 0;
    CHECK(cuOccupancyMaxActiveClusters(&clusters, f, &cfg));
    printf("fill_u32: up to %d threads per block, %d blocks of 256 per multiprocessor, %d clusters of 2\n",
           threads, blocks, clusters);
    if (clusters <= 0) return 1;
    if (threads <= 0 || blocks <= 0) return 1;
    size_t stack = 0;
    CHECK(cuCtxGetLimit(&stack, CU_LIMIT_STACK_SIZE));
    CHECK(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, stack * 2));
    size_t stack2 = 0;
    CHECK(cuCtxGetLimit(&stack2, CU_LIMIT_STACK_SIZE));
    printf("stack limit %zu -> %zu\n", stack, stack2);
    if (stack2 < stack * 2) return 1;
    CUdeviceptr p;
    CHECK(cuMemAlloc(&p, 1 << 20));
    unsigned type = 0;
    int ordinal = -1;
    CUdeviceptr start = 0;
    size_t size = 0;
    CHECK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p + 100));
    CHECK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p + 100));
    CHECK(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 100));
    CHECK(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p + 100));
    printf("pointer: type %u (device %s), ordinal %d, range start %s, size %zu\n", type,
           type == CU_MEMORYTYPE_DEVICE ? "yes" : "no", ordinal, start == p ? "ok" : "wrong", size);
    if (type != CU_MEMORYTYPE_DEVICE || ordinal != 0 || start != p || size != 1 << 20) return 1;
    static char host[64];
    EXPECT(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)host),
           CUDA_ERROR_INVALID_VALUE);
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
    unsigned t2 = 99;
    int o2 = 99;
    void *data[2] = {&t2, &o2};
    CHECK(cuPointerGetAttributes(2, attrs, data, (CUdeviceptr)(uintptr_t)host));
    printf("host pointer: type %u, ordinal %d\n", t2, o2);
    if (t2 != 0 || o2 != -2) return 1;
    CHECK(cuMemFree(p));
    CHECK(cuCtxSynchronize());
    printf("Result = PASS\n");
    return 0;
}
