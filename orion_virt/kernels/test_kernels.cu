// Kernels used by the demo, the backend-parity tests and the benchmarks.
// The sim backend has a NumPy reference for each (orion_virt/server/sim_kernels.py).
// Regenerate the checked-in PTX/cubin with `make kernels` (see Makefile).

extern "C" __global__ void vectorAdd(const float *A, const float *B, float *C, int n)
{
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) C[i] = A[i] + B[i];
}

extern "C" __global__ void saxpy(float a, const float *x, float *y, int n)
{
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

extern "C" __global__ void fill_u32(unsigned int *p, unsigned int v, int n)
{
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) p[i] = v;
}

// C = A x B for n x n row-major matrices; 2-D grid of 2-D blocks.
extern "C" __global__ void matmul_f32(const float *A, const float *B, float *C, int n)
{
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < n && col < n) {
        float acc = 0.0f;
        for (int k = 0; k < n; ++k) acc += A[row * n + k] * B[k * n + col];
        C[row * n + col] = acc;
    }
}

// Busy-waits for `ns` nanoseconds of device time (thread 0 of block 0 counts in out[0]).
extern "C" __global__ void spin(long long ns, int *out)
{
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while ((long long)(now - start) < ns);
    if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(out, 1);
}
