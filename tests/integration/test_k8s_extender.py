"""orion-scheduler-extender against a real controller and oriond (sim, one GPU of 16384 MiB split
in 4 vGPUs) on loopback, over HTTP as the kube-scheduler calls it: filter keeps the node where the
Pod's ORION_VGPU/ORION_GMEM/ORION_RATIO fits and says why the others fail; prioritize prefers the
tightest fit; a held allocation leaves less room; no controller: an error, not a wrong answer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from orion_virt.controller import client as ctl
from orion_virt.controller.model import AllocationRequest
from orion_virt.k8s.extender import Extender, make_server
from orion_virt.launch import free_port, wait_port
from tests.integration.test_controller_e2e import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOST = socket.gethostname()
BIN = Path(sys.executable).parent


def pod(*containers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "testgpu", "namespace": "default"}, "spec": {"containers": list(containers)}}


def ctr(count: int | None = 1, **env: str) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "c", "env": [{"name": k, "value": v} for k, v in env.items()]}
    if count is not None:
        c["resources"] = {"limits": {"virtaitech.com/gpu": str(count)}}
    return c


def node(name: str, bind: str | None = None) -> dict[str, Any]:
    labels = {"ORION_BIND_ADDR": bind} if bind else {}
    return {"metadata": {"name": name, "labels": labels}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("k8s-ext"), lease=30.0)
    try:
        s.start_oriond("node", gpus=1)
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def url(stack: Stack) -> Iterator[str]:
    srv = make_server(Extender(stack.addr), "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def post(url: str, verb: str, args: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{url}/{verb}", data=json.dumps(args).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_filter_keeps_the_node_where_it_fits_and_says_why_not(url: str) -> None:
    args = {"pod": pod(ctr(2, ORION_GMEM="4096", ORION_RATIO="50")), "nodes": {"items": [node(HOST), node("other")]}}
    r = post(url, "filter", args)
    assert [n["metadata"]["name"] for n in r["nodes"]["items"]] == [HOST]
    assert "no oriond of this node" in r["failedNodes"]["other"]
    assert not r.get("error")


def test_filter_by_names_and_by_the_bind_addr_label(url: str) -> None:
    r = post(url, "filter", {"pod": pod(ctr(1)), "nodenames": [HOST, "n2"]})
    assert r["nodenames"] == [HOST] and "n2" in r["failedNodes"]
    r = post(url, "filter", {"pod": pod(ctr(1)), "nodes": {"items": [node("renamed", bind="127.0.0.1")]}})
    assert [n["metadata"]["name"] for n in r["nodes"]["items"]] == ["renamed"]


def test_too_much_memory_or_ratio_does_not_fit(url: str) -> None:
    for c, why in [(ctr(1, ORION_GMEM="20000"), "exceeds the memory of any single GPU"),
                   (ctr(3, ORION_RATIO="50"), "the largest node holds 2"),
                   (ctr(2, ORION_GMEM="8193"), "the largest node holds 1"),
                   (ctr(1, ORION_VGPU="5"), "")]:
        r = post(url, "filter", {"pod": pod(c), "nodenames": [HOST]})
        assert r["nodenames"] == [], (c, r)
        assert why in r["failedNodes"][HOST], r
    # two containers: each fits alone, not both
    r = post(url, "filter", {"pod": pod(ctr(1, ORION_GMEM="10000"), ctr(1, ORION_GMEM="10000")),
                             "nodenames": [HOST]})
    assert r["nodenames"] == [] and "ORION_GMEM=10000" in r["failedNodes"][HOST]


def test_a_pod_without_vgpus_passes_everywhere(url: str) -> None:
    r = post(url, "filter", {"pod": pod(ctr(None)), "nodenames": [HOST, "x"]})
    assert r["nodenames"] == [HOST, "x"] and r["failedNodes"] == {}


def test_held_allocations_leave_less_room_and_raise_the_score(url: str, stack: Stack) -> None:
    before = post(url, "prioritize", {"pod": pod(ctr(1)), "nodenames": [HOST, "x"]})
    assert {h["host"]: h["score"] for h in before}["x"] == 0
    signer = getattr(stack, "client", None)
    kw = {"signer": signer} if signer is not None else {}
    held = ctl.allocate(stack.addr, AllocationRequest(vgpu=3), **kw)
    try:
        r = post(url, "filter", {"pod": pod(ctr(2)), "nodenames": [HOST]})
        assert r["nodenames"] == [] and "pool exhausted" in r["failedNodes"][HOST], r
        assert post(url, "filter", {"pod": pod(ctr(1)), "nodenames": [HOST]})["nodenames"] == [HOST]
        after = post(url, "prioritize", {"pod": pod(ctr(1)), "nodenames": [HOST]})
        assert after[0]["score"] > {h["host"]: h["score"] for h in before}[HOST]
    finally:
        secret = getattr(held, "secret", None)
        try:
            ctl.release(stack.addr, held.allocation_id, **({"secret": secret} if secret else {}))
        except TypeError:
            ctl.release(stack.addr, held.allocation_id)


def test_no_controller_is_an_error_not_an_answer() -> None:
    srv = make_server(Extender(f"127.0.0.1:{free_port()}"), "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        r = post(f"http://127.0.0.1:{srv.server_address[1]}", "filter", {"pod": pod(ctr(1)), "nodenames": ["a"]})
        assert "cannot ask the Orion controller" in r["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_console_script_serves(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "ext.log", "w") as log:
        p = subprocess.Popen([str(BIN / "orion-scheduler-extender"), "--controller", stack.addr, "--listen",
                              "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=p, what="orion-scheduler-extender")
        r = post(f"http://127.0.0.1:{port}", "filter", {"pod": pod(ctr(1)), "nodenames": [HOST]})
        assert r["nodenames"] == [HOST]
    finally:
        p.terminate()
        assert p.wait(10) == 0, (tmp_path / "ext.log").read_text()
