"""A client whose figures the oriond metrics test knows: 3 HtoD and 2 DtoH copies of 1 MiB, one
allocation over the vGPU's quota, one call on a stream handle that does not exist; then it
prints "open" and holds the session until a line arrives on stdin."""

import sys

import numpy as np
from cuda.bindings import driver as cuda

MIB = 1 << 20


def ok(result):
    err, *values = result
    if err != cuda.CUresult.CUDA_SUCCESS:
        sys.exit(f"CUDA error {int(err)}")
    return values[0] if len(values) == 1 else values


ok(cuda.cuInit(0))
ctx = ok(cuda.cuCtxCreate(None, 0, ok(cuda.cuDeviceGet(0))))
host = np.arange(MIB // 4, dtype=np.float32)
back = np.zeros_like(host)
d = ok(cuda.cuMemAlloc(MIB))
for _ in range(3):
    ok(cuda.cuMemcpyHtoD(d, host.ctypes.data, MIB))
for _ in range(2):
    ok(cuda.cuMemcpyDtoH(back.ctypes.data, d, MIB))
assert (back == host).all()
(err, *_) = cuda.cuMemAlloc(64 << 30)
assert err == cuda.CUresult.CUDA_ERROR_OUT_OF_MEMORY, err
(err,) = cuda.cuStreamSynchronize(cuda.CUstream(0x2000_7777))
assert err == cuda.CUresult.CUDA_ERROR_INVALID_HANDLE, err
print("open", flush=True)
sys.stdin.readline()
ok(cuda.cuMemFree(d))
ok(cuda.cuCtxDestroy(ctx))
