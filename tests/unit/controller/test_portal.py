"""The portal's truth: slot states from memory/ratio accounting and node health, owner/group/
cmdline escaped, node kinds, the utilisation ring; and the API's checks of the new fields."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from lxml import html as lhtml

from orion_virt.controller import client, portal
from orion_virt.controller.client import AllocationRequest, GpuInfo, NodeInfo
from orion_virt.controller.exceptions import BadRequest
from orion_virt.controller.model import CMDLINE_MAX, Gpu, PoolState, parse_registration
from orion_virt.controller.pool import Usage
from orion_virt.controller.samples import Samples
from orion_virt.controller.service import Controller, slot_states
from orion_virt.server.node_kind import detect
from tests.unit.controller.ctl_server import Clock, serve

GPU = Gpu(0, "GPU-0", "V100", 16384, 4)


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[tuple[str, Controller, Clock]]:
    yield from serve(tmp_path)


def test_memory_fully_allocated_leaves_no_slot_free() -> None:
    full = Usage(slots={0: "a"}, memory_mib=16384, ratio=25)
    assert slot_states(GPU, full, up=True) == ["used", "unavailable", "unavailable", "unavailable"]
    compute = Usage(slots={2: "a"}, memory_mib=4096, ratio=100)
    assert slot_states(GPU, compute, up=True) == ["unavailable", "unavailable", "used",
                                                  "unavailable"]
    half = Usage(slots={1: "a"}, memory_mib=8192, ratio=25)
    assert slot_states(GPU, half, up=True) == ["free", "used", "free", "unavailable"]
    assert slot_states(GPU, Usage(), up=True) == ["free"] * 4


def test_down_node_shows_no_free_slot() -> None:
    assert slot_states(GPU, Usage(), up=False) == ["down"] * 4
    assert slot_states(GPU, Usage(slots={3: "a"}, memory_mib=10, ratio=1), up=False) == \
        ["down", "down", "down", "used"]


def _page(c: Controller) -> lhtml.HtmlElement:
    return lhtml.fromstring(portal.render(c))


def test_portal_slots_owner_cmdline_and_kind(ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    client.register(addr, NodeInfo("box:0.0.0.0:9960", "127.0.0.1:9960", "host"),
                    [GpuInfo(0, "GPU-0", "V100", 16384, 4)])
    client.register(addr, NodeInfo("guest:0.0.0.0:9960", "10.0.0.2:9960", "vm"),
                    [GpuInfo(0, "GPU-9", "T4", 16384, 2)])
    evil = "<script>alert(1)</script>&"
    client.allocate(addr, AllocationRequest(1, gmem_mib=16384, group_id="g<1>", owner=evil,
                                            cmdline=f"python train.py --tag '{evil}'"))
    doc = _page(c)
    assert not doc.xpath("//script"), "client text must never become markup"
    text = doc.text_content()
    assert evil in text and "g<1>" in text and f"python train.py --tag '{evil}'" in text
    box = doc.xpath("//h3[@data-node='box:0.0.0.0:9960']")[0]
    assert box.xpath(".//span[@class='kind']")[0].text == "host"
    guest = doc.xpath("//h3[@data-node='guest:0.0.0.0:9960']")[0]
    assert guest.xpath(".//span[@class='kind']")[0].text == "VM"
    states = [d.get("data-state") for d in
              box.getnext().xpath(".//div[@data-state]")]
    assert states == ["used", "unavailable", "unavailable", "unavailable"]
    clock.t += 20  # guest misses its heartbeats; box heartbeats
    client.heartbeat(addr, "box:0.0.0.0:9960")
    guest = _page(c).xpath("//h3[@data-node='guest:0.0.0.0:9960']")[0]
    assert [d.get("data-state") for d in guest.getnext().xpath(".//div[@data-state]")
            ] == ["down", "down"]
    assert guest.xpath(".//span[@class='down']")[0].text == "down"


def test_utilisation_graph_from_the_ring(ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    client.register(addr, NodeInfo("box", "127.0.0.1:9960"), [GpuInfo(0, "G", "V100", 16384, 4)])
    assert c.reap() is not None
    clock.t += 60
    client.heartbeat(addr, "box")
    client.allocate(addr, AllocationRequest(2))
    c.reap()
    svg = _page(c).xpath("//svg[@class='util']")[0]
    assert svg.get("data-samples") == "3"  # two taken by the reaper, the last one now
    pts = svg.xpath("./polyline[@class='memory']")[0].get("points").split()
    ys = [float(p.split(",")[1]) for p in pts]
    assert ys[0] == 60.0 and ys[-1] == 30.0  # empty at first, half the memory now


def test_ring_is_bounded_and_forgets_gone_gpus() -> None:
    from orion_virt.controller.model import Node

    s = Samples(interval=30, window=3600)
    st = PoolState(nodes={"n": Node("n", "a:1", (GPU,), 0.0)})
    taken = sum(s.record(t * 10.0, st) for t in range(10_000))
    assert taken == 10_000 // 3 + 1
    assert len(s.series("n", 0, 99_990)) == 121  # an hour at 30 s, both ends included
    st.nodes.clear()
    s.record(200_000, st)
    assert s.series("n", 0, 200_000) == []
    with pytest.raises(ValueError, match="interval"):
        Samples(interval=0)


def test_api_checks_owner_cmdline_and_kind(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    client.register_node(addr, NodeInfo("box", "127.0.0.1:9960"), [GpuInfo(0, "G", "V", 16384)])
    with pytest.raises(BadRequest, match="'cmdline' must be at most 1000"):
        client.allocate(addr, AllocationRequest(1, cmdline="x" * (CMDLINE_MAX + 1)))
    with pytest.raises(BadRequest, match="'owner' must be printable"):
        client.allocate(addr, AllocationRequest(1, owner="a\nb"))
    with pytest.raises(BadRequest, match="'kind' must be one of host, vm, container"):
        parse_registration({"node_id": "n", "address": "a:1", "gpus": [], "kind": "pod"}, 4, 0)


def test_node_kind_markers(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor: 0\nflags\t\t: fpu vme\n")
    assert detect(tmp_path) == "host"
    (tmp_path / "proc/cpuinfo").write_text("flags\t\t: fpu vme hypervisor lahf_lm\n")
    assert detect(tmp_path) == "vm"
    (tmp_path / ".dockerenv").write_text("")
    assert detect(tmp_path) == "container"
