"""The controller service: pool operations run as store transactions, plus tokens and views.

Everything the HTTP layer answers is built here as JSON-ready dicts, so the API module only
routes and encodes. ``clock`` and ``new_id`` are injectable for tests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, Callable

from . import auth, pool
from .exceptions import AllocationError, Conflict, ControllerError, Forbidden, NotFound
from .model import (
    API_VERSION,
    DATA_VERSION,
    Allocation,
    AllocationRequest,
    Gpu,
    Node,
    PoolState,
    parse_registration,
)
from .samples import Samples, sample_of
from .store import Store
from .token import Grant, VGpuQuota, issue_token

log = logging.getLogger("orion_virt.controller")


class Controller:
    def __init__(self, store: Store, policy: pool.Policy, token_key: bytes,
                 clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
                 samples: Samples | None = None) -> None:
        self.store = store
        self.policy = policy
        self.token_key = token_key
        self.clock = clock
        self.new_id = new_id
        self.samples = samples or Samples()

    @staticmethod
    def version() -> dict[str, str]:
        return {"data_version": DATA_VERSION, "api_version": API_VERSION}

    def register(self, body: Any, node_secret: str | None = None,
                 check: bool = True) -> dict[str, Any]:
        """Add or refresh a node from its registration body; ``BadRequest`` on bad fields.

        A node's address changes only by that node: re-registering a known node id at another
        address needs the node secret its first registration answered (``Conflict`` otherwise),
        unless the node is down. A registration without the secret gets a new one."""
        node = parse_registration(body, self.policy.default_vgpu_count, self.clock())
        fresh = auth.new_secret()

        def fn(s: PoolState) -> tuple[tuple[str, ...], bool]:
            old = s.nodes.get(node.node_id)
            proven = old is not None and auth.secret_matches(node_secret, old.secret_hash)
            if check and old is not None and not proven and old.up \
                    and old.address != node.address \
                    and old.secret_hash:
                raise Conflict(f"node {node.node_id!r} is registered at {old.address} by another "
                               f"server; a node's address changes only by that node (its node "
                               f"secret) or once it is down")
            keep = old.secret_hash if proven and old is not None else auth.secret_hash(fresh)
            return pool.register(s, dataclasses.replace(node, secret_hash=keep)), proven

        released, proven = self.store.update(fn)
        log.info("node %s registered at %s with %d GPU(s)%s", node.node_id, node.address,
                 len(node.gpus), f"; released {len(released)} stale allocation(s)"
                 if released else "")
        out = {"node": node.to_json(), "released": list(released),
               "heartbeat_timeout": self.policy.heartbeat_timeout}
        if not proven:
            out["node_secret"] = fresh
        return out

    def heartbeat(self, node_id: str, node_secret: str | None = None,
                  check: bool = True) -> dict[str, Any]:
        """``NotFound`` when the node is unknown: the server must register again; ``Forbidden``
        without the node's secret. The answer lists the allocations released since whose tokens
        for this node have not expired (``revoked``): the server refuses them."""
        now = self.clock()

        def fn(s: PoolState) -> tuple[bool, list[str]]:
            n = s.nodes.get(node_id)
            if check and n is not None and n.secret_hash \
                    and not auth.secret_matches(node_secret, n.secret_hash):
                raise Forbidden(f"heartbeat for node {node_id!r} without its node secret "
                                f"(register again)")
            was_up = n.up if n is not None else True
            pool.heartbeat(s, node_id, now)
            return was_up, pool.revoked_on(s, node_id, now)

        was_up, revoked = self.store.update(fn)
        if not was_up:
            log.info("node %s is back up", node_id)
        return {"node_id": node_id, "up": True, "heartbeat_timeout": self.policy.heartbeat_timeout,
                "revoked": revoked}

    def deregister(self, node_id: str) -> dict[str, Any]:
        released = self.store.update(lambda s: pool.remove_node(s, node_id))
        log.info("node %s deregistered; released %d allocation(s)", node_id, len(released))
        return {"node_id": node_id, "released": list(released)}

    def allocate(self, body: Any) -> dict[str, Any]:
        """``BadRequest`` on bad fields, ``AllocationError`` when the pool cannot satisfy it."""
        req = AllocationRequest.from_json(body)
        now = self.clock()
        secret = auth.new_secret()

        def fn(s: PoolState) -> tuple[Allocation, dict[str, Node], pool.ReapResult]:
            reaped = pool.reap(s, now, self.policy)
            a = pool.allocate(s, req, now, self.policy, self.new_id)
            a = s.allocations[a.allocation_id] = dataclasses.replace(
                a, secret_hash=auth.secret_hash(secret))
            return a, {nid: s.nodes[nid] for nid in a.node_ids}, reaped

        try:
            a, nodes, reaped = self.store.update(fn)
        except AllocationError as e:
            log.warning("allocation refused (%s): %s", _who(req), e)
            raise
        self._log_reaped(reaped)
        log.info("allocation %s (%s): %s", a.allocation_id, _who(req), _where(a))
        return {**self.grant_view(a, nodes), "secret": secret}

    @staticmethod
    def _holder(s: PoolState, allocation_id: str, secret: str | None, admin: bool) -> None:
        """``Forbidden`` unless ``secret`` is the allocation's (or the caller is an operator)."""
        a = s.allocations.get(allocation_id)
        if a is None or admin or auth.secret_matches(secret, a.secret_hash):
            return
        raise Forbidden(f"allocation {allocation_id!r} is not yours: renewing or releasing it "
                        f"needs the secret its allocation answered ({auth.ALLOCATION_SECRET_HEADER})")

    def renew(self, allocation_id: str, secret: str | None = None,
              admin: bool = True) -> dict[str, Any]:
        now = self.clock()

        def fn(s: PoolState) -> tuple[Allocation, dict[str, Node]]:
            self._holder(s, allocation_id, secret, admin)
            a = pool.renew(s, allocation_id, now, self.policy)
            return a, {nid: s.nodes[nid] for nid in a.node_ids}

        return self.grant_view(*self.store.update(fn))

    def release(self, allocation_id: str, secret: str | None = None,
                admin: bool = True) -> dict[str, Any]:
        def fn(s: PoolState) -> Allocation:
            self._holder(s, allocation_id, secret, admin)
            return pool.release(s, allocation_id)

        a = self.store.update(fn)
        log.info("allocation %s released", allocation_id)
        return {"allocation_id": a.allocation_id, "released": True}

    def session_ended(self, allocation_id: str, node: str) -> dict[str, Any]:
        """A server says the session of ``allocation_id`` on ``node`` ended (oriond, signed with
        the API key). An allocation that lives only on that node is released at once, instead
        of at its lease's end; one that spans nodes waits for its holder or its lease (its other
        sessions may still run). ``NotFound`` if it is gone already."""
        released = False

        def fn(s: PoolState) -> bool:
            a = s.allocations.get(allocation_id)
            if a is None:
                raise NotFound(f"allocation {allocation_id!r} does not exist (released or expired)")
            if a.node_ids != (node,):
                return False
            pool.release(s, allocation_id)
            return True

        released = self.store.update(fn)
        if released:
            log.info("allocation %s released: its session on node %s ended", allocation_id, node)
        return {"allocation_id": allocation_id, "released": released}

    def snapshot(self) -> PoolState:
        """The pool as ``allocate`` would see it now: expired leases and silent nodes are
        already reaped in this copy (the reaper persists that within a second)."""
        s = self.store.read()
        pool.reap(s, self.clock(), dataclasses.replace(self.policy, max_reap_changes=1 << 30))
        return s

    def get_allocation(self, allocation_id: str) -> dict[str, Any]:
        s = self.snapshot()
        a = s.allocations.get(allocation_id)
        if a is None:
            raise NotFound(f"allocation {allocation_id!r} does not exist (released or expired)")
        return self.task_view(a, s)

    def reap(self) -> pool.ReapResult:
        """Reap, then take a utilisation sample when one is due (``self.samples``)."""
        now = self.clock()
        r = self.store.update(lambda s: pool.reap(s, now, self.policy))
        self._log_reaped(r)
        self.samples.record(now, self.store.read())
        return r

    def _log_reaped(self, r: pool.ReapResult) -> None:
        for nid in r.nodes_down:
            log.warning("node %s missed heartbeats for %.0fs: marked down", nid,
                        self.policy.heartbeat_timeout)
        for aid in r.released:
            log.info("allocation %s released: its node is down", aid)
        for aid in r.expired:
            log.info("allocation %s released: lease expired", aid)

    def grant_view(self, a: Allocation, nodes: dict[str, Node]) -> dict[str, Any]:
        """The allocation as a client needs it: servers to talk to and one token per node."""
        tokens = {}
        for nid in a.node_ids:
            quotas = tuple(VGpuQuota(p.gpu_index, p.memory_mib, p.ratio)
                           for p in a.placements if p.node_id == nid)
            tokens[nid] = issue_token(self.token_key,
                                      Grant(a.allocation_id, nid, quotas, a.expires_at,
                                            token_id=auth.new_secret(), sessions=1))
        vgpus = []
        for i, p in enumerate(a.placements):
            n = nodes[p.node_id]
            g = n.gpu(p.gpu_index)
            vgpus.append({"index": i, "node_id": p.node_id, "server": n.address,
                          "gpu_index": p.gpu_index, "gpu_uuid": g.uuid if g else "",
                          "gpu_name": g.name if g else "", "slot": p.slot,
                          "memory_mib": p.memory_mib, "ratio": p.ratio,
                          "token": tokens[p.node_id]})
        return {"allocation_id": a.allocation_id, "group_id": a.group_id, "owner": a.owner,
                "created_at": a.created_at, "expires_at": a.expires_at,
                "lease_seconds": self.policy.lease_seconds, "vgpus": vgpus, "tokens": tokens}

    @staticmethod
    def task_view(a: Allocation, s: PoolState) -> dict[str, Any]:
        return {"allocation_id": a.allocation_id, "group_id": a.group_id, "owner": a.owner,
                "cmdline": a.cmdline, "created_at": a.created_at, "expires_at": a.expires_at,
                "vgpus": [{**p.to_json(), "server": s.nodes[p.node_id].address
                           if p.node_id in s.nodes else ""} for p in a.placements]}

    def summary(self, state: PoolState | None = None) -> dict[str, Any]:
        return pool.summary(state or self.snapshot()).to_json()

    def tasks(self, state: PoolState | None = None) -> list[dict[str, Any]]:
        s = state or self.snapshot()
        return [self.task_view(a, s)
                for a in sorted(s.allocations.values(), key=lambda a: a.created_at)]

    def nodes(self, state: PoolState | None = None) -> list[dict[str, Any]]:
        """Nodes with per-GPU partitioning: each slot's holder, memory and ratio use and its
        ``state`` (see ``slot_states``), and the GPU's utilisation samples of the last hour,
        the last one taken now."""
        s = state or self.snapshot()
        now = self.clock()
        use = pool.usage(s)
        holders = {(p.node_id, p.gpu_index, p.slot): (a.allocation_id, p)
                   for a in s.allocations.values() for p in a.placements}
        out = []
        for n in sorted(s.nodes.values(), key=lambda n: n.node_id):
            gpus = []
            for g in n.gpus:
                u = use.get((n.node_id, g.index), pool.Usage())
                states = slot_states(g, u, n.up)
                slots = []
                for slot in range(g.vgpu_count):
                    h = holders.get((n.node_id, g.index, slot))
                    slots.append({"slot": slot, "allocation_id": h[0] if h else None,
                                  "state": states[slot],
                                  "memory_mib": h[1].memory_mib if h else 0,
                                  "ratio": h[1].ratio if h else 0})
                gpus.append({**g.to_json(), "used_vgpus": len(u.slots),
                             "free_vgpus": pool.free_vgpus(g, u) if n.up else 0,
                             "used_memory_mib": u.memory_mib, "used_ratio": u.ratio,
                             "vgpus": slots,
                             "utilisation": [
                                 {"t": x.t, "memory": x.memory, "compute": x.compute}
                                 for x in self.samples.series(n.node_id, g.index, now)
                                 + [sample_of(g, u, n.up, now)]]})
            out.append({"node_id": n.node_id, "address": n.address, "up": n.up,
                        "kind": n.kind, "last_heartbeat": n.last_heartbeat,
                        "registered_at": n.registered_at, "gpus": gpus})
        return out


