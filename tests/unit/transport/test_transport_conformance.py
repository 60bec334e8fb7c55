"""One conformance suite run against every transport (in the spirit of trio's check_two_way_stream).

Each case gets a real pair: the local end in this process, the peer in a forked child process —
a TCP loopback connection, or a channel of a real shared-memory device file, with the local end
as the client or as the server. The peer runs a small script: echo, close, or hang.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt.errors import StreamBroken, StreamClosed, TransportTimeout, UsageError
from orion_virt.transport import shmdev
from orion_virt.transport.base import Stream
from orion_virt.transport.shmdev import format_device
from orion_virt.transport.tcp import SocketStream
from tests.streampairs import _client, _serve_one

CTX = mp.get_context("fork")
LEN = struct.Struct("<I")


def peer_script(stream: Stream, role: str, on_close: Callable[[], None]) -> None:
    if role == "close":
        time.sleep(0.3)  # let the other end finish connecting first
        on_close()
        return
    if role == "hang":
        time.sleep(3600)
    while True:
        (n,) = LEN.unpack(stream.recv_exact(4))
        if n == 0:
            on_close()
            return
        stream.send(LEN.pack(n))
        for chunk in stream.recv_chunks(n):
            stream.send(bytes(chunk))
        stream.flush()


class Pair:
    def __init__(self, local: Stream, proc: mp.process.BaseProcess, cleanup: Callable[[], None]) -> None:
        self.local = local
        self.proc = proc
        self._cleanup = cleanup

    def kill_peer(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.proc.join(5)

    def close(self) -> None:
        if self.proc.is_alive():
            self.kill_peer()
        self._cleanup()


def make_pair(kind: str, role: str, tmp: Path) -> Pair:
    if kind == "tcp":
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]

        def child() -> None:
            s = SocketStream(socket.create_connection(("127.0.0.1", port)))
            peer_script(s, role, s.close)

        proc = CTX.Process(target=child, daemon=True)
        proc.start()
        conn, _ = lsock.accept()
        lsock.close()
        local = SocketStream(conn)
        return Pair(local, proc, local.close)

    path = tmp / "orionsock7"
    format_device(path, 2 << 20)
    if kind == "shm-local-client":
        def child() -> None:
            stop = threading.Event()
            s, chan = _serve_one(path, stop)
            peer_script(s, role, lambda: chan.finish("peer closed"))

        proc = CTX.Process(target=child, daemon=True)
        proc.start()
        local = _client(path)
        return Pair(local, proc, local.close)

    def child() -> None:
        s = _client(path)
        peer_script(s, role, s.close)

    stop = threading.Event()
    proc = CTX.Process(target=child, daemon=True)
    proc.start()
    local, _chan = _serve_one(path, stop)
    return Pair(local, proc, stop.set)


KINDS = ["tcp", "shm-local-client", "shm-local-server"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def echo(kind: str, tmp_path: Path) -> Iterator[Stream]:
    pair = make_pair(kind, "echo", tmp_path)
    yield pair.local
    pair.close()


def roundtrip(s: Stream, payload: bytes) -> bytes:
    s.send(LEN.pack(len(payload)))
    s.send(payload)
    s.flush()
    (n,) = LEN.unpack(s.recv_exact(4))
    return s.recv_exact(n)


def test_small_messages_arrive_in_order(echo: Stream) -> None:
    for i in range(500):
        s = echo
        s.send(LEN.pack(4) + struct.pack("<I", i))
    echo.flush()
    for i in range(500):
        assert echo.recv_exact(4) == LEN.pack(4)
        assert struct.unpack("<I", echo.recv_exact(4))[0] == i


def test_large_message_larger_than_the_ring_streams_both_ways(echo: Stream) -> None:
    payload = os.urandom(1 << 16) * 96  # 6 MiB: several times a 1 MiB ring
    got = bytearray()
    sender = threading.Thread(target=lambda: (echo.send(LEN.pack(len(payload))), echo.send_from(memoryview(payload)),
                                              echo.flush()))
    sender.start()
    (n,) = LEN.unpack(echo.recv_exact(4))
    for chunk in echo.recv_chunks(n):
        got += chunk
    sender.join()
    assert n == len(payload) and bytes(got) == payload


def test_send_chunks_and_recv_into(echo: Stream) -> None:
    payload = bytes(range(256)) * 800  # fits in the smallest ring: no reader needed meanwhile
    echo.send(LEN.pack(len(payload)))
    pos = 0
    for view in echo.send_chunks(len(payload)):
        view[:] = payload[pos:pos + len(view)]
        pos += len(view)
    echo.flush()
    (n,) = LEN.unpack(echo.recv_exact(4))
    out = bytearray(n)
    echo.recv_into(memoryview(out))
    assert bytes(out) == payload


def test_peer_death_is_noticed_not_a_hang(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shmdev, "SERVER_STALE_S", 1.0)
    pair = make_pair(kind, "hang", tmp_path)
    try:
        time.sleep(0.1)
        pair.kill_peer()
        pair.local.timeout = 20
        t0 = time.monotonic()
        with pytest.raises(StreamBroken):
            pair.local.recv_exact(4)
        assert time.monotonic() - t0 < 10
    finally:
        pair.close()


def test_orderly_close_by_peer(kind: str, tmp_path: Path) -> None:
    pair = make_pair(kind, "close", tmp_path)
    try:
        pair.local.timeout = 20
        with pytest.raises(StreamBroken):
            pair.local.recv_exact(4)
    finally:
        pair.close()


def test_use_after_our_own_close_is_closed_not_broken(kind: str, tmp_path: Path) -> None:
    """As trio distinguishes ClosedResourceError from BrokenResourceError: after close() every
    operation raises StreamClosed (our misuse), even with unread bytes waiting."""
    pair = make_pair(kind, "echo", tmp_path)
    try:
        s = pair.local
        assert roundtrip(s, b"ping") == b"ping"
        s.send(LEN.pack(4) + b"pong")
        s.flush()
        time.sleep(0.2)  # the echo is waiting to be read
        s.close()
        s.close()  # idempotent
        for op in (lambda: s.recv_exact(4), lambda: s.recv_unpack(LEN), lambda: list(s.recv_chunks(4)),
                   lambda: (s.send(b"x" * 8), s.flush()), lambda: list(s.send_chunks(4))):
            with pytest.raises(StreamClosed) as e:
                op()
            assert isinstance(e.value, UsageError) and not isinstance(e.value, StreamBroken)
    finally:
        pair.close()


def test_receive_timeout(kind: str, tmp_path: Path) -> None:
    pair = make_pair(kind, "hang", tmp_path)
    try:
        s = pair.local
        s.set_timeout(0.3)
        t0 = time.monotonic()
        with pytest.raises(TransportTimeout):
            s.recv_exact(4)
        assert 0.25 <= time.monotonic() - t0 < 5
    finally:
        pair.close()


def test_min_chunk_gives_a_costly_consumer_fewer_larger_chunks() -> None:
    from orion_virt.transport.ring import Ring, RingStream

    ring_size = 1 << 20
    mem = memoryview(bytearray(4096 + 2 * ring_size))
    ctrl = mem[:4096].cast("Q")
    a_to_b, b_to_a = mem[4096:4096 + ring_size], mem[4096 + ring_size:]
    a = RingStream(Ring(a_to_b, ctrl, 16, 24), Ring(b_to_a, ctrl, 32, 40))
    b = RingStream(Ring(b_to_a, ctrl, 32, 40), Ring(a_to_b, ctrl, 16, 24))
    b.min_chunk = 256 << 10
    total = 3 << 20
    payload = os.urandom(total)

    def trickle() -> None:
        for i in range(0, total, 4096):
            a.send(payload[i:i + 4096])
            if i % (64 << 10) == 0:
                time.sleep(0.0005)

    t = threading.Thread(target=trickle)
    t.start()
    sizes, got = [], bytearray()
    for chunk in b.recv_chunks(total):
        sizes.append(len(chunk))
        got += chunk
    t.join()
    assert bytes(got) == payload
    small = [s for s in sizes[:-1] if s < b.min_chunk]
    assert len(small) <= total // ring_size  # only where the ring wraps
