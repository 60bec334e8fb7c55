"""What the client asks for and gets: vGPUs from the controller, or a direct grant.

With ``ORION_CONTROLLER``/``controller_addr`` set, the controller allocates the vGPUs (exclusive,
leased) and issues a token per node that the server checks; the client renews the lease every
``lease_seconds / 3`` (:class:`Renewer`) and releases it at exit. Without it ("direct mode", for
a single host before a controller is set up) the client names its server with ``ORION_SERVER``
(default 127.0.0.1:9960) and the server grants what the HELLO asks for within its own GPUs.

With ``ORION_CROSS_NODE=1`` (and ``ORION_RATIO=100``) the vGPUs may span several nodes: the
grant then lists one :class:`NodePart` per node (its server, its token, its vGPUs) and the
runtime opens a session with each (see ``multinode``).

Messages follow the seeds: an unreachable controller prints ``Could not connect to server`` and
``Fail to get version information from Orion Controller.``; a refused request prints the reason
(the exit line is then ``Client exits without allocation ID``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ClientConfig
from ..controller.model import CMDLINE_MAX, OWNER_MAX
from ..errors import AllocationError, ConfigError, ControllerError


@dataclass(frozen=True)
class Grant:
    allocation_id: str
    vgpu_count: int
    gmem_mib: int
    ratio: int
    token: str = ""
    server_addr: str | None = None
    from_controller: bool = False
    node_id: str = ""
    lease_seconds: float = 0.0
    vgpus: tuple[Any, ...] = field(default=(), compare=False)
    parts: tuple[NodePart, ...] = field(default=(), compare=False)
    """one per node of a controller allocation, in the order of their first vGPU"""
    secret: str = field(default="", compare=False, repr=False)
    """the allocation's secret: only its holder can renew and release it"""


@dataclass(frozen=True)
class NodePart:
    """The vGPUs of an allocation on one node: where to connect and the token to present."""

    node_id: str
    server_addr: str
    token: str
    vgpus: tuple[Any, ...]
    from_controller: bool = True

    @property
    def gmem_mib(self) -> int:
        return self.vgpus[0].memory_mib if self.vgpus else 0


def _local_only(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("localhost", "")
    return ip.is_loopback or ip.is_unspecified


def server_for(cfg: ClientConfig, registered: str, several: bool = False) -> str:
    """The TCP address to use for a node registered as ``registered``: that address, unless it
    is loopback/unspecified (reachable only on the server's host) and this client names its
    own view of the server (``ORION_SERVER``/``server_addr``, e.g. a VM's gateway). With
    ``several`` nodes to reach, only the host of that view is used, with each node's own port."""
    host, _, port = registered.rpartition(":")
    if _local_only(host) and cfg.server_addr:
        if several:
            return f"{cfg.server_addr.rpartition(':')[0]}:{port}"
        return cfg.server_addr
    return registered


def signer(cfg: ClientConfig, log: logging.Logger | None = None) -> Any:
    """The client key (``client_key_file``) as a request signer; None when the file is absent
    (the controller then refuses the allocation, saying which key it needs)."""
    import os

    from ..controller import client as ctl

    path = cfg.client_key_file
    if not path or not os.path.exists(path):
        from ..hostagent_addrs import ORIGIN, read_fwcfg

        agent = read_fwcfg(os.environ, lambda v: v)
        if agent.client_key is not None:
            if log is not None:
                log.info("client key from %s (no %s)", ORIGIN, path)
            return ctl.Signer("client", agent.client_key)
        if log is not None:
            log.info("no client key at %s: the allocation request is not signed", path)
        return None
    return ctl.load_signer("client", path)


def owner() -> str:
    """``user@host`` of this process, as the portal's owner column shows it."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return _bounded(f"{user}@{socket.gethostname()}", OWNER_MAX)


def cmdline() -> str:
    """This process's command line (``/proc/self/cmdline``, arguments joined by spaces, control
    characters as ``?``), cut to the controller's bound."""
    raw = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0")
    return _bounded(raw.replace(b"\0", b" ").decode(errors="replace"), CMDLINE_MAX)


