"""The seeds' VM flow with no hand steps after ``orion-virt attach`` and ``install-client``: a
real controller (SQLite) and ``oriond`` (sim, token mode, ``--enable-kvm``) on the host, the
product's hook (``orion-virt install-hook`` into /etc/libvirt/hooks, which the running libvirtd
takes on the SIGHUP install-hook sends it; removed again at the end), a guest defined by the harness on user-mode
networking with a writable (overlay) root, ``orion-virt attach`` (which writes the fw_cfg entry
with the server and controller addresses), then in the guest the documented
``install-client -q`` from the bundle and a cuda-python program (NVIDIA's cuda-bindings, lent from
the venv as ``pip install cuda-bindings`` would put it there) that prints its vGPUs on the native
client with only ``ORION_VGPU=1`` set: no ORION_CONTROLLER, no client.conf edit, no launcher.
The client finds the controller from fw_cfg; the allocation is listed by the controller
while the program runs and released at its exit. Then a C program (deviceQuery) on the same
libcuda.so.1: the same, from fw_cfg too.

Nothing of Orion is copied in besides the bundle: the controller's client key (the controller refuses
unsigned allocations) reaches the guest's clients in the same fw_cfg entry (``attach
--client-key``), readable by the guest's root only.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from orion_virt.controller import client as ctl
from orion_virt.controller.exceptions import ControllerUnreachable
from orion_virt.host.hookinstall import DEFAULT_HOOKS_DIR as HOOKS
from orion_virt.host.hookinstall import reload_libvirt
from orion_virt.installer.core import build_bundle
from orion_virt.launch import OriondProcess, free_port
from tests.oriond_fixture import BIN
from tests.vmharness import LibvirtDaemon, define_guest, lend_cuda_python

pytestmark = [pytest.mark.integration, pytest.mark.vm, pytest.mark.timeout(900)]

if os.geteuid() != 0:
    pytest.skip("VM tests need root", allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is missing (scripts/install-test-deps.sh)", allow_module_level=True)

URI = "qemu:///system"
SHM_MIB = 16
HOLD_S = 15

PROGRAM = r"""
import sys, time
from cuda.bindings import driver as cuda
def ok(r):
    assert r[0] == cuda.CUresult.CUDA_SUCCESS, r
    return r[1] if len(r) > 1 else None
ok(cuda.cuInit(0))
n = ok(cuda.cuDeviceGetCount())
print(f"VGPUS {n}", flush=True)
for i in range(n):
    d = ok(cuda.cuDeviceGet(i))
    name = ok(cuda.cuDeviceGetName(64, d)).split(b"\0")[0].decode()
    print(f"VGPU {i} {name} {ok(cuda.cuDeviceTotalMem(d)) >> 20} MiB", flush=True)
time.sleep(float(sys.argv[1]))
"""

SCRIPT = r"""
unset PYTHONPATH
echo "==== fwcfg"
sed 's/^client_key=.*/client_key=<given>/' /sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/config/raw; echo
test -e /etc/orion/client.key && echo "a client key file is in the guest"
echo "==== install"
python3 /run/orion/in/install-client -q 2>&1; echo "rc=$?"
echo "==== program"
cd /tmp && ORION_VGPU=1 HOME=/root PYTHONPATH=@CUDA_PYTHON@ \
    python3 /run/orion/in/vgpus.py @HOLD@ 2>/tmp/prog.err; echo "rc=$?"
