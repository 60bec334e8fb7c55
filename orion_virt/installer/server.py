"""install-server: the host side (oriond, orion-controller, the tools) in a self-contained
environment, as the seeds' ``install-server.sh``. Host only (not in install-client's bundle).

What an installation consists of (recorded in ``<PREFIX>/.orion-server-manifest.json``):

- ``<PREFIX>`` (default /opt/orion): a virtual environment (``python3 -m venv``) holding this
  project and its dependencies (pip; from an index, or ``--wheel-dir DIR --no-index`` offline), the
  whole directory being install-server's;
- ``/usr/local/bin/<command>``: symbolic links to ``<PREFIX>/bin/<command>`` for :data:`COMMANDS`
  (an existing file of that name that install-server did not write is left alone, and said so);
- ``/etc/orion/server.conf``: written (0640) only when absent; an existing one is kept;
- ``/etc/systemd/system/oriond.service`` and ``orion-controller.service`` (0644), from
  :mod:`.server_files`, and ``systemctl daemon-reload`` when systemd runs this system;
- ``/etc/logrotate.d/orion`` (0644) and ``/var/log/orion`` with ``session/`` (0750).

``uninstall`` removes all of it. ``server.conf`` is removed only if install-server created it and
it is unchanged (an edited one holds the host's settings and is kept, and said so); a log
directory that holds logs is kept, and said so. Every step prints one line as it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import compat
from . import server_files
from .core import InstallError, Manifest, Out, Target, _remove_files, _sha, _Writer, check_prefix, remove_unedited_conf

DEFAULT_PREFIX = "/opt/orion"
MANIFEST_NAME = ".orion-server-manifest.json"
CONF_PATH = "/etc/orion/server.conf"
UNIT_DIR = "/etc/systemd/system"
UNITS = {"oriond.service": server_files.ORIOND_UNIT, "orion-controller.service": server_files.CONTROLLER_UNIT}
LOGROTATE_PATH = "/etc/logrotate.d/orion"
LOG_DIR = "/var/log/orion"
BIN_DIR = "/usr/local/bin"
COMMANDS = ("oriond", "orion-controller", "orion-shm", "orion-check", "orion-virt", "orion-bench",
            "orion-smi", "install-client")
EXTRAS = ("host", "cuda")
PROJECT = "orion-virt"


@dataclass(frozen=True)
class Options:
    """What to install. ``source``: a checkout (a directory with pyproject.toml) or a wheel;
    ``wheel_dir``: where pip finds the dependencies (with ``no_index``: only there);
    ``no_deps``: install the project alone (its dependencies must be in the system's site-packages,
    then ``system_site_packages`` too)."""

    prefix: str = DEFAULT_PREFIX
    root: str = "/"
    source: str = ""
    python: str = ""
    wheel_dir: str = ""
    no_index: bool = False
    no_deps: bool = False
    system_site_packages: bool = False
    extras: tuple[str, ...] = EXTRAS
    cuda_home: str = server_files.DEFAULT_CUDA_HOME


def base_python() -> str:
    """The Python the environment is made from: this one's base interpreter (outside any venv)."""
    exe = getattr(sys, "_base_executable", "") or sys.executable
    if not exe or not os.access(exe, os.X_OK):
        raise InstallError("cannot find a python3 to create the environment with: name it with --python")
    return exe


def default_source() -> str:
    """The checkout this orion_virt was imported from; InstallError when it is an installed copy."""
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file() and (here / "orion_virt").is_dir():
        return str(here)
    raise InstallError("orion_virt is not running from a checkout: name the project with --from "
                       "(a checkout or an orion_virt wheel)")


def venv_argv(o: Options, venv_dir: Path) -> list[str]:
    """The command that creates the environment (no pip inside: :func:`pip_argv` drives this
    process's pip with ``--python``, which saves ensurepip's half-minute)."""
    argv = [o.python or base_python(), "-m", "venv", "--without-pip"]
    if o.system_site_packages:
        argv.append("--system-site-packages")
    return [*argv, str(venv_dir)]


