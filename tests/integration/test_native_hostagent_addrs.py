"""The native client's address precedence, as the Python client's (tests/unit/test_config_hostagent.py):
environment > ~/.orion/client.conf > /etc/orion/client.conf > the host agent's fw_cfg entry
(ORION_FWCFG_PATH stands in for /sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/config/raw) >
none. The controller named is one that refuses connections: the seeds' lines name the address
and where it came from, which is what a user reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orion_virt import compat
from orion_virt.launch import free_port
from tests.integration.test_native_controller import BUILD, lines, run
from tests.integration.test_native_controller import programs as programs  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _env(tmp_path: Path, fwcfg: str) -> dict[str, str]:
    fw = tmp_path / "fwcfg"
    fw.write_text(fwcfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(HOME=str(tmp_path), LD_LIBRARY_PATH=str(BUILD), ORION_VGPU="1", ORION_FWCFG_PATH=str(fw),
               ORION_CLIENT_CONF_ETC=str(tmp_path / "etc.conf"), ORION_SHM_PATH_BASE=str(tmp_path))
    return env


def _refused_line(programs: dict[str, Path], env: dict[str, str]) -> str:  # noqa: F811
    r = run(programs["init_only"], env=env)
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    got = lines(r.stderr)
    return got[got.index(compat.MSG_CONNECT) + 2]


@pytest.mark.parametrize("over", ["none", "etc", "home", "env"])
def test_the_controller_comes_from_the_highest_source(programs: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                      over: str) -> None:
    fw_addr, addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = _env(tmp_path, f"server_addr=127.0.0.1:9960\ncontroller_addr={fw_addr}")
    origin = "fw_cfg opt/org.orion/config"
    if over == "etc":
        Path(env["ORION_CLIENT_CONF_ETC"]).write_text(f"[controller]\ncontroller_addr = {addr}\n")
        origin = env["ORION_CLIENT_CONF_ETC"]
    elif over == "home":
        Path(env["ORION_CLIENT_CONF_ETC"]).write_text(f"[controller]\ncontroller_addr = {fw_addr}\n")
        (tmp_path / ".orion").mkdir()
        (tmp_path / ".orion" / "client.conf").write_text(f"[controller]\ncontroller_addr = {addr}\n")
        origin = str(tmp_path / ".orion" / "client.conf")
    elif over == "env":
        env["ORION_CONTROLLER"] = addr
        origin = "environment ORION_CONTROLLER"
    want = fw_addr if over == "none" else addr
    assert _refused_line(programs, env) == f"Orion Controller {want} (from {origin}): Connection refused"


def test_a_malformed_entry_is_named(programs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    env = _env(tmp_path, "controller_addr=no-port\n")
    r = run(programs["init_only"], env=env)
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert (f"{tmp_path / 'fwcfg'} (fw_cfg opt/org.orion/config): controller_addr='no-port': expected HOST:PORT"
            in r.stderr), r.stderr
    env["ORION_CONTROLLER"] = addr = f"127.0.0.1:{free_port()}"
    assert _refused_line(programs, env).startswith(f"Orion Controller {addr} (from environment ORION_CONTROLLER)")


def test_an_oversized_entry_is_refused(programs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    env = _env(tmp_path, "controller_addr=127.0.0.1:9123\n" + "x" * 4096)
    r = run(programs["init_only"], env=env)
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert "more than 4096 bytes, not an entry orion-virt attach wrote" in r.stderr, r.stderr


def test_no_entry_is_direct_mode(programs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    env = _env(tmp_path, "")
    env["ORION_FWCFG_PATH"] = str(tmp_path / "absent")
    r = run(programs["init_only"], env=env)
    # no controller is asked (oriond itself is not there: its own "Could not connect to server" line)
    assert compat.MSG_VERSION not in r.stderr and "Orion Controller" not in r.stderr, r.stderr
    assert "cannot connect to oriond at 127.0.0.1:9960" in r.stderr, r.stderr
