"""One client session: the HELLO handshake, then calls dispatched to a backend session.

Everything a client sends is untrusted. Handles (contexts, streams, events, modules, functions)
are looked up in this session's own tables; device ranges are resolved in this session's
MemoryTable; blob lengths are bounded before anything is read or allocated. A call that fails
returns its CUresult; a NO_REPLY call's failure is reported as the status of the next
synchronising call (as CUDA reports asynchronous errors). Malformed framing ends the session.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..cuda_enums import CUresult
from ..errors import OrionError, ProtocolError, TransportError
from ..transport.base import Stream
from ..wire import HEADER, HEADER_SIZE, SPECS, Call, Hello, Kind, Welcome, encode_error, parse_header
from ..wire.calls import CallSpec
from ..wire.frames import MAX_CONTROL_BODY, PROTO_MAJOR, check_blob
from .backend import Backend, BackendSession, CudaCallError, VGpu
from .throttle import Throttle

E = CUresult
LEASE_GRACE_S = 2.0
"""Slack for clock skew between the controller and this server."""


class LeaseExpired(OrionError):
    """The session's allocation was not renewed in time: its vGPUs may be lent to someone else."""


@dataclass(frozen=True)
class Admission:
    """A session admitted on a lease: its vGPUs, the lease end (wall clock, seconds) and how to
    check a renewed token (returns the new lease end; raises OrionError if it is not valid for
    this same allocation)."""

    vgpus: list[VGpu]
    expires_at: float
    renew: Callable[[str], float]


Authorizer = Callable[[Hello], "list[VGpu] | Admission"]


@dataclass
class _Blob:
    stream: Stream
    remaining: int

    def read_all(self) -> bytes:
        n, self.remaining = self.remaining, 0
        return self.stream.recv_exact(n)

    def chunks(self) -> Iterator[memoryview]:
        n, self.remaining = self.remaining, 0
        return self.stream.recv_chunks(n)


@dataclass
class _BlobOut:
    values: tuple
    size: int
    fill: Callable[[Iterator[memoryview]], None]


class _Plan:
    """What the call loop needs for one call code, worked out once: the request struct, whether
    a blob follows, and one struct packing the reply header and values together."""

    __slots__ = ("spec", "code", "req", "fixed", "has_blob", "blob_idx", "max_blob", "synchronizing", "reply",
                 "resp_size", "zeros")

    def __init__(self, spec: CallSpec) -> None:
        self.spec = spec
        self.code = int(spec.call)
        self.req = spec.req
        self.fixed = spec.req.size
        self.has_blob = spec.req_blob is not None
        self.blob_idx = spec.req_names.index(spec.req_blob) if spec.req_blob else -1
        self.max_blob = spec.max_req_blob
        self.synchronizing = spec.synchronizing
        self.reply = struct.Struct(HEADER.format + spec.resp.format[1:])
        self.resp_size = spec.resp.size
        self.zeros = spec.resp.unpack(bytes(spec.resp.size))
        """the reply values of a failed call: all zero, as the original ``bytes(resp.size)``"""


_PLANS: dict[int, _Plan] = {code: _Plan(spec) for code, spec in SPECS.items()}
_CALL = int(Kind.CALL)
_REPLY = int(Kind.REPLY)


class _Handles:
    """A per-session table of opaque u64 handles; 0 is never issued."""

    def __init__(self, kind: str, base: int, invalid: CUresult = E.CUDA_ERROR_INVALID_HANDLE) -> None:
        self.kind = kind
        self.items: dict[int, Any] = {}
        self._ids = itertools.count(base)
        self.invalid = invalid

    def add(self, obj: Any) -> int:
        h = next(self._ids)
        self.items[h] = obj
        return h

    def get(self, h: int) -> Any:
        try:
            return self.items[h]
        except KeyError:
            raise CudaCallError(self.invalid, f"{self.kind} handle 0x{h:x} is not owned by this session") from None

    def pop(self, h: int) -> Any:
        obj = self.get(h)
        del self.items[h]
        return obj


