"""A CuPy tour: elementwise and reduction kernels, cuBLAS matmul, cuFFT, a raw kernel; checked
against NumPy. Prints PASS or exits 1."""
import sys

import cupy as cp
import numpy as np

print("cupy", cp.__version__, "devices", cp.cuda.runtime.getDeviceCount())
free, total = cp.cuda.runtime.memGetInfo()
print(f"memGetInfo free {free >> 20} MiB total {total >> 20} MiB")
rng = np.random.default_rng(0)
a = rng.standard_normal((256, 256), dtype=np.float32)
b = rng.standard_normal((256, 256), dtype=np.float32)
ga, gb = cp.asarray(a), cp.asarray(b)
checks = {
    "elementwise": np.allclose(cp.asnumpy(ga * 2 + gb), a * 2 + b, atol=1e-5),
    "reduction": abs(float(ga.sum()) - float(a.sum())) < 1e-2,
    "matmul": np.allclose(cp.asnumpy(ga @ gb), a @ b, atol=1e-2),
    "fft": np.allclose(cp.asnumpy(cp.fft.fft(ga[0])), np.fft.fft(a[0]), atol=1e-3),
}
square = cp.RawKernel(r'''extern "C" __global__ void sq(const float *x, float *y, int n)
{ int i = blockDim.x * blockIdx.x + threadIdx.x; if (i < n) y[i] = x[i] * x[i]; }''', "sq")
x = cp.arange(1000, dtype=cp.float32)
y = cp.empty_like(x)
square((4,), (256,), (x, y, cp.int32(1000)))
checks["raw kernel"] = np.allclose(cp.asnumpy(y), np.arange(1000, dtype=np.float32) ** 2)
for k, v in checks.items():
    print(k, "ok" if v else "WRONG")
print("PASS" if all(checks.values()) else "FAIL")
sys.exit(0 if all(checks.values()) else 1)
