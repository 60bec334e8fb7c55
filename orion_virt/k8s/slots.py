"""The vGPU slots a node advertises to the kubelet, their health, and preferred allocations.
Pure logic over the controller's ``GET /api/v1/nodes`` answer; no gRPC, no I/O.

A slot is one vGPU of one physical GPU of an oriond on this node, named ``vgpu-<gpu>-<slot>``
(``vgpu-<n>-<gpu>-<slot>`` when several oriond run on the node, ``n`` counting them in node-id
order). The kubelet hands slot ids to containers exclusively; the count a container gets becomes
its ``ORION_VGPU``. Which physical vGPUs the client then gets is the controller's decision at
the client's CUDA initialisation: the slot ids only make the kubelet count and schedule.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

_ID = re.compile(r"^vgpu-(?:(\d+)-)?(\d+)-(\d+)$")


@dataclass(frozen=True)
class Slot:
    id: str
    node_id: str
    gpu_index: int
    slot: int
    gpu_memory_mib: int
    vgpu_count: int

    @property
    def gpu_key(self) -> tuple[str, int]:
        return (self.node_id, self.gpu_index)

    @property
    def default_gmem_mib(self) -> int:
        return self.gpu_memory_mib // max(1, self.vgpu_count)

    @property
    def default_ratio(self) -> int:
        return max(1, 100 // max(1, self.vgpu_count))


def gpu_of(slot_id: str) -> tuple[int, int] | None:
    """``(oriond number, gpu index)`` of a slot id, or None if it is not one of ours."""
    m = _ID.match(slot_id)
    if not m:
        return None
    return int(m.group(1) or 0), int(m.group(2))


def node_matches(node: dict[str, Any], *, node_id: str | None, hostname: str | None,
                 address: str | None) -> bool:
    """Whether a controller node is an oriond of this Kubernetes node: its id is ``node_id``,
    or its data-plane address is on ``address`` (the interface's IPv4 address), or its id
    starts with ``hostname:`` (oriond names itself ``<hostname>:<bind_addr>:<port>``)."""
    nid = str(node.get("node_id", ""))
    if node_id:
        return nid == node_id
    if address:
        host = str(node.get("address", "")).rpartition(":")[0].strip("[]")
        return host == address
    return bool(hostname) and nid.startswith(f"{hostname}:")


def slots_of(nodes: Iterable[dict[str, Any]]) -> list[Slot]:
    """Every vGPU slot of ``nodes`` (the matching controller nodes), in a stable order."""
    mine = sorted(nodes, key=lambda n: str(n.get("node_id", "")))
    out: list[Slot] = []
    for k, n in enumerate(mine):
        prefix = f"vgpu-{k}-" if len(mine) > 1 else "vgpu-"
        for g in sorted(n.get("gpus", []), key=lambda g: int(g["index"])):
            count = int(g.get("vgpu_count", 0))
            for s in range(count):
                out.append(Slot(f"{prefix}{int(g['index'])}-{s}", str(n["node_id"]), int(g["index"]), s,
                                int(g.get("memory_mib", 0)), count))
    return out


def preferred(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """``size`` ids from ``available`` (with every one of ``must_include``), packed the way the
    controller places vGPUs (orion_virt/controller/pool.py ``_pick``): on as few GPUs as possible,
    GPUs already holding a chosen slot first, then the largest, and the last one best-fit, so
    large requests keep finding whole GPUs free. Unknown ids are used last, in the order given."""
    chosen = list(dict.fromkeys(i for i in must_include if i in available))
    if size <= len(chosen):
        return chosen
    rest = [i for i in available if i not in chosen]
    by_gpu: dict[tuple[int, int], list[str]] = defaultdict(list)
    unknown: list[str] = []
    for i in rest:
        g = gpu_of(i)
        if g is None:
            unknown.append(i)
        else:
            by_gpu[g].append(i)
    touched = {g for g in (gpu_of(i) for i in chosen) if g is not None}
    need = size - len(chosen)
    # first fill the GPUs the kubelet already insisted on
    for g in sorted(touched):
        take = by_gpu.pop(g, [])[:need]
        chosen += take
        need -= len(take)
    while need > 0 and by_gpu:
        fits = [g for g, ids in by_gpu.items() if len(ids) >= need]
        if fits:
            g = min(fits, key=lambda g: (len(by_gpu[g]), g))
        else:
            g = min(by_gpu, key=lambda g: (-len(by_gpu[g]), g))
        take = by_gpu.pop(g)[:need]
        chosen += take
        need -= len(take)
    chosen += unknown[:max(0, need)]
    return chosen


def health(slots: Sequence[Slot], nodes_up: dict[str, bool], oriond_ok: dict[str, bool],
           controller_ok: bool) -> dict[str, str]:
    """Each slot's health: Healthy only while the controller answers, lists its node up, and
    that node's oriond answers."""
    return {s.id: HEALTHY if controller_ok and nodes_up.get(s.node_id) and oriond_ok.get(s.node_id)
            else UNHEALTHY for s in slots}
