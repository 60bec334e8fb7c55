"""Small statistics helpers: latency summaries and medians over repeated rounds."""

from __future__ import annotations

import statistics
from typing import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, by nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """Median, p90, p99, min and mean of round-trip samples, in microseconds."""
    s = sorted(samples_ns)
    us = 1e-3
    return {
        "n": len(s),
        "median_us": percentile(s, 50) * us,
        "p90_us": percentile(s, 90) * us,
        "p99_us": percentile(s, 99) * us,
        "min_us": (s[0] if s else float("nan")) * us,
        "mean_us": (statistics.fmean(s) if s else float("nan")) * us,
    }


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return float(statistics.median(vals)) if vals else float("nan")


def merge_rounds(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key median over the rounds' summaries (each round measured side by side)."""
    if not rounds:
        return {}
    out = {k: median([r[k] for r in rounds if k in r]) for k in rounds[0]}
    out["rounds"] = len(rounds)
    return out


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")
