"""Small statistics helpers: latency summaries and medians over repeated rounds."""

from __future__ import annotations

import math
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
    """Median of the values that are not NaN (NaN if none)."""
    vals = [v for v in values if not math.isnan(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")
