"""The KVM-guest path end to end: a real QEMU (TCG) guest under libvirtd runs unmodified
cuda-python programs against ``oriond`` (sim backend) on the host through an ivshmem-plain device.

Host side, all through the product: ``orion-virt install-hook`` (the libvirt qemu hook),
``orion-virt attach`` (adds ``<shmem>``, fw_cfg and metadata to the guest's definition), the hook
formatting ``/dev/shm/orionsock<N>`` as an Orion VM device on ``prepare`` and scrubbing it on
``release``, and ``oriond --enable-kvm`` serving it. Guest side, from the read-only share at
/opt/orion: the native client (``build/native/libcuda.so.1``) put first by the click-less
``orion-run`` (``python3 -m orion_virt.client.run``), NVIDIA's cuda-bindings copied from the venv
(``build/vm-python``; the guest's Debian python3 has the venv's version), Debian's numpy for
vectorAdd.

libvirtd runs hooks with a scrubbed environment, so the hook is reached through a two-line
/etc/libvirt/hooks/qemu wrapper that passes ``ORION_SERVER_CONF`` (our temp server.conf) to the
shim that ``orion-virt install-hook`` wrote into a temp hooks dir; the harness restores the
original hook afterwards. See docs/testing-vms.md and docs/benchmarks-vm.md.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt.launch import OriondProcess, free_port
from tests.vmharness import Guest, GuestImage, GuestResult, LibvirtDaemon, define_guest, lend_cuda_python, run_guest

pytestmark = [pytest.mark.integration, pytest.mark.vm]

if os.geteuid() != 0:
    pytest.skip("VM tests need root", allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is missing (scripts/install-test-deps.sh)", allow_module_level=True)

URI = "qemu:///system"
SHM_MIB = 16
SHM_DIR = Path("/dev/shm")
GUEST_TIMEOUT = 150.0

# A guest-side runner: each step's exit code, wall time, stdout and stderr between markers.
GUEST_PRELUDE = r"""
export ORION_VGPU=2 ORION_GMEM=4096
cd /tmp
step() {
  name=$1; shift
  s=$(date +%s%N)
  "$@" >/tmp/$name.out 2>/tmp/$name.err
  rc=$?
  e=$(date +%s%N)
  echo "==== $name rc=$rc ms=$(( (e - s) / 1000000 ))"
  cat /tmp/$name.out
  echo "==== $name stderr"
  cat /tmp/$name.err
}
# cuda-python programs: NVIDIA's cuda-bindings over the native client
RUN="env PYTHONPATH=/opt/orion:/opt/orion/build/vm-python python3 -m orion_virt.client.run python3"
"""

NULLCALL_PY = r"""
import statistics, time
from cuda.bindings import driver as cuda

def ok(r):
    assert r[0] == cuda.CUresult.CUDA_SUCCESS, r
    return r[1] if len(r) > 1 else None

t = time.perf_counter()
ok(cuda.cuInit(0))
init_ms = (time.perf_counter() - t) * 1e3
ctx = ok(cuda.cuCtxCreate(None, 0, ok(cuda.cuDeviceGet(0))))
sync, pc = cuda.cuCtxSynchronize, time.perf_counter_ns
for _ in range(200):
    ok(sync())
ns, bad = [], 0
for _ in range(2000):
    a = pc(); r = sync(); b = pc()
    ns.append(b - a)
    bad += r[0] != cuda.CUresult.CUDA_SUCCESS
ns.sort()
print(f"NULLCALL n={len(ns)} bad={bad} median_us={statistics.median(ns) / 1e3:.1f} "
      f"p10_us={ns[len(ns) // 10] / 1e3:.1f} p90_us={ns[len(ns) * 9 // 10] / 1e3:.1f} "
      f"min_us={ns[0] / 1e3:.1f} init_ms={init_ms:.1f}")
