"""Cross-node sessions: the Router's device mapping, handle tagging and routing (with fake
connections), and the real client driver over two in-process oriond sessions."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from orion_virt.client import multinode as mn
from orion_virt.client.multinode import Router, device_map
from orion_virt.errors import StreamBroken, TransportError
from orion_virt.wire.calls import SPECS, Call

C = Call
PTX = Path(__file__).resolve().parents[3] / "orion_virt" / "kernels" / "test_kernels.ptx"


class FakeLink:
    """Records calls; answers like a server whose handles start at the same values as every
    other server's (so tags are what keeps them apart)."""

    def __init__(self, name: str, devices: int = 1) -> None:
        self.name = name
        self.devices = devices
        self.calls: list[tuple[int, tuple]] = []
        self.closed = False
        self.byes = 0
        self.transport = "tcp"
        self.fail_with: Exception | None = None
        self.stream = self

    def close(self) -> None:
        self.closed = True

    def call(self, code: int, args: tuple, blob: Any = None, blob_len: int = 0,
             out: Any = None) -> tuple[int, tuple, bytes]:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((int(code), args))
        spec = SPECS[code]
        if spec.async_:
            return mn._NO_REPLY
        if code == C.cuDeviceGetCount:
            return 0, (self.devices,), b""
        if code == C.cuDriverGetVersion:
            return 0, (12040 if self.name == "a" else 12020,), b""
        if code == C.cuDeviceGet:
            return 0, (args[0],), b""
        if code in mn.REPLY_HANDLE:
            base = {C.cuCtxCreate: 0x1000_0000, C.cuDevicePrimaryCtxRetain: 0x1000_0000,
                    C.cuStreamCreate: 0x2000_0000, C.cuEventCreate: 0x3000_0000,
                    C.cuModuleLoadData: 0x4000_0000, C.cuModuleGetFunction: 0x5000_0000}[code]
            return 0, (base, *([8] if code == C.cuModuleGetFunction else [])), b""
        return 0, spec.resp.unpack(bytes(spec.resp.size)), b""

    def bye(self) -> None:
        if not self.closed:
            self.closed = True
            self.byes += 1

    def last(self) -> tuple[int, tuple]:
        return self.calls[-1]


def router(*devices: int, order: list[str] | None = None) -> tuple[Router, list[FakeLink]]:
    names = [chr(ord("a") + i) for i in range(len(devices))]
    links = [FakeLink(n, d) for n, d in zip(names, devices, strict=True)]
    order = order or [n for n, d in zip(names, devices, strict=True) for _ in range(d)]
    return Router(links, device_map(order, names)), links


def test_device_map_follows_the_allocation_order() -> None:
    assert device_map(["a", "b"], ["a", "b"]) == [(0, 0), (1, 0)]
    # the controller may interleave nodes: local ordinals count per node
    assert device_map(["a", "b", "a", "b", "b"], ["a", "b"]) == [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)]


def test_device_calls_go_to_the_device_server_with_its_local_ordinal() -> None:
    r, (a, b) = router(2, 1, order=["a", "b", "a"])
    assert r.call(C.cuDeviceGetCount, ()) == (0, (3,), b"")
    assert r.call(C.cuDriverGetVersion, ()) == (0, (12020,), b"")  # the lowest
    assert r.call(C.cuDeviceGet, (2,)) == (0, (2,), b"")
    assert a.last() == (C.cuDeviceGet, (1,))
    r.call(C.cuDeviceGetName, (256, 1))
    assert b.last() == (C.cuDeviceGetName, (256, 0))
    r.call(C.cuDeviceGetAttribute, (75, 2))
    assert a.last() == (C.cuDeviceGetAttribute, (75, 1))
    n_a, n_b = len(a.calls), len(b.calls)
    assert r.call(C.cuDeviceTotalMem, (3,))[0] == mn.INVALID_DEVICE
    assert r.call(C.cuDeviceGet, (-1,))[0] == mn.INVALID_DEVICE
    assert (len(a.calls), len(b.calls)) == (n_a, n_b)  # refused without asking anyone


def test_handles_from_colliding_servers_are_made_unique() -> None:
    r, _links = router(1, 1)
    _, (ctx_a,), _ = r.call(C.cuCtxCreate, (0, 0))
    _, (ctx_b,), _ = r.call(C.cuCtxCreate, (0, 1))
    assert ctx_a != ctx_b and ctx_a & mn.VALUE_MASK == ctx_b & mn.VALUE_MASK == 0x1000_0000
    assert r.owner(ctx_a) == (0, 0x1000_0000) and r.owner(ctx_b) == (1, 0x1000_0000)
    assert r.owner(0x1000_0000) is None and r.owner(0) is None
    assert r.tag(1, 0) == 0
    # a value that does not fit under the tag gets an alias, stable per (server, value)
    big = 0xFFFF_0000_0000_0001
    h = r.tag(1, big)
    assert h >> 63 and h != r.tag(0, big) and r.tag(1, big) == h
    assert r.owner(h) == (1, big)


