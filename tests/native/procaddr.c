/* How NVIDIA's libraries find driver functions: cuGetProcAddress by CUDA version and stream
 * flags, a call through the pointer it gives, an unknown export table, and a function outside
 * the remoted set (refused with CUDA_ERROR_NOT_SUPPORTED, twice, its name said once). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "common.h"

int main(void)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    CHECK(cuGetProcAddress("cuMemAlloc", &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    printf("cuMemAlloc@12000 is cuMemAlloc_v2: %s\n", fn == (void *)cuMemAlloc_v2 ? "yes" : "no");
    if (fn != (void *)cuMemAlloc_v2 || st != CU_GET_PROC_ADDRESS_SUCCESS) return 1;
    void *ptsz = dlsym(RTLD_DEFAULT, "cuStreamSynchronize_ptsz");
    CHECK(cuGetProcAddress("cuStreamSynchronize", &fn, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    printf("cuStreamSynchronize@12000 per-thread is _ptsz: %s\n", fn == ptsz ? "yes" : "no");
    if (!ptsz || fn != ptsz) return 1;
    EXPECT(cuGetProcAddress("cuMemAlloc", &fn, 1000, CU_GET_PROC_ADDRESS_DEFAULT, &st), CUDA_ERROR_NOT_FOUND);
    if (st != CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT || fn) return 1;
    EXPECT(cuGetProcAddress("cuNoSuchFunction", &fn, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st), CUDA_ERROR_NOT_FOUND);
    if (st != CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND) return 1;
    CUresult (*init)(unsigned) = NULL;
    CUresult (*count)(int *) = NULL;
    CHECK(cuGetProcAddress("cuInit", (void **)&init, 13000, 0, NULL));
    CHECK(cuGetProcAddress("cuDeviceGetCount", (void **)&count, 13000, 0, NULL));
    int n = -1;
    CHECK(init(0));
    CHECK(count(&n));
    printf("devices through cuGetProcAddress: %d\n", n);
    const void *table = (const void *)1;
    CUuuid nobody = {{0}};
    EXPECT(cuGetExportTable(&table, &nobody), CUDA_ERROR_INVALID_VALUE);
    if (table) return 1;
    CUgraph g;
    EXPECT(cuGraphCreate(&g, 0), CUDA_ERROR_NOT_SUPPORTED);
    EXPECT(cuGraphCreate(&g, 0), CUDA_ERROR_NOT_SUPPORTED);
    printf("Result = PASS\n");
    return 0;
}
