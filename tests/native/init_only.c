/* cuInit and one call after it: what a program sees when the session cannot be opened or breaks. */
#include <cuda.h>
#include <stdio.h>

int main(void)
{
    const char *name = NULL;
    CUresult r = cuInit(0);
    cuGetErrorName(r, &name);
    printf("cuInit: %d %s\n", (int)r, name ? name : "?");
    int count = -1;
    CUresult r2 = cuDeviceGetCount(&count);
    cuGetErrorName(r2, &name);
    printf("cuDeviceGetCount: %d %s count %d\n", (int)r2, name ? name : "?", count);
    fflush(stdout);
    return r == CUDA_SUCCESS ? 0 : 3;
}
