"""oriond: accepts clients over TCP and shared-memory devices; one worker process per session.

The main process never touches a backend's device state (so a CUDA context is only ever created
in a worker, after fork). It listens on ``bind_addr:listen_port``, watches ``shm_path_base`` for
Orion devices (container devices when ``enable_shm``, VM devices when ``enable_kvm``), forks a
worker per session and reaps it. A crash or bad input in one worker never disturbs another.

Limits (``[server-limits]``): a TCP connection costs no worker until its HELLO has arrived. The
main loop holds it (a socket and a few bytes, at most ``max_pending_connections`` of them, with
``max_sessions_per_client`` from one address), peeks at what it sent without consuming it, and
forks the session's worker only once the whole HELLO frame is there; one that sends none within
``hello_timeout`` is closed. So a flood of half-open connections costs file descriptors, never
processes (reading the HELLO here rather than capping pending workers: a cap on workers would let
a few silent connections lock every client out for the HELLO timeout, and each pending worker is
a fork of oriond). The worker then reads the HELLO again as before: the session's handshake,
admission and the protocol's state stay in the worker. Sessions in total (``max_sessions``, TCP
and shared memory together) are checked before a worker is forked; ``idle_timeout`` closes a
session that sends no call for that long. Every refusal is an ERROR frame whose text the
client's application sees (a dead channel's reason on shared memory) and a log line.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ServerConfig
from ..errors import DeviceError, OrionError, TransportError
from ..procs import die_with_parent
from ..transport import tcp
from ..transport.doorbell import CLAIM_VECTOR, DEFAULT_RUN_DIR, EventfdBell, channel_vector, socket_path
from ..transport.shmdev import C_DB_PEER, C_GEN, C_STATE, CLAIMED, SERVING, list_devices
from ..wire import HEADER_SIZE, ServerProtocol, encode_error
from ..wire.frames import MAX_CONTROL_BODY
from . import metrics
from .backend import Backend
from .claim_watch import ClaimBells
from .logs import session_logger
from .session import PROTOCOL_STATUS, REFUSED_STATUS, Authorizer, Session
from .shm_serve import (
    ServerChannel,
    Watched,
    device_removed,
    open_for_serving,
    pending_claims,
    start_doorbell,
    stop_serving,
    tick,
)

SCAN_INTERVAL = 0.02
"""How often the main loop looks at VM devices without a doorbell (a guest cannot wake us: its
claims are polled). A doorbell VM device's client rings the claim vector instead."""
IDLE_INTERVAL = 0.1
"""How often the main loop runs when only futex-woken devices are served (heartbeats, new
devices, removed ones); claims, connections and ended workers wake it at once."""
RESCAN_DIR_INTERVAL = 0.5
PEEK = HEADER_SIZE + MAX_CONTROL_BODY
"""The most a pending connection's HELLO frame can take (its header and bounded body)."""
LISTEN_BACKLOG = 1024
"""(capped by net.core.somaxconn) connections the kernel completes before oriond accepts them"""
LOG_BURST = 20
"""Refusals of one kind logged one by one per second; more are counted in one line."""


@dataclass
class Worker:
    pid: int
    kind: str
    started: float
    watched: Watched | None = None
    channel: int = -1
    gen: int = 0
    client: str = ""
    """a TCP session's client address (its host)"""


@dataclass
class Pending:
    """An accepted TCP connection whose HELLO has not fully arrived: no worker yet."""

    conn: socket.socket
    host: str
    peer: str
    sid: int
    deadline: float


