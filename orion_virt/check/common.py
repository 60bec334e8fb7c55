"""Building blocks of the host's ``orion-check``: process lookup in ``/proc``, port probes, and
the checks several host components share (Python, packages, NVIDIA GPU and MPS). The report
and the network probes are in ``report``, the Orion Controller's diagnosis in
``controller_status`` (both also run in guests).

Every check writes lines through a :class:`~orion_virt.check.report.Report`. All I/O
handles (``/proc`` root, the CUDA probe, the clock of timeouts) can be passed in, so the
formatting is unit-tested without a GPU, a controller or a running oriond.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pwd
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .report import Report

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


def probe_gpus(timeout: float = 120.0) -> GpuProbe:
    """The GPUs as oriond would see them: ``cuda_probe`` in one child process (names and the
    driver version come with it)."""
    from ..server.select_backend import probe_cuda, probe_summary

    res = probe_cuda(timeout)
    n, why = probe_summary(res)
    if not n:
        return GpuProbe(0, why)
    v = res.driver_version
    driver = nvidia_driver_version() or (f"{v // 1000}.{v % 1000 // 10}" if v else "")
    return GpuProbe(n, why, driver, tuple(g.name for g in res.gpus))


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
