"""Install Orion's libvirt qemu hook next to a user's own hook, never over it.

libvirt >= 6.5 (Debian 12 ships 9.0) runs ``<hooks>/qemu`` first and then every executable in
``<hooks>/qemu.d/`` in alphabetical order, with the same arguments and stdin; any non-zero exit
on ``prepare`` aborts the start; and it registers the qemu hook when only ``qemu.d/`` holds an
executable. So Orion installs itself as ``qemu.d/orion-virt`` and leaves ``qemu`` alone: a
user's hook keeps its path (its package or config management keeps working) and runs before
ours. A ``qemu`` that is Orion's own shim (from a manual copy) is removed so the hook does not
run twice. libvirtd looks for hooks when it starts: restart it or send it SIGHUP afterwards.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HostError

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
HOOK_NAME = "orion-virt"
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
    report.actions.append("restart libvirtd (or send it SIGHUP) so it picks up the hook")
    return report


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
