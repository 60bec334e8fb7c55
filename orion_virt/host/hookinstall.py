"""Install Orion's libvirt qemu hook next to a user's own hook, never over it.

libvirt >= 6.5 (Debian 12 ships 9.0) runs ``<hooks>/qemu`` first and then every executable in
``<hooks>/qemu.d/`` in alphabetical order, with the same arguments and stdin; any non-zero exit
on ``prepare`` aborts the start; and it registers the qemu hook when only ``qemu.d/`` holds an
executable. So Orion installs itself as ``qemu.d/orion-virt`` and leaves ``qemu`` alone: a
user's hook keeps its path (its package or config management keeps working) and runs before
ours. A ``qemu`` that is Orion's own shim (from a manual copy) is removed so the hook does not
run twice. libvirtd looks for hooks when it starts and on SIGHUP (its reload handler rescans the
hooks directory and reloads driver state; running domains keep running), so ``reload_libvirt``
sends a running libvirtd (or virtqemud) in this mount namespace SIGHUP, or says what to run.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HostError

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "orion-virt"
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")
MARKER = "orion-virt libvirt qemu hook"

SHIM_BODY = f'''# {MARKER}: a thin shim; the logic is orion_virt.host.hook.
# Installed by `orion-virt install-hook`; libvirtd runs it as root with
# DOMAIN OP SUBOP EXTRA and the domain XML on stdin.
import sys

try:
    from orion_virt.host.hook import main
except Exception as e:
    sys.stdin.read()
    sys.stderr.write(f"orion-virt hook: cannot import orion_virt ({{e}}); VM left without Orion\\n")
    sys.exit(0)
sys.exit(main(sys.argv[1:], sys.stdin))
'''


def shim_text(python: str, config: str | None = None) -> str:
    """The hook script for interpreter ``python`` (which must be able to import orion_virt).

    ``config``: a server.conf other than /etc/orion/server.conf, written into the shim because
    libvirtd runs hooks with a cleared environment (ORION_SERVER_CONF would not reach them).
    """
    if config is None:
        return f"#!{python}\n{SHIM_BODY}"
    pin = f"import os\nos.environ.setdefault('ORION_SERVER_CONF', {str(Path(config).resolve())!r})\n"
    return f"#!{python}\n{SHIM_BODY.replace('import sys', 'import sys' + chr(10) + pin, 1)}"


def is_orion_hook(path: Path) -> bool:
    """True if ``path`` is a regular file carrying Orion's marker."""
    try:
        with open(path, "rb") as f:
            return MARKER.encode() in f.read(4096)
    except OSError:
        return False


@dataclass
class InstallReport:
    installed: Path
    actions: list[str] = field(default_factory=list)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def install_hook(hooks_dir: Path = DEFAULT_HOOKS_DIR, python: str | None = None,
                 config: str | None = None) -> InstallReport:
    """Write ``<hooks_dir>/qemu.d/orion-virt`` (0755) running ``python`` (default: this one).

    Idempotent. A user's ``<hooks_dir>/qemu`` is kept untouched; an Orion shim at that path is
    removed. Raises HostError when the directories cannot be created or written.
    """
    py = python or sys.executable
    d = hooks_dir / "qemu.d"
    target = d / HOOK_NAME
    report = InstallReport(target)
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise HostError(f"{target} exists and is not a regular file; remove it first")
        text = shim_text(py, config)
        if target.is_file() and target.read_text(errors="replace") == text:
            report.actions.append(f"{target} is already installed")
        else:
            _write_atomic(target, text, 0o755)
            report.actions.append(f"installed {target} (python: {py})")
        legacy = hooks_dir / "qemu"
        if legacy.is_file() and not legacy.is_symlink() and is_orion_hook(legacy):
            legacy.unlink()
            report.actions.append(f"removed Orion's old {legacy} (now in qemu.d/)")
        elif legacy.exists():
            report.actions.append(f"kept your hook {legacy}; libvirt runs it before Orion's")
    except OSError as e:
        raise HostError(f"cannot install the hook in {hooks_dir}: {e}") from None
    return report


def _daemons(names: tuple[str, ...], proc: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(pid, name) of live processes called one of ``names``: (in our mount namespace, elsewhere)."""
    own_ns = os.readlink("/proc/self/ns/mnt")
    here: list[tuple[int, str]] = []
    other: list[tuple[int, str]] = []
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
            if comm not in names or (p / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            (here if os.readlink(p / "ns" / "mnt") == own_ns else other).append((int(p.name), comm))
        except (OSError, IndexError):
            continue
    return sorted(here), sorted(other)


def reload_libvirt(hooks_dir: Path = DEFAULT_HOOKS_DIR, names: tuple[str, ...] = LIBVIRT_DAEMONS,
                   proc: Path = Path("/proc")) -> str:
    """Make a running libvirtd take the hook: SIGHUP to every daemon called one of ``names`` in
    this mount namespace (the one that reads this /etc/libvirt). Returns the line to show: what
    was done, or the exact command to run (daemon not running, in another mount namespace, not
    ours to signal, or a hooks directory other than the system one). Never raises."""
    if hooks_dir.resolve() != DEFAULT_HOOKS_DIR and names == LIBVIRT_DAEMONS:
        return (f"libvirtd reads its hooks from {DEFAULT_HOOKS_DIR}; for the libvirtd that uses {hooks_dir}, "
                "run `kill -HUP <its pid>` so it takes the hook")
    here, other = _daemons(names, proc)
    if not here:
        if other:
            pids = " ".join(str(p) for p, _ in other)
            return (f"{other[0][1]} runs in another mount namespace (pid {pids}, a container?): install the "
                    f"hook where it runs, then `kill -HUP {other[0][0]}` there")
        return (f"{' / '.join(names)} is not running: it takes the hook when it starts "
                "(systemctl start libvirtd)")
    done, failed = [], []
    for pid, name in here:
        try:
            os.kill(pid, signal.SIGHUP)
            done.append(f"{name} (pid {pid})")
        except OSError as e:
            failed.append(f"cannot signal {name} (pid {pid}): {e.strerror}"
                          + (f"; run `sudo kill -HUP {pid}`" if e.errno in (errno.EPERM, errno.EACCES) else ""))
    lines = [f"sent SIGHUP to {', '.join(done)}: it rescans its hooks, running domains keep running"] if done else []
    return "; ".join(lines + failed)


def uninstall_hook(hooks_dir: Path = DEFAULT_HOOKS_DIR) -> list[str]:
    """Remove Orion's hook (qemu.d/orion-virt, or an Orion shim at qemu); others are kept."""
    actions = []
    for p in (hooks_dir / "qemu.d" / HOOK_NAME, hooks_dir / "qemu"):
        if p.is_file() and not p.is_symlink() and is_orion_hook(p):
            try:
                p.unlink()
            except OSError as e:
                raise HostError(f"cannot remove {p}: {e}") from None
            actions.append(f"removed {p}")
    if not actions:
        actions.append(f"no Orion hook found in {hooks_dir}")
    return actions
