"""The controller's ``/metrics``: Prometheus exposition built with ``prometheus-client``.

Every controller instance has its own :class:`~prometheus_client.CollectorRegistry`
(:func:`of`), so two controllers in one process (tests) share nothing. Gauges are computed at
scrape time from one consistent snapshot of the store (:class:`PoolCollector`); counters are
kept in memory by this process and start at 0 when the controller starts (Prometheus'
``rate()``/``increase()`` handle the reset).

Units are Prometheus base units: bytes (the API's MiB times 2**20), ratios 0..1 (the API's
percent / 100), seconds. ``_total`` ends counters only.

Metric families (gauges unless they end in ``_total``; labels in braces):

- ``orion_build_info{version,api_version,data_version}``: always 1.
- ``orion_vgpus``: vGPU slots on up nodes; ``orion_vgpus_free``: default-sized vGPUs that still
  fit; ``orion_allocations_active``: live allocations (running tasks).
- ``orion_nodes{state}`` (up/down); ``orion_node_up{node,address}``: 1 while it heartbeats;
  ``orion_node_last_heartbeat_timestamp_seconds{node}``.
- per GPU, labels ``node,gpu,uuid``: ``orion_gpu_info`` (plus ``name``, the model; always 1),
  ``orion_gpu_memory_bytes``, ``orion_gpu_memory_allocated_bytes`` (quotas held),
  ``orion_gpu_compute_allocated_ratio`` (compute shares held, 0..1), ``orion_gpu_vgpus`` (slots),
  ``orion_gpu_vgpus_used``, ``orion_gpu_vgpus_free`` (0 while the node is down).
- per held vGPU slot, labels ``node,gpu,uuid,slot,allocation,group``:
  ``orion_vgpu_memory_quota_bytes``, ``orion_vgpu_compute_quota_ratio`` (0..1).
- counters: ``orion_allocations_total`` (granted), ``orion_allocated_vgpus_total`` (vGPUs in
  them), ``orion_allocation_refusals_total{reason}``, ``orion_allocation_releases_total{reason}``,
  ``orion_sessions_ended_total{node}`` (session-ended notices from servers, also for an
  allocation already gone).

Refusal reasons: ``invalid_request`` (400: a bad field), ``no_gpu_node_up``,
``memory_over_gpu`` (ORION_GMEM over every single GPU), ``over_node`` (more than one node holds,
without ORION_CROSS_NODE), ``over_pool`` (more than the whole pool holds), ``pool_exhausted``
(it would fit an empty pool, not the free part of it now), ``other``.
Release reasons: ``released`` (by its holder or an operator), ``session_ended`` (its server's
notice), ``lease_expired``, ``node_down``, ``node_reregistered`` (its GPU went away or shrank),
``node_deregistered``.

Renamed from the hand-written exposition this module replaced (values moved to base units):
``orion_vgpus_total`` (a gauge: ``_total`` is for counters) -> ``orion_vgpus``;
``orion_allocations`` -> ``orion_allocations_active`` (``orion_allocations_total`` is now the
counter); ``orion_node_last_heartbeat_seconds`` -> ``orion_node_last_heartbeat_timestamp_seconds``;
``orion_gpu_memory_mib`` -> ``orion_gpu_memory_bytes``; ``orion_gpu_memory_allocated_mib`` ->
``orion_gpu_memory_allocated_bytes``; ``orion_gpu_ratio_allocated_percent`` (0..100) ->
``orion_gpu_compute_allocated_ratio`` (0..1). Unchanged: ``orion_vgpus_free``, ``orion_nodes``,
``orion_node_up``, ``orion_gpu_vgpus``, ``orion_gpu_vgpus_used``.

Counting happens by wrapping the controller instance's own methods (``allocate``, ``release``,
``session_ended``, ``deregister``, ``register`` and the reaper's report), so it needs nothing of
the HTTP layer and counts in-process callers too. What the controller cannot know is not
exported here: memory a session actually uses and sessions started (oriond's to report).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterator, cast

from prometheus_client import CollectorRegistry, Counter, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from .exceptions import AllocationError, BadRequest
from .model import API_VERSION, DATA_VERSION
from .service import Controller

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition is text format 0.0.4 (every name is a classic one, so it is the same bytes
prometheus-client's 1.0.0 format would carry); every Prometheus 2.x scraper reads it."""