SLOT_USED, SLOT_FREE, SLOT_UNAVAILABLE, SLOT_DOWN = "used", "free", "unavailable", "down"


def slot_states(gpu: Gpu, u: pool.Usage, up: bool) -> list[str]:
    """Each slot of ``gpu`` as a user should read it: ``used`` (held by an allocation; on a down
    node too, until the reaper releases it), ``down`` (its node is down: nothing can be placed),
    ``free`` (a default-sized vGPU fits there now) or ``unavailable`` (not held, but the memory or
    compute share left on the GPU does not fit a default-sized vGPU). Exactly
    ``pool.free_vgpus`` slots are ``free`` on an up node, the lowest-numbered unheld ones."""
    fits = pool.free_vgpus(gpu, u) if up else 0
    out = []
    for slot in range(gpu.vgpu_count):
        if slot in u.slots:
            out.append(SLOT_USED)
        elif not up:
            out.append(SLOT_DOWN)
        elif fits > 0:
            fits -= 1
            out.append(SLOT_FREE)
        else:
            out.append(SLOT_UNAVAILABLE)
    return out

def _who(req: AllocationRequest) -> str:
    parts = [f"vgpu={req.vgpu}", f"gmem={req.gmem_mib}", f"ratio={req.ratio}"]
    if req.cross_node:
        parts.append("cross_node")
    if req.group_id:
        parts.append(f"group={req.group_id}")
    if req.owner:
        parts.append(f"owner={req.owner}")
    return " ".join(parts)


def _where(a: Allocation) -> str:
    return ", ".join(f"{p.node_id}/gpu{p.gpu_index}#{p.slot} {p.memory_mib}MiB {p.ratio}%"
                     for p in a.placements)


class Reaper(threading.Thread):
    """Runs ``Controller.reap`` every ``interval`` seconds until ``stop``; store errors are
    logged and retried on the next tick, never fatal."""

    def __init__(self, controller: Controller, interval: float = 1.0) -> None:
        super().__init__(name="orion-reaper", daemon=True)
        self.controller = controller
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.controller.reap()
            except ControllerError as e:
                log.error("reaper: %s", e)
            except Exception:  # noqa: BLE001 - the reaper must outlive any single failure
                log.exception("reaper failed")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
