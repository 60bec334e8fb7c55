"""A drop-in for ``cuda.bindings.driver`` that forwards every call to oriond.

Same function names, arguments and return conventions as cuda-python (``(CUresult, values...)``,
never an exception for a CUDA error), the same enums (generated from cuda-bindings) and handle
types with the same behaviour (``int(h)``, ``getPtr()``). Host buffers may be objects with the
buffer protocol or integer addresses. Standard library only: no driver, no GPU, no cuda-python.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any

from ..cuda_enums import (  # noqa: F401  (re-exported API)
    CUctx_flags,
    CUdevice_attribute,
    CUevent_flags,
    CUfunction_attribute,
    CUjit_option,
    CUlimit,
    CUmemorytype,
    CUresult,
    CUstream_flags,
    CUstreamCaptureMode,
    CUstreamCaptureStatus,
)
from ..cuda_messages import MESSAGES
from ..errors import OrionError, Refused, TransportError, UsageError
from ..wire import PLANS, Call
from . import runtime as _runtime_module
from .runtime import get_runtime, say

_S = CUresult.CUDA_SUCCESS
_OK = (_S,)
"""The result of a call that succeeded and returns nothing (one tuple, not built per call)."""
_UNKNOWN = CUresult.CUDA_ERROR_UNKNOWN
_results = {int(r): r for r in CUresult}


def _res(code: int) -> Any:
    return _results.get(code, _UNKNOWN)


class _Handle:
    """Base of the opaque handle types: an integer value, like cuda-python's."""

    __slots__ = ("_value", "_cell")

    def __init__(self, init_value: Any = 0, _ptr: int = 0) -> None:
        self._value = int(init_value) if init_value is not None else 0
        self._cell: ctypes.c_uint64 | None = None

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"

    def getPtr(self) -> int:
        if self._cell is None:
            self._cell = ctypes.c_uint64(self._value)
        else:
            self._cell.value = self._value
        return ctypes.addressof(self._cell)


class CUdeviceptr(_Handle):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"<CUdeviceptr {self._value}>"


class CUdevice(_Handle):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"<CUdevice {self._value}>"


class CUcontext(_Handle):
    __slots__ = ()


class CUstream(_Handle):
    __slots__ = ()


class CUevent(_Handle):
    __slots__ = ()


class CUmodule(_Handle):
    __slots__ = ()


class CUfunction(_Handle):
    __slots__ = ()


class CUgraph(_Handle):
    __slots__ = ()


class CUgraphExec(_Handle):
    __slots__ = ()


class _Kernel:
    """What the client knows of a function handle: its name and parameter layout, plus what
    packing needs precomputed: each parameter's size and the zero padding before it."""

    __slots__ = ("name", "layout", "total", "sizes", "pads")

    def __init__(self, name: str, layout: list[tuple[int, int]]) -> None:
        self.name = name
        self.layout = layout
        self.total = max((o + s for o, s in layout), default=0)
        self.sizes = tuple(s for _, s in layout)
        pads, end = [], 0
        for off, size in layout:
            pads.append(bytes(max(0, off - end)))
            end = off + size
        self.pads = tuple(pads)


class CUuuid:
    __slots__ = ("bytes",)

    def __init__(self, raw: bytes = bytes(16)) -> None:
        self.bytes = raw

    def __repr__(self) -> str:
        return f"<CUuuid {self.bytes.hex()}>"


class CUctxCreateParams:
    """Accepted and ignored (execution affinity and CIG are not remoted)."""


_OwnUuid = CUuuid
_ADOPTABLE = ("CUdeviceptr", "CUdevice", "CUcontext", "CUstream", "CUevent", "CUmodule", "CUfunction",
              "CUuuid", "CUctxCreateParams", "CUresult", "CUdevice_attribute", "CUctx_flags",
              "CUstream_flags", "CUevent_flags", "CUjit_option", "CUfunction_attribute", "CUmemorytype",
              "CUlimit", "CUstreamCaptureMode", "CUstreamCaptureStatus", "CUgraph", "CUgraphExec")


def adopt_real_types() -> bool:
    """Use cuda-bindings' own enums and handle types when it is installed (the application may
    mix this module with other cuda.bindings modules, e.g. nvrtc, which check those types).
    Without cuda-bindings the generated enums and the small handle classes above stay."""
    global _real, _S, _results
    if _real is None:
        _real = _load_real_driver()
    if _real is False:
        return False
    g = globals()
    for name in _ADOPTABLE:
        if hasattr(_real, name):
            g[name] = getattr(_real, name)
    _results = {int(r): r for r in g["CUresult"]}
    _S = g["CUresult"].CUDA_SUCCESS
    g["_OK"] = (_S,)
    return True


_functions: dict[int, _Kernel] = {}
_real: Any = None
_current_ctx = CUcontext(0)
_initialized = False
_failed_once = False
_ended = 0
"""After oriond refused to go on: the status every later call returns (its refusal's)."""


def _h(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, int):
        return x
    try:
        return int(x)
    except (TypeError, ValueError):
        raise TypeError(f"expected a handle or an int, got {type(x).__name__}") from None


