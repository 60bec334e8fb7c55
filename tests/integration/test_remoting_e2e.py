"""The remoting path end to end with real processes: oriond (sim), orion-run, real shm files, loopback TCP."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration


@pytest.fixture
def oriond(tmp_path: Path) -> Iterator[Oriond]:
    o = Oriond(tmp_path).start()
    yield o
    o.stop()


def client_log(o: Oriond) -> str:
    return "\n".join(p.read_text() for p in sorted((o.home / ".orion" / "log").glob("client-*.log")))


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_demo_programs_over_each_transport(oriond: Oriond, tcp: bool) -> None:
    oriond.device(1)
    q = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), tcp=tcp)
    assert q.returncode == 0, q.stderr
    assert "Detected 2 CUDA Capable device(s)" in q.stdout
    assert q.stdout.count("Total amount of global memory: 4096 MBytes") == 2
    assert "VirtaiTech Resource. Build-cuda" in q.stderr
    assert "Client exits with allocation ID" in q.stderr
    v = oriond.run(sys.executable, str(ROOT / "examples" / "vectorAdd.py"), tcp=tcp)
    assert v.returncode == 0, v.stderr
    assert v.stdout.count("sum check: PASSED") == 2 and "Test PASSED" in v.stdout
    log = client_log(oriond)
    assert ("transport: TCP" in log) if tcp else ("transport: shm device" in log)


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_a_cuda_graph_is_captured_and_replayed(oriond: Oriond, tcp: bool) -> None:
    oriond.device(1)
    g = oriond.run(sys.executable, str(ROOT / "examples" / "graphCapture.py"), tcp=tcp)
    assert g.returncode == 0, g.stdout + g.stderr
    assert g.stdout.count(": PASSED") == 3 and "Test PASSED" in g.stdout


def test_no_device_falls_back_to_tcp_and_says_why(oriond: Oriond) -> None:
    r = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"))
    assert r.returncode == 0, r.stderr
    log = client_log(oriond)
    assert f"transport: TCP to 127.0.0.1:{oriond.port} because shm_path_base {oriond.shm}" in log
    assert "holds no Orion device: create one on the host with `orion-shm -i N`" in log


def test_without_orion_vgpu_the_client_says_what_to_set(oriond: Oriond) -> None:
    r = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), ORION_VGPU="")
    assert r.returncode != 0
    assert "ORION_VGPU is not set" in r.stderr
    assert "Client exits without allocation ID" in r.stderr


def test_unreachable_server_is_reported(tmp_path: Path) -> None:
    o = Oriond(tmp_path)
    o.port = 1  # nothing listens there
    for d in (o.shm, o.logs, o.home):
        d.mkdir(parents=True)
    r = o.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), timeout=30)
    assert r.returncode != 0
    assert "Could not connect to server" in r.stderr


HOLD = textwrap.dedent("""
    import sys, time
    from cuda.bindings import driver as cuda
    assert cuda.cuInit(0)[0] == 0
    err, dev = cuda.cuDeviceGet(0)
    err, ctx = cuda.cuCtxCreate(None, 0, dev)
    for _ in range(4):
        err, p = cuda.cuMemAlloc(1 << 20)
        assert err == 0
    print("ready", flush=True)
    while True:
        err, = cuda.cuCtxSynchronize()
        if err != 0:
            print("error", int(err), flush=True)
            sys.exit(3)
        time.sleep(0.05)
