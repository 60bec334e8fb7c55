"""oriond's own figures for Prometheus (``[server] metrics_addr``), gathered across its workers.

oriond forks one worker per session, so a session's figures live in a process the scrape never
reaches. They are gathered with prometheus-client's multiprocess mode: every process writes its
values into memory-mapped files of one directory per oriond (made fresh at start, removed at a
clean stop), the main process serves the sum. It was chosen over reports from the workers to
the main process because a worker's figures survive its crash (they are in the files already),
it needs no channel or protocol between the processes, and a gauge of a live worker
(``livesum``) disappears by itself when the main process reaps it (``mark_process_dead``).
A reaped worker's counter file is folded into one file of the main process (``counter_retired``)
and removed, so the directory holds a file per live worker, not one per session ever served.

Cost on the hot path: none per call. A session already counts its calls and copied bytes in
plain integers (``Session.calls``, ``htod_bytes``, ``dtoh_bytes``, ``errors``); a thread of the
worker adds what changed to the counters every ``FLUSH_S`` seconds and once more at the end.

Figures (labels): sessions started and refused (transport), ended (transport, reason), active
(transport), calls (transport), bytes copied (transport, direction htod/dtoh), calls failed
(transport, reason quota/bad_handle/other), and per open session memory used and quota
(allocation_id; gone once the session's worker ended). Transports: ``tcp``, ``shm`` (a
container's or this host's shared memory), ``vm`` (a VM's device).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cuda_enums import CUresult
from ..errors import ConfigError

if TYPE_CHECKING:
    from .session import Session

ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_S = 2.0
TRANSPORTS = ("tcp", "shm", "vm")
_QUOTA = {int(CUresult.CUDA_ERROR_OUT_OF_MEMORY)}
_BAD_HANDLE = {int(CUresult.CUDA_ERROR_INVALID_HANDLE), int(CUresult.CUDA_ERROR_INVALID_CONTEXT)}


@dataclass(frozen=True)
class _Families:
    started: Any
    refused: Any
    ended: Any
    active: Any
    calls: Any
    copied: Any
    errors: Any
    mem_used: Any
    mem_quota: Any


_families: _Families | None = None
_exporter: Exporter | None = None


def _define() -> _Families:
    from prometheus_client import Counter, Gauge

    t = ("transport",)
    return _Families(
        Counter("orion_server_sessions_started", "Sessions admitted (past HELLO)", t),
        Counter("orion_server_sessions_refused", "Sessions refused at HELLO (token, quota, limits)", t),
        Counter("orion_server_sessions_ended", "Admitted sessions that ended, by why", t + ("reason",)),
        Gauge("orion_server_sessions_active", "Sessions being served", t, multiprocess_mode="livesum"),
        Counter("orion_server_calls", "Driver API calls served", t),
        Counter("orion_server_copied_bytes", "Bytes copied between client host memory and device",
                t + ("direction",)),
        Counter("orion_server_call_errors", "Calls that failed, by why (quota: out of the vGPU's "
                "memory; bad_handle: an unknown handle or context)", t + ("reason",)),
        Gauge("orion_server_session_memory_used_bytes", "Device memory a session holds",
              ("allocation_id",), multiprocess_mode="livesum"),
        Gauge("orion_server_session_memory_quota_bytes", "Device memory a session may hold",
              ("allocation_id",), multiprocess_mode="livesum"),
    )


ERROR_REASONS = ("quota", "bad_handle", "other")
END_REASONS = ("bye", "lease_expired", "protocol_error", "disconnected", "idle", "crashed",
               "killed", "other")


def _zeros(f: _Families) -> None:
    """Every series of a known label set, at 0 from the start (so rates and panels have them)."""
    for t in TRANSPORTS:
        for c in (f.started, f.refused, f.calls):
            c.labels(t)
        f.active.labels(t).set(0)
        for d in ("htod", "dtoh"):
            f.copied.labels(t, d)
        for why in ERROR_REASONS:
            f.errors.labels(t, why)
        for why in END_REASONS:
            f.ended.labels(t, why)


class Exporter:
    """The main process's side: the directory, the HTTP endpoint, the reaped workers."""

    def __init__(self, addr: str, log: logging.Logger) -> None:
        self.addr = addr
        self.log = log
        self.dir = ""
        self._server: Any = None
        self._lock = threading.Lock()
        """held by a scrape and by folding a reaped worker's counters (never both half-done)"""
        self._retired: Any = None

    def start(self) -> None:
        """Make the directory, set ``PROMETHEUS_MULTIPROC_DIR`` for this process and its workers,
        serve ``/metrics``. ``ConfigError`` naming the key when the address cannot be bound or
        prometheus-client was loaded before in single-process mode."""
        global _families
        base = os.environ.get("RUNTIME_DIRECTORY") or None  # systemd's RuntimeDirectory=
        self.dir = tempfile.mkdtemp(prefix=f"oriond-metrics-{os.getpid()}-", dir=base)
        os.environ[ENV] = self.dir
        if "prometheus_client.values" in sys.modules:
            from prometheus_client import values

            values.ValueClass = values.MultiProcessValue()
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.mmap_dict import MmapedDict

        _families = _define()
        _zeros(_families)
        self._retired = MmapedDict(os.path.join(self.dir, "counter_retired.db"))
        registry = CollectorRegistry()
        registry.register(_Locked(self.dir, self._lock))
        host, _, port = self.addr.rpartition(":")
        try:
            self._server, _ = start_http_server(int(port), host.strip("[]"), registry)
        except OSError as e:
            self.stop()
            raise ConfigError(f"[server] metrics_addr = {self.addr}: cannot listen: "
                              f"{e.strerror or e}") from None
        self.log.info("metrics on http://%s/metrics (workers' figures gathered in %s)", self.addr,
                      self.dir)

    def worker_ended(self, pid: int, code: int, transport: str | None) -> None:
        """A reaped worker: its live gauges go; one killed by a signal (``code`` < 0: it could not
        count its own end) counts as a session ended for reason ``killed``."""
        from prometheus_client import multiprocess
        from prometheus_client.mmap_dict import MmapedDict

        multiprocess.mark_process_dead(pid, self.dir)
        done = os.path.join(self.dir, f"counter_{pid}.db")
        if os.path.exists(done):
            with self._lock:
                for key, value, ts, _ in MmapedDict.read_all_values_from_file(done):
                    old, _ts = self._retired.read_value(key)
                    self._retired.write_value(key, old + value, ts)
                os.remove(done)
        if code < 0 and transport in TRANSPORTS and _families is not None:
            _families.ended.labels(transport, "killed").inc()

    def close_in_child(self) -> None:
        """In a forked worker: the endpoint's socket is the main process's only."""
        if self._server is not None:
            self._server.socket.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._retired is not None:
            self._retired.close()
            self._retired = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class _Locked:
    """prometheus-client's multiprocess collector, reading under the exporter's lock."""

    def __init__(self, path: str, lock: threading.Lock) -> None:
        from prometheus_client import multiprocess

        self.inner = multiprocess.MultiProcessCollector(None, path)
        self.lock = lock

    def collect(self) -> list[Any]:
        with self.lock:
            return list(self.inner.collect())