def test_calls_follow_the_current_context_and_the_owner_of_handles() -> None:
    r, (a, b) = router(1, 1)
    _, (ctx_a,), _ = r.call(C.cuCtxCreate, (0, 0))
    _, (s_a,), _ = r.call(C.cuStreamCreate, (0,))
    _, (ctx_b,), _ = r.call(C.cuCtxCreate, (0, 1))  # cuCtxCreate makes B current
    r.call(C.cuMemAlloc, (64,))
    assert b.last() == (C.cuMemAlloc, (64,))
    _, (s_b,), _ = r.call(C.cuStreamCreate, (0,))
    assert s_a != s_b and r.owner(s_b)[0] == 1
    # an async copy on A's stream goes to A although B is current; device pointers unchanged
    r.call(C.cuMemcpyHtoDAsync, (0xDEAD, 4, s_a), b"abcd", 4)
    assert a.last() == (C.cuMemcpyHtoDAsync, (0xDEAD, 4, 0x2000_0000))
    r.call(C.cuMemcpyDtoHAsync, (0xBEEF, 4, 0), out=memoryview(bytearray(4)))  # default stream
    assert b.last() == (C.cuMemcpyDtoHAsync, (0xBEEF, 4, 0))
    r.call(C.cuStreamSynchronize, (s_a,))
    assert a.last() == (C.cuStreamSynchronize, (0x2000_0000,))
    # cuCtxSetCurrent switches where context-less calls go
    r.call(C.cuCtxSetCurrent, (ctx_a,))
    assert a.last() == (C.cuCtxSetCurrent, (0x1000_0000,))
    r.call(C.cuCtxSynchronize, ())
    assert a.last() == (C.cuCtxSynchronize, ())
    _, (mod,), _ = r.call(C.cuModuleLoadData, (3,), b"ptx", 3)
    r.call(C.cuCtxSetCurrent, (ctx_b,))
    _, (fn, plen), _ = r.call(C.cuModuleGetFunction, (mod, 1), b"k", 1)
    assert a.last() == (C.cuModuleGetFunction, (0x4000_0000, 1)) and plen == 8
    launch = (fn, 1, 1, 1, 1, 1, 1, 0, s_a, 8)
    r.call(C.cuLaunchKernel, launch, bytes(8), 8)
    assert a.last() == (C.cuLaunchKernel, (0x5000_0000, 1, 1, 1, 1, 1, 1, 0, 0x2000_0000, 8))
    # a stream of the other server: refused here, nothing sent
    n = len(a.calls)
    assert r.call(C.cuLaunchKernel, launch[:8] + (s_b, 8), bytes(8), 8)[0] == mn.INVALID_HANDLE
    _, (ev,), _ = r.call(C.cuEventCreate, (0,))  # on B (current)
    assert r.call(C.cuEventRecord, (ev, s_a))[0] == mn.INVALID_HANDLE
    assert r.call(C.cuEventRecord, (ev, s_b)) == mn._NO_REPLY
    assert b.last() == (C.cuEventRecord, (0x3000_0000, 0x2000_0000))
    assert len(a.calls) == n
    # handles not issued here
    assert r.call(C.cuCtxSetCurrent, (0x1000_0000,))[0] == mn.INVALID_CONTEXT
    assert r.call(C.cuStreamQuery, (0x77 << 56 | 5,))[0] == mn.INVALID_HANDLE
    # cuCtxSetCurrent(0) and cuInit reach every server
    r.call(C.cuCtxSetCurrent, (0,))
    r.call(C.cuInit, (0,))
    assert a.calls[-2:] == b.calls[-2:] == [(C.cuCtxSetCurrent, (0,)), (C.cuInit, (0,))]