MIB = 1 << 20

REFUSAL_REASONS = ("invalid_request", "no_gpu_node_up", "memory_over_gpu", "over_node",
                   "over_pool", "pool_exhausted", "other")
RELEASE_REASONS = ("released", "session_ended", "lease_expired", "node_down",
                   "node_reregistered", "node_deregistered")

_REFUSAL_PATTERNS = (
    ("no_gpu_node_up", re.compile(r"no GPU node is up")),
    ("memory_over_gpu", re.compile(r"exceeds the memory of any single GPU")),
    ("over_node", re.compile(r"more than one node can hold")),
    ("over_pool", re.compile(r"more than the whole pool can hold")),
    ("pool_exhausted", re.compile(r"^pool exhausted")),
)


def refusal_reason(e: Exception) -> str:
    """The ``reason`` label of a refused allocation (see the module's notes)."""
    if isinstance(e, BadRequest):
        return "invalid_request"
    msg = str(e)
    for reason, pat in _REFUSAL_PATTERNS:
        if pat.search(msg):
            return reason
    return "other"


class PoolCollector(Collector):
    """The pool's gauges, from one snapshot of the store per scrape."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check against at registration

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        s = c.snapshot()
        summ = c.summary(s)
        nodes = c.nodes(s)

        def g(name: str, doc: str, labels: tuple[str, ...] = (),
              unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)

        vgpus = g("orion_vgpus", "vGPU slots on up nodes.")
        vgpus.add_metric([], summ["total_vgpus"])
        free = g("orion_vgpus_free", "Default-sized vGPUs that can still be allocated.")
        free.add_metric([], summ["free_vgpus"])
        active = g("orion_allocations_active", "Live allocations (running tasks).")
        active.add_metric([], summ["allocations"])
        by_state = g("orion_nodes", "Registered nodes by state.", ("state",))
        by_state.add_metric(["up"], summ["nodes_up"])
        by_state.add_metric(["down"], summ["nodes_down"])
        yield from (vgpus, free, active, by_state)

        up = g("orion_node_up", "1 if the node heartbeats, else 0.", ("node", "address"))
        beat = g("orion_node_last_heartbeat_timestamp_seconds",
                 "Unix time of the node's last heartbeat.", ("node",))
        for n in nodes:
            up.add_metric([n["node_id"], n["address"]], int(n["up"]))
            beat.add_metric([n["node_id"]], n["last_heartbeat"])
        yield from (up, beat)

        gl = ("node", "gpu", "uuid")
        info = g("orion_gpu_info", "A GPU of the pool (its model in the name label); always 1.",
                 gl + ("name",))
        mem = g("orion_gpu_memory_bytes", "Physical GPU memory.", gl)
        mem_alloc = g("orion_gpu_memory_allocated_bytes",
                      "GPU memory held by allocations (the sum of their vGPUs' quotas).", gl)
        ratio = g("orion_gpu_compute_allocated_ratio",
                  "Sum of the compute shares held on the GPU, 0..1.", gl)
        slots = g("orion_gpu_vgpus", "vGPU slots of the GPU.", gl)
        used = g("orion_gpu_vgpus_used", "vGPU slots held by allocations.", gl)
        gfree = g("orion_gpu_vgpus_free",
                  "Default-sized vGPUs that still fit on the GPU (0 while its node is down).", gl)
        vl = gl + ("slot", "allocation", "group")
        vmem = g("orion_vgpu_memory_quota_bytes", "Memory quota of a held vGPU slot.", vl)
        vratio = g("orion_vgpu_compute_quota_ratio", "Compute share of a held vGPU slot, 0..1.", vl)
        groups = {a["allocation_id"]: a["group_id"] or "" for a in c.tasks(s)}
        for n in nodes:
            for gpu in n["gpus"]:
                key = [n["node_id"], str(gpu["index"]), gpu["uuid"]]
                info.add_metric(key + [gpu["name"]], 1)
                mem.add_metric(key, gpu["memory_mib"] * MIB)
                mem_alloc.add_metric(key, gpu["used_memory_mib"] * MIB)
                ratio.add_metric(key, gpu["used_ratio"] / 100)
                slots.add_metric(key, gpu["vgpu_count"])
                used.add_metric(key, gpu["used_vgpus"])
                gfree.add_metric(key, gpu["free_vgpus"])
                for v in gpu["vgpus"]:
                    aid = v["allocation_id"]
                    if aid is None:
                        continue
                    lab = key + [str(v["slot"]), aid, groups.get(aid, "")]
                    vmem.add_metric(lab, v["memory_mib"] * MIB)
                    vratio.add_metric(lab, v["ratio"] / 100)
        yield from (info, mem, mem_alloc, ratio, slots, used, gfree, vmem, vratio)


class ControllerMetrics:
    """A controller's registry: its pool gauges, build info and event counters."""

    def __init__(self, controller: Controller) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("orion_build", "Build of the controller (labels); always 1.", registry=r).info(
            {"version": __version__, "api_version": API_VERSION, "data_version": DATA_VERSION})
        self.allocations = Counter("orion_allocations", "Allocations granted.", registry=r)
        self.allocated_vgpus = Counter("orion_allocated_vgpus",
                                       "vGPUs in the allocations granted.", registry=r)
        self.refusals = Counter("orion_allocation_refusals",
                                "Allocation requests refused, by reason.", ["reason"], registry=r)
        self.releases = Counter("orion_allocation_releases",
                                "Allocations ended, by reason.", ["reason"], registry=r)
        self.sessions_ended = Counter("orion_sessions_ended",
                                      "Session-ended notices from the servers, by node.", ["node"],
                                      registry=r)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        for reason in RELEASE_REASONS:
            self.releases.labels(reason)
        r.register(PoolCollector(controller))
        self._instrument(controller)

    def _instrument(self, c: Controller) -> None:
        def patch(name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
            setattr(c, name, make(getattr(c, name)))

        def after(name: str, then: Callable[..., None]) -> None:
            def make(orig: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    out = orig(*args, **kwargs)
                    then(out, *args, **kwargs)
                    return out
                return wrapper
            patch(name, make)

        def released(reason: str, n: int) -> None:
            if n:
                self.releases.labels(reason).inc(n)

        def make_allocate(orig: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
            def allocate(body: Any) -> dict[str, Any]:
                try:
                    out = orig(body)
                except (AllocationError, BadRequest) as e:
                    self.refusals.labels(refusal_reason(e)).inc()
                    raise
                self.allocations.inc()
                self.allocated_vgpus.inc(len(out.get("vgpus", ())))
                return out
            return allocate

        def make_session_ended(orig: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
            def session_ended(allocation_id: str, node: str) -> dict[str, Any]:
                self.sessions_ended.labels(node).inc()  # also when the allocation is gone
                out = orig(allocation_id, node)
                released("session_ended", int(bool(out.get("released"))))
                return out
            return session_ended

        def on_reaped(_: None, r: Any) -> None:
            released("lease_expired", len(r.expired))
            released("node_down", len(r.released))

        patch("allocate", make_allocate)
        patch("session_ended", make_session_ended)
        after("release", lambda out, *a, **k: released("released", 1))
        after("deregister", lambda out, *a, **k: released("node_deregistered",
                                                           len(out.get("released", ()))))
        after("register", lambda out, *a, **k: released("node_reregistered",
                                                         len(out.get("released", ()))))
        after("_log_reaped", on_reaped)  # what reap() and allocate()'s own reap released

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_ATTR = "_orion_metrics"
_lock = threading.Lock()


def of(controller: Controller) -> ControllerMetrics:
    """The controller's metrics, made (and its methods instrumented) on first use; the HTTP
    server calls this when it is made, so counting starts with the controller."""
    with _lock:
        m = getattr(controller, _ATTR, None)
        if m is None:
            m = ControllerMetrics(controller)
            setattr(controller, _ATTR, m)
        return cast(ControllerMetrics, m)


def render(c: Controller) -> str:
    """The exposition of ``c``'s registry (text format 0.0.4)."""
    return of(c).exposition().decode()
