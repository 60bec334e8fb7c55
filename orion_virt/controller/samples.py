"""Utilisation over the last hour per GPU: a bounded ring of samples the controller keeps in memory.

A sample is what the pool has handed out of one GPU at an instant: the fraction of its memory
and of its compute share (ratio) held by allocations, 0..1 each; a GPU of a down node counts 0.
Samples are taken at most every ``interval`` seconds (the reaper ticks every second) and at
most ``ceil(window / interval) + 1`` are kept per GPU, so memory stays bounded whatever the
uptime. The ring is not persisted: a restarted controller starts a new hour.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from . import pool
from .model import Gpu, PoolState


@dataclass(frozen=True)
class Sample:
    t: float
    memory: float
    compute: float


def sample_of(gpu: Gpu, u: pool.Usage, up: bool, now: float) -> Sample:
    """What ``u`` holds of ``gpu`` at ``now`` (all 0 when its node is down)."""
    if not up:
        return Sample(now, 0.0, 0.0)
    return Sample(now, min(1.0, u.memory_mib / gpu.memory_mib), min(1.0, u.ratio / 100))


class Samples:
    """Thread-safe: ``record`` runs in the reaper, ``series`` in the HTTP threads."""

    def __init__(self, interval: float = 30.0, window: float = 3600.0) -> None:
        if interval <= 0 or window < interval:
            raise ValueError(f"utilisation sampling needs 0 < interval <= window, got "
                             f"interval={interval} window={window}")
        self.interval = interval
        self.window = window
        self._maxlen = math.ceil(window / interval) + 1
        self._rings: dict[tuple[str, int], deque[Sample]] = {}
        self._last = -math.inf
        self._lock = threading.Lock()

    def record(self, now: float, state: PoolState) -> bool:
        """Add one sample per GPU of ``state`` unless the last was under ``interval`` ago;
        GPUs no longer in the pool are forgotten. True if a sample was taken."""
        with self._lock:
            if now - self._last < self.interval:
                return False
            self._last = now
            use = pool.usage(state)
            seen = set()
            for n in state.nodes.values():
                for g in n.gpus:
                    key = (n.node_id, g.index)
                    seen.add(key)
                    ring = self._rings.setdefault(key, deque(maxlen=self._maxlen))
                    ring.append(sample_of(g, use.get(key, pool.Usage()), n.up, now))
            for key in set(self._rings) - seen:
                del self._rings[key]
            return True

    def series(self, node_id: str, gpu_index: int, now: float) -> list[Sample]:
        """The GPU's samples of the last ``window`` seconds, oldest first."""
        with self._lock:
            ring = self._rings.get((node_id, gpu_index), ())
            return [s for s in ring if now - s.t <= self.window]
