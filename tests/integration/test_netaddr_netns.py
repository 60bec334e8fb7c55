"""bind_addr discovery against real netlink, inside network namespaces this test creates.

Builds, in a fresh namespace: a bridge with the VM network's gateway address (plus a secondary
address), a veth pair (the 'VM' side plugged into the bridge), and a second veth for bind_net
(dummy interfaces need a kernel module CI may lack). All of it lives in the namespace, which is
deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Iterator

import pytest

from orion_virt.config import ServerConfig
from orion_virt.errors import HostError
from orion_virt.host.guestcfg import guest_config
from orion_virt.host.netaddr import addr_of_interface, gateway_for_domain, ipv4_addresses

pytestmark = pytest.mark.integration


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' command not found")
    ns = f"orion-t-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", ns)
    try:
        for cmd in (
            ["link", "add", "virbr-t", "type", "bridge"],
            ["addr", "add", "10.231.0.1/24", "dev", "virbr-t"],
            ["addr", "add", "10.231.0.9/24", "dev", "virbr-t"],
            ["link", "add", "vnet-t0", "type", "veth", "peer", "name", "vm-t0"],
            ["link", "set", "vnet-t0", "master", "virbr-t"],
            ["link", "set", "vnet-t0", "up"],
            ["link", "set", "virbr-t", "up"],
            ["link", "add", "br-empty", "type", "bridge"],
            ["link", "add", "data0", "type", "veth", "peer", "name", "data0-peer"],
            ["addr", "add", "10.232.5.7/16", "dev", "data0"],
            ["link", "set", "data0", "up"],
        ):
            _ip("-n", ns, *cmd)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def ipr(netns: str) -> Iterator[object]:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) as ipr:
        yield ipr


DOMAIN = """<domain type='qemu'><name>ubuntu-client0</name><devices>
  <interface type='bridge'><source bridge='br-empty'/></interface>
  <interface type='network'><source network='vmnet'/></interface>
</devices></domain>"""


def test_interface_addresses(ipr: object) -> None:
    assert ipv4_addresses("virbr-t", ipr) == ["10.231.0.1", "10.231.0.9"]
    assert addr_of_interface("virbr-t", ipr) == "10.231.0.1"
    assert addr_of_interface("data0", ipr) == "10.232.5.7"
    with pytest.raises(HostError, match="'br-empty' has no IPv4"):
        addr_of_interface("br-empty", ipr)
    with pytest.raises(HostError, match="'missing0' does not exist"):
        addr_of_interface("missing0", ipr)


def test_gateway_for_domain(ipr: object) -> None:
    assert gateway_for_domain(DOMAIN, ipr, {"vmnet": "virbr-t"}) == "10.231.0.1"
    live = DOMAIN.replace("network='vmnet'", "network='vmnet' bridge='virbr-t'")
    assert gateway_for_domain(live, ipr) == "10.231.0.1"
    with pytest.raises(HostError, match="'ubuntu-client0'.*br-empty"):
        gateway_for_domain(DOMAIN, ipr)


def test_guest_config_in_namespace(ipr: object) -> None:
    cfg = ServerConfig(controller_addr="127.0.0.1:9123")
    assert guest_config(cfg, DOMAIN, ipr, {"vmnet": "virbr-t"}) == {
        "server_addr": "10.231.0.1:9960", "controller_addr": "10.231.0.1:9123"}
    by_net = ServerConfig(bind_addr="", bind_net="data0")
    assert guest_config(by_net, DOMAIN, ipr)["server_addr"] == "10.232.5.7:9960"
