"""The server's deployment files: server.conf, oriond.service, entrypoint.sh."""

from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from pathlib import Path

import click
import pytest

from orion_virt.cli.oriond import main as oriond_main
from orion_virt.config import ServerConfig, load_server_config

REPO = Path(__file__).resolve().parents[3]
SERVER = REPO / "server"


def test_server_conf_parses_and_matches_the_defaults() -> None:
    cfg = load_server_config(SERVER / "server.conf")
    assert cfg.source == str(SERVER / "server.conf")
    assert cfg == ServerConfig(source=cfg.source)


def test_server_conf_documents_every_seeds_key() -> None:
    text = (SERVER / "server.conf").read_text()
    for key in ("listen_port", "bind_addr", "enable_shm", "enable_kvm", "enable_rdma", "log_with_time",
                "log_to_screen", "log_to_file", "log_level", "file_log_level", "shm_path_base",
                "shm_group_name", "shm_user_name", "shm_buffer_size", "controller_addr"):
        assert key in text, key


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (SERVER / "oriond.service").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_oriond_service_runs_the_oriond_console_script() -> None:
    unit = _unit()
    argv = shlex.split(unit["ExecStart"][0])
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "oriond"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["oriond"] == "orion_virt.cli:oriond_main"
    ctx = oriond_main.make_context("oriond", argv[1:])  # the flags, if any, are oriond's
    assert isinstance(ctx, click.Context)
    assert unit["KillSignal"] == ["SIGTERM"] and unit["LogsDirectory"] == ["orion"]
    assert "WantedBy" in unit and unit["WantedBy"] == ["multi-user.target"]
    assert any(v.startswith("LD_LIBRARY_PATH=") for v in unit["Environment"])


def _entry(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    conf = tmp_path / "etc/orion/server.conf"
    fake = tmp_path / "fake-oriond"
    fake.write_text(f"#!/bin/sh\necho \"oriond $*\" > {tmp_path}/argv\n")
    fake.chmod(0o755)
    full = {"PATH": os.environ["PATH"], "ORION_SERVER_CONF": str(conf), "ORIOND": str(fake), **env}
    r = subprocess.run(["sh", str(SERVER / "entrypoint.sh"), "--backend", "sim"], env=full,
                       capture_output=True, text=True, timeout=30)
    return r, conf


def test_entrypoint_generates_server_conf_from_the_environment(tmp_path: Path) -> None:
    r, conf = _entry(tmp_path, BIND_ADDR="172.17.0.1", PORT="9970", VGPU="2", ORION_CONTROLLER="127.0.0.1:9123")
    assert r.returncode == 0, r.stderr
    cfg = load_server_config(conf)
    assert (cfg.bind_addr, cfg.listen_port, cfg.vgpu_count, cfg.controller_addr) == \
        ("172.17.0.1", 9970, 2, "127.0.0.1:9123")
    assert cfg.enable_shm and not cfg.enable_kvm and cfg.shm_path_base == "/dev/shm"
    assert (tmp_path / "argv").read_text().strip() == f"oriond --config {conf} --backend sim"
    assert "generated" in r.stdout


def test_entrypoint_defaults_and_no_controller(tmp_path: Path) -> None:
    r, conf = _entry(tmp_path)
    cfg = load_server_config(conf)
    assert (cfg.bind_addr, cfg.listen_port, cfg.vgpu_count, cfg.controller_addr) == \
        ("172.17.0.1", 9960, 4, "127.0.0.1:9123")
    other = tmp_path / "b"
    other.mkdir()
    r, conf = _entry(other, ORION_CONTROLLER="none")
    assert r.returncode == 0 and load_server_config(conf).controller_addr == ""


def test_entrypoint_keeps_an_edited_conf(tmp_path: Path) -> None:
    r, conf = _entry(tmp_path, PORT="9970")
    conf.write_text(conf.read_text().replace("enable_shm = \"true\"", "enable_shm = \"false\""))
    r, conf = _entry(tmp_path, PORT="9980")
    assert "keeping the existing" in r.stdout
    assert load_server_config(conf).listen_port == 9970 and not load_server_config(conf).enable_shm
    r, conf = _entry(tmp_path, PORT="9980", ORION_REGENERATE_CONF="1")
    assert load_server_config(conf).listen_port == 9980


@pytest.mark.parametrize("env,msg", [
    ({"PORT": "99x"}, "PORT=99x is not a port number"),
    ({"PORT": "70000"}, "out of range"),
    ({"VGPU": "0"}, "VGPU=0 must be at least 1"),
    ({"BIND_ADDR": "1.2.3.4; rm -rf /"}, "is not an address"),
    ({"ORION_CONTROLLER": "controller"}, "is not HOST:PORT"),
])
def test_entrypoint_refuses_bad_values(tmp_path: Path, env: dict[str, str], msg: str) -> None:
    r, conf = _entry(tmp_path, **env)
    assert r.returncode == 2 and msg in r.stderr and not conf.exists()


def test_entrypoint_is_executable() -> None:
    assert os.access(SERVER / "entrypoint.sh", os.X_OK)
