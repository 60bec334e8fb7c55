"""What ``systemctl reload oriond`` (SIGHUP) changes in a running oriond.

oriond re-reads its server.conf (and re-applies its command-line flags over it). Keys of
:data:`LIVE` take effect at once: ``[server-log]`` (levels, switches, log_dir: the server log is
reopened) and ``[server-limits]`` plus the throttle switch, which the main loop reads at every
check and each new session reads when it starts; sessions already running keep what they
started with. Every other key (addresses, ports, shared memory, backend, controller, vGPU
count, direct accounting) needs a restart: it is logged as such and keeps its running value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import SERVER_KEYS, ServerConfig

LIVE = frozenset({
    "log_dir", "log", "max_pending_connections", "max_sessions", "max_sessions_per_client", "hello_timeout",
    "idle_timeout", "enable_computation_throttle",
})
"""ServerConfig fields a reload applies."""

_NOT_KEYS = frozenset({"source", "ignored"})


def _names() -> dict[str, str]:
    """ServerConfig field (``log.x`` for the log's) -> ``[section] key`` as server.conf spells it."""
    return {k.attr: f"[{k.sections[0]}] {k.name}" for k in SERVER_KEYS}


def changes(old: ServerConfig, new: ServerConfig) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for each setting that differs (``log.x`` for the log's)."""
    out: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(ServerConfig):
        if f.name in _NOT_KEYS:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "log":
            out += [(f"log.{g.name}", getattr(a, g.name), getattr(b, g.name))
                    for g in dataclasses.fields(a) if getattr(a, g.name) != getattr(b, g.name)]
        elif a != b:
            out.append((f.name, a, b))
    return out


@dataclasses.dataclass(frozen=True)
class Reload:
    config: ServerConfig
    """the configuration to run with: ``new``'s live keys, the running values of the others"""
    applied: list[tuple[str, Any, Any]]
    """(``[section] key``, old, new) of each key applied"""
    need_restart: list[tuple[str, Any, Any]]
    """the same for each changed key that keeps its running (old) value until a restart"""
    logging_changed: bool


def plan(old: ServerConfig, new: ServerConfig) -> Reload:
    """What reloading ``new`` over the running ``old`` does (pure)."""
    names = _names()
    live: dict[str, Any] = {}
    applied: list[tuple[str, Any, Any]] = []
    restart: list[tuple[str, Any, Any]] = []
    for attr, a, b in changes(old, new):
        line = (names.get(attr, attr), a, b)
        top = attr.split(".")[0]
        if top in LIVE:
            live[top] = getattr(new, top)
            applied.append(line)
        else:
            restart.append(line)
    cfg = dataclasses.replace(old, **live, source=new.source, ignored=new.ignored)
    return Reload(cfg, applied, restart, "log" in live or "log_dir" in live)
