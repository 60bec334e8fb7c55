"""The floors: what the transports and the machine do with no remoting on top.

Each floor is measured between this process and a forked peer, so both ends are Python
processes like the client and the session worker:

* ``spin_pingpong``: two processes bouncing a counter through one shared cache line (the bare
  Python floor of any shared-memory round trip);
* ``ring_pingpong``: 16-byte messages through two ``RingStream`` rings over a shared mmap, with
  the rings' own waiting (``Backoff``) — the mechanism the shm transport uses;
* ``tcp_pingpong``: 16-byte messages over a loopback TCP connection (TCP_NODELAY);
* ``memcpy``: a NumPy copy between two pre-faulted buffers;
* ``ring_transfer`` / ``socket_transfer``: ``size`` bytes one way and a 16-byte message the
  other, shaped like a synchronous HtoD (request with data, short reply) or DtoH (short request,
  data back).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import socket
import time
from typing import Callable

import numpy as np

from ..errors import StreamBroken
from ..transport import futex
from ..transport.ring import Ring, RingStream
from .stats import latency_summary

PAGE = 4096
MSG = 16
# The same counter slots as a device channel's control page (ring.py / shmdev.py).
_A_HEAD, _A_TAIL, _B_HEAD, _B_TAIL = 16, 24, 32, 40
_A_WAIT, _B_WAIT = 56, 64


# -- forked peers ---------------------------------------------------------------------------------


_peer_cpus: set[int] | None = None


def set_peer_cpus(cpus: set[int] | None) -> None:
    """Run every floor peer forked from now on these CPUs (None: wherever the parent may run).

    The benchmark keeps the client side (this process, the agents) and the server side (oriond,
    floor peers) on different cores: where the two ends of a round trip run decides what a
    loopback TCP round trip costs (~7 µs on one core, ~70 µs across cores on a small VM), and
    two spinning ends on one core take milliseconds.
    """
    global _peer_cpus
    _peer_cpus = cpus


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def fork_peer(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child that dies with us; returns its pid (reap with ``join``)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            if _peer_cpus:
                os.sched_setaffinity(0, _peer_cpus)
            body()
        except BaseException:  # noqa: BLE001 - the parent sees the exit status
            code = 1
        finally:
            os._exit(code)
    return pid


def join(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"floor peer {pid} failed (status {os.waitstatus_to_exitcode(status)})")
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"floor peer {pid} did not finish")
        time.sleep(0.001)


def _peer_alive(pid: int) -> Callable[[], None]:
    def check() -> None:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            raise StreamBroken(f"floor peer {pid} exited")
    return check


def prefaulted(size: int, value: int = 1) -> np.ndarray:
    """A host buffer whose pages are already mapped (first-touch copies are several times slower)."""
    a = np.empty(size, dtype=np.uint8)
    a.fill(value)
    return a


# -- shared-memory rings ---------------------------------------------------------------------------


class RawRings:
    """Two rings of ``ring_size`` bytes and a control page in one shared anonymous mmap.

    Side 0 writes ring A and reads ring B; side 1 the other way round. Build each side's stream
    after forking (``stream(side)``), so the two ends never share Python state. ``wakes``: waiters
    sleep on futexes as a channel of a device file does (else they poll with their Backoff).
    """

    def __init__(self, ring_size: int, wakes: bool = False) -> None:
        self.ring_size = ring_size
        self.mm = mmap.mmap(-1, PAGE + 2 * ring_size)
        self.address = futex.base_address(self.mm) if wakes and futex.AVAILABLE else 0
        self.view = memoryview(self.mm)
        self.view[PAGE:] = bytes(2 * ring_size)  # fault the ring pages in once
        self.ctrl = self.view[:PAGE].cast("Q")
        self.a = self.view[PAGE:PAGE + ring_size]
        self.b = self.view[PAGE + ring_size:]

    def stream(self, side: int, check: Callable[[], None] | None = None) -> RingStream:
        ra = Ring(self.a, self.ctrl, _A_HEAD, _A_TAIL, _A_WAIT, self.address)
        rb = Ring(self.b, self.ctrl, _B_HEAD, _B_TAIL, _B_WAIT, self.address)
        tx, rx = (ra, rb) if side == 0 else (rb, ra)
        return RingStream(tx, rx, check=check, timeout=60.0, name=f"raw ring side {side}")

    def close(self) -> None:
        for v in (self.ctrl, self.a, self.b, self.view):
            v.release()
        self.mm.close()

    def __enter__(self) -> RawRings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spin_pingpong(n: int, warmup: int = 1000) -> dict[str, float]:
    """Round trips of a bare counter through one shared cache line: the Python floor."""
    total = n + warmup
    mm = mmap.mmap(-1, PAGE)
    q = memoryview(mm).cast("Q")
    try:
        def echo() -> None:
            for i in range(1, total + 1):
                while q[0] != i:
                    pass
                q[8] = i

        pid = fork_peer(echo)
        clock = time.perf_counter_ns
        samples = [0] * n
        for i in range(1, total + 1):
            t0 = clock()
            q[0] = i
            while q[8] != i:
                pass
            if i > warmup:
                samples[i - warmup - 1] = clock() - t0
        join(pid)
    finally:
        q.release()
        mm.close()
    return latency_summary(samples)


class RingEcho:
    """A forked peer echoing 16-byte messages through RingStream until closed.

    ``batch(n)`` times ``n`` round trips (after ``warmup`` untimed ones, which wake the peer if
    its waiting had backed off to sleeping). Kept alive so that batches can alternate with the
    remoted calls they are compared with.
    """

    QUIT = b"\xff" * MSG

    def __init__(self, ring_size: int = 1 << 20, wakes: bool = False) -> None:
        self.rr = RawRings(ring_size, wakes)

        def echo() -> None:
            s = self.rr.stream(1)
            send, recv = s.send, s.recv_exact
            while True:
                m = recv(MSG)
                if m == self.QUIT:
                    return
                send(m)

        self.pid = fork_peer(echo)
        self.s = self.rr.stream(0, _peer_alive(self.pid))

    def batch(self, n: int, warmup: int = 50) -> list[int]:
        send, recv = self.s.send, self.s.recv_exact
        msg = bytes(MSG)
        for _ in range(warmup):
            send(msg)
            recv(MSG)
        clock = time.perf_counter_ns
        samples = [0] * n
        for i in range(n):
            t0 = clock()
            send(msg)
            recv(MSG)
            samples[i] = clock() - t0
        return samples

    def close(self) -> None:
        self.s.send(self.QUIT)
        join(self.pid)
        self.rr.close()

    def __enter__(self) -> RingEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ring_pingpong(n: int, ring_size: int = 1 << 20, warmup: int = 1000) -> dict[str, float]:
    """16-byte round trips through RingStream (send/recv_exact and its Backoff waiting)."""
    with RingEcho(ring_size) as echo:
        return latency_summary(echo.batch(n, warmup))


# -- TCP loopback ----------------------------------------------------------------------------------


def _recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    n = len(view)
    got = sock.recv_into(view)
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("peer closed")
        got += k


def _sendall_parts(sock: socket.socket, parts: list[memoryview]) -> None:
    """Send ``parts`` back to back in gather writes (as few syscalls and segments as possible)."""
    views = list(parts)
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def _tcp_pair(peer: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    """(our end, peer pid): the peer connects to us over loopback and runs ``peer(sock)``."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    addr = lst.getsockname()

    def body() -> None:
        lst.close()
        c = socket.create_connection(addr)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer(c)
        finally:
            c.close()

    pid = fork_peer(body)
    conn, _ = lst.accept()
    lst.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(60.0)
    return conn, pid


