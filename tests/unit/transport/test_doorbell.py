"""orion_virt.transport.doorbell against fake QEMUs written from QEMU's ivshmem-spec.

A FakeQemu connects as a unix stream client, reads 8-byte little-endian messages one at a time
with their SCM_RIGHTS fds (as QEMU's chardev does), and keeps a peer table the way the spec says
a device must: ``-1`` + fd is the shared memory, ``<id>`` + fd a vector of peer ``id`` (its own
id: a vector it is rung on), ``<id>`` without fd a disconnect.
"""

from __future__ import annotations

import mmap
import os
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.errors import DeviceError, OrionError, TransportError, UsageError
from orion_virt.transport import doorbell as db

SHM_SIZE = 1 << 20


class FakeQemu:
    """An ivshmem-doorbell device's view of the server, per the spec's client-server protocol."""

    def __init__(self, path: Path, vectors: int = 1) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.vectors = vectors
        self.id = -1
        self.shm_fd = -1
        self.peers: dict[int, list[int]] = {}
        self.gone: list[int] = []

    def recv(self) -> tuple[int, int | None]:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 8, 4)
        assert len(data) == 8, f"short message {data!r}"
        assert len(fds) <= 1, "one fd per message"
        return struct.unpack("<q", data)[0], (fds[0] if fds else None)

    def setup(self) -> None:
        """What QEMU's realize does: version, id, then messages until the shared memory."""
        v, fd = self.recv()
        assert (v, fd) == (0, None)
        self.id, fd = self.recv()
        assert fd is None and 0 <= self.id <= 0xFFFF
        while True:
            msg, fd = self.recv()
            self.process(msg, fd)
            if msg == -1:
                break

    def process(self, msg: int, fd: int | None) -> None:
        if msg == -1:
            assert fd is not None and self.shm_fd == -1
            self.shm_fd = fd
        elif fd is None:
            self.gone.append(msg)
            for f in self.peers.pop(msg, []):
                os.close(f)
        else:
            self.peers.setdefault(msg, []).append(fd)

    def pump(self, n: int) -> None:
        for _ in range(n):
            self.process(*self.recv())

    def ring(self, peer: int, vector: int) -> None:
        """A Doorbell register write ``(peer << 16) | vector``: QEMU signals that eventfd."""
        fds = self.peers.get(peer, [])
        if vector < len(fds):
            os.eventfd_write(fds[vector], 1)

    def own_fd(self, vector: int = 0) -> int:
        return self.peers[self.id][vector]

    def close(self) -> None:
        self.sock.close()
        for fds in self.peers.values():
            for f in fds:
                os.close(f)
        self.peers.clear()
        if self.shm_fd >= 0:
            os.close(self.shm_fd)
            self.shm_fd = -1


@pytest.fixture
def shm(tmp_path: Path) -> Path:
    p = tmp_path / "orionsock7"
    with open(p, "wb") as f:
        f.truncate(SHM_SIZE)
    return p


@pytest.fixture
def server(shm: Path, tmp_path: Path) -> Iterator[db.DoorbellServer]:
    logs: list[str] = []
    s = db.DoorbellServer(shm, db.socket_path(7, tmp_path / "run"), vectors=2, log=logs.append)
    s.logs = logs  # type: ignore[attr-defined]
    with s:
        s.serve_in_thread()
        yield s


def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.005)


