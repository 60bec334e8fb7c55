"""``orion-check runtime server`` on a VM host: the libvirt hook (real files written by
install_hook) and QEMU's user/group from a qemu.conf against shm_user_name/shm_group_name."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from orion_virt.check.report import Report
from orion_virt.check.vmhost import check_vm_host, qemu_conf_ids
from orion_virt.config import ServerConfig
from orion_virt.host.hookinstall import install_hook


def _run(cfg: ServerConfig, etc: Path) -> tuple[Report, str]:
    out = io.StringIO()
    r = Report(out)
    check_vm_host(r, cfg, etc)
    return r, out.getvalue()


def test_a_missing_hook_is_an_error(tmp_path: Path) -> None:
    r, text = _run(ServerConfig(), tmp_path)
    assert f"[Error] libvirt hook {tmp_path}/hooks/qemu.d/orion-virt is not installed" in text
    assert 'run "sudo orion-virt install-hook"' in text


def test_a_stale_hook_is_a_warning(tmp_path: Path) -> None:
    hook = install_hook(tmp_path / "hooks", sys.executable).installed
    hook.write_text(hook.read_text() + "# edited\n")
    r, text = _run(ServerConfig(), tmp_path)
    assert f"[Warning] {hook} was written by another orion-virt version (or edited)" in text


def test_qemu_conf_defaults_to_libvirt_qemu(tmp_path: Path) -> None:
    assert qemu_conf_ids(tmp_path / "absent")[:2] == ("libvirt-qemu", "libvirt-qemu")
    (tmp_path / "qemu.conf").write_text('#user = "nobody"\nuser = "root"   # ours\ngroup = "kvm"\n')
    assert qemu_conf_ids(tmp_path / "qemu.conf")[:2] == ("root", "kvm")


def test_mismatch_names_both_files_and_keys(tmp_path: Path) -> None:
    install_hook(tmp_path / "hooks", sys.executable)
    cfg = ServerConfig(shm_user_name="root", source="/etc/orion/server.conf")
    (tmp_path / "qemu.conf").write_text('user = "nobody"\ngroup = "nogroup"\n')
    r, text = _run(cfg, tmp_path)
    assert r.errors == [
        f'QEMU cannot open the VM device files: {tmp_path}/qemu.conf user = "nobody", group = "nogroup", '
        'but /etc/orion/server.conf [server-shm] shm_user_name = "root" owns the file (mode 0600), QEMU runs '
        'as "nobody"; set shm_user_name = nobody and shm_group_name = nogroup in /etc/orion/server.conf '
        f'(or user/group in {tmp_path}/qemu.conf) to match'], text
    r, text = _run(ServerConfig(source="/etc/orion/server.conf"), tmp_path)
    assert "[server-shm] shm_user_name and shm_group_name are unset: the hook gives the file to root" in text


def test_matching_user_or_group_passes(tmp_path: Path) -> None:
    install_hook(tmp_path / "hooks", sys.executable)
    (tmp_path / "qemu.conf").write_text('user = "nobody"\ngroup = "nogroup"\n')
    for cfg in (ServerConfig(shm_user_name="nobody"), ServerConfig(shm_group_name="nogroup")):
        r, text = _run(cfg, tmp_path)
        assert r.errors == [], text
        assert "QEMU (nobody:nogroup) can open the VM device files" in text
    r, text = _run(ServerConfig(shm_user_name="daemon"), tmp_path)
    assert 'shm_user_name = "daemon" owns the file (mode 0600), QEMU runs as "nobody"' in r.errors[0]
