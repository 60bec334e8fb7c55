"""The native client (build/native/libcuda.so.1) end to end: C driver-API programs, compiled
against NVIDIA's cuda.h and linked with -lcuda, run unmodified against a real oriond (sim) over
TCP with LD_LIBRARY_PATH pointing at the build; plus fake servers for the failure paths.

The library is built with `make native` (the repository's target), the programs from
tests/native/*.c with gcc.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt.wire import calls as wire_calls
from orion_virt.wire.frames import HEADER, Kind, Welcome, encode_error
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration

BUILD = ROOT / "build" / "native"
SOURCES = ROOT / "tests" / "native"
PTX = ROOT / "orion_virt" / "kernels" / "test_kernels.ptx"


def cuda_include() -> Path | None:
    if os.environ.get("CUDA_INCLUDE"):
        return Path(os.environ["CUDA_INCLUDE"])
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return None
    for d in nvidia.__path__:
        for inc in sorted(Path(d).glob("cu*/include")):
            if (inc / "cuda.h").exists():
                return inc
    return None


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the native client (make test-deps installs it)")
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    assert (BUILD / "libcuda.so.1").exists()
    inc = cuda_include()
    assert inc is not None, "cuda.h not found after make native (pip install nvidia-cuda-runtime)"
    out = tmp_path_factory.mktemp("native-programs")
    built = {}
    for src in sorted(SOURCES.glob("*.c")):
        exe = out / src.stem
        c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{inc}",
                            f"-I{SOURCES}", str(src), f"-L{BUILD}", "-lcuda", "-lm", "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
        assert c.returncode == 0, f"{src.name}:\n{c.stderr}"
        built[src.stem] = exe
    return built


@pytest.fixture(scope="module")
def oriond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oriond]:
    o = Oriond(tmp_path_factory.mktemp("oriond")).start()
    o.device(1)
    yield o
    o.stop()


@pytest.fixture(params=["tcp", "shm"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def native_env(o: Oriond | None = None, transport: str = "tcp", **extra: str) -> dict[str, str]:
    """The program's environment. Over shm, ORION_SERVER names a port nothing listens on, so a
    program that works there used the shared-memory device."""
    if o is not None:
        env = o.env(tcp=transport == "tcp")
        if transport == "shm":
            env["ORION_SERVER"] = "127.0.0.1:1"
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
        env.update(ORION_VGPU="2", ORION_GMEM="4096", ORION_ENABLE_NET="1")
    env["LD_LIBRARY_PATH"] = str(BUILD)
    env.update(extra)
    return env


def run(exe: Path, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)


# -- the library itself -------------------------------------------------------------------------


def test_generated_native_marshalling_is_current() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_native.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"stale generated files (run python tools/gen_native.py):\n{r.stdout}{r.stderr}"


def test_the_library_exports_every_function_of_the_real_driver(programs: dict[str, Path]) -> None:
    """Every function NVIDIA's libcuda.so.1 exports (the checked-in table, taken from the real
    driver) is exported here: remoted, answered in the client, or a stub that refuses."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_native
    from elf_symbols import exported_functions
    exported = set(exported_functions(BUILD / "libcuda.so.1"))
    data = gen_native.procaddr_data().read_text().splitlines()
    driver = {line.split("\t")[1] for line in data if line.startswith("export\t")}
    assert len(driver) > 600
    assert driver <= exported, sorted(driver - exported)
    assert set(gen_native.HAND_EXPORTS) <= exported