def start(addr: str, log: logging.Logger) -> Exporter | None:
    """The exporter for ``metrics_addr`` (None when it is empty: metrics off), started."""
    global _exporter
    if not addr:
        return None
    _exporter = Exporter(addr, log)
    _exporter.start()
    return _exporter


def transport_of(where: str, vm: bool = False) -> str:
    return "tcp" if where.startswith("tcp") else ("vm" if vm else "shm")


def end_reason(reason: str) -> str:
    """A session's end (``Session.run``'s answer) as a label value."""
    for prefix, label in (("bye", "bye"), ("lease expired", "lease_expired"),
                          ("protocol error", "protocol_error"), ("transport:", "disconnected"),
                          ("session idle", "idle"), ("crashed", "crashed")):
        if reason.startswith(prefix):
            return label
    return "other"


class SessionFigures(threading.Thread):
    """The worker's side for one session: flushes its counts every ``FLUSH_S`` seconds; ``end``
    flushes the rest and counts the end."""

    def __init__(self, session: Session, transport: str, fam: _Families,
                 interval: float = FLUSH_S) -> None:
        super().__init__(name="orion-metrics", daemon=True)
        self.s = session
        self.transport = transport
        self.f = fam
        self.interval = interval
        self._ended = threading.Event()
        self._flush_lock = threading.Lock()
        self._admitted = False
        self._seen = [0, 0, 0]
        self._errors: dict[int, int] = {}
        self._alloc = ""

    def run(self) -> None:
        while not self._ended.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        s, f, t = self.s, self.f, self.transport
        with self._flush_lock:
            if not self._admitted:
                if s.hello is None:
                    return
                self._admitted = True
                self._alloc = s.hello.allocation_id or "-"
                f.started.labels(t).inc()
                f.active.labels(t).set(1)
                f.mem_quota.labels(self._alloc).set(sum(v.memory for v in s.vgpus))
            now = [s.calls, s.htod_bytes, s.dtoh_bytes]
            d = [a - b for a, b in zip(now, self._seen)]
            self._seen = now
            if d[0]:
                f.calls.labels(t).inc(d[0])
            if d[1]:
                f.copied.labels(t, "htod").inc(d[1])
            if d[2]:
                f.copied.labels(t, "dtoh").inc(d[2])
            for code, n in list(s.errors.items()):
                if n != self._errors.get(code, 0):
                    why = "quota" if code in _QUOTA else "bad_handle" if code in _BAD_HANDLE else "other"
                    f.errors.labels(t, why).inc(n - self._errors.get(code, 0))
                    self._errors[code] = n
            bs = s.bs
            f.mem_used.labels(self._alloc).set(sum(bs.mem.used) if bs is not None else 0)

    def end(self, reason: str) -> None:
        self._ended.set()
        self.flush()
        with self._flush_lock:
            if self._admitted:
                self.f.ended.labels(self.transport, end_reason(reason)).inc()
                self.f.active.labels(self.transport).set(0)
            elif reason.startswith("refused"):
                self.f.refused.labels(self.transport).inc()


def session_figures(session: Session, transport: str) -> SessionFigures | None:
    """In a worker: the figures of ``session``, flushing (None when metrics are off)."""
    if _families is None:
        return None
    fig = SessionFigures(session, transport, _families)
    fig.start()
    return fig


def close_in_child() -> None:
    if _exporter is not None:
        _exporter.close_in_child()