def pip_argv(o: Options, venv_dir: Path, wheel: Path) -> list[str]:
    """The pip command installing ``wheel`` (the project, built) with ``o.extras`` into the environment."""
    spec = f"{wheel}[{','.join(o.extras)}]" if o.extras and not o.no_deps else str(wheel)
    argv = [sys.executable, "-m", "pip", "--python", str(venv_dir / "bin" / "python"), "install",
            "--disable-pip-version-check", "--no-warn-script-location"]
    if o.no_index:
        argv.append("--no-index")
    if o.wheel_dir:
        argv += ["--find-links", o.wheel_dir]
    if o.no_deps:
        argv.append("--no-deps")
    return [*argv, spec]


def links(prefix: str) -> list[tuple[str, str]]:
    """(/usr/local/bin/<command>, its target in the environment) for every command."""
    return [(f"{BIN_DIR}/{c}", f"{prefix}/bin/{c}") for c in COMMANDS]


def files(o: Options) -> list[tuple[str, bytes, int]]:
    """(path, content, mode) of the files written at every install (not server.conf)."""
    out = [(f"{UNIT_DIR}/{name}", server_files.render(text, o.prefix, o.cuda_home).encode(), 0o644)
           for name, text in UNITS.items()]
    out.append((LOGROTATE_PATH, server_files.LOGROTATE.encode(), 0o644))
    return out


def systemd_running(t: Target) -> bool:
    """Whether systemd runs the target system (sd_booted's test), never for another root."""
    return t.root == Path("/") and Path("/run/systemd/system").is_dir()


class _Progress:
    def __init__(self, out: Out, total: int) -> None:
        self.out, self.n, self.total = out, 0, total

    def __call__(self, what: str) -> None:
        self.n += 1
        self.out(f"[{self.n}/{self.total}] {what}")


_PIP_PROGRESS = ("Collecting ", "Building wheel", "Installing collected", "Successfully installed")
"""pip's lines worth showing while it runs (a dependency being fetched or built can take minutes)"""


def _run(argv: list[str], what: str, out: Out | None = None) -> None:
    """Run ``argv``; with ``out``, its progress lines (:data:`_PIP_PROGRESS`) are shown as they come.
    InstallError with the end of its output when it fails."""
    lines: list[str] = []
    try:
        # PYTHONPATH would make the new environment see another orion_virt (pip: "already satisfied")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line.rstrip("\n"))
                if out is not None and line.startswith(_PIP_PROGRESS):
                    out("      " + line.rstrip("\n"))
            code = p.wait()
    except OSError as e:
        raise InstallError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    if code:
        tail = "\n".join(lines[-15:])
        raise InstallError(f"{what} failed (exit status {code}): {' '.join(argv)}\n{tail}")


SETUPTOOLS_NEEDED = (77,)
"""pyproject.toml's build requirement (setuptools>=77: PEP 639 license strings)"""


def _local_setuptools_will_do() -> bool:
    from importlib import metadata

    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major,) >= SETUPTOOLS_NEEDED


def wheel_argv(o: Options, source: str, into: Path, local_setuptools: bool) -> list[str]:
    """pip building the checkout's wheel: with this environment's setuptools when it is new enough
    (no build isolation: offline, seconds), else in pip's isolated build environment (setuptools
    from the index, or from ``o.wheel_dir`` with ``o.no_index``)."""
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(into)]
    if local_setuptools:
        argv.append("--no-build-isolation")
    else:
        argv += ["--no-index"] if o.no_index else []
        argv += ["--find-links", o.wheel_dir] if o.wheel_dir else []
    return [*argv, source]


