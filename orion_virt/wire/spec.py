"""The call spec: every remoted driver-API function, declared once.

Each entry names the function as ``cuda.h`` does, its wire code, its exported spellings (the
versioned and per-thread-stream names that share its ABI), and each argument in C order with its
C type, direction and role. Everything else is derived from this table and nothing else:

* the wire layout (``wire.calls``): a request carries the ``in`` arguments that are not host
  buffers, in C order, plus a ``u32 <name>_len`` for an input buffer whose length no argument
  gives, then that buffer as the blob; a reply carries the ``out`` arguments' values, plus a
  ``u64 <name>_len`` for an output buffer, then that buffer;
* the native client's marshalling and exports (``tools/gen_native.py`` writes them into
  ``client/native/calls_gen.c``);
* the server dispatch and its ownership checks (``server/dispatch_gen.py``, from the roles);
* the cross-node router's tables (``wire/routes.py``, generated into the native client as byte
  offsets);
* the call table of ``docs/protocol.md``.

Adding a driver function is one entry here plus, on the server, its execution.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Dir(StrEnum):
    IN = "in"
    OUT = "out"
    INOUT = "inout"


class Role(StrEnum):
    VALUE = "value"
    """A plain scalar passed as is."""
    FLAGS = "flags"
    """A bit mask (checked by the server's execution)."""
    DEVICE = "device"
    """A device ordinal of the session (0 .. vGPU count - 1)."""
    HANDLE = "handle"
    """A handle of ``kind``; ``op`` says whether the call creates, uses or destroys it."""
    DPTR = "dptr"
    """A device pointer; ``extent`` (times ``scale``) bytes from it must lie in one live
    allocation of the session. As an ``out`` argument: a new allocation."""
    DPTR_FREE = "dptr_free"
    """The base of a live allocation of the session, which the call frees."""
    HOST_IN = "host_in"
    """A host buffer the client sends (the request blob); ``length`` names its byte count."""
    HOST_OUT = "host_out"
    """A host buffer the server fills (the reply blob); ``length`` names its capacity."""
    SHARED = "shared"
    """A host address in memory the client shared with the session (``orionHostShare``);
    ``extent`` bytes from it must lie in one shared block. The execution gets the block's view."""
    NULL = "null"
    """Must be NULL (not remoted: e.g. cuLaunchKernel's ``extra``); not on the wire."""


class Op(StrEnum):
    USE = "use"
    CREATE = "create"
    DESTROY = "destroy"


HANDLE_KINDS = ("context", "stream", "event", "module", "function", "graph", "graph_exec")


@dataclass(frozen=True)
class Arg:
    name: str
    ctype: str
    dir: Dir = Dir.IN
    role: Role = Role.VALUE
    kind: str = ""
    """Handle kind (one of HANDLE_KINDS) for HANDLE."""
    op: Op = Op.USE
    length: str = ""
    """HOST_IN/HOST_OUT: the argument holding the byte length; "" = a length field on the wire."""
    extent: str = ""
    """DPTR: the argument holding the extent (element count with ``scale``)."""
    scale: int = 1
    null_ok: bool = False
    """HANDLE: 0 is accepted (the default stream, no current context)."""
    wire_only: bool = False
    """Not a C argument: the protocol adds it (a kernel's parameter layout)."""
    limit: int = 0
    """HOST_IN without ``length``: the most bytes the server accepts."""


@dataclass(frozen=True)
class Fn:
    name: str
    code: int
    args: tuple[Arg, ...]
    spellings: tuple[str, ...] = ()
    sync: bool = False
    """Synchronising: reports the deferred error of an earlier NO_REPLY call instead of running."""
    no_reply: bool = False
    """Sent without waiting (NO_REPLY); its error is deferred to the next synchronising call."""
    route: str = ""
    """Cross-node: "" the server of the device, handle or current context; "all:sum",
    "all:min", "all:or", "all:first" every server, merging the first reply value so."""
    doc: str = ""


MAX_NAME = 4096
MAX_IMAGE = 64 << 20
MAX_PARAMS = 32764

_i = "int"
_u = "unsigned int"
_sz = "size_t"


def _a(name: str, ctype: str, role: Role = Role.VALUE, d: Dir = Dir.IN, **kw: object) -> Arg:
    return Arg(name, ctype, d, role, **kw)  # type: ignore[arg-type]


def _dev(name: str = "dev") -> Arg:
    return _a(name, "CUdevice", Role.DEVICE)


def _h(name: str, kind: str, op: Op = Op.USE, null_ok: bool = False) -> Arg:
    ctype = {"context": "CUcontext", "stream": "CUstream", "event": "CUevent", "module": "CUmodule",
             "function": "CUfunction", "graph": "CUgraph", "graph_exec": "CUgraphExec"}[kind]
    d = Dir.OUT if op is Op.CREATE else Dir.IN
    return Arg(name, ctype + (" *" if d is Dir.OUT else ""), d, Role.HANDLE, kind=kind, op=op, null_ok=null_ok)


def _out(name: str, ctype: str, role: Role = Role.VALUE) -> Arg:
    return Arg(name, ctype + " *", Dir.OUT, role)


def _dptr(name: str, extent: str, scale: int = 1) -> Arg:
    return _a(name, "CUdeviceptr", Role.DPTR, extent=extent, scale=scale)


def _shared(name: str, extent: str) -> Arg:
    return _a(name, "cuuint64_t", Role.SHARED, extent=extent)


def _stream(name: str = "hStream") -> Arg:
    return _h(name, "stream", null_ok=True)


CALLS: tuple[Fn, ...] = (
    Fn("cuInit", 1, (_a("Flags", _u, Role.FLAGS),), route="all:first"),
    Fn("cuDriverGetVersion", 2, (_out("driverVersion", _i),), route="all:min"),
    Fn("cuDeviceGetCount", 3, (_out("count", _i),), route="all:sum"),
    Fn("cuDeviceGet", 4, (_out("device", "CUdevice", Role.DEVICE), _a("ordinal", _i, Role.DEVICE))),
    Fn("cuDeviceGetName", 5, (Arg("name", "char *", Dir.OUT, Role.HOST_OUT, length="len"),
                              _a("len", _i), _dev())),
    Fn("cuDeviceTotalMem", 6, (_out("bytes", _sz), _dev()), spellings=("cuDeviceTotalMem_v2",)),
    Fn("cuDeviceGetAttribute", 7, (_out("pi", _i), _a("attrib", "CUdevice_attribute"), _dev())),
    Fn("cuDeviceGetUuid", 8, (_out("uuid", "CUuuid"), _dev()), spellings=("cuDeviceGetUuid_v2",)),
    Fn("cuDevicePrimaryCtxRetain", 9, (_h("pctx", "context", Op.CREATE), _dev())),
    Fn("cuDevicePrimaryCtxRelease", 10, (_dev(),), spellings=("cuDevicePrimaryCtxRelease_v2",)),
    Fn("cuCtxCreate", 11, (_h("pctx", "context", Op.CREATE), _a("flags", _u, Role.FLAGS), _dev()),
       spellings=("cuCtxCreate_v2",)),
    Fn("cuCtxDestroy", 12, (_h("ctx", "context", Op.DESTROY),), spellings=("cuCtxDestroy_v2",)),
    Fn("cuCtxSetCurrent", 13, (_h("ctx", "context", null_ok=True),), no_reply=True),
    Fn("cuCtxSynchronize", 15, (), sync=True),
    Fn("cuMemAlloc", 16, (_out("dptr", "CUdeviceptr", Role.DPTR), _a("bytesize", _sz)), spellings=("cuMemAlloc_v2",)),
    Fn("cuMemFree", 17, (_a("dptr", "CUdeviceptr", Role.DPTR_FREE),), spellings=("cuMemFree_v2",), no_reply=True),
    Fn("cuMemGetInfo", 18, (_out("free", _sz), _out("total", _sz)), spellings=("cuMemGetInfo_v2",)),
    Fn("cuMemcpyHtoD", 19, (_dptr("dstDevice", "ByteCount"),
                            _a("srcHost", "const void *", Role.HOST_IN, length="ByteCount"), _a("ByteCount", _sz)),
       spellings=("cuMemcpyHtoD_v2", "cuMemcpyHtoD_v2_ptds"), sync=True),
    Fn("cuMemcpyDtoH", 20, (Arg("dstHost", "void *", Dir.OUT, Role.HOST_OUT, length="ByteCount"),
                            _dptr("srcDevice", "ByteCount"), _a("ByteCount", _sz)),
       spellings=("cuMemcpyDtoH_v2", "cuMemcpyDtoH_v2_ptds"), sync=True),
    Fn("cuMemcpyDtoD", 21, (_dptr("dstDevice", "ByteCount"), _dptr("srcDevice", "ByteCount"), _a("ByteCount", _sz)),
       spellings=("cuMemcpyDtoD_v2", "cuMemcpyDtoD_v2_ptds"), sync=True),
    Fn("cuMemcpyHtoDAsync", 22, (_dptr("dstDevice", "ByteCount"),
                                 _a("srcHost", "const void *", Role.HOST_IN, length="ByteCount"),
                                 _a("ByteCount", _sz), _stream()),
       spellings=("cuMemcpyHtoDAsync_v2", "cuMemcpyHtoDAsync_v2_ptsz"), no_reply=True),
    Fn("cuMemcpyDtoHAsync", 23, (Arg("dstHost", "void *", Dir.OUT, Role.HOST_OUT, length="ByteCount"),
                                 _dptr("srcDevice", "ByteCount"), _a("ByteCount", _sz), _stream()),
       spellings=("cuMemcpyDtoHAsync_v2", "cuMemcpyDtoHAsync_v2_ptsz"), sync=True,
       doc="remoted synchronously: the bytes come back in the reply"),
    Fn("cuMemcpyDtoDAsync", 24, (_dptr("dstDevice", "ByteCount"), _dptr("srcDevice", "ByteCount"),
                                 _a("ByteCount", _sz), _stream()),
       spellings=("cuMemcpyDtoDAsync_v2", "cuMemcpyDtoDAsync_v2_ptsz"), no_reply=True),
    Fn("cuMemsetD8", 25, (_dptr("dstDevice", "N"), _a("uc", "unsigned char"), _a("N", _sz)),
       spellings=("cuMemsetD8_v2", "cuMemsetD8_v2_ptds")),
    Fn("cuMemsetD32", 26, (_dptr("dstDevice", "N", 4), _a("ui", _u), _a("N", _sz)),
       spellings=("cuMemsetD32_v2", "cuMemsetD32_v2_ptds")),
    Fn("cuMemsetD8Async", 27, (_dptr("dstDevice", "N"), _a("uc", "unsigned char"), _a("N", _sz), _stream()),
       spellings=("cuMemsetD8Async_ptsz",), no_reply=True),
    Fn("cuMemsetD32Async", 28, (_dptr("dstDevice", "N", 4), _a("ui", _u), _a("N", _sz), _stream()),
       spellings=("cuMemsetD32Async_ptsz",), no_reply=True),
    Fn("cuStreamCreate", 29, (_h("phStream", "stream", Op.CREATE), _a("Flags", _u, Role.FLAGS))),
    Fn("cuStreamSynchronize", 30, (_stream(),), spellings=("cuStreamSynchronize_ptsz",), sync=True),
    Fn("cuStreamDestroy", 31, (_h("hStream", "stream", Op.DESTROY),), spellings=("cuStreamDestroy_v2",),
       no_reply=True),
    Fn("cuStreamQuery", 32, (_stream(),), spellings=("cuStreamQuery_ptsz",)),
    Fn("cuEventCreate", 33, (_h("phEvent", "event", Op.CREATE), _a("Flags", _u, Role.FLAGS))),
    Fn("cuEventRecord", 34, (_h("hEvent", "event"), _stream()), spellings=("cuEventRecord_ptsz",), no_reply=True),
    Fn("cuEventSynchronize", 35, (_h("hEvent", "event"),), sync=True),
    Fn("cuEventElapsedTime", 36, (_out("pMilliseconds", "float"), _h("hStart", "event"), _h("hEnd", "event")),
       spellings=("cuEventElapsedTime_v2",)),
    Fn("cuEventDestroy", 37, (_h("hEvent", "event", Op.DESTROY),), spellings=("cuEventDestroy_v2",), no_reply=True),
    Fn("cuEventQuery", 38, (_h("hEvent", "event"),)),
    Fn("cuModuleLoadData", 39, (_h("module", "module", Op.CREATE),
                                _a("image", "const void *", Role.HOST_IN, limit=MAX_IMAGE)),
       doc="the client finds the image's length (ELF, fatbin, PTX text)"),
    Fn("cuModuleGetFunction", 40, (_h("hfunc", "function", Op.CREATE), _h("hmod", "module"),
                                   _a("name", "const char *", Role.HOST_IN, limit=MAX_NAME),
                                   Arg("params", "", Dir.OUT, Role.HOST_OUT, wire_only=True)),
       doc="the reply blob is the kernel's parameter layout: u32 offset, u32 size each"),
    Fn("cuModuleUnload", 41, (_h("hmod", "module", Op.DESTROY),), no_reply=True),
    Fn("cuLaunchKernel", 42, (_h("f", "function"), _a("gridDimX", _u), _a("gridDimY", _u), _a("gridDimZ", _u),
                              _a("blockDimX", _u), _a("blockDimY", _u), _a("blockDimZ", _u),
                              _a("sharedMemBytes", _u), _stream(),
                              _a("kernelParams", "void **", Role.HOST_IN, limit=MAX_PARAMS),
                              _a("extra", "void **", Role.NULL)),
       spellings=("cuLaunchKernel_ptsz",), no_reply=True,
       doc="the blob is the packed parameter buffer, laid out as cuModuleGetFunction said"),
    Fn("cuStreamCreateWithPriority", 43, (_h("phStream", "stream", Op.CREATE), _a("flags", _u, Role.FLAGS),
                                          _a("priority", _i))),
    Fn("cuCtxGetStreamPriorityRange", 44, (_out("leastPriority", _i), _out("greatestPriority", _i))),
    Fn("cuStreamWaitEvent", 45, (_stream(), _h("hEvent", "event"), _a("Flags", _u, Role.FLAGS)),
       spellings=("cuStreamWaitEvent_ptsz",), no_reply=True),
    Fn("cuFuncGetAttribute", 46, (_out("pi", _i), _a("attrib", "CUfunction_attribute"), _h("hfunc", "function"))),
    Fn("cuFuncSetAttribute", 47, (_h("hfunc", "function"), _a("attrib", "CUfunction_attribute"), _a("value", _i))),
    Fn("cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", 48,
       (_out("numBlocks", _i), _h("func", "function"), _a("blockSize", _i), _a("dynamicSMemSize", _sz),
        _a("flags", _u, Role.FLAGS))),
    Fn("cuOccupancyAvailableDynamicSMemPerBlock", 49,
       (_out("dynamicSmemSize", _sz), _h("func", "function"), _a("numBlocks", _i), _a("blockSize", _i))),
    Fn("cuCtxGetLimit", 50, (_out("pvalue", _sz), _a("limit", "CUlimit"))),
    Fn("cuCtxSetLimit", 51, (_a("limit", "CUlimit"), _a("value", _sz))),
    Fn("cuModuleGetGlobal", 52, (_out("dptr", "CUdeviceptr"), _out("bytes", _sz), _h("hmod", "module"),
                                 _a("name", "const char *", Role.HOST_IN, limit=MAX_NAME)),
       spellings=("cuModuleGetGlobal_v2",),
       doc="the global becomes addressable by copies; it is not freeable"),
    Fn("cuPointerGetAttribute", 53, (_out("data", "unsigned long long"), _a("attribute", "CUpointer_attribute"),
                                     _a("ptr", "CUdeviceptr")),
       doc="answered from the session's allocations"),
    Fn("cuOccupancyMaxActiveClusters", 54,
       (_out("numClusters", _i), _h("func", "function"),
        *(_a(n, _u, wire_only=True) for n in ("gridDimX", "gridDimY", "gridDimZ", "blockDimX", "blockDimY",
                                               "blockDimZ", "sharedMemBytes", "clusterDimX", "clusterDimY",
                                               "clusterDimZ"))),
       doc="the launch configuration flattened; cluster dimensions 0: the kernel's own"),
    Fn("cuStreamBeginCapture_v2", 55, (_h("hStream", "stream"), _a("mode", "CUstreamCaptureMode")),
       spellings=("cuStreamBeginCapture_v2_ptsz",),
       doc="oriond records the stream's work until cuStreamEndCapture"),
    Fn("cuStreamEndCapture", 56, (_h("hStream", "stream"), _h("phGraph", "graph", Op.CREATE)),
       spellings=("cuStreamEndCapture_ptsz",)),
    Fn("cuStreamGetCaptureInfo", 57, (_stream(), _out("captureStatus_out", "CUstreamCaptureStatus"),
                                      _out("id_out", "cuuint64_t")),
       spellings=("cuStreamGetCaptureInfo_ptsz",)),
    Fn("cuGraphInstantiateWithFlags", 58, (_h("phGraphExec", "graph_exec", Op.CREATE), _h("hGraph", "graph"),
                                           _a("flags", "unsigned long long", Role.FLAGS))),
    Fn("cuGraphLaunch", 59, (_h("hGraphExec", "graph_exec"), _stream()), spellings=("cuGraphLaunch_ptsz",),
       no_reply=True),
    Fn("cuGraphExecDestroy", 60, (_h("hGraphExec", "graph_exec", Op.DESTROY),), no_reply=True),
    Fn("cuGraphDestroy", 61, (_h("hGraph", "graph", Op.DESTROY),), no_reply=True),
    Fn("cuGraphGetNodeCount", 62, (_h("hGraph", "graph"), _out("numNodes", _sz)),
       doc="cuGraphGetNodes with nodes NULL: the client's cuGraphGetNodes"),
    Fn("orionHostShare", 63, (_a("fd", _i), _a("addr", "cuuint64_t"), _a("bytesize", _sz)),
       doc="page-locked host memory of the client (a sealed memfd, descriptor fd of the process holding the "
           "channel) mapped by oriond and registered with the GPU: copies from or to it are one DMA. "
           "Shared-memory channels of the host and of containers only"),
    Fn("orionHostUnshare", 64, (_a("addr", "cuuint64_t"),),
       doc="after the context's work is done, oriond unmaps the block that orionHostShare mapped at addr"),
    Fn("orionMemcpyHtoDShared", 65, (_dptr("dstDevice", "ByteCount"), _shared("srcHost", "ByteCount"),
                                     _a("ByteCount", _sz)), sync=True,
       doc="cuMemcpyHtoD from shared host memory: no blob"),
    Fn("orionMemcpyDtoHShared", 66, (_shared("dstHost", "ByteCount"), _dptr("srcDevice", "ByteCount"),
                                     _a("ByteCount", _sz)), sync=True,
       doc="cuMemcpyDtoH into shared host memory: no blob"),
    Fn("orionMemcpyHtoDSharedAsync", 67, (_dptr("dstDevice", "ByteCount"), _shared("srcHost", "ByteCount"),
                                          _a("ByteCount", _sz), _stream()), no_reply=True,
       doc="cuMemcpyHtoDAsync from shared host memory"),
    Fn("orionMemcpyDtoHSharedAsync", 68, (_shared("dstHost", "ByteCount"), _dptr("srcDevice", "ByteCount"),
                                          _a("ByteCount", _sz), _stream()), no_reply=True,
       doc="cuMemcpyDtoHAsync into shared host memory: sent without waiting, done when the stream is"),
    Fn("orionHostDevicePointer", 69, (_out("pdptr", "CUdeviceptr"), _a("p", "cuuint64_t")),
       doc="cuMemHostGetDevicePointer of shared host memory: the device's address of the client's p (p "
           "itself when oriond mapped the block at the client's address, as UVA has it)"),
    Fn("orionModuleFunctionNames", 70, (_h("hmod", "module"), _out("count", _u),
                                        Arg("names", "char *", Dir.OUT, Role.HOST_OUT, length="len"),
                                        _a("len", _u)),
       doc="the names of a module's kernels (cuModuleEnumerateFunctions, cuFuncGetName), each "
           "NUL-terminated, count of them: the kernels the tools' module table {6e163fbe} slot 7 hands out"),
    Fn("cuDeviceCanAccessPeer", 71, (_out("canAccessPeer", _i), _dev("dev"), _dev("peerDev")),
       doc="dev can use peerDev's memory: vGPUs of one GPU, peer GPUs"),
    Fn("cuCtxEnablePeerAccess", 72, (_h("peerContext", "context"), _a("Flags", _u, Role.FLAGS))),
    Fn("cuCtxDisablePeerAccess", 73, (_h("peerContext", "context"),)),
    Fn("cuMemcpyPeer", 74, (_dptr("dstDevice", "ByteCount"), _h("dstContext", "context"),
                            _dptr("srcDevice", "ByteCount"), _h("srcContext", "context"), _a("ByteCount", _sz)),
       spellings=("cuMemcpyPeer_ptds",), sync=True),
    Fn("cuMemcpyPeerAsync", 75, (_dptr("dstDevice", "ByteCount"), _h("dstContext", "context"),
                                 _dptr("srcDevice", "ByteCount"), _h("srcContext", "context"),
                                 _a("ByteCount", _sz), _stream()),
       spellings=("cuMemcpyPeerAsync_ptsz",), no_reply=True),
    Fn("orionPointerKinds", 76, (_out("kinds", _u), _a("dst", "cuuint64_t"), _a("src", "cuuint64_t"),
                                 _a("ByteCount", _sz)), route="all:or",
       doc="for the unified cuMemcpy/cuMemcpyAsync: bit 0 set when [dst, dst+ByteCount) is device "
           "memory of this session, bit 1 for src; a range that starts in an allocation and leaves it is "
           "CUDA_ERROR_INVALID_VALUE"),
    Fn("orionLaunchKernelEx", 77, (_h("f", "function"), _a("gridDimX", _u), _a("gridDimY", _u),
                                   _a("gridDimZ", _u), _a("blockDimX", _u), _a("blockDimY", _u),
                                   _a("blockDimZ", _u), _a("sharedMemBytes", _u), _stream(),
                                   _a("clusterDimX", _u), _a("clusterDimY", _u), _a("clusterDimZ", _u),
                                   _a("clusterPolicy", _u), _a("cooperative", _u), _a("programmatic", _u),
                                   _a("priority", _i),
                                   _a("kernelParams", "void **", Role.HOST_IN, limit=MAX_PARAMS),
                                   _a("extra", "void **", Role.NULL)),
       no_reply=True,
       doc="cuLaunchKernelEx and cuLaunchCooperativeKernel with the launch attributes oriond passes on: "
           "cluster dimensions (0: none) and scheduling policy, cooperative, programmatic stream "
           "serialisation, priority; the blob as cuLaunchKernel's"),
)
"""Every remoted call, in code order."""

CLIENT_ONLY: tuple[str, ...] = ("cuCtxGetCurrent", "cuGetErrorName", "cuGetErrorString")
"""Answered by the client without a round trip."""
