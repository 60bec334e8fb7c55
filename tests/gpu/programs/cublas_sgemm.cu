// cuBLAS SGEMM checked against a CPU product.
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <cuda_runtime.h>
#include <cublas_v2.h>

int main(void)
{
    const int n = 256;
    std::vector<float> a(n * n), b(n * n), c(n * n), ref(n * n, 0.f);
    for (int i = 0; i < n * n; ++i) { a[i] = rand() / (float)RAND_MAX - .5f; b[i] = rand() / (float)RAND_MAX - .5f; }
    for (int j = 0; j < n; ++j) for (int k = 0; k < n; ++k) for (int i = 0; i < n; ++i)
        ref[i + j * n] += a[i + k * n] * b[k + j * n];
    float *da, *db, *dc;
    cudaMalloc(&da, n * n * 4); cudaMalloc(&db, n * n * 4); cudaMalloc(&dc, n * n * 4);
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) { printf("cublasCreate failed\nFAIL\n"); return 1; }
    cublasSetMatrix(n, n, 4, a.data(), n, da, n);
    cublasSetMatrix(n, n, 4, b.data(), n, db, n);
    const float one = 1.f, zero = 0.f;
    cublasStatus_t st = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, da, n, db, n, &zero, dc, n);
    cublasGetMatrix(n, n, 4, dc, n, c.data(), n);
    float err = 0;
    for (int i = 0; i < n * n; ++i) err = fmaxf(err, fabsf(c[i] - ref[i]));
    printf("sgemm %dx%d status %d max error %g\n", n, n, (int)st, err);
    cublasDestroy(h);
    bool ok = st == CUBLAS_STATUS_SUCCESS && err < 1e-3f;
    printf(ok ? "PASS\n" : "FAIL\n");
    return ok ? 0 : 1;
}
