"""Fakes and builders shared by the host tests (imported by conftest and test modules)."""

from __future__ import annotations

from typing import Any

NODE_XML = """<node>
  <network>
    <name>default</name>
    <bridge name='virbr-orion'/>
    <forward/>
    <ip address='10.99.0.1' netmask='255.255.255.0'/>
  </network>
</node>
"""


class FakeMsg(dict):
    def get_attr(self, name: str) -> Any:
        return dict(self.get("attrs", [])).get(name)


class FakeIPRoute:
    """Answers link_lookup/get_addr like pyroute2 for ``{ifname: [(addr, flags), ...]}``."""

    def __init__(self, addrs: dict[str, list[tuple[str, int]]]) -> None:
        self.names = list(addrs)
        self.addrs = addrs

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.names.index(ifname) + 1] if ifname in self.addrs else []

    def get_addr(self, family: int, index: int) -> list[FakeMsg]:
        name = self.names[index - 1]
        return [FakeMsg(attrs=[("IFA_ADDRESS", a), ("IFA_LOCAL", a)], flags=f, scope=0)
                for a, f in self.addrs[name]]



def make_domain(name: str, *, network: bool = False, extra: str = "") -> str:
    iface = ("<interface type='network'><source network='default'/></interface>"
             if network else "")
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{iface}{extra}</devices></domain>")
