"""HTTP API in-process on loopback, exercised through the stdlib client and the registrar."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from orion_virt.controller import client
from orion_virt.controller.client import AllocationRequest, GpuInfo, NodeInfo
from orion_virt.controller.exceptions import (
    AllocationError,
    BadRequest,
    ControllerUnreachable,
    NotFound,
)
from orion_virt.controller.registration import Registrar
from orion_virt.controller.service import Controller
from orion_virt.controller.token import verify_token
from orion_virt.errors import ControllerError
from orion_virt.launch import free_port
from tests.unit.controller.ctl_server import KEY, Clock, serve

GPUS = [GpuInfo(0, "GPU-0", "Tesla V100-PCIE-16GB", 16384),
        GpuInfo(1, "GPU-1", "Tesla V100-PCIE-16GB", 16384)]


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[tuple[str, Controller, Clock]]:
    yield from serve(tmp_path)


def raw(addr: str, method: str, path: str, body: bytes = b"") -> tuple[int, str, Any]:
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, ctype, json.loads(data) if ctype.startswith("application/json") else data


def test_version_and_empty_summary(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    v = client.get_version(addr)
    assert str(v) == "data_version=0.1,api_version=0.1"
    assert raw(addr, "GET", "/version")[2] == {"data_version": "0.1", "api_version": "0.1"}
    s = client.summary(addr)
    assert (s.total_vgpus, s.free_vgpus) == (0, 0)


def test_allocate_renew_release_cycle(ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    assert client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS) == 15.0
    s = client.summary(addr)
    assert (s.total_vgpus, s.free_vgpus, s.nodes_up) == (8, 8, 1)
    a = client.allocate(addr, AllocationRequest(vgpu=2, gmem_mib=12000, group_id="pod-1",
                                                owner="alice"))
    assert len(a.allocation_id) == 36 and a.lease_seconds == 30
    assert {v.gpu_index for v in a.vgpus} == {0, 1}
    assert all(v.server == "10.1.0.1:9960" and v.memory_mib == 12000 for v in a.vgpus)
    g = verify_token(KEY, a.vgpus[0].token, clock.t, node_id="host-a")
    assert g.allocation_id == a.allocation_id and len(g.vgpus) == 2
    assert client.summary(addr).free_vgpus == 2
    tasks = client.tasks(addr)
    assert tasks[0]["allocation_id"] == a.allocation_id and tasks[0]["group_id"] == "pod-1"
    assert tasks[0]["vgpus"][0]["server"] == "10.1.0.1:9960"
    nodes = client.nodes(addr)
    slots = [sl for gpu in nodes[0]["gpus"] for sl in gpu["vgpus"] if sl["allocation_id"]]
    assert len(slots) == 2
    clock.t += 10
    client.heartbeat(addr, "host-a")
    clock.t += 10
    client.heartbeat(addr, "host-a")
    r = client.renew(addr, a.allocation_id)
    assert r.expires_at == clock.t + 30
    client.release(addr, a.allocation_id)
    assert client.summary(addr).free_vgpus == 8
    with pytest.raises(NotFound):
        client.release(addr, a.allocation_id)
    with pytest.raises(NotFound):
        client.renew(addr, a.allocation_id)


def test_refusals_are_distinguishable(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS)
    with pytest.raises(AllocationError, match="exceeds the memory of any single GPU"):
        client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=40000))
    with pytest.raises(AllocationError, match="request needs more than one node can hold"):
        client.allocate(addr, AllocationRequest(vgpu=3, gmem_mib=12000))
    client.allocate(addr, AllocationRequest(vgpu=2, gmem_mib=12000))
    with pytest.raises(AllocationError, match="^pool exhausted: 2 vGPUs free"):
        client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=12000))
    with pytest.raises(BadRequest) as e:
        client.allocate(addr, AllocationRequest(vgpu=2, ratio=50, cross_node=True))
    assert e.value.field == "ratio"


def test_bad_json_and_fields_give_400(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    st, _, body = raw(addr, "POST", "/api/v1/allocations", b"{not json")
    assert st == 400 and "not valid JSON" in body["error"]
    st, _, body = raw(addr, "POST", "/api/v1/allocations", b'{"vgpu": -1}')
    assert st == 400 and body["field"] == "vgpu"
    st, _, body = raw(addr, "POST", "/api/v1/nodes", b'{"node_id": "x", "gpus": []}')
    assert st == 400 and body["field"] == "address"
    st, _, body = raw(addr, "POST", "/api/v1/allocations", b"[1]")
    assert st == 400
    assert raw(addr, "GET", "/api/v1/nope")[0] == 404
    assert raw(addr, "PUT", "/api/v1/summary")[0] in (404, 405, 501)
    assert raw(addr, "POST", "/api/v1/summary")[0] == 405


def test_reaper_logic_marks_down_and_expires(ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS)
    client.register_node(addr, NodeInfo("host-b", "10.1.0.2:9960"), GPUS[:1])
    a = client.allocate(addr, AllocationRequest(vgpu=1))
    clock.t += 10
    for nid in ("host-a", "host-b"):
        client.heartbeat(addr, nid)
    clock.t += 10
    client.heartbeat(addr, "host-a")
    clock.t += 6
    r = c.reap()
    assert r.nodes_down == ("host-b",)
    assert [n["up"] for n in client.nodes(addr)] == [True, False]
    assert a.allocation_id in r.released + r.expired
    assert client.summary(addr).total_vgpus == 8
    with pytest.raises(NotFound):
        client.heartbeat(addr, "ghost")


def test_metrics_and_portal(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    client.register_node(addr, NodeInfo("host-<a>", "10.1.0.1:9960"), GPUS)
    client.allocate(addr, AllocationRequest(vgpu=1, group_id="<script>"))
    st, ctype, text = raw(addr, "GET", "/metrics")
    assert st == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "orion_vgpus 8.0\n" in text and "orion_vgpus_free 7.0\n" in text
    assert "orion_vgpus_total" not in text  # a gauge: renamed orion_vgpus (tests/unit/controller/test_metrics.py)
    assert 'orion_gpu_vgpus_used{gpu="0",node="host-<a>",uuid="GPU-0"} 1.0' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2
    st, ctype, html = raw(addr, "GET", "/")
    assert st == 200 and ctype.startswith("text/html")
    assert "<script>" not in html and "&lt;script&gt;" in html and "host-&lt;a&gt;" in html


def test_unreachable_controller_wording() -> None:
    port = free_port()
    with pytest.raises(ControllerUnreachable, match="^Could not connect to server") as e:
        client.get_version(f"127.0.0.1:{port}", timeout=2)
    assert isinstance(e.value, ControllerError) and not isinstance(e.value, AllocationError)
    assert client.MSG_VERSION == "Fail to get version information from Orion Controller."
    assert client.MSG_NO_ALLOCATION == "Client exits without allocation ID"


def test_registrar_registers_heartbeats_and_reregisters(
        ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    reg = Registrar(addr, NodeInfo("host-r", "10.1.0.9:9960"), GPUS, interval=0.05)
    reg.start()
    try:
        assert reg.wait_registered(5)
        before = c.store.read().nodes["host-r"].last_heartbeat
        clock.t += 5
        deadline = time.monotonic() + 5
        while c.store.read().nodes["host-r"].last_heartbeat == before:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c.store.update(lambda s: s.nodes.pop("host-r"))
        deadline = time.monotonic() + 5
        while "host-r" not in c.store.read().nodes:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        reg.stop(deregister=True)
    assert "host-r" not in c.store.read().nodes


def test_registrar_survives_missing_controller() -> None:
    port = free_port()
    reg = Registrar(f"127.0.0.1:{port}", NodeInfo("n", "127.0.0.1:9960"), GPUS, interval=0.05)
    reg.start()
    time.sleep(0.3)
    assert not reg.registered and reg.last_error and "Could not connect" in reg.last_error
    reg.stop()
    assert not reg.is_alive()
