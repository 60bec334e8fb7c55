"""cuda.core as its examples use it: Device, Program (NVRTC) compiled to cubin, launch on a
stream, device buffers from the device's memory resource. Prints PASS or exits 1."""
import sys

import numpy as np

try:
    import cuda.core as cc
    cc.Program  # noqa: B018  (cuda.core >= 0.4 exports its API at the top)
except AttributeError:
    from cuda.core import experimental as cc  # type: ignore[no-redef]

dev = cc.Device()
dev.set_current()
print("device", dev.name, "cc", dev.compute_capability)
src = r'''extern "C" __global__ void saxpy(float a, const float *x, float *y, size_t n)
{ size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; if (i < n) y[i] = a * x[i] + y[i]; }'''
arch = "".join(str(v) for v in dev.compute_capability)
prog = cc.Program(src, code_type="c++", options=cc.ProgramOptions(arch=f"sm_{arch}"))
mod = prog.compile("cubin", name_expressions=("saxpy",))
ker = mod.get_kernel("saxpy")
s = dev.create_stream()
n = 1 << 16
x = np.arange(n, dtype=np.float32)
y = np.ones(n, dtype=np.float32)
bx = dev.memory_resource.allocate(x.nbytes, stream=s)
by = dev.memory_resource.allocate(y.nbytes, stream=s)
from cuda.bindings import driver as d  # noqa: E402

d.cuMemcpyHtoDAsync(int(bx.handle), x.ctypes.data, x.nbytes, s.handle)
d.cuMemcpyHtoDAsync(int(by.handle), y.ctypes.data, y.nbytes, s.handle)
cfg = cc.LaunchConfig(grid=(n + 255) // 256, block=256)
cc.launch(s, cfg, ker, np.float32(2.0), bx, by, np.uint64(n))
out = np.empty_like(y)
d.cuMemcpyDtoHAsync(out.ctypes.data, int(by.handle), out.nbytes, s.handle)
s.sync()
ok = np.allclose(out, 2 * x + 1)
print("saxpy", "ok" if ok else "WRONG")
bx.close(s)
by.close(s)
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