class TcpEcho:
    """A forked peer echoing 16-byte messages over a loopback TCP connection until closed."""

    def __init__(self) -> None:
        def echo(c: socket.socket) -> None:
            buf = memoryview(bytearray(MSG))
            while True:
                try:
                    _recv_exact_into(c, buf)
                except EOFError:
                    return
                c.sendall(buf)

        self.conn, self.pid = _tcp_pair(echo)

    def batch(self, n: int, warmup: int = 20) -> list[int]:
        conn = self.conn
        msg = bytes(MSG)
        buf = memoryview(bytearray(MSG))
        send, recv = conn.sendall, _recv_exact_into
        for _ in range(warmup):
            send(msg)
            recv(conn, buf)
        clock = time.perf_counter_ns
        samples = [0] * n
        for i in range(n):
            t0 = clock()
            send(msg)
            recv(conn, buf)
            samples[i] = clock() - t0
        return samples

    def close(self) -> None:
        self.conn.close()
        join(self.pid)

    def __enter__(self) -> TcpEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_pingpong(n: int, warmup: int = 200) -> dict[str, float]:
    """16-byte round trips over a loopback TCP connection (blocking sockets, TCP_NODELAY)."""
    with TcpEcho() as echo:
        return latency_summary(echo.batch(n, warmup))


