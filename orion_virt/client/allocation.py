"""What the client asks for and gets: vGPUs from the controller, or a direct grant.

With ``ORION_CONTROLLER``/``controller_addr`` set, the controller allocates the vGPUs and issues a
token the server checks. Without it ("direct mode", for a single host before a controller is set
up) the client names its server with ``ORION_SERVER`` (default 127.0.0.1:9960) and the server
grants what the HELLO asks for within its own GPUs.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from ..config import ClientConfig
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

    try:
        ctl.get_version(cfg.controller_addr)
    except ControllerError as e:
        log.error("controller %s unreachable: %s", cfg.controller_addr, e)
        raise ControllerError(
            f"Could not connect to server\nFail to get version information from Orion Controller. ({e})"
        ) from None
    try:
        alloc = ctl.allocate(cfg.controller_addr, ctl.AllocationRequest(
            vgpu=cfg.vgpu, gmem_mib=cfg.gmem_mib, ratio=cfg.ratio, cross_node=cfg.cross_node,
            group_id=cfg.group_id))
    except AllocationError as e:
        log.error("allocation refused: %s", e)
        raise
    log.info("allocation %s: %s", alloc.allocation_id, alloc)
    return Grant(alloc.allocation_id, cfg.vgpu, alloc.gmem_mib, alloc.ratio, alloc.token,
                 alloc.server_addr, True)


def release(cfg: ClientConfig, grant: object, log: logging.Logger) -> None:
    """Give a controller allocation back; errors are logged (the lease expires anyway)."""
    if not isinstance(grant, Grant) or not grant.from_controller:
        return
    from ..controller import client as ctl

    try:
        ctl.release(cfg.controller_addr, grant.allocation_id)
    except ControllerError as e:
        log.warning("could not release allocation %s (its lease will expire): %s", grant.allocation_id, e)
