"""The addresses a guest needs, as written into its fw_cfg entry: ``server_addr`` (oriond's
data plane, HOST:PORT) and ``controller_addr`` (HOST:PORT).

Host part of ``server_addr``: the address of ``bind_net`` if set; else ``bind_addr`` if it is
reachable from a guest (not loopback, not 0.0.0.0); else the gateway of the domain's network.
``controller_addr``: the configured one (server.conf ``[controller] controller_addr``), with a
loopback/unspecified host replaced by the server host (the seeds' controller listens on
0.0.0.0:9123 and guests use the gateway); absent when none is configured, so the guest's client
runs in direct mode unless its own client.conf or environment names a controller.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Mapping

from ..config import ServerConfig
from ..errors import HostError
from .netaddr import addr_of_interface, gateway_for_domain


def _local_only(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("localhost", "")
    return ip.is_loopback or ip.is_unspecified


def _hostport(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_host(cfg: ServerConfig, domain_xml: str, ipr: Any,
                network_bridges: Mapping[str, str] | None = None) -> str:
    """The host the guest reaches oriond at. Raises HostError if bind_net is missing or no
    address reachable from the guest can be found."""
    if cfg.bind_net:
        return addr_of_interface(cfg.bind_net, ipr)
    if cfg.bind_addr and not _local_only(cfg.bind_addr):
        return cfg.bind_addr
    return gateway_for_domain(domain_xml, ipr, network_bridges)


def guest_config(cfg: ServerConfig, domain_xml: str, ipr: Any,
                 network_bridges: Mapping[str, str] | None = None,
                 warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """``{"server_addr": ...}`` plus ``controller_addr`` when one is configured, for the guest
    of ``domain_xml``.

    When no guest-reachable host can be found (a domain without network, as for shm-only
    guests) the configured addresses are used as they are and ``warn`` is told why; the
    ivshmem data path does not need them.
    """
    try:
        host = server_host(cfg, domain_xml, ipr, network_bridges)
    except HostError as e:
        if cfg.bind_net:
            raise
        host = cfg.bind_addr or "127.0.0.1"
        if warn is not None:
            warn(f"{e}; the guest gets server_addr {host} (reachable only over shared memory)")
    out = {"server_addr": _hostport(host, cfg.listen_port)}
    ctrl = cfg.controller_addr
    if ctrl:
        chost, _, cport = ctrl.rpartition(":")
        if _local_only(chost) and not _local_only(host):
            chost = host
        out["controller_addr"] = _hostport(chost.strip("[]"), cport)
    return out
