"""orion-bench end to end with tiny counts: its own oriond, agents over shm and TCP, floors,
the table, bench.json and bench.png. Asserts structure, never speed (machines are shared)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from orion_virt.bench import run as bench_run
from orion_virt.bench.stats import latency_summary, percentile
from orion_virt.bench.targets import TARGETS, evaluate
from orion_virt.cli import orion_bench


def test_latency_summary() -> None:
    s = latency_summary([1000, 2000, 3000, 4000, 100000])
    assert s["median_us"] == 3.0 and s["min_us"] == 1.0 and s["p99_us"] == 100.0
    assert math.isnan(percentile([], 50))


def test_targets_not_measured_are_reported_as_such() -> None:
    got = evaluate({})
    assert [t["key"] for t in got] == [t.key for t in TARGETS]
    assert all(t["met"] is None and t["shown"] == "-" for t in got)


def test_bad_transport_is_refused() -> None:
    r = CliRunner().invoke(orion_bench.main, ["--transports", "shm,udp"])
    assert r.exit_code == 2 and "udp" in r.output


def test_the_python_client_is_refused_as_retired() -> None:
    r = CliRunner().invoke(orion_bench.main, ["--client", "python"])
    assert r.exit_code == 2 and "the Python client was retired" in r.output


@pytest.mark.timeout(60)
def test_smoke_run_writes_table_json_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_run.Settings, "quick", classmethod(lambda cls, **kw: cls.smoke(**kw)))
    out = tmp_path / "out"
    r = CliRunner().invoke(orion_bench.main, ["--quick", "--out", str(out), "--keep", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    for section in ("Null call", "Pipelined calls", "HtoD throughput", "DtoH throughput",
                    "Starting a session", "Idle", "First call after an idle time", "Targets"):
        assert section in r.output

    res = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for t in ("shm", "tcp"):
        null = res["null"][t]
        assert null["remote"]["median_us"] > 0 and null["floor"]["median_us"] > 0 and null["ratio"] > 0
        assert res["pipelined"][t]["launch"]["per_s"] > 0 and res["pipelined"][t]["memset"]["per_s"] > 0
        assert res["session"]["cuinit_ms"][t]["median"] > 0
        assert res["session"]["program_s"][t]["median"] > 0
        for d in ("htod", "dtoh"):
            assert all(v > 0 for v in res["copy"]["gbps"][f"{t}_{d}"])
    assert res["null"]["shm"]["spin_floor"]["median_us"] > 0
    assert all(v > 0 for v in res["copy"]["gbps"]["ring_htod"] + res["copy"]["gbps"]["socket_dtoh"])
    idle = res["idle"]
    assert {"oriond main", "shm worker", "tcp worker"} <= set(idle["percent_of_core"])
    assert idle["sessions"] == 3  # the smoke settings
    wake = res["wake"]
    for t in ("shm", "tcp"):
        assert len(wake["remote_us"][t]) == len(wake["gaps_s"]) == len(wake["floor_us"][t])
        assert all(v > 0 for v in wake["remote_us"][t] + wake["floor_us"][t])
    assert len(res["targets"]) == len(TARGETS)
    # oriond was stopped: nothing of this run is left serving its device
    assert not list((tmp_path / "work").glob("oriond.pid"))
