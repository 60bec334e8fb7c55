"""A kernel that writes where it must not: the error arrives at the next synchronising call.
Exits 0 when that error is CUDA_ERROR_ILLEGAL_ADDRESS (700); prints what it got."""

import ctypes
import sys
from pathlib import Path

from cuda.bindings import driver as cuda

PTX = Path(__file__).resolve().parents[3] / "orion_virt" / "kernels" / "test_kernels.ptx"


def main() -> int:
    err, = cuda.cuInit(0)
    assert int(err) == 0, err
    _, dev = cuda.cuDeviceGet(0)
    _, ctx = cuda.cuCtxCreate(None, 0, dev)
    err, module = cuda.cuModuleLoadData(PTX.read_bytes() + b"\0")
    assert int(err) == 0, err
    _, fill = cuda.cuModuleGetFunction(module, b"fill_u32")
    err, = cuda.cuLaunchKernel(fill, 64, 1, 1, 256, 1, 1, 0, 0,
                               ((0x100, 7, 1 << 14), (ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)), 0)
    err2, = cuda.cuCtxSynchronize()
    print(f"launch: {int(err)}, synchronize: {int(err2)} ({err2!r})")
    return 0 if int(err) == 0 and int(err2) == 700 else 1


if __name__ == "__main__":
    sys.exit(main())
