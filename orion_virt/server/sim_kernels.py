"""NumPy reference kernels of the sim backend, keyed by kernel (PTX entry) name.

Each reference reproduces its CUDA kernel's thread indexing: only the elements a real launch with
the same grid and block would touch are written. A kernel not in this table cannot run on ``sim``
(CUDA_ERROR_NOT_SUPPORTED with a message naming it).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..cuda_enums import CUresult
from .backend import CudaCallError


class DeviceMemory(Protocol):
    def array(self, ptr: int, dtype: type, count: int) -> np.ndarray:
        """A view of ``count`` elements at ``ptr``; raises CudaCallError(ILLEGAL_ADDRESS) if out of range."""
        ...


@dataclass(frozen=True)
class Launch:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def threads_x(self) -> int:
        return self.grid[0] * self.block[0]

    @property
    def threads_y(self) -> int:
        return self.grid[1] * self.block[1]


@dataclass(frozen=True)
class SimKernel:
    fmt: str
    """struct format of the parameter buffer (little-endian, natural alignment), e.g. '<QQQi'."""
    run: Callable[[DeviceMemory, Launch, tuple], float]
    """Executes the kernel; returns simulated device seconds (0 = as fast as NumPy ran)."""


def _vector_add(mem: DeviceMemory, ln: Launch, a: tuple) -> float:
    pa, pb, pc, n = a
    k = max(0, min(n, ln.threads_x))
    if k:
        mem.array(pc, np.float32, k)[:] = mem.array(pa, np.float32, k) + mem.array(pb, np.float32, k)
    return 0.0


def _saxpy(mem: DeviceMemory, ln: Launch, a: tuple) -> float:
    alpha, px, py, n = a
    k = max(0, min(n, ln.threads_x))
    if k:
        y = mem.array(py, np.float32, k)
        y[:] = np.float32(alpha) * mem.array(px, np.float32, k) + y
    return 0.0


def _fill_u32(mem: DeviceMemory, ln: Launch, a: tuple) -> float:
    p, v, n = a
    k = max(0, min(n, ln.threads_x))
    if k:
        mem.array(p, np.uint32, k)[:] = v
    return 0.0


def _matmul(mem: DeviceMemory, ln: Launch, a: tuple) -> float:
    pa, pb, pc, n = a
    if n <= 0:
        return 0.0
    rows, cols = min(n, ln.threads_y), min(n, ln.threads_x)
    A = mem.array(pa, np.float32, n * n).reshape(n, n)
    B = mem.array(pb, np.float32, n * n).reshape(n, n)
    C = mem.array(pc, np.float32, n * n).reshape(n, n)
    C[:rows, :cols] = (A[:rows, :] @ B[:, :cols]).astype(np.float32)
    return 0.0


def _spin(mem: DeviceMemory, ln: Launch, a: tuple) -> float:
    ns, pout = a
    out = mem.array(pout, np.int32, 1)
    seconds = max(0, ns) / 1e9
    end = time.perf_counter() + seconds
    alive = getattr(mem, "liveness", None)
    check_at = time.perf_counter() + 0.25
    while (now := time.perf_counter()) < end:
        if alive is not None and now >= check_at:
            alive()  # a client gone during a long kernel ends its session now, not at the end
            check_at = now + 0.25
        time.sleep(min(0.001, max(0.0, end - now)))
    out[0] += 1
    return seconds


KERNELS: dict[str, SimKernel] = {
    "vectorAdd": SimKernel("<QQQi", _vector_add),
    "saxpy": SimKernel("<fxxxxQQi", _saxpy),
    "fill_u32": SimKernel("<QIi", _fill_u32),
    "matmul_f32": SimKernel("<QQQi", _matmul),
    "spin": SimKernel("<qQ", _spin),
}


def unpack_params(name: str, kernel: SimKernel, params: bytes) -> tuple:
    st = struct.Struct(kernel.fmt)
    if len(params) < st.size:
        raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE,
                            f"{name}: parameter buffer of {len(params)} bytes, expected {st.size}")
    return st.unpack_from(params)