""")


def test_killed_client_session_is_ended_and_its_memory_freed(oriond: Oriond, tmp_path: Path) -> None:
    oriond.device(1)
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    p = oriond.popen(sys.executable, str(prog))
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    oriond.wait_log("client process is gone")
    sessions = "".join(p.read_text() for p in (oriond.logs / "session").glob("*.log"))
    assert "freed 4 allocation(s)" in sessions
    # the channel is reusable by the next client
    r = oriond.run(sys.executable, str(ROOT / "examples" / "vectorAdd.py"))
    assert r.returncode == 0, r.stderr
    assert "transport: shm device" in client_log(oriond)


def test_device_removed_under_a_running_client_is_an_error_not_a_hang(oriond: Oriond, tmp_path: Path) -> None:
    dev = oriond.device(1)
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    p = oriond.popen(sys.executable, str(prog))
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    dev.unlink()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 3 and "error" in out
    assert "device was removed on the host" in err
    assert time.monotonic() - t0 < 15
    oriond.wait_log("device was removed on the host; ending its sessions")


def test_server_stop_is_noticed_by_a_waiting_client(oriond: Oriond, tmp_path: Path) -> None:
    oriond.device(1)
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    p = oriond.popen(sys.executable, str(prog))
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    oriond.stop()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 3
    assert "oriond stopped" in err or "lost the connection" in err


def test_several_applications_share_one_device_on_separate_channels(oriond: Oriond, tmp_path: Path) -> None:
    oriond.device(1, size_mib=32)
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    procs = [oriond.popen(sys.executable, str(prog)) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        log = client_log(oriond)
        channels = {ln.rsplit("channel", 1)[-1].strip() for ln in log.splitlines() if "transport: shm device" in ln}
        assert channels == {"0", "1", "2"}
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_bad_server_config_names_file_section_and_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    conf = tmp_path / "server.conf"
    conf.write_text("[server]\n    listen_port = 9960\n    enable_shmm = true\n")
    r = subprocess.run([str(Path(sys.executable).parent / "oriond"), "--config", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"{conf}: [server] unknown key 'enable_shmm'" in r.stderr


def test_oriond_says_once_why_it_skips_a_bad_device(oriond: Oriond) -> None:
    (oriond.shm / "orionsock5").write_bytes(b"\0" * (1 << 20))
    log = oriond.wait_log("not serving:")
    time.sleep(1.2)  # a few rescans later, still said only once
    log = oriond.server_log()
    assert log.count("not serving:") == 1
    assert "orionsock5: not an Orion device (no header); create it with orion-shm" in log


INIT = "from cuda.bindings import driver as cu\nprint('cuInit:', cu.cuInit(0)[0].name)\n"


def test_a_refusal_reaches_the_application_as_its_cuda_error(oriond: Oriond, tmp_path: Path) -> None:
    """oriond refuses a vGPU larger than a GPU (8192 MiB here): the program gets
    CUDA_ERROR_OUT_OF_MEMORY from cuInit and the reason on stderr, not a transport error."""
    prog = tmp_path / "init.py"
    prog.write_text(INIT)
    r = oriond.run(sys.executable, str(prog), tcp=True, ORION_GMEM="16384")
    assert "cuInit: CUDA_ERROR_OUT_OF_MEMORY" in r.stdout, r.stdout + r.stderr
    assert "ORION_GMEM=16384 MiB exceeds the memory of one GPU (8192 MiB)" in r.stderr
    assert "lost the connection" not in r.stderr


def test_a_server_address_that_never_answers_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    """ORION_SERVER pointing at a port that accepts and says nothing: a bounded wait and a
    message naming the address, not a frozen program."""
    import socket

    o = Oriond(tmp_path)
    for d in (o.shm, o.logs, o.home):
        d.mkdir(parents=True)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    addr = f"127.0.0.1:{silent.getsockname()[1]}"
    prog = tmp_path / "init.py"
    prog.write_text(INIT)
    try:
        t0 = time.monotonic()
        r = o.run(sys.executable, str(prog), tcp=True, timeout=30, ORION_SERVER=addr, ORION_CONNECT_TIMEOUT="1")
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert "cuInit: CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert f"{addr}: no answer to HELLO within 1 s" in r.stderr
    assert took < 15  # the interpreter start and orion-run included


def test_a_tenant_writing_its_device_header_does_not_stop_oriond(oriond: Oriond) -> None:
    """One 8-byte write into a container's own device (2^64-1 in the server's heartbeat counter)
    used to make oriond exit, dropping every tenant. Now the counter wraps and both the written
    device and the others go on serving."""
    import mmap
    import struct

    mine, other = oriond.device(1), oriond.device(2)
    oriond.wait_log(f"serving container device {other}")
    with open(mine, "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        m[64:72] = struct.pack("<Q", 0xFFFF_FFFF_FFFF_FFFF)  # H_SERVER_BEAT, word 8 of the header
    time.sleep(1.0)  # several ticks of oriond's loop
    assert oriond.proc is not None and oriond.proc.poll() is None, oriond.server_log()[-2000:]
    for dev in (mine, other):  # over that device only: TCP would fail (nothing listens on port 1)
        q = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), ORION_SHM_DEVICE=str(dev),
                       ORION_SERVER="127.0.0.1:1")
        assert q.returncode == 0, q.stderr
        assert "Detected 2 CUDA Capable device(s)" in q.stdout


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(k) for k in (task / "children").read_text().split()]
    return out


def test_session_workers_die_with_a_killed_oriond(oriond: Oriond, tmp_path: Path) -> None:
    """kill -9 of oriond ends its session workers too (a parent-death signal), so no session
    outlives the daemon that admitted it, and each waiting client gets an error."""
    oriond.device(1)
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    clients = [oriond.popen(sys.executable, str(prog)), oriond.popen(sys.executable, str(prog), tcp=True)]
    for p in clients:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    assert oriond.proc is not None
    workers = _children(oriond.proc.pid)
    assert len(workers) >= 2, workers
    oriond.proc.send_signal(signal.SIGKILL)
    oriond.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() and "State:\tZ" not in Path(f"/proc/{w}/status").read_text()
              for w in workers):
        assert time.monotonic() < deadline, "a session worker outlived oriond"
        time.sleep(0.05)
    for p in clients:
        out, _err = p.communicate(timeout=20)
        assert p.returncode == 3 and "error" in out


def test_a_channel_is_scrubbed_when_its_session_ends(oriond: Oriond) -> None:
    """What a session copied through the rings is not left in the device for the next tenant."""
    from orion_virt.transport.shmdev import PAGE, Device

    path = oriond.device(1)
    r = oriond.run(sys.executable, str(ROOT / "examples" / "vectorAdd.py"))
    assert r.returncode == 0, r.stderr
    dev = Device(path)
    try:
        deadline = time.monotonic() + 10
        while True:
            off = dev.layout.channel_offset(0) + PAGE
            rings = bytes(dev.view[off:off + 2 * dev.layout.ring_size])
            if not any(rings):
                break
            assert time.monotonic() < deadline, "the rings still hold the session's bytes"
            time.sleep(0.05)
    finally:
        dev.close()


def test_a_claim_without_its_lock_is_refused(oriond: Oriond) -> None:
    """A channel is served only for a claimer that holds its lock (every client takes it first)."""
    from orion_virt.transport.shmdev import C_GEN, C_STATE, DEAD, Device

    path = oriond.device(1)
    dev = Device(path)
    try:
        c = dev.ctrl(0)
        c[C_GEN] = c[C_GEN] + 1
        c[C_STATE] = 1  # CLAIMED, with no lock held
        deadline = time.monotonic() + 10
        while c[C_STATE] != DEAD:
            assert time.monotonic() < deadline, "the lockless claim was never refused"
            time.sleep(0.02)
        assert "without holding the channel's lock" in dev.reason(0)
    finally:
        dev.close()
    r = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"))
    assert r.returncode == 0, r.stderr


LONG_KERNEL = textwrap.dedent("""
    import sys
    import numpy as np
    from cuda.bindings import driver as cuda
    assert int(cuda.cuInit(0)[0]) == 0
    err, dev = cuda.cuDeviceGet(0)
    err, ctx = cuda.cuCtxCreate(None, 0, dev)
    err, mod = cuda.cuModuleLoadData(open(sys.argv[1], "rb").read() + b"\\0")
    err, fn = cuda.cuModuleGetFunction(mod, b"spin")
    err, out = cuda.cuMemAlloc(64 << 20)
    ns = np.array([30_000_000_000], dtype=np.int64)
    po = np.array([int(out)], dtype=np.uint64)
    params = np.array([ns.ctypes.data, po.ctypes.data], dtype=np.uint64)
    assert int(cuda.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, 0, params.ctypes.data, 0)[0]) == 0
    print("launched", flush=True)
    cuda.cuCtxSynchronize()
""")


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_a_client_killed_during_a_long_kernel_ends_its_session_at_once(oriond: Oriond, tmp_path: Path,
                                                                       tcp: bool) -> None:
    """A 30 s kernel does not keep a dead client's session (and its memory) for 30 s."""
    oriond.device(1)
    prog = tmp_path / "long.py"
    prog.write_text(LONG_KERNEL)
    p = oriond.popen(sys.executable, str(prog), str(ROOT / "orion_virt" / "kernels" / "test_kernels.ptx"), tcp=tcp)
    assert p.stdout is not None and p.stdout.readline().strip() == "launched"
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    deadline = time.monotonic() + 10
    while True:
        logs = "".join(f.read_text() for f in (oriond.logs / "session").glob("*.log"))
        if "freed 1 allocation(s)" in logs:
            break
        assert time.monotonic() < deadline, "the dead client's session outlived it: " + logs[-2000:]
        time.sleep(0.1)
    assert time.monotonic() - t0 < 5
