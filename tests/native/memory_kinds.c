/* The kinds of device memory a framework may try, as it tries them: it asks the device whether
 * managed memory and virtual memory management are there, and calls them anyway (as code written
 * for one GPU does). Each is refused with CUDA_ERROR_NOT_SUPPORTED, none
 * changes what the vGPU reports free, and ordinary allocations still work and still count. */
#include "common.h"
#include <string.h>

static int attr(CUdevice_attribute a, CUdevice dev)
{
    int v = -1;
    CHECK(cuDeviceGetAttribute(&v, a, dev));
    return v;
}

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    printf("managed memory %d, concurrent managed access %d, virtual memory management %d\n",
           attr(CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, dev), attr(CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, dev),
           attr(CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED, dev));
    printf("unified addressing %d, memory pools %d\n", attr(CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, dev),
           attr(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, dev));
    size_t free0 = 0, total = 0;
    CHECK(cuMemGetInfo(&free0, &total));

    CUdeviceptr m = 0;
    printf("cuMemAllocManaged -> %d\n", (int)cuMemAllocManaged(&m, 1 << 20, CU_MEM_ATTACH_GLOBAL));

    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    size_t gran = 0;
    printf("cuMemGetAllocationGranularity -> %d\n",
           (int)cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CUdeviceptr va = 0;
    printf("cuMemAddressReserve -> %d\n", (int)cuMemAddressReserve(&va, 2 << 20, 0, 0, 0));
    CUmemGenericAllocationHandle h = 0;
    printf("cuMemCreate -> %d\n", (int)cuMemCreate(&h, 2 << 20, &prop, 0));

    size_t free1 = 0;
    CHECK(cuMemGetInfo(&free1, &total));
    printf("free unchanged after the refusals: %s\n", free1 == free0 ? "yes" : "no");
    CUdeviceptr d = 0;
    CHECK(cuMemAlloc(&d, 8 << 20));
    size_t free2 = 0;
    CHECK(cuMemGetInfo(&free2, &total));
    printf("an ordinary allocation of 8 MiB counts: %s\n", free0 - free2 == (8u << 20) ? "yes" : "no");
    CHECK(cuMemFree(d));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    printf("Result = PASS\n");
    return 0;
}