def _call(code: int, args: tuple, blob: Any = None, blob_len: int = 0,
          out: memoryview | None = None) -> tuple[int, tuple, bytes]:
    """One remoted call: (status, reply values, reply blob). Never raises for the application:
    a refusal by oriond is its status (said once, with the reason), a broken session
    CUDA_ERROR_DEVICE_UNAVAILABLE, arguments that do not fit the wire CUDA_ERROR_INVALID_VALUE."""
    global _failed_once, _ended
    if not _initialized:
        return int(CUresult.CUDA_ERROR_NOT_INITIALIZED), (), b""
    # The process runtime, read without get_runtime's lock once it exists (a module global read
    # is atomic; reset_runtime replaces it as a whole). The call itself is serialised by rt.lock.
    rt = _runtime_module._runtime or get_runtime()
    try:
        with rt.lock:
            conn = rt.conn
            if conn is None:
                return _ended or int(CUresult.CUDA_ERROR_DEINITIALIZED), (), b""
            return conn.call(code, args, blob, blob_len, out)
    except Refused as e:
        _ended = e.status or int(CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE)
        if not _failed_once:
            _failed_once = True
            say(f"oriond ended the session: {e.reason}", "ERROR")
            rt.log.error("%s refused by oriond (status %d): %s", PLANS[code].name, e.status, e.reason)
        _drop(rt)
        return _ended, (), b""
    except TransportError as e:
        if not _failed_once:
            _failed_once = True
            say(f"lost the connection to oriond: {e}", "ERROR")
            rt.log.error("connection lost during %s: %s", PLANS[code].name, e)
        _drop(rt)
        return int(CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE), (), b""
    except UsageError as e:
        rt.log.warning("%s: %s", PLANS[code].name, e)
        return int(CUresult.CUDA_ERROR_INVALID_VALUE), (), b""
    except OrionError as e:  # the peer broke the protocol: the session cannot go on
        if not _failed_once:
            _failed_once = True
            say(f"oriond sent an invalid reply, the session is closed: {e}", "ERROR")
            rt.log.error("protocol error during %s: %s", PLANS[code].name, e)
        _drop(rt)
        return int(CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE), (), b""


def _drop(rt: Any) -> None:
    """Stop using the session; the runtime's shutdown says BYE to the links still open."""
    with rt.lock:
        rt.conn = None


def _host_view(buf: Any, n: int, writable: bool) -> memoryview:
    """A byte view of ``n`` bytes of a host buffer (buffer protocol object or integer address)."""
    try:
        mv = memoryview(buf)
    except TypeError:
        addr = int(buf)
        if addr == 0 and n:
            raise ValueError("NULL host pointer") from None
        return memoryview((ctypes.c_char * n).from_address(addr)).cast("B") if n else memoryview(b"")
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B") if mv.c_contiguous else memoryview(bytes(mv))
    if writable and mv.readonly:
        raise ValueError("destination host buffer is read-only")
    if len(mv) < n:
        raise ValueError(f"host buffer of {len(mv)} bytes is smaller than {n}")
    return mv[:n]


# -- initialisation and version --------------------------------------------------------------


def cuInit(Flags: int) -> tuple[CUresult]:
    global _initialized
    rt = get_runtime()
    try:
        rt.connect()
    except Refused as e:  # by oriond (its status), or by the controller (no vGPU: NO_DEVICE)
        for line in str(e).splitlines():
            say(line, "ERROR")
        return (_res(e.status) if e.status else CUresult.CUDA_ERROR_NO_DEVICE,)
    except OrionError as e:
        for line in str(e).splitlines():
            say(line, "ERROR")
        return (CUresult.CUDA_ERROR_NO_DEVICE,)
    _initialized = True
    st, _, _ = _call(Call.cuInit, (int(Flags),))
    return (_res(st),)


def cuDriverGetVersion() -> tuple[CUresult, int]:
    if not _initialized:
        return (CUresult.CUDA_SUCCESS, 12040)
    st, v, _ = _call(Call.cuDriverGetVersion, ())
    return (_res(st), v[0] if not st else 0)


def cuGetErrorName(error: Any) -> tuple[CUresult, bytes]:
    try:
        return (_S, CUresult(int(error)).name.encode())
    except ValueError:
        return (CUresult.CUDA_ERROR_INVALID_VALUE, b"")




def cuGetErrorString(error: Any) -> tuple[CUresult, bytes]:
    try:
        r = CUresult(int(error))
    except ValueError:
        return (CUresult.CUDA_ERROR_INVALID_VALUE, b"")
    return (_S, MESSAGES.get(r, r.name.removeprefix("CUDA_ERROR_").replace("_", " ").lower()).encode())


# -- hand-written bindings (client="custom" in the call spec) ----------------------------------


def cuDeviceGetName(length: int, dev: Any) -> tuple[CUresult, bytes]:
    st, _v, blob = _call(Call.cuDeviceGetName, (int(length), _h(dev)))
    if st:
        return (_res(st), b"")
    pad = max(0, int(length) - len(blob) - 1)
    return (_S, blob + b"\0" + b" " * pad)


def cuDeviceGetUuid(dev: Any) -> tuple[CUresult, CUuuid]:
    st, v, _ = _call(Call.cuDeviceGetUuid, (_h(dev),))
    return (_res(st), _uuid(v[0] if not st else bytes(16)))


def _uuid(raw: bytes) -> Any:
    if CUuuid is _OwnUuid:
        return CUuuid(raw)
    u: Any = CUuuid()
    ctypes.memmove(u.getPtr(), raw, 16)
    return u