def test_socket_path_and_mode(server: db.DoorbellServer, tmp_path: Path) -> None:
    assert server.sock_path == tmp_path / "run" / "ivshmem-orionsock7.sock"
    st = os.stat(server.sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert server.listening


def test_first_guest_setup_sequence(server: db.DoorbellServer, shm: Path) -> None:
    q = FakeQemu(server.sock_path, vectors=2)
    try:
        q.setup()
        assert q.id == 1  # oriond is 0
        # the shared memory is the device file itself
        assert os.fstat(q.shm_fd).st_ino == os.stat(shm).st_ino
        m = mmap.mmap(q.shm_fd, SHM_SIZE)
        m[:5] = b"hello"
        assert shm.read_bytes()[:5] == b"hello"
        m.close()
        q.pump(4)  # oriond's 2 vectors, then its own 2
        assert sorted(q.peers) == [0, 1] and len(q.peers[0]) == 2 and len(q.peers[1]) == 2
        _until(lambda: server.peers() == [1])
    finally:
        q.close()


def test_guest_rings_oriond(server: db.DoorbellServer) -> None:
    q = FakeQemu(server.sock_path, vectors=2)
    try:
        q.setup()
        q.pump(4)
        assert server.wait(0) == frozenset()
        q.ring(db.ORIOND_PEER_ID, 1)
        assert server.wait(2) == frozenset({1})
        assert server.wait(0) == frozenset()  # reset by wait
        q.ring(0, 0)
        q.ring(0, 0)
        q.ring(0, 1)
        assert server.wait(2) == frozenset({0, 1})
        # a ring before wait() is not lost; fileno() is pollable
        q.ring(0, 0)
        import select
        assert select.select([server.fileno(0)], [], [], 2)[0]
        assert server.wait(0) == frozenset({0})
    finally:
        q.close()


def test_wait_sleeps_until_rung(server: db.DoorbellServer) -> None:
    q = FakeQemu(server.sock_path, vectors=2)
    try:
        q.setup()
        q.pump(4)
        t = time.monotonic()
        assert server.wait(0.05) == frozenset()
        assert time.monotonic() - t >= 0.04
        threading.Timer(0.1, q.ring, (0, 0)).start()
        t = time.monotonic()
        assert server.wait(5) == frozenset({0})
        assert 0.05 < time.monotonic() - t < 2
    finally:
        q.close()


def test_oriond_rings_guest(server: db.DoorbellServer) -> None:
    q = FakeQemu(server.sock_path, vectors=2)
    try:
        q.setup()
        q.pump(4)
        _until(lambda: server.peers() == [1])
        assert server.ring(1, 1) is True
        assert os.eventfd_read(q.own_fd(1)) == 1
        with pytest.raises(BlockingIOError):
            os.eventfd_read(q.own_fd(0))
        assert server.ring(1, 5) is False  # beyond its vectors: dropped
        assert server.ring(9, 0) is False  # no such peer: dropped
        with pytest.raises(UsageError):
            server.ring(0, 0)
        with pytest.raises(UsageError):
            server.ring(1 << 16, 0)
        assert server.ring_all(0) == 1
        assert os.eventfd_read(q.own_fd(0)) == 1
    finally:
        q.close()


def test_dup_ring_fd_for_another_process(server: db.DoorbellServer) -> None:
    q = FakeQemu(server.sock_path, vectors=2)
    try:
        q.setup()
        q.pump(4)
        _until(lambda: server.peers() == [1])
        fd = server.dup_ring_fd(1, 1)
        assert fd is not None and server.dup_ring_fd(5, 0) is None and server.dup_ring_fd(1, 7) is None
        os.eventfd_write(fd, 1)
        assert os.eventfd_read(q.own_fd(1)) == 1
        os.close(fd)
        with pytest.raises(UsageError):
            server.dup_ring_fd(0, 0)
    finally:
        q.close()


def test_second_guest_sees_first_and_disconnects(server: db.DoorbellServer) -> None:
    a = FakeQemu(server.sock_path, vectors=2)
    a.setup()
    a.pump(4)
    b = FakeQemu(server.sock_path, vectors=2)
    try:
        b.setup()
        b.pump(2 + 2 + 2)  # oriond's, a's, its own
        assert b.id == 2 and sorted(b.peers) == [0, 1, 2]
        a.pump(2)  # connect notification for b
        assert sorted(a.peers) == [0, 1, 2]
        # guests can ring each other through the fds the server handed out
        a.ring(2, 0)
        assert os.eventfd_read(b.own_fd(0)) == 1
        _until(lambda: server.peers() == [1, 2])
        a.close()
        _until(lambda: server.peers() == [2])
        b.pump(1)
        assert b.gone == [1] and 1 not in b.peers
        assert server.ring(1, 0) is False
        c = FakeQemu(server.sock_path, vectors=2)
        try:
            c.setup()
            assert c.id == 3  # ids are not reused at once
        finally:
            c.close()
    finally:
        b.close()


def test_guest_that_talks_is_dropped(server: db.DoorbellServer) -> None:
    q = FakeQemu(server.sock_path)
    try:
        q.setup()
        q.pump(4)
        _until(lambda: server.peers() == [1])
        q.sock.sendall(b"nonsense")
        _until(lambda: server.peers() == [])
        assert any("one-way socket" in m for m in server.logs)  # type: ignore[attr-defined]
    finally:
        q.close()


def test_missing_or_bad_shm_refuses_the_guest(tmp_path: Path) -> None:
    shm = tmp_path / "orionsock3"
    logs: list[str] = []
    with db.DoorbellServer(shm, tmp_path / "s.sock", log=logs.append) as s:
        s.serve_in_thread()
        q = FakeQemu(s.sock_path)
        with pytest.raises((ConnectionError, AssertionError, OSError)):
            q.setup()  # closed before anything is sent: QEMU's realize fails, the VM does not start
        q.close()
        shm.write_bytes(b"x" * 5000)  # not a power of two
        q = FakeQemu(s.sock_path)
        with pytest.raises((ConnectionError, AssertionError, OSError)):
            q.setup()
        q.close()
        assert s.peers() == []
    assert any("not prepared by the hook" in m for m in logs), logs
    assert any("power of two" in m for m in logs), logs


def test_shm_reopened_per_connection(server: db.DoorbellServer, shm: Path) -> None:
    """The hook may re-create the device file between boots: each QEMU gets the current one."""
    shm.unlink()
    with open(shm, "wb") as f:
        f.truncate(SHM_SIZE)
    q = FakeQemu(server.sock_path)
    try:
        q.setup()
        assert os.fstat(q.shm_fd).st_ino == os.stat(shm).st_ino
    finally:
        q.close()


def test_stale_socket_replaced_live_one_refused(shm: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on
    with db.DoorbellServer(shm, path) as s:
        assert s.listening
        with pytest.raises(TransportError, match="already listens"):
            db.DoorbellServer(shm, path).start()
    assert not path.exists()  # removed at close
    path.write_text("not a socket")
    with pytest.raises(DeviceError, match="not a socket"):
        db.DoorbellServer(shm, path).start()
    assert path.read_text() == "not a socket"


def test_close_disconnects_and_closes_fds(shm: Path, tmp_path: Path) -> None:
    s = db.DoorbellServer(shm, tmp_path / "c.sock", vectors=1)
    s.start()
    s.serve_in_thread()
    q = FakeQemu(s.sock_path)
    q.setup()
    q.pump(2)
    before = len(os.listdir("/proc/self/fd"))
    s.close()
    s.close()  # idempotent
    assert q.sock.recv(8) == b""  # QEMU sees EOF
    assert len(os.listdir("/proc/self/fd")) < before
    with pytest.raises(UsageError):
        s.wait(0)
    with pytest.raises(UsageError):
        s.start()
    q.close()


def test_handle_events_without_thread(shm: Path, tmp_path: Path) -> None:
    """oriond may drive the server from its own loop instead of a thread."""
    with db.DoorbellServer(shm, tmp_path / "h.sock") as s:
        q = FakeQemu(s.sock_path)
        assert s.handle_events(2) >= 1
        q.setup()
        q.pump(2)
        assert s.peers() == [1]
        q.close()
        assert s.handle_events(2) == 1
        assert s.peers() == []


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        db.DoorbellServer("/dev/shm/x", "/tmp/x.sock", vectors=0)
    with pytest.raises(UsageError):
        db.DoorbellServer("/dev/shm/x", "/tmp/x.sock", mode=0o4777)
    with pytest.raises(UsageError):
        db.socket_path(-1)
    with pytest.raises(UsageError):
        db.DoorbellServer("/dev/shm/x", "/tmp/x.sock").fileno()
    assert issubclass(UsageError, OrionError)
