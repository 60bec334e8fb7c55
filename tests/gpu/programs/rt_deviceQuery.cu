// Runtime-API device query: what deviceQuery prints first.
#include <cstdio>
#include <cuda_runtime.h>

int main(void)
{
    int n = 0, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) { printf("cudaGetDeviceCount returned %d -> %s\nResult = FAIL\n", (int)e, cudaGetErrorString(e)); return 1; }
    cudaDriverGetVersion(&drv); cudaRuntimeGetVersion(&rt);
    printf("Detected %d CUDA Capable device(s)\n", n);
    printf("CUDA Driver Version / Runtime Version %d.%d / %d.%d\n", drv / 1000, (drv % 100) / 10, rt / 1000, (rt % 100) / 10);
    for (int d = 0; d < n; ++d) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, d) != cudaSuccess) { printf("Result = FAIL\n"); return 1; }
        size_t fr = 0, tot = 0;
        cudaSetDevice(d);
        cudaMemGetInfo(&fr, &tot);
        printf("Device %d: \"%s\" capability %d.%d, %zu MiB global memory, %d SMs, free %zu MiB of %zu MiB\n",
               d, p.name, p.major, p.minor, p.totalGlobalMem >> 20, p.multiProcessorCount, fr >> 20, tot >> 20);
    }
    printf("Result = PASS\n");
    return 0;
}
