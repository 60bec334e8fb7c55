"""The hook's ``prepare`` for a doorbell domain: the device is flagged with the domain's vectors,
and the hook waits for oriond's ivshmem server (H_DB_LISTENING in the fresh file), bounded."""
from __future__ import annotations

import io
import struct
import threading
import time
from pathlib import Path

import pytest

from orion_virt.errors import HostError
from orion_virt.host import hook
from orion_virt.transport import shmdev


def test_waits_for_the_server_of_the_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "orionsock3"
    shmdev.format_device(path, 2 << 20, vm=True, doorbell_vectors=9)
    dev = shmdev.Device(path)
    try:
        assert dev.doorbell and dev.doorbell_vectors == 9
    finally:
        dev.close()
    log = hook.HookLog(str(tmp_path / "log"), io.StringIO())

    def announce() -> None:
        time.sleep(0.2)
        with open(path, "r+b") as f:
            f.seek(8 * shmdev.H_DB_LISTENING)
            f.write(struct.pack("<Q", 1234))

    t = threading.Thread(target=announce)
    t.start()
    waited = hook.wait_for_doorbell_server("vm1", path, "/run/orion/ivshmem-orionsock3.sock", log, timeout=5)
    t.join()
    log.close()
    assert 0.15 < waited < 5
    text = (tmp_path / "log" / "hook.log").read_text()
    assert "vm1: oriond's ivshmem server listens on /run/orion/ivshmem-orionsock3.sock" in text
    assert "WARNING" not in text


def test_gives_up_after_the_timeout_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "orionsock4"
    shmdev.format_device(path, 2 << 20, vm=True, doorbell_vectors=9)
    log = hook.HookLog(str(tmp_path / "log"), io.StringIO())
    with pytest.raises(HostError, match="did not listen on .* within .*enable_kvm"):
        hook.wait_for_doorbell_server("vm1", path, "/elsewhere/x.sock", log, timeout=0.1)
    log.close()
    assert "oriond listens at /run/orion/ivshmem-orionsock4.sock" in (tmp_path / "log" / "hook.log").read_text()


def test_a_plain_vm_device_has_no_doorbell(tmp_path: Path) -> None:
    path = tmp_path / "orionsock5"
    shmdev.format_device(path, 2 << 20, vm=True)
    dev = shmdev.Device(path)
    try:
        assert not dev.doorbell and dev.doorbell_vectors == 0
    finally:
        dev.close()
