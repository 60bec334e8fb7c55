"""``orion-check install server`` and ``orion-check runtime server``.

``runtime server`` prints what the seeds show (NVIDIA GPUs, MPS, the running oriond with its
user, command line and effective settings, the data-plane port, the Orion Controller and its free
vGPUs) and, in token mode, whether the token key is usable and this server is registered.
The effective settings are those of the running oriond: its ``--config`` file (or the one given
to orion-check, or /etc/orion/server.conf) with its command-line flags applied on top.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from .. import compat
from ..config import DEFAULT_SERVER_CONF, ServerConfig, load_server_config
from ..errors import OrionError
from .common import (
    GpuProbe,
    Proc,
    check_mps,
    check_nvidia,
    check_packages,
    check_python,
    find_processes,
    port_in_use,
    probe_gpus,
    writable_dir,
)
from .controller_status import check_controller, controller_from_env, controller_intro
from .report import Report, tcp_reach

REQUIRED = {"click": "the command-line tools need it", "numpy": "the sim backend needs it"}
OPTIONAL = {
    "cuda.bindings": "the cuda backend (a real GPU) needs it (pip install cuda-bindings)",
    "lxml": "VMs: the host agent edits libvirt domain XML with it",
    "libvirt": "VMs: the host agent talks to libvirtd with it",
    "pyroute2": "bind_net and VM gateway discovery need it",
    "sysv_ipc": "shared-memory wake-ups with semaphores (hostIPC) need it",
}
_FLAG_KEYS = ("backend", "bind_addr", "listen_port", "shm_path_base", "enable_shm", "enable_kvm",
              "log_dir", "vgpu_count")


def oriond_flags(proc: Proc) -> tuple[Path | None, dict[str, Any]]:
    """(``--config`` path resolved against the process's cwd, flag overrides) of a running
    oriond, parsed with oriond's own command definition."""
    from ..cli.oriond import main as oriond_main

    try:
        ctx = oriond_main.make_context("oriond", proc.args_after("oriond"),
                                       resilient_parsing=True)
    except Exception:  # noqa: BLE001 - an unparsable command line: use the file alone
        return None, {}
    p = ctx.params.get("config_path")
    if p is not None and not p.is_absolute() and proc.cwd:
        p = Path(proc.cwd) / p
    return p, {k: ctx.params.get(k) for k in _FLAG_KEYS if ctx.params.get(k) is not None}


def pick_oriond(procs: list[Proc], config_path: Path | None) -> Proc | None:
    """The oriond to diagnose. Without ``config_path``: the first. With it: one started with
    that file (no ``--config`` meaning /etc/orion/server.conf), else one listening on the
    file's ``listen_port``, else None."""
    if config_path is None:
        return procs[0] if procs else None
    want = os.path.realpath(config_path)
    for p in procs:
        c, _ = oriond_flags(p)
        if os.path.realpath(c or DEFAULT_SERVER_CONF) == want:
            return p
    try:
        port = load_server_config(config_path).listen_port
    except OrionError:
        return None
    for p in procs:
        _, flags = oriond_flags(p)
        if flags.get("listen_port") == port:
            return p
    return None


def effective_config(config_path: Path | None, proc: Proc | None) -> ServerConfig:
    """Raises ConfigError (the message names file, section and key)."""
    path, flags = oriond_flags(proc) if proc is not None else (None, {})
    return load_server_config(config_path or path, flags)


def _node_status(report: Report, cfg: ServerConfig, running: bool) -> None:
    from ..controller import client as ctl
    from ..errors import ControllerError
    from ..server.authorize import node_id

    me = node_id(cfg)
    try:
        nodes = ctl.nodes(cfg.controller_addr)
    except ControllerError as e:
        report.error(f"cannot list the Orion Controller's nodes: {e}")
        return
    node = next((n for n in nodes if n.get("node_id") == me), None)
    if node is None:
        msg = (f"this Orion Server (node {me}) is not registered with the Orion Controller"
               + ("; see /var/log/orion/server.log for why" if running else
                  ": start oriond"))
        (report.error if running else report.warn)(msg)
        return
    gpus = node.get("gpus", [])
    total = sum(g.get("vgpu_count", 0) for g in gpus)
    free = sum(g.get("free_vgpus", 0) for g in gpus)
    if node.get("up"):
        report.line(f"Orion Server is registered with Orion Controller as node {me} "
                    f"({node.get('address')}): {len(gpus)} GPU(s), {total} vGPU, {free} free.")
    else:
        report.error(f"Orion Controller marked node {me} down (no heartbeat): its vGPUs are "
                     f"not in the pool; is oriond running and can it reach "
                     f"{cfg.controller_addr}?")


def _token_key(report: Report, cfg: ServerConfig) -> None:
    from ..controller.token import load_key

    try:
        load_key(cfg.token_key_file)
        report.line(f"Token key {cfg.token_key_file} is readable.")
    except OrionError as e:
        report.error(f"{e}: oriond cannot verify allocation tokens; copy the Orion Controller's "
                     f"--token-key file there (mode 0600)")


def runtime_server(config_path: Path | None = None, out: TextIO | None = None,
                   env: Mapping[str, str] | None = None,
                   probe: Callable[[], GpuProbe] = probe_gpus,
                   proc_root: Path = Path("/proc"), timeout: float = 3.0,
                   libvirt_etc: Path = Path("/etc/libvirt")) -> int:
    """Diagnose the running Orion Server; returns the exit code (1 when a check failed).
    With enable_kvm, also the libvirt hook and QEMU's user/group (``vmhost``)."""
    env = os.environ if env is None else env
    r = Report(out)
    procs = find_processes("oriond", proc_root)
    proc = pick_oriond(procs, config_path)
    try:
        cfg: ServerConfig | None = effective_config(config_path, proc)
        cfg_error = ""
    except OrionError as e:
        cfg, cfg_error = None, str(e)

    check_nvidia(r, probe(), gpu_required=cfg is not None and cfg.backend == "cuda")
    check_mps(r, proc_root)

    r.section("Checking Orion Server status")
    if proc is None:
        r.error("Orion Server (oriond) is not running"
                + (f" with {config_path}" if config_path is not None and procs else "")
                + ": start it with \"sudo systemctl start oriond\" and read \"sudo journalctl "
                "-u oriond\" or /var/log/orion/server.log if it stops")
        if procs:
            r.info(f"other oriond processes run (pids {', '.join(str(p.pid) for p in procs)})")
    else:
        r.line(compat.SERVER_USER.format(user=proc.user))
        r.line(compat.SERVER_COMMAND.format(command=proc.command_line))
        if len(procs) > 1:
            r.info(f"{len(procs)} oriond processes run (pids "
                   f"{', '.join(str(p.pid) for p in procs)}); diagnosing pid {proc.pid}")
    if cfg is None:
        r.error(f"the Orion Server configuration cannot be used: {cfg_error}")
        r.summary()
        return r.exit_code
    r.flag("Enable SHM", cfg.enable_shm)
    r.flag("Enable RDMA", cfg.enable_rdma)
    r.flag("Enable Local QEMU-KVM with SHM", cfg.enable_kvm)
    r.value("Binding IP Address", cfg.bind_addr)
    r.value("Listening Port", cfg.listen_port)
    r.value("Configuration", cfg.source)
    if cfg.enable_rdma:
        r.warn("enable_rdma is set but this Orion Server has no RDMA transport: clients use "
               "TCP or shared memory")

    r.section("Testing the Orion Server network")
    addr = f"{cfg.bind_addr}:{cfg.listen_port}"
    why = tcp_reach(cfg.bind_addr, cfg.listen_port, timeout)
    if why is None:
        r.line(compat.SERVER_REACHED.format(addr=addr))
    else:
        r.error(f"Orion Server cannot be reached through {addr}: {why}")
    if cfg.enable_kvm:
        from .vmhost import check_vm_host

        check_vm_host(r, cfg, libvirt_etc)

    controller_intro(r)
    from_env = controller_from_env(env)
    if cfg.controller_addr:
        if from_env and from_env[0] != cfg.controller_addr:
            r.info(f"{from_env[1]}={from_env[0]} is set in this shell; oriond does not read it "
                   f"and uses controller_addr of its configuration file")
        ok = check_controller(r, cfg.controller_addr, "configuration file", timeout)
        _token_key(r, cfg)
        if ok:
            _node_status(r, cfg, proc is not None)
    elif from_env:
        check_controller(r, from_env[0], f"environment variable {from_env[1]}", timeout)
        r.warn("[controller] controller_addr is not set in the configuration file: oriond runs "
               "in direct mode (each session gets what it asks for, nothing is pooled)")
    else:
        r.warn("Orion Controller address is not set in configuration file ([controller] "
               "controller_addr): oriond runs in direct mode (each session gets what it asks "
               "for, nothing is pooled)")
    if r.errors or r.warnings:
        r.summary()
    return r.exit_code


def install_server(config_path: Path | None = None, out: TextIO | None = None,
                   env: Mapping[str, str] | None = None,
                   probe: Callable[[], GpuProbe] = probe_gpus,
                   proc_root: Path = Path("/proc"), timeout: float = 3.0) -> int:
    """Can an Orion Server be installed and started here? Returns the exit code."""
    r = Report(out)
    check_python(r)
    check_packages(r, REQUIRED, OPTIONAL)

    r.section("Checking Orion Server configuration")
    try:
        cfg = load_server_config(config_path)
    except OrionError as e:
        r.error(str(e))
        r.summary()
        return r.exit_code
    if cfg.source == "defaults":
        r.line(f"No configuration file ({config_path or DEFAULT_SERVER_CONF}): defaults are used.")
    else:
        r.line(f"Configuration file {cfg.source} is valid.")
    r.value("Backend", cfg.backend)
    r.value("vGPUs per GPU", cfg.vgpu_count)

    check_nvidia(r, probe(), gpu_required=cfg.backend == "cuda")
    check_mps(r, proc_root)

    r.section("Checking directories")
    if cfg.enable_shm or cfg.enable_kvm:
        base = Path(cfg.shm_path_base)
        if not base.is_dir():
            r.error(f"shm_path_base {base} does not exist (a memory file system such as "
                    f"/dev/shm is expected)")
        elif not os.access(base, os.W_OK | os.X_OK):
            r.error(f"shm_path_base {base} is not writable by this user")
        else:
            r.line(f"shm_path_base {base} is writable.")
    why = writable_dir(Path(cfg.log_dir))
    if why:
        r.error(f"log_dir {cfg.log_dir}: {why} (oriond writes server.log and session/ there)")
    else:
        r.line(f"log_dir {cfg.log_dir} is writable.")

    r.section("Checking ports")
    running = find_processes("oriond", proc_root)
    why = port_in_use(cfg.bind_addr, cfg.listen_port)
    addr = f"{cfg.bind_addr}:{cfg.listen_port}"
    if why is None:
        r.line(f"Port {addr} is free.")
    elif running:
        r.info(f"Port {addr} is in use ({why}); oriond already runs (pid "
               f"{', '.join(str(p.pid) for p in running)})")
    else:
        r.error(f"oriond cannot listen on {addr}: {why} (bind_addr must be an address of this "
                f"host, listen_port a free port)")

    r.section("Checking Orion Controller")
    if cfg.controller_addr:
        r.line(f"controller_addr is {cfg.controller_addr}: oriond accepts only vGPUs "
               f"allocated by this Orion Controller.")
        _token_key(r, cfg)
        host, _, port = cfg.controller_addr.rpartition(":")
        why = tcp_reach(host.strip("[]"), int(port), timeout)
        if why is None:
            r.line(compat.ADDRESS_REACHED.format(addr=cfg.controller_addr))
        else:
            r.warn(f"Orion Controller {cfg.controller_addr} cannot be reached now ({why}); "
                   f"oriond keeps trying to register once started")
    else:
        r.warn("controller_addr is not set: oriond will run in direct mode (no pooling; "
               "each session gets what it asks for)")
    r.summary()
    return r.exit_code

