"""The libvirt qemu hook with a fake shmdev (dependency injection), plus the real shmdev
module and the installed shim run as a subprocess, as libvirtd would."""

from __future__ import annotations

import dataclasses
import grp
import io
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from host_fakes import make_domain

from orion_virt.config import ServerConfig
from orion_virt.errors import ConfigError
from orion_virt.host import domain_xml as dx
from orion_virt.host.hook import main, resolve_owner
from orion_virt.host.hookinstall import install_hook

MIB = 1 << 20
CFG = {"server_addr": "10.0.0.1:9960", "controller_addr": "10.0.0.1:9123"}


class FakeShmDev:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def format_device(self, path: Path, size: int, *, uid: int = -1, gid: int = -1,
                      mode: int = 0o600, vm: bool = False,
                      config: dict[str, str] | None = None) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.calls.append(("format", dict(path=path, size=size, uid=uid, gid=gid, mode=mode,
                                          vm=vm, config=config)))
        path.write_bytes(b"\0" * 16)

    def scrub_device(self, path: Path) -> None:
        self.calls.append(("scrub", path))
        path.unlink()


@pytest.fixture
def cfg(tmp_path: Path) -> ServerConfig:
    (tmp_path / "shm").mkdir()
    return ServerConfig(shm_path_base=str(tmp_path / "shm"), log_dir=str(tmp_path / "log"),
                        enable_kvm=True)


def attached(index: int = 1, size: int = 4 * MIB) -> str:
    return dx.attach(make_domain("vm1"), index, size, CFG)


def run(cfg: ServerConfig, op: str, sub: str, xml: str, dev: FakeShmDev) -> tuple[int, str]:
    err = io.StringIO()
    rc = main(["vm1", op, sub, "-"], io.StringIO(xml), shmdev=dev, config=cfg, stderr=err)
    return rc, err.getvalue()


def log_text(cfg: ServerConfig) -> str:
    return (Path(cfg.log_dir) / "hook.log").read_text()


def test_prepare_and_release(cfg: ServerConfig) -> None:
    dev = FakeShmDev()
    rc, err = run(cfg, "prepare", "begin", attached(), dev)
    assert rc == 0 and err == ""
    path = Path(cfg.shm_path_base) / "orionsock1"
    assert dev.calls == [("format", dict(path=path, size=4 * MIB, uid=0, gid=0, mode=0o600,
                                         vm=True, config=CFG))]
    assert "vm1: prepared" in log_text(cfg)
    for op, sub in (("start", "begin"), ("started", "begin"), ("stopped", "end")):
        assert run(cfg, op, sub, attached(), dev)[0] == 0
    assert len(dev.calls) == 1
    assert run(cfg, "release", "end", attached(), dev)[0] == 0
    assert dev.calls[-1] == ("scrub", path) and not path.exists()
    assert run(cfg, "release", "end", attached(), dev)[0] == 0  # already gone: no scrub
    assert len(dev.calls) == 2


def test_ignores_domains_without_orion(cfg: ServerConfig) -> None:
    dev = FakeShmDev()
    assert run(cfg, "prepare", "begin", make_domain("plain"), dev) == (0, "")
    assert dev.calls == [] and not Path(cfg.log_dir).exists()


def test_failure_is_logged_and_strict_vetoes(cfg: ServerConfig) -> None:
    rc, err = run(cfg, "prepare", "begin", attached(), FakeShmDev(fail=True))
    assert rc == 0 and "No space left" in err and "VM continues" in err
    assert "[ERROR] vm1 prepare begin" in log_text(cfg)
    strict = dataclasses.replace(cfg, hook_strict=True)
    rc, err = run(strict, "prepare", "begin", attached(), FakeShmDev(fail=True))
    assert rc == 1 and "hook_strict" in err


def test_unknown_user_fails_only_when_strict(cfg: ServerConfig) -> None:
    bad = dataclasses.replace(cfg, shm_user_name="no-such-user-xyz")
    assert run(bad, "prepare", "begin", attached(), FakeShmDev())[0] == 0
    rc, err = run(dataclasses.replace(bad, hook_strict=True), "prepare", "begin", attached(),
                  FakeShmDev())
    assert rc == 1 and "no-such-user-xyz" in err


