"""orion-check install client / runtime client: diagnose an Orion client environment.

Standard library only (install-client copies it into guests, where ``orion-check`` runs it with
``python3 -m orion_virt.check.client runtime client``). Every function takes the environment
and an ``out`` callable receiving one line at a time, and returns an exit status: 0 when
nothing is wrong, 1 when a check failed (the lines say which and what to do).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..config import CLIENT_KEYS, ClientConfig, client_config_paths, load_client_config, read_ini
from ..errors import OrionError
from .controller_status import check_controller, controller_intro
from .report import Report

Out = Callable[[str], None]
MIN_PYTHON = (3, 11)


def _root(env: Mapping[str, str]) -> str:
    """The filesystem root the checks look at (``ORION_CHECK_ROOT``, for tests; default /)."""
    return env.get("ORION_CHECK_ROOT", "/")


def _python_line(out: Out) -> bool:
    v = sys.version_info
    ok = v[:2] >= MIN_PYTHON
    out(f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
        + ("" if ok else f" is too old: the Orion client needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer"))
    return ok


def _installation(env: Mapping[str, str], out: Out) -> tuple[str, str] | None:
    """Report an install-client installation; return (its path, its Python)."""
    from ..installer import core

    try:
        m = core.Target(_root(env)).find_manifest(None, python=sys.executable)
    except core.InstallError as e:
        out(f"[Warning] {e}")
        return None
    if m is None:
        out("Orion client is not installed by install-client on this system "
            f"(no {core.DEFAULT_PREFIX}/{core.MANIFEST_NAME})")
        return None
    out(f"Orion client is installed in {m.prefix} for {m.python} (.pth in {m.site_dir})")
    return m.prefix, m.python


# -- install client ----------------------------------------------------------------------------


def install_client(env: Mapping[str, str] | None, out: Out) -> int:
    """Can this system run the Orion client? (before install-client)."""
    env = os.environ if env is None else env
    failed = 0
    out("Checking the environment for the Orion Client ...")
    failed |= not _python_line(out)
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        out(f"[Warning] CPU architecture {machine}: the shared-memory transport assumes x86-64 memory "
            "ordering; use TCP (enable_net = true in client.conf)")
    else:
        out(f"CPU architecture {machine} is supported.")
    shm = Path(_root(env)) / "dev" / "shm"
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        out("/dev/shm is available (shared-memory devices from the host can be mounted there).")
    else:
        out("[Info] /dev/shm is missing or not writable: only TCP and ivshmem (VM) transports can be used.")
    from ..client import ivshmem

    pci = ivshmem.find_devices()
    if pci:
        out(f"{len(pci)} ivshmem PCI device(s) found: {', '.join(p.name for p in pci)} (Orion in a VM).")
    if os.geteuid() != 0:
        out("[Warning] install-client must run as root (it writes /usr/lib/orion, /etc/orion and the "
            "system's site-packages): sudo install-client")
    try:
        import importlib.util

        if importlib.util.find_spec("cuda") is not None:
            out("[Info] cuda-python is installed: it loads libcuda.so.1, which is the Orion native client "
                "once install-client has run (or under orion-run).")
    except (ImportError, ValueError):
        pass
    _installation(env, out)
    for p in client_config_paths(env):
        if p.exists():
            try:
                read_ini(p, CLIENT_KEYS)
                out(f"Existing configuration file {p} is valid and will be kept.")
            except OrionError as e:
                out(f"[Error] {e}")
                failed = 1
    out("")
    out("The Orion Client can be installed." if not failed else
        "Fix the errors above before installing the Orion Client.")
    return 1 if failed else 0


# -- runtime client ----------------------------------------------------------------------------


def _report_config(env: Mapping[str, str], cfg: ClientConfig, out: Out) -> None:
    out("Configuration files (lowest priority first; environment variables override them):")
    per_file: dict[str, dict[str, object]] = {}
    for p in client_config_paths(env):
        if p.is_file():
            per_file[str(p)] = read_ini(p, CLIENT_KEYS)
            out(f"    {p}  [found]")
        else:
            out(f"    {p}  [not found]")
    out("Settings in effect (value <- where it comes from):")
    seen: set[str] = set()
    for key in CLIENT_KEYS:
        if key.attr in seen:
            continue
        seen.add(key.attr)
        if key.attr.startswith("log."):
            value = getattr(cfg.log, key.attr[4:])
            name = key.attr[4:]
        else:
            value = getattr(cfg, key.attr)
            name = key.attr if key.sections else key.name
        origin = cfg.origin(key.attr)
        shadowed = [f for f, vals in per_file.items() if key.attr in vals and f != origin]
        note = f"; overrides {', '.join(shadowed)}" if shadowed else ""
        shown = "(not set)" if value in (None, "") else value
        out(f"    {name:<16} = {shown!s:<24} <- {origin}{note}")


def _controller(cfg: ClientConfig, out: Out) -> bool:
    """The controller section (the one diagnosis in ``controller_status``). False if the
    controller is configured but unusable."""
    r = Report(out)
    controller_intro(r)
    addr = cfg.controller_addr
    if not addr:
        out("Orion Controller address is not set (ORION_CONTROLLER or controller_addr in client.conf): "
            "applications ask the Orion Server directly (direct mode, no vGPU pool).")
        return True
    origin = cfg.origin("controller_addr")
    where = ("configuration file" if not origin.startswith("environment")
             else origin.replace("environment", "environment variable"))
    return check_controller(r, addr, where)


def _transport(cfg: ClientConfig, out: Out) -> bool:
    from ..client.select import plan

    out("Checking the data path to the Orion Server ...")
    p = plan(cfg)
    for w in p.warnings:
        out(f"[Warning] {w}")
    if p.transport != "tcp":
        out(f"Transport: shared memory ({p.transport}), {p.reason}")
        return True
    out(f"Transport: {p.reason}")
    if cfg.controller_addr and not cfg.server_addr:
        out("[Info] with a controller, the server's address comes with each allocation; "
            f"{p.target} is only the fallback")
        return True
    host, _, port = p.target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as e:
        out(f"Orion Server cannot be reached through {p.target}: {e.strerror or e}")
        out("Check that oriond runs (systemctl status oriond), that its bind_addr is reachable from here "
            "(for Docker the docker0 gateway, for a VM the virtual network's gateway) and that no "
            "firewall blocks the port; or set ORION_SERVER / server_addr.")
        return False
    out(f"Orion Server can be reached through {p.target}")
    return True


def _system_libcuda() -> str | None:
    """The libcuda.so.1 the loader's cache names first (``ldconfig -p``), or None."""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ", 1)[0] == "libcuda.so.1" and path:
            return path.strip()
    return None


