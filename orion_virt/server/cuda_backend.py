"""The ``cuda`` backend: executes validated session calls on real GPUs through cuda-python.

Only this module (and the probe it runs in a child process, ``cuda_probe``) imports
``cuda.bindings``; it does so lazily, inside a session, so oriond's main process never loads or
initialises the driver. Each session (one forked worker process in oriond) creates its own CUDA
context on every physical GPU its vGPUs use (``cuCtxCreate``), in the worker, and destroys them
in ``close``.

Safety rules this module keeps, on top of the session layer's checks:

* Kernel parameters are rebuilt on the server: the client sends one packed buffer laid out as the
  kernel's parameter layout (``cuFuncGetParamInfo``), the server copies it into memory it owns and
  hands the driver an array of pointers into that memory. A client never makes the server
  dereference a host address it chose.
* Host buffers given to the driver are only the transport's own views (ring chunks, socket
  buffers, reply slots), copied synchronously, so they can be reused as soon as a call returns.
* Every ``CUresult`` other than ``CUDA_SUCCESS`` becomes ``CudaCallError(code, message)``.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time
from typing import Any, Callable, Iterable

from ..cuda_enums import CUresult
from ..errors import BackendError
from . import ptx as ptx_parser
from .backend import Backend, BackendSession, CudaCallError, LaunchAttrs, MemoryTable, ParamSlot, PhysicalGpu, VGpu
from .cuda_probe import ProbeResult, probe

log = logging.getLogger("orion.server.cuda")

E = CUresult
_SUCCESS = 0
_NOT_READY = int(E.CUDA_ERROR_NOT_READY)
_INVALID_VALUE = int(E.CUDA_ERROR_INVALID_VALUE)
_ALREADY_REGISTERED = int(E.CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED)
CU_STREAM_NON_BLOCKING = 1
CU_MEMHOSTREGISTER_PORTABLE = 1
CU_MEMHOSTREGISTER_DEVICEMAP = 2
CU_MEMHOSTREGISTER_READ_ONLY = 8
LONG_WAIT_S = 200e-6
"""A synchronize that has not finished after this long is waited for in a helper thread while the
session's thread watches the client (``BackendSession.liveness``)."""
MAX_KERNEL_PARAMS = 32768
"""A kernel's parameters take at most 32 KiB, so at most this many of them."""

# -- module images (pure; no CUDA) ---------------------------------------------------------------

ELF_MAGIC = b"\x7fELF"
EM_CUDA = 190
FATBIN_MAGIC = 0xBA55ED50
FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of what follows


def image_kind(image: bytes) -> str:
    """'cubin' (a CUDA ELF), 'fatbin', 'ptx', or 'unknown'."""
    if image[:4] == ELF_MAGIC:
        return "cubin"
    if len(image) >= 4 and struct.unpack_from("<I", image)[0] == FATBIN_MAGIC:
        return "fatbin"
    if ptx_parser.looks_like_ptx(image):
        return "ptx"
    return "unknown"


def prepare_image(image: bytes) -> tuple[str, bytes]:
    """(kind, bytes to hand to cuModuleLoadData). Raises CudaCallError(INVALID_IMAGE) for images
    that are not a well-formed cubin, fatbin or PTX: arbitrary bytes never reach the driver's parser."""
    kind = image_kind(image)
    if kind == "cubin":
        if len(image) < 64 or image[4] != 2 or image[5] != 1:
            raise CudaCallError(E.CUDA_ERROR_INVALID_IMAGE, "cubin is not a 64-bit little-endian ELF")
        machine = struct.unpack_from("<H", image, 18)[0]
        if machine != EM_CUDA:
            raise CudaCallError(E.CUDA_ERROR_INVALID_IMAGE, f"ELF image for machine {machine}, not a CUDA cubin")
        return kind, bytes(image)
    if kind == "fatbin":
        if len(image) < FATBIN_HEADER.size:
            raise CudaCallError(E.CUDA_ERROR_INVALID_IMAGE, "truncated fatbin header")
        _magic, _version, hsize, fsize = FATBIN_HEADER.unpack_from(image)
        if hsize < FATBIN_HEADER.size or hsize + fsize > len(image):
            raise CudaCallError(E.CUDA_ERROR_INVALID_IMAGE,
                                f"fatbin declares {hsize}+{fsize} bytes, the image has {len(image)}")
        return kind, bytes(image[:hsize + fsize])
    if kind == "ptx":
        text = image.split(b"\0", 1)[0]
        return kind, text + b"\0"  # cuModuleLoadData reads PTX up to its NUL
    raise CudaCallError(E.CUDA_ERROR_INVALID_IMAGE, "the image is not a cubin (CUDA ELF), fatbin or PTX")


# -- kernel parameters (pure; no CUDA) -----------------------------------------------------------


