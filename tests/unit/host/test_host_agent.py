"""HostAgent against libvirt's in-process test driver (real libvirt XML parsing, no daemon)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from host_fakes import FakeIPRoute, make_domain

from orion_virt.config import ServerConfig
from orion_virt.errors import ConfigError, HostError
from orion_virt.host import domain_xml as dx
from orion_virt.host.agent import HostAgent
from orion_virt.host.guestcfg import guest_config
from orion_virt.host.netaddr import domain_bridges, gateway_for_domain

MIB = 1 << 20


@pytest.fixture
def cfg(tmp_path: Path) -> ServerConfig:
    shm = tmp_path / "shm"
    shm.mkdir()
    return ServerConfig(shm_path_base=str(shm), shm_buffer_size=64 * MIB, enable_kvm=True,
                        controller_addr="127.0.0.1:9123")


@pytest.fixture
def agent(libvirt_conn: Any, cfg: ServerConfig, fake_ipr: FakeIPRoute) -> HostAgent:
    logs: list[str] = []
    a = HostAgent(libvirt_conn, cfg, ipr_factory=lambda: fake_ipr, log=logs.append)
    a.logs = logs  # type: ignore[attr-defined]
    return a


def inactive(conn: Any, name: str) -> str:
    return conn.lookupByName(name).XMLDesc(2)


def test_attach_shut_off_domain(agent: HostAgent, libvirt_conn: Any) -> None:
    libvirt_conn.defineXML(make_domain("vm1", network=True))
    r = agent.attach("vm1")
    assert r.changed and not r.active and not r.pending
    assert (r.index, r.size_bytes) == (0, 64 * MIB)
    assert r.config == {"server_addr": "10.99.0.1:9960", "controller_addr": "10.99.0.1:9123"}
    st = dx.orion_state(inactive(libvirt_conn, "vm1"))
    assert st is not None and st.intact and st.index == 0 and st.config == r.config
    assert "<shmem name='orionsock0'>" in inactive(libvirt_conn, "vm1")
    assert not agent.attach("vm1").changed


def test_index_choice_and_conflicts(agent: HostAgent, libvirt_conn: Any, cfg: ServerConfig) -> None:
    (Path(cfg.shm_path_base) / "orionsock0").write_bytes(b"")  # a container's device
    for n in ("a", "b", "c"):
        libvirt_conn.defineXML(make_domain(n))
    assert agent.attach("a").index == 1
    assert agent.attach("b").index == 2
    with pytest.raises(HostError, match=r"'c'.*index 1 .*domain 'a'"):
        agent.attach("c", index=1)
    assert agent.attach("c", index=7).index == 7
    assert agent.attach("a").index == 1  # keeps its index
    assert agent.attach("a", index=3).index == 3
    assert agent.detach("a") == (True, False)
    assert agent.detach("a") == (False, False)
    assert dx.orion_state(inactive(libvirt_conn, "a")) is None


def test_running_domain_needs_cold_boot(agent: HostAgent, libvirt_conn: Any) -> None:
    libvirt_conn.defineXML(make_domain("run"))
    dom = libvirt_conn.lookupByName("run")
    dom.create()
    r = agent.attach("run")
    assert r.active and r.pending
    st = agent.status("run")
    assert st.pending and st.defined is not None and st.live is None
    assert any("cold boot" in line for line in st.describe())
    dom.destroy()
    dom.create()
    st = agent.status("run")
    assert not st.pending and st.live is not None and st.live.index == r.index
    changed, pending = agent.detach("run")
    assert changed and pending
    assert agent.status("run").as_dict()["pending"] is True


def test_errors_name_the_domain(agent: HostAgent, libvirt_conn: Any) -> None:
    with pytest.raises(HostError, match="'nosuch'"):
        agent.attach("nosuch")
    with pytest.raises(HostError, match="'nosuch'"):
        agent.status("nosuch")
    libvirt_conn.createXML(make_domain("transient"), 0)
    with pytest.raises(HostError, match="'transient' is transient"):
        agent.attach("transient")
    st = agent.status("transient")
    assert not st.persistent and "transient" in " ".join(st.describe())


def test_bad_size_is_config_error(agent: HostAgent, libvirt_conn: Any) -> None:
    libvirt_conn.defineXML(make_domain("vm"))
    agent.config = dataclasses.replace(agent.config, shm_buffer_size=96 * MIB)
    with pytest.raises(ConfigError, match="'vm'.*power of two"):
        agent.attach("vm")


def test_list(agent: HostAgent, libvirt_conn: Any) -> None:
    for n in ("z", "y"):
        libvirt_conn.defineXML(make_domain(n))
    agent.attach("z")
    rows = agent.list()
    assert [s.domain for s in rows] == ["y", "z"]
    assert rows[0].defined is None and rows[1].defined is not None


def test_watch_attaches_new_domains_only(agent: HostAgent, libvirt_conn: Any) -> None:
    libvirt_conn.defineXML(make_domain("old"))
    stop = threading.Event()
    t = threading.Thread(target=agent.watch, args=(stop, 0.05))
    t.start()
    try:
        time.sleep(0.1)
        libvirt_conn.defineXML(make_domain("new"))
        deadline = time.monotonic() + 5
        while dx.orion_state(inactive(libvirt_conn, "new")) is None:
            assert time.monotonic() < deadline, agent.logs  # type: ignore[attr-defined]
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(5)
    assert dx.orion_state(inactive(libvirt_conn, "old")) is None
    assert any("attached new" in m for m in agent.logs)  # type: ignore[attr-defined]


def test_watch_needs_enable_kvm(agent: HostAgent) -> None:
    agent.config = dataclasses.replace(agent.config, enable_kvm=False)
    with pytest.raises(ConfigError, match="enable_kvm"):
        agent.watch(max_cycles=1)


def test_guest_config_rules(fake_ipr: FakeIPRoute) -> None:
    net = make_domain("n", network=True)
    bridges = {"default": "virbr-orion"}
    base = ServerConfig(controller_addr="127.0.0.1:9123")
    assert guest_config(base, net, fake_ipr, bridges) == {
        "server_addr": "10.99.0.1:9960", "controller_addr": "10.99.0.1:9123"}
    fixed = dataclasses.replace(base, bind_addr="33.31.0.1", listen_port=9961,
                                controller_addr="33.31.0.2:9123")
    assert guest_config(fixed, net, fake_ipr, bridges) == {
        "server_addr": "33.31.0.1:9961", "controller_addr": "33.31.0.2:9123"}
    by_net = dataclasses.replace(base, bind_addr="", bind_net="eth9", controller_addr="")
    assert guest_config(by_net, net, fake_ipr) == {"server_addr": "10.5.0.7:9960"}  # none configured
    with pytest.raises(HostError, match="'nope' does not exist"):
        guest_config(dataclasses.replace(by_net, bind_net="nope"), net, fake_ipr)
    warnings: list[str] = []
    got = guest_config(base, make_domain("isolated"), fake_ipr, warn=warnings.append)
    assert got["server_addr"] == "127.0.0.1:9960" and "no <interface>" in warnings[0]


def test_gateway_lookup(fake_ipr: FakeIPRoute) -> None:
    two = make_domain("two", extra=(
        "<interface type='bridge'><source bridge='br0'/></interface>"
        "<interface type='network'><source network='default' bridge='virbr-orion'/></interface>"
        "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>"))
    assert domain_bridges(two) == ["br0", "virbr-orion"]
    assert gateway_for_domain(two, fake_ipr) == "10.99.0.1"
    only_br0 = make_domain("x", extra="<interface type='bridge'><source bridge='br0'/></interface>")
    with pytest.raises(HostError, match="'x'.*br0.*no IPv4"):
        gateway_for_domain(only_br0, fake_ipr)
