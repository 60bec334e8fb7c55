"""A guest on QEMU user-mode networking reaches the host (loopback services too) at .2 of its
network: attach gives it that as the server and controller host."""

from __future__ import annotations

from host_fakes import FakeIPRoute

from orion_virt.config import ServerConfig
from orion_virt.host.guestcfg import guest_config
from orion_virt.host.netaddr import user_net_host


def _dom(iface: str) -> str:
    return f"<domain type='qemu'><name>u</name><devices>{iface}</devices></domain>"


def test_user_net_host() -> None:
    assert user_net_host(_dom("<interface type='user'><model type='virtio'/></interface>")) == "10.0.2.2"
    assert user_net_host(_dom("<interface type='user'><ip family='ipv4' address='192.168.50.0' prefix='24'/>"
                              "</interface>")) == "192.168.50.2"
    assert user_net_host(_dom("")) is None


def test_attach_config_for_a_user_net_guest(fake_ipr: FakeIPRoute) -> None:
    cfg = ServerConfig(bind_addr="127.0.0.1", listen_port=9960, controller_addr="127.0.0.1:9123")
    got = guest_config(cfg, _dom("<interface type='user'/>"), fake_ipr)
    assert got == {"server_addr": "10.0.2.2:9960", "controller_addr": "10.0.2.2:9123"}
