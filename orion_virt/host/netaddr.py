"""Data-plane address discovery over netlink (pyroute2); the IPRoute object is passed in.

``bind_addr`` for KVM guests is the gateway of the VM's virtual network, which is the host's
IPv4 address on the bridge the VM's ``<interface>`` is plugged into (seed scenario 2:
``virsh domifaddr`` shows 33.31.0.10/24, so ``bind_addr = 33.31.0.1``). ``bind_net`` names an
interface whose address is used instead. Both raise HostError naming what was looked for.
"""

from __future__ import annotations

import socket
from typing import Any, Mapping

from ..errors import HostError
from .domain_xml import parse_domain

IFA_F_SECONDARY = 0x01
RT_SCOPE_UNIVERSE = 0


def _attr(msg: Any, name: str) -> Any:
    get = getattr(msg, "get_attr", None)
    if get is not None:
        value = get(name)
        if value is not None:
            return value
    return msg.get(name) if hasattr(msg, "get") else None


def ipv4_addresses(name: str, ipr: Any) -> list[str]:
    """IPv4 addresses of interface ``name``, primary and global-scope first.

    Raises HostError if the interface does not exist.
    """
    try:
        idx = ipr.link_lookup(ifname=name)
    except Exception as e:  # pyroute2 raises NetlinkError and OSError subclasses
        raise HostError(f"interface {name!r}: netlink lookup failed: {e}") from None
    if not idx:
        raise HostError(f"interface {name!r} does not exist on this host")
    ranked: list[tuple[int, int, str]] = []
    for msg in ipr.get_addr(family=socket.AF_INET, index=idx[0]):
        addr = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
        if not addr:
            continue
        flags = _attr(msg, "IFA_FLAGS") or msg["flags"]
        secondary = 1 if flags & IFA_F_SECONDARY else 0
        nonglobal = 0 if msg["scope"] == RT_SCOPE_UNIVERSE else 1
        ranked.append((secondary, nonglobal, addr))
    return [a for _, _, a in sorted(ranked, key=lambda t: (t[0], t[1]))]


def addr_of_interface(name: str, ipr: Any) -> str:
    """The primary IPv4 address of interface ``name`` (the ``bind_net`` setting).

    Raises HostError if the interface is missing or has no IPv4 address.
    """
    addrs = ipv4_addresses(name, ipr)
    if not addrs:
        raise HostError(f"interface {name!r} has no IPv4 address")
    return addrs[0]


def domain_bridges(domain_xml: str, network_bridges: Mapping[str, str] | None = None) -> list[str]:
    """Host bridges the domain's interfaces attach to, in XML order, without repeats.

    ``type='bridge'`` gives ``<source bridge>``; ``type='network'`` gives the live XML's
    ``<source bridge>`` or else ``network_bridges[<source network>]`` (libvirt network name ->
    bridge name, looked up by the caller). Other interface types have no host-side address.
    """
    root = parse_domain(domain_xml)
    out: list[str] = []
    for iface in root.findall("devices/interface"):
        src = iface.find("source")
        if src is None:
            continue
        kind = iface.get("type")
        br = None
        if kind == "bridge":
            br = src.get("bridge")
        elif kind == "network":
            br = src.get("bridge") or (network_bridges or {}).get(src.get("network") or "")
        if br and br not in out:
            out.append(br)
    return out


def gateway_for_domain(domain_xml: str, ipr: Any,
                       network_bridges: Mapping[str, str] | None = None) -> str:
    """The host's IPv4 address on the first of the domain's bridges that has one.

    That address is the gateway of the VM's network and what the guest reaches oriond and the
    controller at. Without one, a user-mode ``<interface type='user'>`` gives ``user_net_host``.
    Raises HostError (naming the domain and each bridge tried) if none has one.
    """
    root = parse_domain(domain_xml)
    name = (root.findtext("name") or "?").strip()
    tried: list[str] = []
    for br in domain_bridges(domain_xml, network_bridges):
        try:
            return addr_of_interface(br, ipr)
        except HostError as e:
            tried.append(str(e))
    user = user_net_host(domain_xml)
    if user is not None:
        return user
    if not tried:
        raise HostError(
            f"domain {name!r}: no <interface> on a host bridge or libvirt network, so there is no "
            "gateway address; set bind_addr or bind_net in server.conf"
        )
    raise HostError(f"domain {name!r}: no gateway address found: {'; '.join(tried)}")


SLIRP_HOST = "10.0.2.2"


def user_net_host(domain_xml: str) -> str | None:
    """For a domain with a user-mode (QEMU slirp) ``<interface type='user'>``: the address at which
    the guest reaches the host, whose loopback services included (host .2 of the interface's
    ``<ip family='ipv4' address=... prefix=...>``, default 10.0.2.2); None without one."""
    import ipaddress

    for iface in parse_domain(domain_xml).findall("devices/interface"):
        if iface.get("type") != "user":
            continue
        for ip in iface.findall("ip"):
            if ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
                net = ipaddress.ip_network(f"{ip.get('address')}/{ip.get('prefix', '24')}", strict=False)
                return str(net.network_address + 2)
        return SLIRP_HOST
    return None
