"""The performance targets of the remoting hot path (2-core machine, ratios measured side by side)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    value: Callable[[dict], float | None]
    """Pulls the measured quantity out of the results (None: not measured in this run)."""
    ok: Callable[[float], bool]
    show: str
    """format of the measured quantity"""


def _get(res: dict, *path: Any) -> Any:
    for p in path:
        if not isinstance(res, dict) or p not in res:
            return None
        res = res[p]
    return res


def _copy_ratio(res: dict, transport: str) -> float | None:
    return _get(res, "targets_input", f"htod_{transport}_ratio")


TARGETS: list[Target] = [
    Target("shm_null_ratio", "shm null call <= 3x raw ring ping-pong (median)",
           lambda r: _get(r, "null", "shm", "ratio"), lambda v: v <= 3.0, "{:.2f}x"),
    Target("shm_null_us", "shm null call <= 3 us (median)",
           lambda r: _get(r, "null", "shm", "remote", "median_us"), lambda v: v <= 3.0, "{:.2f} us"),
    Target("tcp_null_ratio", "TCP null call <= 1.2x raw TCP ping-pong (median)",
           lambda r: _get(r, "null", "tcp", "ratio"), lambda v: v <= 1.2, "{:.2f}x"),
    Target("shm_htod_ratio", "64 MiB HtoD over shm >= 0.8x raw ring transfer",
           lambda r: _copy_ratio(r, "shm"), lambda v: v >= 0.8, "{:.2f}x"),
    Target("tcp_htod_ratio", "64 MiB HtoD over TCP >= 0.9x raw socket transfer",
           lambda r: _copy_ratio(r, "tcp"), lambda v: v >= 0.9, "{:.2f}x"),
    Target("idle_cpu", "oriond idle CPU with 8 idle sessions <= 0.5% of a core",
           lambda r: _get(r, "idle", "oriond_total_pct") if _get(r, "idle", "sessions") == 8 else None,
           lambda v: v <= 0.5, "{:.2f}%"),
    Target("shm_wake_ratio", "shm first call after 1 s idle <= 2x a warm call",
           lambda r: _wake(r, "shm"), lambda v: v <= 2.0, "{:.0f}x"),
    Target("tcp_wake_ratio", "TCP first call after 1 s idle <= 2x a warm call",
           lambda r: _wake(r, "tcp"), lambda v: v <= 2.0, "{:.0f}x"),
    Target("shm_launch_rate", ">= 200k pipelined launches/s over shm",
           lambda r: _get(r, "pipelined", "shm", "launch", "per_s"), lambda v: v >= 200e3, "{:,.0f}/s"),
]


def _wake(r: dict, t: str) -> float | None:
    w = r.get("wake")
    if not w or 1.0 not in w["gaps_s"] or not w["warm_us"].get(t):
        return None
    return w["remote_us"][t][w["gaps_s"].index(1.0)] / w["warm_us"][t]


def evaluate(results: dict) -> list[dict]:
    out = []
    for t in TARGETS:
        v = t.value(results)
        out.append({"key": t.key, "target": t.text, "value": v,
                    "shown": "-" if v is None else t.show.format(v),
                    "met": None if v is None else bool(t.ok(v))})
    return out
