"""Containers, for real: clients in fresh mount/IPC/PID (and network) namespaces with a private
/dev/shm, reaching an oriond (sim backend) on the host through ONE bind-mounted shared-memory
device, or over TCP through a veth pair — what ``docker run -v /dev/shm/orionsockN:...:rw`` and
the docker0 bridge do. Every case asserts the message the user sees.

The host's devices live in a temporary shm_path_base (S) that oriond serves; a container gets an
empty tmpfs over S and over /dev/shm, then the one device file bound at its path (tests/nsutil).
Each container runs under a timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import random
import struct
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.nsutil import (
    Lab,
    Mount,
    Oriond,
    client_env,
    client_log,
    orion_run,
    orion_shm,
    skip_reason,
    start_oriond,
)

pytestmark = pytest.mark.integration

VECTOR_ADD = "examples/vectorAdd.py"

# holds a session open, calling oriond every 50 ms, until STOP exists or a call fails; only what
# either client (the native libcuda.so.1 or the Python alias) shows a user: CUresults, the log
HOLD = r'''
import os, sys, time
from cuda.bindings import driver as cuda
err, = cuda.cuInit(0)
if err != cuda.CUresult.CUDA_SUCCESS:
    print(f"cuInit failed: {err.name}", flush=True)
    sys.exit(2)
err, dev = cuda.cuDeviceGet(0)
err, ctx = cuda.cuCtxCreate(None, 0, dev)
print("READY", flush=True)
while not os.path.exists(sys.argv[1]):
    err, ptr = cuda.cuMemAlloc(4096)
    if err != cuda.CUresult.CUDA_SUCCESS:
        print(f"CALL FAILED {err.name}", flush=True)
        sys.exit(3)
    cuda.cuMemFree(ptr)
    time.sleep(0.05)
print("DONE", flush=True)
'''


@pytest.fixture
def lab() -> Iterator[Lab]:
    why = skip_reason()
    if why:
        pytest.skip(why)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def shm(lab: Lab) -> Path:
    return lab.path("shm")


@pytest.fixture
def oriond(lab: Lab, shm: Path) -> Oriond:
    return start_oriond(lab, shm=shm)


def _wait_served(dev: Path, timeout: float = 5.0) -> None:
    """Until oriond has taken up ``dev`` (it rescans its directory every 0.5 s)."""
    from orion_virt.transport.shmdev import Device

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = Device(dev)
        served = d.info().served
        d.close()
        if served:
            return
        time.sleep(0.05)
    raise AssertionError(f"oriond did not serve {dev} within {timeout} s")


def _device(shm: Path, index: int) -> Path:
    dev = orion_shm(shm, index)
    _wait_served(dev)
    return dev


def _wait_line(log: Path, word: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if word in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{word!r} not seen within {timeout} s:\n{log.read_text()}")


def _hold_prog(lab: Lab) -> tuple[Path, Path]:
    prog = lab.tmp / "hold.py"
    prog.write_text(HOLD)
    return prog, lab.tmp / f"STOP-{random.randrange(1 << 30)}"


# -- (a) the happy path ------------------------------------------------------------------------


def test_a_container_uses_its_shm_device(lab: Lab, shm: Path, oriond: Oriond) -> None:
    dev = _device(shm, 1)
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env, binds=[Mount(str(dev), str(dev))], hide=[str(shm)],
                net=True, timeout=60)
    assert r.rc == 0, r.text
    assert "Test PASSED" in r.out
    assert "VirtaiTech Resource" in r.err and "Client exits with allocation ID" in r.err
    assert "using TCP" not in r.err and "warning" not in r.err.lower()
    log = client_log(env)
    assert f"transport: shm device {dev} channel 0" in log, log
    assert f"shared-memory channel {dev}#0" in oriond.server_log


# -- (b) no device: TCP, and the reason said once ----------------------------------------------


def test_b_no_device_falls_back_to_tcp_and_says_why_once(lab: Lab, shm: Path, oriond: Oriond) -> None:
    _device(shm, 1)  # exists on the host, but is not mounted into this container
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env, hide=[str(shm)], timeout=60)
    assert r.rc == 0, r.text
    assert "Test PASSED" in r.out
    why = f"shm_path_base {shm} (from environment ORION_SHM_PATH_BASE) holds no Orion device"
    assert r.err.count("using TCP") == 1 and r.err.count(why) == 1, r.err
    assert f"docker run -v {shm}/orionsockN:{shm}/orionsockN:rw" in r.err
    log = client_log(env)
    assert log.count(f"transport: TCP to {oriond.addr} because {why}") == 1, log


def test_b_default_path_without_device_is_quiet_tcp(lab: Lab, shm: Path, oriond: Oriond) -> None:
    """Nothing configured for shm (a remote client): TCP without noise on the screen."""
    env = client_env(lab, ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env, hide=[str(shm)], timeout=60)
    assert r.rc == 0, r.text
    assert "using TCP" not in r.err
    assert client_log(env).count("because no shared-memory device under /dev/shm") == 1


# -- (c) two containers, one device ------------------------------------------------------------


def test_c_second_container_on_same_device_gets_clear_error(lab: Lab, shm: Path, oriond: Oriond) -> None:
    dev = _device(shm, 1)
    prog, stop = _hold_prog(lab)
    mount = [Mount(str(dev), str(dev))]
    env1 = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    first, log1 = lab.start(orion_run(str(prog), str(stop)), env1, binds=mount, hide=[str(shm)], net=True)
    _wait_line(log1, "READY")
    assert f"transport: shm device {dev} channel 0" in client_log(env1), client_log(env1)

    # no network: the error is the answer, promptly (no hang)
    env2 = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env2, binds=mount, hide=[str(shm)], net=True, timeout=30)
    assert r.rc != 0 and r.seconds < 15, r.text
    assert f"{dev} is already in use by another container" in r.err, r.err
    assert "orion-shm -i N" in r.err and "docker run -v /dev/shm/orionsockN:/dev/shm/orionsockN:rw" in r.err
    assert "Client exits without allocation ID" in r.err

    # with the host's network: falls back to TCP, saying why once, and works
    env3 = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env3, binds=mount, hide=[str(shm)], timeout=30)
    assert r.rc == 0 and "Test PASSED" in r.out, r.text
    assert r.err.count("using TCP") == 1 and "already in use by another container" in r.err

    stop.touch()
    assert first.wait(20) == 0 and "DONE" in log1.read_text()
    # the first container is gone: its channel claim died with it, the device is free again
    env4 = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env4, binds=mount, hide=[str(shm)], net=True, timeout=30)
    assert r.rc == 0, r.text
    assert f"transport: shm device {dev}" in client_log(env4)


# -- (d) mounted at another path ---------------------------------------------------------------


def test_d_device_at_other_path_warns_with_fix_and_works(lab: Lab, shm: Path, oriond: Oriond) -> None:
    dev = _device(shm, 4)
    env = client_env(lab, ORION_SERVER=oriond.addr)  # client looks in /dev/shm (the default)
    r = lab.run(orion_run(VECTOR_ADD), env, binds=[Mount(str(dev), "/dev/shm/orionsock4")],
                hide=[str(shm)], net=True, timeout=60)
    assert r.rc == 0 and "Test PASSED" in r.out, r.text
    assert f"/dev/shm/orionsock4 was created on the host as {dev}" in r.err, r.err
    assert f"docker run -v {dev}:{dev}:rw" in r.err
    assert r.err.count("was created on the host as") == 1
    assert "transport: shm device /dev/shm/orionsock4" in client_log(env)


# -- (e) device deleted under a running client -------------------------------------------------


def test_e_device_deleted_on_host_fails_running_client_fast(lab: Lab, shm: Path, oriond: Oriond) -> None:
    dev = _device(shm, 1)
    prog, stop = _hold_prog(lab)
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    proc, log = lab.start(orion_run(str(prog), str(stop)), env, binds=[Mount(str(dev), str(dev))],
                          hide=[str(shm)], net=True)
    _wait_line(log, "READY")
    t0 = time.monotonic()
    dev.unlink()
    try:
        rc = proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the client hung after its device was deleted:\n{log.read_text()}")
    took = time.monotonic() - t0
    text = log.read_text()
    assert rc == 3 and took < 5, (rc, took, text)
    assert "CALL FAILED CUDA_ERROR_DEVICE_UNAVAILABLE" in text
    assert f"lost the connection to oriond: {dev}: device was removed on the host" in text
    assert f"{dev}: device was removed on the host; ending its sessions" in oriond.server_log


def test_e_oriond_stopped_fails_running_client_fast(lab: Lab, shm: Path, oriond: Oriond) -> None:
    dev = _device(shm, 1)
    prog, stop = _hold_prog(lab)
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    proc, log = lab.start(orion_run(str(prog), str(stop)), env, binds=[Mount(str(dev), str(dev))],
                          hide=[str(shm)], net=True)
    _wait_line(log, "READY")
    t0 = time.monotonic()
    oriond.proc.terminate()
    oriond.proc.wait(15)
    rc = proc.wait(15)
    assert rc == 3 and time.monotonic() - t0 < 8, log.read_text()
    assert "lost the connection to oriond" in log.read_text() and "oriond stopped" in log.read_text()


# -- (f) wrong size / layout -------------------------------------------------------------------


def _corrupt_version(dev: Path) -> None:
    with open(dev, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 9))


def _corrupt_size(dev: Path) -> None:
    with open(dev, "r+b") as f:
        f.truncate(16 << 20)


def _corrupt_magic(dev: Path) -> None:
    with open(dev, "r+b") as f:
        f.write(bytes(8))


@pytest.mark.parametrize("corrupt,expect", [
    (_corrupt_version, ("layout version 9, this client speaks 1: upgrade the client or recreate the "
                        "device with this oriond's orion-shm")),
    (_corrupt_size, "header says 8388608 bytes but the device has 16777216: recreate it with orion-shm"),
    (_corrupt_magic, "not an Orion device (no header); create it with orion-shm"),
], ids=["layout-version", "size", "magic"])
def test_f_bad_device_names_the_fix(lab: Lab, shm: Path, oriond: Oriond, corrupt, expect: str) -> None:
    dev = orion_shm(shm, 2)
    corrupt(dev)
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env, binds=[Mount(str(dev), str(dev))], hide=[str(shm)],
                net=True, timeout=30)
    assert r.rc != 0 and r.seconds < 15, r.text
    assert f"{dev}: {expect}" in r.err, r.err
    assert "Could not connect to server" in r.err
    # with a network path the client still runs, over TCP, saying why
    env = client_env(lab, ORION_SHM_PATH_BASE=str(shm), ORION_SERVER=oriond.addr)
    r = lab.run(orion_run(VECTOR_ADD), env, binds=[Mount(str(dev), str(dev))], hide=[str(shm)], timeout=30)
    assert r.rc == 0 and "Test PASSED" in r.out, r.text
    assert r.err.count("using TCP") == 1 and expect in r.err


# -- (g) TCP through a veth pair ---------------------------------------------------------------


def _free_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, timeout=30).stdout
    for _ in range(50):
        net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 255)}"
        if f"{net}." not in routes:
            return net
    pytest.skip("no free 10.x.y.0/24 subnet for the test bridge")


def test_g_tcp_over_veth_from_several_containers(lab: Lab, shm: Path) -> None:
    why = skip_reason(need_ip=True)
    if why:
        pytest.skip(why)
    net = _free_subnet()
    bridge = lab.bridge(f"{net}.1/24")  # docker0's role
    od = start_oriond(lab, shm=shm, bind=f"{net}.1")
    _device(shm, 1)  # a device exists on the host; the containers do not get it
    nses = [lab.netns_on_bridge(bridge, f"{net}.{10 + i}/24", f"{net}.1") for i in range(3)]
    runs = []
    for i, ns in enumerate(nses):
        env = client_env(lab, ORION_SERVER=od.addr)
        proc, log = lab.start(orion_run(VECTOR_ADD), env, hide=[str(shm)], netns=ns, log_name=f"g{i}.log")
        runs.append((proc, log, env))
    for proc, log, env in runs:
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"container hung:\n{log.read_text()}")
        assert rc == 0 and "Test PASSED" in log.read_text(), log.read_text()
        assert client_log(env).count(f"transport: TCP to {od.addr} because no shared-memory device") == 1
    peers = {line.split("TCP connection from ")[1].split(":")[0]
             for line in od.server_log.splitlines() if "TCP connection from" in line}
    assert {f"{net}.{10 + i}" for i in range(3)} <= peers, od.server_log
    # the containers cannot reach the host's loopback: oriond is only on the bridge address
    env = client_env(lab, ORION_SERVER=f"127.0.0.1:{od.addr.rsplit(':', 1)[1]}")
    r = lab.run(orion_run(VECTOR_ADD), env, hide=[str(shm)], netns=nses[0], timeout=30)
    assert r.rc != 0 and "Could not connect to server" in r.err, r.text