def test_every_call_has_a_route() -> None:
    """New calls in the call table must be classified (device, handle or current context)."""
    routed = set(mn.DEVICE_ARG) | set(mn.OWNED_BY) | set(mn.BROADCAST)
    current = {C.cuCtxSynchronize, C.cuMemAlloc, C.cuMemFree, C.cuMemGetInfo, C.cuMemcpyHtoD,
               C.cuMemcpyDtoH, C.cuMemcpyDtoD, C.cuMemsetD8, C.cuMemsetD32, C.cuStreamCreate,
               C.cuEventCreate, C.cuModuleLoadData, C.cuStreamCreateWithPriority,
               C.cuCtxGetStreamPriorityRange, C.cuCtxGetLimit, C.cuCtxSetLimit, C.cuPointerGetAttribute,
               C.orionHostShare, C.orionHostUnshare, C.orionMemcpyHtoDShared, C.orionMemcpyDtoHShared,
               C.orionHostDevicePointer, C.orionModuleFunctionNames, C.cuDeviceCanAccessPeer,
               C.cuCtxEnablePeerAccess, C.cuCtxDisablePeerAccess, C.cuMemcpyPeer, C.cuMemcpyPeerAsync}
    assert set(SPECS) == routed | current
    # the tables come from the call spec's roles: spot-check what they must say
    assert mn.DEVICE_ARG[C.cuDeviceGetAttribute] == 1 and mn.DEVICE_ARG[C.cuCtxCreate] == 1
    assert mn.OWNED_BY[C.cuLaunchKernel] == (0, (8,)) and mn.OWNED_BY[C.cuMemcpyDtoDAsync] == (3, ())
    assert mn.REPLY_HANDLE == {C.cuDevicePrimaryCtxRetain, C.cuCtxCreate, C.cuStreamCreate,
                               C.cuEventCreate, C.cuModuleLoadData, C.cuModuleGetFunction,
                               C.cuStreamCreateWithPriority, C.cuStreamEndCapture, C.cuGraphInstantiateWithFlags}
    assert mn.BROADCAST == {C.cuInit: "first", C.cuDriverGetVersion: "min", C.cuDeviceGetCount: "sum",
                            C.orionPointerKinds: "or"}


def test_a_lost_server_fails_the_call_and_bye_reaches_the_others() -> None:
    r, (a, b) = router(1, 1)
    r.call(C.cuCtxCreate, (0, 1))
    b.fail_with = StreamBroken("peer closed")
    with pytest.raises(TransportError, match="server 1: peer closed"):
        r.call(C.cuMemAlloc, (16,))
    assert b.closed and b.byes == 0  # no BYE into a broken stream
    stopped: list[int] = []
    r.on_close.append(lambda: stopped.append(1))
    r.bye()
    r.bye()
    assert (a.byes, b.byes, stopped) == (1, 0, [1])


# -- the real client module over two in-process servers -------------------------------------------


@contextlib.contextmanager
def two_servers(gmem_mib: int = 256, ends: tuple[str, str] = ("bye", "bye")
                ) -> Iterator[tuple[Any, Router, list[Any]]]:
    """The client driver module, its Router and the two server Sessions (their ``sock``: the
    server end of the stream); on leaving, checks how each session ended."""
    from orion_virt.client import driver as cu
    from orion_virt.client import runtime
    from orion_virt.client.connection import Connection
    from orion_virt.server.session import Session, open_authorizer
    from orion_virt.server.sim import SimBackend
    from orion_virt.transport.tcp import SocketStream
    from orion_virt.wire import Hello

    log = logging.getLogger("orion.test.multinode")
    links, threads, sessions = [], [], []
    for i in range(2):
        a, b = socket.socketpair()
        session = Session(SocketStream(a), SimBackend(1, 1024), open_authorizer(1, gmem_mib, 1),
                          i + 1, log, throttle=False)
        session.sock = a  # type: ignore[attr-defined]
        ended: dict[str, str] = {}
        t = threading.Thread(target=lambda s=session, e=ended: e.setdefault("why", s.run()),
                             daemon=True)
        t.start()
        conn = Connection(SocketStream(b), "tcp")
        conn.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=gmem_mib, ratio=100))
        links.append(conn)
        threads.append((t, ended))
        sessions.append(session)
    r = Router(links, device_map(["a", "b"], ["a", "b"]), ["node a", "node b"])
    rt = runtime.reset_runtime()
    rt.conn = r
    rt.router = r
    saved = (cu._initialized, cu._current_ctx, cu._failed_once)
    cu._initialized = True
    cu._functions.clear()
    try:
        yield cu, r, sessions
    finally:
        runtime.reset_runtime()  # BYE to both
        cu._initialized, cu._current_ctx, cu._failed_once = saved
        cu._functions.clear()
        for (t, ended), why in zip(threads, ends, strict=True):
            t.join(20)
            assert ended.get("why", "").startswith(why), ended


