"""The controller's /metrics as a user reads it: a pool set up over HTTP, the exposition parsed
with prometheus-client's parser, checked with ``promtool check metrics``, and the Grafana
dashboard's queries checked against it."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import orion_virt
from orion_virt.controller import client, metrics
from orion_virt.controller.client import AllocationRequest, GpuInfo, NodeInfo
from orion_virt.controller.exceptions import AllocationError, BadRequest, NotFound
from orion_virt.controller.pool import Policy
from orion_virt.controller.service import Controller
from orion_virt.controller.store import SqliteStore
from tests.unit.controller.ctl_server import KEY, Clock, serve

MIB = 1 << 20
GPUS = [GpuInfo(0, "GPU-A0", "Tesla V100-PCIE-16GB", 16384),
        GpuInfo(1, "GPU-A1", "Tesla V100-PCIE-16GB", 16384)]
DASHBOARD = Path(__file__).resolve().parents[3] / "server" / "grafana-orion.json"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def raw(addr: str, method: str, path: str) -> tuple[int, str, str]:
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, path)
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    return r.status, r.getheader("Content-Type", ""), data


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[tuple[str, Controller, Clock]]:
    yield from serve(tmp_path)


def scrape_text(addr: str) -> str:
    st, ctype, text = raw(addr, "GET", "/metrics")
    assert st == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
    return text


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and each family's type by family name."""
    samples: Samples = {}
    types = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def val(samples: Samples, name: str, /, **labels: str) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    hits = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def set_up_pool(addr: str) -> dict[str, Any]:
    """Two nodes (2 + 1 GPUs of 16 GiB, 4 vGPUs each), allocations, refusals, a release and a
    session-ended notice; returns what the test needs to check."""
    client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS)
    client.register_node(addr, NodeInfo("host-b", "10.1.0.2:9960"),
                         [GpuInfo(0, "GPU-B0", "NVIDIA H100 80GB HBM3", 81559)])
    huge = client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=70_000))  # on host-b
    with pytest.raises(AllocationError, match="^pool exhausted"):  # would fit an empty pool
        client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=70_000))
    client.release(addr, huge.allocation_id)
    big = client.allocate(addr, AllocationRequest(vgpu=2, gmem_mib=4096, ratio=25, group_id="g1"))
    small = client.allocate(addr, AllocationRequest(vgpu=1))
    with pytest.raises(AllocationError):
        client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=100_000))
    with pytest.raises(AllocationError):
        client.allocate(addr, AllocationRequest(vgpu=9))
    with pytest.raises(BadRequest):
        client.allocate(addr, AllocationRequest(vgpu=1, ratio=101))
    client.release(addr, small.allocation_id)
    nodes_of_big = {v.node_id for v in big.vgpus}
    assert len(nodes_of_big) == 1
    (node,) = nodes_of_big
    assert client.session_ended(addr, big.allocation_id, node, None)  # type: ignore[arg-type]
    with pytest.raises(NotFound):  # a second server's late notice: counted, nothing released
        client.session_ended(addr, big.allocation_id, node, None)  # type: ignore[arg-type]
    held = client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=2048, ratio=50, group_id="g2"))
    return {"node": node, "held": held}


