"""``orion-check install controller`` and ``orion-check runtime controller``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, TextIO

from ..errors import OrionError
from .common import (
    Proc,
    check_packages,
    check_python,
    find_processes,
    port_in_use,
    writable_dir,
)
from .controller_status import check_controller, controller_from_env, controller_intro
from .report import Report

DEFAULT_PORT = 9123
DEFAULT_KEY = "/etc/orion/token.key"


def _store_check(report: Report, kv: str | None, timeout: float) -> None:
    from ..controller.store import (
        DEFAULT_SQLITE_PATH,
        EtcdStore,
        SqliteStore,
        open_store,
    )

    report.section("Checking the pool store")
    try:
        store = open_store(kv) if kv and not kv.startswith("sqlite://") else None
    except OrionError as e:
        report.error(str(e))
        return
    if isinstance(store, EtcdStore):
        store.timeout = timeout
        try:
            store.read()
            report.line(f"etcd at {store.url} is reached.")
        except OrionError as e:
            report.error(f"etcd at {store.url} cannot be used: {e} (start etcd, or leave --kv "
                         f"out to use the embedded SQLite store)")
        return
    path = Path(kv[len("sqlite://"):] if kv else DEFAULT_SQLITE_PATH)
    if path.exists():
        try:
            SqliteStore(path).read()
            report.line(f"SQLite store {path} is usable.")
        except OrionError as e:
            report.error(f"SQLite store {path} cannot be used: {e}")
        return
    why = writable_dir(path.parent)
    if why:
        report.error(f"SQLite store {path} cannot be created: {why}")
    else:
        report.line(f"SQLite store {path} will be created at first start.")


def _key_check(report: Report, key_path: str) -> None:
    from ..controller.token import load_key

    report.section("Checking the token key")
    p = Path(key_path)
    if p.exists():
        try:
            load_key(p)
        except OrionError as e:
            report.error(str(e))
            return
        report.line(f"Token key {p} is valid; every Orion Server needs a copy as its "
                    f"[controller] token_key_file.")
        if p.stat().st_mode & 0o077:
            report.warn(f"{p} is readable by other users: chmod 600 {p}")
        return
    why = writable_dir(p.parent)
    if why:
        report.error(f"token key {p} is missing and cannot be created: {why}")
    else:
        report.line(f"Token key {p} will be created (mode 0600) at first start; copy it to "
                    f"every Orion Server as its [controller] token_key_file.")


def install_controller(out: TextIO | None = None, kv: str | None = None, ip: str = "0.0.0.0",
                       port: int = DEFAULT_PORT, token_key: str = DEFAULT_KEY,
                       proc_root: Path = Path("/proc"), timeout: float = 3.0) -> int:
    """Can an Orion Controller run here with these settings? Returns the exit code."""
    r = Report(out)
    check_python(r)
    check_packages(r, {"click": "orion-controller needs it"})
    _store_check(r, kv, timeout)
    _key_check(r, token_key)
    r.section("Checking ports")
    why = port_in_use(ip, port)
    if why is None:
        r.line(f"Port {ip}:{port} is free.")
    else:
        running = controllers(proc_root)
        if running:
            r.info(f"Port {ip}:{port} is in use ({why}); orion-controller already runs (pid "
                   f"{', '.join(str(p.pid) for p in running)})")
        else:
            r.error(f"orion-controller cannot listen on {ip}:{port}: {why}")
    r.summary()
    return r.exit_code


def controllers(proc_root: Path = Path("/proc")) -> list[Proc]:
    return [p for p in find_processes("orion-controller", proc_root)
            if "start" in p.args_after("orion-controller")]


def controller_flags(proc: Proc) -> dict[str, Any]:
    """The running controller's ``start`` options (explicit ones only)."""
    from ..cli.orion_controller import start

    args = proc.args_after("orion-controller")
    if args and args[0] == "start":
        args = args[1:]
    try:
        ctx = start.make_context("start", args, resilient_parsing=True)
    except Exception:  # noqa: BLE001 - unparsable: diagnose with defaults
        return {}
    return {k: v for k, v in ctx.params.items() if v is not None}


