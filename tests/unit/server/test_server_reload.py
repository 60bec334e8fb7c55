"""oriond's reload plan (pure): live keys applied, the others kept with a restart asked for."""

from __future__ import annotations

import dataclasses

from orion_virt.config import LogConfig, ServerConfig
from orion_virt.server.reload import plan


def test_live_keys_apply_and_restart_keys_keep_their_running_value() -> None:
    old = ServerConfig(source="/etc/orion/server.conf")
    new = dataclasses.replace(old, log=LogConfig(file_log_level="DEBUG"), max_sessions=7, idle_timeout=30.0,
                              listen_port=9970, bind_addr="172.17.0.1")
    r = plan(old, new)
    assert r.config.log.file_log_level == "DEBUG" and r.config.max_sessions == 7 and r.config.idle_timeout == 30.0
    assert r.config.listen_port == 9960 and r.config.bind_addr == "127.0.0.1"
    assert ("[server-log] file_log_level", "INFO", "DEBUG") in r.applied
    assert ("[server-limits] max_sessions", 256, 7) in r.applied
    assert {k for k, _, _ in r.need_restart} == {"[server] listen_port", "[server] bind_addr"}
    assert r.logging_changed


def test_nothing_changed_is_an_empty_plan() -> None:
    cfg = ServerConfig(source="/etc/orion/server.conf")
    r = plan(cfg, dataclasses.replace(cfg))
    assert r.applied == [] and r.need_restart == [] and not r.logging_changed and r.config == cfg
