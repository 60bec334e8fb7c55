/* The unified copies of a UVA driver, cuMemcpy and cuMemcpyAsync (CuPy's cudaMemcpyAsync between
 * devices, cudaMemcpyDefault): the pointers say the direction. The client cannot tell device
 * memory from host memory by itself, so it asks oriond which of the two ranges are device memory
 * of the session (orionPointerKinds, one round trip), then issues the copy of that direction
 * through the exported calls, which share host memory with oriond or stream it as every copy
 * does. A host-to-host copy is done here (after the stream's earlier work, for the async form).
 */
#include <stdint.h>
#include <string.h>

#include "orion_client.h"
#include "calls_gen.h"

static CUresult copy(CUdeviceptr dst, CUdeviceptr src, size_t n, int async, CUstream stream)
{
    if (!n) return CUDA_SUCCESS;
    unsigned int kinds = 0;
    CUresult st = orion_wire_orionPointerKinds(&kinds, (cuuint64_t)dst, (cuuint64_t)src, n);
    if (st != CUDA_SUCCESS) return st;
    void *hdst = (void *)(uintptr_t)dst;
    const void *hsrc = (const void *)(uintptr_t)src;
    switch (kinds & 3u) {
    case 3u: return async ? cuMemcpyDtoDAsync_v2(dst, src, n, stream) : cuMemcpyDtoD_v2(dst, src, n);
    case 1u: return async ? cuMemcpyHtoDAsync_v2(dst, hsrc, n, stream) : cuMemcpyHtoD_v2(dst, hsrc, n);
    case 2u: return async ? cuMemcpyDtoHAsync_v2(hdst, src, n, stream) : cuMemcpyDtoH_v2(hdst, src, n);
    default:
        if (async && (st = cuStreamSynchronize(stream)) != CUDA_SUCCESS) return st;
        memmove(hdst, hsrc, n);
        return CUDA_SUCCESS;
    }
}

ORION_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)
{
    return copy(dst, src, ByteCount, 0, NULL);
}

ORION_API CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)
{
    return copy(dst, src, ByteCount, 0, NULL);
}

ORION_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream)
{
    return copy(dst, src, ByteCount, 1, hStream);
}

ORION_API CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream)
{
    return copy(dst, src, ByteCount, 1, hStream);
}
