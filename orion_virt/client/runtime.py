"""The process-wide client runtime: configuration, vGPU allocation, the connection, logging.

An allocation on one node gets one Connection (``conn``); one spanning several nodes
(``ORION_CROSS_NODE=1``) gets one per node behind a ``multinode.Router`` in its place.

Started lazily by cuInit. Prints the seeds' banner on start and ``Client exits with allocation ID
<id>`` at exit (or ``Client exits without allocation ID`` when none was obtained). Standard
library only: this is what a guest or container runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any

from .. import __version__, compat, fileperm
from ..config import ClientConfig, LogConfig, load_client_config
from ..errors import OrionError, TransportError
from ..wire import Hello, Welcome
from . import logfiles
from .connection import Connection
from .select import Chosen, Heartbeat, choose

BANNER = f"{compat.BANNER_PREFIX}orion_virt-{__version__}"


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_screen: LogConfig = LogConfig()
"""[client-log] of the running client: log_to_screen, log_level and log_with_time govern say()."""


def on_screen(level: str = "INFO") -> bool:
    """Whether a line of ``level`` goes to the application's screen ([client-log] log_to_screen
    and log_level)."""
    return _screen.log_to_screen and _LEVELS.get(level, logging.INFO) >= _LEVELS[_screen.log_level]


def say(msg: str, level: str = "INFO") -> None:
    """A line on the application's stderr in the seeds' format (if [client-log] lets it through)."""
    if not on_screen(level):
        return
    stamp = f"{_stamp()} " if _screen.log_with_time else ""
    sys.stderr.write(f"{stamp}[{level}] {msg}\n")
    sys.stderr.flush()


class Runtime:
    """One per process. ``connect`` is idempotent and thread-safe; calls go through ``lock``."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self._config = config
        self.lock = threading.RLock()
        self.conn: Any = None
        """The Connection, or a multinode Router for a cross-node allocation (same call/bye)."""
        self.chosen: Chosen | None = None
        self.allocation_id: str | None = None
        self.allocation: object | None = None
        self.failed: str | None = None
        self.heartbeat: Heartbeat | None = None
        self.router: Any = None
        self.links: list[tuple[str, Connection]] = []
        """(node id, its session) for passing renewed allocation tokens on"""
        """the Router of a cross-node session (also ``conn`` until the session ends)"""
        self.renewer: object | None = None
        self._closing = False
        self.log = logging.getLogger("orion.client")
        self._atexit = False

    @property
    def config(self) -> ClientConfig:
        if self._config is None:
            self._config = load_client_config()
        return self._config

    def _setup_log(self) -> None:
        """[client-log]: the screen settings for say(); the log file (log_to_file, its level
        file_log_level, timestamps per log_with_time) under log_dir."""
        global _screen
        lc = self.config.log
        _screen = lc
        log = self.log
        log.propagate = False
        log.setLevel(logging.DEBUG)
        if log.handlers:
            return
        if not lc.log_to_file:
            log.addHandler(logging.NullHandler())
            return
        try:
            d = fileperm.make_dir(self.config.log_dir)
            fh = fileperm.file_handler(d / f"client-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
            logfiles.prune(d)  # one file per run: the newest logfiles.KEEP stay
            fh.setLevel(lc.file_log_level)
            fh.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s" if lc.log_with_time
                                              else "[%(levelname)s] %(message)s"))
            log.addHandler(fh)
        except OSError:
            log.addHandler(logging.NullHandler())

    def connect(self) -> Connection:
        """Allocate (when a controller is configured) and open the session. Raises OrionError."""
        with self.lock:
            if self.conn is not None:
                return self.conn
            if self.failed is not None:
                raise OrionError(self.failed)
            try:
                return self._connect()
            except OrionError as e:
                self.failed = str(e)
                raise

    def _connect(self) -> Connection:
        cfg = self.config
        self._closing = False
        self._setup_log()
        if on_screen("INFO"):
            print(BANNER, file=sys.stderr, flush=True)
        self.log.info("%s starting; config from %s", BANNER, cfg.source)
        for note in cfg.notes:
            self.log.warning("%s", note)
        if cfg.server_addr:
            self.log.info("server %s (from %s)", cfg.server_addr, cfg.origin("server_addr"))
        if not self._atexit:
            atexit.register(self.shutdown)
            self._atexit = True
        from . import allocation

        grant = allocation.obtain(cfg, self.log)
        self.allocation = grant
        self.allocation_id = grant.allocation_id
        if grant.from_controller:
            self.renewer = allocation.Renewer(cfg, grant, self.log, self._allocation_lost,
                                              on_renewed=self._lease_renewed).start()
        if len(grant.parts) > 1:
            return self._connect_nodes(cfg, grant)
        hello = Hello(pid=os.getpid(), vgpu_count=grant.vgpu_count, gmem_mib=grant.gmem_mib,
                      ratio=grant.ratio, token=grant.token, program=" ".join(sys.argv)[:200],
                      allocation_id=grant.allocation_id)
        try:
            chosen, conn, welcome = self._open(cfg, grant, hello)
        except OrionError:
            self._stop_renewer()
            allocation.release(cfg, grant, self.log)
            self.allocation = None
            if not grant.from_controller:
                self.allocation_id = None
            # a controller allocation was obtained: the exit line names it, as the seeds'
            # "Client exits with allocation ID ..." without more output means "server unreachable"
            raise
        self.log.info("session %d on backend %s via %s", welcome.session_id, welcome.backend, chosen.transport)
        if chosen.channel is not None:
            self.heartbeat = Heartbeat(chosen.channel).start()
        self.links = [(grant.node_id, conn)]
        self.conn = conn
        return conn

    def _connect_nodes(self, cfg: ClientConfig, grant: Any) -> Any:
        """A session with each node of a cross-node allocation (its token, its vGPU count),
        behind one Router that takes the Connection's place."""
        from . import allocation
        from .multinode import Router, device_map

        parts = grant.parts
        links: list[Connection] = []
        beats: list[Heartbeat] = []
        first: Chosen | None = None
        try:
            for part in parts:
                hello = Hello(pid=os.getpid(), vgpu_count=len(part.vgpus), gmem_mib=part.gmem_mib,
                              ratio=grant.ratio, token=part.token, program=" ".join(sys.argv)[:200],
                              allocation_id=grant.allocation_id)
                chosen, conn, welcome = self._open(cfg, part, hello)
                links.append(conn)
                first = first or chosen
                self.log.info("node %s: session %d on backend %s via %s, %d vGPU(s)", part.node_id,
                              welcome.session_id, welcome.backend, chosen.transport, len(part.vgpus))
                if chosen.channel is not None:
                    beats.append(Heartbeat(chosen.channel).start())
        except OrionError:
            for c in links:
                c.bye()
            for b in beats:
                b.stop()
            self._stop_renewer()
            allocation.release(cfg, grant, self.log)
            self.allocation = None
            raise
        nodes = [p.node_id for p in parts]
        router = Router(links, device_map([v.node_id for v in grant.vgpus], nodes),
                        [f"oriond of node {p.node_id} ({p.server_addr})" for p in parts],
                        [b.stop for b in beats])
        self.chosen = first
        self.links = [(p.node_id, c) for p, c in zip(parts, links)]
        self.router = router
        self.conn = router  # Connection-compatible
        return router

    def _open(self, cfg: ClientConfig, grant: object, hello: Hello) -> tuple[Chosen, Connection, Welcome]:
        """Choose a transport and handshake. A controller grant refused over a shared-memory
        device (served by another oriond than the allocated node) is retried over TCP to the
        allocated server."""
        server_addr = getattr(grant, "server_addr", None)
        from_controller = getattr(grant, "from_controller", False)
        try:
            chosen = choose(cfg, server_addr, log=lambda m: say(m, "WARN"))
        except TransportError as e:
            self.log.error("%s", e)
            raise
        conn = Connection(chosen.stream, chosen.transport, cfg.connect_timeout)
        try:
            welcome = conn.handshake(hello)
        except OrionError as e:
            self.log.error("handshake over %s failed: %s", chosen.reason, e)
            chosen.stream.close()
            if not (from_controller and chosen.transport != "tcp" and server_addr):
                raise
            self.log.info("retrying over TCP to the allocated server %s", server_addr)
            import dataclasses

            try:
                chosen = choose(dataclasses.replace(cfg, enable_net=True), server_addr)
                conn = Connection(chosen.stream, chosen.transport, cfg.connect_timeout)
                welcome = conn.handshake(hello)
            except OrionError as e2:
                self.log.error("handshake over TCP failed: %s", e2)
                raise
            chosen.reason = f"TCP to {server_addr} because {e}"
        self.chosen = chosen
        self.log.info("transport: %s", chosen.reason)
        if chosen.transport == "tcp" and not cfg.enable_net and "no shared-memory device" not in chosen.reason:
            say(f"using TCP: {chosen.reason}", "INFO")
        return chosen, conn, welcome

    def _allocation_lost(self, why: str) -> None:
        """The controller no longer holds our allocation (lease expired, node down): its vGPUs
        may be lent to someone else, so this process stops using them."""
        while not self.lock.acquire(timeout=0.1):
            if self._closing:
                return
        try:
            if self._closing:
                return
            say(f"Orion vGPU allocation {self.allocation_id} was released by the Orion "
                f"Controller ({why}); CUDA calls fail from now on", "ERROR")
            conn, self.conn = self.conn, None
            self.allocation = None
            if conn is not None:
                conn.bye()
        finally:
            self.lock.release()

    def _lease_renewed(self, alloc: Any) -> None:
        """Pass each node's renewed token to its server, which ends sessions whose lease ran out."""
        while not self.lock.acquire(timeout=0.1):
            if self._closing:
                return
        try:
            if self._closing or self.conn is None:
                return
            for node_id, conn in self.links:
                token = alloc.token_for(node_id)
                if token and not conn.closed:
                    try:
                        conn.renew(token)
                    except OrionError as e:
                        self.log.warning("could not pass the renewed token to node %s: %s", node_id, e)
        finally:
            self.lock.release()

    def _stop_renewer(self) -> None:
        renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """Say goodbye, release the allocation and print the exit line. Idempotent."""
        self._closing = True
        with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.bye()
            router, self.router = self.router, None
            if router is not None:  # still BYE to the other nodes after one was lost
                router.bye()
            if self.heartbeat is not None:
                self.heartbeat.stop()
                self.heartbeat = None
            self._stop_renewer()
            if self.allocation is not None:
                from . import allocation

                allocation.release(self.config, self.allocation, self.log)
                self.allocation = None
            if not self._atexit:
                return
            self._atexit = False
            if self.allocation_id:
                say(compat.MSG_EXIT_WITH.format(allocation_id=self.allocation_id))
            else:
                say(compat.MSG_NO_ALLOCATION)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


def reset_runtime(config: ClientConfig | None = None) -> Runtime:
    """For tests and tools: drop the process runtime (closing it) and start a fresh one."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.shutdown()
        _runtime = Runtime(config)
        return _runtime


def new_allocation_id() -> str:
    return str(uuid.uuid4())