ok(cuda.cuCtxDestroy(ctx))
"""

SCRIPT_FULL = GUEST_PRELUDE + r"""
cat > /tmp/nullcall.py <<'EOF'
@NULLCALL@
EOF
step deviceQuery $RUN /opt/orion/examples/deviceQuery.py
step vectorAdd $RUN /opt/orion/examples/vectorAdd.py
step nullcall $RUN /tmp/nullcall.py
NATIVE="env LD_LIBRARY_PATH=/opt/orion/build/native:/opt/orion/@CUDART@"
step c_deviceQuery $NATIVE /opt/orion/build/vm-native/deviceQuery
step c_vectorAdd $NATIVE /opt/orion/build/vm-native/vectorAdd /opt/orion/orion_virt/kernels/test_kernels.ptx
step c_runtime $NATIVE /opt/orion/build/vm-native/runtime_api 2 4096
echo "==== clientlog rc=0 ms=0"
grep -h "transport:" /tmp/.orion/log/*.log || true
""".replace("@NULLCALL@", NULLCALL_PY.strip())

SCRIPT_PAIR = GUEST_PRELUDE + r"""
step deviceQuery $RUN /opt/orion/examples/deviceQuery.py
step vectorAdd $RUN /opt/orion/examples/vectorAdd.py
echo "==== clientlog rc=0 ms=0"
grep -h "transport:" /tmp/.orion/log/*.log || true
"""

SCRIPT_UNSERVED = GUEST_PRELUDE + r"""
step deviceQuery $RUN /opt/orion/examples/deviceQuery.py
echo "==== clientlog rc=0 ms=0"
cat /tmp/.orion/log/*.log || true
"""


@dataclass
class Step:
    rc: int
    ms: int
    out: str
    err: str


def parse_steps(stdout: str) -> dict[str, Step]:
    """``==== NAME rc=R ms=M`` / ``==== NAME stderr`` sections of a guest's stdout."""
    steps: dict[str, Step] = {}
    cur: Step | None = None
    into = "out"
    for line in stdout.splitlines(keepends=True):
        m = re.match(r"==== (\S+) rc=(\d+) ms=(\d+)$", line.rstrip("\n"))
        if m:
            cur = steps[m.group(1)] = Step(int(m.group(2)), int(m.group(3)), "", "")
            into = "out"
            continue
        if cur is not None and re.match(r"==== \S+ stderr$", line.rstrip("\n")):
            into = "err"
            continue
        if cur is not None:
            setattr(cur, into, getattr(cur, into) + line)
    return steps


def _orion_virt(*args: str, conf: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "orion-virt"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orion_virt.cli.orion_virt_cmd"]
    return subprocess.run([*cmd, "--connect", URI, "--config", str(conf), *args],
                          check=False, capture_output=True, text=True, timeout=60)


@dataclass
class OrionHost:
    dir: Path
    conf: Path
    hook_log: Path

    def attach(self, guest: Guest) -> int:
        """``orion-virt attach`` the (defined, shut off) guest; returns its orionsock index."""
        r = _orion_virt("attach", guest.name, conf=self.conf)
        assert r.returncode == 0, r.stderr + r.stdout
        m = re.search(rf"{re.escape(guest.name)}: attached as orionsock(\d+) \((\d+) MiB", r.stdout)
        assert m, r.stdout
        assert int(m.group(2)) == SHM_MIB
        xml = guest.conn.lookupByName(guest.name).XMLDesc(0)
        assert f"<shmem name='orionsock{m.group(1)}'>" in xml and "ivshmem-plain" in xml
        assert "opt/org.orion/config" in xml and "https://orion-virt.dev/xmlns/1" in xml
        return int(m.group(1))


@pytest.fixture(scope="module")
def orion_host(libvirt_daemon: LibvirtDaemon, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[OrionHost]:
    """server.conf + the product's hook (``orion-virt install-hook``) reachable by libvirtd."""
    d = tmp_path_factory.mktemp("orion-vm")
    log_dir = d / "log"
    conf = d / "server.conf"
    # enable_shm off: this oriond must not serve other tests' container devices in /dev/shm.
    conf.write_text(
        "[server]\nenable_kvm = true\nenable_shm = false\nbackend = sim\nbind_addr = 127.0.0.1\n"
        f"listen_port = {free_port()}\n"
        f"[server-log]\nlog_dir = {log_dir}\n"
        f"[server-shm]\nshm_path_base = {SHM_DIR}\nshm_user_name = root\nshm_group_name = root\n"
        f"shm_buffer_size = {SHM_MIB}\n"
        "[server-kvm]\nhook_strict = true\n")
    hooks = d / "hooks"
    r = _orion_virt("install-hook", "--hooks-dir", str(hooks), "--python", sys.executable, conf=conf)
    assert r.returncode == 0, r.stderr + r.stdout
    shim = hooks / "qemu.d" / "orion-virt"
    assert shim.is_file()
    libvirt_daemon.install_hook(
        "#!/bin/sh\n# test_vm_orion: the product's hook with the test's server.conf\n"
        f"ORION_SERVER_CONF='{conf}' exec '{shim}' \"$@\"\n")
    try:
        yield OrionHost(d, conf, log_dir / "hook.log")
    finally:
        libvirt_daemon.restore_hook()


@dataclass
class Oriond:
    launcher: OriondProcess

    @property
    def log_dir(self) -> Path:
        return self.launcher.log_dir

    @property
    def server_log(self) -> str:
        p = self.log_dir / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.server_log)
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.1)


@pytest.fixture
def start_oriond(orion_host: OrionHost, tmp_path: Path) -> Iterator[Callable[..., Oriond]]:
    """Start oriond (sim backend, our server.conf) as a subprocess; stopped by pid afterwards."""
    started: list[Oriond] = []

    def start(*, kvm: bool = True) -> Oriond:
        launcher = OriondProcess(tmp_path / f"oriond-{len(started)}", backend="sim", config=orion_host.conf,
                                 output=tmp_path / f"oriond-{len(started)}" / "stdout.log",
                                 extra=["--enable-kvm" if kvm else "--disable-kvm"])
        o = Oriond(launcher)
        started.append(o)
        launcher.start(timeout=20)
        return o

    try:
        yield start
    finally:
        for o in started:
            o.launcher.stop()


def _scrubbed(path: Path, timeout: float = 10.0) -> bool:
    """The hook's ``release`` removed (or zeroed) the device file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        if not any(data):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _assert_programs_ok(steps: dict[str, Step]) -> None:
    dq, va = steps["deviceQuery"], steps["vectorAdd"]
    assert dq.rc == 0, dq.out + dq.err
    assert "Detected 2 CUDA Capable device(s)" in dq.out, dq.out
    assert dq.out.count("Total amount of global memory: 4096 MBytes") == 2, dq.out
    assert "Result = PASS" in dq.out
    assert va.rc == 0, va.out + va.err
    assert va.out.count("sum check: PASSED") == 2 and "Test PASSED" in va.out, va.out
    for s in (dq, va):
        assert "VirtaiTech Resource." in s.err, s.err
        assert re.search(r"Client exits with allocation ID [0-9a-f-]{36}", s.err), s.err
    transports = steps["clientlog"].out.splitlines()
    assert transports and all("transport: ivshmem device /sys/bus/pci/devices/" in t
                              for t in transports), transports


def _report(what: str, res: GuestResult, steps: dict[str, Step]) -> str:
    parts = ", ".join(f"{k} {s.ms} ms" for k, s in steps.items() if k != "clientlog")
    return (f"{what}: domain start -> first output {res.seconds_to_first_output:.1f} s, "
            f"script {res.seconds_to_command:.1f} s, result (shut off) {res.seconds_total:.1f} s; "
            f"in guest: {parts}")


@pytest.fixture(scope="module")
def native_programs() -> str:
    """The native client (make native), C programs for the guest under build/vm-native and a copy
    of the venv's cuda-bindings under build/vm-python (the guest sees the tree at /opt/orion);
    returns the directory of NVIDIA's libcudart relative to the tree."""
    from tests.integration.test_native_client import BUILD, SOURCES, cudart_paths

    assert lend_cuda_python() == "/opt/orion/build/vm-python"
    root = Path(__file__).resolve().parents[2]
    b = subprocess.run(["make", "-C", str(root), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    inc, lib = cudart_paths()
    out = root / "build" / "vm-native"
    out.mkdir(parents=True, exist_ok=True)
    for src, link in ((SOURCES / "deviceQuery.c", ["-lcuda"]), (SOURCES / "vectorAdd.c", ["-lcuda", "-lm"]),
                      (SOURCES / "runtime" / "runtime_api.c", [f"-L{lib}", "-l:libcudart.so.13"])):
        c = subprocess.run(["gcc", "-std=c11", "-O1", f"-I{inc}", f"-I{SOURCES}", str(src), f"-L{BUILD}", *link,
                            "-o", str(out / src.stem)], capture_output=True, text=True, timeout=120)
        assert c.returncode == 0, c.stderr
    return str(lib.relative_to(root))


def test_vm_guest_runs_cuda_programs_over_ivshmem(
        libvirt_conn, guest_image: GuestImage, orion_host: OrionHost,
        start_oriond: Callable[..., Oriond], native_programs: str) -> None:
    """The native client under cuda-bindings programs, C driver-API programs and NVIDIA's
    libcudart in a real guest, over the ivshmem device."""
    oriond = start_oriond(kvm=True)
    name = "orion-test-vgpu"
    index: list[int] = []
    res = run_guest(libvirt_conn, name, SCRIPT_FULL.replace("@CUDART@", native_programs), timeout=GUEST_TIMEOUT,
                    img=guest_image,
                    before_start=lambda g: index.append(orion_host.attach(g)))
    path = SHM_DIR / f"orionsock{index[0]}"
    steps = parse_steps(res.stdout)
    assert res.exit_code == 0, res.stdout + res.stderr
    _assert_programs_ok(steps)
    # each of the six programs (three cuda-python, three C) logs its transport
    assert len(steps["clientlog"].out.splitlines()) == 6, steps["clientlog"].out

    nc = steps["nullcall"]
    assert nc.rc == 0, nc.out + nc.err
    m = re.search(r"NULLCALL n=2000 bad=0 median_us=([\d.]+) .*", nc.out)
    assert m, nc.out
    print(f"\n[vm] {_report('one guest', res, steps)}")
    print(f"[vm] null call (cuCtxSynchronize) over ivshmem, in the guest: {m.group(0)}")
    print(f"[vm] client log: {steps['clientlog'].out.splitlines()[0]}")
    for c in ("c_deviceQuery", "c_vectorAdd", "c_runtime"):
        assert steps[c].rc == 0, steps[c].out + steps[c].err
        assert "using TCP" not in steps[c].err, steps[c].err
    assert "Detected 2 CUDA Capable device(s)" in steps["c_deviceQuery"].out
    assert "Result = PASS" in steps["c_runtime"].out and "devices 2, driver 13000" in steps["c_runtime"].out

    # the hook prepared the device on `prepare` and scrubbed it on `release`
    assert _scrubbed(path), f"{path} still holds data after the domain was destroyed"
    hook_log = orion_host.hook_log.read_text()
    assert f"{name}: prepared {path} ({SHM_MIB << 20} bytes, uid 0 gid 0 mode 0600)" in hook_log
    assert f"{name}: scrubbed {path}" in hook_log, hook_log
    # oriond served the VM device and ended every session
    log = oriond.server_log
    assert f"serving VM device {path}" in log, log
    sessions = re.findall(rf"session (\d+): shared-memory channel {re.escape(str(path))}#\d+", log)
    assert len(sessions) == 6, log  # three cuda-python programs, three C ones
    assert oriond.wait_log(rf"{re.escape(str(path))}: device was removed on the host"), oriond.server_log
    for sid in sessions:
        assert re.search(rf"session {sid} ended: bye", oriond.server_log), oriond.server_log


def test_two_guests_on_separate_devices(
        libvirt_conn, guest_image: GuestImage, orion_host: OrionHost,
        start_oriond: Callable[..., Oriond], native_programs: str) -> None:
    oriond = start_oriond(kvm=True)
    guests = [define_guest(libvirt_conn, f"orion-test-vgpu-{c}", SCRIPT_PAIR, img=guest_image)
              for c in "ab"]
    try:
        indexes = [orion_host.attach(g) for g in guests]
        assert indexes[0] != indexes[1]
        for g in guests:
            g.start()
        with ThreadPoolExecutor(len(guests)) as pool:  # wait in parallel: per-guest timings
            results = list(pool.map(lambda g: g.wait(GUEST_TIMEOUT), guests))
    except BaseException:
        for g in guests:
            g.keep_workdir = True
        raise
    finally:
        for g in guests:
            g.cleanup()
    for g, idx, res in zip(guests, indexes, results):
        assert res.exit_code == 0, res.stdout + res.stderr
        _assert_programs_ok(parse_steps(res.stdout))
        print(f"\n[vm] {_report(g.name + f' (orionsock{idx}, concurrently)', res, parse_steps(res.stdout))}")
        path = SHM_DIR / f"orionsock{idx}"
        assert _scrubbed(path), path
        log = oriond.server_log
        assert len(re.findall(rf"shared-memory channel {re.escape(str(path))}#", log)) == 2, log


def test_guest_reports_unserved_vm_device(
        libvirt_conn, guest_image: GuestImage, orion_host: OrionHost,
        start_oriond: Callable[..., Oriond], native_programs: str) -> None:
    """enable_kvm off: the device exists but is not served; the client falls back to TCP (the
    guest has no network), fails, and prints the seeds' message."""
    oriond = start_oriond(kvm=False)
    index: list[int] = []
    res = run_guest(libvirt_conn, "orion-test-vgpu-nokvm", SCRIPT_UNSERVED, timeout=GUEST_TIMEOUT,
                    img=guest_image, before_start=lambda g: index.append(orion_host.attach(g)))
    dq = parse_steps(res.stdout)["deviceQuery"]
    print(f"\n[vm] unserved device: result after {res.seconds_total:.1f} s; guest stderr:\n{dq.err}")
    assert dq.rc != 0
    # the seeds' message, alone on its line as users know it; the details follow
    assert re.search(r"\[ERROR\] Fail to finish system initialization\.\n", dq.err), dq.err
    assert "is not served by oriond (enable_kvm is off on the host?)" in dq.err, dq.err
    assert "Client exits without allocation ID" in dq.err
    assert "Detected" not in dq.out
    path = SHM_DIR / f"orionsock{index[0]}"
    assert _scrubbed(path)
    log = oriond.server_log
    assert "serving VM device" not in log and "shared-memory channel" not in log, log
