"""The guest image build's progress lines (tests/vmharness/image.py ``_step``): a line when a
step starts, while it runs, and with its elapsed time when it ends or fails."""

from __future__ import annotations

import re
import time

import pytest

from tests.vmharness.image import _step


def test_a_step_says_start_progress_and_elapsed(capsys: pytest.CaptureFixture[str]) -> None:
    timings: dict[str, float] = {}
    with _step(2, 4, "download the kernel package", timings, "kernel_download_s", every=0.1):
        time.sleep(0.35)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[vmharness.image] step 2/4: download the kernel package ..."
    assert any(re.fullmatch(r"\[vmharness.image\] step 2/4: download the kernel package: \d+ s so far", e)
               for e in err[1:-1]), err
    assert re.fullmatch(r"\[vmharness.image\] step 2/4: download the kernel package: done in 0\.[34] s",
                        err[-1]), err
    assert 0.3 <= timings["kernel_download_s"] < 0.5


def test_a_failed_step_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), _step(1, 3, "extract x.deb", {}, "k"):
        raise RuntimeError("boom")
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "[vmharness.image] step 1/3: extract x.deb: FAILED in ")
