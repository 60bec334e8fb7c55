"""install-server end to end into a throwaway root: the file list and modes, the environment's
oriond running, systemd-analyze verify on the units, uninstall leaving the file list as before.

Time: the environment gets this checkout's wheel with ``--no-deps --system-site-packages
--no-index`` (a few seconds, offline); a full install would build libvirt-python and fetch
numpy, cuda-bindings... (minutes, and a network). The dependencies then come from the test's own
environment through PYTHONPATH, only to run the installed ``oriond --version``; ``orion_virt``
itself is checked to come from the installed environment.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
FAST = ["-q", "--no-deps", "--system-site-packages", "--no-index"]
UNITS = ("/etc/systemd/system/oriond.service", "/etc/systemd/system/orion-controller.service")


def _listing(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mode, symlink target) of everything under ``root``."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            out["/" + str(p.relative_to(root))] = (st.st_mode, os.readlink(p) if p.is_symlink() else "")
    return out


def _install_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "install-server"), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root holding what systemd-analyze verify needs to resolve the units: systemd's own units
    and /bin/kill (ExecReload)."""
    r = tmp_path / "root"
    if Path("/usr/lib/systemd/system").is_dir():
        shutil.copytree("/usr/lib/systemd/system", r / "usr/lib/systemd/system", symlinks=True)
    (r / "bin").mkdir(parents=True)
    shutil.copy2("/bin/kill", r / "bin/kill")
    return r


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_install_verify_run_uninstall(root: Path, tmp_path: Path) -> None:
    before = _listing(root)
    t0 = time.monotonic()
    r = _install_server("--root", str(root), *FAST)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert steps[0].startswith("[1/8]") and steps[-1].startswith("[8/8]") and len(steps) == 8, r.stdout
    assert took < 60, f"install took {took:.0f} s"

    # the file list and modes
    added = set(_listing(root)) - set(before)
    for path in (*UNITS, "/etc/logrotate.d/orion", "/etc/orion/server.conf", "/var/log/orion",
                 "/var/log/orion/session", "/opt/orion/bin/oriond", "/opt/orion/bin/python"):
        assert path in added, path
    for c in ("oriond", "orion-controller", "orion-shm", "orion-check", "orion-virt", "orion-bench",
              "orion-smi", "install-client"):
        assert os.readlink(root / f"usr/local/bin/{c}") == f"/opt/orion/bin/{c}"
    assert _mode(root / "var/log/orion") == 0o750 and _mode(root / "var/log/orion/session") == 0o750
    assert _mode(root / "etc/orion/server.conf") == 0o640
    for path in (*UNITS, "/etc/logrotate.d/orion"):
        assert _mode(root / path.lstrip("/")) == 0o644, path

    # the environment's oriond runs, with orion_virt from the environment
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    v = subprocess.run([str(root / "opt/orion/bin/oriond"), "--version"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.startswith("oriond (orion_virt) "), v.stdout + v.stderr
    where = subprocess.run([str(root / "opt/orion/bin/python"), "-c", "import orion_virt; print(orion_virt.__file__)"],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(root / "opt/orion/lib")), where.stdout + where.stderr
    # the wheel holds server.conf (a link in the checkout), which is what was written
    packaged = Path(where.stdout.strip()).parent / "installer" / "server.conf"
    assert not packaged.is_symlink() and packaged.read_text() == (REPO / "server/server.conf").read_text()
    assert (root / "etc/orion/server.conf").read_text() == packaged.read_text()

    # systemd accepts the units (their ExecStart and ExecReload binaries exist in the root)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (scripts/install-test-deps.sh)")
    sa = subprocess.run([analyze, "verify", f"--root={root}", *UNITS], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (sa.stdout + sa.stderr).splitlines() if "orion" in line]
    assert sa.returncode == 0 and not complaints, sa.stdout + sa.stderr

    # logrotate reads its file without an error (-d: nothing is rotated)
    lr = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
    if lr is None:
        pytest.fail("logrotate is missing: apt-get install logrotate (scripts/install-test-deps.sh)")
    lrr = subprocess.run([lr, "-d", "-s", str(tmp_path / "logrotate.state"), str(root / "etc/logrotate.d/orion")],
                         capture_output=True, text=True, timeout=60)
    assert lrr.returncode == 0 and "error" not in lrr.stderr.lower(), lrr.stderr
    assert "rotating pattern: /var/log/orion/server.log /var/log/orion/controller.log" in lrr.stderr

    # a reinstall over it keeps server.conf; uninstall restores the listing exactly
    conf = root / "etc/orion/server.conf"
    assert _install_server("--root", str(root), *FAST).returncode == 0
    u = _install_server("--root", str(root), "--uninstall")
    assert u.returncode == 0, u.stdout + u.stderr
    assert _listing(root) == before
    assert not conf.exists()


def test_uninstall_keeps_an_edited_server_conf_and_foreign_commands(root: Path) -> None:
    mine = root / "usr/local/bin/orion-smi"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\necho the host's own\n")
    r = _install_server("--root", str(root), *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept the existing /usr/local/bin/orion-smi" in r.stdout
    assert mine.read_text() == "#!/bin/sh\necho the host's own\n"
    conf = root / "etc/orion/server.conf"
    conf.write_text(conf.read_text().replace("bind_addr = 127.0.0.1", "bind_addr = 172.17.0.1"))
    u = _install_server("--root", str(root), "--uninstall")
    assert u.returncode == 0, u.stdout + u.stderr
    assert "Kept /etc/orion/server.conf: it was edited" in u.stdout
    assert "bind_addr = 172.17.0.1" in conf.read_text() and mine.exists()
    assert not (root / "opt/orion").exists() and not (root / "usr/local/bin/oriond").exists()


def test_logrotate_rotates_server_log_and_removes_old_session_logs(tmp_path: Path) -> None:
    """The installed logrotate file, run for real (-f) on a log directory of the test's own."""
    from orion_virt.installer import server_files

    if os.geteuid() != 0:
        pytest.skip("the logrotate file creates server.log as root:root (create 0640 root root): run as root")
    lr = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
    if lr is None:
        pytest.fail("logrotate is missing: apt-get install logrotate (scripts/install-test-deps.sh)")
    logs = tmp_path / "log"
    (logs / "session").mkdir(parents=True)
    (logs / "server.log").write_text("a week of lines\n")
    old, recent = logs / "session/1000.log", logs / "session/2000.log"
    old.write_text("a session 20 days ago\n")
    recent.write_text("a session today\n")
    twenty_days = time.time() - 20 * 86400
    os.utime(old, (twenty_days, twenty_days))
    conf = tmp_path / "orion.logrotate"
    conf.write_text(server_files.LOGROTATE.replace("/var/log/orion", str(logs)))
    r = subprocess.run([lr, "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert (logs / "server.log.1").read_text() == "a week of lines\n"
    assert (logs / "server.log").read_text() == "" and _mode(logs / "server.log") == 0o640
    assert not old.exists() and recent.exists()