# -- bulk ------------------------------------------------------------------------------------------


def memcpy(size: int, reps: int) -> list[float]:
    """Seconds per copy of ``size`` bytes between pre-faulted NumPy buffers."""
    src, dst = prefaulted(size, 1), prefaulted(size, 0)
    np.copyto(dst, src)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        out.append(time.perf_counter() - t0)
    return out


def ring_transfer(size: int, reps: int, direction: str, ring_size: int) -> list[float]:
    """Seconds per ``size``-byte transfer through RingStream, HtoD- or DtoH-shaped."""
    total = reps + 1
    with RawRings(ring_size) as rr:
        def peer() -> None:
            s = rr.stream(1)
            buf = prefaulted(size).data  # a memoryview of the uint8 buffer
            for _ in range(total):
                s.recv_exact(MSG)
                if direction == "htod":
                    s.recv_into(buf)
                    s.send(bytes(MSG))
                else:
                    s.send_from(buf)

        pid = fork_peer(peer)
        s = rr.stream(0, _peer_alive(pid))
        buf = prefaulted(size).data  # a memoryview of the uint8 buffer
        msg = bytes(MSG)
        out = []
        for _ in range(total):
            t0 = time.perf_counter()
            s.send(msg)
            if direction == "htod":
                s.send_from(buf)
                s.recv_exact(MSG)
            else:
                s.recv_into(buf)
            out.append(time.perf_counter() - t0)
        join(pid)
    return out[1:]


def socket_transfer(size: int, reps: int, direction: str) -> list[float]:
    """Seconds per ``size``-byte transfer over loopback TCP, HtoD- or DtoH-shaped."""
    total = reps + 1

    def peer(c: socket.socket) -> None:
        buf = prefaulted(size).data  # a memoryview of the uint8 buffer
        small = memoryview(bytearray(MSG))
        for _ in range(total):
            _recv_exact_into(c, small)
            if direction == "htod":
                _recv_exact_into(c, buf)
                c.sendall(small)
            else:
                c.sendall(buf)

    conn, pid = _tcp_pair(peer)
    try:
        buf = prefaulted(size).data  # a memoryview of the uint8 buffer
        small = memoryview(bytearray(MSG))
        out = []
        for _ in range(total):
            t0 = time.perf_counter()
            if direction == "htod":
                _sendall_parts(conn, [small, buf])
                _recv_exact_into(conn, small)
            else:
                conn.sendall(small)
                _recv_exact_into(conn, buf)
            out.append(time.perf_counter() - t0)
        join(pid)
    finally:
        conn.close()
    return out[1:]
