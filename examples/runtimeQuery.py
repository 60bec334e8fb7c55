"""cuda-bindings' runtime API, as NVIDIA's cuda-python examples use it beside the driver API:
device count and properties, memory info, cudaMalloc/cudaMemcpy round trip, streams and events.
Usage: python examples/runtimeQuery.py. Prints "Result = PASS" or exits 1."""

import sys

import numpy as np
from cuda.bindings import runtime as cudart


def check(result):  # type: ignore[no-untyped-def]
    err, *rest = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise SystemExit(f"CUDA runtime error {int(err)}: {cudart.cudaGetErrorString(err)[1].decode()}")
    return rest[0] if len(rest) == 1 else rest


n = check(cudart.cudaGetDeviceCount())
print(f"Detected {n} CUDA Capable device(s), runtime {check(cudart.cudaRuntimeGetVersion())}, "
      f"driver {check(cudart.cudaDriverGetVersion())}")
for d in range(n):
    props = check(cudart.cudaGetDeviceProperties(d))
    check(cudart.cudaSetDevice(d))
    free, total = check(cudart.cudaMemGetInfo())
    print(f"Device {d}: \"{props.name.decode()}\" {props.totalGlobalMem >> 20} MiB, cc {props.major}.{props.minor}, "
          f"free {free >> 20} of {total >> 20} MiB")
check(cudart.cudaSetDevice(0))
h = np.arange(1 << 20, dtype=np.float32)
back = np.zeros_like(h)
dptr = check(cudart.cudaMalloc(h.nbytes))
stream = check(cudart.cudaStreamCreate())
start, end = check(cudart.cudaEventCreate()), check(cudart.cudaEventCreate())
check(cudart.cudaEventRecord(start, stream))
check(cudart.cudaMemcpyAsync(dptr, h.ctypes.data, h.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
check(cudart.cudaMemcpyAsync(back.ctypes.data, dptr, h.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
check(cudart.cudaEventRecord(end, stream))
check(cudart.cudaStreamSynchronize(stream))
ms = check(cudart.cudaEventElapsedTime(start, end))
ok = bool((back == h).all())
print(f"round trip of {h.nbytes} bytes through a stream: {'ok' if ok else 'WRONG'} ({ms:.3f} ms)")
check(cudart.cudaFree(dptr))
check(cudart.cudaStreamDestroy(stream))
print("Result = PASS" if ok else "Result = FAIL")
sys.exit(0 if ok else 1)
