"""An ivshmem server for QEMU's ``ivshmem-doorbell`` device, with oriond as one of its peers.

ivshmem-plain has no interrupt, so the guest client and oriond poll each other. The doorbell
model adds one: every peer (each QEMU that connects, plus oriond) owns one eventfd per vector;
a guest rings a peer by writing ``(peer << 16) | vector`` to BAR0's Doorbell register (QEMU
then signals that peer's eventfd), and a peer rings a guest by signalling the guest's eventfd
(QEMU then raises the MSI-X vector in the guest). This module is the server QEMU connects to
(Debian 12's QEMU ships no ``ivshmem-server``), written from QEMU's ivshmem-spec:

* the server listens on a unix stream socket (one per device,
  :func:`socket_path`); QEMU connects as a chardev socket *client* at start-up and blocks in
  device realize until it has the shared memory, so the server must already listen then;
* to each new client it sends 8-byte little-endian signed messages, one ``sendmsg`` each, some
  with one fd (SCM_RIGHTS): ``0`` (protocol version), the client's peer id, ``-1`` + the
  shared-memory fd, then ``<peer id>`` + fd for every vector of every other peer (for ringing
  them), then ``<own id>`` + fd for each of its own vectors (for being rung). Every other client
  gets ``<new id>`` + fd per vector of the new one; when a client goes, the others get its id
  without fd (disconnect notification);
* the connection is one-way: a client never sends; its socket becomes readable only at EOF.

The shared memory handed to QEMU is the device file itself (``/dev/shm/orionsock<N>``, formatted
by ``orion-shm``/the hook), opened anew for each connection, so QEMU's BAR2 is the same bytes
oriond maps from that path even if the file was re-created since the server started.

oriond is the peer with id :data:`ORIOND_PEER_ID` (0): its eventfds are created here and never
cross a socket to oriond itself. oriond sleeps in :meth:`DoorbellServer.wait` (or polls
:meth:`DoorbellServer.fileno`) and interrupts a guest with :meth:`DoorbellServer.ring`.

Invariants: peer ids are unique among connected peers, in 0..65535, oriond's is 0 and a guest's
is never reused while it is connected; every fd the server created is closed exactly once
(at the peer's disconnect or at :meth:`close`); a misbehaving client (sends bytes, hangs up)
only ever loses its own connection. An eventfd says *that* a peer was rung on a vector, not
*who* rang or how often: the rings in shared memory say what work there is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DeviceError, TransportError, UsageError

PROTOCOL_VERSION = 0
#: oriond's own peer id on every device's server; guests ring it with ``(0 << 16) | vector``.
ORIOND_PEER_ID = 0
MAX_PEER_ID = 0xFFFF
#: QEMU's MSI-X table of ivshmem-doorbell has at most this many vectors we would use.
MAX_VECTORS = 64
#: The vectors of an Orion device (``orion-virt attach --doorbell`` writes ``<msi vectors=…>``
#: with this; oriond's server must offer exactly as many as the domain's device has, or QEMU
#: refuses to start): a guest rings oriond on :data:`CLAIM_VECTOR` after claiming a channel (the
#: main loop sleeps on it) and on ``channel_vector(i)`` after publishing a request on channel
#: *i* whose worker sleeps (each worker sleeps on its own vector, so no wake-up is shared); oriond
#: rings a guest on vector 0 (one interrupt per guest: its client re-checks its own ring).
DEVICE_VECTORS = 9
CLAIM_VECTOR = 0
DEFAULT_RUN_DIR = "/run/orion"
#: root-only: libvirt runs QEMU as root on these hosts (qemu.conf ``user = "root"``); pass
#: ``mode=0o660, gid=<qemu group>`` where QEMU runs as an unprivileged user.
DEFAULT_SOCKET_MODE = 0o600
_MSG = struct.Struct("<q")
_SEND_TIMEOUT = 5.0


def socket_path(index: int, run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR) -> Path:
    """``<run_dir>/ivshmem-orionsock<index>.sock``: the server socket of device *index*.

    This is the ``<server path=…>`` the host agent writes into the domain's ``<shmem>``.
    """
    if index < 0:
        raise UsageError(f"device index {index}: must be >= 0")
    return Path(run_dir) / f"ivshmem-orionsock{index}.sock"


def channel_vector(channel: int) -> int:
    """The vector a guest rings oriond on for channel *channel*'s worker."""
    return 1 + channel


