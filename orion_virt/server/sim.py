"""The ``sim`` backend: device memory in host RAM, kernels from a table of NumPy references.

It exists so the whole remoting path runs, and is tested, on hosts without a GPU. It never
pretends to be one: its devices are named "Orion sim device (no GPU)" and oriond logs that it
runs on ``sim``. Modules must be PTX (parsed for their entries); cubin/fatbin images and kernels
without a reference answer CUDA_ERROR_NOT_SUPPORTED.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable

import numpy as np

from ..cuda_enums import CUdevice_attribute as A
from ..cuda_enums import CUfunction_attribute as F
from ..cuda_enums import CUlimit as L
from ..cuda_enums import CUresult
from . import ptx
from .backend import Backend, BackendSession, CudaCallError, LaunchAttrs, MemoryTable, ParamSlot, PhysicalGpu, VGpu
from .sim_kernels import KERNELS, Launch, unpack_params

SIM_NAME = "Orion sim device (no GPU)"
ALIGN = 256
BASE = 0x7F00_0000_0000
SPAN = 1 << 38

SIM_ATTRIBUTES: dict[int, int] = {
    A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024,
    A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: 1024,
    A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: 1024,
    A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: 64,
    A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: 2147483647,
    A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: 65535,
    A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: 65535,
    A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: 49152,
    A.CU_DEVICE_ATTRIBUTE_WARP_SIZE: 32,
    A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: 2,
    A.CU_DEVICE_ATTRIBUTE_CLOCK_RATE: 1000000,
    A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: 8,
    A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: 0,
    A.CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: 1,
    A.CU_DEVICE_ATTRIBUTE_INTEGRATED: 0,
    A.CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: 1,
    A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 49152,
    A.CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: 1,
}


class _Event:
    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t: float | None = None


class SimSession(BackendSession):
    def __init__(self, vgpus: list[VGpu]) -> None:
        self.vgpus = vgpus
        self.mem = MemoryTable([v.memory for v in vgpus])
        self._next = [BASE + i * SPAN for i in range(len(vgpus))]
        self._clock = 0.0
        self._closed = False
        self._func_set: dict[tuple[Any, int], int] = {}
        self._limits: dict[int, int] = {}

    # memory ------------------------------------------------------------------------------

    def alloc(self, dev: int, size: int) -> int:
        self.mem.check_quota(dev, size)
        base = self._next[dev]
        self._next[dev] += (size + ALIGN - 1) // ALIGN * ALIGN
        try:
            buf = np.zeros(size, dtype=np.uint8)
        except MemoryError:
            raise CudaCallError(CUresult.CUDA_ERROR_OUT_OF_MEMORY, "host RAM exhausted") from None
        self.mem.add(dev, base, size, buf)
        return base

    def free(self, ptr: int) -> None:
        self.mem.remove(ptr)

    def _bytes(self, ptr: int, n: int) -> np.ndarray:
        _base, off, buf = self.mem.resolve(ptr, n)
        return buf[off:off + n]

    def array(self, ptr: int, dtype: type, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        try:
            raw = self._bytes(ptr, size)
        except CudaCallError:
            raise CudaCallError(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,
                                f"kernel accessed 0x{ptr:x}+{size} outside this session's memory") from None
        if ptr % np.dtype(dtype).itemsize:
            raise CudaCallError(CUresult.CUDA_ERROR_MISALIGNED_ADDRESS, f"misaligned 0x{ptr:x}")
        return raw.view(dtype)

    def write(self, ptr: int, chunks: Iterable[memoryview]) -> None:
        _base, off, buf = self.mem.resolve(ptr, 0)
        mv = memoryview(buf)
        for c in chunks:
            mv[off:off + len(c)] = c
            off += len(c)

    def read(self, ptr: int, sinks: Iterable[memoryview]) -> None:
        _base, off, buf = self.mem.resolve(ptr, 0)
        mv = memoryview(buf)
        for s in sinks:
            s[:] = mv[off:off + len(s)]
            off += len(s)

    def copy(self, dst: int, src: int, n: int) -> None:
        self._bytes(dst, n)[:] = self._bytes(src, n)

    def memset(self, ptr: int, value: int, elem_size: int, count: int) -> None:
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[elem_size]
        self._bytes(ptr, elem_size * count).view(dtype)[:] = value

    # streams and events: sim executes synchronously ------------------------------------------

    def synchronize(self, stream: Any = None) -> None:
        return None

    def stream_create(self, flags: int, priority: int = 0) -> Any:
        return object()

    def event_create(self, flags: int) -> Any:
        return _Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.t = time.perf_counter()

    def event_synchronize(self, event: Any) -> None:
        return None

    def event_elapsed(self, start: Any, end: Any) -> float:
        if start.t is None or end.t is None:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_HANDLE, "event was never recorded")
        return (end.t - start.t) * 1000.0

    # modules and launches ---------------------------------------------------------------------

    def module_load(self, image: bytes) -> Any:
        if not ptx.looks_like_ptx(image):
            raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED,
                                "the sim backend loads PTX only (no cubin/fatbin without a GPU)")
        try:
            return ptx.entries(image.split(b"\0", 1)[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_IMAGE, f"bad PTX: {e}") from None

    # What a sim "function" reports: the limits of the sim device (no registers, no shared memory
    # used, 1024 threads per block, 48 KiB of dynamic shared memory), not any GPU's.
    _FUNC_ATTRS = {F.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024, F.CU_FUNC_ATTRIBUTE_PTX_VERSION: 80,
                   F.CU_FUNC_ATTRIBUTE_BINARY_VERSION: 80, F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: 48 << 10}
    _LIMITS = {L.CU_LIMIT_STACK_SIZE: 1024, L.CU_LIMIT_PRINTF_FIFO_SIZE: 1 << 20,
               L.CU_LIMIT_MALLOC_HEAP_SIZE: 8 << 20, L.CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH: 2,
               L.CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT: 2048, L.CU_LIMIT_MAX_L2_FETCH_GRANULARITY: 64,
               L.CU_LIMIT_PERSISTING_L2_CACHE_SIZE: 0}

    def func_attribute(self, func: Any, attrib: int) -> int:
        if attrib not in set(F):
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, f"function attribute {attrib}")
        return self._func_set.get((func, attrib), self._FUNC_ATTRS.get(F(attrib), 0))

    def func_set_attribute(self, func: Any, attrib: int, value: int) -> None:
        if attrib not in (F.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                          F.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT):
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, f"function attribute {attrib} is not settable")
        self._func_set[(func, attrib)] = value

    def occupancy_blocks(self, func: Any, block: int, dynamic_smem: int, flags: int) -> int:
        return max(0, min(32, 2048 // block)) if dynamic_smem <= (48 << 10) else 0

    def occupancy_clusters(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                           cluster: tuple[int, int, int]) -> int:
        size = max(1, cluster[0]) * max(1, cluster[1]) * max(1, cluster[2])
        per_sm = self.occupancy_blocks(func, block[0] * block[1] * block[2], smem, 0)
        return per_sm * 2 // size  # the sim device has 2 multiprocessors

    def occupancy_dynamic_smem(self, func: Any, blocks: int, block: int) -> int:
        return 48 << 10

    def ctx_limit(self, limit: int) -> int:
        if limit not in set(L):
            raise CudaCallError(CUresult.CUDA_ERROR_UNSUPPORTED_LIMIT, f"limit {limit}")
        return self._limits.get(limit, self._LIMITS.get(L(limit), 0))

    def ctx_set_limit(self, limit: int, value: int) -> None:
        if limit not in set(L):
            raise CudaCallError(CUresult.CUDA_ERROR_UNSUPPORTED_LIMIT, f"limit {limit}")
        self._limits[limit] = value

    def can_access_peer(self, physical: int, peer: int) -> bool:
        return True  # every simulated device's memory is this process's RAM

    def enable_peer(self, physical: int, peer: int) -> None:
        return None

    def module_function_names(self, module: Any) -> list[str]:
        return list(module)

    def get_function(self, module: Any, name: str) -> tuple[Any, list[ParamSlot]]:
        slots = module.get(name)
        if slots is None:
            raise CudaCallError(CUresult.CUDA_ERROR_NOT_FOUND, f"no kernel named {name!r} in this module")
        return name, slots

    def launch(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared: int, stream: Any, params: bytes, attrs: LaunchAttrs | None = None) -> float:
        if attrs is not None and attrs.cluster != (0, 0, 0):
            raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED,
                                "thread-block clusters need compute capability 9.0; the sim device is 8.0")
        kernel = KERNELS.get(func)
        if kernel is None:
            raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED,
                                f"the sim backend has no reference kernel for {func!r}")
        args = unpack_params(func, kernel, params)
        t0 = time.perf_counter()
        simulated = kernel.run(self, Launch(grid, block), args)
        return max(simulated, time.perf_counter() - t0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for base, *_ in self.mem.items():
                self.mem.remove(base)


class SimBackend(Backend):
    """``gpus`` physical sim devices of ``memory_mib`` each (default: one of 16 GiB)."""

    name = "sim"

    def __init__(self, gpus: int = 1, memory_mib: int = 16384) -> None:
        self._gpus = [
            PhysicalGpu(i, SIM_NAME, memory_mib << 20, uuid.uuid5(uuid.NAMESPACE_OID, f"orion-sim-{i}").bytes,
                        dict(SIM_ATTRIBUTES))
            for i in range(gpus)
        ]

    def gpus(self) -> list[PhysicalGpu]:
        return list(self._gpus)

    def driver_version(self) -> int:
        return 12040

    def open_session(self, vgpus: list[VGpu]) -> SimSession:
        return SimSession(vgpus)

    def describe(self) -> str:
        return f"sim: {len(self._gpus)} simulated device(s) in host RAM, NumPy reference kernels — NOT a GPU"
