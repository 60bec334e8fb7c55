"""Compute-share accounting: the vGPU's device time share holds over a window."""

from __future__ import annotations

import pytest

from orion_virt.server.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.mark.parametrize("ratio", [10, 25, 50, 75, 100])
@pytest.mark.parametrize("kernel", [0.0001, 0.003, 0.05])
def test_share_of_device_time_matches_the_ratio(ratio: int, kernel: float) -> None:
    clock = Clock()
    th = Throttle(ratio, clock, clock.sleep)
    busy = 0.0
    for _ in range(200):
        th.before_launch()
        clock.t += kernel
        busy += kernel
        th.account(kernel)
    th.before_launch()
    assert busy / clock.t == pytest.approx(ratio / 100, rel=0.02)


def test_mixed_kernel_lengths_are_charged_what_they_cost() -> None:
    clock = Clock()
    th = Throttle(20, clock, clock.sleep)
    busy = 0.0
    for i in range(300):
        k = 0.05 if i % 10 == 0 else 0.0005
        th.before_launch()
        clock.t += k
        busy += k
        th.account(k)
    th.before_launch()
    assert busy / clock.t == pytest.approx(0.20, rel=0.02)


def test_idle_time_is_not_banked_beyond_the_current_debt() -> None:
    clock = Clock()
    th = Throttle(50, clock, clock.sleep)
    clock.t = 100.0  # long idle
    th.before_launch()
    clock.t += 1.0
    th.account(1.0)
    t0 = clock.t
    th.before_launch()
    assert clock.t - t0 == pytest.approx(1.0)


def test_ratio_out_of_range() -> None:
    with pytest.raises(ValueError):
        Throttle(0)
