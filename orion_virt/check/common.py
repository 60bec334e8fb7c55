"""Building blocks of ``orion-check``: the report (the seeds' output format), process lookup in
``/proc``, network probes, and the checks several components share (Python, packages, NVIDIA
GPU and MPS, Orion Controller status).

Every check writes lines through a :class:`Report`; a failed check calls ``report.error`` and the
command exits non-zero (``report.exit_code``). Warnings never change the exit code. All I/O
handles (``/proc`` root, the CUDA probe, the clock of timeouts) can be passed in, so the
formatting is unit-tested without a GPU, a controller or a running oriond.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import pwd
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, TextIO

COLUMN = 40
ENV_CONTROLLER = ("ORION_CONTROLLER", "ORION_OCNTROLLER")


class Report:
    """Lines to ``out`` (default stdout); counts errors and warnings."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._sections = 0

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def section(self, title: str) -> None:
        """``Title ...``, separated from the previous section by a blank line."""
        if self._sections:
            self.line()
        self._sections += 1
        self.line(f"{title} ...")

    def info(self, text: str) -> None:
        self.line(f"[Info] {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.line(f"[Warning] {text}")

    def error(self, text: str) -> None:
        self.errors.append(text)
        self.line(f"[Error] {text}")

    def flag(self, name: str, on: bool) -> None:
        """``Enable SHM                              [Yes]``"""
        self.line(f"{name:<{COLUMN}}[{'Yes' if on else 'No'}]")

    def value(self, name: str, value: object) -> None:
        """``Binding IP Address :                    33.31.0.1``"""
        self.line(f"{name + ' :':<{COLUMN}}{value}")

    def summary(self) -> None:
        self.line()
        if self.errors:
            self.line(f"{len(self.errors)} check(s) failed, {len(self.warnings)} warning(s).")
        elif self.warnings:
            self.line(f"All checks passed with {len(self.warnings)} warning(s).")
        else:
            self.line("All checks passed.")

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


# -- processes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    user: str
    argv: tuple[str, ...]
    cwd: str
    ppid: int = 0

    @property
    def command_line(self) -> str:
        return " ".join(self.argv)

    def args_after(self, name: str) -> list[str]:
        """The arguments after the program ``name`` (skipping an interpreter before it)."""
        for i, a in enumerate(self.argv):
            if os.path.basename(a) == name:
                return list(self.argv[i + 1:])
        return list(self.argv[1:])


def _program_names(argv: list[str]) -> list[str]:
    """``oriond`` for ``/usr/bin/oriond ...`` and for ``python3 /venv/bin/oriond ...``."""
    if not argv:
        return []
    names = [os.path.basename(argv[0])]
    if names[0].startswith("python") and len(argv) > 1:
        rest = [a for a in argv[1:] if not a.startswith("-")]
        if rest:
            names.append(os.path.basename(rest[0]))
        if "-m" in argv:  # python -m orion_virt.cli.oriond
            i = argv.index("-m")
            if i + 1 < len(argv):
                names.append(argv[i + 1].rsplit(".", 1)[-1])
    return names


def find_processes(name: str, proc_root: Path = Path("/proc")) -> list[Proc]:
    """Processes whose program is ``name`` (directly or run by a Python interpreter); forked
    children of such a process (oriond's session workers) are left out."""
    out = []
    try:
        entries = list(proc_root.iterdir())
    except OSError:
        return []
    for d in entries:
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            raw = (d / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if name not in _program_names(argv):
            continue
        user = "?"
        try:
            for ln in (d / "status").read_text().splitlines():
                if ln.startswith("Uid:"):
                    uid = int(ln.split()[1])
                    try:
                        user = pwd.getpwuid(uid).pw_name
                    except KeyError:
                        user = str(uid)
                    break
        except (OSError, ValueError, IndexError):
            pass
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            cwd = ""
        try:
            ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = 0
        out.append(Proc(int(d.name), user, tuple(argv), cwd, ppid))
    pids = {p.pid for p in out}
    return sorted((p for p in out if p.ppid not in pids), key=lambda p: p.pid)


# -- network ------------------------------------------------------------------------------------


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.strip().rpartition(":")
    return host.strip("[]"), int(port)


def probe_host(host: str) -> str:
    """Where to connect to reach a service bound to ``host`` (``0.0.0.0`` -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def tcp_reach(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to ``host:port`` succeeds, else why not."""
    try:
        socket.create_connection((probe_host(host), port), timeout=timeout).close()
        return None
    except OSError as e:
        return e.strerror or str(e)


def port_in_use(host: str, port: int) -> str | None:
    """None when ``host:port`` could be bound now, else why not."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError as e:
            return e.strerror or str(e)


# -- Python and packages ---------------------------------------------------------------------


def check_python(report: Report, minimum: tuple[int, int] = (3, 11)) -> None:
    report.section("Checking Python")
    v = sys.version_info
    need = ".".join(map(str, minimum))
    if (v.major, v.minor) >= minimum:
        report.line(f"Python {v.major}.{v.minor}.{v.micro} is installed ({need} or later is "
                    f"required).")
    else:
        report.error(f"Python {v.major}.{v.minor}.{v.micro} is too old: {need} or later is "
                     f"required.")


def check_packages(report: Report, required: Mapping[str, str],
                   optional: Mapping[str, str] | None = None,
                   importer: Callable[[str], object] = importlib.import_module) -> None:
    """``required``/``optional``: import name -> what it is for. A missing required package is
    an error, a missing optional one a warning naming what will not work."""
    report.section("Checking Python packages")
    for mod, why in required.items():
        _package_line(report, mod, why, importer, required=True)
    for mod, why in (optional or {}).items():
        _package_line(report, mod, why, importer, required=False)


def _package_line(report: Report, mod: str, why: str, importer: Callable[[str], object],
                  required: bool) -> None:
    try:
        importer(mod)
    except Exception as e:  # noqa: BLE001 - a broken package is as good as a missing one
        msg = f"Python package {mod} cannot be imported ({type(e).__name__}: {e}); {why}"
        (report.error if required else report.warn)(msg)
        return
    try:
        ver = importlib.metadata.version(_DISTS.get(mod, mod))
    except importlib.metadata.PackageNotFoundError:
        ver = ""
    report.flag(f"{mod} {ver}".strip(), True)


_DISTS = {"cuda.bindings": "cuda-bindings", "libvirt": "libvirt-python", "sysv_ipc": "sysv-ipc",
          "posix_ipc": "posix-ipc"}


# -- NVIDIA --------------------------------------------------------------------------------------

_DETAILS = (
    "import json\n"
    "from cuda.bindings import driver as d\n"
    "d.cuInit(0)\n"
    "e,v=d.cuDriverGetVersion()\n"
    "e,n=d.cuDeviceGetCount()\n"
    "names=[]\n"
    "for i in range(n):\n"
    "    e,dev=d.cuDeviceGet(i)\n"
    "    e,nm=d.cuDeviceGetName(256,dev)\n"
    "    names.append(nm.split(b'\\0',1)[0].decode())\n"
    "print(json.dumps({'cuda':int(v),'names':names}))\n"
)


@dataclass(frozen=True)
class GpuProbe:
    count: int
    reason: str
    driver: str = ""
    names: tuple[str, ...] = ()


def nvidia_driver_version(path: Path = Path("/proc/driver/nvidia/version")) -> str:
    """The kernel module's version (e.g. ``418.67``), or ``""``."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return ""


def probe_gpus(timeout: float = 60.0) -> GpuProbe:
    """``select_backend.probe_cuda`` (in a child process), then names and versions if it found
    GPUs."""
    from ..server.select_backend import probe_cuda

    n, why = probe_cuda(timeout)
    if not n:
        return GpuProbe(0, why)
    driver = nvidia_driver_version()
    names: tuple[str, ...] = ()
    try:
        r = subprocess.run([sys.executable, "-c", _DETAILS], capture_output=True, text=True,
                           timeout=timeout)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        names = tuple(d["names"])
        if not driver:
            driver = f"{d['cuda'] // 1000}.{d['cuda'] % 1000 // 10}"
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
        pass
    return GpuProbe(n, why, driver, names)


def check_nvidia(report: Report, probe: GpuProbe, gpu_required: bool) -> None:
    """The seeds' ``Searching NVIDIA GPU ...`` block. Without a GPU: an error when the backend
    must be ``cuda``, else a warning (oriond falls back to the ``sim`` backend)."""
    report.section("Searching NVIDIA GPU")
    if probe.count:
        if probe.driver:
            report.line(f"CUDA driver {probe.driver}")
            report.line(f"{probe.driver} is installed.")
        report.line(f"{probe.count} NVIDIA GPU{'s' if probe.count != 1 else ''} "
                    f"{'are' if probe.count != 1 else 'is'} found :")
        for i in range(probe.count):
            name = probe.names[i] if i < len(probe.names) else "?"
            report.line(f"    {i} : {name}")
        return
    report.line("No NVIDIA GPU is found")
    msg = f"{probe.reason}"
    if gpu_required:
        report.error(f"{msg}: the cuda backend needs an NVIDIA driver and GPU")
    else:
        report.warn(f"{msg}: oriond will run the sim backend (NOT a GPU: device memory in host "
                    f"RAM, NumPy reference kernels)")


def check_mps(report: Report, proc_root: Path = Path("/proc"),
              pipe_dir: Path | None = None) -> None:
    report.section("Checking NVIDIA MPS")
    daemons = find_processes("nvidia-cuda-mps-control", proc_root) + \
        find_processes("nvidia-cuda-mps-server", proc_root)
    pipe = pipe_dir or Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    if daemons:
        report.line("NVIDIA CUDA MPS is on.")
        report.warn(f"the MPS daemon runs (pid {', '.join(str(p.pid) for p in daemons)}): "
                    f"oriond enforces the vGPUs' compute share itself; stop MPS "
                    f"(echo quit | nvidia-cuda-mps-control) unless you need it")
    else:
        report.line("NVIDIA CUDA MPS is off.")
        if (pipe / "control").exists():
            report.info(f"{pipe}/control exists but no MPS daemon runs (stale pipe directory)")


# -- Orion Controller --------------------------------------------------------------------------


def controller_from_env(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(address, variable) when ORION_CONTROLLER (or the seeds' misspelling) is set."""
    for var in ENV_CONTROLLER:
        if env.get(var, "").strip():
            return env[var].strip(), var
    return None


def check_controller(report: Report, addr: str, origin: str, timeout: float = 3.0,
                     summary_out: list | None = None) -> bool:
    """The seeds' controller diagnosis for ``addr`` (``origin``: e.g. ``configuration file``,
    ``environment variable ORION_CONTROLLER``). Returns True when version and pool could be read;
    ``summary_out`` receives the :class:`Summary` when given."""
    from ..controller import client as ctl
    from ..errors import ControllerError

    report.line(f"Orion Controller addrress is set as {addr} in {origin}. Using this address "
                f"to diagnose Orion Controller")
    try:
        host, port = split_addr(addr)
    except ValueError:
        report.error(f"{addr} is not HOST:PORT")
        return False
    why = tcp_reach(host, port, timeout)
    if why is not None:
        report.error(f"Address {addr} cannot be reached: {why}")
        report.line(ctl.MSG_VERSION)
        report.info("check that orion-controller runs (orion-check runtime controller on its "
                    "host), listens on 0.0.0.0:9123 or this address, and that no firewall "
                    "(firewalld, Docker's iptables rules) blocks the port")
        return False
    report.line(f"Address {addr} is reached.")
    try:
        version = ctl.get_version(addr, timeout=timeout)
    except ControllerError as e:
        report.line(ctl.MSG_VERSION)
        report.error(f"{addr} answers, but not as an Orion Controller: {e}")
        return False
    report.line(f"Orion Controller Version Infomation : {version}")
    try:
        s = ctl.summary(addr, timeout=timeout)
    except ControllerError as e:
        report.error(f"cannot read the pool from the Orion Controller: {e}")
        return False
    report.line(f"There are {s.total_vgpus} vGPU under managered by Orion Controller. "
                f"{s.free_vgpus} vGPU are free now.")
    if summary_out is not None:
        summary_out.append(s)
    if s.nodes_down:
        report.warn(f"{s.nodes_down} Orion Server node(s) stopped heartbeating and are marked "
                    f"down: their vGPUs are not in the pool")
    if not s.total_vgpus:
        report.warn("no Orion Server has registered GPUs with this Orion Controller: clients "
                    "will print \"Client exits without allocation ID\"")
    elif not s.free_vgpus:
        report.warn("no vGPU is free: running clients hold them all (or released ones are "
                    "still within their lease)")
    return True


def controller_intro(report: Report) -> None:
    report.section("Checking Orion Controller status")
    report.info("Orion Controller setting may be different in different SHELL.")
    report.info("Environment variable ORION_CONTROLLER has the first priority.")
    report.line()


def writable_dir(path: Path) -> str | None:
    """None when ``path`` is (or could be created as) a directory this user can write in."""
    p = path
    while not p.exists():
        if p.parent == p:
            return f"no existing parent of {path}"
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable by this user"
    return None


def first(items: Iterable[Proc]) -> Proc | None:
    return next(iter(items), None)
