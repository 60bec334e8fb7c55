"""Start and stop one private virtlogd + libvirtd for the VM tests (no systemd needed).

What :class:`LibvirtDaemon` changes on the host, all undone by :meth:`LibvirtDaemon.stop`:

* ``/etc/libvirt/qemu.conf``: active ``user``/``group`` lines are commented out and
  ``user = "root"`` / ``group = "root"`` appended (with the default libvirt-qemu user libvirt
  re-probes QEMU on every API call, ~2 s each);
* ``/etc/libvirt/hooks/qemu``: the given hook, installed *before* libvirtd starts (libvirtd only
  picks hooks up at start or on SIGHUP);
* pid files and logs under ``/run/orion-test-libvirt/``.

It never touches a libvirtd it did not start: if one is already running (and is not a stale
one of ours), :meth:`start` raises :class:`ForeignDaemonError` unless ``reuse_existing=True``
(then it only connects, and installs no hook and no qemu.conf change).
An existing virtlogd is reused, never started twice (two virtlogd's break each other's socket).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
HOOK_PATH = Path("/etc/libvirt/hooks/qemu")
STATE_DIR = Path("/run/orion-test-libvirt")
URI = "qemu:///system"
#: Domains whose name starts with this are destroyed/undefined by stop() and by run_guest().
DOMAIN_PREFIX = "orion-test-"


RUNTIME_DIRS = tuple(Path(p) for p in (
    "/var/log/libvirt/qemu", "/var/lib/libvirt/qemu", "/var/cache/libvirt/qemu", "/run/libvirt",
    "/etc/libvirt/hooks"))


def _run_daemon(cmd: list[str], env: dict[str, str] | None = None) -> None:
    # stderr to a file, not a pipe: a daemonised child could keep a pipe open forever.
    with tempfile.TemporaryFile("w+") as err:
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err)
        if r.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {err.read().strip()}")


class ForeignDaemonError(RuntimeError):
    """A libvirtd that this harness did not start is running."""


def _pids_named(comm: str) -> list[int]:
    """Live processes called *comm* in our mount namespace (a daemon in a private mount
    namespace, e.g. tests/integration/test_hook_real_libvirt.py's, has its own /run/libvirt)."""
    own_ns = os.readlink("/proc/self/ns/mnt")
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if ((p / "comm").read_text().strip() == comm
                        and os.readlink(p / "ns" / "mnt") == own_ns and not _is_zombie(int(p.name))):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # reap if it is our child (it is not, with -d, but be tidy)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    except (OSError, IndexError):
        return True


class LibvirtDaemon:
    """One private virtlogd + libvirtd. Use as a context manager or call start()/stop()."""

    def __init__(self, hook: str | Path | None = None, *, state_dir: Path = STATE_DIR,
                 reuse_existing: bool = False, start_timeout: float = 60.0) -> None:
        """*hook*: path of a script, or the script's text, to install as /etc/libvirt/hooks/qemu."""
        self.hook = hook
        self.state_dir = Path(state_dir)
        self.reuse_existing = reuse_existing
        self.start_timeout = start_timeout
        self.libvirtd_pid: int | None = None
        self.virtlogd_pid: int | None = None
        self.started_virtlogd = False
        self.started_libvirtd = False
        self._saved: dict[Path, bytes | None] = {}
        self._lock_f: Any = None

    # -- paths
    @property
    def libvirtd_pidfile(self) -> Path:
        return self.state_dir / "libvirtd.pid"

    @property
    def virtlogd_pidfile(self) -> Path:
        return self.state_dir / "virtlogd.pid"

    @property
    def libvirtd_log(self) -> Path:
        return self.state_dir / "libvirtd.log"

    # -- file edits, restored at stop()
    def _save(self, path: Path) -> None:
        if path not in self._saved:
            self._saved[path] = path.read_bytes() if path.exists() else None

    def _restore_files(self) -> None:
        for path, data in self._saved.items():
            with contextlib.suppress(OSError):
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(data)
        self._saved.clear()

    def _configure_qemu_conf(self) -> None:
        self._save(QEMU_CONF)
        old = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
        lines = []
        for line in old.splitlines():
            key = line.split("=", 1)[0].strip()
            lines.append("#" + line if key in ("user", "group") else line)
        lines += ["# added by tests/vmharness (restored when the test daemon stops)",
                  'user = "root"', 'group = "root"']
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        QEMU_CONF.write_text("\n".join(lines) + "\n")

    def install_hook(self, hook: str | Path) -> None:
        """Install *hook* at /etc/libvirt/hooks/qemu; SIGHUP libvirtd if it already runs."""
        self._save(HOOK_PATH)
        HOOK_PATH.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(hook, Path) or (isinstance(hook, str) and "\n" not in hook and Path(hook).is_file()):
            shutil.copyfile(hook, HOOK_PATH)
        else:
            HOOK_PATH.write_text(str(hook))
        HOOK_PATH.chmod(0o755)
        if self.started_libvirtd and self.libvirtd_pid:
            os.kill(self.libvirtd_pid, signal.SIGHUP)
            time.sleep(0.5)

    def restore_hook(self) -> None:
        """Put back whatever /etc/libvirt/hooks/qemu was before install_hook(); SIGHUP libvirtd."""
        if HOOK_PATH not in self._saved:
            return
        data = self._saved[HOOK_PATH]
        if data is None:
            HOOK_PATH.unlink(missing_ok=True)
        else:
            HOOK_PATH.write_bytes(data)
        if self.started_libvirtd and self.libvirtd_pid:
            os.kill(self.libvirtd_pid, signal.SIGHUP)
            time.sleep(0.5)

    # -- lifecycle
    def start(self) -> None:
        """Start virtlogd (unless one runs) and libvirtd, and wait until libvirtd answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_f = open(self.state_dir / "lock", "a+")
        deadline = time.monotonic() + self.start_timeout
        while True:  # one harness-managed daemon per host at a time
            try:
                fcntl.flock(self._lock_f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session holds {self.state_dir}/lock")
                time.sleep(0.5)
        try:
            self._start_locked()
        except BaseException:
            self.stop()
            raise

    def _start_locked(self) -> None:
        stale = _read_pid(self.libvirtd_pidfile)
        if stale and stale in _pids_named("libvirtd"):  # a libvirtd of ours left behind by a killed session
            _stop_pid(stale)
        running = _pids_named("libvirtd")
        if running:
            if not self.reuse_existing:
                raise ForeignDaemonError(
                    f"a libvirtd not started by the test harness is running (pid {running}); "
                    "stop it or pass reuse_existing=True")
            self.libvirtd_pid = running[0]
            self._wait_ready()
            return
        for d in RUNTIME_DIRS:  # may be missing where the package's dirs were pruned
            d.mkdir(parents=True, exist_ok=True)
        self._configure_qemu_conf()
        if self.hook is not None:
            self.install_hook(self.hook)
        vl = _pids_named("virtlogd")
        if vl:
            self.virtlogd_pid = vl[0]
        else:
            self.virtlogd_pidfile.unlink(missing_ok=True)
            _run_daemon(["virtlogd", "-d", "--pid-file", str(self.virtlogd_pidfile)])
            self.started_virtlogd = True
            self.virtlogd_pid = self._wait_pidfile(self.virtlogd_pidfile, "virtlogd")
        self.libvirtd_pidfile.unlink(missing_ok=True)
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{self.libvirtd_log}")
        _run_daemon(["libvirtd", "-d", "--pid-file", str(self.libvirtd_pidfile)], env)
        self.started_libvirtd = True
        self.libvirtd_pid = self._wait_pidfile(self.libvirtd_pidfile, "libvirtd")
        self._wait_ready()

    def _wait_pidfile(self, path: Path, what: str) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = _read_pid(path)
            if pid:
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"{what} wrote no pid file {path}")

    def _wait_ready(self) -> None:
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                libvirt.open(URI).close()
                return
            except libvirt.libvirtError as e:
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"libvirtd did not answer on {URI}: {last}; see {self.libvirtd_log}")

    def connect(self) -> Any:
        """A new libvirt connection (``libvirt.virConnect``) to this daemon."""
        import libvirt
        return libvirt.open(URI)

    def destroy_test_domains(self, prefix: str = DOMAIN_PREFIX) -> None:
        """Destroy and undefine every domain whose name starts with *prefix*."""
        import libvirt
        try:
            conn = libvirt.open(URI)
        except libvirt.libvirtError:
            return
        try:
            for dom in conn.listAllDomains():
                if dom.name().startswith(prefix):
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
        finally:
            conn.close()

    def stop(self) -> None:
        """Destroy leftover test domains, stop what we started (by pid), restore config files."""
        if self.started_libvirtd and self.libvirtd_pid:
            self.destroy_test_domains()
            _stop_pid(self.libvirtd_pid)
            self.libvirtd_pidfile.unlink(missing_ok=True)
        if self.started_virtlogd and self.virtlogd_pid:
            _stop_pid(self.virtlogd_pid)
            self.virtlogd_pidfile.unlink(missing_ok=True)
        self.started_libvirtd = self.started_virtlogd = False
        self.libvirtd_pid = self.virtlogd_pid = None
        self._restore_files()
        if self._lock_f is not None:
            self._lock_f.close()
            self._lock_f = None

    def __enter__(self) -> LibvirtDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def libvirt_daemon(hook: str | Path | None = None, **kw: Any) -> Iterator[LibvirtDaemon]:
    """Context manager: a started :class:`LibvirtDaemon`, stopped on exit."""
    d = LibvirtDaemon(hook, **kw)
    d.start()
    try:
        yield d
    finally:
        d.stop()
