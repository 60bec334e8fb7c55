/* A runtime-API program as users write one, built with gcc against NVIDIA's libcudart: device
 * count and properties, memory info, cudaMalloc/cudaMemcpy round trip, cudaMemset, streams and
 * async copies, events, and an allocation past the quota.
 * Usage: runtime_api EXPECTED_DEVICES QUOTA_MIB */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s failed: %s (%s)\n", #call, cudaGetErrorName(e_), cudaGetErrorString(e_)); return 1; } } while (0)

int main(int argc, char **argv)
{
    int want = argc > 1 ? atoi(argv[1]) : 1;
    size_t quota = (size_t)(argc > 2 ? atol(argv[2]) : 4096) << 20;
    int n = -1, drv = 0, rt = 0;
    CHECK(cudaGetDeviceCount(&n));
    CHECK(cudaDriverGetVersion(&drv));
    CHECK(cudaRuntimeGetVersion(&rt));
    printf("devices %d, driver %d, runtime %d\n", n, drv, rt);
    if (n != want) { fprintf(stderr, "expected %d devices\n", want); return 1; }
    for (int d = 0; d < n; d++) {
        struct cudaDeviceProp p;
        size_t fr = 0, tot = 0;
        CHECK(cudaGetDeviceProperties(&p, d));
        CHECK(cudaSetDevice(d));
        CHECK(cudaMemGetInfo(&fr, &tot));
        printf("device %d: %s, %zu MiB, cc %d.%d, free %zu of %zu MiB\n", d, p.name, p.totalGlobalMem >> 20,
               p.major, p.minor, fr >> 20, tot >> 20);
        if (tot > quota || fr > tot || p.totalGlobalMem > quota) { fprintf(stderr, "memory beyond the quota\n"); return 1; }
    }
    CHECK(cudaSetDevice(0));
    enum { N = 1 << 20 };
    int *h = malloc(N * sizeof(int)), *back = malloc(N * sizeof(int));
    for (int i = 0; i < N; i++) h[i] = i * 7;
    int *d_a = NULL, *d_b = NULL;
    CHECK(cudaMalloc((void **)&d_a, N * sizeof(int)));
    CHECK(cudaMalloc((void **)&d_b, N * sizeof(int)));
    CHECK(cudaMemcpy(d_a, h, N * sizeof(int), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_b, d_a, N * sizeof(int), cudaMemcpyDeviceToDevice));
    CHECK(cudaMemcpy(back, d_b, N * sizeof(int), cudaMemcpyDeviceToHost));
    if (memcmp(h, back, N * sizeof(int))) { fprintf(stderr, "round trip differs\n"); return 1; }
    printf("cudaMemcpy round trip of %zu bytes: ok\n", N * sizeof(int));
    CHECK(cudaMemset(d_a, 0x5a, N * sizeof(int)));
    CHECK(cudaMemcpy(back, d_a, N * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) if (back[i] != 0x5a5a5a5a) { fprintf(stderr, "memset wrong at %d\n", i); return 1; }
    printf("cudaMemset: ok\n");
    cudaStream_t s;
    cudaEvent_t e0, e1;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    CHECK(cudaEventRecord(e0, s));
    CHECK(cudaMemcpyAsync(d_b, h, N * sizeof(int), cudaMemcpyHostToDevice, s));
    CHECK(cudaMemsetAsync(d_a, 0, N * sizeof(int), s));
    CHECK(cudaMemcpyAsync(back, d_b, N * sizeof(int), cudaMemcpyDeviceToHost, s));
    CHECK(cudaEventRecord(e1, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaEventSynchronize(e1));
    float ms = -1;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (memcmp(h, back, N * sizeof(int))) { fprintf(stderr, "async round trip differs\n"); return 1; }
    printf("stream and events: ok (%.3f ms)\n", ms);
    CHECK(cudaEventDestroy(e0));
    CHECK(cudaEventDestroy(e1));
    CHECK(cudaStreamDestroy(s));
    void *big = NULL;
    cudaError_t e = cudaMalloc(&big, quota + ((size_t)1 << 20));
    printf("cudaMalloc past the quota: %s\n", cudaGetErrorName(e));
    if (e != cudaErrorMemoryAllocation) return 1;
    cudaGetLastError();
    CHECK(cudaFree(d_a));
    CHECK(cudaFree(d_b));
    CHECK(cudaDeviceSynchronize());
    printf("Result = PASS\n");
    return 0;
}