class ParamBuffer:
    """Server-owned memory for one kernel's parameters, reused across its launches.

    ``buf`` holds the packed parameters exactly as the device-side layout (``slots``) places them;
    ``ptrs`` is the ``void*[]`` that ``cuLaunchKernel`` reads, entry ``i`` pointing at
    ``buf + slots[i].offset``. Both are built from the layout alone; client bytes only ever land
    inside ``buf``. The driver copies the values at launch time, so refilling ``buf`` for the next
    launch is safe as soon as ``cuLaunchKernel`` has returned.
    """

    __slots__ = ("slots", "size", "buf", "ptrs", "address")

    def __init__(self, slots: list[ParamSlot]) -> None:
        for s in slots:
            if s.offset < 0 or s.size <= 0:
                raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"bad parameter slot {s}")
        self.slots = list(slots)
        self.size = max((s.offset + s.size for s in slots), default=0)
        self.buf = ctypes.create_string_buffer(max(self.size, 1))
        base = ctypes.addressof(self.buf)
        self.ptrs = (ctypes.c_void_p * max(1, len(slots)))(*(base + s.offset for s in slots))
        self.address = ctypes.addressof(self.ptrs) if slots else 0

    def fill(self, params: bytes | bytearray | memoryview) -> int:
        """Copy the client's packed parameters in; return the ``void**`` address for the launch
        (0 for a kernel without parameters)."""
        if len(params) != self.size:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                                f"{len(params)} bytes of parameters, the kernel takes {self.size}")
        if self.size:
            ctypes.memmove(self.buf, bytes(params), self.size)
        return self.address


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of a contiguous buffer (read-only views too); no copy."""
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if view.nbytes else 0


# -- the session ------------------------------------------------------------------------------

_tls = threading.local()
"""The context last made current on this thread by this module (``_Ctx``), to skip redundant
``cuCtxSetCurrent`` calls. Only this module sets contexts in a worker."""


class _Ctx:
    __slots__ = ("handle", "physical", "nonblocking", "dirty", "timing", "alive")

    def __init__(self, handle: Any, physical: int) -> None:
        self.handle = handle
        self.physical = physical
        self.nonblocking = 0
        self.dirty = False  # device work issued since the last context-wide synchronize
        self.timing: tuple[Any, Any] | None = None
        self.alive = True


class _Stream:
    __slots__ = ("handle", "ctx", "nonblocking")

    def __init__(self, handle: Any, ctx: _Ctx, nonblocking: bool) -> None:
        self.handle = handle
        self.ctx = ctx
        self.nonblocking = nonblocking


class _Event:
    __slots__ = ("handle", "ctx")

    def __init__(self, handle: Any, ctx: _Ctx) -> None:
        self.handle = handle
        self.ctx = ctx


class _Module:
    __slots__ = ("handle", "ctx", "dev", "kind", "image", "loaded")

    def __init__(self, handle: Any, ctx: _Ctx, dev: int, kind: str, image: bytes) -> None:
        self.handle = handle
        self.ctx = ctx
        self.dev = dev
        self.kind = kind
        self.image = image  # kept alive with the module
        self.loaded = True


class _Function:
    __slots__ = ("handle", "module", "name", "params")

    def __init__(self, handle: Any, module: _Module, name: str, params: ParamBuffer) -> None:
        self.handle = handle
        self.module = module
        self.name = name
        self.params = params


class CudaSession(BackendSession):
    """One client session's CUDA state: contexts, memory, streams, events, modules.

    Single-threaded: every call comes from the thread that serves the session.
    """

    def __init__(self, vgpus: list[VGpu], driver: Any = None) -> None:
        if driver is None:
            from cuda.bindings import driver as real

            driver = real
        self.d = driver
        self.vgpus = list(vgpus)
        self.mem = MemoryTable([v.memory for v in vgpus])
        self._ctxs: dict[int, _Ctx] = {}
        self._streams: set[_Stream] = set()
        self._events: set[_Event] = set()
        self._modules: set[_Module] = set()
        self._registered: list[int] = []
        self._configs: dict[LaunchAttrs, Any] = {}
        self._current_dev = 0
        self._pending: CudaCallError | None = None
        self._closed = False
        self._abandoned = False
        d = self.d
        self._ok(d.cuInit(0), "cuInit")
        try:
            for phys in sorted({v.physical for v in vgpus}):
                dev = self._ok(d.cuDeviceGet(phys), "cuDeviceGet")
                try:
                    res = d.cuCtxCreate(None, 0, dev)  # cuda-bindings 13: (ctxCreateParams, flags, dev)
                except TypeError:
                    res = d.cuCtxCreate(0, dev)  # cuda-bindings 12.x: (flags, dev)
                handle = self._ok(res, f"cuCtxCreate on GPU {phys}")
                ctx = _Ctx(handle, phys)
                _tls.ctx = ctx  # cuCtxCreate made it current
                self._ctxs[phys] = ctx
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------------

    def _ok(self, res: Any, what: str) -> Any:
        """The values of a cuda-bindings result tuple; CudaCallError unless CUDA_SUCCESS."""
        err = res[0]
        code = int(err)
        if code != _SUCCESS:
            raise self._error(code, what)
        if len(res) == 1:
            return None
        return res[1] if len(res) == 2 else res[1:]

    def _error(self, code: int, what: str) -> CudaCallError:
        try:
            name = E(code).name
        except ValueError:
            name = f"CUresult {code}"
        desc = ""
        try:
            st, text = self.d.cuGetErrorString(self.d.CUresult(code))
            if int(st) == 0 and text:
                desc = f" ({text.decode('utf-8', 'replace') if isinstance(text, bytes) else text})"
        except Exception:  # noqa: BLE001 - the message is best effort
            pass
        return CudaCallError(code, f"{what}: {name}{desc}")

    def _use(self, ctx: _Ctx) -> None:
        if getattr(_tls, "ctx", None) is not ctx:
            self._ok(self.d.cuCtxSetCurrent(ctx.handle), "cuCtxSetCurrent")
            _tls.ctx = ctx

    def _dev_ctx(self, dev: int) -> _Ctx:
        return self._ctxs[self.vgpus[dev].physical]

    def _ptr_ctx(self, ptr: int, n: int) -> _Ctx:
        base, _off, _obj = self.mem.resolve(ptr, n)
        return self._dev_ctx(self.mem.device_of(base))

    def _cur_ctx(self) -> _Ctx:
        return self._dev_ctx(self._current_dev)

    def _quiesce(self, ctx: _Ctx) -> None:
        """Work issued on the legacy default stream is not ordered with non-blocking streams:
        where the client made any, wait for the context before and after such work."""
        if ctx.nonblocking:
            self._ok(self.d.cuCtxSynchronize(), "cuCtxSynchronize")

    def _raise_pending(self) -> None:
        if self._pending is not None:
            err, self._pending = self._pending, None
            raise err

    # -- hooks called by the session layer ------------------------------------------------------

    def use_device(self, dev: int | None) -> None:
        """The session's current vGPU (its current context) changed: streams, events and modules
        created from now on belong to that vGPU's physical GPU."""
        if dev is not None and 0 <= dev < len(self.vgpus):
            self._current_dev = dev

    def register_host(self, view: memoryview) -> None:
        """Page-lock a host region that copies will come from or go to (the shared-memory ring),
        so the GPU copies straight from or to it. A read-only view (the request ring: the device
        only reads it) falls back to READ_ONLY, which Linux also grants for shared mappings of
        regular files, where a writable long-term pin is refused (only tmpfs/hugetlbfs allow it).
        Best effort: a failure only costs speed, and is logged."""
        if self._closed or not self._ctxs or view.nbytes == 0:
            return
        addr = buffer_address(view)
        tries = [CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP, CU_MEMHOSTREGISTER_PORTABLE]
        if view.readonly:  # a plain pin first (tmpfs allows it); READ_ONLY where only that is granted
            tries.append(CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_READ_ONLY)
        try:
            self._use(next(iter(self._ctxs.values())))
            for flags in tries:
                err, = self.d.cuMemHostRegister(addr, view.nbytes, flags)
                if int(err) in (_SUCCESS, _ALREADY_REGISTERED):
                    break
        except Exception as e:  # noqa: BLE001
            log.warning("cuMemHostRegister of %d bytes failed: %s; copies stay pageable", view.nbytes, e)
            return
        if int(err) == _SUCCESS:
            self._registered.append(addr)
            log.info("registered %d KiB of shared memory at 0x%x with CUDA (pinned%s)", view.nbytes >> 10, addr,
                     ", read-only" if flags & CU_MEMHOSTREGISTER_READ_ONLY else "")
        elif int(err) != _ALREADY_REGISTERED:
            log.warning("cuMemHostRegister of %d bytes at 0x%x: %s; copies stay pageable (a device file on "
                        "tmpfs, e.g. /dev/shm, can be pinned)", view.nbytes, addr,
                        self._error(int(err), "cuMemHostRegister").message)

    def host_device_pointer(self, view: memoryview) -> int:
        addr = buffer_address(view)
        if addr not in self._registered:
            raise CudaCallError(E.CUDA_ERROR_NOT_SUPPORTED, f"host memory at {addr:#x} could not be registered with "
                                "CUDA (see the session log): it has no device address")
        self._use(next(iter(self._ctxs.values())))
        return int(self._ok(self.d.cuMemHostGetDevicePointer(addr, 0), "cuMemHostGetDevicePointer"))

    def unregister_host(self, view: memoryview) -> None:
        addr = buffer_address(view)
        if addr not in self._registered or self._closed:
            return
        self._registered.remove(addr)
        try:
            self._use(next(iter(self._ctxs.values())))
            err, = self.d.cuMemHostUnregister(addr)
        except Exception as e:  # noqa: BLE001
            log.warning("cuMemHostUnregister at 0x%x failed: %s", addr, e)
            return
        if int(err) != _SUCCESS:
            log.warning("cuMemHostUnregister at 0x%x: %s", addr, self._error(int(err), "cuMemHostUnregister").message)

    def before_read(self, ptr: int, n: int) -> None:
        """Called before a device-to-host reply is started: wait for the work the read depends on
        here, so a kernel's failure is this call's status and not a half-sent reply."""
        self._raise_pending()
        ctx = self._ptr_ctx(ptr, n)
        if ctx.dirty:  # otherwise no device work can have failed since the last synchronize
            self._use(ctx)
            self._ok(self.d.cuCtxSynchronize(), "cuCtxSynchronize")
            ctx.dirty = False

    # -- memory ---------------------------------------------------------------------------------

    def alloc(self, dev: int, size: int) -> int:
        self.mem.check_quota(dev, size)
        self._use(self._dev_ctx(dev))
        dptr = self._ok(self.d.cuMemAlloc(size), "cuMemAlloc")
        base = int(dptr)
        self.mem.add(dev, base, size, dptr)
        return base

    def free(self, ptr: int) -> None:
        _size, dev, dptr = self.mem.remove(ptr)
        self._use(self._dev_ctx(dev))
        self._ok(self.d.cuMemFree(dptr), "cuMemFree")

    def write(self, ptr: int, chunks: Iterable[memoryview]) -> None:
        d = self.d
        err: CudaCallError | None = None
        dst = ptr
        try:
            ctx = self._ptr_ctx(ptr, 0)
            self._use(ctx)
            self._quiesce(ctx)
            ctx.dirty = True
        except CudaCallError as e:
            err = e
        for chunk in chunks:  # always drain: the transport must end up past the whole blob
            n = chunk.nbytes
            if err is None and n:
                try:
                    self._ok(d.cuMemcpyHtoD(dst, chunk, n), "cuMemcpyHtoD")
                except CudaCallError as e:
                    err = e
            dst += n
        if err is not None:
            raise err

    def read(self, ptr: int, sinks: Iterable[memoryview]) -> None:
        """Fill every sink; a failure part-way zero-fills the rest and is reported by the next
        synchronising call (the reply's header has already gone out)."""
        d = self.d
        err: CudaCallError | None = None
        src = ptr
        try:
            ctx = self._ptr_ctx(ptr, 0)
            self._use(ctx)
            self._quiesce(ctx)
        except CudaCallError as e:
            err = e
        for sink in sinks:
            n = sink.nbytes
            if err is None and n:
                try:
                    self._ok(d.cuMemcpyDtoH(sink, src, n), "cuMemcpyDtoH")
                except CudaCallError as e:
                    err = e
            if err is not None and n:
                sink[:] = bytes(n)
            src += n
        if err is not None:
            log.warning("device-to-host copy failed after its reply started: %s", err.message)
            self._pending = err

    def copy(self, dst: int, src: int, n: int) -> None:
        dctx, sctx = self._ptr_ctx(dst, n), self._ptr_ctx(src, n)
        self._use(dctx)
        self._quiesce(dctx)
        dctx.dirty = sctx.dirty = True
        if sctx is dctx:
            self._ok(self.d.cuMemcpyDtoD(dst, src, n), "cuMemcpyDtoD")
        else:
            self._quiesce(sctx)
            self._ok(self.d.cuMemcpyPeer(dst, dctx.handle, src, sctx.handle, n), "cuMemcpyPeer")
        self._quiesce(dctx)

    def memset(self, ptr: int, value: int, elem_size: int, count: int) -> None:
        ctx = self._ptr_ctx(ptr, elem_size * count)
        self._use(ctx)
        self._quiesce(ctx)
        ctx.dirty = True
        d = self.d
        if elem_size == 1:
            self._ok(d.cuMemsetD8(ptr, value & 0xFF, count), "cuMemsetD8")
        elif elem_size == 2:
            self._ok(d.cuMemsetD16(ptr, value & 0xFFFF, count), "cuMemsetD16")
        elif elem_size == 4:
            self._ok(d.cuMemsetD32(ptr, value & 0xFFFFFFFF, count), "cuMemsetD32")
        else:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"memset of {elem_size}-byte elements")
        self._quiesce(ctx)

    # -- streams and events -------------------------------------------------------------------

    def synchronize(self, stream: Any = None) -> None:
        self._raise_pending()
        d = self.d
        if stream is None:
            for ctx in self._ctxs.values():
                if not ctx.dirty:  # nothing issued since its last synchronize: nothing to wait for
                    continue
                self._use(ctx)
                streams = [0, *(s.handle for s in self._streams if s.ctx is ctx)]
                self._watched(lambda hs=streams: all(self._ready(h) for h in hs),  # type: ignore[misc]
                              d.cuCtxSynchronize, "cuCtxSynchronize", ctx)
                ctx.dirty = False
        else:
            self._use(stream.ctx)
            self._watched(lambda: self._ready(stream.handle), lambda: d.cuStreamSynchronize(stream.handle),
                          "cuStreamSynchronize", stream.ctx)

    def _wait_in_thread(self, wait: Callable[[], Any], what: str, ctx: _Ctx, alive: Callable[[], None]) -> Any:
        box: list[Any] = []
        finished = threading.Event()

        def run() -> None:
            try:
                self.d.cuCtxSetCurrent(ctx.handle)  # the driver's current context is per thread
                box.append(wait())
            finally:
                finished.set()

        threading.Thread(target=run, name=f"orion {what}", daemon=True).start()
        while not finished.wait(0.5):
            try:
                alive()
            except BaseException:
                self._abandoned = True
                raise
        if not box:
            raise CudaCallError(E.CUDA_ERROR_UNKNOWN, f"{what}: the waiting thread failed")
        return box[0]

    def _ready(self, stream_handle: Any) -> bool:
        return int(self.d.cuStreamQuery(stream_handle)[0]) != _NOT_READY

    def _watched(self, done: Callable[[], bool], wait: Callable[[], Any], what: str, ctx: _Ctx) -> None:
        """``wait()`` (a blocking driver call), its result checked. Work that ends within
        LONG_WAIT_S is polled for (``done``); longer work is waited for in a helper thread while
        this one asks ``liveness`` every 0.5 s, so that a client gone during a long kernel ends
        its session now: the worker then leaves the GPU state to the driver's teardown at exit."""
        alive = self.liveness
        if alive is not None:
            end = time.perf_counter() + LONG_WAIT_S
            while not done():
                if time.perf_counter() > end:
                    self._ok(self._wait_in_thread(wait, what, ctx, alive), what)
                    return
        self._ok(wait(), what)

    def stream_create(self, flags: int, priority: int = 0) -> Any:
        ctx = self._cur_ctx()
        self._use(ctx)
        if priority:
            handle = self._ok(self.d.cuStreamCreateWithPriority(flags, priority), "cuStreamCreateWithPriority")
        else:
            handle = self._ok(self.d.cuStreamCreate(flags), "cuStreamCreate")
        s = _Stream(handle, ctx, bool(flags & CU_STREAM_NON_BLOCKING))
        ctx.nonblocking += s.nonblocking
        self._streams.add(s)
        return s

    def stream_destroy(self, stream: Any) -> None:
        self._streams.discard(stream)
        stream.ctx.nonblocking -= stream.nonblocking
        self._use(stream.ctx)
        self._ok(self.d.cuStreamDestroy(stream.handle), "cuStreamDestroy")

    def stream_query(self, stream: Any) -> bool:
        self._raise_pending()
        ctx = self._cur_ctx() if stream is None else stream.ctx
        self._use(ctx)
        err, = self.d.cuStreamQuery(0 if stream is None else stream.handle)
        if int(err) == _NOT_READY:
            return False
        self._ok((err,), "cuStreamQuery")
        return True

    def event_create(self, flags: int) -> Any:
        ctx = self._cur_ctx()
        self._use(ctx)
        ev = _Event(self._ok(self.d.cuEventCreate(flags), "cuEventCreate"), ctx)
        self._events.add(ev)
        return ev

    def module_global(self, module: Any, name: str) -> tuple[int, int, Any]:
        if not module.loaded:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, "module was unloaded")
        self._use(module.ctx)
        dptr, size = self._ok(self.d.cuModuleGetGlobal(module.handle, name.encode()), f"cuModuleGetGlobal({name})")
        return int(dptr), int(size), dptr

    def func_attribute(self, func: Any, attrib: int) -> int:
        self._use(func.module.ctx)
        return int(self._ok(self.d.cuFuncGetAttribute(self.d.CUfunction_attribute(attrib), func.handle),
                            "cuFuncGetAttribute"))

    def func_set_attribute(self, func: Any, attrib: int, value: int) -> None:
        self._use(func.module.ctx)
        self._ok(self.d.cuFuncSetAttribute(func.handle, self.d.CUfunction_attribute(attrib), value),
                 "cuFuncSetAttribute")

    def occupancy_blocks(self, func: Any, block: int, dynamic_smem: int, flags: int) -> int:
        self._use(func.module.ctx)
        return int(self._ok(self.d.cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
            func.handle, block, dynamic_smem, flags), "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags"))

    def occupancy_dynamic_smem(self, func: Any, blocks: int, block: int) -> int:
        self._use(func.module.ctx)
        return int(self._ok(self.d.cuOccupancyAvailableDynamicSMemPerBlock(func.handle, blocks, block),
                            "cuOccupancyAvailableDynamicSMemPerBlock"))

    def occupancy_clusters(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                           cluster: tuple[int, int, int]) -> int:
        d = self.d
        cfg = d.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = grid
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = block
        cfg.sharedMemBytes = smem
        if cluster[0]:
            attr = d.CUlaunchAttribute()
            attr.id = d.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = cluster
            cfg.attrs = [attr]
            cfg.numAttrs = 1
        self._use(func.module.ctx)
        return int(self._ok(d.cuOccupancyMaxActiveClusters(func.handle, cfg), "cuOccupancyMaxActiveClusters"))

    def ctx_limit(self, limit: int) -> int:
        self._use(self._cur_ctx())
        return int(self._ok(self.d.cuCtxGetLimit(self.d.CUlimit(limit)), "cuCtxGetLimit"))

    def ctx_set_limit(self, limit: int, value: int) -> None:
        self._use(self._cur_ctx())
        self._ok(self.d.cuCtxSetLimit(self.d.CUlimit(limit), value), "cuCtxSetLimit")

    def stream_priority_range(self) -> tuple[int, int]:
        self._use(self._cur_ctx())
        least, greatest = self._ok(self.d.cuCtxGetStreamPriorityRange(), "cuCtxGetStreamPriorityRange")
        return int(least), int(greatest)

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        ctx = event.ctx if stream is None else stream.ctx
        self._use(ctx)
        self._ok(self.d.cuStreamWaitEvent(0 if stream is None else stream.handle, event.handle, 0),
                 "cuStreamWaitEvent")

    def event_record(self, event: Any, stream: Any) -> None:
        if stream is not None and stream.ctx is not event.ctx:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, "event and stream belong to different devices")
        self._use(event.ctx)
        self._ok(self.d.cuEventRecord(event.handle, 0 if stream is None else stream.handle), "cuEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._raise_pending()
        self._use(event.ctx)
        d = self.d
        self._watched(lambda: int(d.cuEventQuery(event.handle)[0]) != _NOT_READY,
                      lambda: d.cuEventSynchronize(event.handle), "cuEventSynchronize", event.ctx)

    def event_elapsed(self, start: Any, end: Any) -> float:
        self._use(end.ctx)
        return float(self._ok(self.d.cuEventElapsedTime(start.handle, end.handle), "cuEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._events.discard(event)
        self._use(event.ctx)
        self._ok(self.d.cuEventDestroy(event.handle), "cuEventDestroy")

    def event_query(self, event: Any) -> bool:
        self._use(event.ctx)
        err, = self.d.cuEventQuery(event.handle)
        if int(err) == _NOT_READY:
            return False
        self._ok((err,), "cuEventQuery")
        return True

    # -- modules and launches --------------------------------------------------------------------

    def module_load(self, image: bytes) -> Any:
        kind, data = prepare_image(image)
        ctx = self._cur_ctx()
        self._use(ctx)
        handle = self._ok(self.d.cuModuleLoadData(data), f"cuModuleLoadData ({kind})")
        m = _Module(handle, ctx, self._current_dev, kind, data)
        self._modules.add(m)
        return m

    def module_unload(self, module: Any) -> None:
        if not module.loaded:
            return
        module.loaded = False
        self._modules.discard(module)
        self._use(module.ctx)
        self._ok(self.d.cuModuleUnload(module.handle), "cuModuleUnload")

    def _param_slots(self, module: _Module, func: Any, name: str) -> list[ParamSlot]:
        slots: list[ParamSlot] = []
        for i in range(MAX_KERNEL_PARAMS):
            try:
                res = self.d.cuFuncGetParamInfo(func, i)
            except Exception as e:  # noqa: BLE001 - a driver older than CUDA 12.4
                return self._ptx_slots(module, name, f"cuFuncGetParamInfo unavailable: {e}")
            code = int(res[0])
            if code == _INVALID_VALUE:
                break  # past the last parameter
            if code != _SUCCESS:
                if i == 0:
                    return self._ptx_slots(module, name, self._error(code, "cuFuncGetParamInfo").message)
                raise self._error(code, f"cuFuncGetParamInfo({name}, {i})")
            slots.append(ParamSlot(int(res[1]), int(res[2])))
        return slots

    @staticmethod
    def _ptx_slots(module: _Module, name: str, why: str) -> list[ParamSlot]:
        if module.kind == "ptx":
            table = ptx_parser.entries(module.image.split(b"\0", 1)[0].decode("utf-8", "replace"))
            if name in table:
                return table[name]
        raise CudaCallError(E.CUDA_ERROR_NOT_SUPPORTED, f"{name}: parameter layout unknown ({why})")

    def can_access_peer(self, physical: int, peer: int) -> bool:
        d = self.d
        a = self._ok(d.cuDeviceGet(physical), "cuDeviceGet")
        b = self._ok(d.cuDeviceGet(peer), "cuDeviceGet")
        return bool(self._ok(d.cuDeviceCanAccessPeer(a, b), "cuDeviceCanAccessPeer"))

    def enable_peer(self, physical: int, peer: int) -> None:
        ctx, other = self._ctxs[physical], self._ctxs[peer]
        self._use(ctx)
        err = int(self.d.cuCtxEnablePeerAccess(other.handle, 0)[0])
        if err and err != E.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED:  # another vGPU pair enabled it
            raise self._error(err, f"cuCtxEnablePeerAccess(GPU {physical} -> GPU {peer})")

    def module_function_names(self, module: Any) -> list[str]:
        if not module.loaded:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, "module was unloaded")
        self._use(module.ctx)
        n = self._ok(self.d.cuModuleGetFunctionCount(module.handle), "cuModuleGetFunctionCount")
        if not n:
            return []
        fns = self._ok(self.d.cuModuleEnumerateFunctions(n, module.handle), "cuModuleEnumerateFunctions")
        return [self._ok(self.d.cuFuncGetName(f), "cuFuncGetName").decode() for f in fns]

    def get_function(self, module: Any, name: str) -> tuple[Any, list[ParamSlot]]:
        if not module.loaded:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, "module was unloaded")
        self._use(module.ctx)
        handle = self._ok(self.d.cuModuleGetFunction(module.handle, name.encode()), f"cuModuleGetFunction({name})")
        slots = self._param_slots(module, handle, name)
        return _Function(handle, module, name, ParamBuffer(slots)), slots

    def launch(self, func: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               shared: int, stream: Any, params: bytes, attrs: LaunchAttrs | None = None) -> float:
        self._raise_pending()
        module = func.module
        if not module.loaded:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, f"{func.name}: its module was unloaded")
        ctx = module.ctx
        if stream is not None and stream.ctx is not ctx:
            raise CudaCallError(E.CUDA_ERROR_INVALID_HANDLE, f"{func.name}: stream belongs to another device")
        self._use(ctx)
        ctx.dirty = True
        d = self.d
        kp = func.params.fill(params)
        hs = 0 if stream is None else stream.handle
        if attrs is None:
            args = (func.handle, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared, hs,
                    kp if kp else None, 0)
            if self.vgpus[module.dev].ratio >= 100:
                err = d.cuLaunchKernel(*args)[0]
                if err:  # CUDA_SUCCESS is 0
                    raise self._error(int(err), f"cuLaunchKernel({func.name})")
                return 0.0
            what = "cuLaunchKernel"

            def issue() -> Any:
                return d.cuLaunchKernel(*args)[0]
        else:
            config = self._configs.get(attrs)
            if config is None:
                config = self._configs[attrs] = self._launch_config(attrs)
            config.gridDimX, config.gridDimY, config.gridDimZ = grid
            config.blockDimX, config.blockDimY, config.blockDimZ = block
            config.sharedMemBytes = shared
            config.hStream = hs
            what = "cuLaunchKernelEx"

            def issue() -> Any:
                return d.cuLaunchKernelEx(config, func.handle, kp if kp else None, 0)[0]

            if self.vgpus[module.dev].ratio >= 100:
                err = issue()
                if err:
                    raise self._error(int(err), f"{what}({func.name})")
                return 0.0
        # A compute share below 100 %: measure the kernel's device time (blocking until it ends).
        if ctx.timing is None:
            ctx.timing = (self._ok(d.cuEventCreate(0), "cuEventCreate"), self._ok(d.cuEventCreate(0), "cuEventCreate"))
        t0, t1 = ctx.timing
        self._ok(d.cuEventRecord(t0, hs), "cuEventRecord")
        err = issue()
        if err:
            raise self._error(int(err), f"{what}({func.name})")
        self._ok(d.cuEventRecord(t1, hs), "cuEventRecord")
        self._ok(d.cuEventSynchronize(t1), f"{func.name}")
        ms = self._ok(d.cuEventElapsedTime(t0, t1), "cuEventElapsedTime")
        return max(0.0, float(ms) / 1000.0)

    def _launch_config(self, attrs: LaunchAttrs) -> Any:
        """A CUlaunchConfig carrying ``attrs`` (its grid, block, shared memory and stream set per launch)."""
        d = self.d
        ids = d.CUlaunchAttributeID
        out = []

        def add(ident: Any) -> Any:
            a = d.CUlaunchAttribute()
            a.id = ident
            out.append(a)
            return a.value

        if attrs.cluster != (0, 0, 0):
            v = add(ids.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
            v.clusterDim.x, v.clusterDim.y, v.clusterDim.z = attrs.cluster
        if attrs.policy:
            add(ids.CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE).clusterSchedulingPolicyPreference = \
                d.CUclusterSchedulingPolicy(attrs.policy)
        if attrs.cooperative:
            add(ids.CU_LAUNCH_ATTRIBUTE_COOPERATIVE).cooperative = 1
        if attrs.programmatic:
            add(ids.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION).programmaticStreamSerializationAllowed = 1
        if attrs.priority:
            add(ids.CU_LAUNCH_ATTRIBUTE_PRIORITY).priority = attrs.priority
        config = d.CUlaunchConfig()
        config.attrs = out
        config.numAttrs = len(out)
        return config

    # -- teardown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Free everything; errors (a context left broken by a faulting kernel) are logged, not raised."""
        if self._closed:
            return
        self._closed = True
        if self._abandoned:  # a client gone during a long wait: the driver frees all at exit
            log.info("close: the client left during a long wait; the GPU state goes with the worker")
            return
        d = self.d

        def quiet(res: Any, what: str) -> None:
            try:
                if int(res[0]) != _SUCCESS:
                    log.debug("close: %s: %s", what, self._error(int(res[0]), what).message)
            except Exception:  # noqa: BLE001
                pass

        for ctx in self._ctxs.values():
            try:
                d.cuCtxSetCurrent(ctx.handle)
                _tls.ctx = ctx
            except Exception:  # noqa: BLE001
                continue
            if ctx is next(iter(self._ctxs.values())):
                for addr in self._registered:
                    quiet(d.cuMemHostUnregister(addr), "cuMemHostUnregister")
            for base, _size, dev, dptr in self.mem.items():
                if self._dev_ctx(dev) is ctx:
                    quiet(d.cuMemFree(dptr), "cuMemFree")
                    self.mem.remove(base)
            for ev in [e for e in self._events if e.ctx is ctx]:
                quiet(d.cuEventDestroy(ev.handle), "cuEventDestroy")
            if ctx.timing is not None:
                for ev in ctx.timing:
                    quiet(d.cuEventDestroy(ev), "cuEventDestroy")
            for s in [s for s in self._streams if s.ctx is ctx]:
                quiet(d.cuStreamDestroy(s.handle), "cuStreamDestroy")
            for m in [m for m in self._modules if m.ctx is ctx]:
                m.loaded = False
                quiet(d.cuModuleUnload(m.handle), "cuModuleUnload")
        for ctx in self._ctxs.values():
            ctx.alive = False
            try:
                quiet(d.cuCtxDestroy(ctx.handle), "cuCtxDestroy")
            except Exception:  # noqa: BLE001
                pass
            if getattr(_tls, "ctx", None) is ctx:
                _tls.ctx = None
        for base, *_ in self.mem.items():
            self.mem.remove(base)
        self._registered.clear()
        self._events.clear()
        self._streams.clear()
        self._modules.clear()
        self._ctxs.clear()


class CudaBackend(Backend):
    """The host's GPUs as seen by a probe in a child process (cached); sessions run on them.

    ``probe_result`` may be given (tests); otherwise the first ``gpus()``/``driver_version()``
    runs the probe. Nothing here initialises CUDA in the calling process: sessions do, in oriond's
    forked workers. ``driver`` replaces ``cuda.bindings.driver`` (tests without a GPU).
    """

    name = "cuda"
    preferred_chunk = 512 << 10

    def __init__(self, probe_result: ProbeResult | None = None, probe_timeout: float = 120.0,
                 driver: Any = None) -> None:
        self._probe = probe_result
        self._timeout = probe_timeout
        self._driver = driver
        self._lock = threading.Lock()

    def _info(self) -> ProbeResult:
        with self._lock:
            if self._probe is None:
                self._probe = probe(self._timeout)
            res = self._probe
        if res.error:
            raise BackendError(f"cuda backend: {res.error}")
        if not res.gpus:
            raise BackendError("cuda backend: CUDA driver present but no GPU")
        return res

    def gpus(self) -> list[PhysicalGpu]:
        return list(self._info().gpus)

    def driver_version(self) -> int:
        return self._info().driver_version

    def open_session(self, vgpus: list[VGpu]) -> CudaSession:
        n = len(self.gpus())
        for v in vgpus:
            if not 0 <= v.physical < n:
                raise BackendError(f"vGPU on GPU {v.physical}, this host has {n} GPU(s)")
        try:
            return CudaSession(vgpus, self._driver)
        except CudaCallError as e:
            raise BackendError(f"cannot open CUDA contexts: {e.message}") from None

    def describe(self) -> str:
        info = self._info()
        v = info.driver_version
        gpus = ", ".join(f"GPU {g.index} {g.name} ({g.total_mem >> 20} MiB)" for g in info.gpus)
        return f"cuda: driver API {v // 1000}.{v % 1000 // 10}, {len(info.gpus)} GPU(s): {gpus}"
