"""orion-shm against real files: create, list, refuse to clobber a device in use, remove."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orion_virt.transport.shmdev import Device, claim_channel
from tests.oriond_fixture import Oriond

pytestmark = pytest.mark.integration
SHM = str(Path(sys.executable).parent / "orion-shm")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SHM, *args], capture_output=True, text=True, timeout=30)


def test_create_list_remove(tmp_path: Path) -> None:
    r = run("-i", "3", "--size", "8", "--path-base", str(tmp_path))
    assert r.returncode == 0, r.stderr
    dev = tmp_path / "orionsock3"
    st = os.stat(dev)
    assert st.st_size == 8 << 20 and st.st_mode & 0o777 == 0o600
    assert "already exists" in run("-i", "3", "--size", "8", "--path-base", str(tmp_path)).stdout
    listing = run("-l", "--path-base", str(tmp_path)).stdout
    assert f"{dev}  8 MiB  container  mode 0600" in listing and "not served" in listing
    assert run("-r", "-i", "3", "--path-base", str(tmp_path)).returncode == 0
    assert not dev.exists()
    assert "no such device" in run("-r", "-i", "3", "--path-base", str(tmp_path)).stderr


def test_refuses_to_clobber_a_device_in_use(tmp_path: Path) -> None:
    o = Oriond(tmp_path).start()
    try:
        path = o.device(2, size_mib=8)
        o.wait_log("serving container device")
        dev = Device(path)
        ch = claim_channel(dev)
        for args in (("-i", "2", "--size", "16"), ("-i", "2", "--force"), ("-r", "-i", "2")):
            r = run(*args, "--path-base", str(o.shm))
            assert r.returncode != 0 and "in use" in r.stderr, r
        assert os.stat(path).st_size == 8 << 20
        ch.release()
        dev.close()
    finally:
        o.stop()


def test_bad_arguments_are_explained(tmp_path: Path) -> None:
    r = run("-i", "1", "--size", "lots", "--path-base", str(tmp_path))
    assert r.returncode != 0 and "lots" in r.stderr
    r = run("-i", "1", "--owner", "no-such-user-xyz", "--path-base", str(tmp_path))
    assert r.returncode != 0 and "no-such-user-xyz" in r.stderr
