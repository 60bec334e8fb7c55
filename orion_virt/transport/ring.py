"""A single-producer single-consumer byte ring over shared memory, and a Stream built from two.

Layout of one ring: a power-of-two data area plus two 64-bit counters (``head``: bytes ever
written, ``tail``: bytes ever read), each on its own cache line in a control page. Only the
producer writes ``head``, only the consumer writes ``tail``; on x86-64 (TSO) an aligned 8-byte
store is atomic and stores are not reordered with earlier stores, so data written before a
``head`` update is visible once the new ``head`` is.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, Iterator, Protocol

from ..errors import StreamClosed, TransportTimeout
from . import futex
from .base import CHUNK, Backoff, Stream

SPIN_POLLS = range(2000)
"""Polls of a peer's counter before a waiter sleeps (roughly 50-100 µs of spinning from Python:
longer than a futex sleep and wake-up costs, see ``orion-bench``'s wake-up figures)."""
CHECK_S = 0.5
"""A sleeping waiter wakes at least this often to check its peer (and its deadline)."""


class Bell(Protocol):
    """How the two ends of a ring wake each other (ivshmem/LAYOUT.md, "Waking"): the consumer
    sets the ring's waiting slot and calls ``sleep``; the producer, after publishing its head, a
    fence and a set waiting slot, calls ``wake``. ``sleep`` must return at once for a wake-up
    that came after the consumer set its slot (no lost wake-up) and may return spuriously."""

    def wake(self) -> None: ...

    def sleep(self, seen_head: int, timeout: float) -> None: ...


class FutexBell:
    """Both ends map one file on one kernel (host, containers): a futex on the head's low 32
    bits; the kernel re-reads the head before sleeping."""

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        self.address = address

    def wake(self) -> None:
        futex.wake(self.address)

    def sleep(self, seen_head: int, timeout: float) -> None:
        futex.wait(self.address, seen_head, timeout)


class Ring:
    """One direction. ``ctrl`` is a 'Q'-cast memoryview; ``head_i``/``tail_i`` index it.

    With ``wait_i`` >= 0 the ring's consumer may sleep: it sets ``ctrl[wait_i]`` and sleeps on
    ``bell``; the producer rings ``bell`` after publishing when the slot is set. Without a
    ``bell`` it is a futex on the head counter's low 32 bits (``ctrl`` lies at ``ctrl_address``;
    none: no futex). ``wait_i`` < 0: both ends poll (a VM's BAR without a doorbell).
    """

    __slots__ = ("buf", "ctrl", "head_i", "tail_i", "size", "mask", "head", "tail", "limit", "wait_i",
                 "ctrl_address", "bell")

    def __init__(self, buf: memoryview, ctrl: memoryview, head_i: int, tail_i: int,
                 wait_i: int = -1, ctrl_address: int = 0, bell: Bell | None = None) -> None:
        size = len(buf)
        if size & (size - 1) or size < 4096:
            raise ValueError("ring size must be a power of two >= 4096")
        self.buf = buf
        self.ctrl = ctrl
        self.head_i = head_i
        self.tail_i = tail_i
        self.size = size
        self.mask = size - 1
        self.head = ctrl[head_i]
        self.tail = ctrl[tail_i]
        self.limit = self.tail + size
        self.ctrl_address = ctrl_address
        if bell is None and futex.AVAILABLE and ctrl_address:
            bell = FutexBell(ctrl_address + 8 * head_i)
        self.bell = bell
        self.wait_i = wait_i if bell is not None else -1

    def wake_consumer(self) -> None:
        """After publishing ``head``: wake the consumer if it sleeps (a fence, then one load)."""
        futex.fence()
        if self.ctrl[self.wait_i]:
            self.bell.wake()  # type: ignore[union-attr]  # wait_i >= 0: a bell is set

    def reset(self) -> None:
        self.ctrl[self.head_i] = 0
        self.ctrl[self.tail_i] = 0
        self.head = self.tail = 0
        self.limit = self.size


