"""numba-cuda as its documentation uses it: @cuda.jit kernels, device arrays to and from the
host, a reduction, shared memory, a stream; checked against NumPy. Prints PASS or exits 1."""
import sys

import numpy as np
from numba import cuda

ok = True
print("devices", len(cuda.gpus), "|", cuda.get_current_device().name)


@cuda.jit
def axpy(a, x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + y[i]


@cuda.jit
def block_sums(x, out):
    tile = cuda.shared.array(256, dtype=np.float32)
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    tile[t] = x[i] if i < x.size else 0.0
    cuda.syncthreads()
    step = 128
    while step:
        if t < step:
            tile[t] += tile[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        out[cuda.blockIdx.x] = tile[0]


n = 1 << 20
x = np.arange(n, dtype=np.float32) / n
y = np.ones(n, dtype=np.float32)
stream = cuda.stream()
dx, dy = cuda.to_device(x, stream=stream), cuda.to_device(y, stream=stream)
dout = cuda.device_array_like(x, stream=stream)
axpy[(n + 255) // 256, 256, stream](2.0, dx, dy, dout)
got = dout.copy_to_host(stream=stream)
stream.synchronize()
good = np.allclose(got, 2.0 * x + y)
print("axpy", "ok" if good else "WRONG")
ok &= good
blocks = (n + 255) // 256
dsums = cuda.device_array(blocks, dtype=np.float32)
block_sums[blocks, 256](dx, dsums)
total = float(dsums.copy_to_host().sum())
good = abs(total - float(x.sum())) < 1e-2 * abs(float(x.sum()))
print(f"reduction {total:.3f} (numpy {float(x.sum()):.3f})", "ok" if good else "WRONG")
ok &= good
free, total_mem = cuda.current_context().get_memory_info()
print("memory free/total MiB", free >> 20, total_mem >> 20)
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
