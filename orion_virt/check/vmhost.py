"""``orion-check runtime server`` on a VM host (``enable_kvm``): the libvirt hook is installed
and current, and QEMU (``/etc/libvirt/qemu.conf`` ``user``/``group``) can open the shm files
the hook gives to ``[server-shm] shm_user_name``/``shm_group_name`` (orion_virt/host/hook.py
``resolve_owner``: that user, mode 0600; root with that group, mode 0660; both empty: root, or
the domain's static DAC seclabel).
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from ..config import ServerConfig
from ..host.hookinstall import HOOK_NAME, is_orion_hook, shim_text
from .report import Report

DEFAULT_QEMU_USER = "libvirt-qemu"
DEFAULT_QEMU_GROUP = "libvirt-qemu"


def qemu_conf_ids(path: Path) -> tuple[str, str, str]:
    """(user, group, where) as libvirt runs QEMU: the ``user``/``group`` keys of ``path``, else
    Debian's build defaults (libvirt-qemu). ``where`` says which applied."""
    user = group = ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        s = line.split("#", 1)[0].strip()
        key, sep, value = s.partition("=")
        if not sep:
            continue
        v = value.strip().strip('"').strip("'")
        if key.strip() == "user":
            user = v
        elif key.strip() == "group":
            group = v
    where = f"{path} user = \"{user or DEFAULT_QEMU_USER}\", group = \"{group or DEFAULT_QEMU_GROUP}\"" + (
        "" if user and group else " (libvirt's default where the key is unset)")
    return user or DEFAULT_QEMU_USER, group or DEFAULT_QEMU_GROUP, where


def _uid(name: str) -> int | None:
    if name.startswith("+") and name[1:].isdigit():
        return int(name[1:])
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _groups_of(user: str, primary: str) -> set[int]:
    out: set[int] = set()
    for name in (primary,):
        if name.startswith("+") and name[1:].isdigit():
            out.add(int(name[1:]))
        else:
            try:
                out.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                pass
    try:
        pw = pwd.getpwnam(user)
        out.add(pw.pw_gid)
        out.update(os.getgrouplist(user, pw.pw_gid))
    except KeyError:
        pass
    return out


def qemu_can_open(cfg: ServerConfig, qemu_user: str, qemu_group: str) -> str | None:
    """Why QEMU running as ``qemu_user``/``qemu_group`` cannot open the hook's shm file, or None."""
    quid = _uid(qemu_user)
    if quid == 0:
        return None
    user, group = cfg.shm_user_name, cfg.shm_group_name
    if user:
        uid = _uid(user)
        if uid is None:
            return f"shm_user_name = \"{user}\" is no user on this host"
        if uid == quid:
            return None
        if uid != 0:
            return (f"shm_user_name = \"{user}\" owns the file (mode 0600), QEMU runs as \"{qemu_user}\"")
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return f"shm_group_name = \"{group}\" is no group on this host"
        if gid in _groups_of(qemu_user, qemu_group):
            return None
        return f"shm_group_name = \"{group}\" is not a group of the QEMU user \"{qemu_user}\""
    if user:
        return f"shm_user_name = \"{user}\" owns the file (mode 0600), QEMU runs as \"{qemu_user}\""
    return ("shm_user_name and shm_group_name are unset: the hook gives the file to root (mode 0600) "
            "unless a domain has a static DAC seclabel")


def check_hook(report: Report, cfg: ServerConfig, hooks_dir: Path) -> None:
    """The hook at ``<hooks_dir>/qemu.d/orion-virt``: present, Orion's, its interpreter there,
    and the text ``orion-virt install-hook`` writes now."""
    hook = hooks_dir / "qemu.d" / HOOK_NAME
    fix = "run \"sudo orion-virt install-hook\""
    if not hook.is_file():
        report.error(f"libvirt hook {hook} is not installed: VMs get no Orion device file; {fix}")
        return
    if not is_orion_hook(hook):
        report.error(f"{hook} is not Orion's hook; remove it and {fix}")
        return
    text = hook.read_text(errors="replace")
    python = text.splitlines()[0][2:].strip() if text.startswith("#!") else ""
    if not python or not os.access(python, os.X_OK):
        report.error(f"{hook} runs {python or '(no interpreter)'}, which is not an executable; {fix}")
        return
    current = {shim_text(python)}
    if cfg.source not in ("defaults", "/etc/orion/server.conf"):
        current.add(shim_text(python, cfg.source))
    if text not in current:
        report.warn(f"{hook} was written by another orion-virt version (or edited); {fix} to update it")
        return
    report.line(f"libvirt hook {hook} installed (python {python})")
    legacy = hooks_dir / "qemu"
    if legacy.is_file() and is_orion_hook(legacy):
        report.warn(f"{legacy} is an old Orion hook too: the hook runs twice; {fix} (it removes it)")


def check_vm_host(report: Report, cfg: ServerConfig, libvirt_etc: Path = Path("/etc/libvirt")) -> None:
    """The hook and the QEMU user/group against shm_user_name/shm_group_name."""
    report.section("Checking the VM host (enable_kvm)")
    check_hook(report, cfg, libvirt_etc / "hooks")
    qemu_conf = libvirt_etc / "qemu.conf"
    user, group, where = qemu_conf_ids(qemu_conf)
    why = qemu_can_open(cfg, user, group)
    if why is None:
        report.line(f"QEMU ({user}:{group}) can open the VM device files")
        return
    report.error(f"QEMU cannot open the VM device files: {where}, but {cfg.source} [server-shm] {why}; "
                 f"set shm_user_name = {user} and shm_group_name = {group} in {cfg.source} "
                 f"(or user/group in {qemu_conf}) to match")