def cuDeviceComputeCapability(dev: Any) -> tuple[CUresult, int, int]:
    """Client-side: two attribute queries."""
    st, major = cuDeviceGetAttribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    _, minor = cuDeviceGetAttribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return (st, major, minor)


def cuCtxCreate(*args: Any) -> tuple[CUresult, CUcontext]:
    """cuda-bindings 13: (ctxCreateParams, flags, dev); 12.x: (flags, dev)."""
    global _current_ctx
    if len(args) == 3:
        _params, flags, dev = args
    elif len(args) == 2:
        flags, dev = args
    else:
        raise TypeError("cuCtxCreate(ctxCreateParams, flags, dev)")
    st, v, _ = _call(Call.cuCtxCreate, (int(flags), _h(dev)))
    if st:
        return (_res(st), CUcontext(0))
    _current_ctx = CUcontext(v[0])
    return (_S, _current_ctx)


def cuCtxDestroy(ctx: Any) -> tuple[CUresult]:
    global _current_ctx
    st, _, _ = _call(Call.cuCtxDestroy, (_h(ctx),))
    if not st and _h(ctx) == int(_current_ctx):
        _current_ctx = CUcontext(0)
    return (_res(st),)


def cuCtxSetCurrent(ctx: Any) -> tuple[CUresult]:
    global _current_ctx
    st, _, _ = _call(Call.cuCtxSetCurrent, (_h(ctx),))
    if not st:
        _current_ctx = CUcontext(_h(ctx))
    return (_res(st),)


def cuCtxGetCurrent() -> tuple[CUresult, CUcontext]:
    """Client-side: the context this process made current."""
    if not _initialized:
        return (CUresult.CUDA_ERROR_NOT_INITIALIZED, CUcontext(0))
    return (_S, _current_ctx)



_FATBIN_MAGIC = 0xBA55ED50


def _image_from_address(addr: int) -> bytes:
    head = ctypes.string_at(addr, 4)
    if head == b"\x7fELF":
        eh = ctypes.string_at(addr, 64)
        shoff, = struct.unpack_from("<Q", eh, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", eh, 0x3A)
        return ctypes.string_at(addr, shoff + shentsize * shnum)
    if struct.unpack("<I", head)[0] == _FATBIN_MAGIC:
        _m, _ver, hsize, fsize = struct.unpack("<IHHQ", ctypes.string_at(addr, 16))
        return ctypes.string_at(addr, hsize + fsize)
    return ctypes.string_at(addr)


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, str):
        return image.encode()
    if isinstance(image, int):
        return _image_from_address(image)
    try:
        mv = memoryview(image)
    except TypeError:
        return _image_from_address(int(image))
    return mv.cast("B").tobytes() if mv.c_contiguous else bytes(mv)


def cuModuleLoadData(image: Any) -> tuple[CUresult, CUmodule]:
    try:
        data = _image_bytes(image)
    except (TypeError, ValueError):
        return (CUresult.CUDA_ERROR_INVALID_VALUE, CUmodule(0))
    st, v, _ = _call(Call.cuModuleLoadData, (len(data),), data, len(data))
    return (_res(st), CUmodule(v[0] if not st else 0))


def cuModuleGetFunction(hmod: Any, name: Any) -> tuple[CUresult, CUfunction]:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    raw = raw.split(b"\0", 1)[0]
    st, v, blob = _call(Call.cuModuleGetFunction, (_h(hmod), len(raw)), raw, len(raw))
    if st:
        return (_res(st), CUfunction(0))
    _functions[v[0]] = _Kernel(raw.decode("ascii", "replace"),
                               [struct.unpack_from("<II", blob, i) for i in range(0, len(blob), 8)])
    return (_S, CUfunction(v[0]))


def cuModuleGetGlobal(hmod: Any, name: Any) -> tuple[CUresult, CUdeviceptr, int]:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    raw = raw.split(b"\0", 1)[0]
    st, v, _ = _call(Call.cuModuleGetGlobal, (_h(hmod), len(raw)), raw, len(raw))
    if st:
        return (_res(st), CUdeviceptr(0), 0)
    return (_S, CUdeviceptr(v[0]), v[1])


def cuOccupancyMaxActiveClusters(func: Any, config: Any) -> tuple[CUresult, int]:
    """``config`` as cuda-bindings' CUlaunchConfig: grid/block dimensions, sharedMemBytes, attrs."""
    cluster = (0, 0, 0)
    for a in list(getattr(config, "attrs", None) or [])[:int(getattr(config, "numAttrs", 0) or 0)]:
        if int(a.id) == 4:  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            c = a.value.clusterDim
            cluster = (int(c.x), int(c.y), int(c.z))
    dims = tuple(int(getattr(config, n)) for n in ("gridDimX", "gridDimY", "gridDimZ", "blockDimX", "blockDimY",
                                                    "blockDimZ", "sharedMemBytes"))
    st, v, _ = _call(Call.cuOccupancyMaxActiveClusters, (_h(func), *dims, *cluster))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuGraphGetNodeCount(hGraph: Any) -> tuple[CUresult, int]:
    st, v, _ = _call(Call.cuGraphGetNodeCount, (_h(hGraph),))
    return (_res(st), 0) if st else (_S, v[0])


def cuGraphGetNodes(hGraph: Any, numNodes: int = 0) -> tuple[CUresult, list[Any] | None, int]:
    """Only the count (``numNodes=0``, as cuda-bindings' default): nodes are not remoted."""
    if numNodes:
        return (CUresult.CUDA_ERROR_NOT_SUPPORTED, None, 0)
    st, n = cuGraphGetNodeCount(hGraph)
    return (st, None, n)