def runtime_controller(out: TextIO | None = None, env: Mapping[str, str] | None = None,
                       config_path: Path | None = None, proc_root: Path = Path("/proc"),
                       timeout: float = 3.0) -> int:
    """Diagnose the Orion Controller: the local process (if any), its address, version, pool,
    nodes and allocations. The address: ORION_CONTROLLER, else the local process's -i/-p,
    else ``controller_addr`` of ``config_path`` (server.conf), else 127.0.0.1:9123."""
    from ..controller import client as ctl
    from ..errors import ControllerError

    env = os.environ if env is None else env
    r = Report(out)
    r.section("Checking Orion Controller process")
    procs = controllers(proc_root)
    flags: dict[str, Any] = {}
    if procs:
        p = procs[0]
        flags = controller_flags(p)
        r.line(f"Orion Controller is running with Linux user   : {p.user}")
        r.line(f"Orion Controller is running with command line : {p.command_line}")
        if len(procs) > 1:
            r.info(f"{len(procs)} orion-controller processes run (pids "
                   f"{', '.join(str(q.pid) for q in procs)})")
        kv = flags.get("kv")
        r.value("Pool store", kv or "embedded SQLite (/var/lib/orion/controller.db)")
        r.value("Lease (s)", flags.get("lease_seconds", 30.0))
        r.value("Heartbeat timeout (s)", flags.get("heartbeat_timeout", 15.0))
    else:
        r.line("No Orion Controller process runs on this host.")

    controller_intro(r)
    from_env = controller_from_env(env)
    if from_env:
        addr, origin = from_env[0], f"environment variable {from_env[1]}"
    elif procs:
        ip = flags.get("ip", "0.0.0.0")
        host = "127.0.0.1" if ip in ("0.0.0.0", "") else ip
        addr, origin = f"{host}:{flags.get('port', DEFAULT_PORT)}", "the running orion-controller"
    else:
        addr, origin = "", ""
        if config_path is not None:
            from ..config import load_server_config

            try:
                addr = load_server_config(config_path).controller_addr
                origin = "configuration file"
            except OrionError as e:
                r.error(str(e))
        if not addr:
            addr, origin = f"127.0.0.1:{DEFAULT_PORT}", "the default"
    if not check_controller(r, addr, origin, timeout):
        r.summary()
        return r.exit_code
    try:
        nodes = ctl.nodes(addr, timeout=timeout)
        tasks = ctl.tasks(addr, timeout=timeout)
    except ControllerError as e:
        r.error(f"cannot list nodes and allocations: {e}")
        r.summary()
        return r.exit_code
    r.section("Orion Server nodes")
    if not nodes:
        r.line("No Orion Server is registered.")
    for n in nodes:
        gpus = n.get("gpus", [])
        r.line(f"{n.get('node_id')} ({n.get('address')}) "
               f"{'up' if n.get('up') else 'DOWN'} : {len(gpus)} GPU(s)")
        for g in gpus:
            r.line(f"    {g.get('index')} : {g.get('name')} {g.get('memory_mib')} MiB, "
                   f"{g.get('used_vgpus')}/{g.get('vgpu_count')} vGPU used, "
                   f"{g.get('free_vgpus')} free")
        if not n.get("up"):
            r.warn(f"node {n.get('node_id')} stopped heartbeating: is its oriond running?")
    r.section("Allocations")
    r.line(f"{len(tasks)} allocation(s) active.")
    for t in tasks:
        r.line(f"    {t.get('allocation_id')} : {len(t.get('vgpus', []))} vGPU"
               + (f" (group {t['group_id']})" if t.get("group_id") else ""))
    if r.errors or r.warnings:
        r.summary()
    return r.exit_code
