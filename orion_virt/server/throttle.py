"""Compute-share enforcement for one vGPU by accounting measured device time.

A vGPU with share ``ratio`` % that used ``t`` seconds of device time must leave the device idle
for ``t * (100 - ratio) / ratio`` seconds before its next launch. Unlike a token bucket counting
blocks (HAMi-core), the debt is measured in the time kernels really took, so long and short
kernels are charged what they cost and the share holds over any window longer than one kernel.
"""

from __future__ import annotations

import time
from typing import Callable


class Throttle:
    def __init__(self, ratio: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 < ratio <= 100:
            raise ValueError("ratio must be in 1..100")
        self.ratio = ratio
        self.clock = clock
        self.sleep = sleep
        self.ready_at = 0.0
        self.busy = 0.0
        self.waited = 0.0

    def before_launch(self) -> None:
        if self.ratio >= 100:
            return
        delay = self.ready_at - self.clock()
        if delay > 0:
            self.waited += delay
            self.sleep(delay)

    def account(self, seconds: float) -> None:
        """Charge ``seconds`` of device time just used."""
        self.busy += seconds
        if self.ratio < 100 and seconds > 0:
            self.ready_at = max(self.clock(), self.ready_at) + seconds * (100 - self.ratio) / self.ratio
