"""orion-check install client / runtime client, and the transport dry run behind it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.check import client as check
from orion_virt.client.select import plan
from orion_virt.config import load_client_config
from orion_virt.controller import client as ctl
from orion_virt.controller.api import make_server
from orion_virt.controller.pool import Policy
from orion_virt.controller.service import Controller
from orion_virt.controller.store import SqliteStore
from orion_virt.installer import core
from orion_virt.launch import free_port
from orion_virt.transport import shmdev
from orion_virt.transport.shmdev import Device, format_device


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[str]:
    c = Controller(SqliteStore(tmp_path / "c.db"), Policy(lease_seconds=30, heartbeat_timeout=15), b"k" * 32)
    srv = make_server(c, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{srv.server_address[1]}"
    ctl.register_node(addr, ctl.NodeInfo("gpu-host", "127.0.0.1:9960"),
                      [ctl.GpuInfo(0, "GPU-0", "Tesla V100-PCIE-16GB", 16384),
                       ctl.GpuInfo(1, "GPU-1", "Tesla V100-PCIE-16GB", 16384)])
    yield addr
    srv.shutdown()
    srv.server_close()


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


def _env(tmp_path: Path, conf: str | None = None, **extra: str) -> dict[str, str]:
    etc = tmp_path / "etc-client.conf"
    if conf is not None:
        etc.write_text(conf)
    return {"HOME": str(tmp_path / "home"), "ORION_CLIENT_CONF_ETC": str(etc), "PATH": "/usr/bin:/bin",
            "ORION_SHM_PATH_BASE": str(tmp_path / "shm"), "ORION_CHECK_ROOT": str(tmp_path / "root"),
            "ORION_SERVER": _closed_port(), **extra}


def _run(fn, env) -> tuple[int, str]:
    lines: list[str] = []
    rc = fn(env, lines.append)
    return rc, "\n".join(lines)


def test_runtime_client_with_a_controller_prints_the_seeds_lines(tmp_path: Path, controller: str) -> None:
    rc, text = _run(check.runtime_client, _env(tmp_path, f"[controller]\ncontroller_addr = {controller}\n"))
    assert (f"Orion Controller addrress is set as {controller} in configuration file. Using this address "
            "to diagnose Orion Controller") in text
    assert f"Address {controller} is reached." in text
    assert "Orion Controller Version Infomation : data_version=0.1,api_version=0.1" in text
    assert "There are 8 vGPU under managered by Orion Controller. 8 vGPU are free now." in text
    assert "[Info] Environment variable ORION_CONTROLLER has the first priority." in text
    assert "with a controller, the server's address comes with each allocation" not in text  # ORION_SERVER set
    assert rc == 1  # the TCP server named by ORION_SERVER is down, and the runtime is not installed
    assert "Orion Server cannot be reached through" in text


def test_runtime_client_reports_where_each_value_comes_from(tmp_path: Path) -> None:
    home_conf = tmp_path / "home/.orion/client.conf"
    home_conf.parent.mkdir(parents=True)
    home_conf.write_text("[controller]\ncontroller_addr = 10.0.0.2:9123\n")
    env = _env(tmp_path, "[controller]\ncontroller_addr = 10.0.0.1:9123\n[client-log]\nlog_level = DEBUG\n",
               ORION_CONTROLLER=_closed_port(), ORION_VGPU="2")
    rc, text = _run(check.runtime_client, env)
    etc = env["ORION_CLIENT_CONF_ETC"]
    assert f"    {etc}  [found]" in text and f"    {home_conf}  [found]" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("controller_addr "))
    assert line.endswith(f"<- environment ORION_CONTROLLER; overrides {etc}, {home_conf}"), line
    assert any(ln.strip().startswith("log_level") and ln.endswith(f"<- {etc}") for ln in text.splitlines())
    assert any(ln.strip().startswith("ORION_VGPU") and "= 2" in ln for ln in text.splitlines())
    assert "in environment variable ORION_CONTROLLER. Using this address" in text
    assert "cannot be reached" in text and "Fail to get version information from Orion Controller." in text
    assert rc == 1


def test_runtime_client_bad_config_names_file_and_key(tmp_path: Path) -> None:
    rc, text = _run(check.runtime_client, _env(tmp_path, "[controller]\ncontroler_addr = 1.2.3.4:9123\n"))
    assert rc == 1 and "unknown key 'controler_addr'" in text


def test_runtime_client_sees_an_installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(tmp_path)
    monkeypatch.setattr(core, "native_library", lambda name="libcuda.so.1": None)
    core.install(root=env["ORION_CHECK_ROOT"], python=sys.executable, out=lambda s: None)
    rc, text = _run(check.runtime_client, env)
    assert "Orion client is installed in /usr/lib/orion" in text
    assert ("[Error] the native client /usr/lib/orion/lib/libcuda.so.1 is missing: build it (make native) "
            "and reinstall: install-client -d /usr/lib/orion") in text and rc == 1
    monkeypatch.setattr(core, "native_library", lambda name="libcuda.so.1": b"\x7fELF " + name.encode())
    core.install(root=env["ORION_CHECK_ROOT"], python=sys.executable, out=lambda s: None)
    _, text = _run(check.runtime_client, env)
    assert "is missing" not in text
    assert ("[Info] the system's libcuda.so.1 is not the native client: run programs with orion-run, which "
            "puts /usr/lib/orion/lib/libcuda.so.1 first") in text  # a --root tree: ldconfig is not asked


def test_install_client_check(tmp_path: Path) -> None:
    rc, text = _run(check.install_client, _env(tmp_path, "[controller]\ncontroller_addr = 1.2.3.4:9123\n"))
    assert rc == 0, text
    assert "Checking the environment for the Orion Client ..." in text
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in text
    assert "is valid and will be kept" in text and "The Orion Client can be installed." in text
    rc, text = _run(check.install_client, _env(tmp_path, "[nope]\n"))
    assert rc == 1 and "unknown section [nope]" in text


def test_run_dispatch_and_guest_main(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check.run("bogus", {}, print)
    r = subprocess.run([sys.executable, "-m", "orion_virt.check.client", "runtime", "server"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "the server checks run on the host" in r.stderr


# -- plan(): the dry run of the transport choice ------------------------------------------------


def _served(path: Path, beat: bool = True) -> threading.Event:
    """Pretend to be oriond: mark the device served and (optionally) tick its heartbeat."""
    stop = threading.Event()
    dev = Device(path)
    dev.q[shmdev.H_SERVER_EPOCH] = 1

    def tick() -> None:
        while not stop.wait(0.01):
            dev.q[shmdev.H_SERVER_BEAT] = dev.q[shmdev.H_SERVER_BEAT] + 1
        dev.close()

    if beat:
        threading.Thread(target=tick, daemon=True).start()
    return stop


def test_plan_picks_a_served_device_without_claiming(tmp_path: Path) -> None:
    dev = tmp_path / "orionsock1"
    format_device(dev, 4 << 20)
    cfg = load_client_config(_env(tmp_path, ORION_SHM_PATH_BASE=str(tmp_path)))
    p = plan(cfg)
    assert p.transport == "tcp" and "no oriond is serving this device" in p.reason
    stop = _served(dev)
    try:
        p = plan(cfg)
        assert (p.transport, p.target, p.warnings) == ("shm", str(dev), ())
        d = Device(dev)
        assert d.info().channel_states == (shmdev.FREE,)  # nothing was claimed
        d.close()
    finally:
        stop.set()


def test_plan_notices_a_stopped_heartbeat_and_a_foreign_tenant(tmp_path: Path) -> None:
    dev = tmp_path / "orionsock1"
    format_device(dev, 4 << 20, host_path="/dev/shm/orionsock1")
    cfg = load_client_config(_env(tmp_path, ORION_SHM_PATH_BASE=str(tmp_path)))
    _served(dev, beat=False)
    p = plan(cfg, beat_wait=0.1)
    assert "heartbeat is stopped" in p.reason
    assert p.warnings and f"{dev} was created on the host as /dev/shm/orionsock1" in p.warnings[0]
    stop = _served(dev)
    d = Device(dev)
    off = d.layout.channel_offset(0)
    c = d.ctrl(0)
    c[shmdev.C_STATE] = shmdev.SERVING
    c[shmdev.C_OWNER_NS] = 4026539999
    d.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import fcntl, os, sys, time\n"
                                f"fd = os.open({str(dev)!r}, os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX, 1, {off})\n"
                                "print('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = plan(cfg)
        assert p.transport == "tcp" and "is already in use by another container" in p.reason
        assert "orion-shm -i N" in p.reason
    finally:
        holder.kill()
        holder.wait(10)
        stop.set()
    time.sleep(0.05)


def test_plan_enable_net_and_explicit_path_without_device(tmp_path: Path) -> None:
    cfg = load_client_config(_env(tmp_path, ORION_ENABLE_NET="1"))
    assert plan(cfg).reason.endswith("because enable_net is true")
    cfg = load_client_config(_env(tmp_path))
    assert "holds no Orion device" in plan(cfg).reason and "docker run -v" in plan(cfg).reason
