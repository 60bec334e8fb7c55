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


def cli_env(tmp_path: Any) -> dict[str, Any]:
    """A libvirt test-driver connection with domain vm1 and a server.conf for ``orion-virt``
    (skips where libvirt-python is not installed)."""
    import pytest

    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    conn = libvirt.open(f"test://{node}")
    conn.defineXML(make_domain("vm1"))
    shm = tmp_path / "shm"
    shm.mkdir()
    conf = tmp_path / "server.conf"
    conf.write_text(f"[server]\nenable_kvm = true\n[server-shm]\nshm_path_base = {shm}\n"
                    "shm_buffer_size = 32M\n")
    return {"conn": conn, "conf": str(conf), "tmp": tmp_path}


def run_cli(env: dict[str, Any], *args: str) -> Any:
    """``orion-virt --config <env's conf> ARGS`` on env's connection (click's CliRunner)."""
    from click.testing import CliRunner

    from orion_virt.cli.orion_virt_cmd import _Ctx, main

    ctx = _Ctx("test:///x", None, connect=lambda uri: env["conn"])
    return CliRunner().invoke(main, ["--config", env["conf"], *args], obj=ctx)
