"""The pool's data: nodes, physical GPUs, allocations and the placed vGPUs. No I/O, stdlib-only.

Every type converts to and from plain JSON dicts (``to_json`` / ``from_json``). ``from_json``
raises ``BadRequest`` naming the offending field, so the HTTP layer can answer 400 with it.

A vGPU is identified by ``(node_id, gpu_index, slot)``; ``slot`` is in ``0..vgpu_count-1`` and is
held by at most one allocation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .exceptions import BadRequest

DATA_VERSION = "0.1"
API_VERSION = "0.1"

NODE_KINDS = ("host", "vm", "container")
"""what a registering server runs on: a plain host, a virtual machine, or a container"""
OWNER_MAX = 200
CMDLINE_MAX = 1000
"""bounds of the client-asserted ``owner`` and ``cmdline`` (untrusted text shown in the portal)"""


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], prefix: str,
         default: Any = ..., minimum: int | None = None, maximum: int | None = None) -> Any:
    name = prefix + key
    if key not in d or d[key] is None:
        if default is ...:
            raise BadRequest(f"missing field {name!r}", name)
        return default
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise BadRequest(f"field {name!r} must be an integer, got {v!r}", name)
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise BadRequest(f"field {name!r} must be a number, got {v!r}", name)
    if kind not in (int, float) and not isinstance(v, kind):
        raise BadRequest(f"field {name!r} has the wrong type: {v!r}", name)
    if minimum is not None and v < minimum:
        raise BadRequest(f"field {name!r} must be >= {minimum}, got {v}", name)
    if maximum is not None and v > maximum:
        raise BadRequest(f"field {name!r} must be <= {maximum}, got {v}", name)
    return float(v) if kind is float else v


def _obj(d: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise BadRequest(f"{name or 'body'} must be a JSON object", name)
    return d


def parse_addr(text: str, field_name: str) -> str:
    """``HOST:PORT`` with a port in 1..65535, else ``BadRequest``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"field {field_name!r} must be HOST:PORT, got {text!r}", field_name)
    return f"{host}:{port}"


@dataclass(frozen=True)
class Gpu:
    """A physical GPU of a node, split into ``vgpu_count`` vGPU slots."""

    index: int
    uuid: str
    name: str
    memory_mib: int
    vgpu_count: int

    @property
    def default_vgpu_mib(self) -> int:
        return self.memory_mib // self.vgpu_count

    @property
    def default_ratio(self) -> int:
        return max(1, 100 // self.vgpu_count)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_mib": self.memory_mib, "vgpu_count": self.vgpu_count}

    @classmethod
    def from_json(cls, d: Any, default_vgpu_count: int, prefix: str = "") -> Gpu:
        d = _obj(d, prefix.rstrip("."))
        return cls(
            index=_get(d, "index", int, prefix, minimum=0),
            uuid=_get(d, "uuid", str, prefix, default=""),
            name=_get(d, "name", str, prefix, default=""),
            memory_mib=_get(d, "memory_mib", int, prefix, minimum=1),
            vgpu_count=_get(d, "vgpu_count", int, prefix, default=default_vgpu_count,
                            minimum=1, maximum=100),
        )


@dataclass(frozen=True)
class Node:
    """A server (oriond) with its data-plane address; ``up`` is False once heartbeats stop."""

    node_id: str
    address: str
    gpus: tuple[Gpu, ...]
    last_heartbeat: float
    up: bool = True
    registered_at: float = 0.0
    secret_hash: str = ""
    """SHA-256 of the node secret issued at registration: an address change needs it"""
    kind: str = "host"
    """one of ``NODE_KINDS``, as the server detected it"""

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address,
                "gpus": [g.to_json() for g in self.gpus], "last_heartbeat": self.last_heartbeat,
                "up": self.up, "registered_at": self.registered_at, "kind": self.kind}

    def to_store(self) -> dict[str, Any]:
        return {**self.to_json(), "secret_hash": self.secret_hash}

    @classmethod
    def from_json(cls, d: Any) -> Node:
        d = _obj(d, "")
        return cls(d["node_id"], d["address"],
                   tuple(Gpu.from_json(g, 1) for g in d["gpus"]),
                   float(d["last_heartbeat"]), bool(d["up"]), float(d.get("registered_at", 0.0)),
                   str(d.get("secret_hash", "")), str(d.get("kind", "host")))


def parse_registration(d: Any, default_vgpu_count: int, now: float) -> Node:
    """A node registration body ``{"node_id", "address", "gpus": [...]}`` as an up ``Node``.

    GPU indexes must be unique; a GPU without ``vgpu_count`` gets the controller's default;
    ``kind`` (one of ``NODE_KINDS``) defaults to ``host``.
    """
    d = _obj(d, "")
    node_id = _get(d, "node_id", str, "")
    if not node_id.strip() or "/" in node_id or len(node_id) > 200:
        raise BadRequest("field 'node_id' must be a non-empty name without '/'", "node_id")
    address = parse_addr(_get(d, "address", str, ""), "address")
    raw = _get(d, "gpus", list, "")
    gpus = tuple(Gpu.from_json(g, default_vgpu_count, f"gpus[{i}].") for i, g in enumerate(raw))
    if len({g.index for g in gpus}) != len(gpus):
        raise BadRequest("field 'gpus' has duplicate GPU indexes", "gpus")
    kind = _get(d, "kind", str, "", default="host")
    if kind not in NODE_KINDS:
        raise BadRequest(f"field 'kind' must be one of {', '.join(NODE_KINDS)}, got {kind!r}",
                         "kind")
    return Node(node_id.strip(), address, gpus, now, True, now, kind=kind)