def _arg_bytes(value: Any, ctype: Any) -> bytes:
    if ctype is None:
        return struct.pack("<Q", _h(value) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, ctypes._SimpleCData):
        return bytes(value)
    if ctype is ctypes.c_void_p:
        return struct.pack("<Q", _h(value))
    return bytes(ctype(value))


_VIEW_CACHE_MAX = 4096
_ptr_views: dict[tuple[int, int], memoryview] = {}
_arg_views: dict[tuple[int, int], memoryview] = {}


def _view(cache: dict[tuple[int, int], memoryview], addr: int, size: int, fmt: str) -> memoryview:
    """A live view of ``size`` bytes at ``addr`` (cached: programs reuse their argument arrays)."""
    v = cache.get((addr, size))
    if v is None:
        if not addr:
            raise ValueError("NULL parameter pointer")
        if len(cache) >= _VIEW_CACHE_MAX:
            cache.clear()
        raw = memoryview((ctypes.c_char * size).from_address(addr)).cast("B")
        v = cache[(addr, size)] = raw if fmt == "B" else raw.cast(fmt)  # type: ignore[call-overload]
    return v


def _pack_params(f: _Kernel, kernelParams: Any) -> bytes:
    """The parameter buffer, laid out as the kernel expects (layout from cuModuleGetFunction).

    ``kernelParams`` as cuda-python takes it: the address of an array of pointers to each
    argument (an int or an object with one, e.g. a NumPy array's ``ctypes.data``), a buffer
    holding that array, or ``((values...), (ctypes types or None...))``.
    """
    if kernelParams is None or isinstance(kernelParams, int) and kernelParams == 0:
        return b""
    sizes, pads = f.sizes, f.pads
    n = len(sizes)
    if isinstance(kernelParams, tuple) and len(kernelParams) == 2 and isinstance(kernelParams[0], (tuple, list)):
        values, types = kernelParams
        if len(values) != n:
            raise ValueError(f"{f.name} takes {n} parameters, {len(values)} given")
        parts: list[bytes | memoryview] = []
        for pad, size, value, ctype in zip(pads, sizes, values, types, strict=True):
            parts.append(pad)
            parts.append(_arg_bytes(value, ctype)[:size].ljust(size, b"\0"))
    else:
        if isinstance(kernelParams, int):
            ptrs: Any = _view(_ptr_views, kernelParams, 8 * n, "Q") if n else ()
        elif hasattr(kernelParams, "__int__") and not hasattr(kernelParams, "__len__"):
            ptrs = _view(_ptr_views, int(kernelParams), 8 * n, "Q") if n else ()
        else:
            ptrs = struct.unpack(f"<{n}Q", memoryview(kernelParams).cast("B")[: 8 * n])
        parts = []
        for pad, size, p in zip(pads, sizes, ptrs, strict=True):
            parts.append(pad)
            parts.append(_view(_arg_views, p, size, "B"))
    raw = b"".join(parts)
    return raw if len(raw) == f.total else raw.ljust(f.total, b"\0")


def cuLaunchKernel(f: Any, gridDimX: int, gridDimY: int, gridDimZ: int, blockDimX: int,
                   blockDimY: int, blockDimZ: int, sharedMemBytes: int, hStream: Any,
                   kernelParams: Any, extra: Any) -> tuple[CUresult]:
    fh = _h(f)
    func = _functions.get(fh)
    if func is None:
        return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
    if extra not in (None, 0) and not (isinstance(extra, (list, tuple)) and not extra):
        return (CUresult.CUDA_ERROR_NOT_SUPPORTED,)
    try:
        params = _pack_params(func, kernelParams)
    except (ValueError, TypeError, OverflowError) as e:
        get_runtime().log.warning("cuLaunchKernel(%s): %s", func.name, e)
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    st, _, _ = _call(Call.cuLaunchKernel, (fh, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY,
                                           blockDimZ, sharedMemBytes, _h(hStream), len(params)),
                     params, len(params))
    return (_res(st),)


# --- BEGIN GENERATED by tools/gen_wire.py from orion_virt/wire/spec.py: do not edit ---


def cuDeviceGetCount() -> tuple[CUresult, Any]:
    """cuDeviceGetCount: remoted (call 3)."""
    st, v, _ = _call(3, ())
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuDeviceGet(ordinal: Any) -> tuple[CUresult, Any]:
    """cuDeviceGet: remoted (call 4)."""
    st, v, _ = _call(4, (_h(ordinal),))
    if st:
        return (_res(st), CUdevice(0))
    return (_S, CUdevice(v[0]))


def cuDeviceTotalMem(dev: Any) -> tuple[CUresult, Any]:
    """cuDeviceTotalMem: remoted (call 6)."""
    st, v, _ = _call(6, (_h(dev),))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuDeviceGetAttribute(attrib: Any, dev: Any) -> tuple[CUresult, Any]:
    """cuDeviceGetAttribute: remoted (call 7)."""
    st, v, _ = _call(7, (int(attrib), _h(dev)))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuDevicePrimaryCtxRetain(dev: Any) -> tuple[CUresult, Any]:
    """cuDevicePrimaryCtxRetain: remoted (call 9)."""
    st, v, _ = _call(9, (_h(dev),))
    if st:
        return (_res(st), CUcontext(0))
    return (_S, CUcontext(v[0]))