class Daemon:
    def __init__(self, config: ServerConfig, backend: Backend, authorize: Authorizer,
                 log: logging.Logger, on_ready: Callable[[], None] | None = None,
                 reload_config: Callable[[], ServerConfig] | None = None) -> None:
        self.cfg = config
        self.reload_config = reload_config
        """SIGHUP (systemctl reload oriond): the configuration to reload (see server/reload.py)"""
        self._reload_wanted = False
        self.backend = backend
        self.authorize = authorize
        self.log = log
        self.on_ready = on_ready
        self.workers: dict[int, Worker] = {}
        self.devices: dict[Path, Watched] = {}
        self.listener: socket.socket | None = None
        self.stopping = False
        self.ids = itertools.count(int(time.time()) * 1000)  # unique across restarts (< 1000 sessions/s)
        self._last_dir_scan = 0.0
        self._skipped: set[str] = set()
        self._quarantined: dict[Path, tuple[int, int]] = {}
        """device path -> inode of a device found corrupt: not served again until it is recreated"""
        self.bells = ClaimBells()
        self.doorbell_run_dir = DEFAULT_RUN_DIR
        """where the ivshmem server sockets of doorbell VM devices are (``orion-virt attach``'s)"""
        self.pending: dict[int, Pending] = {}
        """fd -> a TCP connection waiting for its HELLO (edge-triggered in ``self.ep``)"""
        self.ep = select.epoll()
        self._refusals: dict[str, tuple[float, int, int]] = {}
        """kind of refusal -> (second it counts in, lines logged, lines held back)"""
        self.release_worker: Callable[[int], object] | None = getattr(authorize, "release_worker", None)
        """direct mode's accounting: forgets a reaped worker's grants"""
        self.metrics: metrics.Exporter | None = None
        """``[server] metrics_addr``'s endpoint (server/metrics.py), once ``run`` started it"""

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        self.listener = tcp.listen(cfg.bind_addr, cfg.listen_port)
        self.listener.listen(LISTEN_BACKLOG)  # a burst is taken into pending at once, not left to SYN retries
        self.listener.setblocking(False)
        self.log.info("oriond %d listening on %s:%d; backend %s", os.getpid(), cfg.bind_addr,
                      cfg.listen_port, self.backend.describe())
        self.metrics = metrics.start(cfg.metrics_addr, self.log)
        if cfg.enable_shm or cfg.enable_kvm:
            self.log.info("serving shared-memory devices under %s (containers: %s, VMs: %s)",
                          cfg.shm_path_base, "yes" if cfg.enable_shm else "no", "yes" if cfg.enable_kvm else "no")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # an ended worker wakes the loop (wakeup fd)
        signal.set_wakeup_fd(self.bells.w, warn_on_full_buffer=False)
        if self.on_ready:
            self.on_ready()
        try:
            while not self.stopping:
                self._scan_devices()
                polled = any(not w.dev.wakes and w.doorbell is None for w in self.devices.values())
                doorbells = [w.doorbell for w in self.devices.values() if w.doorbell is not None]
                fds = [self.listener.fileno(), self.bells.fileno(), self.ep.fileno()]
                for db in doorbells:
                    fds += [db.events_fileno(), db.fileno(CLAIM_VECTOR)]
                wait = SCAN_INTERVAL if polled else IDLE_INTERVAL
                if self.pending:
                    first = min(p.deadline for p in self.pending.values())
                    wait = max(0.0, min(wait, first - time.monotonic()))
                r = _wait_readable(fds, wait)
                if self.bells.fileno() in r:
                    self.bells.drain()
                for db in doorbells:
                    if db.events_fileno() in r:
                        db.handle_events(0)  # a QEMU connects (while its domain starts) or hangs up
                    if db.fileno(CLAIM_VECTOR) in r:
                        db.drain(CLAIM_VECTOR)  # a guest claimed a channel: the scan below sees it
                if self.listener.fileno() in r:
                    self._accept()
                if self.ep.fileno() in r:
                    self._pending_ready()
                self._expire_pending()
                if self._refusals:
                    self._flush_refusals()
                self._reap()
                if self._reload_wanted:
                    self._reload()
        finally:
            signal.set_wakeup_fd(-1)
            self.shutdown()
            if self.metrics is not None:
                self.metrics.stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload_wanted = True

    def _reload(self) -> None:
        """Re-read the configuration; apply what can change live, keep every session (workers
        keep the settings they started with). A bad file is logged and changes nothing."""
        from .logs import setup_server_logging
        from .reload import plan

        self._reload_wanted = False
        if self.reload_config is None:
            self.log.warning("SIGHUP: this oriond has no configuration to reload (nothing changed)")
            return
        try:
            r = plan(self.cfg, self.reload_config())
            if r.logging_changed:
                setup_server_logging(r.config)
        except OrionError as e:
            self.log.error("reload: %s; the running configuration is kept", e)
            return
        self.cfg = r.config
        applied = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in r.applied) or "nothing changed that applies live"
        self.log.info("reloaded %s: %d sessions kept; applied: %s", r.config.source, len(self.workers), applied)
        self.log.debug("reload: live settings now log=%s log_dir=%s max_pending_connections=%d max_sessions=%d "
                       "max_sessions_per_client=%d hello_timeout=%g idle_timeout=%g throttle=%s", r.config.log,
                       r.config.log_dir, r.config.max_pending_connections, r.config.max_sessions,
                       r.config.max_sessions_per_client, r.config.hello_timeout, r.config.idle_timeout,
                       r.config.enable_computation_throttle)
        for key, old, new in r.need_restart:
            self.log.warning("reload: %s %r -> %r needs a restart (systemctl restart oriond); still %r",
                             key, old, new, old)

    def shutdown(self) -> None:
        for w in list(self.devices.values()):
            stop_serving(w, "oriond stopped")
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.workers.pop(pid, None)
        for p in list(self.pending.values()):
            self._drop_pending(p)
        self.ep.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.bells.close()
        self.log.info("oriond stopped")

    # -- TCP ------------------------------------------------------------------------------------

    def _accept(self) -> None:
        """Take every connection waiting in the backlog; each waits for its HELLO here."""
        assert self.listener is not None
        cfg = self.cfg
        for _ in range(256):  # then let the loop serve the rest of its work
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: out of descriptors or memory
                self._log_refusal("accept", "cannot accept TCP connections: %s", e.strerror or e)
                return
            host, peer = addr[0], f"{addr[0]}:{addr[1]}"
            if len(self.pending) >= cfg.max_pending_connections:
                self._refuse(conn, peer, "pending", f"oriond has {len(self.pending)} connections waiting for "
                             f"their HELLO, its limit ([server-limits] max_pending_connections); try again",
                             REFUSED_STATUS)
                continue
            n = self._sessions_of(host)
            if n >= cfg.max_sessions_per_client:
                self._refuse(conn, peer, "per-client", f"client {host} has {n} sessions and connections, "
                             f"the limit of one address ([server-limits] max_sessions_per_client)",
                             REFUSED_STATUS)
                continue
            conn.setblocking(False)
            sid = next(self.ids)
            self.log.info("session %d: TCP connection from %s", sid, peer)
            p = Pending(conn, host, peer, sid, time.monotonic() + cfg.hello_timeout)
            self.pending[conn.fileno()] = p
            self.ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
            self._check_hello(p, closed=False)  # a client's HELLO is often there already

    def _sessions_of(self, host: str) -> int:
        return (sum(1 for p in self.pending.values() if p.host == host)
                + sum(1 for w in self.workers.values() if w.client == host))

    def _pending_ready(self) -> None:
        for fd, ev in self.ep.poll(0):
            p = self.pending.get(fd)
            if p is not None:
                self._check_hello(p, closed=bool(ev & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR)))

    def _check_hello(self, p: Pending, closed: bool) -> None:
        """Start the session's worker once the whole HELLO frame has arrived (peeked, not read:
        the worker's handshake reads it); refuse a frame that cannot be a HELLO."""
        try:
            data = p.conn.recv(PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.log.info("session %d: %s: connection lost before HELLO (%s)", p.sid, p.peer, e.strerror or e)
            self._drop_pending(p)
            return
        if not data:
            self.log.info("session %d: %s closed the connection before HELLO", p.sid, p.peer)
            self._drop_pending(p)
            return
        if len(data) >= HEADER_SIZE:
            try:
                n = ServerProtocol().hello_header(data[:HEADER_SIZE])
            except OrionError as e:
                self._forget_pending(p)
                self._refuse(p.conn, p.peer, "protocol", f"protocol error: {e}", PROTOCOL_STATUS, sid=p.sid)
                return
            if len(data) >= HEADER_SIZE + n:
                self._forget_pending(p)
                self._admit(p)
                return
        if closed:
            self.log.info("session %d: %s closed the connection within its HELLO", p.sid, p.peer)
            self._drop_pending(p)

    def _admit(self, p: Pending) -> None:
        total = len(self.workers)
        if total >= self.cfg.max_sessions:
            self._refuse(p.conn, p.peer, "sessions", f"oriond serves {total} sessions, its limit "
                         f"([server-limits] max_sessions); try again later", REFUSED_STATUS, sid=p.sid)
            return
        conn = p.conn
        conn.setblocking(True)
        try:
            pid = self._fork(lambda: self._tcp_worker(conn, p.sid, p.peer))
        except OSError as e:  # out of processes or memory: this client is refused, oriond goes on
            self._refuse(conn, p.peer, "fork", f"oriond cannot start a session worker ({e.strerror or e})",
                         REFUSED_STATUS, sid=p.sid)
            return
        conn.close()
        self.workers[pid] = Worker(pid, "tcp", time.monotonic(), client=p.host)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for p in [p for p in self.pending.values() if p.deadline <= now]:
            self._forget_pending(p)
            self._refuse(p.conn, p.peer, "hello-timeout", f"no HELLO within {self.cfg.hello_timeout:g} s of "
                         f"connecting ([server-limits] hello_timeout)", PROTOCOL_STATUS, sid=p.sid)

    def _forget_pending(self, p: Pending) -> None:
        fd = p.conn.fileno()
        if self.pending.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _drop_pending(self, p: Pending) -> None:
        self._forget_pending(p)
        p.conn.close()

    def _refuse(self, conn: socket.socket, peer: str, kind: str, reason: str, status: int,
                sid: int | None = None) -> None:
        """Tell a TCP client why it is not served (an ERROR frame) and close its connection.
        What it has sent is read first, so that the close is a FIN and the client reads the
        frame rather than a reset."""
        who = f"session {sid}: {peer}" if sid is not None else peer
        self._log_refusal(kind, "%s refused: %s", who, reason)
        try:
            conn.setblocking(False)
            try:
                while conn.recv(PEEK):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            conn.send(encode_error(reason, status))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _flush_refusals(self) -> None:
        """The count of refusals held back in a second that is over."""
        now = int(time.monotonic())
        for kind, (second, _logged, held) in list(self._refusals.items()):
            if second != now:
                if held:
                    self.log.warning("%d more refusal(s) of kind %s in the last second not logged one by one",
                                     held, kind)
                del self._refusals[kind]

    def _log_refusal(self, kind: str, fmt: str, *args: object) -> None:
        """A refusal's log line; past LOG_BURST of one kind in a second, a count instead (a
        flood of connections must not become a flood of log lines)."""
        now = int(time.monotonic())
        if self._refusals.get(kind, (now,))[0] != now:
            self._flush_refusals()
        second, logged, held = self._refusals.get(kind, (now, 0, 0))
        if logged < LOG_BURST:
            self.log.warning(fmt, *args)
            logged += 1
        else:
            held += 1
        self._refusals[kind] = (second, logged, held)

    def _tcp_worker(self, conn: socket.socket, sid: int, peer: str) -> None:
        conn.setblocking(True)
        stream = tcp.SocketStream(conn, name=f"tcp {peer}")
        self._run_session(stream, sid, f"tcp {peer}")
        stream.close()

    # -- shared memory --------------------------------------------------------------------------

    def _scan_devices(self) -> None:
        cfg = self.cfg
        if not (cfg.enable_shm or cfg.enable_kvm):
            return
        now = time.monotonic()
        if now - self._last_dir_scan > RESCAN_DIR_INTERVAL:
            self._last_dir_scan = now
            for path in list_devices(cfg.shm_path_base):
                if path not in self.devices and not self._still_quarantined(path):
                    # check the kind before marking it served: a device of a disabled kind must
                    # never look served, not even between two scans
                    w = open_for_serving(path, lambda d: cfg.enable_kvm if d.vm else cfg.enable_shm,
                                         skipped=self._skipped_once)
                    if w is None:
                        continue
                    self.devices[path] = w
                    self.bells.watch(w.dev)
                    self.log.info("serving %s device %s (%d channels of %d KiB rings)",
                                  "VM" if w.dev.vm else "container", path, w.dev.layout.nchannels,
                                  w.dev.layout.ring_size >> 10)
                    if w.dev.doorbell:
                        self._start_doorbell(w)
        for path, w in list(self.devices.items()):
            gone = device_removed(w)
            if gone:
                self.log.warning("%s: %s; ending its sessions", path, gone)
                stop_serving(w, gone)
                self._kill_workers_of(w)
                self.bells.unwatch(w.dev)
                del self.devices[path]
                continue
            try:
                tick(w)
                for ch, gen in pending_claims(w):
                    self._start_channel(w, ch, gen)
            except (ValueError, IndexError, OverflowError, struct.error) as e:
                # the device's memory is writable by its clients: a value no client protocol
                # produces makes the device unusable, not oriond (its other devices go on)
                self.log.error("%s: corrupt device header or channel table (%s); no longer served "
                               "(recreate it with orion-shm)", path, e)
                self._kill_workers_of(w)
                try:
                    stop_serving(w, "corrupt device")
                except (ValueError, IndexError, OverflowError, struct.error):
                    pass
                self.bells.unwatch(w.dev)
                del self.devices[path]
                self._quarantined[path] = w.dev.inode

    def _start_doorbell(self, w: Watched) -> None:
        sock = socket_path(int(w.path.name[9:]), self.doorbell_run_dir)
        try:
            srv = start_doorbell(w, sock, self.log.info)
        except (TransportError, DeviceError) as e:
            self.log.error("%s: cannot run its ivshmem server (%s); the VM's QEMU cannot start "
                           "until it listens", w.path, e)
            return
        self.log.info("%s: ivshmem-doorbell server on %s (%d vectors)", w.path, sock, srv.vectors)

    def _still_quarantined(self, path: Path) -> bool:
        ino = self._quarantined.get(path)
        if ino is None:
            return False
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == ino:
                return True
        except OSError:
            pass
        del self._quarantined[path]  # recreated (or gone): judged afresh
        return False

    def _skipped_once(self, reason: str) -> None:
        if reason not in self._skipped:
            self._skipped.add(reason)
            self.log.warning("not serving: %s", reason)

    def _kill_workers_of(self, w: Watched, channel: int | None = None) -> None:
        for pid, wk in list(self.workers.items()):
            if wk.watched is w and (channel is None or wk.channel == channel):
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                self.workers.pop(pid, None)
                if self.release_worker is not None:
                    self.release_worker(pid)
                w.workers.pop(wk.channel, None)
                if channel is not None:
                    w.dev.scrub(channel)  # the killed session's bytes are not the next one's

    def _start_channel(self, w: Watched, ch: int, gen: int) -> None:
        if ch in w.workers:
            self.log.info("%s#%d: reclaimed by a new client; ending the previous session", w.path, ch)
            self._kill_workers_of(w, ch)
        if len(self.workers) >= self.cfg.max_sessions:
            reason = f"oriond serves its limit of {self.cfg.max_sessions} sessions (max_sessions)"
            self._log_refusal("sessions", "%s#%d refused: %s", w.path, ch, reason)
            w.dev.set_dead(ch, reason)
            return
        sid = next(self.ids)
        self.log.info("session %d: shared-memory channel %s#%d", sid, w.path, ch)
        ring_fd, wait_fd, how = self._doorbell_for(w, ch)
        try:
            pid = self._fork(lambda: self._shm_worker(w, ch, gen, sid, ring_fd, wait_fd, how),
                             keep=(ring_fd, wait_fd))
        finally:
            if ring_fd >= 0:
                os.close(ring_fd)  # the worker has its own copy
        w.workers[ch] = (pid, gen)
        self.workers[pid] = Worker(pid, "shm", time.monotonic(), w, ch, gen)

    def _doorbell_for(self, w: Watched, ch: int) -> tuple[int, int, str]:
        """(guest's ring fd, our eventfd for the channel, what the worker will do) for a new
        session of channel ``ch``: both -1 unless the device has a doorbell, its client said who
        it is (C_DB_PEER) and that guest's QEMU is connected to our server."""
        db = w.doorbell
        if db is None:
            return -1, -1, ""
        vector = channel_vector(ch)
        if vector >= db.vectors:
            return -1, -1, f"polling (the device has {db.vectors} vectors, channel {ch} needs {vector + 1})"
        peer = int(w.dev.ctrl(ch)[C_DB_PEER]) - 1
        if peer < 1:
            return -1, -1, "polling (the client does not ring the doorbell)"
        ring_fd = db.dup_ring_fd(peer)
        if ring_fd is None:
            return -1, -1, f"polling (guest peer {peer} is not connected to the ivshmem server)"
        return ring_fd, db.fileno(vector), f"doorbell (guest peer {peer}, vector {vector})"

    def _shm_worker(self, w: Watched, ch: int, gen: int, sid: int, ring_fd: int = -1, wait_fd: int = -1,
                    how: str = "") -> None:
        chan = ServerChannel(w.dev, ch, gen, vm=w.dev.vm)
        bells: tuple[EventfdBell, EventfdBell] | None = None
        if ring_fd >= 0 and wait_fd >= 0:
            bells = (EventfdBell(wait_fd=wait_fd), EventfdBell(ring_fd=ring_fd))
            bells[0].drain()  # rings for an earlier session of this channel
        if how:
            self.log.info("session %d: %s", sid, how)
        stream = chan.start(bells)
        reason = self._run_session(stream, sid, f"shm {w.path}#{ch}",
                                   peer_pid=None if w.dev.vm else (lambda: w.dev.owner_pid(ch)), vm=w.dev.vm)
        if bells is not None:
            self.log.info("session %d: doorbell: slept %d times waiting for requests, rang the guest %d times",
                          sid, bells[0].sleeps, bells[1].wakes)
        chan.finish(f"session ended: {reason}")

    # -- workers ----------------------------------------------------------------------------------

    def _fork(self, body: Callable[[], None], keep: tuple[int, ...] = ()) -> int:
        """A session worker running ``body``; it dies with this process (even after a kill -9 of
        oriond, so that no session outlives the daemon that admitted it)."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                die_with_parent(parent)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is oriond's, never a session's end
                self.bells.close_in_child()
                for dw in self.devices.values():
                    if dw.doorbell is not None:
                        dw.doorbell.close_in_child(keep)
                if self.listener is not None:
                    self.listener.close()
                for p in self.pending.values():
                    p.conn.close()  # else a pending client's connection outlives oriond's close
                self.ep.close()
                metrics.close_in_child()
                body()
            except BaseException:
                self.log.exception("session worker %d crashed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        return pid

    def _run_session(self, stream: object, sid: int, where: str,
                     peer_pid: Callable[[], int | None] | None = None, vm: bool = False) -> str:
        slog = session_logger(self.cfg, sid, self.log)
        slog.info("session %d over %s (worker pid %d)", sid, where, os.getpid())
        idle = self.cfg.idle_timeout
        if idle > 0:
            stream.set_timeout(idle)  # type: ignore[attr-defined]  # the handshake restores it after HELLO
        session = Session(stream, self.backend, self.authorize, sid, slog,  # type: ignore[arg-type]
                          throttle=self.cfg.enable_computation_throttle, hello_timeout=self.cfg.hello_timeout,
                          peer_pid=peer_pid)
        figures = metrics.session_figures(session, metrics.transport_of(where, vm))
        reason = "crashed"
        try:
            reason = session.run()
        finally:
            if figures is not None:
                figures.end(reason)
            if self.release_worker is not None:
                self.release_worker(os.getpid())  # at once: the next session may want them
        if idle > 0 and session.hello is not None and reason.startswith("transport:") and "timed out" in reason:
            reason = (f"session idle: no call for {idle:g} s ([server-limits] idle_timeout); its "
                      f"device memory and vGPUs were freed")
            slog.warning("session %d: %s", sid, reason)
            try:
                stream.send(encode_error(reason, REFUSED_STATUS))  # type: ignore[attr-defined]
                stream.flush()  # type: ignore[attr-defined]
            except OrionError:
                pass
        slog.info("session %d ended: %s", sid, reason)
        self.log.info("session %d ended: %s", sid, reason)
        return reason

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            wk = self.workers.pop(pid, None)
            if wk is None:
                continue
            if self.release_worker is not None and self.release_worker(pid):
                self.log.info("session worker %d ended holding direct-mode vGPUs: released", pid)
            code = os.waitstatus_to_exitcode(status)
            if self.metrics is not None:
                self.metrics.worker_ended(pid, code, "vm" if wk.watched is not None and wk.watched.dev.vm else wk.kind)
            if code != 0:
                self.log.warning("session worker %d (%s) exited abnormally (status %d)", pid, wk.kind, code)
            if wk.watched is not None:
                cur = wk.watched.workers.get(wk.channel)
                if cur is not None and cur[0] == pid:
                    del wk.watched.workers[wk.channel]
                    c = wk.watched.dev.ctrl(wk.channel)
                    if c[C_GEN] == wk.gen and c[C_STATE] in (CLAIMED, SERVING):
                        wk.watched.dev.set_dead(wk.channel, "session worker ended unexpectedly")
                    if code != 0:  # a worker that ended normally scrubbed its rings (ServerChannel.finish)
                        wk.watched.dev.scrub(wk.channel)


def _wait_readable(fds: list[int], timeout: float) -> set[int]:
    """The fds of ``fds`` readable within ``timeout`` seconds (poll: no FD_SETSIZE limit)."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    try:
        return {fd for fd, _ in p.poll(timeout * 1000)}
    except InterruptedError:
        return set()


def run_daemon(config: ServerConfig, backend: Backend, authorize: Authorizer, log: logging.Logger,
               on_ready: Callable[[], None] | None = None,
               reload_config: Callable[[], ServerConfig] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads ``reload_config()``. Raises OrionError if the
    listener cannot start."""
    try:
        Daemon(config, backend, authorize, log, on_ready, reload_config).run()
    except OrionError:
        raise
