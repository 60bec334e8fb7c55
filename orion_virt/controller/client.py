"""Stdlib-only HTTP client of the controller, for the guest runtime, oriond and orion-check.

``addr`` is ``HOST:PORT`` (or ``http://HOST:PORT``). Uses ``http.client`` directly, so proxy
environment variables never divert controller traffic. Failures raise, by class:

- ``ControllerUnreachable``: no HTTP exchange (refused, timeout, reset). The guest prints
  ``MSG_CONNECT`` and, when it was fetching the version, ``MSG_VERSION``;
- ``AllocationError``: the pool cannot satisfy the request (the guest prints
  ``MSG_NO_ALLOCATION``); ``str(e)`` says why;
- ``BadRequest`` (``.field``), ``NotFound``: the request was wrong / names nothing known;
- ``ControllerError``: any other answer (5xx, not JSON).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote

# the seeds' lines, kept byte-identical in orion_virt/compat.py; re-exported for the callers here
from ..compat import MSG_CONNECT, MSG_NO_ALLOCATION, MSG_VERSION
from . import auth
from .exceptions import (
    AllocationError,
    BadRequest,
    Conflict,
    ControllerError,
    ControllerUnreachable,
    Forbidden,
    NotFound,
    Unauthorized,
)
from .model import AllocationRequest, Summary

__all__ = [
    "Allocation", "AllocationError", "AllocationRequest", "BadRequest", "ControllerError",
    "ControllerUnreachable", "GpuInfo", "MSG_CONNECT", "MSG_NO_ALLOCATION", "MSG_VERSION",
    "NodeInfo", "NotFound", "PlacedVGpu", "Signer", "Summary", "VersionInfo", "allocate",
    "deregister_node", "get_version", "heartbeat", "nodes", "register_node", "release", "renew", "session_ended",
    "summary", "tasks",
]

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Signer:
    """Signs requests (``X-Orion-Auth``) with a key: role ``node`` (the API key: servers, tools)
    or ``client`` (the client key: applications)."""

    role: str
    key: bytes

    def header(self, method: str, path: str, body: bytes) -> str:
        return auth.sign(self.key, self.role, method, path, body)


def load_signer(role: str, path: str) -> Signer:
    """The key file at ``path`` as a Signer (``ConfigError`` naming the file if unreadable)."""
    from .token import load_key

    return Signer(role, load_key(path))


@dataclass(frozen=True)
class VersionInfo:
    data_version: str
    api_version: str

    def __str__(self) -> str:
        return f"data_version={self.data_version},api_version={self.api_version}"


@dataclass(frozen=True)
class GpuInfo:
    """A physical GPU as a server registers it; ``vgpu_count`` None takes the controller's."""

    index: int
    uuid: str
    name: str
    memory_mib: int
    vgpu_count: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "uuid": self.uuid, "name": self.name,
                             "memory_mib": self.memory_mib}
        if self.vgpu_count is not None:
            d["vgpu_count"] = self.vgpu_count
        return d


@dataclass(frozen=True)
class NodeInfo:
    """A server: its stable id (e.g. hostname), data-plane address ``HOST:PORT`` and what it runs
    on (``model.NODE_KINDS``)."""

    node_id: str
    address: str
    kind: str = "host"


@dataclass(frozen=True)
class PlacedVGpu:
    """vGPU number ``index`` of an allocation: where it sits and the token for that server."""

    index: int
    node_id: str
    server: str
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    slot: int
    memory_mib: int
    ratio: int
    token: str


