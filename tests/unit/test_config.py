"""Config precedence and error messages that name file, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orion_virt.config import load_client_config, load_server_config
from orion_virt.errors import ConfigError


def test_server_defaults_and_seed_style_file(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text('[server]\n    listen_port = 9961\n    bind_addr = 33.31.0.1\n    enable_shm = "true"\n'
                    '    enable_rdma = "false"\n    enable_kvm = "true"\n[server-shm]\n    shm_buffer_size = 64\n'
                    '[log]\n    log_level = DEBUG   ; comment\n')
    cfg = load_server_config(conf)
    assert (cfg.listen_port, cfg.bind_addr, cfg.enable_kvm, cfg.shm_buffer_size) == (9961, "33.31.0.1", True, 64 << 20)
    assert cfg.log.log_level == "DEBUG" and cfg.source == str(conf)
    assert load_server_config(conf, {"listen_port": 1234}).listen_port == 1234


@pytest.mark.parametrize("body, message", [
    ("[server]\nlisten_prot = 1\n", "[server] unknown key 'listen_prot'"),
    ("[sever]\nlisten_port = 1\n", "unknown section [sever]"),
    ("[server]\nlisten_port = 99999\n", "[server] listen_port = '99999': port out of range"),
    ("[server]\nenable_shm = maybe\n", "[server] enable_shm = 'maybe': expected true/false"),
])
def test_server_errors_name_file_section_and_key(tmp_path: Path, body: str, message: str) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_server_config(conf)
    assert str(e.value).startswith(str(conf)) and message in str(e.value)


def test_client_precedence_env_over_home_over_etc(tmp_path: Path) -> None:
    etc = tmp_path / "etc.conf"
    etc.write_text("[controller]\ncontroller_addr = 10.0.0.1:9123\n[client]\nenable_net = true\n")
    home = tmp_path / "home"
    (home / ".orion").mkdir(parents=True)
    (home / ".orion" / "client.conf").write_text("[controller]\ncontroller_addr = 10.0.0.2:9123\n")
    env = {"HOME": str(home), "ORION_CLIENT_CONF_ETC": str(etc), "ORION_VGPU": "2"}
    cfg = load_client_config(env)
    assert cfg.controller_addr == "10.0.0.2:9123" and cfg.enable_net is True and cfg.vgpu == 2
    assert cfg.origin("controller_addr") == str(home / ".orion" / "client.conf")
    assert cfg.origin("enable_net") == str(etc)
    cfg = load_client_config({**env, "ORION_CONTROLLER": "127.0.0.1:9123"})
    assert cfg.controller_addr == "127.0.0.1:9123" and cfg.origin("controller_addr") == "environment ORION_CONTROLLER"


def test_client_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="ORION_VGPU='two'"):
        load_client_config({"ORION_VGPU": "two", "HOME": "/nonexistent"})


def _seeds_server_conf(tmp_path: Path) -> Path:
    """The keys of the seeds' server.conf that have no effect here."""
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\n    enable_rdma = true\n    ibverbs_device = mlx5_0\n"
                    "[server-nccl]\n    comm_id = 127.0.0.1:9970\n"
                    "[throttle]\n    throttle_level = 100\n    enable_computation_throttle = true\n"
                    "    computation_throttle_mode2 = true\n")
    return conf


def test_keys_without_effect_are_logged_once_with_the_reason(tmp_path: Path, caplog) -> None:
    import logging

    from orion_virt.config import warn_ignored_keys

    conf = _seeds_server_conf(tmp_path)
    cfg = load_server_config(conf)  # the seeds' file loads
    assert cfg.enable_computation_throttle is True
    log = logging.getLogger("test.config.ignored")
    with caplog.at_level(logging.WARNING, logger="test.config.ignored"):
        warn_ignored_keys(cfg, log)
        warn_ignored_keys(load_server_config(conf), log)  # loaded and started again: no repeat
    lines = [r.getMessage() for r in caplog.records]
    for key, why in [("[server] enable_rdma", "not supported, using TCP/shm"),
                     ("[server] ibverbs_device", "no RDMA transport"),
                     ("[server-nccl] comm_id", "NCCL is not remoted"),
                     ("[throttle] throttle_level", "compute share"),
                     ("[throttle] computation_throttle_mode2", "single throttle mode")]:
        hits = [ln for ln in lines if f"{key} is ignored" in ln]
        assert len(hits) == 1, (key, lines)
        assert why in hits[0] and hits[0].startswith(f"{conf}: ")
    assert len(lines) == 5 and not any("enable_computation_throttle is ignored" in ln for ln in lines)


def test_rdma_off_is_not_reported(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text('[server]\n    enable_rdma = "false"\n')
    assert load_server_config(conf).ignored == ()


def test_oriond_logs_the_ignored_keys_at_start(tmp_path: Path) -> None:
    """The entry point that loads the config (oriond) logs them to server.log."""
    import subprocess
    import sys

    conf = _seeds_server_conf(tmp_path)
    conf.write_text(conf.read_text().replace("[server]\n", "[server]\n    listen_port = 1\n    backend = sim\n"
                                             "    bind_addr = 203.0.113.1\n"))
    # an unbindable address: oriond reads its config, sets up its logs, logs, then fails to listen
    r = subprocess.run([sys.executable, "-c", "from orion_virt.cli.oriond import main; main()", "--config",
                        str(conf), "--log-dir", str(tmp_path / "log")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    log = (tmp_path / "log" / "server.log").read_text()
    assert log.count("[server] enable_rdma is ignored: not supported, using TCP/shm") == 1, log
    assert log.count("[throttle] throttle_level is ignored") == 1, log