class RingStream(Stream):
    """A Stream from a transmit ring (we produce) and a receive ring (we consume).

    ``check`` is called periodically while waiting and raises TransportError when the peer is
    gone, so a wait never hangs on a dead peer.
    """

    buffered = False  # send publishes the ring's head at once

    def __init__(
        self, tx: Ring, rx: Ring, check: Callable[[], None] | None = None,
        timeout: float | None = None, name: str = "shm", max_sleep: float = 0.005,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.tx = tx
        self.rx = rx
        self.check = check
        self.timeout = timeout
        self.name = name
        self.max_sleep = max_sleep
        self._on_close = on_close
        self._closed = False
        self.sleeps = 0
        """How often a receive went to sleep on the futex (a figure for benchmarks and logs)."""
        self.min_chunk = 0
        """Smallest chunk ``recv_chunks``/``send_chunks`` hand out while more is on its way: a
        consumer with a per-chunk cost (a GPU copy per chunk) sets it to get fewer, larger ones."""

    def check_peer(self) -> None:
        if self.check is not None:
            self.check()

    def host_regions(self) -> list[memoryview]:
        """The memory every chunk view of this stream lies in, e.g. for a backend to page-lock
        once (cuMemHostRegister) so that device copies go straight to and from it: the receive
        ring (read-only: we only read what arrives there) and the transmit ring."""
        return [self.rx.buf.toreadonly(), self.tx.buf]

    # -- producer side ---------------------------------------------------------------------

    def _room(self, want: int) -> int:
        """Bytes writable now (at most ``want``, at least 1), waiting for the consumer if needed."""
        tx = self.tx
        room = tx.limit - tx.head
        if room >= want:
            return want
        ctrl, ti = tx.ctrl, tx.tail_i
        tx.limit = ctrl[ti] + tx.size
        room = tx.limit - tx.head
        if room > 0:
            return min(room, want)
        for _ in SPIN_POLLS:
            tx.limit = ctrl[ti] + tx.size
            room = tx.limit - tx.head
            if room > 0:
                return min(room, want)
        bo = Backoff(self.check, self.timeout, max_sleep=self.max_sleep, what=f"{self.name} peer to read")
        while True:
            bo.wait()
            tx.limit = ctrl[ti] + tx.size
            room = tx.limit - tx.head
            if room > 0:
                return min(room, want)

    def _used_after_close(self, *_args: object) -> None:
        raise StreamClosed(f"{self.name}: used after close()")

    def send(self, data: bytes | bytearray | memoryview) -> None:
        tx = self.tx
        n = len(data)
        head = tx.head
        if n <= tx.limit - head:
            pos = head & tx.mask
            end = pos + n
            if end <= tx.size:
                tx.buf[pos:end] = data
                tx.head = head = head + n
                tx.ctrl[tx.head_i] = head
                if tx.wait_i >= 0:
                    tx.wake_consumer()
                return
        mv = memoryview(data).cast("B")
        off = 0
        while off < n:
            k = self._room(min(n - off, CHUNK))
            pos = tx.head & tx.mask
            k = min(k, tx.size - pos)
            tx.buf[pos:pos + k] = mv[off:off + k]
            off += k
            tx.head += k
            tx.ctrl[tx.head_i] = tx.head
            if tx.wait_i >= 0:
                tx.wake_consumer()

    def _room_at_least(self, want: int, need: int) -> int:
        """Bytes writable now (at most ``want``), waiting until there are at least ``need``."""
        tx = self.tx
        room = tx.limit - tx.head
        if room >= need:
            return min(room, want)
        ctrl, ti = tx.ctrl, tx.tail_i
        bo: Backoff | None = None
        while True:
            tx.limit = ctrl[ti] + tx.size
            room = tx.limit - tx.head
            if room >= need:
                return min(room, want)
            if bo is None:
                bo = Backoff(self.check, self.timeout, max_sleep=self.max_sleep, what=f"{self.name} peer to read")
            bo.wait()

    def send_chunks(self, n: int) -> Iterator[memoryview]:
        tx = self.tx
        while n > 0:
            pos = tx.head & tx.mask
            want = min(n, CHUNK)
            k = self._room_at_least(want, max(1, min(want, self.min_chunk, tx.size - pos)))
            k = min(k, tx.size - pos)
            yield tx.buf[pos:pos + k]
            tx.head += k
            tx.ctrl[tx.head_i] = tx.head
            if tx.wait_i >= 0:
                tx.wake_consumer()
            n -= k

    # -- consumer side ---------------------------------------------------------------------

    def _readable(self, need: int) -> int:
        """Bytes readable now, waiting until there are at least ``need`` (at most the ring size).

        A short wait is an inline poll of the head counter: the reply to a short call arrives in
        microseconds, and a poll costs tens of nanoseconds, so no Backoff is built for it.
        """
        rx = self.rx
        ctrl, hi, tail = rx.ctrl, rx.head_i, rx.tail
        for _ in SPIN_POLLS:
            avail = ctrl[hi] - tail
            if avail >= need:
                return avail
        if rx.wait_i >= 0:
            return self._sleep_until(need)
        bo = Backoff(self.check, self.timeout, max_sleep=self.max_sleep, what=f"{self.name} peer to write")
        while True:
            bo.wait()
            avail = ctrl[hi] - tail
            if avail >= need:
                return avail

    def _sleep_until(self, need: int) -> int:
        """Sleep on the receive ring's bell until ``need`` bytes are readable; checks the peer
        every ``CHECK_S`` and honours ``timeout``."""
        rx = self.rx
        ctrl, hi, wi, tail = rx.ctrl, rx.head_i, rx.wait_i, rx.tail
        sleep = rx.bell.sleep  # type: ignore[union-attr]  # wait_i >= 0: a bell is set
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        next_check = 0.0
        self.sleeps += 1
        try:
            while True:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + CHECK_S
                    if self.check is not None:
                        self.check()
                if deadline is not None and now > deadline:
                    raise TransportTimeout(f"timed out waiting for {self.name} peer to write")
                ctrl[wi] = 1
                head = ctrl[hi]
                if head - tail >= need:
                    return head - tail
                left = next_check - now if deadline is None else min(next_check, deadline) - now
                sleep(head, left)
                avail = ctrl[hi] - tail
                if avail >= need:
                    return avail
        finally:
            ctrl[wi] = 0

    def _avail(self, want: int) -> int:
        avail = self.rx.ctrl[self.rx.head_i] - self.rx.tail
        if avail <= 0:
            avail = self._readable(1)
        return min(avail, want)

    def wait_readable(self, extra_check: Callable[[], None] | None = None) -> None:
        """Block until at least one byte can be read (used by idle server sessions)."""
        self._avail(1)

    def recv_exact(self, n: int) -> bytes:
        rx = self.rx
        tail = rx.tail
        if n <= rx.size:
            if rx.ctrl[rx.head_i] - tail < n:
                self._readable(n)  # a message that fits the ring: wait for all of it, then copy once
            pos = tail & rx.mask
            end = pos + n
            if end <= rx.size:
                out = rx.buf[pos:end].tobytes()
                rx.tail = tail = tail + n
                rx.ctrl[rx.tail_i] = tail
                return out
        buf = bytearray(n)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def recv_unpack(self, st: struct.Struct) -> tuple:
        """``st.unpack(recv_exact(st.size))`` without copying the bytes out of the ring first."""
        rx = self.rx
        n = st.size
        tail = rx.tail
        if rx.ctrl[rx.head_i] - tail < n:
            self._readable(n)
        pos = tail & rx.mask
        if pos + n > rx.size:  # wraps around the ring end
            return st.unpack(self.recv_exact(n))
        values = st.unpack_from(rx.buf, pos)
        rx.tail = tail = tail + n
        rx.ctrl[rx.tail_i] = tail
        return values

    def recv_chunks(self, n: int) -> Iterator[memoryview]:
        rx = self.rx
        while n > 0:
            pos = rx.tail & rx.mask
            want = min(n, CHUNK)
            need = max(1, min(want, self.min_chunk, rx.size - pos))
            avail = rx.ctrl[rx.head_i] - rx.tail
            if avail < need:
                avail = self._readable(need)
            k = min(avail, want, rx.size - pos)
            yield rx.buf[pos:pos + k].toreadonly()
            rx.tail += k
            rx.ctrl[rx.tail_i] = rx.tail
            n -= k

    def close(self) -> None:
        """Idempotent. Every later send or receive raises StreamClosed, even with bytes unread:
        the instance's own attributes shadow the methods, so the open path pays no check."""
        if not self._closed:
            self._closed = True
            for name in ("send", "send_chunks", "recv_exact", "recv_unpack", "recv_chunks", "recv_into",
                         "send_from", "discard"):
                setattr(self, name, self._used_after_close)
            if self._on_close is not None:
                self._on_close()
