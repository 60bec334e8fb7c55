"""vectorAdd, cuda-python style: C = A + B on every device, checked on the host.

Loads the kernel from PTX (orion_virt/kernels/test_kernels.ptx, or the path in argv[1]).
"""

import sys
from pathlib import Path

import numpy as np
from cuda.bindings import driver as cuda

PTX = Path(__file__).resolve().parent.parent / "orion_virt" / "kernels" / "test_kernels.ptx"


def check(result):
    err, *values = result
    if err != cuda.CUresult.CUDA_SUCCESS:
        _, name = cuda.cuGetErrorName(err)
        sys.exit(f"CUDA error {int(err)} ({name.decode()})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def run_on(ordinal: int, ptx: bytes, n: int = 50000) -> None:
    dev = check(cuda.cuDeviceGet(ordinal))
    ctx = check(cuda.cuCtxCreate(None, 0, dev))
    module = check(cuda.cuModuleLoadData(ptx))
    kernel = check(cuda.cuModuleGetFunction(module, b"vectorAdd"))
    rng = np.random.default_rng(ordinal)
    a = rng.random(n, dtype=np.float32)
    b = rng.random(n, dtype=np.float32)
    c = np.zeros(n, dtype=np.float32)
    nbytes = a.nbytes
    da, db, dc = (check(cuda.cuMemAlloc(nbytes)) for _ in range(3))
    stream = check(cuda.cuStreamCreate(0))
    check(cuda.cuMemcpyHtoDAsync(da, a.ctypes.data, nbytes, stream))
    check(cuda.cuMemcpyHtoDAsync(db, b.ctypes.data, nbytes, stream))
    args = [np.array([int(x)], dtype=np.uint64) for x in (da, db, dc)] + [np.array([n], dtype=np.int32)]
    params = np.array([arg.ctypes.data for arg in args], dtype=np.uint64)
    threads = 256
    blocks = (n + threads - 1) // threads
    check(cuda.cuLaunchKernel(kernel, blocks, 1, 1, threads, 1, 1, 0, stream, params.ctypes.data, 0))
    check(cuda.cuMemcpyDtoHAsync(c.ctypes.data, dc, nbytes, stream))
    check(cuda.cuStreamSynchronize(stream))
    ok = np.allclose(c, a + b)
    print(f"[vectorAdd of {n} elements on device {ordinal}] sum check: {'PASSED' if ok else 'FAILED'} "
          f"(c[0]={c[0]:.4f} = {a[0]:.4f} + {b[0]:.4f})")
    for p in (da, db, dc):
        check(cuda.cuMemFree(p))
    check(cuda.cuStreamDestroy(stream))
    check(cuda.cuModuleUnload(module))
    check(cuda.cuCtxDestroy(ctx))
    if not ok:
        sys.exit(1)


def main() -> None:
    ptx = Path(sys.argv[1]).read_bytes() if len(sys.argv) > 1 else PTX.read_bytes()
    check(cuda.cuInit(0))
    count = check(cuda.cuDeviceGetCount())
    for i in range(count):
        run_on(i, ptx + b"\0")
    print("Test PASSED")


if __name__ == "__main__":
    main()