def test_pool_figures_a_user_checks(ctl: tuple[str, Controller, Clock]) -> None:
    addr = ctl[0]
    seen = set_up_pool(addr)
    samples, types = parse(scrape_text(addr))

    assert val(samples, "orion_build_info", version=orion_virt.__version__) == 1
    assert types["orion_build_info"] == "gauge"
    assert val(samples, "orion_vgpus") == 12  # 3 GPUs x 4 vGPUs, both nodes up
    assert ("orion_vgpus_total", frozenset()) not in samples  # renamed: a gauge
    assert val(samples, "orion_allocations_active") == 1
    assert val(samples, "orion_nodes", state="up") == 2
    assert val(samples, "orion_nodes", state="down") == 0
    assert val(samples, "orion_node_up", node="host-b", address="10.1.0.2:9960") == 1
    assert val(samples, "orion_node_last_heartbeat_timestamp_seconds", node="host-a") == Clock().t

    # counters: granted, refused by reason, ended by reason, session-ended notices
    assert types["orion_allocations"] == "counter"
    assert val(samples, "orion_allocations_total") == 4
    assert val(samples, "orion_allocated_vgpus_total") == 5
    refused = {r: val(samples, "orion_allocation_refusals_total", reason=r)
               for r in metrics.REFUSAL_REASONS}
    assert refused == {"invalid_request": 1, "no_gpu_node_up": 0, "memory_over_gpu": 1,
                       "over_node": 1, "over_pool": 0, "pool_exhausted": 1, "other": 0}
    ended = {r: val(samples, "orion_allocation_releases_total", reason=r)
             for r in metrics.RELEASE_REASONS}
    assert ended == {"released": 2, "session_ended": 1, "lease_expired": 0, "node_down": 0,
                     "node_reregistered": 0, "node_deregistered": 0}
    assert val(samples, "orion_sessions_ended_total", node=seen["node"]) == 2

    # per GPU and per held vGPU, in bytes and ratios
    (v,) = seen["held"].vgpus
    gpu = {"node": v.node_id, "gpu": str(v.gpu_index)}
    assert val(samples, "orion_gpu_memory_bytes", node="host-b", gpu="0") == 81559 * MIB
    assert val(samples, "orion_gpu_info", node="host-b", name="NVIDIA H100 80GB HBM3") == 1
    assert val(samples, "orion_gpu_memory_allocated_bytes", **gpu) == 2048 * MIB
    assert val(samples, "orion_gpu_compute_allocated_ratio", **gpu) == 0.5
    assert val(samples, "orion_gpu_vgpus", **gpu) == 4
    assert val(samples, "orion_gpu_vgpus_used", **gpu) == 1
    held = {**gpu, "slot": str(v.slot), "allocation": seen["held"].allocation_id, "group": "g2"}
    assert val(samples, "orion_vgpu_memory_quota_bytes", **held) == 2048 * MIB
    assert val(samples, "orion_vgpu_compute_quota_ratio", **held) == 0.5
    assert sum(1 for n, _ in samples if n == "orion_vgpu_memory_quota_bytes") == 1
    total_alloc = sum(v for (n, _), v in samples.items() if n == "orion_gpu_memory_allocated_bytes")
    assert total_alloc == 2048 * MIB

    for (name, _), _v in samples.items():  # base units only, _total on counters only
        assert not re.search(r"_(mib|percent)$", name), name
        if name.endswith("_total"):
            assert types[name[:-len("_total")]] == "counter", name


def test_reaper_releases_and_down_node(ctl: tuple[str, Controller, Clock]) -> None:
    addr, c, clock = ctl
    client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS[:1])
    client.register_node(addr, NodeInfo("host-b", "10.1.0.2:9960"), GPUS[1:])
    client.allocate(addr, AllocationRequest(vgpu=4))  # fills one node's GPU
    client.allocate(addr, AllocationRequest(vgpu=1))  # the other
    for _ in range(3):  # 33 s: both leases (30 s) expire, both nodes keep heartbeating
        clock.t += 11
        client.heartbeat(addr, "host-a")
        client.heartbeat(addr, "host-b")
    c.reap()
    client.allocate(addr, AllocationRequest(vgpu=1))
    clock.t += 16  # no heartbeat: both nodes go down, the new allocation with its node
    c.reap()
    samples, _ = parse(scrape_text(addr))
    assert val(samples, "orion_allocation_releases_total", reason="lease_expired") == 2
    assert val(samples, "orion_allocation_releases_total", reason="node_down") == 1
    assert val(samples, "orion_nodes", state="down") == 2
    assert val(samples, "orion_node_up", node="host-a") == 0
    assert val(samples, "orion_vgpus") == 0
    assert val(samples, "orion_gpu_vgpus_free", node="host-a") == 0
    client.register_node(addr, NodeInfo("host-a", "10.1.0.1:9960"), GPUS[:1])
    client.allocate(addr, AllocationRequest(vgpu=2))
    client.deregister_node(addr, "host-a")
    samples, _ = parse(scrape_text(addr))
    assert val(samples, "orion_allocation_releases_total", reason="node_deregistered") == 1
    assert val(samples, "orion_allocations_total") == 4