def cuDevicePrimaryCtxRelease(dev: Any) -> tuple[CUresult]:
    """cuDevicePrimaryCtxRelease: remoted (call 10)."""
    st, v, _ = _call(10, (_h(dev),))
    return (_res(st),) if st else _OK


def cuCtxSynchronize() -> tuple[CUresult]:
    """cuCtxSynchronize: remoted (call 15)."""
    st, v, _ = _call(15, ())
    return (_res(st),) if st else _OK


def cuMemAlloc(bytesize: Any) -> tuple[CUresult, Any]:
    """cuMemAlloc: remoted (call 16)."""
    st, v, _ = _call(16, (int(bytesize),))
    if st:
        return (_res(st), CUdeviceptr(0))
    return (_S, CUdeviceptr(v[0]))


def cuMemFree(dptr: Any) -> tuple[CUresult]:
    """cuMemFree: remoted (call 17, NO_REPLY)."""
    st, v, _ = _call(17, (_h(dptr),))
    return (_res(st),) if st else _OK


def cuMemGetInfo() -> tuple[CUresult, Any, Any]:
    """cuMemGetInfo: remoted (call 18)."""
    st, v, _ = _call(18, ())
    if st:
        return (_res(st), 0, 0)
    return (_S, v[0], v[1])


def cuMemcpyHtoD(dstDevice: Any, srcHost: Any, ByteCount: Any) -> tuple[CUresult]:
    """cuMemcpyHtoD: remoted (call 19)."""
    n = int(ByteCount)
    try:
        view = _host_view(srcHost, n, writable=False)
    except (ValueError, TypeError):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    st, v, _ = _call(19, (_h(dstDevice), int(ByteCount)), view, n)
    return (_res(st),) if st else _OK


def cuMemcpyDtoH(dstHost: Any, srcDevice: Any, ByteCount: Any) -> tuple[CUresult]:
    """cuMemcpyDtoH: remoted (call 20)."""
    n = int(ByteCount)
    try:
        view = _host_view(dstHost, n, writable=True)
    except (ValueError, TypeError):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    st, v, _ = _call(20, (_h(srcDevice), int(ByteCount)), None, 0, out=view)
    return (_res(st),) if st else _OK


def cuMemcpyDtoD(dstDevice: Any, srcDevice: Any, ByteCount: Any) -> tuple[CUresult]:
    """cuMemcpyDtoD: remoted (call 21)."""
    st, v, _ = _call(21, (_h(dstDevice), _h(srcDevice), int(ByteCount)))
    return (_res(st),) if st else _OK


def cuMemcpyHtoDAsync(dstDevice: Any, srcHost: Any, ByteCount: Any, hStream: Any) -> tuple[CUresult]:
    """cuMemcpyHtoDAsync: remoted (call 22, NO_REPLY)."""
    n = int(ByteCount)
    try:
        view = _host_view(srcHost, n, writable=False)
    except (ValueError, TypeError):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    st, v, _ = _call(22, (_h(dstDevice), int(ByteCount), _h(hStream)), view, n)
    return (_res(st),) if st else _OK


def cuMemcpyDtoHAsync(dstHost: Any, srcDevice: Any, ByteCount: Any, hStream: Any) -> tuple[CUresult]:
    """cuMemcpyDtoHAsync: remoted (call 23). remoted synchronously: the bytes come back in the reply"""
    n = int(ByteCount)
    try:
        view = _host_view(dstHost, n, writable=True)
    except (ValueError, TypeError):
        return (CUresult.CUDA_ERROR_INVALID_VALUE,)
    st, v, _ = _call(23, (_h(srcDevice), int(ByteCount), _h(hStream)), None, 0, out=view)
    return (_res(st),) if st else _OK


def cuMemcpyDtoDAsync(dstDevice: Any, srcDevice: Any, ByteCount: Any, hStream: Any) -> tuple[CUresult]:
    """cuMemcpyDtoDAsync: remoted (call 24, NO_REPLY)."""
    st, v, _ = _call(24, (_h(dstDevice), _h(srcDevice), int(ByteCount), _h(hStream)))
    return (_res(st),) if st else _OK


def cuMemsetD8(dstDevice: Any, uc: Any, N: Any) -> tuple[CUresult]:
    """cuMemsetD8: remoted (call 25)."""
    st, v, _ = _call(25, (_h(dstDevice), int(uc) & 0xFF, int(N)))
    return (_res(st),) if st else _OK


def cuMemsetD32(dstDevice: Any, ui: Any, N: Any) -> tuple[CUresult]:
    """cuMemsetD32: remoted (call 26)."""
    st, v, _ = _call(26, (_h(dstDevice), int(ui) & 0xFFFFFFFF, int(N)))
    return (_res(st),) if st else _OK


def cuMemsetD8Async(dstDevice: Any, uc: Any, N: Any, hStream: Any) -> tuple[CUresult]:
    """cuMemsetD8Async: remoted (call 27, NO_REPLY)."""
    st, v, _ = _call(27, (_h(dstDevice), int(uc) & 0xFF, int(N), _h(hStream)))
    return (_res(st),) if st else _OK


def cuMemsetD32Async(dstDevice: Any, ui: Any, N: Any, hStream: Any) -> tuple[CUresult]:
    """cuMemsetD32Async: remoted (call 28, NO_REPLY)."""
    st, v, _ = _call(28, (_h(dstDevice), int(ui) & 0xFFFFFFFF, int(N), _h(hStream)))
    return (_res(st),) if st else _OK