def test_the_library_exports_every_spelling_of_the_spec_and_only_the_api(programs: dict[str, Path]) -> None:
    nm = subprocess.run(["nm", "-D", "--defined-only", str(BUILD / "libcuda.so.1")], capture_output=True,
                        text=True, check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_native
    want = {n for s in wire_calls.SPECS.values() for n in (s.fn.name, *s.fn.spellings)} - set(gen_native.C_WIRE_ONLY)
    want |= {"cuGetErrorName", "cuGetErrorString", "cuCtxGetCurrent"}
    assert want <= exported, sorted(want - exported)
    assert all(n.startswith("cu") for n in exported), sorted(n for n in exported if not n.startswith("cu"))
    soname = subprocess.run(["readelf", "-d", str(BUILD / "libcuda.so.1")], capture_output=True, text=True).stdout
    assert "Library soname: [libcuda.so.1]" in soname
    # a program built against CUDA 13's cuda.h imports the versioned spellings
    undefined = subprocess.run(["nm", "-u", str(programs["memory"])], capture_output=True, text=True).stdout
    for sym in ("cuCtxCreate_v4", "cuMemAlloc_v2", "cuMemcpyHtoD_v2", "cuMemFree_v2", "cuMemGetInfo_v2"):
        assert sym in undefined


# -- programs against oriond (sim) over TCP ----------------------------------------------------


def test_device_query(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["deviceQuery"], env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected 2 CUDA Capable device(s)" in r.stdout
    assert r.stdout.count("Total amount of global memory: 4096 MBytes") == 2
    assert 'Device 1: "Orion sim device (no GPU)"' in r.stdout
    assert "Result = PASS" in r.stdout
    assert "VirtaiTech Resource. Build-cuda-orion_virt-" in r.stderr
    assert "Client exits with allocation ID" in r.stderr


def test_device_query_sees_the_vgpu_it_asked_for(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["deviceQuery"], env=native_env(oriond, transport, ORION_VGPU="1", ORION_GMEM="1024"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected 1 CUDA Capable device(s)" in r.stdout
    assert "Total amount of global memory: 1024 MBytes" in r.stdout


def test_memory(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["memory"], env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mem info: free 4096 MiB, total 4096 MiB" in r.stdout
    assert "HtoD, DtoD, DtoH of 4194304 bytes: PASSED" in r.stdout
    assert "memset and async copies: PASSED" in r.stdout
    assert "-> CUDA_ERROR_OUT_OF_MEMORY" in r.stdout
    assert "Test PASSED" in r.stdout


def test_memory_quota_follows_orion_gmem(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["memory"], env=native_env(oriond, transport, ORION_GMEM="512"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mem info: free 512 MiB, total 512 MiB" in r.stdout


def test_orion_gmem_takes_the_forms_users_write(programs: dict[str, Path], oriond: Oriond) -> None:
    """4G is 4096 MiB (as for the Python client and orion-shm); a bad value names itself."""
    r = run(programs["memory"], env=native_env(oriond, ORION_GMEM="1G"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mem info: free 1024 MiB, total 1024 MiB" in r.stdout
    r = run(programs["init_only"], env=native_env(oriond, ORION_GMEM="4T"))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert "ORION_GMEM=4T: expected a size in MiB such as 4096, 4096M or 4G" in r.stderr


def test_vector_add_module_launch_streams_events(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["vectorAdd"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("sum check: PASSED") == 2
    assert r.stdout.count("[saxpy on device") == 2 and "FAILED" not in r.stdout
    assert "Test PASSED" in r.stdout


def test_launches_with_attributes_and_cooperative(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    """cuLaunchKernelEx as cuDNN and cudaLaunchKernelEx issue it, cuLaunchCooperativeKernel; the sim
    device (compute capability 8.0) has no clusters, and an access policy window is refused by name."""
    r = run(programs["launch_ex"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("sum check: PASSED") == 3 and "FAILED" not in r.stdout
    assert "clusters of 2 blocks on a device without cluster launch: CUDA_ERROR_NOT_SUPPORTED" in r.stdout
    assert "-> CUDA_ERROR_NOT_SUPPORTED" in r.stdout
    assert "cuLaunchKernelEx: launch attribute 1 is not supported by the orion_virt client" in r.stderr
    assert "Test PASSED" in r.stdout


def test_two_devices_in_one_program(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    """Both vGPUs of one server: a context each, data handed between them through the host
    (the cross-node form of this program is in test_controller_e2e)."""
    r = run(programs["two_devices"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "two-device chain: PASSED" in r.stdout and "Test PASSED" in r.stdout, r.stdout
    # two vGPUs of one GPU share the server's context: each reaches the other's memory
    assert "can access peer: 0->1 1, 0->0 0" in r.stdout, r.stdout
    assert "peer copy device 0 -> device 1: PASSED" in r.stdout
    assert "unified copies: PASSED" in r.stdout
    assert "-> CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED" in r.stdout
    assert "-> CUDA_ERROR_PEER_ACCESS_NOT_ENABLED" in r.stdout


def test_error_codes(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["errors"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "name of 2: CUDA_ERROR_OUT_OF_MEMORY" in r.stdout
    assert "string of 400: invalid resource handle" in r.stdout
    assert "cuStreamSynchronize((CUstream)(uintptr_t)0xdead) -> CUDA_ERROR_INVALID_HANDLE" in r.stdout
    assert '"no_such_kernel") -> CUDA_ERROR_NOT_FOUND' in r.stdout
    assert "Test PASSED" in r.stdout


def test_threads_share_one_session(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["threads"], env=native_env(oriond, transport), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 threads x 200 rounds: PASSED" in r.stdout


# -- sessions that cannot open or that break ---------------------------------------------------


def test_a_refused_session_returns_the_error_frames_status(programs: dict[str, Path], oriond: Oriond,
                                                           transport: str) -> None:
    """ORION_GMEM larger than a sim GPU (8192 MiB): oriond answers HELLO with ERROR; cuInit returns
    its status and the reason is on stderr."""
    r = run(programs["init_only"], env=native_env(oriond, transport, ORION_GMEM="16384"))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "cuInit: 2 CUDA_ERROR_OUT_OF_MEMORY" in r.stdout
    assert "ORION_GMEM=16384 MiB exceeds the memory of one GPU (8192 MiB)" in r.stderr
    assert "cuDeviceGetCount: 3 CUDA_ERROR_NOT_INITIALIZED" in r.stdout
    assert "Client exits without allocation ID" in r.stderr


def test_no_usable_device_falls_back_to_tcp_and_says_why(programs: dict[str, Path], tmp_path: Path,
                                                         oriond: Oriond) -> None:
    bad = tmp_path / "orionsock7"
    bad.write_bytes(bytes(1 << 20))  # no header
    r = run(programs["init_only"], env=native_env(oriond, "shm", ORION_SHM_PATH_BASE=str(tmp_path),
                                                   ORION_SERVER=f"127.0.0.1:{oriond.port}"))
    assert "cuInit: 0 CUDA_SUCCESS" in r.stdout, r.stdout + r.stderr
    assert f"using TCP: {bad}: not an Orion device (no header)" in r.stderr


def test_without_orion_vgpu_cuinit_says_what_to_set(programs: dict[str, Path], oriond: Oriond) -> None:
    r = run(programs["init_only"], env=native_env(oriond, ORION_VGPU=""))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert "ORION_VGPU is not set" in r.stderr


def test_nothing_listening_names_the_address(programs: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = run(programs["init_only"], env=native_env(ORION_SERVER=f"127.0.0.1:{port}"))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert f"cannot connect to oriond at 127.0.0.1:{port}" in r.stderr


class FakeServer:
    """A listener that plays oriond's part as ``script(conn, done)`` says; ``done`` is set at close
    (a script that must stay silent waits for it)."""

    def __init__(self, script: Callable[[socket.socket, threading.Event], object]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                self.script(conn, self.done)
            except OSError:
                pass

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(5)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def recv_message(conn: socket.socket) -> tuple[tuple, bytes]:
    h = HEADER.unpack(recv_exact(conn, HEADER.size))
    return h, recv_exact(conn, h[0])


def welcome_then(reply: Callable[[tuple], bytes]) -> Callable[[socket.socket, threading.Event], None]:
    def script(conn: socket.socket, done: threading.Event) -> None:
        (_, kind, *_rest), _hello = recv_message(conn)
        assert kind == Kind.HELLO
        conn.sendall(Welcome(7, "fake").encode())
        h, _body = recv_message(conn)  # the cuInit call
        conn.sendall(reply(h))
        done.wait(10)  # stay silent: the client must not wait for more
    return script


def reply_header(length: int, kind: int, flags: int, code: int, seq: int, status: int) -> bytes:
    return HEADER.pack(length, kind, flags, code, seq, status)


MALFORMED = {
    "wrong seq": lambda h: reply_header(0, Kind.REPLY, 0, h[3], h[4] + 1, 0),
    "wrong code": lambda h: reply_header(0, Kind.REPLY, 0, h[3] + 1, h[4], 0),
    "flags on a reply": lambda h: reply_header(0, Kind.REPLY, 1, h[3], h[4], 0),
    "body longer than the layout": lambda h: reply_header(4, Kind.REPLY, 0, h[3], h[4], 0) + bytes(4),
    "unknown kind": lambda h: reply_header(0, 42, 0, h[3], h[4], 0),
    "a WELCOME mid-session": lambda h: Welcome(7, "fake").encode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reply_is_cuda_error_unknown_not_a_hang(programs: dict[str, Path], case: str) -> None:
    fake = FakeServer(welcome_then(MALFORMED[case]))
    try:
        t0 = time.monotonic()
        r = run(programs["init_only"], env=native_env(ORION_SERVER=fake.addr), timeout=20)
        assert time.monotonic() - t0 < 3, "the client waited for bytes a wrong header promised"
    finally:
        fake.close()
    assert "cuInit: 999 CUDA_ERROR_UNKNOWN" in r.stdout, r.stdout + r.stderr
    assert "cuDeviceGetCount: 999 CUDA_ERROR_UNKNOWN" in r.stdout
    assert r.stderr.count("oriond sent an invalid reply, the session is closed") == 1


def test_an_error_frame_mid_session_is_its_status_with_the_reason_once(programs: dict[str, Path]) -> None:
    fake = FakeServer(welcome_then(lambda h: encode_error("allocation a1 expired", 800)))
    try:
        r = run(programs["init_only"], env=native_env(ORION_SERVER=fake.addr), timeout=20)
    finally:
        fake.close()
    assert "cuInit: 800 CUDA_ERROR_NOT_PERMITTED" in r.stdout, r.stdout + r.stderr
    assert "cuDeviceGetCount: 800 CUDA_ERROR_NOT_PERMITTED" in r.stdout
    assert r.stderr.count("oriond ended the session: allocation a1 expired") == 1


def test_a_silent_server_fails_within_the_connect_timeout(programs: dict[str, Path]) -> None:
    fake = FakeServer(lambda conn, done: done.wait(10))
    try:
        t0 = time.monotonic()
        r = run(programs["init_only"], env=native_env(ORION_SERVER=fake.addr, ORION_CONNECT_TIMEOUT="1"),
                timeout=20)
        took = time.monotonic() - t0
    finally:
        fake.close()
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert f"{fake.addr}: no answer to HELLO within 1 s" in r.stderr
    assert took < 4


def test_a_port_that_is_not_oriond_is_named(programs: dict[str, Path]) -> None:
    fake = FakeServer(lambda conn, done: (recv_exact(conn, 16), conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
                                          done.wait(10)))
    try:
        r = run(programs["init_only"], env=native_env(ORION_SERVER=fake.addr), timeout=20)
    finally:
        fake.close()
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert f"{fake.addr} is not an Orion Server" in r.stderr
    assert "is this the controller's port?" in r.stderr


def test_the_reply_blob_may_not_exceed_the_callers_buffer(programs: dict[str, Path], tmp_path: Path) -> None:
    """cuDeviceGetName(name, 8, dev) answered with a 64-byte name: rejected on its header."""
    src = tmp_path / "name.c"
    src.write_text('#include <cuda.h>\n#include <stdio.h>\nint main(void){char n[8];CUresult r=cuInit(0);'
                   'printf("init %d\\n",(int)r);r=cuDeviceGetName(n,8,0);printf("name %d\\n",(int)r);return 0;}\n')
    exe = tmp_path / "name"
    subprocess.run(["gcc", "-std=c11", f"-I{cuda_include()}", str(src), f"-L{BUILD}", "-lcuda", "-o", str(exe)],
                   check=True)
    code_name = wire_calls.BY_NAME["cuDeviceGetName"].call

    def script(conn: socket.socket, done: threading.Event) -> None:
        recv_message(conn)
        conn.sendall(Welcome(7, "fake").encode())
        h, _ = recv_message(conn)
        conn.sendall(reply_header(0, Kind.REPLY, 0, h[3], h[4], 0))  # cuInit ok
        h, _ = recv_message(conn)
        assert h[3] == code_name
        conn.sendall(reply_header(8 + 64, Kind.REPLY, 0, h[3], h[4], 0) + struct.pack("<Q", 64) + b"x" * 64)
        done.wait(10)

    fake = FakeServer(script)
    try:
        r = run(exe, env=native_env(ORION_SERVER=fake.addr), timeout=20)
    finally:
        fake.close()
    assert "init 0" in r.stdout and "name 999" in r.stdout, r.stdout + r.stderr
    assert "reply blob of 64 bytes, the buffer holds 8" in r.stderr


def test_function_attributes_occupancy_limits_and_pointer_attributes(programs: dict[str, Path], oriond: Oriond,
                                                                       transport: str) -> None:
    r = run(programs["attributes"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pointer: type 2 (device yes), ordinal 0, range start ok, size 1048576" in r.stdout
    assert "host pointer: type 0, ordinal -2" in r.stdout


def test_page_locked_host_memory_and_stream_ordered_pools(programs: dict[str, Path], oriond: Oriond,
                                                           transport: str) -> None:
    r = run(programs["host_and_pools"], env=native_env(oriond, transport, ORION_GMEM="256"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pool allocation round trip: ok" in r.stdout
    assert "free 252 MiB of 256 MiB with 4 MiB from the pool" in r.stdout
    assert "cuMemAllocAsync(&big, tot, s) -> CUDA_ERROR_OUT_OF_MEMORY" in r.stdout


def test_page_locked_buffers_are_shared_with_oriond_over_shm_and_copied_over_tcp(
        programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    """Over a shared-memory device the buffers are oriond's too (its session log says so and the
    client's debug line names the channel); over TCP the same program runs with copies."""
    before = {p: p.stat().st_size for p in (oriond.logs / "session").glob("*.log")}
    r = run(programs["pinned"], str(3 << 20), env=native_env(oriond, transport, ORION_LOG_LEVEL="DEBUG"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 page-locked buffers of 3145728 bytes: round trip ok" in r.stdout
    assert "partial copies: ok" in r.stdout and "freed and allocated again: ok" in r.stdout
    shared_line = "page-locked memory is shared with oriond over shm"
    new_logs = "".join(p.read_text()[before.get(p, 0):] for p in (oriond.logs / "session").glob("*.log"))
    if transport == "shm":
        assert shared_line in r.stderr, r.stderr
        assert new_logs.count("KiB of host memory at") >= 7, new_logs
    else:
        assert shared_line not in r.stderr
        assert "host memory at" not in new_logs


def test_registered_host_memory_is_shared_in_place_over_shm_and_copied_over_tcp(
        programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    """cuMemHostRegister on memory the program has: over shm its heap pages become oriond's too
    (two 8 MiB buffers and an unaligned piece: three blocks in the session log; the stack buffer
    stays the program's, said once), over TCP every copy goes through the socket; either way the
    program's bytes survive registering and unregistering."""
    before = {p: p.stat().st_size for p in (oriond.logs / "session").glob("*.log")}
    r = run(programs["host_register"], "8", env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host register supported: 1" in r.stdout
    assert "bytes kept by registering: yes" in r.stdout and "bytes kept by unregistering: yes" in r.stdout
    assert r.stdout.count("round trip: PASSED") == 3 and "FAILED" not in r.stdout
    assert "[an unaligned piece] round trip, neighbours kept: PASSED" in r.stdout
    assert "[a buffer on the stack] round trip: PASSED" in r.stdout
    assert "-> CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED" in r.stdout
    assert "-> CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED" in r.stdout
    assert "flags of the registered buffer: 3" in r.stdout
    new_logs = "".join(p.read_text()[before.get(p, 0):] for p in (oriond.logs / "session").glob("*.log"))
    if transport == "shm":
        assert new_logs.count("KiB of host memory at") == 3, new_logs
        said = [ln for ln in r.stderr.splitlines() if "registered host memory at" in ln]
        assert len(said) == 1 and "stays in this process, copies go through" in said[0], r.stderr
        assert said[0].endswith("its pages are not private anonymous memory (a file, the stack)")
    else:
        assert "host memory at" not in new_logs
    assert "Test PASSED" in r.stdout


def test_managed_memory_and_virtual_memory_management_are_absent_and_refused_by_name(
        programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    """The device says these features are absent; a program that calls them anyway gets
    CUDA_ERROR_NOT_SUPPORTED (801), each function named once on stderr, and nothing is counted."""
    r = run(programs["memory_kinds"], env=native_env(oriond, transport, ORION_GMEM="512"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "managed memory 0, concurrent managed access 0, virtual memory management 0" in r.stdout
    assert "unified addressing 1," in r.stdout
    for fn in ("cuMemAllocManaged", "cuMemGetAllocationGranularity", "cuMemAddressReserve", "cuMemCreate"):
        assert f"{fn} -> 801" in r.stdout
        said = [ln for ln in r.stderr.splitlines() if ln.startswith((f"[WARN] {fn} ", f"[WARN] {fn}_v2 "))]
        assert len(said) == 1 and said[0].endswith(" is not supported by the orion_virt client: "
                                                   "CUDA_ERROR_NOT_SUPPORTED"), r.stderr
    assert "free unchanged after the refusals: yes" in r.stdout
    assert "an ordinary allocation of 8 MiB counts: yes" in r.stdout


def test_zero_copy_asks_oriond_for_the_device_address_of_shared_memory(programs: dict[str, Path], oriond: Oriond,
                                                                        transport: str) -> None:
    """NVIDIA's simpleZeroCopy pattern. The sim backend has no device address space for host
    memory, so oriond refuses by name there (the kernel writing it runs in the GPU ladder,
    scripts/gpu-ladder.sh); over TCP the memory is not shared, and the client says why."""
    r = run(programs["zero_copy"], str(PTX), "unsupported-ok", env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "zero-copy: CUDA_ERROR_NOT_SUPPORTED" in r.stdout
    if transport == "tcp":
        assert "page-locked memory has a device address only when it is shared with oriond" in r.stderr
    else:
        logs = "".join(p.read_text() for p in (oriond.logs / "session").glob("*.log"))
        assert "maps no host memory into a device's address space" in logs


def test_oriond_refuses_to_share_memory_that_is_not_a_sealed_memfd_and_the_program_still_runs(
        programs: dict[str, Path], oriond: Oriond) -> None:
    """ORION_SHARE_HOST=0 keeps buffers in the program (the ring carries the bytes); the checks
    oriond makes on a descriptor it is given are tested in tests/unit/server/test_hostshare.py."""
    r = run(programs["pinned"], str(1 << 20), env=native_env(oriond, "shm", ORION_SHARE_HOST="0",
                                                             ORION_LOG_LEVEL="DEBUG"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Result = PASS" in r.stdout
    assert "shared with oriond" not in r.stderr


# -- how NVIDIA's libraries reach the driver: cuGetProcAddress, export tables, stubs -------------


def test_get_proc_address_export_tables_and_unsupported_functions(programs: dict[str, Path], oriond: Oriond,
                                                                    transport: str) -> None:
    r = run(programs["procaddr"], env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cuMemAlloc@12000 is cuMemAlloc_v2: yes" in r.stdout
    assert "devices through cuGetProcAddress: 2" in r.stdout
    said = [ln for ln in r.stderr.splitlines() if "cuGraphCreate" in ln]
    assert said == ["[WARN] cuGraphCreate is not supported by the orion_virt client: CUDA_ERROR_NOT_SUPPORTED"]


def cudart_paths() -> tuple[Path, Path]:
    """NVIDIA's libcudart.so.13 and its headers, from the nvidia-cuda-runtime wheel."""
    inc = cuda_include()
    assert inc is not None, "cuda.h not found (pip install nvidia-cuda-runtime)"
    lib = inc.parent / "lib"
    assert (lib / "libcudart.so.13").exists(), f"no libcudart.so.13 in {lib} (pip install nvidia-cuda-runtime)"
    assert (inc / "crt" / "host_defines.h").exists(), f"no crt/ in {inc} (pip install nvidia-cuda-crt)"
    return inc, lib


@pytest.fixture(scope="module")
def runtime_program(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    inc, lib = cudart_paths()
    exe = tmp_path_factory.mktemp("runtime") / "runtime_api"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Werror", f"-I{inc}",
                        str(SOURCES / "runtime" / "runtime_api.c"), f"-L{lib}", "-l:libcudart.so.13",
                        f"-Wl,-rpath,{lib}", "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def test_nvidias_libcudart_runs_a_runtime_api_program(runtime_program: Path, oriond: Oriond,
                                                       transport: str) -> None:
    """libcudart.so.13, unmodified, over the client: its start-up (cuGetProcAddress, the export
    tables with the integrity check), device count and properties within the quota, copies,
    memset, streams, events, and cudaErrorMemoryAllocation past ORION_GMEM."""
    r = run(runtime_program, "2", "1024", env=native_env(oriond, transport, ORION_VGPU="2", ORION_GMEM="1024"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "devices 2, driver 13000" in r.stdout
    assert "device 1: Orion sim device (no GPU), 1024 MiB" in r.stdout
    assert "cudaMalloc past the quota: cudaErrorMemoryAllocation" in r.stdout
    assert "Result = PASS" in r.stdout
    assert "not supported" not in r.stderr, r.stderr


@pytest.mark.parametrize("example", ["deviceQuery.py", "vectorAdd.py", "runtimeQuery.py", "graphCapture.py"])
def test_cuda_bindings_examples_run_unmodified_over_the_library(programs: dict[str, Path], oriond: Oriond,
                                                                 transport: str, example: str) -> None:
    """The real cuda-bindings (driver and runtime modules) load libcuda.so.1 themselves; with the
    library first on LD_LIBRARY_PATH they talk to oriond with no Python of ours involved."""
    env = native_env(oriond, transport)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / example)], env=env, capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    assert "Client exits with allocation ID" in r.stderr


def test_orion_run_with_the_native_client_runs_c_and_python_programs(programs: dict[str, Path], oriond: Oriond,
                                                                     transport: str) -> None:
    """``ORION_CLIENT=native orion-run COMMAND``: no LD_LIBRARY_PATH of the user's, no Python of
    ours in the program; a C program and a cuda-bindings one both reach the vGPUs."""
    env = native_env(oriond, transport, ORION_CLIENT="native", ORION_NATIVE_LIB_DIR=str(BUILD))
    env.pop("LD_LIBRARY_PATH")
    orion_run = [sys.executable, "-m", "orion_virt.client.run"]
    r = subprocess.run([*orion_run, str(programs["deviceQuery"])], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected 2 CUDA Capable device(s)" in r.stdout
    r = subprocess.run([*orion_run, sys.executable, str(ROOT / "examples" / "runtimeQuery.py")], env=env,
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected 2 CUDA Capable device(s)" in r.stdout


def _fake_ivshmem(sysfs: Path, device: Path, slot: str) -> Path:
    """A PCI device directory as Linux shows an ivshmem-plain device in a guest; its BAR2 is the
    Orion device file (a hard link: the client opens it without following links)."""
    d = sysfs / slot
    d.mkdir(parents=True)
    (d / "vendor").write_text("0x1af4\n")
    (d / "device").write_text("0x1110\n")
    (d / "enable").write_text("0\n")
    os.link(device, d / "resource2")
    return d


def test_inside_a_vm_the_ivshmem_bar_is_the_transport(programs: dict[str, Path], tmp_path: Path) -> None:
    """The ivshmem PCI device comes first; its claim lock lives in a guest-local file. The device
    is a VM device (as the libvirt hook formats it) served by an oriond with enable_kvm, which
    watches the client's heartbeat instead of its lock, as for a real guest."""
    from orion_virt.transport.shmdev import format_device

    host = Oriond(tmp_path / "host", extra=["--enable-kvm"])
    host.shm.mkdir(parents=True)
    format_device(host.shm / "orionsock5", 16 << 20, vm=True)
    host.start()
    try:
        slot = f"0000:7f:{os.getpid() % 32:02x}.7"
        pci = _fake_ivshmem(tmp_path / "pci", host.shm / "orionsock5", slot)
        empty = tmp_path / "no-devices"
        empty.mkdir()
        env = native_env(host, "shm", ORION_SYSFS_PCI=str(tmp_path / "pci"), ORION_SHM_PATH_BASE=str(empty))
        r = run(programs["vectorAdd"], str(PTX), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (pci / "enable").read_text() == "1"
        lock = Path("/run/orion") if os.access("/run", os.W_OK) else Path("/tmp/orion-locks")
        assert (lock / f"ivshmem-{slot.replace(':', '_')}.lock").exists()
        assert "using TCP" not in r.stderr
        assert "serving VM device" in (host.logs / "server.log").read_text()
    finally:
        host.stop()


def test_an_unserved_vm_device_prints_the_seeds_message(programs: dict[str, Path], tmp_path: Path) -> None:
    shm = tmp_path / "host-shm"
    subprocess.run([str(Path(sys.executable).parent / "orion-shm"), "-i", "3", "--size", "16", "--path-base",
                    str(shm)], check=True, capture_output=True)
    _fake_ivshmem(tmp_path / "pci", shm / "orionsock3", "0000:00:1e.0")
    env = native_env(None, ORION_SYSFS_PCI=str(tmp_path / "pci"), ORION_ENABLE_NET="0",
                     ORION_SHM_PATH_BASE=str(tmp_path), ORION_SERVER="127.0.0.1:1", ORION_CONNECT_TIMEOUT="2")
    r = run(programs["deviceQuery"], env=env)
    assert r.returncode != 0
    assert "[ERROR] Fail to finish system initialization.\n" in r.stderr, r.stderr
    assert "is not served by oriond (enable_kvm is off on the host?)" in r.stderr, r.stderr
    assert "Client exits without allocation ID" in r.stderr


def test_a_copy_larger_than_a_message_goes_in_pieces(programs: dict[str, Path], oriond: Oriond,
                                                     transport: str) -> None:
    """A message body is at most 4 GiB; ORION_COPY_CHUNK_MIB=1 makes a 9 MiB copy take ten
    messages each way, as a 5 GiB copy takes two (that one runs on the GPU machine)."""
    r = run(programs["big_copy"], "9", env=native_env(oriond, transport, ORION_COPY_CHUNK_MIB="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "round trips of 9 MiB: ok" in r.stdout


@pytest.mark.parametrize("threads", ["0", "3"])
def test_bulk_copies_split_between_copy_threads_arrive_intact(programs: dict[str, Path], oriond: Oriond,
                                                              threads: str) -> None:
    """Over shared memory a large step is copied by several threads on a machine of 8 CPUs or
    more (ORION_COPY_THREADS forces it here): every byte arrives, through the ring and back."""
    for mib in ("9", "33"):
        r = run(programs["big_copy"], mib, env=native_env(oriond, "shm", ORION_COPY_THREADS=threads))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"round trips of {mib} MiB: ok" in r.stdout


@pytest.mark.parametrize("opt", ["-O0", "-O1", "-O3"])
def test_the_library_builds_warning_free_at_every_optimisation_level(tmp_path: Path, opt: str) -> None:
    """gcc's warnings change with the optimiser (truncation, use after free): -Werror holds at each."""
    inc = cuda_include()
    assert inc is not None
    r = subprocess.run(["make", "-s", "-C", str(ROOT / "orion_virt" / "client" / "native"), f"OUT={tmp_path}",
                        f"CUDA_INCLUDE={inc}"], env={**os.environ, "CFLAGS": opt}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "libcuda.so.1").exists()


def test_stream_capture_and_graphs(programs: dict[str, Path], oriond: Oriond, transport: str) -> None:
    r = run(programs["graph"], str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "capturing: yes" in r.stdout
    assert "graph of 4 nodes launched twice: ok" in r.stdout


def test_client_log_section_drives_screen_lines_and_the_log_file(programs: dict[str, Path], oriond: Oriond,
                                                                  tmp_path: Path) -> None:
    """[client-log] of client.conf, as the Python client reads it: no screen lines with
    log_to_screen = false; the session's lines in <log_dir>/client-*.log, mode 0640, timestamped."""
    conf = tmp_path / "client.conf"
    logs = tmp_path / "logs"
    conf.write_text(f"[client-log]\nlog_to_screen = false\nlog_to_file = true\nlog_dir = {logs}\n"
                    "file_log_level = INFO\nlog_with_time = true\n")
    r = run(programs["init_only"], env=native_env(oriond, ORION_CLIENT_CONF_ETC=str(conf)))
    assert "cuInit: 0 CUDA_SUCCESS" in r.stdout, r.stdout + r.stderr
    assert "VirtaiTech Resource" not in r.stderr and "[INFO]" not in r.stderr, r.stderr
    files = list(logs.glob("client-*.log"))
    assert len(files) == 1, files
    text = files[0].read_text()
    assert "VirtaiTech Resource. Build-cuda-" in text and "Client exits with allocation ID" in text, text
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[INFO\] ", text, re.M), text
    assert files[0].stat().st_mode & 0o777 == 0o640 and logs.stat().st_mode & 0o027 == 0  # no group write, no others

    conf.write_text(f"[client-log]\nlog_to_file = false\nlog_dir = {logs}\nlog_with_time = false\n")
    r = run(programs["init_only"], env=native_env(oriond, ORION_CLIENT_CONF_ETC=str(conf)))
    assert "VirtaiTech Resource. Build-cuda-" in r.stderr and len(list(logs.glob("client-*.log"))) == 1

    # the levels: screen lines below log_level and file lines below file_log_level are left out
    quiet = tmp_path / "quiet"
    conf.write_text(f"[client-log]\nlog_to_screen = true\nlog_level = WARNING\nlog_with_time = false\n"
                    f"log_to_file = true\nfile_log_level = ERROR\nlog_dir = {quiet}\n")
    r = run(programs["init_only"], env=native_env(oriond, ORION_CLIENT_CONF_ETC=str(conf), ORION_SERVER="127.0.0.1:1"))
    assert "[INFO]" not in r.stderr and re.search(r"^\[(WARN|ERROR)", r.stderr, re.M), r.stderr
    text = "".join(f.read_text() for f in quiet.glob("client-*.log"))
    assert "[INFO]" not in text and "[WARN" not in text and text.startswith("[ERROR] "), text


def test_client_conf_names_the_device_the_server_and_the_transport(programs: dict[str, Path], oriond: Oriond,
                                                                    tmp_path: Path) -> None:
    """[client-shm] shm_path_base, [client] server_addr and enable_net of client.conf, as
    orion_virt/config.py reads them: the environment wins, the home file over /etc's; a bad value
    names its file and key."""
    etc, home = tmp_path / "etc.conf", tmp_path / "home"
    (home / ".orion").mkdir(parents=True)
    env = native_env(oriond, ORION_CLIENT_CONF_ETC=str(etc), HOME=str(home))
    for k in ("ORION_SHM_PATH_BASE", "ORION_SERVER", "ORION_ENABLE_NET"):
        env.pop(k)

    def transport_line() -> str:
        logs = sorted((home / ".orion" / "log").glob("client-*.log"), key=lambda f: f.stat().st_mtime)
        return next(ln for ln in logs[-1].read_text().splitlines() if "transport:" in ln)

    # the device from /etc's file; nothing listens at its server_addr, so only shm can work
    etc.write_text(f"[client-shm]\nshm_path_base = {oriond.shm}\n[client]\nserver_addr = 127.0.0.1:1\n")
    r = run(programs["init_only"], env=env)
    assert "cuInit: 0 CUDA_SUCCESS" in r.stdout, r.stdout + r.stderr
    assert f"transport: shm device {oriond.shm}/orionsock1 channel" in transport_line()
    # the home file turns TCP on and names the server
    (home / ".orion" / "client.conf").write_text(f"[client]\nenable_net = yes\nserver_addr = 127.0.0.1:{oriond.port}\n")
    r = run(programs["init_only"], env=env)
    assert "cuInit: 0 CUDA_SUCCESS" in r.stdout, r.stdout + r.stderr
    assert f"transport: TCP to 127.0.0.1:{oriond.port}" in transport_line()
    # the environment over both files
    r = run(programs["init_only"], env={**env, "ORION_ENABLE_NET": "0", "ORION_SERVER": "127.0.0.1:1"})
    assert "cuInit: 0 CUDA_SUCCESS" in r.stdout and "transport: shm device" in transport_line(), r.stderr
    # a base without a device: the reason names where it came from
    etc.write_text(f"[client-shm]\nshm_path_base = {tmp_path}\n")
    r = run(programs["init_only"], env={**env, "ORION_ENABLE_NET": "false"})
    assert f"shm_path_base {tmp_path} (from {etc}) holds no Orion device" in r.stderr, r.stderr
    # bad values
    (home / ".orion" / "client.conf").write_text("[client]\nenable_net = maybe\n")
    r = run(programs["init_only"], env=env)
    assert f"enable_net = 'maybe' (from {home}/.orion/client.conf): expected true or false" in r.stderr, r.stderr
    assert "cuInit: 100" in r.stdout, r.stdout
    r = run(programs["init_only"], env={**env, "ORION_CONNECT_TIMEOUT": "soon"})
    assert ("connect_timeout = 'soon' (from environment ORION_CONNECT_TIMEOUT): expected a positive number of "
            "seconds") in r.stderr, r.stderr


PTX_FUZZ = r"""
#include "orion_ptx.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text, f);
    fclose(f);
    uint32_t sizes[8];
    int base = orion_ptx_param_sizes(text, n, "fill_u32", sizes, 8);
    printf("fill_u32: %d parameters (%u %u %u)\n", base, sizes[0], sizes[1], sizes[2]);
    srand(7);
    char *m = malloc(n);
    for (int round = 0; round < atoi(argv[2]); round++) {
        size_t len = (size_t)rand() % (n + 1);
        memcpy(m, text, len);
        for (int k = rand() % 8; k >= 0 && len; k--) m[(size_t)rand() % len] = (char)(rand() % 256);
        orion_ptx_param_sizes(m, len, "fill_u32", sizes, 8);  /* exactly len bytes: ASan sees any over-read */
        orion_ptx_param_sizes(m, len, "vectorAdd", sizes, 1);
        orion_ptx_is_text(m, len);
    }
    printf("mutations: done\n");
    free(m);
    return 0;
}
"""


def test_the_ptx_reader_is_total_on_mutated_text(tmp_path: Path) -> None:
    """The client reads an application's PTX to check oriond's parameter layouts: any bytes give
    a count or -1, never a read past them (address and UB sanitizers, 20,000 mutations)."""
    src = tmp_path / "ptx_fuzz.c"
    src.write_text(PTX_FUZZ)
    exe = tmp_path / "ptx_fuzz"
    native = ROOT / "orion_virt" / "client" / "native"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        f"-I{native}", str(src), str(native / "orion_ptx.c"), "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    r = subprocess.run([str(exe), str(PTX), "20000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fill_u32: 3 parameters (8 4 4)" in r.stdout and "mutations: done" in r.stdout
