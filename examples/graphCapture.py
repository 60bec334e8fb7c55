"""CUDA graphs as cuda-python programs make them: capture a stream's kernels, instantiate the
graph, launch it again and again with new inputs. Loads fill_u32 from
orion_virt/kernels/test_kernels.ptx (or the PTX in argv[1]). Prints "Test PASSED" or exits 1."""

import sys
from pathlib import Path

import numpy as np
from cuda.bindings import driver as cuda

PTX = Path(__file__).resolve().parent.parent / "orion_virt" / "kernels" / "test_kernels.ptx"


def check(result):  # type: ignore[no-untyped-def]
    err, *values = result
    if err != cuda.CUresult.CUDA_SUCCESS:
        raise SystemExit(f"CUDA error {int(err)} ({cuda.cuGetErrorName(err)[1].decode()})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def main() -> None:
    ptx = (Path(sys.argv[1]).read_bytes() if len(sys.argv) > 1 else PTX.read_bytes()) + b"\0"
    check(cuda.cuInit(0))
    ctx = check(cuda.cuCtxCreate(None, 0, check(cuda.cuDeviceGet(0))))
    fill = check(cuda.cuModuleGetFunction(check(cuda.cuModuleLoadData(ptx)), b"fill_u32"))
    n = 4096
    a, b = check(cuda.cuMemAlloc(n * 4)), check(cuda.cuMemAlloc(n * 4))
    stream = check(cuda.cuStreamCreate(cuda.CUstream_flags.CU_STREAM_NON_BLOCKING))
    value = np.array([0], dtype=np.uint32)
    args = [np.array([int(a)], dtype=np.uint64), value, np.array([n], dtype=np.int32)]
    params = np.array([x.ctypes.data for x in args], dtype=np.uint64)
    check(cuda.cuStreamBeginCapture(stream, cuda.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
    value[0] = 11  # captured with the parameter values of the launch
    check(cuda.cuLaunchKernel(fill, n // 256, 1, 1, 256, 1, 1, 0, stream, params.ctypes.data, 0))
    check(cuda.cuMemcpyDtoDAsync(b, a, n * 4, stream))
    graph = check(cuda.cuStreamEndCapture(stream))
    exe = check(cuda.cuGraphInstantiate(graph, 0))
    out = np.zeros(n, dtype=np.uint32)
    ok = True
    for replay in range(3):
        check(cuda.cuMemsetD32(b, replay, n))
        check(cuda.cuGraphLaunch(exe, stream))
        check(cuda.cuStreamSynchronize(stream))
        check(cuda.cuMemcpyDtoH(out.ctypes.data, b, out.nbytes))
        ok &= bool((out == 11).all())
        print(f"[graph replay {replay}] b[0] = {out[0]}: {'PASSED' if (out == 11).all() else 'FAILED'}")
    check(cuda.cuGraphExecDestroy(exe))
    check(cuda.cuGraphDestroy(graph))
    check(cuda.cuCtxDestroy(ctx))
    print("Test PASSED" if ok else "Test FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