def _build_wheel(o: Options, source: str, into: Path) -> Path:
    """``source`` itself when it is a wheel, else the wheel built from that checkout."""
    if source.endswith(".whl"):
        if not os.path.isfile(source):
            raise InstallError(f"--from {source}: no such wheel")
        return Path(source).resolve()
    if not (Path(source) / "pyproject.toml").is_file():
        raise InstallError(f"--from {source}: neither a wheel nor a checkout (no pyproject.toml)")
    _run(wheel_argv(o, source, into, _local_setuptools_will_do()), f"building the wheel of {source}")
    wheels = sorted(into.glob("orion_virt-*.whl"))
    if not wheels:
        raise InstallError(f"building the wheel of {source} left no orion_virt-*.whl in {into}")
    return wheels[-1]


def find_manifest(t: Target, prefix: str) -> Manifest | None:
    m = t(prefix) / MANIFEST_NAME
    if not m.is_file():
        return None
    try:
        return Manifest.from_json(m.read_text())
    except (ValueError, TypeError) as e:
        raise InstallError(f"{m}: unreadable manifest ({e}); remove the installation by hand") from None


def find_manifest_quietly(o: Options) -> bool:
    """Whether an installation (even a partial one) is recorded at ``o.prefix``."""
    try:
        return find_manifest(Target(o.root), check_prefix(o.prefix)) is not None
    except InstallError:
        return False


def install(o: Options, out: Out = print) -> Manifest:
    """Install (or reinstall over install-server's previous installation at ``o.prefix``)."""
    prefix = check_prefix(o.prefix)
    if check_prefix(o.cuda_home) != o.cuda_home:
        raise InstallError(f"CUDA_HOME {o.cuda_home!r}: give it as a normalised absolute path")
    o = Options(**{**o.__dict__, "prefix": prefix})
    t = Target(o.root)
    if t.root != Path("/"):
        t.root.mkdir(parents=True, exist_ok=True)
    old = find_manifest(t, prefix)
    venv = t(prefix)
    if old is None and venv.exists() and any(venv.iterdir()):
        raise InstallError(f"{prefix} exists and is not an install-server installation (no {MANIFEST_NAME}): "
                           "remove it, or install elsewhere with -d PATH")
    step = _Progress(out, 8)
    m = Manifest(prefix, o.python or base_python(), "")
    if old is not None:
        step(f"Removing the previous installation in {prefix}")
        shutil.rmtree(venv)
        _remove_files(t, Manifest(old.prefix, old.python, old.site_dir, list(old.files), [], False), None)
        m.dirs = list(old.dirs)
        m.conf_created, m.conf_sha256 = old.conf_created, old.conf_sha256
    else:
        step(f"Installing into {prefix}")
    w = _Writer(t, m)
    w.mkdir(str(Path(prefix).parent))
    step(f"Creating the environment {prefix} ({m.python} -m venv)")
    created = not venv.exists()
    _run(venv_argv(o, venv), f"creating the environment {venv}")
    if created and prefix not in m.dirs:
        m.dirs.append(prefix)
    (venv / MANIFEST_NAME).write_text(m.to_json())  # from here on, --uninstall finds what is done
    with tempfile.TemporaryDirectory(prefix="install-server-") as tmp:
        source = o.source or default_source()
        step(f"Building {PROJECT} from {source}" if not source.endswith(".whl") else f"Using the wheel {source}")
        wheel = _build_wheel(o, source, Path(tmp))
        deps = ("no dependencies (--no-deps)" if o.no_deps else
                f"with [{','.join(o.extras)}] from " + (o.wheel_dir or "the index") +
                (" only" if o.no_index else ""))
        step(f"Installing {wheel.name} into {prefix}, {deps} (pip; this can take minutes)")
        _run(pip_argv(o, venv, wheel), f"installing {wheel.name} into {venv}", out)
    step(f"Linking the commands into {BIN_DIR}: {' '.join(COMMANDS)}")
    for path, target in links(prefix):
        real = t(path)
        if (real.exists() or real.is_symlink()) and path not in (old.files if old else []):
            out(f"  kept the existing {path} (not installed by install-server); ours is {target}")
            continue
        w.link(path, target)
    conf = t(CONF_PATH)
    if conf.exists():
        step(f"Keeping the existing {CONF_PATH}")
    else:
        step(f"Writing {CONF_PATH} (the defaults: edit bind_addr, enable_shm, controller_addr...)")
        data = server_files.render(server_files.SERVER_CONF, prefix).encode()
        w.write(CONF_PATH, data, 0o640)
        m.files.remove(CONF_PATH)  # tracked separately: kept on uninstall once edited
        m.conf_created, m.conf_sha256 = True, _sha(data)
    step(f"Writing the systemd units ({', '.join(UNITS)}) and {LOGROTATE_PATH}; {LOG_DIR} (0750)")
    for path, data, mode in files(o):
        w.write(path, data, mode)
    w.mkdir(f"{LOG_DIR}/session", 0o750)
    (venv / MANIFEST_NAME).write_text(m.to_json())
    if systemd_running(t):
        step("systemctl daemon-reload")
        _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    elif t.root != Path("/"):
        step(f"Not running systemctl daemon-reload: installed under the root directory {t.root}")
    else:
        step("Not running systemctl daemon-reload: systemd does not run this system (no /run/systemd/system)")
    out("")
    out(f"Orion Server has been installed in {prefix}. Start it with:")
    out("  sudo systemctl enable --now oriond orion-controller")
    out(f"After editing {CONF_PATH}: sudo systemctl reload oriond")
    return m


