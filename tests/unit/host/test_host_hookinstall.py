"""install-hook / uninstall-hook in a temporary hooks directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orion_virt.errors import HostError
from orion_virt.host.hookinstall import install_hook, is_orion_hook, shim_text, uninstall_hook

USER_HOOK = "#!/bin/sh\n# the user's own hook\nexit 0\n"


def test_fresh_install(tmp_path: Path) -> None:
    r = install_hook(tmp_path, "/opt/venv/bin/python")
    target = tmp_path / "qemu.d" / "orion-virt"
    assert r.installed == target
    assert target.read_text() == shim_text("/opt/venv/bin/python")
    assert target.read_text().startswith("#!/opt/venv/bin/python\n")
    assert (target.stat().st_mode & 0o777) == 0o755
    assert not (tmp_path / "qemu").exists()


def test_user_hook_is_kept_untouched(tmp_path: Path) -> None:
    user = tmp_path / "qemu"
    user.write_text(USER_HOOK)
    os.chmod(user, 0o750)
    r = install_hook(tmp_path, "/usr/bin/python3")
    assert user.read_text() == USER_HOOK and (user.stat().st_mode & 0o777) == 0o750
    assert any("kept your hook" in a for a in r.actions)
    assert is_orion_hook(tmp_path / "qemu.d" / "orion-virt") and not is_orion_hook(user)
    uninstall_hook(tmp_path)
    assert user.read_text() == USER_HOOK and not (tmp_path / "qemu.d" / "orion-virt").exists()


def test_idempotent_and_python_change(tmp_path: Path) -> None:
    install_hook(tmp_path, "/a/python")
    r = install_hook(tmp_path, "/a/python")
    assert "already installed" in r.actions[0]
    install_hook(tmp_path, "/b/python")
    assert (tmp_path / "qemu.d" / "orion-virt").read_text().startswith("#!/b/python\n")
    assert [p.name for p in (tmp_path / "qemu.d").iterdir()] == ["orion-virt"]


def test_legacy_orion_hook_at_qemu_is_moved(tmp_path: Path) -> None:
    (tmp_path / "qemu").write_text(shim_text("/usr/bin/python3"))
    r = install_hook(tmp_path, "/usr/bin/python3")
    assert not (tmp_path / "qemu").exists()
    assert any("removed Orion's old" in a for a in r.actions)


def test_existing_user_scripts_in_qemu_d_are_kept(tmp_path: Path) -> None:
    d = tmp_path / "qemu.d"
    d.mkdir()
    (d / "10-user").write_text(USER_HOOK)
    install_hook(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["10-user", "orion-virt"]
    assert uninstall_hook(tmp_path) == [f"removed {d / 'orion-virt'}"]
    assert (d / "10-user").read_text() == USER_HOOK


def test_refuses_symlink_target(tmp_path: Path) -> None:
    d = tmp_path / "qemu.d"
    d.mkdir()
    (d / "orion-virt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HostError, match="not a regular file"):
        install_hook(tmp_path)


def test_uninstall_nothing(tmp_path: Path) -> None:
    assert "no Orion hook" in uninstall_hook(tmp_path)[0]


def test_install_hook_pins_a_non_default_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    from orion_virt.host.hookinstall import install_hook

    conf = tmp_path / "server.conf"
    conf.write_text("[server]\n")
    hook = install_hook(tmp_path / "hooks", sys.executable, str(conf)).installed
    text = hook.read_text()
    assert f"os.environ.setdefault('ORION_SERVER_CONF', {str(conf)!r})" in text
    # the shim still runs (here: an unknown domain without Orion metadata is left alone)
    r = subprocess.run([str(hook), "dom", "prepare", "begin", "-"], input="<domain><name>dom</name></domain>",
                       capture_output=True, text=True, timeout=30, env={})
    assert r.returncode == 0, r.stderr


FAKE_DAEMON = "orion-fakevirtd"  # a real process under a name no real daemon has (comm: 15 chars)


def test_reload_sends_sighup_to_the_running_daemon(tmp_path: Path) -> None:
    import subprocess
    import time

    from orion_virt.host.hookinstall import DEFAULT_HOOKS_DIR, reload_libvirt

    got = tmp_path / "got"
    script = tmp_path / FAKE_DAEMON
    script.write_text(f"#!/bin/sh\ntrap 'echo HUP >> {got}' HUP\necho up > {tmp_path}/up\n"
                      "while :; do sleep 0.05; done\n")
    script.chmod(0o755)
    p = subprocess.Popen([str(script)])
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "up").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        line = reload_libvirt(DEFAULT_HOOKS_DIR, names=(FAKE_DAEMON,))
        assert line.startswith(f"sent SIGHUP to {FAKE_DAEMON} (pid {p.pid})"), line
        while not got.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got.read_text() == "HUP\n" and p.poll() is None  # taken, not killed
    finally:
        p.kill()
        p.wait()
    line = reload_libvirt(DEFAULT_HOOKS_DIR, names=(FAKE_DAEMON,))
    assert line == f"{FAKE_DAEMON} is not running: it takes the hook when it starts (systemctl start libvirtd)"


def test_reload_names_the_command_for_another_hooks_dir(tmp_path: Path) -> None:
    from orion_virt.host.hookinstall import reload_libvirt

    line = reload_libvirt(tmp_path)
    assert f"for the libvirtd that uses {tmp_path}, run `kill -HUP <its pid>`" in line
