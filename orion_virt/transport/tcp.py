"""TCP transport: a Stream over a connected socket (TCP_NODELAY, small sends coalesced until flush).

A peer that dies is noticed at once when its kernel closes the connection, and within
``HEARTBEAT_S`` when its host stops answering (TCP keepalive probes). Using the stream after
``close()`` raises StreamClosed; a peer that closed or broke it, StreamBroken.

Reads go through a read-ahead buffer: one ``recv`` takes whatever has arrived (up to 64 KiB), so a
call's header, arguments and small blob, or a burst of pipelined calls, cost one syscall instead
of one each. Large payloads bypass it and land straight in the caller's buffer.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Iterator

from ..errors import StreamBroken, StreamClosed, TransportError, TransportTimeout
from .base import CHUNK, HEARTBEAT_S, Stream

_COALESCE = 64 << 10
_READ_AHEAD = 64 << 10


_GONE = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR
"""poll events of a peer that is gone (Linux's POLLRDHUP: its end shut down for writing)."""


class SocketStream(Stream):
    """Stream over a connected SOCK_STREAM socket (TCP, or a socketpair in tests)."""

    def __init__(self, sock: socket.socket, timeout: float | None = None, name: str = "tcp") -> None:
        self.sock = sock
        self.name = name
        self._out: list[bytes] = []
        self._out_len = 0
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._rbuf = bytearray(_READ_AHEAD)
        self._rview = memoryview(self._rbuf)
        self._rpos = self._rend = 0  # unread bytes: _rbuf[_rpos:_rend]
        self._closed = False
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive(sock, HEARTBEAT_S)
        self.set_timeout(timeout)

    def set_timeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        if not self._closed:
            self.sock.settimeout(timeout)

    def check_peer(self) -> None:
        """StreamBroken once the peer closed its end or the connection failed, even with bytes it
        sent before still unread (a call queued behind the one running): the kernel's RDHUP."""
        if self._closed:
            return
        try:
            p = select.poll()
            p.register(self.sock, _GONE)
            if p.poll(0):
                raise StreamBroken(f"{self.name}: peer closed the connection")
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise self._fail(e) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed(f"{self.name}: used after close()")

    def _fail(self, e: OSError) -> TransportError:
        if isinstance(e, socket.timeout):
            return TransportTimeout(f"{self.name}: timed out after {self.timeout} s")
        if self._closed:
            return StreamClosed(f"{self.name}: used after close()")
        return StreamBroken(f"{self.name}: connection lost ({e.strerror or e})")

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= _COALESCE:
            self.flush()
            self._sendall(data)
            return
        self._out.append(bytes(data))
        self._out_len += len(data)
        if self._out_len >= _COALESCE:
            self.flush()

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise self._fail(e) from None

    def flush(self) -> None:
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self._out_len = 0
            self._sendall(data)

    def _recv_into(self, view: memoryview) -> None:
        pos, n = 0, len(view)
        recv_into = self.sock.recv_into
        try:
            while pos < n:
                got = recv_into(view[pos:] if pos else view)
                if got == 0:
                    raise StreamBroken(f"{self.name}: peer closed the connection")
                pos += got
        except OSError as e:
            raise self._fail(e) from None

    def _fill(self, need: int) -> int:
        """Read until at least ``need`` (<= _READ_AHEAD) bytes are buffered; returns _rpos."""
        if self._rpos + need > len(self._rbuf):  # not enough room behind the unread bytes: compact
            left = self._rend - self._rpos
            self._rview[:left] = self._rview[self._rpos:self._rend]  # memoryview copies overlap safely
            self._rpos, self._rend = 0, left
        recv_into, view = self.sock.recv_into, self._rview
        try:
            while self._rend - self._rpos < need:
                got = recv_into(view[self._rend:])
                if got == 0:
                    raise StreamBroken(f"{self.name}: peer closed the connection")
                self._rend += got
        except OSError as e:
            raise self._fail(e) from None
        return self._rpos

    def recv_exact(self, n: int) -> bytes:
        self._check_open()
        pos = self._rpos
        if self._rend - pos < n:
            if n > _READ_AHEAD:
                out = bytearray(n)
                self.recv_into(memoryview(out))
                return bytes(out)
            pos = self._fill(n)
        self._rpos = pos + n
        return bytes(self._rview[pos:pos + n])

    def recv_unpack(self, st: struct.Struct) -> tuple:
        n = st.size
        pos = self._rpos
        if self._rend - pos < n:
            self._check_open()
            pos = self._fill(n)
        self._rpos = pos + n
        return st.unpack_from(self._rbuf, pos)

    def _take_buffered(self, n: int) -> memoryview:
        """Up to ``n`` already-buffered bytes (possibly none), consumed."""
        pos = self._rpos
        k = min(n, self._rend - pos)
        self._rpos = pos + k
        return self._rview[pos:pos + k]

    def recv_into(self, view: memoryview) -> None:
        view = view.cast("B") if view.format != "B" else view
        head = self._take_buffered(len(view))
        view[:len(head)] = head
        if len(head) < len(view):
            self._recv_into(view[len(head):])

    def recv_chunks(self, n: int) -> Iterator[memoryview]:
        self._check_open()
        if self._rend > self._rpos and n > 0:
            head = self._take_buffered(n)
            n -= len(head)
            yield head.toreadonly()
        buf = self._view
        while n > 0:
            k = min(n, len(buf))
            self._recv_into(buf[:k])
            yield buf[:k].toreadonly()
            n -= k

    def send_chunks(self, n: int) -> Iterator[memoryview]:
        self.flush()
        buf = self._view
        while n > 0:
            k = min(n, len(buf))
            yield buf[:k]
            self._sendall(buf[:k])
            n -= k

    def send_from(self, view: memoryview) -> None:
        if not self._out:
            self._sendall(view)
            return
        # What is queued (a call's header) and the payload leave in one gather write: no extra
        # syscall and no extra small segment before a large copy.
        parts: list[bytes | memoryview] = [*self._out, view]
        self._out.clear()
        self._out_len = 0
        self._sendv(parts)

    def _sendv(self, parts: list[bytes | memoryview]) -> None:
        self._check_open()
        views = [memoryview(p) for p in parts]
        try:
            while views:
                sent = self.sock.sendmsg(views)
                while views and sent >= views[0].nbytes:
                    sent -= views[0].nbytes
                    views.pop(0)
                if sent:
                    views[0] = views[0].cast("B")[sent:]
        except OSError as e:
            raise self._fail(e) from None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        except TransportError:
            pass
        self._closed = True
        self._rpos = self._rend = 0
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def keepalive(sock: socket.socket, within_s: float) -> None:
    """Probe an idle connection so that a peer host that vanished is noticed within ``within_s``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(within_s / 2))
    for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", max(1, int(within_s) - idle)),
                       ("TCP_USER_TIMEOUT", int(within_s * 1000))):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def connect(addr: str, timeout: float = 5.0) -> SocketStream:
    """Connect to ``HOST:PORT``. Raises TransportError naming the address on failure."""
    host, _, port = addr.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise TransportError(f"cannot connect to oriond at {addr}: {e.strerror or e}") from None
    return SocketStream(sock, timeout=None, name=f"tcp {addr}")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEADDR. Raises TransportError naming the address."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock
