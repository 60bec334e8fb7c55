"""systemctl reload orion-controller (SIGHUP) on a real controller: it keeps serving and says there
is nothing to reload; its log file moved away (logrotate) is written anew."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from orion_virt.controller import client
from orion_virt.launch import wait_until
from tests.integration.test_controller_http import ControllerProcess

pytestmark = pytest.mark.integration


def test_sighup_keeps_it_serving_and_the_log_reopens_after_rotation(tmp_path: Path) -> None:
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db")
    try:
        rotated = c.log_path.with_name("controller.log.1")
        c.log_path.rename(rotated)
        os.kill(c.proc.pid, signal.SIGHUP)
        wait_until(lambda: c.log_path.exists() and "nothing to reload" in c.log_path.read_text(), 10,
                   "the SIGHUP line in a new controller.log")
        assert c.proc.poll() is None
        assert client.get_version(c.addr, timeout=5)
        assert "listening on" in rotated.read_text()
    finally:
        c.stop()