def uninstall(*, prefix: str = DEFAULT_PREFIX, root: str = "/", out: Out = print) -> Manifest:
    """Remove what ``install`` installed (see the module docstring for server.conf and the logs)."""
    prefix = check_prefix(prefix)
    t = Target(root)
    m = find_manifest(t, prefix)
    if m is None:
        raise InstallError(f"no Orion Server installation found in {prefix} (no {MANIFEST_NAME}); "
                           "name its path with -d PATH")
    step = _Progress(out, 3)
    if systemd_running(t):  # a unit removed under a running service would leave it running
        for unit in UNITS:
            out(f"  systemctl disable --now {unit}")
            subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True, timeout=120)
    conf_kept = remove_unedited_conf(t, m, CONF_PATH)
    step(f"Removing the environment {prefix}")
    if prefix in m.dirs:
        shutil.rmtree(t(prefix))
    else:  # the directory was there before (empty): only its contents are ours
        for child in t(prefix).iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    step("Removing the commands, units, logrotate file and the directories install-server created")
    _remove_files(t, m, out, "install-server", (os.path.dirname(CONF_PATH),))
    if systemd_running(t):
        step("systemctl daemon-reload")
        _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    else:
        step("Not running systemctl daemon-reload: " + ("installed under another root directory"
             if t.root != Path("/") else "systemd does not run this system"))
    out(f"Orion Server has been removed from {prefix}")
    if conf_kept:
        out(f"Kept {CONF_PATH}: it was edited after installation (remove it yourself if it is no longer needed)")
    return m


def run(o: Options, *, do_uninstall: bool, ask: Callable[[str], str] | None = None, out: Out = print) -> int:
    """The whole command (``ask``: the question before installing, None: none). Returns the exit status."""
    try:
        if ask is not None and not do_uninstall:
            out(f"Orion Server will be installed to {o.prefix}")
            try:
                answer = ask(compat.INSTALL_QUESTION)
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                out("Installation is cancelled.")
                return 1
        if do_uninstall:
            uninstall(prefix=o.prefix, root=o.root, out=out)
        else:
            install(o, out)
        return 0
    except InstallError as e:
        out(f"install-server: {e}")
        if not do_uninstall and find_manifest_quietly(o):
            out(f"(what was done is recorded: install-server --uninstall -d {o.prefix} removes it)")
        return 2
    except PermissionError as e:
        out(f"install-server: {e.filename}: permission denied (run it as root: sudo install-server)")
        return 2
    except OSError as e:
        out(f"install-server: {e}")
        return 2