def _text(d: Mapping[str, Any], key: str, limit: int) -> str:
    """An optional printable string field of at most ``limit`` characters, else ``BadRequest``."""
    v = _get(d, key, str, "", default="")
    if len(v) > limit:
        raise BadRequest(f"field {key!r} must be at most {limit} characters, got {len(v)}", key)
    if not v.isprintable():
        raise BadRequest(f"field {key!r} must be printable text (no control characters)", key)
    return str(v)


@dataclass(frozen=True)
class AllocationRequest:
    """What a client asks for: ``vgpu`` vGPUs, each ``gmem_mib`` MiB and ``ratio`` % of a GPU.

    ``None`` means the default of the chosen GPU (memory / vgpu_count, 100 / vgpu_count).
    ``cross_node`` lets the vGPUs span several nodes and requires ``ratio`` 100.
    """

    vgpu: int
    gmem_mib: int | None = None
    ratio: int | None = None
    cross_node: bool = False
    group_id: str = ""
    owner: str = ""
    cmdline: str = ""
    """the application's command line as its client reports it (at most ``CMDLINE_MAX``)"""

    def validate(self) -> AllocationRequest:
        """Return self, or raise ``BadRequest`` naming the bad field."""
        if isinstance(self.vgpu, bool) or not isinstance(self.vgpu, int) or self.vgpu < 1:
            raise BadRequest(f"field 'vgpu' (ORION_VGPU) must be >= 1, got {self.vgpu!r}", "vgpu")
        if self.gmem_mib is not None and (isinstance(self.gmem_mib, bool) or self.gmem_mib < 1):
            raise BadRequest(f"field 'gmem_mib' (ORION_GMEM) must be >= 1, got {self.gmem_mib!r}",
                             "gmem_mib")
        if self.ratio is not None and not 1 <= self.ratio <= 100:
            raise BadRequest(f"field 'ratio' (ORION_RATIO) must be 1..100, got {self.ratio!r}",
                             "ratio")
        if self.cross_node and self.ratio not in (None, 100):
            raise BadRequest(f"ORION_CROSS_NODE=1 requires ORION_RATIO=100, got {self.ratio}",
                             "ratio")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"vgpu": self.vgpu, "gmem_mib": self.gmem_mib, "ratio": self.ratio,
                "cross_node": self.cross_node, "group_id": self.group_id, "owner": self.owner,
                "cmdline": self.cmdline}

    @classmethod
    def from_json(cls, d: Any) -> AllocationRequest:
        d = _obj(d, "")
        return cls(
            vgpu=_get(d, "vgpu", int, ""),
            gmem_mib=_get(d, "gmem_mib", int, "", default=None),
            ratio=_get(d, "ratio", int, "", default=None),
            cross_node=_get(d, "cross_node", bool, "", default=False),
            group_id=_get(d, "group_id", str, "", default=""),
            owner=_text(d, "owner", OWNER_MAX),
            cmdline=_text(d, "cmdline", CMDLINE_MAX),
        ).validate()


@dataclass(frozen=True)
class Placement:
    """One placed vGPU: slot ``slot`` of GPU ``gpu_index`` on ``node_id``, with its quota."""

    node_id: str
    gpu_index: int
    slot: int
    memory_mib: int
    ratio: int

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "gpu_index": self.gpu_index, "slot": self.slot,
                "memory_mib": self.memory_mib, "ratio": self.ratio}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Placement:
        return cls(d["node_id"], int(d["gpu_index"]), int(d["slot"]), int(d["memory_mib"]),
                   int(d["ratio"]))


@dataclass(frozen=True)
class Allocation:
    """An exclusive, leased set of vGPUs. Gone from the pool once released or expired."""

    allocation_id: str
    group_id: str
    owner: str
    created_at: float
    expires_at: float
    placements: tuple[Placement, ...]
    secret_hash: str = ""
    """SHA-256 of the allocation's secret: renewing and releasing need the secret"""
    cmdline: str = ""

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.node_id for p in self.placements))

    def to_json(self) -> dict[str, Any]:
        return {"allocation_id": self.allocation_id, "group_id": self.group_id,
                "owner": self.owner, "created_at": self.created_at,
                "expires_at": self.expires_at, "placements": [p.to_json() for p in self.placements],
                "secret_hash": self.secret_hash, "cmdline": self.cmdline}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Allocation:
        return cls(d["allocation_id"], d.get("group_id", ""), d.get("owner", ""),
                   float(d["created_at"]), float(d["expires_at"]),
                   tuple(Placement.from_json(p) for p in d["placements"]),
                   str(d.get("secret_hash", "")), str(d.get("cmdline", "")))


@dataclass(frozen=True)
class Revocation:
    """A released allocation whose tokens could still be valid (until ``until``) on these nodes;
    servers pull the list with their heartbeats and refuse those tokens."""

    node_ids: tuple[str, ...]
    until: float

    def to_json(self) -> dict[str, Any]:
        return {"node_ids": list(self.node_ids), "until": self.until}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Revocation:
        return cls(tuple(str(n) for n in d["node_ids"]), float(d["until"]))


@dataclass
class PoolState:
    """The whole pool as loaded from a store; mutated only through :mod:`.pool` functions."""

    nodes: dict[str, Node] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)
    revoked: dict[str, Revocation] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    total_vgpus: int
    free_vgpus: int
    nodes_up: int
    nodes_down: int
    gpus: int
    allocations: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)