def _native_client(env: Mapping[str, str], install: tuple[str, str] | None, out: Out) -> bool:
    """Do programs here reach the native client (libcuda.so.1)? An installation without it is an
    error; whether it is the system's libcuda.so.1 (ldconfig) or orion-run's only, a note."""
    if install is None:
        from ..client.run import native_lib_dir

        d = native_lib_dir(env)
        out(f"[Info] the native client is in {d}: run programs with orion-run" if d is not None else
            "[Info] the native client (libcuda.so.1) is not installed here: install it with install-client")
        return True
    lib = f"{install[0].rstrip('/')}/lib/libcuda.so.1"
    if not (Path(_root(env)) / lib.lstrip("/")).is_file():
        out(f"[Error] the native client {lib} is missing: build it (make native) and reinstall: "
            f"install-client -d {install[0]}")
        return False
    found = _system_libcuda() if _root(env) == "/" else None
    if found is not None and os.path.realpath(found) == os.path.realpath(lib):
        out(f"The native client {lib} is the system's libcuda.so.1: programs reach Orion vGPUs with no launcher")
    else:
        out(f"[Info] the system's libcuda.so.1 is {found or 'not the native client'}: run programs with "
            f"orion-run, which puts {lib} first")
    return True


def runtime_client(env: Mapping[str, str] | None, out: Out) -> int:
    """Is the Orion client ready to run applications here? (after install-client)."""
    env = os.environ if env is None else env
    failed = False
    out("Checking Orion Client status ...")
    failed |= not _python_line(out)
    install = _installation(env, out)
    try:
        cfg = load_client_config(env)
    except OrionError as e:
        out(f"[Error] {e}")
        out("Fix the configuration above; the other checks need it.")
        return 1
    _report_config(env, cfg, out)
    if cfg.vgpu is None:
        out("[Info] ORION_VGPU is not set: applications use Orion vGPUs only with it (export ORION_VGPU=N)")
    out("")
    failed |= not _native_client(env, install, out)
    out("")
    failed |= not _transport(cfg, out)
    out("")
    failed |= not _controller(cfg, out)
    return 1 if failed else 0


def run(kind: str, env: Mapping[str, str] | None, out: Out) -> int:
    """``kind``: ``install`` or ``runtime``."""
    if kind == "install":
        return install_client(env, out)
    if kind == "runtime":
        return runtime_client(env, out)
    raise ValueError(f"unknown check {kind!r}: expected install or runtime")


USAGE = "usage: orion-check install|runtime client\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The guest's ``orion-check`` (installed by install-client): client checks only."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("install", "runtime") or args[1] != "client":
        sys.stderr.write(USAGE)
        if len(args) == 2 and args[1] in ("server", "controller"):
            sys.stderr.write(f"orion-check: the {args[1]} checks run on the host, where the full "
                             "orion_virt package is installed\n")
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    return run(args[0], os.environ, out)


if __name__ == "__main__":
    sys.exit(main())
