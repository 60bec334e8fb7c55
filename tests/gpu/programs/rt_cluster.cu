// Thread-block clusters as the CUDA programming guide shows them: a kernel with a compile-time
// __cluster_dims__ and one launched with cudaLaunchKernelEx and a cluster-dimension attribute; each
// block reads its neighbour's shared memory through the cluster (distributed shared memory).
// Needs compute capability 9.0. Prints "Test PASSED" when every block saw its cluster.
#include <cstdio>
#include <cstdlib>
#include <cooperative_groups.h>
#include <cuda_runtime.h>

namespace cg = cooperative_groups;

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

// out[block] = cluster rank * 1000 + the first word of the next block's shared memory in the cluster
__global__ void neighbours(int *out)
{
    __shared__ int word;
    cg::cluster_group cluster = cg::this_cluster();
    unsigned rank = cluster.block_rank();
    if (threadIdx.x == 0) word = (int)blockIdx.x;
    cluster.sync();
    int *peer = cluster.map_shared_rank(&word, (rank + 1) % cluster.num_blocks());
    if (threadIdx.x == 0) out[blockIdx.x] = (int)rank * 1000 + *peer;
    cluster.sync();
}

__global__ void __cluster_dims__(2, 1, 1) pairs(int *out)
{
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) out[blockIdx.x] = (int)cluster.block_rank() * 1000 + (int)cluster.num_blocks();
}

static int verify(const int *got, int blocks, int size, bool neighbour, const char *what)
{
    for (int b = 0; b < blocks; ++b) {
        int rank = b % size, first = b - rank;
        int want = rank * 1000 + (neighbour ? first + (rank + 1) % size : size);
        if (got[b] != want) {
            printf("%s: block %d got %d, expected %d: FAILED\n", what, b, got[b], want);
            return 0;
        }
    }
    printf("%s: %d blocks in clusters of %d: PASSED\n", what, blocks, size);
    return 1;
}

int main(void)
{
    const int blocks = 64;
    int *d, h[blocks];
    CHECK(cudaMalloc(&d, blocks * sizeof(int)));
    int ok = 1;
    for (int size : {2, 4, 8}) {
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(blocks);
        config.blockDim = dim3(128);
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = size;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        config.attrs = attr;
        config.numAttrs = 1;
        CHECK(cudaMemset(d, 0xff, blocks * sizeof(int)));
        CHECK(cudaLaunchKernelEx(&config, neighbours, d));
        CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
        ok &= verify(h, blocks, size, true, "cudaLaunchKernelEx, distributed shared memory");
    }
    CHECK(cudaMemset(d, 0xff, blocks * sizeof(int)));
    pairs<<<blocks, 64>>>(d);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    ok &= verify(h, blocks, 2, false, "__cluster_dims__(2,1,1) with <<<>>>");
    CHECK(cudaFree(d));
    printf(ok ? "Test PASSED\n" : "Test FAILED\n");
    return ok ? 0 : 1;
}