class EventfdBell:
    """A ring's bell across a VM boundary (``ring.Bell``): ``wake`` signals *ring_fd* (a guest's
    eventfd, :meth:`DoorbellServer.dup_ring_fd`: QEMU raises the guest's MSI-X vector), ``sleep``
    polls *wait_fd* (one of oriond's own eventfds, which QEMU signals when the guest rings it)
    and resets it. The eventfd keeps a ring until it is read, so one that came after the sleeper
    set its waiting slot makes ``sleep`` return at once: no lost wake-up. ``sleeps``/``wakes``
    count what happened (for the session's log)."""

    __slots__ = ("ring_fd", "wait_fd", "_poll", "sleeps", "wakes")

    def __init__(self, ring_fd: int = -1, wait_fd: int = -1) -> None:
        import select

        self.ring_fd = ring_fd
        self.wait_fd = wait_fd
        self._poll = select.poll()
        if wait_fd >= 0:
            self._poll.register(wait_fd, select.POLLIN)
        self.sleeps = 0
        self.wakes = 0

    def wake(self) -> None:
        if self.ring_fd >= 0:
            self.wakes += 1
            _signal(self.ring_fd)

    def sleep(self, seen_head: int, timeout: float) -> None:
        if self.wait_fd < 0:
            time.sleep(min(timeout, 0.001))
            return
        self.sleeps += 1
        try:
            self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
        except InterruptedError:
            pass
        _drain(self.wait_fd)

    def drain(self) -> None:
        """Forget rings that came before (e.g. for the previous session of the channel)."""
        if self.wait_fd >= 0:
            _drain(self.wait_fd)


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _signal(fd: int) -> None:
    """Add 1 to eventfd *fd* (what QEMU does for a Doorbell write)."""
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:  # counter at its maximum: the peer is already signalled
        pass


