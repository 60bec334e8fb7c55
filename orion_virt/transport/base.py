"""The byte-stream interface every transport implements, and the waiting policy.

A ``Stream`` is a reliable, ordered, bidirectional byte stream between one client and one server
session. Framing belongs to ``orion_virt.wire``; streams only move bytes. Bulk data moves in
chunks through ``send_chunks``/``recv_chunks`` so that both sides work at once and a transport
with shared memory can hand out zero-copy views.
"""

from __future__ import annotations

import struct
import time
from abc import ABC, abstractmethod
from typing import Callable, Iterator

from ..errors import TransportTimeout

CHUNK = 1 << 20
HEARTBEAT_S = 5.0
"""Within this many seconds a peer that died is noticed, on every transport (shm heartbeats,
TCP keepalive and user timeout)."""


class Stream(ABC):
    """One end of a connection. Not thread-safe: one thread sends, one thread receives.

    Failure modes: ``StreamBroken`` when the peer closed or died, ``StreamClosed`` when this side
    already closed the stream, ``TransportTimeout`` when a wait exceeds ``timeout`` seconds
    (``None`` waits for ever, still noticing peer death within ``HEARTBEAT_S``).
    """

    timeout: float | None = None
    name: str = "stream"
    buffered: bool = True
    """False for a stream whose ``send`` is visible to the peer at once: callers may skip ``flush``."""

    def set_timeout(self, timeout: float | None) -> None:
        """Bound every later wait to ``timeout`` seconds (``None``: no bound)."""
        self.timeout = timeout

    @abstractmethod
    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue or write all of ``data``; visible to the peer at the latest after ``flush``."""

    def flush(self) -> None:  # noqa: B027 - a stream that writes through has nothing to flush
        """Make everything sent so far visible to the peer."""

    @abstractmethod
    def recv_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""

    def recv_unpack(self, st: struct.Struct) -> tuple:
        """Exactly ``st.size`` bytes, unpacked with ``st`` (a ring unpacks them where they lie)."""
        return st.unpack(self.recv_exact(st.size))

    @abstractmethod
    def recv_chunks(self, n: int) -> Iterator[memoryview]:
        """Yield read-only views totalling ``n`` bytes; each is valid only until the next one."""

    @abstractmethod
    def send_chunks(self, n: int) -> Iterator[memoryview]:
        """Yield writable views totalling ``n`` bytes that the caller fills completely, in order."""

    def recv_into(self, view: memoryview) -> None:
        pos = 0
        for chunk in self.recv_chunks(len(view)):
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)

    def send_from(self, view: memoryview) -> None:
        pos = 0
        for chunk in self.send_chunks(len(view)):
            chunk[:] = view[pos:pos + len(chunk)]
            pos += len(chunk)

    def discard(self, n: int) -> None:
        for _ in self.recv_chunks(n):
            pass

    def check_peer(self) -> None:  # noqa: B027 - a stream that cannot tell stays silent
        """Raise StreamBroken if the peer is known to be gone (its process ended, it closed the
        connection), without reading anything: for a server busy on a long call."""

    @abstractmethod
    def close(self) -> None:
        """Tell the peer, release resources. Idempotent."""

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backoff:
    """Spin, then yield, then sleep with growing pauses up to ``max_sleep``.

    Waiting costs ~a core only for the first ``spin_s`` seconds; an idle waiter ends up waking
    ``1/max_sleep`` times a second. ``check`` runs every few hundred microseconds of waiting and
    may raise (peer death, device removed). ``deadline`` (monotonic) raises TransportTimeout.
    """

    __slots__ = ("spin_s", "max_sleep", "check", "deadline", "start", "n", "next_check", "what")

    def __init__(
        self, check: Callable[[], None] | None = None, timeout: float | None = None,
        spin_s: float = 50e-6 * 20, max_sleep: float = 0.005, what: str = "peer",
    ) -> None:
        self.spin_s = spin_s
        self.max_sleep = max_sleep
        self.check = check
        now = time.monotonic()
        self.start = now
        self.deadline = None if timeout is None else now + timeout
        self.n = 0
        self.next_check = now + 0.0005
        self.what = what

    def wait(self) -> None:
        self.n += 1
        if self.n & 63:
            return
        now = time.monotonic()
        idle = now - self.start
        if now >= self.next_check:
            self.next_check = now + (0.0005 if idle < 0.01 else 0.02)
            if self.check is not None:
                self.check()
            if self.deadline is not None and now > self.deadline:
                raise TransportTimeout(f"timed out waiting for {self.what}")
        if idle < self.spin_s:
            return
        # Past the spin phase every wait yields or sleeps: the next call comes straight back here
        # instead of polling 63 more times first (an idle waiter's wake-up is one poll).
        self.n |= 63
        if idle < 0.002:
            time.sleep(0)
        elif idle < 0.05:
            time.sleep(0.00005)
        elif idle < 1.0:
            time.sleep(min(0.001, self.max_sleep))
        else:
            time.sleep(self.max_sleep)
