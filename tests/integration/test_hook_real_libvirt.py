"""The hook under a real libvirtd + QEMU (TCG), isolated from any other libvirtd on the host.

libvirtd runs in a private mount namespace with its own copies of /etc (libvirt config,
hooks dir, /etc/orion/server.conf), /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
/var/log/libvirt bind-mounted from a temp dir, so it shares nothing with another daemon but
/dev/shm (where QEMU maps ivshmem). The host agent attaches a diskless domain; starting it
runs the installed hook (``prepare begin``: the shm file is formatted as an Orion device),
QEMU maps the file, and destroying it scrubs the file (``release end``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from orion_virt.config import ServerConfig
from orion_virt.host import domain_xml as dx
from orion_virt.host.agent import HostAgent
from orion_virt.host.hookinstall import install_hook

pytestmark = [pytest.mark.integration, pytest.mark.vm]

MIB = 1 << 20
BIND = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt",
        "log": "/var/log/libvirt"}


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (libvirtd, mount namespaces)"
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "unshare"):
        if shutil.which(tool) is None:
            return (f"{tool} not installed (apt-get install libvirt-daemon "
                    "libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86)")
    for d in BIND.values():
        if not Path(d).is_dir():
            return f"{d} missing"
    try:
        import libvirt  # noqa: F401

        import orion_virt.transport.shmdev  # noqa: F401
    except ImportError as e:
        return f"{e.name} not importable"
    return None


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[dict[str, Any]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import libvirt

    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True,
                    ignore=shutil.ignore_patterns("libvirt"))
    (etc / "libvirt").mkdir()
    for f in ("libvirt.conf", "libvirt-admin.conf"):
        if Path("/etc/libvirt", f).exists():
            shutil.copy2(Path("/etc/libvirt", f), etc / "libvirt" / f)
    (etc / "libvirt" / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
    install_hook(etc / "libvirt" / "hooks", sys.executable)
    (etc / "orion").mkdir(exist_ok=True)
    log_dir = tmp_path / "orion-log"
    (etc / "orion" / "server.conf").write_text(
        f"[server]\nenable_kvm = true\n[server-log]\nlog_dir = {log_dir}\n"
        "[server-shm]\nshm_path_base = /dev/shm\n[server-kvm]\nhook_strict = true\n")
    for name in BIND:
        (tmp_path / name).mkdir()
    mounts = [f"mount --bind {etc} /etc"] + [
        f"mount --bind {tmp_path / k} {v}" for k, v in BIND.items()]
    script = " && ".join(mounts + [
        f"virtlogd -d --pid-file {tmp_path}/virtlogd.pid",
        f"libvirtd -d --pid-file {tmp_path}/libvirtd.pid"])
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                   check=True, timeout=60)
    sock = tmp_path / "run" / "libvirt-sock"
    uri = f"qemu+unix:///system?socket={sock}"
    conn = None
    deadline = time.monotonic() + 30
    while conn is None:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield {"conn": conn, "log_dir": log_dir, "tmp": tmp_path}
    finally:
        for d in conn.listAllDomains(0):
            if d.isActive():
                d.destroy()
            if d.isPersistent():
                d.undefine()
        conn.close()
        for name in ("libvirtd", "virtlogd"):
            pidfile = tmp_path / f"{name}.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)


def test_vm_start_formats_and_stop_scrubs(daemon: dict[str, Any]) -> None:
    conn = daemon["conn"]
    name = f"orion-hook-{uuid.uuid4().hex[:6]}"
    conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
        "<on_poweroff>destroy</on_poweroff><devices>"
        "<emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")
    cfg = ServerConfig(shm_path_base="/dev/shm", shm_buffer_size=4 * MIB, enable_kvm=True,
                       controller_addr="127.0.0.1:9123")

    class NoNetlink:
        def __enter__(self) -> NoNetlink:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    index = 9000 + int(uuid.uuid4().hex[:3], 16)
    agent = HostAgent(conn, cfg, ipr_factory=NoNetlink)
    r = agent.attach(name, index=index)
    assert r.changed and not r.pending
    path = Path("/dev/shm") / dx.shm_name(index)
    assert not path.exists()

    dom = conn.lookupByName(name)
    dom.create()
    try:
        st = path.stat()
        assert st.st_size == 4 * MIB and (st.st_mode & 0o777) == 0o600 and st.st_uid == 0
        assert path.read_bytes()[:8] == b"ORIONSHM"
        live = dx.orion_state(dom.XMLDesc(0))
        assert live is not None and live.index == index
        status = agent.status(name)
        assert status.active and not status.pending
    finally:
        dom.destroy()
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()
    log = (daemon["log_dir"] / "hook.log").read_text()
    assert f"{name}: prepared {path}" in log and f"{name}: scrubbed {path}" in log
