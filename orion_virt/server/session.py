"""One client session: the HELLO handshake, then calls dispatched to a backend session.

Everything a client sends is untrusted. Handles (contexts, streams, events, modules, functions)
are looked up in this session's own tables; device ranges are resolved in this session's
MemoryTable; blob lengths are bounded before anything is read or allocated. A call that fails
returns its CUresult; a NO_REPLY call's failure is reported as the status of the next
synchronising call (as CUDA reports asynchronous errors). Malformed framing ends the session
with an ERROR frame whose status the client's application sees.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..cuda_enums import CUdevice_attribute, CUmemorytype, CUresult
from ..cuda_enums import CUpointer_attribute as P
from ..errors import OrionError, ProtocolError, Refused, TransportError
from ..transport.base import Stream
from ..wire import HEADER, HEADER_SIZE, Hello, Kind, Plan, ServerProtocol, Welcome
from ..wire.codes import Call
from ..wire.protocol import PLANS
from .backend import Backend, BackendSession, CudaCallError, LaunchAttrs, VGpu
from .blobs import Blob, Fill
from .dispatch_gen import DISPATCH
from .hostshare import SharedHost
from .throttle import Throttle

E = CUresult
LEASE_GRACE_S = 2.0
"""Slack for clock skew between the controller and this server."""
LAUNCH_CODE = int(Call.cuLaunchKernel)
HELLO_TIMEOUT_S = 10.0
"""How long a new connection may take to send its HELLO."""


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
    ended: Callable[[], None] | None = None
    """Called once when the session has ended and freed its vGPUs (tells the controller)."""


Authorizer = Callable[[Hello], "list[VGpu] | Admission"]


class _Handles:
    """A per-session table of opaque u64 handles; 0 is never issued. Adding an object that is
    already in the table returns its handle (a primary context retained twice)."""

    def __init__(self, kind: str, base: int, invalid: CUresult = E.CUDA_ERROR_INVALID_HANDLE) -> None:
        self.kind = kind
        self.items: dict[int, Any] = {}
        self._of: dict[int, int] = {}
        self._ids = itertools.count(base)
        self.invalid = invalid

    def add(self, obj: Any) -> int:
        h = self._of.get(id(obj))
        if h is None:
            h = next(self._ids)
            self.items[h] = obj
            self._of[id(obj)] = h
        return h

    def get(self, h: int) -> Any:
        try:
            return self.items[h]
        except KeyError:
            raise CudaCallError(self.invalid, f"{self.kind} handle 0x{h:x} is not owned by this session") from None

    def pop(self, h: int) -> Any:
        obj = self.get(h)
        del self.items[h]
        del self._of[id(obj)]
        return obj


@dataclass(eq=False)
class _Ctx:
    dev: int


@dataclass(frozen=True, eq=False)
class _Function:
    func: Any
    total: int
    dev: int
    name: str


@dataclass(eq=False)
class _Graph:
    """Work recorded from captured streams, in issue order: each step replays one call on the
    stream the graph is launched on. Recording issues nothing; a graph is the same on the sim and
    the cuda backend (replayed call by call, one message from the client)."""

    capture_id: int
    origin: Any
    steps: list[Callable[[Any], None]]
    open: bool = True


REFUSED_STATUS = int(E.CUDA_ERROR_NOT_PERMITTED)
"""The status of an ERROR frame for a refused token or an expired lease."""
PROTOCOL_STATUS = int(E.CUDA_ERROR_UNKNOWN)
"""The status of an ERROR frame that ends a session for a protocol violation."""


_A = CUdevice_attribute
FEATURES_NOT_REMOTED = frozenset(int(a) for a in (
    _A.CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, _A.CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS,
    _A.CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS, _A.CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
    _A.CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST,
    _A.CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM, _A.CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, _A.CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, _A.CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES,
    _A.CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_HOST_NUMA_MEMORY_POOLS_SUPPORTED, _A.CU_DEVICE_ATTRIBUTE_HOST_MEMORY_POOLS_SUPPORTED,
    _A.CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
))
"""Device features whose functions are not remoted (managed memory, virtual memory management,
host registration, IPC and export handles): reported absent, so that a framework that asks takes
its ordinary path instead of calling a function that is refused with CUDA_ERROR_NOT_SUPPORTED."""


class Session:
    """Serves one client over ``stream`` until BYE, a broken transport or a protocol error.

    The protocol (framing, states, deferred errors) is ``ServerProtocol``'s; the argument checks
    of every call are generated from the call spec (``dispatch_gen``); the ``x_<call>`` methods
    execute validated calls on the backend session and return the call's ``out`` values.
    """

    def __init__(self, stream: Stream, backend: Backend, authorize: Authorizer, session_id: int,
                 log: logging.Logger, throttle: bool = True, hello_timeout: float | None = HELLO_TIMEOUT_S,
                 peer_pid: Callable[[], int | None] | None = None) -> None:
        self.stream = stream
        self.backend = backend
        self.authorize = authorize
        self.session_id = session_id
        self.log = log
        self.throttle_enabled = throttle
        self.hello_timeout = hello_timeout
        self.proto = ServerProtocol()
        self.vgpus: list[VGpu] = []
        self.bs: BackendSession | None = None
        self._b: BackendSession
        """The open backend session, for the executions (``bs`` is None again once closed)."""
        self.current: _Ctx | None = None
        self.h_context = _Handles("context", 0x1000_0000, E.CUDA_ERROR_INVALID_CONTEXT)
        self.primary: dict[int, _Ctx] = {}
        self.peers: set[tuple[_Ctx, _Ctx]] = set()
        """(context, peer) pairs of cuCtxEnablePeerAccess"""
        self.h_stream = _Handles("stream", 0x2000_0000)
        self.h_event = _Handles("event", 0x3000_0000)
        self.h_module = _Handles("module", 0x4000_0000)
        self.h_function = _Handles("function", 0x5000_0000)
        self.h_graph = _Handles("graph", 0x6000_0000)
        self.h_graph_exec = _Handles("graph_exec", 0x7000_0000)
        self._captures: dict[int, _Graph] = {}
        """id(stream) -> the graph its work is recorded into (streams joined by an event too)"""
        self._event_graph: dict[int, _Graph] = {}
        self._capture_ids = itertools.count(1)
        self.throttles: list[Throttle] = []
        self.calls = 0
        self.htod_bytes = 0
        self.dtoh_bytes = 0
        self.errors: dict[int, int] = {}
        """CUresult -> calls that failed with it (read by server/metrics.py, never on the hot path)"""
        self.hello: Hello | None = None
        self.admission: Admission | None = None
        self.lease_end = 0.0
        self.shared = SharedHost(peer_pid)
        """Host memory the client shares (orionHostShare): only where ``peer_pid`` finds its process."""

    @property
    def current_dev(self) -> int | None:
        return None if self.current is None else self.current.dev

    # -- lifecycle ------------------------------------------------------------------------------

    def handshake(self) -> Hello:
        """Read HELLO (within ``hello_timeout``), admit the client, send WELCOME.
        Raises ProtocolError, Refused (with the status for the client) or TransportError."""
        stream, proto = self.stream, self.proto
        saved = stream.timeout
        stream.set_timeout(self.hello_timeout)
        try:
            n = proto.hello_header(stream.recv_exact(HEADER_SIZE))
            hello = proto.hello_body(stream.recv_exact(n))
        finally:
            stream.set_timeout(saved)
        try:
            granted = self.authorize(hello)
        except Refused:
            raise
        except OrionError as e:
            raise Refused(str(e), REFUSED_STATUS) from None
        if isinstance(granted, Admission):
            self.admission = granted
            self.lease_end = granted.expires_at + LEASE_GRACE_S
            granted = granted.vgpus
        self.vgpus = granted
        self.hello = hello
        self.bs = self._b = self.backend.open_session(self.vgpus)
        self.bs.liveness = stream.check_peer
        if hasattr(self.stream, "min_chunk"):
            self.stream.min_chunk = getattr(self.backend, "preferred_chunk", 0)
        for view in getattr(self.stream, "host_regions", lambda: [])():
            self.bs.register_host(view)  # e.g. the shm rings: the cuda backend pins them
        self.throttles = [Throttle(v.ratio if self.throttle_enabled else 100) for v in self.vgpus]
        stream.send(proto.welcome(Welcome(self.session_id, self.backend.name)))
        stream.flush()
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
            except Refused as e:
                self.log.warning("session %d: handshake refused: %s", self.session_id, e.reason)
                self._try_send(self.proto.refuse(e.reason, e.status))
                return f"refused: {e.reason}"
            return self.serve()
        except LeaseExpired as e:
            self.log.warning("session %d: %s", self.session_id, e)
            self._try_send(self.proto.refuse(str(e), REFUSED_STATUS))
            return "lease expired"
        except ProtocolError as e:
            self.log.warning("session %d: protocol error, closing: %s", self.session_id, e)
            self._try_send(self.proto.refuse(f"protocol error: {e}", PROTOCOL_STATUS))
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
            self.shared.close()
            self.log.info("session %d: closed after %d calls; freed %d allocation(s)",
                          self.session_id, self.calls, leaked)
            ended, self.admission = (self.admission.ended if self.admission else None), None
            if ended is not None:
                try:
                    ended()
                except OrionError as e:  # the lease ends it anyway
                    self.log.warning("session %d: could not tell the controller it ended: %s", self.session_id, e)

    # -- the call loop ----------------------------------------------------------------------

    def serve(self) -> str:
        stream, proto = self.stream, self.proto
        recv_unpack, send, flush = stream.recv_unpack, stream.send, stream.flush
        buffered = stream.buffered
        call_header, call_blob, reply = proto.call_header, proto.call_blob, proto.reply
        dispatch = DISPATCH
        blob = Blob(stream, 0)  # one per session: the execution consumes it before the next call is read
        launch_plan = PLANS[LAUNCH_CODE]
        while True:
            h = recv_unpack(HEADER)
            p: Any = call_header(h)
            if p is launch_plan and not self._captures:
                self._launch_now(h, p)
                continue
            if p.__class__ is not Plan:
                if p is Kind.RENEW:
                    self._renew(proto.renew_body(stream.recv_exact(h[0])))
                    continue
                self.log.info("session %d: client said goodbye", self.session_id)
                return "bye"
            args = recv_unpack(p.req) if p.req_size else ()
            if p.req_blob_idx >= 0:
                blob.remaining = call_blob(p, args, h[0])
            self.calls += 1
            if self.lease_end and time.time() > self.lease_end:  # NO_REPLY calls too
                raise LeaseExpired(self._expired_message())
            status = proto.take_deferred(p) if proto.deferred else 0
            result: Any = None
            if not status:
                try:
                    result = dispatch[p.code](self, args, blob)
                except CudaCallError as e:
                    status = e.code
                    self.errors[e.code] = self.errors.get(e.code, 0) + 1
                    self.log.info("session %d: %s failed: %s (%s)", self.session_id, p.name,
                                  _name(e.code), e.message)
            if blob.remaining:
                stream.discard(blob.remaining)
                blob.remaining = 0
            if p.flags:
                if status:
                    proto.finished(p, status)
                continue
            if result.__class__ is tuple and not status:
                send(p.reply_ok(h[4], 0, *result) if result else p.reply_ok(h[4], 0))
            elif status or result.__class__ is tuple:
                send(reply(p, h[4], status, result))
            else:
                send(reply(p, h[4], 0, result.values, result.fill.size))
                flush()
                result.fill.write(stream.send_chunks(result.fill.size))
            if buffered:
                flush()

    def _launch_now(self, h: tuple, p: Plan) -> None:
        """cuLaunchKernel outside stream capture, the call a pipelined program sends most: the
        same checks as the generated dispatch and ``x_cuLaunchKernel`` in one frame, so that a
        ring full of launches is decoded and issued back to back. Its failure is deferred (NO_REPLY)."""
        stream = self.stream
        a = stream.recv_unpack(p.req)
        n = a[9]
        if n > p.max_req_blob or p.req_size + n != h[0]:
            self.proto.call_blob(p, a, h[0])  # raises the ProtocolError that says which
        params = stream.recv_exact(n) if n else b""
        self.calls += 1
        if self.lease_end and time.time() > self.lease_end:
            raise LeaseExpired(self._expired_message())
        try:
            f = self.h_function.items.get(a[0]) or self.h_function.get(a[0])
            st = (self.h_stream.items.get(a[8]) or self.h_stream.get(a[8])) if a[8] else None
            _, gx, gy, gz, bx, by, bz, shared = a[:8]
            _check_launch(f, n, gx, gy, gz, bx, by, bz)
            self._launch(f, (gx, gy, gz), (bx, by, bz), shared, st, params)
        except CudaCallError as e:
            self.errors[e.code] = self.errors.get(e.code, 0) + 1
            self.log.info("session %d: %s failed: %s (%s)", self.session_id, p.name, _name(e.code), e.message)
            self.proto.finished(p, e.code)

    def _renew(self, token: str) -> None:
        """A renewed token: it must be valid for this same allocation, else the session ends."""
        if self.admission is None:
            self.log.info("session %d: lease renewal ignored (direct mode)", self.session_id)
            return
        try:
            expires = self.admission.renew(token)
        except OrionError as e:
            raise ProtocolError(f"renewed token refused: {e}") from None
        self.lease_end = expires + LEASE_GRACE_S
        self.log.debug("session %d: lease renewed until %.0f", self.session_id, expires)

    def _expired_message(self) -> str:
        alloc = self.hello.allocation_id if self.hello else "?"
        return (f"allocation {alloc} expired: its lease was not renewed with the Orion Controller, "
                f"so its vGPUs were returned to the pool; the session is closed")

    # -- checks the generated dispatch calls ---------------------------------------------------


    def _dev(self, d: int) -> int:
        if not 0 <= d < len(self.vgpus):
            raise CudaCallError(E.CUDA_ERROR_INVALID_DEVICE, f"device {d} (this session has {len(self.vgpus)})")
        return d

    def _cur(self) -> int:
        if self.current is None:
            raise CudaCallError(E.CUDA_ERROR_INVALID_CONTEXT, "no current context")
        return self.current.dev

    def _range(self, ptr: int, n: int) -> None:
        self._b.mem.resolve(ptr, n)

    def _base(self, ptr: int) -> None:
        self._b.mem.check_base(ptr)

    def _shared(self, addr: int, n: int) -> memoryview:
        return self.shared.view(addr, n)

    def _gpu(self, d: int) -> Any:
        return self.backend.gpus()[self.vgpus[d].physical]

    # -- execution: device and context ------------------------------------------------------

    def x_cuInit(self, flags: int) -> None:
        if flags != 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "cuInit flags must be 0")

    def x_cuDriverGetVersion(self) -> int:
        return self.backend.driver_version()

    def x_cuDeviceGetCount(self) -> int:
        return len(self.vgpus)

    def x_cuDeviceGet(self, d: int) -> int:
        return d

    def x_cuDeviceGetName(self, length: int, d: int) -> Fill:
        if length <= 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "name length must be positive")
        return Fill.of(self._gpu(d).name.encode()[: max(0, min(length, 256) - 1)])

    def x_cuDeviceTotalMem(self, d: int) -> int:
        return self.vgpus[d].memory

    def x_cuDeviceGetAttribute(self, attrib: int, d: int) -> int:
        if attrib in FEATURES_NOT_REMOTED:
            return 0
        attributes = self._gpu(d).attributes
        if attrib not in attributes:
            if not 0 < attrib < 1000:
                raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"unknown attribute {attrib}")
            return 0
        return int(attributes[attrib])

    def x_cuDeviceGetUuid(self, d: int) -> bytes:
        phys = self._gpu(d).uuid
        # each vGPU gets its own stable UUID derived from the physical one
        return bytes(x ^ (d + 1 if i == 15 else 0) for i, x in enumerate(phys))

    def x_cuDevicePrimaryCtxRetain(self, d: int) -> _Ctx:
        ctx = self.primary.get(d)
        if ctx is None:
            ctx = self.primary[d] = _Ctx(d)
        return ctx

    def x_cuDevicePrimaryCtxRelease(self, d: int) -> None:
        pass

    def x_cuCtxCreate(self, flags: int, d: int) -> _Ctx:
        ctx = _Ctx(d)
        self.x_cuCtxSetCurrent(ctx)
        return ctx

    def x_cuCtxDestroy(self, ctx: _Ctx) -> None:
        self.peers = {p for p in self.peers if ctx not in p}
        if self.primary.get(ctx.dev) is ctx:
            del self.primary[ctx.dev]
        if ctx is self.current:
            self.x_cuCtxSetCurrent(None)

    def x_cuDeviceCanAccessPeer(self, d: int, peer: int) -> int:
        if d == peer:
            return 0
        a, b = self.vgpus[d].physical, self.vgpus[peer].physical
        return 1 if a == b else int(self._b.can_access_peer(a, b))

    def x_cuCtxEnablePeerAccess(self, peer: _Ctx, flags: int) -> None:
        cur = self.current
        if cur is None:
            raise CudaCallError(E.CUDA_ERROR_INVALID_CONTEXT, "no current context")
        if flags:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"cuCtxEnablePeerAccess flags must be 0, not {flags}")
        if peer.dev == cur.dev:
            raise CudaCallError(E.CUDA_ERROR_INVALID_DEVICE, "a context of the current context's own device")
        if (cur, peer) in self.peers:
            raise CudaCallError(E.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "peer access already enabled")
        a, b = self.vgpus[cur.dev].physical, self.vgpus[peer.dev].physical
        if a != b:
            self._b.enable_peer(a, b)
        self.peers.add((cur, peer))

    def x_cuCtxDisablePeerAccess(self, peer: _Ctx) -> None:
        cur = self.current
        if cur is None:
            raise CudaCallError(E.CUDA_ERROR_INVALID_CONTEXT, "no current context")
        if (cur, peer) not in self.peers:
            raise CudaCallError(E.CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, "peer access was not enabled")
        self.peers.discard((cur, peer))  # the driver's own access between GPUs stays: other pairs may use it

    def x_orionPointerKinds(self, dst: int, src: int, n: int) -> int:
        return (1 if self._is_device(dst, n) else 0) | (2 if self._is_device(src, n) else 0)

    def _is_device(self, ptr: int, n: int) -> bool:
        """Whether [ptr, ptr+n) is device memory of this session; CudaCallError if it starts in an
        allocation and runs past its end."""
        mem = self._b.mem
        try:
            mem.resolve(ptr, n)
            return True
        except CudaCallError:
            try:
                mem.resolve(ptr, 1)
            except CudaCallError:
                return False
            raise

    def x_cuMemcpyPeer(self, dst: int, dctx: _Ctx, src: int, sctx: _Ctx, n: int) -> None:
        self._b.copy(dst, src, n)

    def x_cuMemcpyPeerAsync(self, dst: int, dctx: _Ctx, src: int, sctx: _Ctx, n: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.copy(dst, src, n))

    def x_cuCtxSetCurrent(self, ctx: _Ctx | None) -> None:
        self.current = ctx
        self._b.use_device(None if ctx is None else ctx.dev)

    def x_cuCtxSynchronize(self) -> None:
        if self.current is None:  # _cur(), inline: the call applications make most
            raise CudaCallError(E.CUDA_ERROR_INVALID_CONTEXT, "no current context")
        self._b.synchronize(None)

    # -- memory -------------------------------------------------------------------------------

    def x_cuMemAlloc(self, size: int) -> int:
        return self._b.alloc(self._cur(), size)

    def x_cuMemFree(self, ptr: int) -> None:
        self._b.free(ptr)

    def x_cuMemGetInfo(self) -> tuple[int, int]:
        d = self._cur()
        total = self.vgpus[d].memory
        return total - self._b.mem.used[d], total

    def x_cuMemcpyHtoD(self, dst: int, src: Blob, n: int) -> None:
        self._b.write(dst, src.chunks())
        self.htod_bytes += n

    def _recording(self, stream: Any) -> _Graph | None:
        return self._captures.get(id(stream)) if stream is not None and self._captures else None

    def _on_stream(self, stream: Any, work: Callable[[Any], None]) -> None:
        """Do ``work`` on ``stream`` now, or record it into the graph the stream is capturing."""
        g = self._recording(stream)
        if g is not None:
            g.steps.append(work)
        else:
            work(stream)

    def _no_host_copy_in_capture(self, stream: Any) -> None:
        if self._recording(stream) is not None:
            raise CudaCallError(E.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                                "a copy to or from host memory cannot be captured into a graph")

    def x_cuMemcpyHtoDAsync(self, dst: int, src: Blob, n: int, stream: Any) -> None:
        if self._recording(stream) is not None:
            for _ in src.chunks():  # drain the blob: the transport must end up past it
                pass
            self._no_host_copy_in_capture(stream)
        self._b.write(dst, src.chunks())
        self.htod_bytes += n

    def x_cuMemcpyDtoH(self, src: int, n: int) -> Fill:
        bs = self._b
        bs.before_read(src, n)  # asynchronous failures become this call's status
        self.dtoh_bytes += n
        return Fill(n, lambda sinks: bs.read(src, sinks))

    def x_cuMemcpyDtoHAsync(self, src: int, n: int, stream: Any) -> Fill:
        self._no_host_copy_in_capture(stream)
        return self.x_cuMemcpyDtoH(src, n)

    # Shared host memory (hostshare.py): a copy is one backend copy from or to the block, no blob.
    # The asynchronous ones run at once too (as every copy of this session layer): their
    # stream's order holds, since the session executes calls in order.

    def x_orionHostShare(self, fd: int, addr: int, size: int) -> None:
        b = self.shared.share(fd, addr, size, self._b)
        self.log.info("session %d: %d KiB of host memory at %#x shared by the client (%d KiB in all)",
                      self.session_id, b.size >> 10, addr, self.shared.bytes >> 10)

    def x_orionHostUnshare(self, addr: int) -> None:
        self.shared.unshare(addr, self._b)

    def x_orionHostDevicePointer(self, addr: int) -> int:
        b = self.shared.block(addr)
        return self._b.host_device_pointer(b.view) + (addr - b.addr)

    def x_orionMemcpyHtoDShared(self, dst: int, src: memoryview, n: int) -> None:
        self._b.write(dst, (src,))
        self.htod_bytes += n

    def x_orionMemcpyDtoHShared(self, dst: memoryview, src: int, n: int) -> None:
        self._b.before_read(src, n)
        self._b.read(src, (dst,))
        self.dtoh_bytes += n

    def x_orionMemcpyHtoDSharedAsync(self, dst: int, src: memoryview, n: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.write(dst, (src,)))
        self.htod_bytes += n

    def x_orionMemcpyDtoHSharedAsync(self, dst: memoryview, src: int, n: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.read(src, (dst,)))
        self.dtoh_bytes += n

    def x_cuMemcpyDtoD(self, dst: int, src: int, n: int) -> None:
        self._b.copy(dst, src, n)

    def x_cuMemcpyDtoDAsync(self, dst: int, src: int, n: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.copy(dst, src, n))

    def x_cuMemsetD8(self, ptr: int, value: int, count: int) -> None:
        self._b.memset(ptr, value, 1, count)

    def x_cuMemsetD32(self, ptr: int, value: int, count: int) -> None:
        self._b.memset(ptr, value, 4, count)

    def x_cuMemsetD8Async(self, ptr: int, value: int, count: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.memset(ptr, value, 1, count))

    def x_cuMemsetD32Async(self, ptr: int, value: int, count: int, stream: Any) -> None:
        self._on_stream(stream, lambda st: self._b.memset(ptr, value, 4, count))

    # -- streams and events -----------------------------------------------------------------

    def x_cuStreamCreate(self, flags: int) -> Any:
        self._cur()
        return self._b.stream_create(flags)

    def x_cuStreamCreateWithPriority(self, flags: int, priority: int) -> Any:
        self._cur()
        return self._b.stream_create(flags, priority)

    def x_cuCtxGetStreamPriorityRange(self) -> tuple[int, int]:
        self._cur()
        return self._b.stream_priority_range()

    def x_cuStreamWaitEvent(self, stream: Any, event: Any, flags: int) -> None:
        if flags & ~1:  # CU_EVENT_WAIT_DEFAULT, CU_EVENT_WAIT_EXTERNAL
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"cuStreamWaitEvent flags {flags:#x}")
        g = self._event_graph.get(id(event))
        if g is not None and g.open and stream is not None:  # the stream joins the capture
            self._captures.setdefault(id(stream), g)
            return
        self._on_stream(stream, lambda st: self._b.stream_wait_event(st, event))

    def x_cuStreamSynchronize(self, stream: Any) -> None:
        self._b.synchronize(stream)

    def x_cuStreamDestroy(self, stream: Any) -> None:
        self._b.stream_destroy(stream)

    def x_cuStreamQuery(self, stream: Any) -> None:
        if not self._b.stream_query(stream):
            raise CudaCallError(E.CUDA_ERROR_NOT_READY)

    def x_cuEventCreate(self, flags: int) -> Any:
        self._cur()
        return self._b.event_create(flags)

    def x_cuEventRecord(self, event: Any, stream: Any) -> None:
        if (g := self._recording(stream)) is not None:
            self._event_graph[id(event)] = g
            g.steps.append(lambda st: self._b.event_record(event, st))
            return
        self._event_graph.pop(id(event), None)
        self._b.event_record(event, stream)

    # -- stream capture and graphs ---------------------------------------------------------

    def x_cuStreamBeginCapture_v2(self, stream: Any, mode: int) -> None:
        if stream is None:
            raise CudaCallError(E.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "the legacy default stream cannot be captured")
        if id(stream) in self._captures:
            raise CudaCallError(E.CUDA_ERROR_ILLEGAL_STATE, "the stream is already being captured")
        if mode not in (0, 1, 2):  # global, thread-local, relaxed
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"capture mode {mode}")
        self._captures[id(stream)] = _Graph(next(self._capture_ids), stream, [])

    def x_cuStreamEndCapture(self, stream: Any) -> _Graph:
        g = self._captures.get(id(stream))
        if g is None or g.origin is not stream:
            raise CudaCallError(E.CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing (or joined another's capture)")
        g.open = False
        for k in [k for k, v in self._captures.items() if v is g]:
            del self._captures[k]
        return g

    def x_cuStreamGetCaptureInfo(self, stream: Any) -> tuple[int, int]:
        g = self._recording(stream)
        return (1, g.capture_id) if g is not None else (0, 0)  # CU_STREAM_CAPTURE_STATUS_ACTIVE / _NONE

    def x_cuGraphInstantiateWithFlags(self, graph: _Graph, flags: int) -> _Graph:
        if flags & ~0xF:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"graph instantiation flags {flags:#x}")
        return _Graph(graph.capture_id, None, list(graph.steps), False)

    def x_cuGraphLaunch(self, exe: _Graph, stream: Any) -> None:
        if (g := self._recording(stream)) is not None:  # a graph launched into a capture: its steps
            g.steps.extend(exe.steps)
            return
        for step in exe.steps:
            step(stream)

    def x_cuGraphExecDestroy(self, exe: _Graph) -> None:
        pass

    def x_cuGraphDestroy(self, graph: _Graph) -> None:
        pass

    def x_cuGraphGetNodeCount(self, graph: _Graph) -> int:
        return len(graph.steps)

    def x_cuEventSynchronize(self, event: Any) -> None:
        self._b.event_synchronize(event)

    def x_cuEventElapsedTime(self, start: Any, end: Any) -> float:
        return self._b.event_elapsed(start, end)

    def x_cuEventDestroy(self, event: Any) -> None:
        self._b.event_destroy(event)

    def x_cuEventQuery(self, event: Any) -> None:
        if not self._b.event_query(event):
            raise CudaCallError(E.CUDA_ERROR_NOT_READY)

    # -- modules and launches ---------------------------------------------------------------

    def x_cuModuleLoadData(self, image: Blob) -> tuple[Any, int]:
        dev = self._cur()
        return (self._b.module_load(image.read_all()), dev)

    def x_cuModuleGetFunction(self, module: tuple[Any, int], name_blob: Blob) -> tuple[_Function, Fill]:
        mod, dev = module
        try:
            name = name_blob.read_all().decode("ascii")
        except UnicodeDecodeError:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "kernel name is not ASCII") from None
        func, slots = self._b.get_function(mod, name)
        total = max((s.offset + s.size for s in slots), default=0)
        layout = b"".join(struct.pack("<II", s.offset, s.size) for s in slots)
        return _Function(func, total, dev, name), Fill.of(layout)

    def x_orionModuleFunctionNames(self, module: tuple[Any, int], length: int) -> tuple[int, Fill]:
        names = self._b.module_function_names(module[0])
        blob = b"".join(n.encode() + b"\0" for n in names)
        if len(blob) > length:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                                f"{len(names)} kernel names take {len(blob)} bytes, more than the {length} asked for")
        return len(names), Fill.of(blob)

    def x_cuModuleUnload(self, module: tuple[Any, int]) -> None:
        self._b.mem.drop_globals(module[0])
        self._b.module_unload(module[0])

    def x_cuModuleGetGlobal(self, module: tuple[Any, int], name_blob: Blob) -> tuple[int, int]:
        mod, dev = module
        try:
            name = name_blob.read_all().decode("ascii")
        except UnicodeDecodeError:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "global name is not ASCII") from None
        base, size, obj = self._b.module_global(mod, name)
        self._b.mem.add_global(dev, base, size, obj, mod)
        return base, size

    def x_cuFuncGetAttribute(self, attrib: int, f: _Function) -> int:
        return self._b.func_attribute(f.func, attrib)

    def x_cuFuncSetAttribute(self, f: _Function, attrib: int, value: int) -> None:
        self._b.func_set_attribute(f.func, attrib, value)

    def x_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(self, f: _Function, block: int, dyn: int,
                                                                flags: int) -> int:
        if block <= 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"block size {block}")
        return self._b.occupancy_blocks(f.func, block, dyn, flags)

    def x_cuOccupancyAvailableDynamicSMemPerBlock(self, f: _Function, blocks: int, block: int) -> int:
        if block <= 0 or blocks <= 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"{blocks} blocks of {block}")
        return self._b.occupancy_dynamic_smem(f.func, blocks, block)

    def x_cuOccupancyMaxActiveClusters(self, f: _Function, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                                       smem: int, cx: int, cy: int, cz: int) -> int:
        if min(gx, gy, gz, bx, by, bz) <= 0:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, "grid and block dimensions must be positive")
        return self._b.occupancy_clusters(f.func, (gx, gy, gz), (bx, by, bz), smem, (cx, cy, cz))

    def x_cuCtxGetLimit(self, limit: int) -> int:
        self._cur()
        return self._b.ctx_limit(limit)

    def x_cuCtxSetLimit(self, limit: int, value: int) -> None:
        self._cur()
        self._b.ctx_set_limit(limit, value)

    def _context_of(self, dev: int) -> int:
        """The handle of a context of ``dev`` this session holds (the current one first); 0: none."""
        if self.current is not None and self.current.dev == dev:
            return self.h_context.add(self.current)
        return next((h for h, c in self.h_context.items.items() if c.dev == dev), 0)

    def x_cuPointerGetAttribute(self, attribute: int, ptr: int) -> int:
        base, _off, _obj = self._b.mem.resolve(ptr, 0)
        dev = self._b.mem.device_of(base)
        size = self._b.mem.size_of(base)
        values = {
            P.CU_POINTER_ATTRIBUTE_MEMORY_TYPE: int(CUmemorytype.CU_MEMORYTYPE_DEVICE),
            P.CU_POINTER_ATTRIBUTE_DEVICE_POINTER: ptr,
            P.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: dev,
            P.CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: base,
            P.CU_POINTER_ATTRIBUTE_RANGE_SIZE: size,
            P.CU_POINTER_ATTRIBUTE_BUFFER_ID: base,
            P.CU_POINTER_ATTRIBUTE_IS_MANAGED: 0,
            P.CU_POINTER_ATTRIBUTE_MAPPED: 1,
            P.CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: 1,
            P.CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: 0,
            P.CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: 0,
            P.CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: 0,
            P.CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: 3,  # CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE
        }
        if attribute == P.CU_POINTER_ATTRIBUTE_CONTEXT:
            return self._context_of(dev)
        try:
            return values[P(attribute)]
        except (ValueError, KeyError):
            raise CudaCallError(E.CUDA_ERROR_NOT_SUPPORTED, f"pointer attribute {attribute}") from None

    def x_cuLaunchKernel(self, f: _Function, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                         shared: int, stream: Any, params: Blob) -> None:
        _check_launch(f, params.remaining, gx, gy, gz, bx, by, bz)
        raw = params.read_all()
        self._on_stream(stream, lambda st: self._launch(f, (gx, gy, gz), (bx, by, bz), shared, st, raw))

    def x_orionLaunchKernelEx(self, f: _Function, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                              shared: int, stream: Any, cx: int, cy: int, cz: int, policy: int, cooperative: int,
                              programmatic: int, priority: int, params: Blob) -> None:
        _check_launch(f, params.remaining, gx, gy, gz, bx, by, bz)
        attrs = _launch_attrs(f, (gx, gy, gz), (cx, cy, cz), policy, cooperative, programmatic, priority)
        raw = params.read_all()
        self._on_stream(stream, lambda st: self._launch(f, (gx, gy, gz), (bx, by, bz), shared, st, raw, attrs))

    def _launch(self, f: _Function, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int,
                stream: Any, raw: bytes, attrs: LaunchAttrs | None = None) -> None:
        throttle = self.throttles[f.dev]
        throttle.before_launch()
        seconds = self._b.launch(f.func, grid, block, shared, stream, raw, attrs)
        throttle.account(seconds)


def _check_launch(f: _Function, nparams: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int) -> None:
    """CudaCallError (INVALID_VALUE) unless the parameter bytes are the kernel's and the grid and
    block are non-empty with at most 1024 threads a block."""
    if nparams != f.total:
        raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                            f"{f.name}: {nparams} bytes of parameters, the kernel takes {f.total}")
    if not (gx and gy and gz and bx and by and bz) or bx * by * bz > 1024:
        raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"{f.name}: bad launch dimensions")


def _launch_attrs(f: _Function, grid: tuple[int, int, int], cluster: tuple[int, int, int], policy: int,
                  cooperative: int, programmatic: int, priority: int) -> LaunchAttrs:
    """The attributes of an orionLaunchKernelEx, checked as the driver would before oriond hands them
    on: a cluster has three non-zero dimensions that divide the grid's (else INVALID_CLUSTER_SIZE),
    the policy is one of CUclusterSchedulingPolicy's, the flags are 0 or 1."""
    if cluster != (0, 0, 0):
        if 0 in cluster:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"{f.name}: cluster dimensions {cluster}")
        if any(g % c for g, c in zip(grid, cluster)):
            raise CudaCallError(E.CUDA_ERROR_INVALID_CLUSTER_SIZE,
                                f"{f.name}: grid {grid} is not a multiple of the cluster {cluster}")
    if policy not in (0, 1, 2) or cooperative not in (0, 1) or programmatic not in (0, 1):
        raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"{f.name}: bad launch attribute values")
    return LaunchAttrs(cluster, policy, bool(cooperative), bool(programmatic), priority)


def _name(code: int) -> str:
    try:
        return E(code).name
    except ValueError:
        return str(code)


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
            raise Refused(f"ORION_GMEM={mem} MiB exceeds the memory of one GPU ({gpu_mem_mib} MiB)",
                          int(E.CUDA_ERROR_OUT_OF_MEMORY))
        return [VGpu(i % gpus, mem << 20, hello.ratio or 100) for i in range(n)]

    return authorize


def now() -> float:
    return time.monotonic()
