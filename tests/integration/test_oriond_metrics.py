"""oriond's own /metrics ([server] metrics_addr) with a real oriond (sim) and real client programs
over shm and TCP: the figures move by what the programs did, a session's memory gauge is there
while it runs and gone after, promtool accepts the exposition, the dashboard's oriond panels use
only names oriond exports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orion_virt.launch import OriondProcess, free_port
from tests.oriond_fixture import BIN, ROOT, Oriond
from tests.unit.controller.test_metrics import DASHBOARD, _exprs, metric_names

pytestmark = pytest.mark.integration
PROGRAM = Path(__file__).parent / "programs" / "metrics_client.py"
MIB = 1 << 20
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def oriond(tmp_path: Path) -> Iterator[tuple[Oriond, str]]:
    o = Oriond(tmp_path)
    for d in (o.shm, o.logs, o.home):
        d.mkdir(parents=True, exist_ok=True)
    maddr = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "server.conf"
    conf.write_text(f"[server]\n    metrics_addr = {maddr}\n")
    o.launcher = OriondProcess(o.logs, backend="sim", shm_path_base=o.shm, config=conf,
                               extra=["--sim-memory", "8192", "--sim-gpus", "4"])
    o.port = o.launcher.port
    o.launcher.start(timeout=20)
    o.proc = o.launcher.proc
    yield o, maddr
    o.stop()


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(addr: str, ok: Callable[[Samples], bool], what: str, timeout: float = 15) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        s = parse(scrape(addr))
        if ok(s):
            return s
        assert time.monotonic() < deadline, f"{what}: never seen in\n{scrape(addr)}"
        time.sleep(0.2)


def memory_gauges(s: Samples) -> dict[str, float]:
    return {dict(k[1])["allocation_id"]: v for k, v in s.items()
            if k[0] == "orion_server_session_memory_used_bytes"}


def run_session(o: Oriond, maddr: str, tcp: bool) -> set[str]:
    """Run the program over one transport; the names exported while its session was open."""
    t = "tcp" if tcp else "shm"
    p = subprocess.Popen([str(BIN / "orion-run"), sys.executable, str(PROGRAM)], env=o.env(tcp),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "open", p.stderr.read() if p.stderr else ""
        s = wait_for(maddr, lambda s: value(s, "orion_server_copied_bytes_total", transport=t,
                                            direction="dtoh") == 2 * MIB, f"{t} copies flushed")
        assert value(s, "orion_server_sessions_active", transport=t) == 1
        assert value(s, "orion_server_sessions_started_total", transport=t) == 1
        assert value(s, "orion_server_copied_bytes_total", transport=t, direction="htod") == 3 * MIB
        assert value(s, "orion_server_calls_total", transport=t) >= 2 + 3 + 2 + 2
        assert value(s, "orion_server_call_errors_total", transport=t, reason="quota") == 1
        assert value(s, "orion_server_call_errors_total", transport=t, reason="bad_handle") == 1
        exported = {name for name, _ in s}
        [(alloc, used)] = memory_gauges(s).items()
        assert used == MIB
        assert value(s, "orion_server_session_memory_quota_bytes", allocation_id=alloc) \
            == 2 * 4096 * MIB  # ORION_VGPU=2 ORION_GMEM=4096 (the fixture's client)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    s = wait_for(maddr, lambda s: not memory_gauges(s), f"{t} session's gauges gone")
    assert value(s, "orion_server_sessions_active", transport=t) == 0
    assert value(s, "orion_server_sessions_ended_total", transport=t, reason="bye") == 1
    return exported | {name for name, _ in s}


def test_figures_move_by_what_the_programs_did(oriond: tuple[Oriond, str]) -> None:
    o, maddr = oriond
    o.device(1)
    exported = run_session(o, maddr, tcp=False) | run_session(o, maddr, tcp=True)
    [gathered] = Path(tempfile.gettempdir()).glob(f"oriond-metrics-{o.launcher.pid}-*")
    # the ended workers' counters were folded into oriond's own file: no file per session
    assert sorted(f.name for f in gathered.iterdir()) == sorted(
        [f"counter_{o.launcher.pid}.db", f"gauge_livesum_{o.launcher.pid}.db", "counter_retired.db"])
    s = parse(scrape(maddr))
    for t in ("shm", "tcp"):  # each session counted once, on its own transport
        assert value(s, "orion_server_sessions_started_total", transport=t) == 1
        assert value(s, "orion_server_copied_bytes_total", transport=t, direction="htod") == 3 * MIB
    assert value(s, "orion_server_sessions_started_total", transport="vm") == 0
    assert ("orion_server_sessions_started_total", frozenset({("transport", "vm")})) in s
    r = o.run(sys.executable, str(PROGRAM), tcp=True, ORION_GMEM="100000")  # more than a GPU has
    assert r.returncode != 0 and "open" not in r.stdout
    s = wait_for(maddr, lambda s: value(s, "orion_server_sessions_refused_total", transport="tcp")
                 == 1, "the refused session")
    assert value(s, "orion_server_sessions_started_total", transport="tcp") == 1

    used: set[str] = set()
    for e in _exprs(json.loads(DASHBOARD.read_text())):
        names = {n for n in metric_names(e) if n.startswith("orion_server_")}
        assert names <= exported, f"{e!r}: {sorted(names - exported)} not in oriond's /metrics"
        used |= names
    for name in ("orion_server_sessions_active", "orion_server_calls_total",
                 "orion_server_copied_bytes_total", "orion_server_session_memory_used_bytes",
                 "orion_server_call_errors_total", "orion_server_sessions_ended_total"):
        assert name in used, f"the dashboard has no panel for {name}"

    text = scrape(maddr)
    o.stop()
    assert not gathered.exists(), "a clean stop removes the directory"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; "
                    "scripts/install-test-deps.sh installs it)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_metrics_off_by_default_and_a_bad_address_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\n    metrics_addr = nowhere\n")
    r = subprocess.run([str(BIN / "oriond"), "--config", str(conf), "--backend", "sim",
                        "--log-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "metrics_addr" in r.stderr and "nowhere" in r.stderr and "HOST:PORT" in r.stderr, r.stderr
    assert ROOT.joinpath("server", "server.conf").read_text().count("# metrics_addr =") == 1


def test_a_killed_worker_leaves_no_live_gauge(oriond: tuple[Oriond, str]) -> None:
    o, maddr = oriond
    o.device(1)
    p = subprocess.Popen([str(BIN / "orion-run"), sys.executable, str(PROGRAM)], env=o.env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "open"
        wait_for(maddr, lambda s: len(memory_gauges(s)) == 1, "the open session's gauge")
        pid = o.launcher.pid
        [worker] = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        os.kill(worker, signal.SIGKILL)  # the session's worker, by its pid (a child of this oriond)
        # the reaper drops the gauge, then counts the end: wait for both, not only the first
        s = wait_for(maddr, lambda s: not memory_gauges(s) and value(
            s, "orion_server_sessions_ended_total", transport="shm", reason="killed") == 1,
            "the killed session's gauge gone and its end counted")
        assert value(s, "orion_server_sessions_ended_total", transport="shm", reason="killed") == 1
        assert value(s, "orion_server_sessions_active", transport="shm") == 0
    finally:
        p.kill()
        p.wait()
