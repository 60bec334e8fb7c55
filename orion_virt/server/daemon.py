"""oriond: accepts clients over TCP and shared-memory devices; one worker process per session.

The main process never touches a backend's device state (so a CUDA context is only ever created
in a worker, after fork). It listens on ``bind_addr:listen_port``, watches ``shm_path_base`` for
Orion devices (container devices when ``enable_shm``, VM devices when ``enable_kvm``), forks a
worker per session and reaps it. A crash or bad input in one worker never disturbs another.
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
from .backend import Backend
from .claim_watch import ClaimBells
from .logs import session_logger
from .session import Authorizer, Session
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


@dataclass
class Worker:
    pid: int
    kind: str
    started: float
    watched: Watched | None = None
    channel: int = -1
    gen: int = 0


class Daemon:
    def __init__(self, config: ServerConfig, backend: Backend, authorize: Authorizer,
                 log: logging.Logger, on_ready: Callable[[], None] | None = None) -> None:
        self.cfg = config
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

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        self.listener = tcp.listen(cfg.bind_addr, cfg.listen_port)
        self.listener.setblocking(False)
        self.log.info("oriond %d listening on %s:%d; backend %s", os.getpid(), cfg.bind_addr,
                      cfg.listen_port, self.backend.describe())
        if cfg.enable_shm or cfg.enable_kvm:
            self.log.info("serving shared-memory devices under %s (containers: %s, VMs: %s)",
                          cfg.shm_path_base, "yes" if cfg.enable_shm else "no", "yes" if cfg.enable_kvm else "no")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # an ended worker wakes the loop (wakeup fd)
        signal.set_wakeup_fd(self.bells.w, warn_on_full_buffer=False)
        if self.on_ready:
            self.on_ready()
        try:
            while not self.stopping:
                self._scan_devices()
                polled = any(not w.dev.wakes and w.doorbell is None for w in self.devices.values())
                doorbells = [w.doorbell for w in self.devices.values() if w.doorbell is not None]
                fds = [self.listener.fileno(), self.bells.fileno()]
                for db in doorbells:
                    fds += [db.events_fileno(), db.fileno(CLAIM_VECTOR)]
                r, _, _ = select.select(fds, [], [], SCAN_INTERVAL if polled else IDLE_INTERVAL)
                if self.bells.fileno() in r:
                    self.bells.drain()
                for db in doorbells:
                    if db.events_fileno() in r:
                        db.handle_events(0)  # a QEMU connects (while its domain starts) or hangs up
                    if db.fileno(CLAIM_VECTOR) in r:
                        db.drain(CLAIM_VECTOR)  # a guest claimed a channel: the scan below sees it
                if self.listener.fileno() in r:
                    self._accept()
                self._reap()
        finally:
            signal.set_wakeup_fd(-1)
            self.shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

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
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.bells.close()
        self.log.info("oriond stopped")

    # -- TCP ------------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, peer = self.listener.accept()
        except BlockingIOError:
            return
        sid = next(self.ids)
        self.log.info("session %d: TCP connection from %s:%d", sid, *peer[:2])
        pid = self._fork(lambda: self._tcp_worker(conn, sid, f"{peer[0]}:{peer[1]}"))
        conn.close()
        self.workers[pid] = Worker(pid, "tcp", time.monotonic())

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
                w.workers.pop(wk.channel, None)
                if channel is not None:
                    w.dev.scrub(channel)  # the killed session's bytes are not the next one's

    def _start_channel(self, w: Watched, ch: int, gen: int) -> None:
        if ch in w.workers:
            self.log.info("%s#%d: reclaimed by a new client; ending the previous session", w.path, ch)
            self._kill_workers_of(w, ch)
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
        reason = self._run_session(stream, sid, f"shm {w.path}#{ch}")
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
                self.bells.close_in_child()
                for dw in self.devices.values():
                    if dw.doorbell is not None:
                        dw.doorbell.close_in_child(keep)
                if self.listener is not None:
                    self.listener.close()
                body()
            except BaseException:
                self.log.exception("session worker %d crashed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        return pid

    def _run_session(self, stream: object, sid: int, where: str) -> str:
        slog = session_logger(self.cfg, sid, self.log)
        slog.info("session %d over %s (worker pid %d)", sid, where, os.getpid())
        session = Session(stream, self.backend, self.authorize, sid, slog,  # type: ignore[arg-type]
                          throttle=self.cfg.enable_computation_throttle)
        reason = session.run()
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
            if os.waitstatus_to_exitcode(status) != 0:
                self.log.warning("session worker %d (%s) exited abnormally (status %d)", pid, wk.kind,
                                 os.waitstatus_to_exitcode(status))
            if wk.watched is not None:
                cur = wk.watched.workers.get(wk.channel)
                if cur is not None and cur[0] == pid:
                    del wk.watched.workers[wk.channel]
                    c = wk.watched.dev.ctrl(wk.channel)
                    if c[C_GEN] == wk.gen and c[C_STATE] in (CLAIMED, SERVING):
                        wk.watched.dev.set_dead(wk.channel, "session worker ended unexpectedly")
                    wk.watched.dev.scrub(wk.channel)  # a crashed worker did not scrub its rings


def run_daemon(config: ServerConfig, backend: Backend, authorize: Authorizer, log: logging.Logger,
               on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises OrionError if the listener cannot start."""
    try:
        Daemon(config, backend, authorize, log, on_ready).run()
    except OrionError:
        raise