class Session:
    """Serves one client over ``stream`` until BYE, a broken transport or a protocol error."""

    def __init__(self, stream: Stream, backend: Backend, authorize: Authorizer, session_id: int,
                 log: logging.Logger, throttle: bool = True) -> None:
        self.stream = stream
        self.backend = backend
        self.authorize = authorize
        self.session_id = session_id
        self.log = log
        self.throttle_enabled = throttle
        self.vgpus: list[VGpu] = []
        self.bs: BackendSession | None = None
        self.deferred = 0
        self.current_dev: int | None = None
        self.current_ctx = 0
        self.ctxs = _Handles("context", 0x1000_0000, E.CUDA_ERROR_INVALID_CONTEXT)
        self.primary: dict[int, int] = {}
        self.streams = _Handles("stream", 0x2000_0000)
        self.events = _Handles("event", 0x3000_0000)
        self.modules = _Handles("module", 0x4000_0000)
        self.functions = _Handles("function", 0x5000_0000)
        self.throttles: list[Throttle] = []
        self.calls = 0
        self.hello: Hello | None = None
        self.admission: Admission | None = None
        self.lease_end = 0.0
        self.handlers: dict[int, Callable[..., Any]] = {
            c: getattr(self, "_" + Call(c).name) for c in SPECS
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def handshake(self) -> Hello:
        hdr, _ = parse_header(self.stream.recv_exact(HEADER_SIZE))
        if hdr.kind is not Kind.HELLO:
            raise ProtocolError(f"expected HELLO, got {hdr.kind.name}")
        hello = Hello.decode(self.stream.recv_exact(hdr.length))
        if hello.major != PROTO_MAJOR:
            raise ProtocolError(f"client speaks protocol {hello.major}.{hello.minor}, server {PROTO_MAJOR}.x")
        granted = self.authorize(hello)
        if isinstance(granted, Admission):
            self.admission = granted
            self.lease_end = granted.expires_at + LEASE_GRACE_S
            granted = granted.vgpus
        self.vgpus = granted
        self.hello = hello
        self.bs = self.backend.open_session(self.vgpus)
        if hasattr(self.stream, "min_chunk"):
            self.stream.min_chunk = getattr(self.backend, "preferred_chunk", 0)
        for view in getattr(self.stream, "host_regions", lambda: [])():
            self.bs.register_host(view)  # e.g. the shm rings: the cuda backend pins them
        self.throttles = [Throttle(v.ratio if self.throttle_enabled else 100) for v in self.vgpus]
        self.stream.send(Welcome(self.session_id, self.backend.name).encode())
        self.stream.flush()
        self.log.info("session %d: pid %d program %r allocation %r: %d vGPU(s) %s on backend %s",
                      self.session_id, hello.pid, hello.program, hello.allocation_id or "-",
                      len(self.vgpus), ", ".join(f"{v.memory >> 20} MiB/{v.ratio}% on GPU {v.physical}"
                                                 for v in self.vgpus), self.backend.name)
        return hello

    def run(self) -> str:
        """Handshake and serve; returns why the session ended. Frees everything on the way out."""
        try:
            try:
                self.handshake()
            except TransportError as e:
                self.log.debug("session %d: closed before HELLO: %s", self.session_id, e)
                return "closed before HELLO"
            except OrionError as e:
                self.log.warning("session %d: handshake refused: %s", self.session_id, e)
                self._try_send(encode_error(str(e)))
                return f"refused: {e}"
            return self.serve()
        except LeaseExpired as e:
            self.log.warning("session %d: %s", self.session_id, e)
            self._try_send(encode_error(str(e)))
            return "lease expired"
        except ProtocolError as e:
            self.log.warning("session %d: protocol error, closing: %s", self.session_id, e)
            self._try_send(encode_error(f"protocol error: {e}"))
            return f"protocol error: {e}"
        except TransportError as e:
            self.log.info("session %d: transport ended: %s", self.session_id, e)
            return f"transport: {e}"
        finally:
            self.close()

    def _try_send(self, data: bytes) -> None:
        try:
            self.stream.send(data)
            self.stream.flush()
        except TransportError:
            pass

    def close(self) -> None:
        if self.bs is not None:
            leaked = sum(1 for _ in self.bs.mem.items())
            self.bs.close()
            self.bs = None
            self.log.info("session %d: closed after %d calls; freed %d allocation(s)",
                          self.session_id, self.calls, leaked)

    # -- the call loop ----------------------------------------------------------------------

    def serve(self) -> str:
        stream = self.stream
        recv_unpack = stream.recv_unpack
        pack_header = HEADER.pack
        plans = _PLANS
        handlers = self.handlers
        reply, send, flush = self._reply, stream.send, stream.flush
        blob = _Blob(stream, 0)  # one per session: a handler consumes it before the next call is read
        while True:
            length, kind, flags, code, seq, hstatus = recv_unpack(HEADER)
            plan = plans.get(code)
            if kind != _CALL or plan is None or flags & ~1:
                if kind == Kind.RENEW and code == 0 and length <= MAX_CONTROL_BODY:
                    self._renew(stream.recv_exact(length))
                    continue
                if kind == Kind.BYE and length == 0:
                    self.log.info("session %d: client said goodbye", self.session_id)
                    return "bye"
                parse_header(pack_header(length, kind, flags, code, seq, hstatus))
                raise ProtocolError(f"unexpected {Kind(kind).name} message")
            fixed = plan.fixed
            if length < fixed or (not plan.has_blob and length != fixed):
                parse_header(pack_header(length, kind, flags, code, seq, hstatus))
            args = recv_unpack(plan.req) if fixed else ()
            if plan.has_blob:
                n = args[plan.blob_idx]
                if n > plan.max_blob or fixed + n != length:
                    check_blob(plan.spec, Kind.CALL, args, length)  # raises the ProtocolError saying why
                blob.remaining = n
            self.calls += 1
            if self.lease_end and not flags & 1 and time.time() > self.lease_end:
                raise LeaseExpired(self._expired_message())
            status = 0
            result: Any = None
            try:
                if self.deferred and plan.synchronizing:
                    status, self.deferred = self.deferred, 0
                else:
                    result = handlers[code](args, blob)
            except CudaCallError as e:
                status = e.code
                self.log.info("session %d: %s failed: %s (%s)", self.session_id, plan.spec.call.name,
                              E(e.code).name, e.message)
            if blob.remaining:
                stream.discard(blob.remaining)
                blob.remaining = 0
            if flags & 1:
                if status and not self.deferred:
                    self.deferred = status
                continue
            if status == 0 and type(result) is tuple:  # the common replies, packed in one go
                if plan.resp_size:
                    send(plan.reply.pack(plan.resp_size, _REPLY, 0, plan.code, seq, 0, *result))
                else:  # header only; no star-call (measurably cheaper on the null-call path)
                    send(pack_header(0, _REPLY, 0, plan.code, seq, 0))
                flush()
            else:
                reply(plan.spec, seq, status, result)

    def _renew(self, body: bytes) -> None:
        """A renewed token: it must be valid for this same allocation, else the session ends."""
        if self.admission is None:
            self.log.info("session %d: lease renewal ignored (direct mode)", self.session_id)
            return
        try:
            token = body.decode("ascii")
            expires = self.admission.renew(token)
        except (UnicodeDecodeError, OrionError) as e:
            raise ProtocolError(f"renewed token refused: {e}") from None
        self.lease_end = expires + LEASE_GRACE_S
        self.log.debug("session %d: lease renewed until %.0f", self.session_id, expires)

    def _expired_message(self) -> str:
        alloc = self.hello.allocation_id if self.hello else "?"
        return (f"allocation {alloc} expired: its lease was not renewed with the Orion Controller, "
                f"so its vGPUs were returned to the pool; the session is closed")

    def _reply(self, spec: CallSpec, seq: int, status: int, result: Any) -> None:
        stream = self.stream
        plan = _PLANS[spec.call]
        if status or result is None:
            stream.send(plan.reply.pack(plan.resp_size, _REPLY, 0, plan.code, seq, status, *plan.zeros))
        elif isinstance(result, _BlobOut):
            stream.send(plan.reply.pack(plan.resp_size + result.size, _REPLY, 0, plan.code, seq, 0, *result.values))
            stream.flush()
            result.fill(stream.send_chunks(result.size))
        else:
            stream.send(plan.reply.pack(plan.resp_size, _REPLY, 0, plan.code, seq, 0, *result))
        stream.flush()

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _bs(self) -> BackendSession:
        assert self.bs is not None
        return self.bs

    def _dev(self, d: int) -> int:
        if not 0 <= d < len(self.vgpus):
            raise CudaCallError(E.CUDA_ERROR_INVALID_DEVICE, f"device {d} (this session has {len(self.vgpus)})")
        return d

    def _cur(self) -> int:
        if self.current_dev is None:
            raise CudaCallError(E.CUDA_ERROR_INVALID_CONTEXT, "no current context")
        return self.current_dev

    def _stream(self, h: int) -> Any:
        return None if h == 0 else self.streams.get(h)

    def _range(self, ptr: int, n: int) -> None:
        self._bs.mem.resolve(ptr, n)

    # -- handlers: device and context -------------------------------------------------------

    def _cuInit(self, a: tuple, b: _Blob) -> tuple:
        if a[0] != 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "cuInit flags must be 0")
        return ()

    def _cuDriverGetVersion(self, a: tuple, b: _Blob) -> tuple:
        return (self.backend.driver_version(),)

    def _cuDeviceGetCount(self, a: tuple, b: _Blob) -> tuple:
        return (len(self.vgpus),)

    def _cuDeviceGet(self, a: tuple, b: _Blob) -> tuple:
        return (self._dev(a[0]),)

    def _cuDeviceGetName(self, a: tuple, b: _Blob) -> _BlobOut:
        length, d = a
        name = self.backend.gpus()[self.vgpus[self._dev(d)].physical].name.encode()
        if length <= 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "name length must be positive")
        name = name[: max(0, min(length, 256) - 1)]

        def fill(sinks: Iterator[memoryview]) -> None:
            pos = 0
            for s in sinks:
                s[:] = name[pos:pos + len(s)]
                pos += len(s)

        return _BlobOut((len(name),), len(name), fill)

    def _cuDeviceTotalMem(self, a: tuple, b: _Blob) -> tuple:
        return (self.vgpus[self._dev(a[0])].memory,)

    def _cuDeviceGetAttribute(self, a: tuple, b: _Blob) -> tuple:
        attrib, d = a
        gpu = self.backend.gpus()[self.vgpus[self._dev(d)].physical]
        if attrib not in gpu.attributes:
            if not 0 < attrib < 1000:
                raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"unknown attribute {attrib}")
            return (0,)
        return (gpu.attributes[attrib],)

    def _cuDeviceGetUuid(self, a: tuple, b: _Blob) -> tuple:
        d = self._dev(a[0])
        phys = self.backend.gpus()[self.vgpus[d].physical].uuid
        # each vGPU gets its own stable UUID derived from the physical one
        return (bytes(x ^ (d + 1 if i == 15 else 0) for i, x in enumerate(phys)),)

    def _cuDevicePrimaryCtxRetain(self, a: tuple, b: _Blob) -> tuple:
        d = self._dev(a[0])
        if d not in self.primary:
            self.primary[d] = self.ctxs.add(d)
        return (self.primary[d],)

    def _cuDevicePrimaryCtxRelease(self, a: tuple, b: _Blob) -> tuple:
        self._dev(a[0])
        return ()

    def _cuCtxCreate(self, a: tuple, b: _Blob) -> tuple:
        d = self._dev(a[1])
        h = self.ctxs.add(d)
        self.current_dev, self.current_ctx = d, h
        self._bs.use_device(d)
        return (h,)

    def _cuCtxDestroy(self, a: tuple, b: _Blob) -> tuple:
        self.ctxs.pop(a[0])
        if a[0] == self.current_ctx:
            self.current_dev, self.current_ctx = None, 0
            self._bs.use_device(None)
        return ()

    def _cuCtxSetCurrent(self, a: tuple, b: _Blob) -> tuple:
        self.current_dev = None if a[0] == 0 else self.ctxs.get(a[0])
        self.current_ctx = a[0]
        self._bs.use_device(self.current_dev)
        return ()

    def _cuCtxSynchronize(self, a: tuple, b: _Blob) -> tuple:
        self._cur()
        self._bs.synchronize(None)
        return ()

    # -- memory -------------------------------------------------------------------------------

    def _cuMemAlloc(self, a: tuple, b: _Blob) -> tuple:
        return (self._bs.alloc(self._cur(), a[0]),)

    def _cuMemFree(self, a: tuple, b: _Blob) -> tuple:
        self._bs.free(a[0])
        return ()

    def _cuMemGetInfo(self, a: tuple, b: _Blob) -> tuple:
        d = self._cur()
        total = self.vgpus[d].memory
        return (total - self._bs.mem.used[d], total)

    def _htod(self, dst: int, b: _Blob) -> tuple:
        self._range(dst, b.remaining)
        self._bs.write(dst, b.chunks())
        return ()

    def _cuMemcpyHtoD(self, a: tuple, b: _Blob) -> tuple:
        return self._htod(a[0], b)

    def _cuMemcpyHtoDAsync(self, a: tuple, b: _Blob) -> tuple:
        self._stream(a[2])
        return self._htod(a[0], b)

    def _dtoh(self, src: int, n: int) -> _BlobOut:
        self._range(src, n)
        bs = self._bs
        bs.before_read(src, n)  # asynchronous failures become this call's status
        return _BlobOut((n,), n, lambda sinks: bs.read(src, sinks))

    def _cuMemcpyDtoH(self, a: tuple, b: _Blob) -> _BlobOut:
        return self._dtoh(a[0], a[1])

    def _cuMemcpyDtoHAsync(self, a: tuple, b: _Blob) -> _BlobOut:
        self._stream(a[2])
        return self._dtoh(a[0], a[1])

    def _cuMemcpyDtoD(self, a: tuple, b: _Blob) -> tuple:
        dst, src, n = a
        self._range(dst, n)
        self._range(src, n)
        self._bs.copy(dst, src, n)
        return ()

    def _cuMemcpyDtoDAsync(self, a: tuple, b: _Blob) -> tuple:
        self._stream(a[3])
        return self._cuMemcpyDtoD(a[:3], b)

    def _memset(self, ptr: int, value: int, size: int, count: int) -> tuple:
        self._range(ptr, size * count)
        if size == 1 and value > 0xFF:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "cuMemsetD8 value must fit in 8 bits")
        self._bs.memset(ptr, value, size, count)
        return ()

    def _cuMemsetD8(self, a: tuple, b: _Blob) -> tuple:
        return self._memset(a[0], a[1], 1, a[2])

    def _cuMemsetD32(self, a: tuple, b: _Blob) -> tuple:
        return self._memset(a[0], a[1], 4, a[2])

    def _cuMemsetD8Async(self, a: tuple, b: _Blob) -> tuple:
        self._stream(a[3])
        return self._memset(a[0], a[1], 1, a[2])

    def _cuMemsetD32Async(self, a: tuple, b: _Blob) -> tuple:
        self._stream(a[3])
        return self._memset(a[0], a[1], 4, a[2])

    # -- streams and events -----------------------------------------------------------------

    def _cuStreamCreate(self, a: tuple, b: _Blob) -> tuple:
        self._cur()
        return (self.streams.add(self._bs.stream_create(a[0])),)

    def _cuStreamSynchronize(self, a: tuple, b: _Blob) -> tuple:
        self._bs.synchronize(self._stream(a[0]))
        return ()

    def _cuStreamDestroy(self, a: tuple, b: _Blob) -> tuple:
        self._bs.stream_destroy(self.streams.pop(a[0]))
        return ()

    def _cuStreamQuery(self, a: tuple, b: _Blob) -> tuple:
        if not self._bs.stream_query(self._stream(a[0])):
            raise CudaCallError(E.CUDA_ERROR_NOT_READY)
        return ()

    def _cuEventCreate(self, a: tuple, b: _Blob) -> tuple:
        self._cur()
        return (self.events.add(self._bs.event_create(a[0])),)

    def _cuEventRecord(self, a: tuple, b: _Blob) -> tuple:
        self._bs.event_record(self.events.get(a[0]), self._stream(a[1]))
        return ()

    def _cuEventSynchronize(self, a: tuple, b: _Blob) -> tuple:
        self._bs.event_synchronize(self.events.get(a[0]))
        return ()

    def _cuEventElapsedTime(self, a: tuple, b: _Blob) -> tuple:
        return (self._bs.event_elapsed(self.events.get(a[0]), self.events.get(a[1])),)

    def _cuEventDestroy(self, a: tuple, b: _Blob) -> tuple:
        self._bs.event_destroy(self.events.pop(a[0]))
        return ()

    def _cuEventQuery(self, a: tuple, b: _Blob) -> tuple:
        if not self._bs.event_query(self.events.get(a[0])):
            raise CudaCallError(E.CUDA_ERROR_NOT_READY)
        return ()

    # -- modules and launches ---------------------------------------------------------------

    def _cuModuleLoadData(self, a: tuple, b: _Blob) -> tuple:
        self._cur()
        image = b.read_all()
        return (self.modules.add((self._bs.module_load(image), self.current_dev)),)

    def _cuModuleGetFunction(self, a: tuple, b: _Blob) -> _BlobOut:
        module, dev = self.modules.get(a[0])
        try:
            name = b.read_all().decode("ascii")
        except UnicodeDecodeError:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "kernel name is not ASCII") from None
        func, slots = self._bs.get_function(module, name)
        total = max((s.offset + s.size for s in slots), default=0)
        h = self.functions.add((func, slots, total, dev, name))
        layout = b"".join(struct.pack("<II", s.offset, s.size) for s in slots)

        def fill(sinks: Iterator[memoryview]) -> None:
            pos = 0
            for s in sinks:
                s[:] = layout[pos:pos + len(s)]
                pos += len(s)

        return _BlobOut((h, len(layout)), len(layout), fill)

    def _cuModuleUnload(self, a: tuple, b: _Blob) -> tuple:
        module, _dev = self.modules.pop(a[0])
        self._bs.module_unload(module)
        return ()

    def _cuLaunchKernel(self, a: tuple, b: _Blob) -> tuple:
        fh, gx, gy, gz, bx, by, bz, shared, sh, plen = a
        func, _slots, total, dev, name = self.functions.get(fh)
        stream = self._stream(sh)
        if plen != total:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                                f"{name}: {plen} bytes of parameters, the kernel takes {total}")
        if min(gx, gy, gz, bx, by, bz) == 0 or bx * by * bz > 1024:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"{name}: bad launch dimensions")
        params = b.read_all()
        throttle = self.throttles[dev]
        throttle.before_launch()
        seconds = self._bs.launch(func, (gx, gy, gz), (bx, by, bz), shared, stream, params)
        throttle.account(seconds)
        return ()


def open_authorizer(default_vgpus: int = 1, default_gmem_mib: int = 4096, gpus: int = 1,
                    gpu_mem_mib: int | None = None) -> Authorizer:
    """Grants what the HELLO asks for, within the physical GPUs (no controller: direct mode).

    vGPUs are placed round-robin over the physical GPUs; a request for more memory than one GPU
    has is refused with a message.
    """

    def authorize(hello: Hello) -> list[VGpu]:
        n = hello.vgpu_count or default_vgpus
        mem = hello.gmem_mib or default_gmem_mib
        if gpu_mem_mib is not None and mem > gpu_mem_mib:
            raise OrionError(f"ORION_GMEM={mem} MiB exceeds the memory of one GPU ({gpu_mem_mib} MiB)")
        return [VGpu(i % gpus, mem << 20, hello.ratio or 100) for i in range(n)]

    return authorize


def now() -> float:
    return time.monotonic()