def test_symlink_squatting_is_removed_not_followed(cfg: ServerConfig, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = Path(cfg.shm_path_base) / "orionsock1"
    link.symlink_to(victim)
    dev = FakeShmDev()
    assert run(cfg, "release", "end", attached(), dev)[0] == 0
    assert dev.calls == [] and not link.is_symlink() and victim.read_text() == "keep me"
    link.symlink_to(victim)
    assert run(cfg, "prepare", "begin", attached(), dev)[0] == 0
    assert not link.is_symlink() and victim.read_text() == "keep me"


def test_size_comes_from_the_shmem_device(cfg: ServerConfig) -> None:
    xml = attached(size=4 * MIB).replace('<size unit="M">4</size>', '<size unit="M">8</size>')
    dev = FakeShmDev()
    assert run(cfg, "prepare", "begin", xml, dev)[0] == 0
    assert dev.calls[0][1]["size"] == 8 * MIB
    assert "missing or changed" in log_text(cfg)


def test_owner_resolution(cfg: ServerConfig) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    xml = attached()
    assert resolve_owner(cfg, xml) == (0, 0, 0o600)
    c = dataclasses.replace(cfg, shm_user_name="nobody")
    assert resolve_owner(c, xml) == (nobody.pw_uid, nobody.pw_gid, 0o600)
    c = dataclasses.replace(cfg, shm_group_name=group)
    assert resolve_owner(c, xml) == (0, nobody.pw_gid, 0o660)
    c = dataclasses.replace(cfg, shm_user_name="+4242", shm_group_name="+4343")
    assert resolve_owner(c, xml) == (4242, 4343, 0o600)
    labelled = xml.replace("</domain>", "<seclabel type='static' model='dac' relabel='yes'>"
                                        "<label>nobody:" + group + "</label></seclabel></domain>")
    assert resolve_owner(cfg, labelled) == (nobody.pw_uid, nobody.pw_gid, 0o600)
    with pytest.raises(ConfigError, match="shm_group_name"):
        resolve_owner(dataclasses.replace(cfg, shm_group_name="no-such-group-xyz"), xml)


def test_config_from_environment(cfg: ServerConfig, tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text(f"[server]\nenable_kvm = true\n[server-log]\nlog_dir = {cfg.log_dir}\n"
                    f"[server-shm]\nshm_path_base = {cfg.shm_path_base}\n"
                    "[server-kvm]\nhook_strict = true\n")
    env = {"ORION_SERVER_CONF": str(conf)}
    err = io.StringIO()
    rc = main(["vm1", "prepare", "begin", "-"], attached(), shmdev=FakeShmDev(fail=True),
              env=env, stderr=err)
    assert rc == 1
    conf.write_text("[server]\nbogus = 1\n")
    rc = main(["vm1", "prepare", "begin", "-"], attached(), shmdev=FakeShmDev(), env=env,
              stderr=err)
    assert rc == 0 and "bogus" in err.getvalue()


def test_usage() -> None:
    assert main(["vm1"], "", shmdev=FakeShmDev(), stderr=io.StringIO()) == 2


def test_repo_shim_matches_installed_shim() -> None:
    from orion_virt.host.hookinstall import shim_text

    shim = Path(__file__).resolve().parents[3] / "hooks" / "qemu"
    assert shim.read_text() == shim_text("/usr/bin/env python3")
    assert os.access(shim, os.X_OK)


def test_installed_shim_runs_like_libvirtd_runs_it(cfg: ServerConfig, tmp_path: Path) -> None:
    """The real hook process: prints nothing on stdout, exits 0 for a non-strict failure, and
    (with the real shmdev module present) formats and scrubs the device."""
    hook = install_hook(tmp_path / "hooks", sys.executable).installed
    conf = tmp_path / "server.conf"
    conf.write_text(f"[server]\nenable_kvm = true\n[server-log]\nlog_dir = {cfg.log_dir}\n"
                    f"[server-shm]\nshm_path_base = {cfg.shm_path_base}\n")
    env = {"ORION_SERVER_CONF": str(conf), "PATH": "/usr/bin:/bin"}
    path = Path(cfg.shm_path_base) / "orionsock1"
    for op, sub in (("prepare", "begin"), ("release", "end")):
        p = subprocess.run([str(hook), "vm1", op, sub, "-"], input=attached(), env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == ""
        if op == "prepare" and _have_shmdev():
            assert path.stat().st_size == 4 * MIB and (path.stat().st_mode & 0o777) == 0o600
    assert not path.exists()


def _have_shmdev() -> bool:
    try:
        import orion_virt.transport.shmdev  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_shmdev(), reason="orion_virt.transport.shmdev not written yet")
def test_real_shmdev(cfg: ServerConfig) -> None:
    from orion_virt.transport import shmdev

    err = io.StringIO()
    xml = attached()
    assert main(["vm1", "prepare", "begin", "-"], xml, shmdev=shmdev, config=cfg,
                stderr=err) == 0, err.getvalue()
    path = Path(cfg.shm_path_base) / "orionsock1"
    st = path.stat()
    assert st.st_size == 4 * MIB and (st.st_mode & 0o777) == 0o600 and st.st_uid == 0
    assert "ERROR" not in log_text(cfg)
    assert main(["vm1", "release", "end", "-"], xml, shmdev=shmdev, config=cfg, stderr=err) == 0
    assert not path.exists()