def ok(result: Any) -> Any:
    err, *values = result
    assert int(err) == 0, f"CUDA error {err!r}"
    return values[0] if len(values) == 1 else (values or None)


def test_vector_add_on_each_server_through_the_driver() -> None:
    ptx = PTX.read_bytes() + b"\0"
    with two_servers() as (cu, r, sessions):
        assert ok(cu.cuInit(0)) is None
        assert ok(cu.cuDeviceGetCount()) == 2
        results = []
        for ordinal in range(2):
            dev = ok(cu.cuDeviceGet(ordinal))
            assert int(dev) == ordinal
            assert ok(cu.cuDeviceTotalMem(dev)) == 256 << 20
            ctx = ok(cu.cuCtxCreate(None, 0, dev))
            assert ok(cu.cuCtxGetCurrent()) == ctx and r.current == ordinal
            mod = ok(cu.cuModuleLoadData(ptx))
            fn = ok(cu.cuModuleGetFunction(mod, b"vectorAdd"))
            n = 1000
            x = np.arange(n, dtype=np.float32) * (ordinal + 1)
            y = np.ones(n, dtype=np.float32)
            z = np.zeros(n, dtype=np.float32)
            da, db, dc = (ok(cu.cuMemAlloc(x.nbytes)) for _ in range(3))
            stream = ok(cu.cuStreamCreate(0))
            ok(cu.cuMemcpyHtoDAsync(da, x.ctypes.data, x.nbytes, stream))
            ok(cu.cuMemcpyHtoDAsync(db, y.ctypes.data, y.nbytes, stream))
            args = [np.array([int(p)], dtype=np.uint64) for p in (da, db, dc)] + [np.array([n], dtype=np.int32)]
            params = np.array([a.ctypes.data for a in args], dtype=np.uint64)
            ok(cu.cuLaunchKernel(fn, 4, 1, 1, 256, 1, 1, 0, stream, params.ctypes.data, 0))
            ok(cu.cuMemcpyDtoHAsync(z.ctypes.data, dc, z.nbytes, stream))
            ok(cu.cuStreamSynchronize(stream))
            assert np.array_equal(z, x + y)
            results.append((ctx, stream, mod, fn))
        # same server-side values, distinct client handles; each server ran its own kernel
        for i in range(4):
            assert results[0][i] != results[1][i]
            assert int(results[0][i]) & mn.VALUE_MASK == int(results[1][i]) & mn.VALUE_MASK
        assert all(s.calls > 10 for s in sessions)
        # a pointer of server 0 is not valid while server 1's context is current
        ok(cu.cuCtxSetCurrent(results[0][0]))
        p0 = ok(cu.cuMemAlloc(64))
        ok(cu.cuCtxSetCurrent(results[1][0]))
        assert cu.cuMemsetD8(p0, 1, 64)[0] != 0
        # a deferred error is reported by its own server only
        ok(cu.cuMemFree(0xDEAD_0000))  # async on server 1: fails there
        ok(cu.cuCtxSetCurrent(results[0][0]))
        assert int(cu.cuCtxSynchronize()[0]) == 0  # server 0 has nothing to report
        ok(cu.cuCtxSetCurrent(results[1][0]))
        assert int(cu.cuCtxSynchronize()[0]) != 0  # server 1 reports its own
        assert int(cu.cuCtxSynchronize()[0]) == 0
        for ctx, stream, mod, _fn in results:
            ok(cu.cuCtxSetCurrent(ctx))
            ok(cu.cuStreamDestroy(stream))
            ok(cu.cuModuleUnload(mod))
            ok(cu.cuCtxDestroy(ctx))


def test_losing_one_server_ends_the_session_and_the_other_still_gets_bye() -> None:
    with two_servers(ends=("bye", "transport")) as (cu, r, sessions):
        ok(cu.cuInit(0))
        ctx0 = ok(cu.cuCtxCreate(None, 0, ok(cu.cuDeviceGet(0))))
        ok(cu.cuCtxCreate(None, 0, ok(cu.cuDeviceGet(1))))
        sessions[1].sock.shutdown(socket.SHUT_RDWR)  # server 1 goes away
        err, _ = cu.cuMemAlloc(16)
        assert err == cu.CUresult.CUDA_ERROR_DEVICE_UNAVAILABLE
        # as with one server, the process's session is over: nothing more is sent anywhere
        assert cu.cuCtxSetCurrent(ctx0)[0] == cu.CUresult.CUDA_ERROR_DEINITIALIZED
        assert r.links[1].closed and not r.links[0].closed
    assert r.links[0].closed  # the runtime's shutdown said goodbye to server 0
