"""Scheduling that respects vGPU memory and compute share: a kube-scheduler **extender** (HTTP
``POST /filter`` and ``POST /prioritize``, scheduler extender API v1 JSON) that asks the
controller whether a node has room for a Pod's ``ORION_GMEM``/``ORION_RATIO``/vGPU count.

Why an extender, and why it asks the controller:

- The default scheduler counts ``virtaitech.com/gpu`` slots only: an extended resource is a
  plain integer, so it cannot tell a node with four free 1 GiB vGPUs from one with a free 16 GiB
  GPU. Advertising memory as another extended resource (say ``virtaitech.com/gmem``) would lose
  what matters: a vGPU's memory and ratio must fit on *one* physical GPU (fragmentation), and
  the pool is shared with clients Kubernetes never sees (VMs, bare processes, other clusters on
  a TCP pool). The only place that knows what is free is the controller.
- So the extender reads the controller's pool (``GET /api/v1/nodes``: every GPU, slot, holder,
  memory and ratio) and runs the controller's own placement (``controller.pool.allocate``, the
  same code that grants allocations) on a copy restricted to each candidate node, container by
  container: a node passes when every container's request would be granted there now. The
  score prefers the node the request fills most (the controller's tightest-fit rule), keeping
  whole GPUs free for large requests.
- An extender runs with the stock kube-scheduler (or a second scheduler profile named
  ``orion-scheduler``, the seeds' ``schedulerName``); it needs no Go, no scheduler rebuild
  (a scheduling-framework plugin would) and no copy of the scheduler (the seeds' separate
  ``orion-scheduler`` deployment). It is stateless: restart it at will.

The controller allocates when the application initialises CUDA, not at scheduling: the extender
guarantees "fits now", and the controller's answer at CUDA init stays the authority. With the
controller unreachable, ``/filter`` answers an ``error`` (the scheduler retries the Pod later, or
ignores the extender when it is configured ``ignorable: true``).

A candidate Kubernetes node maps to the controller nodes whose id starts with ``<node name>:``
(oriond's ``<hostname>:<bind>:<port>``), or whose data-plane address is the node's
``ORION_BIND_ADDR`` label (the node labeller's) when the scheduler sends whole Node objects.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ..controller import client as ctl
from ..controller import pool
from ..controller.exceptions import AllocationError, BadRequest, ControllerError
from ..controller.model import Allocation, AllocationRequest, Gpu, Node, Placement, PoolState
from .common import DEFAULT_RESOURCE
from .labeller import LABEL

log = logging.getLogger("orion.k8s.extender")

MAX_SCORE = 10  # the scheduler's MaxExtenderPriority


# -- the Pod's requests --------------------------------------------------------------------------


def _env_int(env: list[dict[str, Any]], name: str) -> int | None:
    for e in env or []:
        if e.get("name") == name and "value" in e:
            try:
                return int(str(e["value"]).strip())
            except ValueError:
                raise BadRequest(f"{name}={e['value']!r} is not an integer", name) from None
    return None


def _count(resources: dict[str, Any], resource: str) -> int:
    for kind in ("limits", "requests"):
        v = (resources.get(kind) or {}).get(resource)
        if v is not None:
            return int(str(v))
    return 0


def pod_requests(pod: dict[str, Any], resource: str = DEFAULT_RESOURCE) -> list[AllocationRequest]:
    """One request per container that asks for ``resource`` or sets ``ORION_VGPU``: ``vgpu`` from
    ``ORION_VGPU`` (else the resource count), ``ORION_GMEM`` and ``ORION_RATIO`` from its ``env``
    values (``valueFrom`` is not resolved here; unset means the GPU's default share)."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        env = c.get("env") or []
        n = _count(c.get("resources") or {}, resource)
        vgpu = _env_int(env, "ORION_VGPU")
        if not n and vgpu is None:
            continue
        out.append(AllocationRequest(vgpu=vgpu or n, gmem_mib=_env_int(env, "ORION_GMEM"),
                                     ratio=_env_int(env, "ORION_RATIO")).validate())
    return out


# -- the pool ------------------------------------------------------------------------------------


def pool_state(nodes: list[dict[str, Any]], now: float) -> PoolState:
    """The controller's pool rebuilt from ``GET /api/v1/nodes`` (holders become allocations that
    neither expire nor go down during the check)."""
    st = PoolState()
    placements: dict[str, list[Placement]] = {}
    for n in nodes:
        gpus = tuple(Gpu(int(g["index"]), str(g.get("uuid", "")), str(g.get("name", "")),
                         int(g["memory_mib"]), int(g["vgpu_count"])) for g in n.get("gpus", []))
        st.nodes[n["node_id"]] = Node(n["node_id"], str(n.get("address", "")), gpus, now, bool(n.get("up")))
        for g in n.get("gpus", []):
            for s in g.get("vgpus", []):
                if s.get("allocation_id"):
                    placements.setdefault(s["allocation_id"], []).append(
                        Placement(n["node_id"], int(g["index"]), int(s["slot"]), int(s.get("memory_mib", 0)),
                                  int(s.get("ratio", 0))))
    for aid, ps in placements.items():
        st.allocations[aid] = Allocation(aid, "", "", now, math.inf, tuple(ps))
    return st


def k8s_node_match(k8s_node: dict[str, Any] | str, ctl_node: dict[str, Any]) -> bool:
    labels: dict[str, Any] = {}
    if isinstance(k8s_node, str):
        name = k8s_node
    else:
        meta = k8s_node.get("metadata") or {}
        name, labels = str(meta.get("name", "")), meta.get("labels") or {}
    nid = str(ctl_node.get("node_id", ""))
    if name and nid.startswith(f"{name}:"):
        return True
    bind = labels.get(LABEL)
    host = str(ctl_node.get("address", "")).rpartition(":")[0].strip("[]")
    return bool(bind) and host == bind


@dataclass
class Verdict:
    fits: bool
    reason: str = ""
    score: int = 0


def judge(reqs: list[AllocationRequest], k8s_node: dict[str, Any] | str, nodes: list[dict[str, Any]],
          now: float) -> Verdict:
    """Whether every request would be granted on this node's oriond now, and a score."""
    mine = [n for n in nodes if k8s_node_match(k8s_node, n)]
    if not mine:
        return Verdict(False, "no oriond of this node is registered with the Orion controller")
    if not any(n.get("up") for n in mine):
        return Verdict(False, "the Orion controller lists this node's oriond down")
    st = pool_state(mine, now)  # a copy of this node's part of the pool, its holders included
    before = pool.summary(st).free_vgpus
    total = pool.summary(st).total_vgpus or 1
    policy = pool.Policy(lease_seconds=math.inf, heartbeat_timeout=math.inf)
    ids = iter(range(1 << 30))
    for r in reqs:
        try:
            pool.allocate(st, r, now, policy, lambda: f"check-{next(ids)}")
        except AllocationError as e:
            return Verdict(False, f"{_describe(r)}: {e}")
    after = pool.summary(st).free_vgpus
    used_after = 1 - after / total
    score = round(MAX_SCORE * used_after) if before else 0
    return Verdict(True, "", max(0, min(MAX_SCORE, score)))


def _describe(r: AllocationRequest) -> str:
    return (f"ORION_VGPU={r.vgpu}" + (f" ORION_GMEM={r.gmem_mib}" if r.gmem_mib is not None else "")
            + (f" ORION_RATIO={r.ratio}" if r.ratio is not None else ""))


# -- the HTTP side -------------------------------------------------------------------------------


def _candidates(args: dict[str, Any]) -> list[dict[str, Any] | str]:
    nodes = (args.get("nodes") or {}).get("items")
    if nodes is not None:
        return list(nodes)
    return list(args.get("nodenames") or [])


def _name(n: dict[str, Any] | str) -> str:
    return n if isinstance(n, str) else str((n.get("metadata") or {}).get("name", ""))


class Extender:
    def __init__(self, controller: str, resource: str = DEFAULT_RESOURCE,
                 nodes: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.controller = controller
        self.resource = resource
        self._nodes = nodes or (lambda: ctl.nodes(self.controller, timeout=3.0))

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        cands = _candidates(args)
        by_obj = (args.get("nodes") or {}).get("items") is not None
        try:
            reqs = pod_requests(args.get("pod") or {}, self.resource)
        except BadRequest as e:
            return {"error": f"orion: {e}"}
        if not reqs:
            return _filter_result(cands, {}, by_obj)
        try:
            nodes = self._nodes()
        except ControllerError as e:
            log.warning("filter: %s", e)
            return {"error": f"orion: cannot ask the Orion controller at {self.controller}: {e}"}
        now = time.time()
        failed: dict[str, str] = {}
        keep = []
        for c in cands:
            v = judge(reqs, c, nodes, now)
            if v.fits:
                keep.append(c)
            else:
                failed[_name(c)] = v.reason
        pod = (args.get("pod") or {}).get("metadata") or {}
        log.info("filter %s/%s: %d of %d node(s) fit%s", pod.get("namespace", ""), pod.get("name", ""), len(keep),
                 len(cands), "".join(f"; {k}: {v}" for k, v in failed.items()))
        return _filter_result(keep, failed, by_obj)

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        cands = _candidates(args)
        try:
            reqs = pod_requests(args.get("pod") or {}, self.resource)
            nodes = self._nodes() if reqs else []
        except (BadRequest, ControllerError) as e:
            log.warning("prioritize: %s", e)
            return [{"host": _name(c), "score": 0} for c in cands]
        now = time.time()
        return [{"host": _name(c), "score": judge(reqs, c, nodes, now).score if reqs else 0} for c in cands]


def _filter_result(keep: list[Any], failed: dict[str, str], by_obj: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"failedNodes": failed, "error": ""}
    if by_obj:
        out["nodes"] = {"items": keep}
    else:
        out["nodenames"] = [_name(k) for k in keep]
    return out


def make_server(ext: Extender, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/healthz", ""):
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            try:
                n = int(self.headers.get("Content-Length") or 0)
                args = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(args, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                self._send(400, {"error": f"bad extender arguments: {e}"})
                return
            route = self.path.rstrip("/").rsplit("/", 1)[-1]
            if route == "filter":
                self._send(200, ext.filter(args))
            elif route == "prioritize":
                self._send(200, ext.prioritize(args))
            else:
                self._send(404, {"error": f"no route {self.path} (filter, prioritize)"})

    return ThreadingHTTPServer((host, port), Handler)