def cuStreamCreate(Flags: Any) -> tuple[CUresult, Any]:
    """cuStreamCreate: remoted (call 29)."""
    st, v, _ = _call(29, (int(Flags) & 0xFFFFFFFF,))
    if st:
        return (_res(st), CUstream(0))
    return (_S, CUstream(v[0]))


def cuStreamSynchronize(hStream: Any) -> tuple[CUresult]:
    """cuStreamSynchronize: remoted (call 30)."""
    st, v, _ = _call(30, (_h(hStream),))
    return (_res(st),) if st else _OK


def cuStreamDestroy(hStream: Any) -> tuple[CUresult]:
    """cuStreamDestroy: remoted (call 31, NO_REPLY)."""
    st, v, _ = _call(31, (_h(hStream),))
    return (_res(st),) if st else _OK


def cuStreamQuery(hStream: Any) -> tuple[CUresult]:
    """cuStreamQuery: remoted (call 32)."""
    st, v, _ = _call(32, (_h(hStream),))
    return (_res(st),) if st else _OK


def cuEventCreate(Flags: Any) -> tuple[CUresult, Any]:
    """cuEventCreate: remoted (call 33)."""
    st, v, _ = _call(33, (int(Flags) & 0xFFFFFFFF,))
    if st:
        return (_res(st), CUevent(0))
    return (_S, CUevent(v[0]))


def cuEventRecord(hEvent: Any, hStream: Any) -> tuple[CUresult]:
    """cuEventRecord: remoted (call 34, NO_REPLY)."""
    st, v, _ = _call(34, (_h(hEvent), _h(hStream)))
    return (_res(st),) if st else _OK


def cuEventSynchronize(hEvent: Any) -> tuple[CUresult]:
    """cuEventSynchronize: remoted (call 35)."""
    st, v, _ = _call(35, (_h(hEvent),))
    return (_res(st),) if st else _OK


def cuEventElapsedTime(hStart: Any, hEnd: Any) -> tuple[CUresult, Any]:
    """cuEventElapsedTime: remoted (call 36)."""
    st, v, _ = _call(36, (_h(hStart), _h(hEnd)))
    if st:
        return (_res(st), 0.0)
    return (_S, v[0])


def cuEventDestroy(hEvent: Any) -> tuple[CUresult]:
    """cuEventDestroy: remoted (call 37, NO_REPLY)."""
    st, v, _ = _call(37, (_h(hEvent),))
    return (_res(st),) if st else _OK


def cuEventQuery(hEvent: Any) -> tuple[CUresult]:
    """cuEventQuery: remoted (call 38)."""
    st, v, _ = _call(38, (_h(hEvent),))
    return (_res(st),) if st else _OK


def cuModuleUnload(hmod: Any) -> tuple[CUresult]:
    """cuModuleUnload: remoted (call 41, NO_REPLY)."""
    st, v, _ = _call(41, (_h(hmod),))
    return (_res(st),) if st else _OK


def cuStreamCreateWithPriority(flags: Any, priority: Any) -> tuple[CUresult, Any]:
    """cuStreamCreateWithPriority: remoted (call 43)."""
    st, v, _ = _call(43, (int(flags) & 0xFFFFFFFF, int(priority)))
    if st:
        return (_res(st), CUstream(0))
    return (_S, CUstream(v[0]))


def cuCtxGetStreamPriorityRange() -> tuple[CUresult, Any, Any]:
    """cuCtxGetStreamPriorityRange: remoted (call 44)."""
    st, v, _ = _call(44, ())
    if st:
        return (_res(st), 0, 0)
    return (_S, v[0], v[1])


def cuStreamWaitEvent(hStream: Any, hEvent: Any, Flags: Any) -> tuple[CUresult]:
    """cuStreamWaitEvent: remoted (call 45, NO_REPLY)."""
    st, v, _ = _call(45, (_h(hStream), _h(hEvent), int(Flags) & 0xFFFFFFFF))
    return (_res(st),) if st else _OK


def cuFuncGetAttribute(attrib: Any, hfunc: Any) -> tuple[CUresult, Any]:
    """cuFuncGetAttribute: remoted (call 46)."""
    st, v, _ = _call(46, (int(attrib), _h(hfunc)))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuFuncSetAttribute(hfunc: Any, attrib: Any, value: Any) -> tuple[CUresult]:
    """cuFuncSetAttribute: remoted (call 47)."""
    st, v, _ = _call(47, (_h(hfunc), int(attrib), int(value)))
    return (_res(st),) if st else _OK


def cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    func: Any, blockSize: Any, dynamicSMemSize: Any, flags: Any,
) -> tuple[CUresult, Any]:
    """cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags: remoted (call 48)."""
    st, v, _ = _call(48, (_h(func), int(blockSize), int(dynamicSMemSize), int(flags) & 0xFFFFFFFF))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuOccupancyAvailableDynamicSMemPerBlock(func: Any, numBlocks: Any, blockSize: Any) -> tuple[CUresult, Any]:
    """cuOccupancyAvailableDynamicSMemPerBlock: remoted (call 49)."""
    st, v, _ = _call(49, (_h(func), int(numBlocks), int(blockSize)))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuCtxGetLimit(limit: Any) -> tuple[CUresult, Any]:
    """cuCtxGetLimit: remoted (call 50)."""
    st, v, _ = _call(50, (int(limit),))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuCtxSetLimit(limit: Any, value: Any) -> tuple[CUresult]:
    """cuCtxSetLimit: remoted (call 51)."""
    st, v, _ = _call(51, (int(limit), int(value)))
    return (_res(st),) if st else _OK


