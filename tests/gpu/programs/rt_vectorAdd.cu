// Runtime-API vectorAdd as in NVIDIA's samples: cudaMalloc, cudaMemcpy, a <<<>>> launch, check.
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cuda_runtime.h>

__global__ void vectorAdd(const float *A, const float *B, float *C, int n)
{
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) C[i] = A[i] + B[i];
}

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

int main(void)
{
    const int n = 50000;
    size_t size = n * sizeof(float);
    float *a = (float *)malloc(size), *b = (float *)malloc(size), *c = (float *)malloc(size);
    for (int i = 0; i < n; ++i) { a[i] = rand() / (float)RAND_MAX; b[i] = rand() / (float)RAND_MAX; }
    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, size)); CHECK(cudaMalloc(&db, size)); CHECK(cudaMalloc(&dc, size));
    CHECK(cudaMemcpy(da, a, size, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b, size, cudaMemcpyHostToDevice));
    int threads = 256, blocks = (n + threads - 1) / threads;
    printf("CUDA kernel launch with %d blocks of %d threads\n", blocks, threads);
    vectorAdd<<<blocks, threads>>>(da, db, dc, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(c, dc, size, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i)
        if (fabsf(a[i] + b[i] - c[i]) > 1e-5f) { fprintf(stderr, "Result verification failed at %d\n", i); return 1; }
    CHECK(cudaFree(da)); CHECK(cudaFree(db)); CHECK(cudaFree(dc));
    printf("Test PASSED\n");
    return 0;
}