def _bounded(text: str, limit: int) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def obtain(cfg: ClientConfig, log: logging.Logger) -> Grant:
    """Raises ConfigError without ORION_VGPU, ControllerError/AllocationError from the controller."""
    if not cfg.vgpu:
        raise ConfigError("ORION_VGPU is not set: export ORION_VGPU=<number of vGPUs this application needs>")
    if cfg.cross_node and cfg.ratio not in (None, 100):
        raise ConfigError("ORION_CROSS_NODE=1 requires ORION_RATIO=100")
    if not cfg.controller_addr:
        grant = Grant(str(uuid.uuid4()), cfg.vgpu, cfg.gmem_mib or 0, cfg.ratio or 0)
        log.info("direct mode (no controller configured): asking oriond for %d vGPU(s), %s MiB, %s%%",
                 grant.vgpu_count, grant.gmem_mib or "default", grant.ratio or "default")
        return grant
    from ..controller import client as ctl  # stdlib-only HTTP client
    from ..controller.exceptions import ControllerUnreachable

    addr = cfg.controller_addr
    where = f"Orion Controller {addr} (from {cfg.origin('controller_addr')})"
    try:
        version = ctl.get_version(addr)
    except ControllerUnreachable as e:
        log.error("%s unreachable: %s", where, e)
        raise ControllerError(f"{ctl.MSG_CONNECT}\n{ctl.MSG_VERSION}\n"
                              f"{where}: {str(e).rpartition(': ')[2]}") from None
    except ControllerError as e:
        log.error("%s answered no version: %s", where, e)
        raise ControllerError(f"{ctl.MSG_VERSION}\n{where}: {e}") from None
    log.info("%s: %s", where, version)
    req = ctl.AllocationRequest(vgpu=cfg.vgpu, gmem_mib=cfg.gmem_mib, ratio=cfg.ratio,
                                cross_node=cfg.cross_node, group_id=cfg.group_id,
                                owner=owner(), cmdline=cmdline())
    try:
        alloc = ctl.allocate(addr, req, signer=signer(cfg, log))
    except AllocationError as e:
        log.error("allocation refused: %s", e)
        raise AllocationError(f"Orion Controller {addr} refused {cfg.vgpu} vGPU(s): {e}") from None
    except ControllerUnreachable as e:
        log.error("allocation failed: %s", e)
        raise ControllerError(f"{ctl.MSG_CONNECT}\n{where}: allocation failed: {e}") from None
    except ControllerError as e:
        log.error("allocation failed: %s", e)
        raise ControllerError(f"Orion Controller {addr} could not allocate {cfg.vgpu} vGPU(s): {e}"
                              ) from None
    nodes = list(dict.fromkeys(v.node_id for v in alloc.vgpus))
    log.info("allocation %s: lease %.0fs; %s", alloc.allocation_id, alloc.lease_seconds,
             ", ".join(f"vGPU {v.index}: {v.node_id} ({v.server}) GPU {v.gpu_index} slot "
                       f"{v.slot} {v.memory_mib} MiB {v.ratio}%" for v in alloc.vgpus))
    if not nodes:
        _release(addr, alloc.allocation_id, log, alloc.secret)
        raise AllocationError("the Orion Controller allocated no vGPU")
    parts = []
    for n in nodes:
        vs = tuple(v for v in alloc.vgpus if v.node_id == n)
        server = server_for(cfg, vs[0].server, several=len(nodes) > 1)
        if server != vs[0].server:
            log.info("node %s registered as %s (local to its host); using %s", n, vs[0].server,
                     server)
        parts.append(NodePart(n, server, alloc.token_for(n), vs))
    if len(parts) > 1:
        log.info("cross-node allocation: %s", ", ".join(
            f"{p.node_id} ({p.server_addr}): {len(p.vgpus)} vGPU(s)" for p in parts))
    v0, p0 = alloc.vgpus[0], parts[0]
    return Grant(alloc.allocation_id, len(alloc.vgpus), v0.memory_mib, v0.ratio, p0.token,
                 p0.server_addr, True, v0.node_id, alloc.lease_seconds, alloc.vgpus, tuple(parts),
                 alloc.secret)


def _release(addr: str, allocation_id: str, log: logging.Logger, secret: str = "") -> bool:
    from ..controller import client as ctl
    from ..controller.exceptions import NotFound

    try:
        ctl.release(addr, allocation_id, secret=secret)
        log.info("allocation %s released", allocation_id)
        return True
    except NotFound:
        log.info("allocation %s was already released (its session ended at the server, its lease "
                 "expired or its node went down)", allocation_id)
    except ControllerError as e:
        log.warning("could not release allocation %s (its lease will expire): %s", allocation_id, e)
    return False


def release(cfg: ClientConfig, grant: object, log: logging.Logger) -> None:
    """Give a controller allocation back; errors are logged (the lease expires anyway)."""
    if not isinstance(grant, Grant) or not grant.from_controller:
        return
    _release(cfg.controller_addr, grant.allocation_id, log, grant.secret)


class Renewer:
    """Renews a controller lease every ``lease_seconds / 3`` in a daemon thread.

    An unreachable controller is retried at the next tick (logged once per outage); when the
    controller answers that the allocation is gone (expired or its node went down), renewing
    stops and ``on_lost`` is called once with the reason.
    """

    def __init__(self, cfg: ClientConfig, grant: Grant, log: logging.Logger,
                 on_lost: Callable[[str], None] | None = None,
                 interval: float | None = None,
                 on_renewed: Callable[[Any], None] | None = None) -> None:
        self.addr = cfg.controller_addr
        self.grant = grant
        self.log = log
        self.on_lost = on_lost
        self.on_renewed = on_renewed
        self.interval = interval if interval is not None else max(0.2, grant.lease_seconds / 3)
        self.renewals = 0
        self.lost: str | None = None
        self._failing = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="orion-lease", daemon=True)

    def start(self) -> Renewer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.renew_once():
                return

    def renew_once(self) -> bool:
        """One renewal; False once the allocation is known to be gone."""
        from ..controller import client as ctl
        from ..controller.exceptions import NotFound

        try:
            renewed = ctl.renew(self.addr, self.grant.allocation_id, secret=self.grant.secret)
        except NotFound as e:
            self.lost = str(e)
            self.log.error("allocation %s lost: %s", self.grant.allocation_id, e)
            if self.on_lost is not None:
                self.on_lost(str(e))
            return False
        except ControllerError as e:
            if not self._failing:
                self.log.warning("could not renew allocation %s (retrying every %.1fs): %s",
                                 self.grant.allocation_id, self.interval, e)
            self._failing = True
            return True
        if self._failing:
            self.log.info("lease renewal of %s works again", self.grant.allocation_id)
        self._failing = False
        self.renewals += 1
        if self.on_renewed is not None:
            self.on_renewed(renewed)
        return True