def _drain(fd: int) -> int:
    """Read (and so reset) eventfd *fd*; 0 if it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@dataclass
class Peer:
    """One peer: its id, its eventfds (index = vector) and, for a QEMU, its connection."""

    id: int
    eventfds: list[int]
    conn: socket.socket | None = None
    label: str = ""
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in self.eventfds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()


class DoorbellServer:
    """The ivshmem server of one Orion device, oriond being peer :data:`ORIOND_PEER_ID`.

    *shm_path*: the device file QEMU maps as BAR2 (must exist when a QEMU connects; a power of
    two of at least 4 KiB, else that QEMU is refused and fails to start). *sock_path*: where to
    listen; its parent is created (0755) if missing. *vectors*: eventfds per peer (match the
    domain's ``<msi vectors=…>``; QEMU ignores extras, leaves missing ones unconnected).
    *mode*/*gid*: the socket's permission bits and group. *log* receives one line per event.

    Lifecycle: ``start()`` (or the context manager) binds and listens; events (connects,
    hang-ups) are handled by ``handle_events()`` from the caller's loop or by
    ``serve_in_thread()``; ``close()`` disconnects every QEMU (QEMU keeps running with the memory
    it has but loses interrupts), closes every fd and removes the socket. Thread safety:
    ``ring``/``wait``/``peers`` may be called from any thread while one thread handles events.

    Raises (from ``start``) TransportError when the socket cannot be created or another server
    already listens there; DeviceError when the path is taken by something that is not a socket.
    """

    def __init__(self, shm_path: str | os.PathLike[str], sock_path: str | os.PathLike[str], *,
                 vectors: int = 1, mode: int = DEFAULT_SOCKET_MODE, gid: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise UsageError(f"vectors={vectors}: expected 1..{MAX_VECTORS}")
        if mode & ~0o777:
            raise UsageError(f"socket mode {mode:o}: permission bits only")
        self.shm_path = Path(shm_path)
        self.sock_path = Path(sock_path)
        self.vectors = vectors
        self.mode = mode
        self.gid = gid
        self._log = log or (lambda _m: None)
        self._lock = threading.RLock()
        self._peers: dict[int, Peer] = {}
        self._by_fd: dict[int, Peer] = {}
        self._next_id = ORIOND_PEER_ID + 1
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._own: Peer | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DoorbellServer:
        """Create oriond's eventfds, bind and listen. Idempotent while started."""
        if self._closed:
            raise UsageError("DoorbellServer was closed; create a new one")
        if self._listener is not None:
            return self
        self._own = Peer(ORIOND_PEER_ID, [_eventfd() for _ in range(self.vectors)], label="oriond")
        try:
            self._listener = self._bind()
        except BaseException:
            self._own.close()
            self._own = None
            raise
        self._peers[ORIOND_PEER_ID] = self._own
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._stop_r, selectors.EVENT_READ, None)
        self._log(f"doorbell: listening on {self.sock_path} for {self.shm_path} "
                  f"({self.vectors} vector(s), oriond is peer {ORIOND_PEER_ID})")
        return self

    def _bind(self) -> socket.socket:
        path = self.sock_path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise TransportError(f"doorbell socket dir {path.parent}: {e.strerror}") from None
        self._remove_stale(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(str(path))
            # permissions before listen(): until then every connect is refused
            os.chmod(path, self.mode)
            if self.gid is not None:
                os.chown(path, -1, self.gid)
            s.listen(16)
            s.setblocking(False)
        except OSError as e:
            s.close()
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            raise TransportError(f"doorbell socket {path}: {e.strerror or e}") from None
        return s

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise DeviceError(f"doorbell socket {path}: exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a server that died
            return
        except OSError as e:
            raise TransportError(f"doorbell socket {path}: {e.strerror or e}") from None
        finally:
            probe.close()
        raise TransportError(f"doorbell socket {path}: another server already listens there")

    def close(self) -> None:
        """Stop serving: disconnect all QEMUs, close every fd, remove the socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._stop_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        with self._lock:
            for p in list(self._peers.values()):
                p.close()
            self._peers.clear()
            self._by_fd.clear()
            if self._sel is not None:
                self._sel.close()
            if self._listener is not None:
                self._listener.close()
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(self.sock_path).st_mode):
                        os.unlink(self.sock_path)
            for fd in (self._stop_r, self._stop_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._stop_r = self._stop_w = -1
        self._log(f"doorbell: closed {self.sock_path}")

    def __enter__(self) -> DoorbellServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- event handling ----------------------------------------------------------------------

    def handle_events(self, timeout: float | None = 0.0) -> int:
        """Accept new QEMUs and reap hung-up ones, waiting up to *timeout* s (None: forever)
        for the first event. Returns the number of events handled; 0 after ``close``."""
        sel = self._sel
        if sel is None or self._closed:
            if self._listener is None and not self._closed:
                raise UsageError("DoorbellServer.start() first")
            return 0
        try:
            ready = sel.select(timeout)
        except (OSError, ValueError):  # closed under us
            return 0
        n = 0
        for key, _ in ready:
            if self._closed:
                break
            if key.fileobj is self._listener:
                n += self._accept_all()
            elif key.fileobj == self._stop_r:
                break
            else:
                peer = key.data
                assert isinstance(peer, Peer)
                self._on_readable(peer)
                n += 1
        return n

    def serve_in_thread(self, name: str | None = None) -> threading.Thread:
        """Handle events in a daemon thread until ``close()``; returns the thread."""
        self.start()
        if self._thread is not None:
            return self._thread

        def loop() -> None:
            while not self._closed:
                self.handle_events(None)

        self._thread = threading.Thread(target=loop, name=name or f"doorbell-{self.sock_path.name}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def _accept_all(self) -> int:
        assert self._listener is not None
        n = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return n
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._log(f"doorbell: {self.sock_path}: cannot accept: {e.strerror}")
                    return n
                raise TransportError(f"doorbell socket {self.sock_path}: {e.strerror}") from None
            n += 1
            self._admit(conn)

    def _credentials(self, conn: socket.socket) -> str:
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
        except OSError:
            return "pid ?"
        return f"pid {pid} uid {uid}"

    def _open_shm(self) -> int:
        """An O_RDWR fd of the device file, checked to be a mappable BAR (power of two)."""
        try:
            fd = os.open(self.shm_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise DeviceError(f"{self.shm_path}: {e.strerror} (not prepared by the hook?)") from None
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size < 4096 or size & (size - 1):
            os.close(fd)
            raise DeviceError(f"{self.shm_path}: {size} bytes; an ivshmem BAR needs a regular file "
                              "whose size is a power of two")
        return fd

    def _pick_id(self) -> int:
        for _ in range(MAX_PEER_ID + 1):
            cand = self._next_id
            self._next_id = cand + 1 if cand < MAX_PEER_ID else ORIOND_PEER_ID + 1
            if cand not in self._peers:
                return cand
        raise TransportError(f"doorbell {self.sock_path}: all {MAX_PEER_ID} peer ids are in use")

    def _admit(self, conn: socket.socket) -> None:
        who = self._credentials(conn)
        conn.setblocking(True)
        conn.settimeout(_SEND_TIMEOUT)
        try:
            shm_fd = self._open_shm()
        except DeviceError as e:
            self._log(f"doorbell: refused {who}: {e}")
            conn.close()
            return
        with self._lock:
            try:
                pid = self._pick_id()
            except TransportError as e:
                self._log(f"doorbell: refused {who}: {e}")
                os.close(shm_fd)
                conn.close()
                return
            new = Peer(pid, [_eventfd() for _ in range(self.vectors)], conn, label=who)
            try:
                self._send(conn, PROTOCOL_VERSION)
                self._send(conn, pid)
                self._send(conn, -1, shm_fd)
                for other in self._peers.values():
                    for fd in other.eventfds:
                        self._send(conn, other.id, fd)
            except OSError as e:
                self._log(f"doorbell: {who} (peer {pid}) failed during setup: {e}")
                new.close()
                return
            finally:
                os.close(shm_fd)
            for other in list(self._peers.values()):
                if other.conn is None:
                    continue
                try:
                    for fd in new.eventfds:
                        self._send(other.conn, pid, fd)
                except OSError as e:
                    self._log(f"doorbell: peer {other.id} did not take peer {pid}'s fds: {e}")
                    self._drop(other, notify=True)
            try:
                for fd in new.eventfds:
                    self._send(conn, pid, fd)
            except OSError as e:
                self._log(f"doorbell: {who} (peer {pid}) failed during setup: {e}")
                self._drop_unregistered(new)
                return
            self._peers[pid] = new
            self._by_fd[conn.fileno()] = new
            assert self._sel is not None
            self._sel.register(conn, selectors.EVENT_READ, new)
        self._log(f"doorbell: {self.shm_path.name}: peer {pid} connected ({who})")

    def _drop_unregistered(self, new: Peer) -> None:
        for other in list(self._peers.values()):
            if other.conn is not None:
                with contextlib.suppress(OSError):
                    self._send(other.conn, new.id)
        new.close()

    @staticmethod
    def _send(conn: socket.socket, value: int, fd: int | None = None) -> None:
        data = _MSG.pack(value)
        if fd is None:
            conn.sendall(data)
        else:
            sent = socket.send_fds(conn, [data], [fd])
            if sent != len(data):  # 8 bytes into an empty-enough socket buffer: never short
                raise OSError(errno.EIO, f"short send ({sent} of {len(data)} bytes)")

    def _on_readable(self, peer: Peer) -> None:
        assert peer.conn is not None
        try:
            data = peer.conn.recv(64)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if data:
            self._log(f"doorbell: peer {peer.id} sent {len(data)} bytes on a one-way socket; "
                      "disconnecting it")
        self._drop(peer, notify=True)

    def _drop(self, peer: Peer, *, notify: bool) -> None:
        with self._lock:
            if self._peers.get(peer.id) is not peer:
                return
            del self._peers[peer.id]
            if peer.conn is not None:
                self._by_fd.pop(peer.conn.fileno(), None)
                if self._sel is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._sel.unregister(peer.conn)
            peer.close()
            if notify:
                for other in list(self._peers.values()):
                    if other.conn is not None:
                        try:
                            self._send(other.conn, peer.id)
                        except OSError:
                            self._drop(other, notify=True)
        self._log(f"doorbell: {self.shm_path.name}: peer {peer.id} disconnected")

    # --- oriond's API ------------------------------------------------------------------------

    def _own_fds(self) -> list[int]:
        own = self._own
        if own is None or self._closed:
            raise UsageError("DoorbellServer is not started (or was closed)")
        return own.eventfds

    def fileno(self, vector: int = 0) -> int:
        """oriond's eventfd for *vector*: readable when a guest rang ``(0 << 16) | vector``.

        For a caller's own poll/epoll loop; after it reports readable call ``wait(0)`` (or read
        8 bytes) to reset it. Raises UsageError before ``start`` or for a bad vector.
        """
        fds = self._own_fds()
        if not 0 <= vector < len(fds):
            raise UsageError(f"vector {vector}: this server has {len(fds)}")
        return fds[vector]

    def wait(self, timeout: float | None) -> frozenset[int]:
        """Sleep until a guest rings oriond, at most *timeout* s (None: no limit; 0: just look).

        Returns the vectors rung since the last call (empty: timed out) and resets them. A ring
        that arrives before the call is not lost: it is returned at once. Raises UsageError
        before ``start``/after ``close``.
        """
        import select

        fds = self._own_fds()
        p = select.poll()
        for fd in fds:
            p.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        try:
            ready = p.poll(ms)
        except InterruptedError:
            ready = []
        if not ready:
            return frozenset()
        return frozenset(v for v, fd in enumerate(fds) if _drain(fd))

    def ring(self, peer_id: int, vector: int = 0) -> bool:
        """Interrupt guest *peer_id* on *vector* (its MSI-X vector fires if the guest enabled it).

        Returns False when no such peer is connected, or it has fewer vectors (the write is
        dropped, as the Doorbell register drops it). Raises UsageError for ids/vectors out of
        range and for ringing oriond itself.
        """
        if not 0 <= peer_id <= MAX_PEER_ID or not 0 <= vector <= 0xFFFF:
            raise UsageError(f"peer {peer_id} vector {vector}: out of range")
        if peer_id == ORIOND_PEER_ID:
            raise UsageError("ring(): peer 0 is oriond itself")
        with self._lock:
            p = self._peers.get(peer_id)
            if p is None or vector >= len(p.eventfds) or p.closed:
                return False
            _signal(p.eventfds[vector])
            return True

    def dup_ring_fd(self, peer_id: int, vector: int = 0) -> int | None:
        """A dup of guest *peer_id*'s eventfd for *vector*, for a session worker in another
        process to ring that guest itself (``os.eventfd_write(fd, 1)``); None if not connected.

        The caller owns (and closes) the fd. After the guest disconnects, writes to it reach
        nobody and are harmless; a new guest never reuses it.
        """
        if peer_id == ORIOND_PEER_ID:
            raise UsageError("dup_ring_fd(): peer 0 is oriond itself")
        with self._lock:
            p = self._peers.get(peer_id)
            if p is None or p.closed or not 0 <= vector < len(p.eventfds):
                return None
            return os.dup(p.eventfds[vector])

    def events_fileno(self) -> int:
        """An fd that is readable when ``handle_events`` has work (a QEMU connects or hangs up),
        for the caller's own select loop. Raises UsageError before ``start``."""
        if self._sel is None or self._closed:
            raise UsageError("DoorbellServer is not started (or was closed)")
        fileno = getattr(self._sel, "fileno", None)  # epoll/kqueue/devpoll selectors have one
        if fileno is None:
            raise UsageError(f"{type(self._sel).__name__} has no fd to select on")
        return int(fileno())

    def drain(self, vector: int) -> bool:
        """Reset oriond's eventfd of *vector* only; True if it had been rung."""
        return _drain(self.fileno(vector)) > 0

    def close_in_child(self, keep: tuple[int, ...] = ()) -> None:
        """In a forked worker: close every fd of this server except *keep* (the worker's own
        eventfd), touching nothing the parent owns (no socket is removed, nobody is told). The
        server is unusable afterwards."""
        self._closed = True
        for p in self._peers.values():
            if p.conn is not None:
                with contextlib.suppress(OSError):
                    p.conn.close()
            for fd in p.eventfds:
                if fd not in keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            p.closed = True
        self._peers.clear()
        self._by_fd.clear()
        if self._listener is not None:
            self._listener.close()
        if self._sel is not None:
            self._sel.close()
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stop_r = self._stop_w = -1

    def ring_all(self, vector: int = 0) -> int:
        """Ring every connected guest on *vector*; returns how many were rung."""
        return sum(self.ring(pid, vector) for pid in self.peers())

    def peers(self) -> list[int]:
        """Ids of the connected guests (QEMUs), ascending; oriond's own id is not listed."""
        with self._lock:
            return sorted(pid for pid, p in self._peers.items() if p.conn is not None)

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._closed