def cuPointerGetAttribute(attribute: Any, ptr: Any) -> tuple[CUresult, Any]:
    """cuPointerGetAttribute: remoted (call 53). answered from the session's allocations"""
    st, v, _ = _call(53, (int(attribute), int(ptr)))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuStreamBeginCapture_v2(hStream: Any, mode: Any) -> tuple[CUresult]:
    """cuStreamBeginCapture_v2: remoted (call 55). oriond records the stream's work until cuStreamEndCapture"""
    st, v, _ = _call(55, (_h(hStream), int(mode)))
    return (_res(st),) if st else _OK


def cuStreamEndCapture(hStream: Any) -> tuple[CUresult, Any]:
    """cuStreamEndCapture: remoted (call 56)."""
    st, v, _ = _call(56, (_h(hStream),))
    if st:
        return (_res(st), CUgraph(0))
    return (_S, CUgraph(v[0]))


def cuStreamGetCaptureInfo(hStream: Any) -> tuple[CUresult, Any, Any]:
    """cuStreamGetCaptureInfo: remoted (call 57)."""
    st, v, _ = _call(57, (_h(hStream),))
    if st:
        return (_res(st), 0, 0)
    return (_S, v[0], v[1])


def cuGraphInstantiateWithFlags(hGraph: Any, flags: Any) -> tuple[CUresult, Any]:
    """cuGraphInstantiateWithFlags: remoted (call 58)."""
    st, v, _ = _call(58, (_h(hGraph), int(flags)))
    if st:
        return (_res(st), CUgraphExec(0))
    return (_S, CUgraphExec(v[0]))


def cuGraphLaunch(hGraphExec: Any, hStream: Any) -> tuple[CUresult]:
    """cuGraphLaunch: remoted (call 59, NO_REPLY)."""
    st, v, _ = _call(59, (_h(hGraphExec), _h(hStream)))
    return (_res(st),) if st else _OK


def cuGraphExecDestroy(hGraphExec: Any) -> tuple[CUresult]:
    """cuGraphExecDestroy: remoted (call 60, NO_REPLY)."""
    st, v, _ = _call(60, (_h(hGraphExec),))
    return (_res(st),) if st else _OK


def cuGraphDestroy(hGraph: Any) -> tuple[CUresult]:
    """cuGraphDestroy: remoted (call 61, NO_REPLY)."""
    st, v, _ = _call(61, (_h(hGraph),))
    return (_res(st),) if st else _OK


def cuDeviceCanAccessPeer(dev: Any, peerDev: Any) -> tuple[CUresult, Any]:
    """cuDeviceCanAccessPeer: remoted (call 71). dev can use peerDev's memory: vGPUs of one GPU, peer GPUs"""
    st, v, _ = _call(71, (_h(dev), _h(peerDev)))
    if st:
        return (_res(st), 0)
    return (_S, v[0])


def cuCtxEnablePeerAccess(peerContext: Any, Flags: Any) -> tuple[CUresult]:
    """cuCtxEnablePeerAccess: remoted (call 72)."""
    st, v, _ = _call(72, (_h(peerContext), int(Flags) & 0xFFFFFFFF))
    return (_res(st),) if st else _OK


def cuCtxDisablePeerAccess(peerContext: Any) -> tuple[CUresult]:
    """cuCtxDisablePeerAccess: remoted (call 73)."""
    st, v, _ = _call(73, (_h(peerContext),))
    return (_res(st),) if st else _OK


def cuMemcpyPeer(dstDevice: Any, dstContext: Any, srcDevice: Any, srcContext: Any, ByteCount: Any) -> tuple[CUresult]:
    """cuMemcpyPeer: remoted (call 74)."""
    st, v, _ = _call(74, (_h(dstDevice), _h(dstContext), _h(srcDevice), _h(srcContext), int(ByteCount)))
    return (_res(st),) if st else _OK


def cuMemcpyPeerAsync(
    dstDevice: Any, dstContext: Any, srcDevice: Any, srcContext: Any, ByteCount: Any, hStream: Any,
) -> tuple[CUresult]:
    """cuMemcpyPeerAsync: remoted (call 75, NO_REPLY)."""
    st, v, _ = _call(75, (_h(dstDevice), _h(dstContext), _h(srcDevice), _h(srcContext), int(ByteCount), _h(hStream)))
    return (_res(st),) if st else _OK