echo "==== stderr"
cat /tmp/prog.err
echo "==== log"
cat /root/.orion/log/client-*.log
echo "==== native"
ORION_VGPU=1 ORION_LOG_LEVEL=DEBUG /run/orion/in/deviceQuery 2>&1; echo "rc=$?"
"""


def _orion_virt(*args: str, conf: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "orion-virt"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orion_virt.cli.orion_virt_cmd"]
    return subprocess.run([*cmd, "--connect", URI, "--config", str(conf), *args],
                          check=False, capture_output=True, text=True, timeout=60)


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    cur = None
    for line in text.splitlines():
        m = re.fullmatch(r"==== (\w+)", line)
        if m:
            cur = m.group(1)
            out[cur] = ""
        elif cur is not None:
            out[cur] += line + "\n"
    return out


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``orion-controller start`` (SQLite) on loopback; stopped by pid."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = tmp_path / "controller.log"
    with open(tmp_path / "controller.out", "w") as out:
        p = subprocess.Popen(
            [str(BIN / "orion-controller"), "start", "-i", "127.0.0.1", "-p", str(port),
             "--kv", f"sqlite://{tmp_path}/controller.db", "--token-key", str(tmp_path / "token.key"),
             "--api-key", str(tmp_path / "controller.key"), "--client-key", str(tmp_path / "client.key"),
             "--portal-passwd", str(tmp_path / "portal.passwd"), "--log", str(log), "--vgpu", "4"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        assert p.poll() is None, (tmp_path / "controller.out").read_text()
        try:
            ctl.get_version(addr, timeout=1)
            return True
        except ControllerUnreachable:
            return False
    try:
        _wait(up, 20, "the controller")
        yield addr, log
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(10)


def _server_conf(tmp: Path, ctl_addr: str) -> Path:
    conf = tmp / "server.conf"
    conf.write_text(
        f"[server]\nenable_kvm = true\nenable_shm = false\nbackend = sim\nbind_addr = 127.0.0.1\n"
        f"listen_port = {free_port()}\nvgpu_count = 4\n"
        f"[server-log]\nlog_dir = {tmp / 'log'}\n"
        f"[server-shm]\nshm_path_base = /dev/shm\nshm_user_name = root\nshm_group_name = root\n"
        f"shm_buffer_size = {SHM_MIB}\n[server-kvm]\nhook_strict = true\n"
        f"[controller]\ncontroller_addr = {ctl_addr}\ntoken_key_file = {tmp / 'token.key'}\n"
        f"api_key_file = {tmp / 'controller.key'}\ntoken_state_dir = {tmp / 'tokens'}\n")
    return conf


@pytest.fixture(scope="module")
def native_query(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native client (make native, so the bundle carries it) and deviceQuery linked to it."""
    from tests.integration.test_native_client import BUILD, SOURCES, cudart_paths

    root = Path(__file__).resolve().parents[2]
    b = subprocess.run(["make", "-C", str(root), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    inc, _ = cudart_paths()
    exe = tmp_path_factory.mktemp("vm-native") / "deviceQuery"
    c = subprocess.run(["gcc", "-std=c11", "-O1", f"-I{inc}", f"-I{SOURCES}", str(SOURCES / "deviceQuery.c"),
                        f"-L{BUILD}", "-lcuda", "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def test_the_seeds_vm_flow(libvirt_daemon: LibvirtDaemon, libvirt_conn: Any, guest_image: Any,
                           controller: tuple[str, Path], native_query: Path, tmp_path: Path) -> None:
    addr, ctl_log = controller
    ctl_port = addr.rpartition(":")[2]
    conf = _server_conf(tmp_path, addr)
    # the product's hook where libvirtd looks (/etc/libvirt/hooks/qemu.d/orion-virt, our server.conf
    # pinned in it), taken by the running libvirtd through install-hook's SIGHUP: no restart
    assert not (HOOKS / "qemu.d" / "orion-virt").exists(), "an orion-virt hook is installed on this host"
    r = _orion_virt("install-hook", conf=conf)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"sent SIGHUP to libvirtd (pid {libvirt_daemon.libvirtd_pid})" in r.stdout, r.stdout
    oriond = OriondProcess(tmp_path / "oriond", backend="sim", config=conf, output=tmp_path / "oriond.out",
                           extra=["--enable-kvm"], start_new_session=True)
    try:
        oriond.start(timeout=20)
        _wait(lambda: any(n["up"] for n in ctl.nodes(addr)), 20, "oriond to register")
        bundle = tmp_path / "install-client"
        build_bundle(bundle)  # with the native client (build/native/libcuda.so.1, made by native_query)
        program = tmp_path / "vgpus.py"
        program.write_text(PROGRAM)
        script = SCRIPT.replace("@HOLD@", str(HOLD_S)).replace("@CUDA_PYTHON@", lend_cuda_python())
        g = define_guest(libvirt_conn, "orion-test-seeds-flow", script,
                         img=guest_image, writable_root=True, user_net=True,
                         run_files={"install-client": bundle, "vgpus.py": program, "deviceQuery": native_query})
        try:
            a = _orion_virt("attach", g.name, "--client-key", str(tmp_path / "client.key"), conf=conf)
            assert a.returncode == 0, a.stderr + a.stdout
            assert f"client key from {tmp_path / 'client.key'}" in a.stdout and (
                tmp_path / "client.key").read_text().strip() not in a.stdout + a.stderr
            st = _orion_virt("status", g.name, conf=conf).stdout
            assert f"controller_addr = 10.0.2.2:{ctl_port}" in st, st
            g.start()
            t0 = time.monotonic()
            tasks = _wait(lambda: ctl.tasks(addr), 600, "the guest's allocation at the controller")
            listed_s = time.monotonic() - t0
            res = g.wait(600)
        finally:
            g.cleanup()
        out = res.stdout
        sec = _sections(out)
        assert res.exit_code == 0, out
        assert f"controller_addr=10.0.2.2:{ctl_port}" in sec["fwcfg"], out
        assert "client_key=<given>" in sec["fwcfg"] and "a client key file" not in sec["fwcfg"], out
        assert sec["install"].rstrip().endswith("rc=0"), out
        prog = sec["program"]
        assert prog.rstrip().endswith("rc=0") and "VGPUS 1\n" in prog, out
        assert re.search(r"^VGPU 0 \S.* \d+ MiB$", prog, re.M), out
        assert "transport: ivshmem device /sys/bus/pci/devices/" in sec["log"], out  # where fw_cfg said: below
        assert len(tasks) == 1, tasks
        aid = tasks[0]["allocation_id"]
        assert aid in sec["stderr"] + sec["log"], out
        _wait(lambda: re.search(rf"allocation {aid} released", ctl_log.read_text()), 30, "the release")
        native = sec["native"]
        assert native.rstrip().endswith("rc=0") and "Detected 1 CUDA Capable device(s)" in native, out
        assert f"controller 10.0.2.2:{ctl_port} (from fw_cfg opt/org.orion/config)" in native, out
        m = re.search(r"Client exits with allocation ID (\S+)", native)
        assert m and m.group(1) != aid, out
        _wait(lambda: re.search(rf"allocation {m.group(1)} released", ctl_log.read_text()), 30, "the release")
        assert ctl.tasks(addr) == []
        print(f"[vm] allocation {aid} listed {listed_s:.0f} s after the guest started, released at exit; "
              f"the native client's {m.group(1)} too")
    finally:
        oriond.stop()
        _orion_virt("uninstall-hook", conf=conf)
        reload_libvirt()