@dataclass(frozen=True)
class Allocation:
    """A granted allocation. Renew before ``expires_at`` (every ``lease_seconds / 3``)."""

    allocation_id: str
    group_id: str
    owner: str
    lease_seconds: float
    expires_at: float
    vgpus: tuple[PlacedVGpu, ...]
    tokens: Mapping[str, str]
    secret: str = ""
    """the allocation's secret (answered at allocation only): renewing and releasing need it"""

    def token_for(self, node_id: str) -> str:
        return self.tokens[node_id]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Allocation:
        try:
            return cls(str(d["allocation_id"]), d.get("group_id", ""), d.get("owner", ""),
                       float(d["lease_seconds"]), float(d["expires_at"]),
                       tuple(PlacedVGpu(**{k: v[k] for k in PlacedVGpu.__dataclass_fields__})
                             for v in d["vgpus"]), dict(d["tokens"]), str(d.get("secret", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ControllerError(f"malformed allocation from controller: {e}") from None


def _split(addr: str) -> tuple[str, int]:
    a = addr.strip()
    for scheme in ("http://", "https://"):
        a = a.removeprefix(scheme)
    a = a.rstrip("/")
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit():
        raise ControllerError(f"controller address {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def request(addr: str, method: str, path: str, body: Any = None,
            timeout: float = DEFAULT_TIMEOUT, signer: Signer | None = None,
            headers: Mapping[str, str] | None = None) -> Any:
    """One JSON exchange; returns the decoded reply or raises (see the module docstring).
    ``signer`` signs it; ``headers`` adds others (an allocation's or a node's secret)."""
    host, port = _split(addr)
    data = json.dumps(body).encode() if body is not None else b""
    hdrs = {"Content-Type": "application/json", "Accept": "application/json",
            "Content-Length": str(len(data)), **(headers or {})}
    if signer is not None:
        hdrs[auth.AUTH_HEADER] = signer.header(method, path, data)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        raise ControllerUnreachable(f"{MSG_CONNECT} {host}:{port}: "
                                    f"{e.strerror if isinstance(e, OSError) and e.strerror else e}"
                                    ) from None
    finally:
        conn.close()
    try:
        reply = json.loads(raw) if raw else {}
    except ValueError:
        raise ControllerError(f"controller at {addr} answered HTTP {status} with non-JSON"
                              ) from None
    if 200 <= status < 300:
        return reply
    msg = reply.get("error", f"HTTP {status}") if isinstance(reply, dict) else f"HTTP {status}"
    if status == 400:
        raise BadRequest(msg, reply.get("field", "") if isinstance(reply, dict) else "")
    if status == 401:
        raise Unauthorized(msg)
    if status == 403:
        raise Forbidden(msg)
    if status == 404:
        raise NotFound(msg)
    if status == 409:
        if msg.startswith("node "):
            raise Conflict(msg)
        raise AllocationError(msg)
    raise ControllerError(f"controller at {addr}: HTTP {status}: {msg}")


def get_version(addr: str, timeout: float = DEFAULT_TIMEOUT) -> VersionInfo:
    d = request(addr, "GET", "/version", timeout=timeout)
    try:
        return VersionInfo(str(d["data_version"]), str(d["api_version"]))
    except (KeyError, TypeError):
        raise ControllerError(f"{addr} did not answer version information") from None


def allocate(addr: str, req: AllocationRequest, timeout: float = DEFAULT_TIMEOUT,
             signer: Signer | None = None) -> Allocation:
    """Ask for vGPUs (``signer``: the client key); ``AllocationError`` says why none could be
    granted. The answer's ``secret`` is needed to renew and release."""
    return Allocation.from_json(request(addr, "POST", "/api/v1/allocations", req.to_json(),
                                        timeout, signer))


def _holder(secret: str | None) -> dict[str, str]:
    return {auth.ALLOCATION_SECRET_HEADER: secret} if secret else {}


def renew(addr: str, allocation_id: str, timeout: float = DEFAULT_TIMEOUT,
          secret: str | None = None, signer: Signer | None = None) -> Allocation:
    """Extend the lease (fresh tokens included); ``NotFound`` once it was released/expired.
    Needs the allocation's ``secret`` (or an API-key ``signer``)."""
    return Allocation.from_json(request(addr, "POST", f"/api/v1/allocations/{_q(allocation_id)}"
                                        "/renew", {}, timeout, signer, _holder(secret)))


def release(addr: str, allocation_id: str, timeout: float = DEFAULT_TIMEOUT,
            secret: str | None = None, signer: Signer | None = None) -> None:
    """Give the vGPUs back; ``NotFound`` if already released or expired. Needs the allocation's
    ``secret`` (or an API-key ``signer``)."""
    request(addr, "DELETE", f"/api/v1/allocations/{_q(allocation_id)}", timeout=timeout,
            signer=signer, headers=_holder(secret))


def session_ended(addr: str, allocation_id: str, node: str, signer: Signer,
                  timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Tell the controller that this node's session of the allocation ended (a server's call,
    signed with the API key); True if that released it. ``NotFound`` if it was gone."""
    r = request(addr, "POST", f"/api/v1/allocations/{_q(allocation_id)}/ended", {"node": node}, timeout, signer)
    return bool(r.get("released")) if isinstance(r, dict) else False


def _node_secret(secret: str | None) -> dict[str, str]:
    return {auth.NODE_SECRET_HEADER: secret} if secret else {}


def register(addr: str, node: NodeInfo, gpus: Sequence[GpuInfo], timeout: float = DEFAULT_TIMEOUT,
             signer: Signer | None = None, node_secret: str | None = None) -> dict[str, Any]:
    """Register (or refresh) a server and its GPUs; the whole answer (``heartbeat_timeout``,
    ``node_secret`` when a new one was issued)."""
    return dict(request(addr, "POST", "/api/v1/nodes",
                        {"node_id": node.node_id, "address": node.address, "kind": node.kind,
                         "gpus": [g.to_json() for g in gpus]}, timeout, signer,
                        _node_secret(node_secret)))


def register_node(addr: str, node: NodeInfo, gpus: Sequence[GpuInfo],
                  timeout: float = DEFAULT_TIMEOUT, signer: Signer | None = None) -> float:
    """Register (or refresh) a server and its GPUs. Returns the controller's heartbeat
    timeout in seconds: heartbeat well within it."""
    return float(register(addr, node, gpus, timeout, signer).get("heartbeat_timeout", 15.0))


def heartbeat(addr: str, node_id: str, timeout: float = DEFAULT_TIMEOUT,
              signer: Signer | None = None, node_secret: str | None = None) -> list[str]:
    """``NotFound`` means the controller forgot the node: register again. Returns the ids of
    released allocations whose tokens this node must refuse."""
    d = request(addr, "POST", f"/api/v1/nodes/{_q(node_id)}/heartbeat", {}, timeout, signer,
                _node_secret(node_secret))
    revoked = d.get("revoked", []) if isinstance(d, dict) else []
    return [str(a) for a in revoked] if isinstance(revoked, list) else []


def deregister_node(addr: str, node_id: str, timeout: float = DEFAULT_TIMEOUT,
                    signer: Signer | None = None) -> None:
    """Remove the node now (clean shutdown); its allocations are released."""
    request(addr, "DELETE", f"/api/v1/nodes/{_q(node_id)}", timeout=timeout, signer=signer)


def summary(addr: str, timeout: float = DEFAULT_TIMEOUT) -> Summary:
    d = request(addr, "GET", "/api/v1/summary", timeout=timeout)
    try:
        return Summary(**{k: int(d[k]) for k in Summary.__dataclass_fields__})
    except (KeyError, TypeError, ValueError):
        raise ControllerError(f"{addr} answered a malformed summary") from None


def nodes(addr: str, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return list(request(addr, "GET", "/api/v1/nodes", timeout=timeout)["nodes"])


def tasks(addr: str, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    return list(request(addr, "GET", "/api/v1/tasks", timeout=timeout)["tasks"])


def _q(part: str) -> str:
    return quote(part, safe="")
