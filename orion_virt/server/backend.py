"""The interface every execution backend implements (``sim`` here, ``cuda`` on a GPU host).

The session layer (``session.py``) owns every check on what a client sends: handles are looked up
in the session's own tables and device ranges in its ``MemoryTable`` before a backend sees them.
A backend therefore only executes validated operations; it reports CUDA failures by raising
``CudaCallError``.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..cuda_enums import CUresult


class CudaCallError(Exception):
    """A call failed with ``code`` (a CUresult); ``message`` goes to the session log."""

    def __init__(self, code: CUresult | int, message: str = "") -> None:
        super().__init__(message or CUresult(code).name)
        self.code = int(code)
        self.message = message or CUresult(code).name


@dataclass(frozen=True)
class PhysicalGpu:
    index: int
    name: str
    total_mem: int
    uuid: bytes
    attributes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VGpu:
    """What one vGPU of a session may use: a physical GPU, memory in bytes, compute share in %."""

    physical: int
    memory: int
    ratio: int = 100


@dataclass(frozen=True)
class ParamSlot:
    offset: int
    size: int


@dataclass(frozen=True)
class LaunchAttrs:
    """The launch attributes of cuLaunchKernelEx that oriond passes on (validated by the session):
    cluster dimensions ((0, 0, 0): none), the cluster scheduling policy, cooperative, programmatic
    stream serialisation, priority."""

    cluster: tuple[int, int, int] = (0, 0, 0)
    policy: int = 0
    cooperative: bool = False
    programmatic: bool = False
    priority: int = 0


class MemoryTable:
    """Device allocations of one session, per vGPU, with the quota enforced at allocation.

    Invariant: allocations never overlap; ``resolve`` accepts a range only if it lies inside one
    live allocation of this session, so a client can never name another tenant's memory.
    """

    def __init__(self, quotas: list[int]) -> None:
        self.quotas = quotas
        self.used = [0] * len(quotas)
        self._starts: list[int] = []
        self._allocs: dict[int, tuple[int, int, Any]] = {}
        self._globals: dict[int, Any] = {}
        """base -> module, for module globals: addressable, not counted, not freeable"""

    def check_quota(self, dev: int, size: int) -> None:
        if size <= 0:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, "allocation of 0 bytes")
        if self.used[dev] + size > self.quotas[dev]:
            raise CudaCallError(
                CUresult.CUDA_ERROR_OUT_OF_MEMORY,
                f"vGPU {dev}: {size} bytes requested, {self.quotas[dev] - self.used[dev]} of "
                f"{self.quotas[dev]} left in its quota")

    def add(self, dev: int, base: int, size: int, obj: Any) -> None:
        bisect.insort(self._starts, base)
        self._allocs[base] = (size, dev, obj)
        self.used[dev] += size

    def add_global(self, dev: int, base: int, size: int, obj: Any, module: Any) -> None:
        """A module's global (cuModuleGetGlobal): copies may name it; it is freed with its module."""
        if base in self._globals or size <= 0:
            return
        bisect.insort(self._starts, base)
        self._allocs[base] = (size, dev, obj)
        self._globals[base] = module

    def drop_globals(self, module: Any) -> None:
        for base in [b for b, m in self._globals.items() if m is module]:
            del self._globals[base], self._allocs[base]
            self._starts.pop(bisect.bisect_left(self._starts, base))

    def size_of(self, base: int) -> int:
        return self._allocs[base][0]

    def remove(self, base: int) -> tuple[int, int, Any]:
        if base in self._globals:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, f"0x{base:x} is a module global, not an allocation")
        entry = self._allocs.pop(base, None)
        if entry is None:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, f"0x{base:x} is not an allocation of this session")
        self._starts.pop(bisect.bisect_left(self._starts, base))
        self.used[entry[1]] -= entry[0]
        return entry

    def check_base(self, base: int) -> None:
        """Raise INVALID_VALUE unless ``base`` is the start of a live allocation of this session."""
        if base not in self._allocs:
            raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE, f"0x{base:x} is not an allocation of this session")

    def resolve(self, ptr: int, n: int) -> tuple[int, int, Any]:
        """(base, offset, backend object) of the allocation holding [ptr, ptr+n)."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i >= 0:
            base = self._starts[i]
            size, _dev, obj = self._allocs[base]
            off = ptr - base
            if n >= 0 and off + n <= size:
                return base, off, obj
        raise CudaCallError(CUresult.CUDA_ERROR_INVALID_VALUE,
                            f"range 0x{ptr:x}+{n} is not inside an allocation of this session")

    def device_of(self, base: int) -> int:
        return self._allocs[base][1]

    def items(self) -> Iterator[tuple[int, int, int, Any]]:
        for base, (size, dev, obj) in list(self._allocs.items()):
            yield base, size, dev, obj


class BackendSession(ABC):
    """Per-session execution state on the backend. Arguments are already validated."""

    mem: MemoryTable
    liveness: Callable[[], None] | None = None
    """Set by the session: raises TransportError once the client is gone. A backend calls it
    now and then during a long wait (a long kernel, a long synchronize), so that a client that
    left does not keep its worker and its GPU memory until the work ends."""

    @abstractmethod
    def alloc(self, dev: int, size: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def write(self, ptr: int, chunks: Iterable[memoryview]) -> None:
        """Copy the chunks, in order, to device memory starting at ``ptr`` (range validated)."""

    @abstractmethod
    def read(self, ptr: int, sinks: Iterable[memoryview]) -> None:
        """Fill each writable sink view, in order, from device memory starting at ``ptr``."""

    @abstractmethod
    def copy(self, dst: int, src: int, n: int) -> None: ...

    @abstractmethod
    def memset(self, ptr: int, value: int, elem_size: int, count: int) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any = None) -> None: ...

    @abstractmethod
    def stream_create(self, flags: int, priority: int = 0) -> Any: ...

    def can_access_peer(self, physical: int, peer: int) -> bool:
        """Whether kernels on physical GPU ``physical`` can use the memory of GPU ``peer`` (two
        different GPUs)."""
        return False

    def enable_peer(self, physical: int, peer: int) -> None:
        """Let kernels on GPU ``physical`` use GPU ``peer``'s memory (idempotent).
        CudaCallError where the GPUs cannot."""
        raise CudaCallError(CUresult.CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, f"GPU {physical} cannot reach GPU {peer}")

    def module_function_names(self, module: Any) -> list[str]:
        """The names of a module's kernels, in the driver's order."""
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, "kernel names (this backend has none)")

    def module_global(self, module: Any, name: str) -> tuple[int, int, Any]:
        """(address, size, backend object) of a module's global variable."""
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_FOUND, f"no global named {name!r} (this backend has none)")

    def func_attribute(self, func: Any, attrib: int) -> int:
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, f"function attribute {attrib}")

    def func_set_attribute(self, func: Any, attrib: int, value: int) -> None:
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, f"function attribute {attrib}")

    def occupancy_blocks(self, func: Any, block: int, dynamic_smem: int, flags: int) -> int:
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, "occupancy")

    def occupancy_dynamic_smem(self, func: Any, blocks: int, block: int) -> int:
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, "occupancy")

    def occupancy_clusters(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                           cluster: tuple[int, int, int]) -> int:
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED, "cluster occupancy")

    def ctx_limit(self, limit: int) -> int:
        raise CudaCallError(CUresult.CUDA_ERROR_UNSUPPORTED_LIMIT, f"limit {limit}")

    def ctx_set_limit(self, limit: int, value: int) -> None:
        raise CudaCallError(CUresult.CUDA_ERROR_UNSUPPORTED_LIMIT, f"limit {limit}")

    def stream_priority_range(self) -> tuple[int, int]:
        """(least, greatest) stream priority of the current device; (0, 0): no priorities."""
        return 0, 0

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        """Default (work runs in issue order): nothing to wait for."""

    def stream_destroy(self, stream: Any) -> None:
        """Default: nothing to release."""

    def stream_query(self, stream: Any) -> bool:
        return True

    @abstractmethod
    def event_create(self, flags: int) -> Any: ...

    @abstractmethod
    def event_record(self, event: Any, stream: Any) -> None: ...

    @abstractmethod
    def event_synchronize(self, event: Any) -> None: ...

    @abstractmethod
    def event_elapsed(self, start: Any, end: Any) -> float: ...

    def event_destroy(self, event: Any) -> None:
        """Default: nothing to release."""

    def event_query(self, event: Any) -> bool:
        return True

    @abstractmethod
    def module_load(self, image: bytes) -> Any: ...

    def module_unload(self, module: Any) -> None:
        """Default: nothing to release."""

    @abstractmethod
    def get_function(self, module: Any, name: str) -> tuple[Any, list[ParamSlot]]: ...

    @abstractmethod
    def launch(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared: int, stream: Any, params: bytes, attrs: LaunchAttrs | None = None) -> float:
        """Run a kernel; return the device time it used in seconds (for compute-share accounting).
        ``attrs``: cuLaunchKernelEx's attributes (None: a plain launch)."""

    @abstractmethod
    def close(self) -> None:
        """Free everything this session holds. Idempotent."""

    # Optional hooks (no-ops by default; the cuda backend uses them). ------------------------

    def use_device(self, dev: int | None) -> None:
        """The session's current vGPU changed (cuCtxCreate/cuCtxSetCurrent/cuCtxDestroy):
        streams, events and modules created next belong to ``dev``."""

    def register_host(self, view: memoryview) -> None:
        """A host region that the transport's chunk views lie in (a shared-memory ring) for the
        session's lifetime; a backend may pin it (cuMemHostRegister). Best effort, never raises."""

    def host_device_pointer(self, view: memoryview) -> int:
        """The device address of registered host memory (``register_host``), for kernels to read
        and write it. Raises CudaCallError (CUDA_ERROR_NOT_SUPPORTED) where there is none."""
        raise CudaCallError(CUresult.CUDA_ERROR_NOT_SUPPORTED,
                            f"the {type(self).__name__} backend maps no host memory into a device's address space")

    def unregister_host(self, view: memoryview) -> None:
        """Undo :meth:`register_host` for ``view`` before its memory is unmapped. Never raises."""

    def before_read(self, ptr: int, n: int) -> None:
        """Called before a device-to-host reply starts (range validated): a backend whose copies
        can fail asynchronously raises here, while the failure can still be the call's status."""


class Backend(ABC):
    name: str
    preferred_chunk: int = 0
    """Bulk copies reach the backend in chunks at least this large when the transport can
    (each chunk costs a backend call: a GPU copy has a fixed cost of several microseconds)."""

    @abstractmethod
    def gpus(self) -> list[PhysicalGpu]: ...

    @abstractmethod
    def driver_version(self) -> int: ...

    @abstractmethod
    def open_session(self, vgpus: list[VGpu]) -> BackendSession: ...

    def describe(self) -> str:
        return self.name