def test_refused_on_an_empty_pool_and_registries_apart(tmp_path: Path) -> None:
    one = Controller(SqliteStore(tmp_path / "1.db"), Policy(), KEY)
    two = Controller(SqliteStore(tmp_path / "2.db"), Policy(), KEY)
    metrics.of(one), metrics.of(two)
    assert metrics.of(one) is metrics.of(one) and metrics.of(one) is not metrics.of(two)
    with pytest.raises(AllocationError, match="no GPU node is up"):
        one.allocate({"vgpu": 1})
    a, _ = parse(metrics.render(one))
    b, _ = parse(metrics.render(two))
    assert val(a, "orion_allocation_refusals_total", reason="no_gpu_node_up") == 1
    assert val(b, "orion_allocation_refusals_total", reason="no_gpu_node_up") == 0
    assert val(a, "orion_vgpus") == 0 and val(a, "orion_allocations_total") == 0


def test_refusal_reasons_cover_the_pool_messages() -> None:
    assert metrics.refusal_reason(AllocationError(
        "request needs more than the whole pool can hold: 9 vGPU(s) ...")) == "over_pool"
    assert metrics.refusal_reason(AllocationError("pool exhausted: 3 vGPUs free, none fits")) \
        == "pool_exhausted"
    assert metrics.refusal_reason(AllocationError("something new")) == "other"


def test_promtool_check_metrics(ctl: tuple[str, Controller, Clock]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; "
                    "scripts/install-test-deps.sh installs it)")
    addr = ctl[0]
    set_up_pool(addr)
    text = scrape_text(addr)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                 "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a Grafana ``label_values(metric, label)``)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", e)
    e = re.sub(r"\$\w+", "", e)                            # dashboard variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", e):
        word = m.group(0)
        if e[m.end():].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or keyword
        if re.fullmatch(r"\d\w*", word):
            continue
        names.add(word)
    return names


def _exprs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("expr", "definition") and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _exprs(v)


def test_metric_names_of_promql() -> None:
    assert metric_names('sum by (reason) (rate(orion_a_total{node=~"$node"}[5m]))') == {"orion_a_total"}
    assert metric_names("orion_b / orion_c{x=\"y\"} * 100") == {"orion_b", "orion_c"}
    assert metric_names("time() - orion_d") == {"orion_d"}
    assert metric_names("label_values(orion_e, node)") == {"orion_e"}


def test_grafana_dashboard_uses_exported_names(ctl: tuple[str, Controller, Clock]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] == "orion-pool"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    addr = ctl[0]
    set_up_pool(addr)
    samples, _ = parse(scrape_text(addr))
    exported = {n for n, _ in samples}
    exprs = list(_exprs(dash))
    assert len(exprs) >= 15
    used: set[str] = set()
    for e in exprs:
        names = metric_names(e)
        assert names, f"no metric in {e!r}"
        # oriond's own (orion_server_*): tests/integration/test_oriond_metrics.py checks them
        names = {n for n in names if not n.startswith("orion_server_")}
        assert names <= exported, f"{e!r}: {sorted(names - exported)} not in /metrics"
        used |= names
    # every family a pool user would look for is on the dashboard
    for name in ("orion_vgpus", "orion_vgpus_free", "orion_allocations_active",
                 "orion_allocations_total", "orion_allocation_refusals_total",
                 "orion_gpu_memory_allocated_bytes", "orion_gpu_compute_allocated_ratio",
                 "orion_vgpu_memory_quota_bytes", "orion_node_up", "orion_build_info"):
        assert name in used, name
