"""The libvirt qemu hook: the shm file lifecycle of each Orion-attached VM.

libvirtd runs it as root with ``DOMAIN OP SUBOP EXTRA`` and the domain XML on stdin. It acts
only on domains carrying Orion's metadata (see ``domain_xml``):

- ``prepare begin``: create or reset ``<shm_path_base>/orionsock<N>`` with the size of the
  domain's shmem device, owned by ``shm_user_name``/``shm_group_name`` (default: a static DAC
  seclabel of the domain, else root), mode 0600 (0660 when only a group is given), and format
  it as an Orion device carrying the guest config, which makes oriond serve it. For a domain
  attached with ``--doorbell`` the device is flagged as such (with the domain's MSI-X vector
  count), and the hook waits (at most ``DOORBELL_WAIT_S``) until oriond's ivshmem server for it
  listens: QEMU connects to it as it starts and fails without it.
- ``release end``: scrub (zero and unlink) the file; oriond then ends its sessions.

Invariants: never calls libvirt (libvirtd is waiting on us: it would deadlock); never writes
to stdout (libvirt reads stdout of some hook operations as replacement XML); always reads
stdin. An Orion failure is logged to ``<log_dir>/hook.log`` and stderr and lets the VM start,
unless ``[server-kvm] hook_strict = true``, which makes a failed ``prepare`` exit 1 (libvirt
then refuses to start the domain and shows our stderr).
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import stat
import sys
import time
import traceback
from pathlib import Path
from typing import Mapping, Protocol, Sequence, TextIO

from ..config import DEFAULT_SERVER_CONF, ServerConfig, load_server_config
from ..errors import ConfigError, HostError, OrionError
from . import domain_xml as dx

HOOK_LOG_NAME = "hook.log"
DEFAULT_LOG_DIR = "/var/log/orion"
LIBVIRT_SHM_DIR = "/dev/shm"
DOORBELL_WAIT_S = 5.0
"""How long ``prepare`` waits for oriond's ivshmem server (oriond looks for new devices twice a
second)."""


class ShmDev(Protocol):
    """What the hook needs from ``orion_virt.transport.shmdev``."""

    def format_device(self, path: Path, size: int, *, uid: int = -1, gid: int = -1,
                      mode: int = 0o600, vm: bool = False,
                      config: dict[str, str] | None = None, doorbell_vectors: int = 0) -> None: ...

    def scrub_device(self, path: Path) -> None: ...


class HookLog:
    """Appends timestamped lines to ``<log_dir>/hook.log``; falls back to stderr only."""

    def __init__(self, log_dir: str, stderr: TextIO) -> None:
        self.path = Path(log_dir) / HOOK_LOG_NAME
        self.stderr = stderr
        self._file: TextIO | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            stderr.write(f"orion-virt hook: cannot open {self.path}: {e.strerror}\n")

    def write(self, level: str, msg: str, *, to_stderr: bool = False) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{level}] {msg}\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        if to_stderr or self._file is None:
            self.stderr.write(f"orion-virt hook: {msg}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _user_ids(name: str) -> tuple[int, int]:
    if name.startswith("+") and name[1:].isdigit():
        uid = int(name[1:])
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, 0
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"[server-shm] shm_user_name = {name!r}: no such user") from None
    return pw.pw_uid, pw.pw_gid


def _group_id(name: str) -> int:
    if name.startswith("+") and name[1:].isdigit():
        return int(name[1:])
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"[server-shm] shm_group_name = {name!r}: no such group") from None


def resolve_owner(cfg: ServerConfig, domain_xml: str) -> tuple[int, int, int]:
    """``(uid, gid, mode)`` for the shm file: the narrowest mode that lets QEMU map it.

    Owner from ``shm_user_name``/``shm_group_name``; when both are empty, from the domain's
    static DAC seclabel if any, else root (right when qemu.conf runs QEMU as root). A user
    without a group gets the user's primary group. Mode 0600, or 0660 when the owner is root
    and a non-root group is given. Raises ConfigError for an unknown user or group.
    """
    user, group = cfg.shm_user_name, cfg.shm_group_name
    if not user and not group:
        owner = dx.dac_owner(domain_xml)
        if owner is not None:
            user, group = owner
    uid, gid = _user_ids(user) if user else (0, 0)
    if group:
        gid = _group_id(group)
    mode = 0o660 if uid == 0 and gid != 0 else 0o600
    return uid, gid, mode


def _load_shmdev() -> ShmDev:
    from ..transport import shmdev

    return shmdev


def _clear_path(path: Path) -> None:
    """Remove a symlink or non-regular file squatting on ``path`` (the shm dir is world-writable:
    root must never write through someone's link). Raises HostError for a directory."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise HostError(f"{path} is a directory, not a shm device")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        path.unlink()


def prepare(cfg: ServerConfig, domain: str, domain_xml: str, state: dx.AttachState,
            shmdev: ShmDev, log: HookLog) -> None:
    """Create/reset and format the domain's device file. Raises OrionError or OSError."""
    if not cfg.enable_kvm:
        log.write("WARNING", f"{domain}: enable_kvm is false in {cfg.source}: oriond will not "
                             "serve this VM, preparing its device anyway")
    if cfg.shm_path_base.rstrip("/") != LIBVIRT_SHM_DIR:
        log.write("WARNING", f"{domain}: libvirt maps ivshmem at {LIBVIRT_SHM_DIR}/<name>, "
                             f"but shm_path_base is {cfg.shm_path_base}")
    if not state.shmem_present:
        log.write("WARNING", f"{domain}: orion metadata present but its <shmem> device is "
                             "missing or changed; run `orion-virt attach` on the host")
    size = dx.shmem_size(domain_xml, state.shm_name) or state.size_bytes
    uid, gid, mode = resolve_owner(cfg, domain_xml)
    path = Path(cfg.shm_path_base) / state.shm_name
    _clear_path(path)
    if state.doorbell is None:
        shmdev.format_device(path, size, uid=uid, gid=gid, mode=mode, vm=True,
                             config=dict(state.config))
    else:
        vectors = dx.shmem_vectors(domain_xml, state.shm_name) or dx.DOORBELL_VECTORS
        shmdev.format_device(path, size, uid=uid, gid=gid, mode=mode, vm=True,
                             config=dict(state.config), doorbell_vectors=vectors)
    log.write("INFO", f"{domain}: prepared {path} ({size} bytes, uid {uid} gid {gid} "
                      f"mode {mode:04o})")
    if state.doorbell is not None:
        wait_for_doorbell_server(domain, path, state.doorbell, log)


def wait_for_doorbell_server(domain: str, path: Path, sock: str, log: HookLog,
                             timeout: float = DOORBELL_WAIT_S) -> float:
    """Wait until oriond's ivshmem server for the device at ``path`` listens (it writes its pid
    into the header, H_DB_LISTENING, of the file we just formatted: an older server of a
    previous file at this path does not count). Returns the seconds waited; raises HostError
    after ``timeout``."""
    from ..transport import doorbell, shmdev

    index = state_index(path)
    expected = str(doorbell.socket_path(index)) if index is not None else None
    if expected is not None and expected != sock:
        log.write("WARNING", f"{domain}: the domain's ivshmem server is {sock}, but oriond listens "
                             f"at {expected}; run `orion-virt attach --doorbell` again")
    t0 = time.monotonic()
    off = 8 * shmdev.H_DB_LISTENING
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(off)
                raw = f.read(8)
        except OSError as e:
            raise HostError(f"{path}: {e.strerror}") from None
        waited = time.monotonic() - t0
        if len(raw) == 8 and int.from_bytes(raw, "little"):
            log.write("INFO", f"{domain}: oriond's ivshmem server listens on {sock} "
                              f"(waited {waited:.2f} s)")
            return waited
        if waited > timeout:
            raise HostError(f"oriond's ivshmem server for {path} did not listen on {sock} within "
                            f"{timeout:.0f} s (is oriond running with enable_kvm = true?); QEMU "
                            "cannot start the ivshmem-doorbell device without it")
        time.sleep(0.02)


def state_index(path: Path) -> int | None:
    """N of ``.../orionsock<N>``, or None."""
    tail = path.name[len("orionsock"):]
    return int(tail) if path.name.startswith("orionsock") and tail.isdigit() else None


def release(cfg: ServerConfig, domain: str, state: dx.AttachState, shmdev: ShmDev,
            log: HookLog) -> None:
    """Scrub and unlink the domain's device file if it exists. Raises OrionError or OSError."""
    path = Path(cfg.shm_path_base) / state.shm_name
    try:
        st = path.lstat()
    except FileNotFoundError:
        log.write("INFO", f"{domain}: {path} already gone")
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        _clear_path(path)
        log.write("WARNING", f"{domain}: removed {path} without scrubbing (a link, not a device)")
        return
    shmdev.scrub_device(path)
    log.write("INFO", f"{domain}: scrubbed {path}")


def _read_all(stdin: TextIO | str | bytes) -> str:
    if isinstance(stdin, bytes):
        return stdin.decode("utf-8", "replace")
    if isinstance(stdin, str):
        return stdin
    data = stdin.read()
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def main(argv: Sequence[str], stdin: TextIO | str | bytes, *, shmdev: ShmDev | None = None,
         env: Mapping[str, str] | None = None, config: ServerConfig | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the hook for ``argv = [DOMAIN, OP, SUBOP, EXTRA]`` (without the program name).

    Returns the exit status: 0, or 1 for a failed ``prepare`` under ``hook_strict``, or 2 for
    a malformed command line. ``shmdev``/``config`` default to the real module and to
    ``$ORION_SERVER_CONF`` or /etc/orion/server.conf.
    """
    env = os.environ if env is None else env
    err = stderr or sys.stderr
    xml = _read_all(stdin)
    if len(argv) < 3:
        err.write("usage: qemu DOMAIN OP SUBOP [EXTRA] < domain.xml  (run by libvirtd)\n")
        return 2
    domain, op, subop = argv[0], argv[1], argv[2]
    action = {("prepare", "begin"): "prepare", ("release", "end"): "release"}.get((op, subop))
    if action is None or dx.NS not in xml:
        return 0

    if config is None:
        conf_path = env.get("ORION_SERVER_CONF") or None
        try:
            config = load_server_config(Path(conf_path) if conf_path else None)
        except ConfigError as e:
            log = HookLog(DEFAULT_LOG_DIR, err)
            log.write("ERROR", f"{domain} {op} {subop}: {e} (config "
                               f"{conf_path or DEFAULT_SERVER_CONF}); VM left without Orion",
                      to_stderr=True)
            log.close()
            return 0
    log = HookLog(config.log_dir or DEFAULT_LOG_DIR, err)
    try:
        state = dx.orion_state(xml)
        if state is None:
            return 0
        dev = shmdev or _load_shmdev()
        if action == "prepare":
            prepare(config, domain, xml, state, dev, log)
        else:
            release(config, domain, state, dev, log)
        return 0
    except Exception as e:  # every failure is logged; only hook_strict turns it into a veto
        strict = config.hook_strict and action == "prepare"
        reason = e if isinstance(e, (OrionError, OSError)) else f"{type(e).__name__}: {e}"
        outcome = "refusing to start the VM (hook_strict)" if strict else "VM continues"
        log.write("ERROR", f"{domain} {op} {subop}: {reason}; {outcome}", to_stderr=True)
        if not isinstance(e, (OrionError, OSError)):
            buf = io.StringIO()
            traceback.print_exc(file=buf)
            log.write("DEBUG", buf.getvalue().rstrip())
        return 1 if strict else 0
    finally:
        log.close()
