"""Pool logic over a :class:`PoolState`: placement, release, leases, node liveness. No I/O.

Invariants kept by every function here (and checked by the tests):
- a vGPU slot ``(node, gpu, slot)`` belongs to at most one allocation;
- on each GPU: used slots <= vgpu_count, sum of memory <= GPU memory, sum of ratios <= 100;
- no allocation sits on a node that is down, and none outlives its lease past the next reap.
Functions take ``now`` (seconds since the epoch) instead of reading a clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .exceptions import AllocationError, NotFound
from .model import (
    Allocation,
    AllocationRequest,
    Gpu,
    Node,
    Placement,
    PoolState,
    Revocation,
    Summary,
)


@dataclass(frozen=True)
class Policy:
    """Controller-wide settings the pool logic needs."""

    default_vgpu_count: int = 4
    lease_seconds: float = 30.0
    heartbeat_timeout: float = 15.0
    max_reap_changes: int = 100


@dataclass
class Usage:
    """What the live allocations take from one GPU."""

    slots: dict[int, str] = field(default_factory=dict)
    memory_mib: int = 0
    ratio: int = 0


@dataclass(frozen=True)
class ReapResult:
    nodes_down: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    released: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.nodes_down or self.expired or self.released)


def usage(state: PoolState) -> dict[tuple[str, int], Usage]:
    """Per ``(node_id, gpu_index)``: the slots, memory and ratio held by allocations."""
    out: dict[tuple[str, int], Usage] = {}
    for a in state.allocations.values():
        for p in a.placements:
            u = out.setdefault((p.node_id, p.gpu_index), Usage())
            u.slots[p.slot] = a.allocation_id
            u.memory_mib += p.memory_mib
            u.ratio += p.ratio
    return out


def free_vgpus(gpu: Gpu, u: Usage | None) -> int:
    """How many default-sized vGPUs (memory/vgpu_count, 100/vgpu_count %) still fit on ``gpu``."""
    u = u or Usage()
    return max(0, min(gpu.vgpu_count - len(u.slots),
                      (gpu.memory_mib - u.memory_mib) // gpu.default_vgpu_mib,
                      (100 - u.ratio) // gpu.default_ratio))


def summary(state: PoolState) -> Summary:
    """Totals over up nodes; vGPUs of down nodes are neither total nor free."""
    use = usage(state)
    up = [n for n in state.nodes.values() if n.up]
    return Summary(
        total_vgpus=sum(g.vgpu_count for n in up for g in n.gpus),
        free_vgpus=sum(free_vgpus(g, use.get((n.node_id, g.index))) for n in up for g in n.gpus),
        nodes_up=len(up), nodes_down=len(state.nodes) - len(up),
        gpus=sum(len(n.gpus) for n in up), allocations=len(state.allocations),
    )


def register(state: PoolState, node: Node) -> tuple[str, ...]:
    """Add or replace ``node`` (marked up). Returns ids of allocations released because they
    sat on GPUs the node no longer reports or that shrank below what they hold."""
    old = state.nodes.get(node.node_id)
    if old is not None:
        node = dataclasses.replace(node, registered_at=old.registered_at or node.registered_at)
    state.nodes[node.node_id] = node
    bad = set()
    for (nid, gi), u in usage(state).items():
        g = node.gpu(gi) if nid == node.node_id else None
        if nid == node.node_id and (g is None or u.memory_mib > g.memory_mib
                                    or max(u.slots) >= g.vgpu_count):
            bad.add(gi)
    gone = [a.allocation_id for a in state.allocations.values()
            if any(p.node_id == node.node_id and p.gpu_index in bad for p in a.placements)]
    for aid in gone:
        _forget(state, aid)
    return tuple(gone)


def _forget(state: PoolState, allocation_id: str) -> Allocation:
    """Remove an allocation and record it as revoked on its nodes until its tokens expire."""
    a = state.allocations.pop(allocation_id)
    state.revoked[allocation_id] = Revocation(a.node_ids, a.expires_at)
    return a


def revoked_on(state: PoolState, node_id: str, now: float) -> list[str]:
    """Ids of released allocations whose tokens for ``node_id`` have not expired yet."""
    return sorted(aid for aid, r in state.revoked.items() if node_id in r.node_ids and r.until > now)


def heartbeat(state: PoolState, node_id: str, now: float) -> Node:
    """Record a heartbeat; a down node comes back up. ``NotFound`` if never registered."""
    node = state.nodes.get(node_id)
    if node is None:
        raise NotFound(f"node {node_id!r} is not registered")
    node = dataclasses.replace(node, last_heartbeat=now, up=True)
    state.nodes[node_id] = node
    return node


def remove_node(state: PoolState, node_id: str) -> tuple[str, ...]:
    """Forget a node and release its allocations; ``NotFound`` if unknown."""
    if state.nodes.pop(node_id, None) is None:
        raise NotFound(f"node {node_id!r} is not registered")
    return _release_on(state, {node_id}, limit=None)


def _release_on(state: PoolState, node_ids: set[str], limit: int | None) -> tuple[str, ...]:
    gone = [a.allocation_id for a in state.allocations.values()
            if any(p.node_id in node_ids for p in a.placements)][:limit]
    for aid in gone:
        _forget(state, aid)
    return tuple(gone)


def reap(state: PoolState, now: float, policy: Policy) -> ReapResult:
    """Mark nodes silent for more than ``heartbeat_timeout`` down, release what sat on down
    nodes, drop allocations whose lease has passed. At most ``max_reap_changes`` allocations
    go per call (a store transaction stays small); the rest go on the next call."""
    down = []
    for n in list(state.nodes.values()):
        if n.up and now - n.last_heartbeat > policy.heartbeat_timeout:
            state.nodes[n.node_id] = dataclasses.replace(n, up=False)
            down.append(n.node_id)
    budget = policy.max_reap_changes
    released = _release_on(state, {n.node_id for n in state.nodes.values() if not n.up}, budget)
    budget -= len(released)
    expired = [a.allocation_id for a in state.allocations.values() if a.expires_at <= now]
    expired = expired[:max(0, budget)]
    for aid in expired:
        del state.allocations[aid]  # its tokens have expired: nothing to revoke
    for aid in [aid for aid, r in state.revoked.items() if r.until <= now][:max(0, budget)]:
        del state.revoked[aid]
    return ReapResult(tuple(down), tuple(expired), released)


def release(state: PoolState, allocation_id: str) -> Allocation:
    """Remove an allocation; ``NotFound`` if it does not exist (already released or expired)."""
    if allocation_id not in state.allocations:
        raise NotFound(f"allocation {allocation_id!r} does not exist (released or expired)")
    return _forget(state, allocation_id)


def renew(state: PoolState, allocation_id: str, now: float, policy: Policy) -> Allocation:
    """Extend a live lease to ``now + lease_seconds``; ``NotFound`` if gone or already expired."""
    a = state.allocations.get(allocation_id)
    if a is None or a.expires_at <= now:
        state.allocations.pop(allocation_id, None)
        raise NotFound(f"allocation {allocation_id!r} does not exist (released or expired)")
    a = dataclasses.replace(a, expires_at=now + policy.lease_seconds)
    state.allocations[allocation_id] = a
    return a


@dataclass(frozen=True)
class _Cand:
    node_id: str
    gpu: Gpu
    cap: int
    memory_mib: int
    ratio: int


def _shape(gpu: Gpu, req: AllocationRequest) -> tuple[int, int]:
    mem = req.gmem_mib if req.gmem_mib is not None else gpu.default_vgpu_mib
    ratio = req.ratio if req.ratio is not None else (100 if req.cross_node else gpu.default_ratio)
    return mem, ratio


def _cand(node_id: str, gpu: Gpu, u: Usage | None, req: AllocationRequest) -> _Cand:
    u = u or Usage()
    mem, ratio = _shape(gpu, req)
    cap = min(gpu.vgpu_count - len(u.slots), (gpu.memory_mib - u.memory_mib) // mem,
              (100 - u.ratio) // ratio)
    return _Cand(node_id, gpu, max(0, cap), mem, ratio)


def _pick(cands: Iterable[_Cand], n: int) -> list[tuple[_Cand, int]] | None:
    """Cover ``n`` vGPUs with as few GPUs as possible: largest first, the last one best-fit."""
    rest = sorted((c for c in cands if c.cap > 0), key=lambda c: (-c.cap, c.node_id, c.gpu.index))
    if sum(c.cap for c in rest) < n:
        return None
    chosen: list[tuple[_Cand, int]] = []
    need = n
    while need > 0:
        fits = [c for c in rest if c.cap >= need]
        if fits:
            chosen.append((min(fits, key=lambda c: (c.cap, c.node_id, c.gpu.index)), need))
            break
        c = rest.pop(0)
        chosen.append((c, c.cap))
        need -= c.cap
    return chosen


def _describe(req: AllocationRequest) -> str:
    mem = f"{req.gmem_mib} MiB" if req.gmem_mib is not None else "default memory"
    ratio = f"{req.ratio}%" if req.ratio is not None else "default ratio"
    return f"{req.vgpu} vGPU(s) of {mem} at {ratio}"


def _check_feasible(req: AllocationRequest, up: list[Node], free: int) -> None:
    gpus = [g for n in up for g in n.gpus]
    if not gpus:
        raise AllocationError("pool exhausted: 0 vGPUs free (no GPU node is up)")
    biggest = max(g.memory_mib for g in gpus)
    if req.gmem_mib is not None and req.gmem_mib > biggest:
        raise AllocationError(
            f"ORION_GMEM={req.gmem_mib} exceeds the memory of any single GPU ({biggest} MiB)")
    empty = {n.node_id: sum(_cand(n.node_id, g, None, req).cap for g in n.gpus) for n in up}
    if not req.cross_node and max(empty.values()) < req.vgpu:
        raise AllocationError(
            f"request needs more than one node can hold: {_describe(req)} asked, the largest "
            f"node holds {max(empty.values())} (ORION_CROSS_NODE=1 with ORION_RATIO=100 "
            f"lets vGPUs span nodes)")
    if req.cross_node and sum(empty.values()) < req.vgpu:
        raise AllocationError(
            f"request needs more than the whole pool can hold: {_describe(req)} asked, "
            f"the pool holds {sum(empty.values())}; {free} vGPUs free")


def allocate(state: PoolState, req: AllocationRequest, now: float, policy: Policy,
             new_id: Callable[[], str]) -> Allocation:
    """Place ``req`` on up nodes and record the allocation, or raise ``AllocationError``
    (single-GPU memory exceeded, more than one node holds, pool exhausted).

    Expired leases and silent nodes are reaped first (bounded like ``reap``). Without
    ``cross_node`` all vGPUs land on one node; in every case on as few GPUs as memory, ratio
    and slots allow, preferring the tightest fit so large requests keep finding empty GPUs.
    """
    req.validate()
    reap(state, now, policy)
    up = sorted((n for n in state.nodes.values() if n.up), key=lambda n: n.node_id)
    free = summary(state).free_vgpus
    _check_feasible(req, up, free)
    use = usage(state)
    per_node = []
    for n in up:
        cands = [_cand(n.node_id, g, use.get((n.node_id, g.index)), req) for g in n.gpus]
        pick = _pick(cands, req.vgpu)
        if pick is not None:
            per_node.append((len(pick), sum(c.cap for c in cands), n.node_id, pick))
    pick = min(per_node, key=lambda t: t[:3])[3] if per_node else None
    if pick is None and req.cross_node:
        pick = _pick((_cand(n.node_id, g, use.get((n.node_id, g.index)), req)
                      for n in up for g in n.gpus), req.vgpu)
    if pick is None:
        where = "in the pool" if req.cross_node else "on one node"
        raise AllocationError(f"pool exhausted: {free} vGPUs free, none fits {_describe(req)} "
                              f"{where}")
    placements = []
    for c, take in pick:
        taken = use.get((c.node_id, c.gpu.index), Usage()).slots
        slots = [s for s in range(c.gpu.vgpu_count) if s not in taken][:take]
        placements += [Placement(c.node_id, c.gpu.index, s, c.memory_mib, c.ratio) for s in slots]
    a = Allocation(new_id(), req.group_id, req.owner, now, now + policy.lease_seconds,
                   tuple(placements), cmdline=req.cmdline)
    state.allocations[a.allocation_id] = a
    return a


def check_invariants(state: PoolState) -> None:
    """Raise ``AssertionError`` if the state breaks an invariant of this module (for tests)."""
    seen: set[tuple[str, int, int]] = set()
    for a in state.allocations.values():
        for p in a.placements:
            key = (p.node_id, p.gpu_index, p.slot)
            if key in seen:
                raise AssertionError(f"vGPU {key} is shared")
            seen.add(key)
            node = state.nodes.get(p.node_id)
            if node is None or not node.up:
                raise AssertionError(f"{a.allocation_id} sits on missing/down node {p.node_id}")
    for (nid, gi), u in usage(state).items():
        g = state.nodes[nid].gpu(gi)
        if g is None or len(u.slots) > g.vgpu_count or u.memory_mib > g.memory_mib \
                or u.ratio > 100 or any(s >= g.vgpu_count for s in u.slots):
            raise AssertionError(f"GPU {nid}/{gi} over capacity: {u}")