cuDeviceTotalMem_v2 = cuDeviceTotalMem
cuDeviceGetUuid_v2 = cuDeviceGetUuid
cuDevicePrimaryCtxRelease_v2 = cuDevicePrimaryCtxRelease
cuCtxCreate_v2 = cuCtxCreate
cuCtxDestroy_v2 = cuCtxDestroy
cuMemAlloc_v2 = cuMemAlloc
cuMemFree_v2 = cuMemFree
cuMemGetInfo_v2 = cuMemGetInfo
cuMemcpyHtoD_v2 = cuMemcpyHtoD
cuMemcpyDtoH_v2 = cuMemcpyDtoH
cuMemcpyDtoD_v2 = cuMemcpyDtoD
cuMemcpyHtoDAsync_v2 = cuMemcpyHtoDAsync
cuMemcpyDtoHAsync_v2 = cuMemcpyDtoHAsync
cuMemcpyDtoDAsync_v2 = cuMemcpyDtoDAsync
cuMemsetD8_v2 = cuMemsetD8
cuMemsetD32_v2 = cuMemsetD32
cuStreamDestroy_v2 = cuStreamDestroy
cuEventElapsedTime_v2 = cuEventElapsedTime
cuEventDestroy_v2 = cuEventDestroy
cuModuleGetGlobal_v2 = cuModuleGetGlobal


REMOTED = (
    "cuInit", "cuDriverGetVersion", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName",
    "cuDeviceTotalMem", "cuDeviceGetAttribute", "cuDeviceGetUuid", "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease", "cuCtxCreate", "cuCtxDestroy", "cuCtxSetCurrent",
    "cuCtxSynchronize", "cuMemAlloc", "cuMemFree", "cuMemGetInfo", "cuMemcpyHtoD", "cuMemcpyDtoH",
    "cuMemcpyDtoD", "cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync", "cuMemcpyDtoDAsync", "cuMemsetD8",
    "cuMemsetD32", "cuMemsetD8Async", "cuMemsetD32Async", "cuStreamCreate", "cuStreamSynchronize",
    "cuStreamDestroy", "cuStreamQuery", "cuEventCreate", "cuEventRecord", "cuEventSynchronize",
    "cuEventElapsedTime", "cuEventDestroy", "cuEventQuery", "cuModuleLoadData",
    "cuModuleGetFunction", "cuModuleUnload", "cuLaunchKernel", "cuStreamCreateWithPriority",
    "cuCtxGetStreamPriorityRange", "cuStreamWaitEvent", "cuFuncGetAttribute", "cuFuncSetAttribute",
    "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
    "cuOccupancyAvailableDynamicSMemPerBlock", "cuCtxGetLimit", "cuCtxSetLimit",
    "cuModuleGetGlobal", "cuPointerGetAttribute", "cuOccupancyMaxActiveClusters",
    "cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuStreamGetCaptureInfo",
    "cuGraphInstantiateWithFlags", "cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy",
    "cuGraphGetNodeCount", "cuDeviceCanAccessPeer", "cuCtxEnablePeerAccess",
    "cuCtxDisablePeerAccess", "cuMemcpyPeer", "cuMemcpyPeerAsync",
)
"""Every call this module sends to oriond, in code order."""
# --- END GENERATED ---

# cuda-bindings' names for the versions the spec remotes
cuStreamBeginCapture = cuStreamBeginCapture_v2
cuGraphInstantiate = cuGraphInstantiateWithFlags


def _orion_transport() -> str:
    """Which transport this process uses ('shm', 'ivshmem', 'tcp'), or '' before cuInit."""
    rt = get_runtime()
    return rt.chosen.transport if rt.chosen else ""


_refused: dict[str, Any] = {}


def _refuse(name: str) -> Any:
    """A driver function the client does not remote: it says so once and returns
    CUDA_ERROR_NOT_SUPPORTED; it never reaches a driver of the machine it runs on."""
    def refused(*args: Any, **kwargs: Any) -> tuple[CUresult]:
        if not getattr(refused, "said", False):
            refused.said = True  # type: ignore[attr-defined]
            sys.stderr.write(f"[WARN] {name} is not supported by the orion_virt client: CUDA_ERROR_NOT_SUPPORTED\n")
        return (CUresult.CUDA_ERROR_NOT_SUPPORTED,)

    refused.__name__ = refused.__qualname__ = name
    return _refused.setdefault(name, refused)


def __getattr__(name: str) -> Any:
    """Anything not remoted that is not a driver function (helper types other cuda.bindings
    modules use, e.g. nvrtc's import of ``_HelperKernelParams``, enums, structs) comes from the
    real cuda-bindings driver module when it is installed. A driver function (``cu*``) the client
    does not remote is refused (:func:`_refuse`), never passed to the host's driver."""
    global _real
    if name.startswith("__"):
        raise AttributeError(name)
    if _real is None:
        _real = _load_real_driver()
    if _real is False:
        if name.startswith("cu") and name[2:3].isupper():
            return _refuse(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (cuda-bindings is not installed)")
    attr = getattr(_real, name)
    if name.startswith("cu") and name[2:3].isupper() and callable(attr) and not isinstance(attr, type):
        return _refuse(name)
    return attr


def _load_real_driver() -> Any:
    import importlib.machinery
    import importlib.util

    pkg = sys.modules.get("cuda.bindings")
    path = getattr(pkg, "__path__", None)
    spec = importlib.machinery.PathFinder.find_spec("cuda.bindings.driver", path) if path else None
    if spec is None or spec.loader is None:
        return False
    saved = sys.modules.get("cuda.bindings.driver")
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except ImportError:
        return False
    finally:
        if saved is not None:
            sys.modules["cuda.bindings.driver"] = saved
        else:
            loaded = sys.modules.get("cuda.bindings.driver")
            if loaded is not None and loaded is not sys.modules[__name__]:
                del sys.modules["cuda.bindings.driver"]
    return mod


__all__ = [n for n in dir(sys.modules[__name__]) if n.startswith(("cu", "CU"))]
