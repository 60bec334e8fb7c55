"""The native client (build/native/libcuda.so.1) in a controller-managed pool, with no Python in
the application: a real ``orion-controller`` (SQLite store, short lease) and a real ``oriond``
(sim backend, token mode) registered with it; C programs built against NVIDIA's cuda.h run with
ORION_CONTROLLER set and no ORION_SERVER. What a user checks: the devices and memory granted, the
allocation at the controller while the program runs and gone after it (normal exit, SIGTERM,
SIGINT), the lease renewed over several lease periods, and the seeds' lines when the controller
refuses or cannot be reached, as the Python client's tests (test_controller_e2e.py) assert them.
Fake controllers answer what a real one never would: the client must fail cleanly, not hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt import compat
from orion_virt.config import load_server_config
from orion_virt.controller import client as ctl
from orion_virt.controller.exceptions import ControllerUnreachable
from orion_virt.launch import OriondProcess, free_port
from orion_virt.server.authorize import node_id
from tests.integration.test_controller_e2e import wait_for
from tests.integration.test_native_client import cuda_include
from tests.oriond_fixture import BIN, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BUILD = ROOT / "build" / "native"
NATIVE = ROOT / "orion_virt" / "client" / "native"
SOURCES = ROOT / "tests" / "native"
EXIT_WITH = re.compile(r"Client exits with allocation ID (\S+)")
LEASE = 2.0

# Holds its session: cuInit, "ready N", then a remoted call every 0.2 s until argv[1] seconds
# passed or the file argv[2] exists; with argv[3] == "own", the program has its own SIGTERM
# handler (the library must leave it alone) and ends normally on SIGTERM.
HOLD_C = r"""
#define _DEFAULT_SOURCE
#include <cuda.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void on_term(int sig) { got = sig; }

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0;
    const char *go = argc > 2 && strcmp(argv[2], "-") ? argv[2] : NULL;
    if (argc > 3 && !strcmp(argv[3], "own")) signal(SIGTERM, on_term);
    CUresult r = cuInit(0);
    if (r != CUDA_SUCCESS) { printf("cuInit %d\n", (int)r); return 3; }
    int n = 0;
    cuDeviceGetCount(&n);
    printf("ready %d\n", n);
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int calls = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        double el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
        if (got) { printf("got signal %d\n", (int)got); break; }
        if (go ? access(go, F_OK) == 0 : el >= secs) break;
        CUresult e = cuDeviceGetCount(&n);
        calls++;
        if (e != CUDA_SUCCESS) {
            const char *name = "?";
            cuGetErrorName(e, &name);
            printf("call %d failed after %.1f s: %s\n", calls, el, name);
            return 4;
        }
        usleep(200000);
    }
    printf("after %d calls, %d device(s)\n", calls, n);
    return 0;
}
"""


def gcc(src: Path, exe: Path, *extra: str) -> None:
    inc = cuda_include()
    assert inc is not None, "cuda.h not found after make native (pip install nvidia-cuda-runtime)"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{inc}",
                        f"-I{SOURCES}", str(src), *extra, "-o", str(exe)], capture_output=True, text=True,
                       timeout=180)
    assert c.returncode == 0, f"{src.name}:\n{c.stderr}"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the native client (make test-deps installs it)")
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    out = tmp_path_factory.mktemp("native-ctl-programs")
    (out / "hold.c").write_text(HOLD_C)
    built = {}
    for src in (SOURCES / "deviceQuery.c", SOURCES / "init_only.c", out / "hold.c"):
        built[src.stem] = out / src.stem
        gcc(src, built[src.stem], f"-L{BUILD}", "-lcuda")
    return built


class Pool:
    """orion-controller (lease ``lease`` s) and one oriond in token mode registered with it."""

    def __init__(self, tmp: Path, lease: float = LEASE) -> None:
        self.tmp = tmp
        self.addr = f"127.0.0.1:{free_port()}"
        self.key = tmp / "token.key"
        self.shm = tmp / "shm-node"
        self.shm.mkdir(exist_ok=True)
        self.log = tmp / "controller.log"
        with open(tmp / "controller.out", "w") as f:
            self.controller = subprocess.Popen(
                [str(BIN / "orion-controller"), "start", "-i", "127.0.0.1", "-p", self.addr.rpartition(":")[2],
                 "--kv", f"sqlite://{tmp}/controller.db", "--token-key", str(self.key),
             "--api-key", str(tmp / "controller.key"), "--client-key", str(tmp / "client.key"),
             "--portal-passwd", str(tmp / "portal.passwd"), "--log", str(self.log),
                 "--vgpu", "4", "--lease", str(lease), "--heartbeat-timeout", "5"],
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.oriond: OriondProcess | None = None
        wait_for(self._up, 20, "the controller")
        self.admin = ctl.load_signer("node", str(tmp / "controller.key"))  # an operator's tool
        port = free_port()
        conf = tmp / "node.conf"
        conf.write_text(f"""
[server]
    listen_port = {port}
    bind_addr = 127.0.0.1
    vgpu_count = 4
    backend = sim
[server-shm]
    shm_path_base = {self.shm}
[controller]
    controller_addr = {self.addr}
    token_key_file = {self.key}
    api_key_file = {tmp}/controller.key
    token_state_dir = {tmp}/tokens
""")
        self.oriond = OriondProcess(tmp / "log-node", backend=None, config=conf, port=port,
                                    extra=["--sim-gpus", "2"], output=tmp / "node.out", start_new_session=True)
        self.oriond.start(timeout=30)
        self.port = port
        nid = node_id(load_server_config(conf))
        wait_for(lambda: any(n["node_id"] == nid and n["up"] for n in ctl.nodes(self.addr)), 20,
                 "oriond to register")

    def _up(self) -> bool:
        try:
            ctl.get_version(self.addr, timeout=1)
            return True
        except ControllerUnreachable:
            assert self.controller.poll() is None, (self.tmp / "controller.out").read_text()
            return False

    def env(self, **extra: str) -> dict[str, str]:
        """The program's environment: the controller, no ORION_SERVER, no config files, no shm
        devices; an empty value removes a variable."""
        (self.tmp / "home").mkdir(exist_ok=True)
        (self.tmp / "no-shm").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
        env.update(HOME=str(self.tmp / "home"), ORION_CONTROLLER=self.addr, LD_LIBRARY_PATH=str(BUILD),
                   ORION_CLIENT_CONF_ETC=str(self.tmp / "no-client.conf"),
                   ORION_SHM_PATH_BASE=str(self.tmp / "no-shm"), ORION_VGPU="1",
                   ORION_CLIENT_KEY_FILE=str(self.tmp / "client.key"))
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def free(self) -> int:
        return ctl.summary(self.addr).free_vgpus

    def controller_log(self) -> str:
        return self.log.read_text()

    def session_logs(self) -> str:
        d = self.tmp / "log-node" / "session"
        return "".join(f.read_text() for f in sorted(d.iterdir())) if d.is_dir() else ""

    def close(self) -> None:
        if self.oriond is not None:
            self.oriond.stop()
        if self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(10)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    p = Pool(tmp_path_factory.mktemp("native-ctl"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(autouse=True)
def _pool_is_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test on the shared pool leaves it whole (8 vGPUs: 2 GPUs x 4)."""
    if "pool" not in request.fixturenames:
        yield
        return
    p: Pool = request.getfixturevalue("pool")
    assert p.free() == 8
    yield
    wait_for(lambda: p.free() == 8, 10, "the pool to be whole again")


def run(exe: Path, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)


def released_by_client(p: Pool, aid: str) -> bool:
    """Released at the program's exit: by its own DELETE, or by oriond's end-of-session notice
    when that reaches the controller first (the program's DELETE then finds it gone)."""
    return re.search(rf"allocation {aid} released(: its session on node \S+ ended)?$", p.controller_log(),
                     re.M) is not None


def exit_id(stderr: str) -> str | None:
    m = EXIT_WITH.search(stderr)
    return m.group(1) if m else None


def lines(stderr: str) -> list[str]:
    return [ln.split("] ", 1)[-1] for ln in stderr.splitlines()]


# -- the seeds' lines, byte for byte ------------------------------------------------------------


def test_the_c_messages_are_the_python_clients() -> None:
    header = (NATIVE / "orion_ctl.h").read_text()
    defined = dict(re.findall(r'#define (ORION_MSG_\w+) "([^"]*)"', header))
    assert defined["ORION_MSG_CONNECT"] == compat.MSG_CONNECT
    assert defined["ORION_MSG_VERSION"] == compat.MSG_VERSION


# -- the normal path ----------------------------------------------------------------------------


def test_device_query_gets_its_vgpus_from_the_controller(programs: dict[str, Path], pool: Pool) -> None:
    env = pool.env(ORION_VGPU="2", ORION_GMEM="4096")
    assert "ORION_SERVER" not in env
    r = run(programs["deviceQuery"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected 2 CUDA Capable device(s)" in r.stdout
    assert r.stdout.count("Total amount of global memory: 4096 MBytes") == 2
    assert "Result = PASS" in r.stdout
    aid = exit_id(r.stderr)
    assert aid and len(EXIT_WITH.findall(r.stderr)) == 1, r.stderr
    assert r.stderr.startswith("VirtaiTech Resource. Build-cuda-orion_virt-")
    # the controller granted it, the server admitted exactly that grant, the client gave it back
    assert f"allocation {aid} (vgpu=2 gmem=4096" in pool.controller_log()
    assert f"allocation '{aid}': 2 vGPU(s) 4096 MiB" in pool.session_logs()
    wait_for(lambda: released_by_client(pool, aid), 3, "the release")
    assert pool.free() == 8
    with pytest.raises(ctl.NotFound):
        ctl.renew(pool.addr, aid, signer=pool.admin)


def test_in_a_vm_the_client_key_comes_from_the_host_agents_fwcfg_entry(programs: dict[str, Path], pool: Pool,
                                                                         tmp_path: Path) -> None:
    """No key file in the guest: the key `orion-virt attach --client-key` wrote into the fw_cfg
    entry signs the allocation; without either, the controller refuses it, saying which key."""
    fw = tmp_path / "fwcfg"
    fw.write_text(f"client_key={(pool.tmp / 'client.key').read_text().strip()}")
    env = pool.env(ORION_CLIENT_KEY_FILE=str(tmp_path / "absent.key"), ORION_FWCFG_PATH=str(fw),
                   ORION_LOG_LEVEL="DEBUG")
    r = run(programs["deviceQuery"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "client key from fw_cfg opt/org.orion/config (no " in r.stderr
    assert "Result = PASS" in r.stdout
    fw.write_text("server_addr=10.0.2.2:9960")
    r = run(programs["deviceQuery"], env=env)
    assert r.returncode != 0 and "client key" in r.stderr, r.stderr


def test_the_allocation_is_at_the_controller_while_the_program_runs(programs: dict[str, Path], pool: Pool,
                                                                    tmp_path: Path) -> None:
    go = tmp_path / "go"
    p = subprocess.Popen([str(programs["hold"]), "0", str(go)], env=pool.env(ORION_VGPU="2", ORION_GMEM="2048",
                                                                             ORION_GROUP_ID="team-a"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "2"]
        [task] = ctl.tasks(pool.addr)
        assert task["group_id"] == "team-a"
        assert [v["memory_mib"] for v in task["vgpus"]] == [2048, 2048]
        assert pool.free() == 6
        go.touch()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    assert exit_id(err) == task["allocation_id"]
    wait_for(lambda: released_by_client(pool, task["allocation_id"]), 3, "the release")
    assert ctl.tasks(pool.addr) == []


def test_the_lease_is_renewed_over_several_lease_periods(programs: dict[str, Path], pool: Pool) -> None:
    """Lease 2 s: the first token expires after 2 s (+2 s grace at oriond). A remoted call every
    0.2 s for 9 s succeeds only if the controller renewed the lease and every renewed token
    reached oriond in a RENEW frame."""
    p = subprocess.Popen([str(programs["hold"]), "9"], env=pool.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "1"]
        [task] = ctl.tasks(pool.addr)
        time.sleep(3 * LEASE)
        [again] = ctl.tasks(pool.addr)  # still there, with a later lease end
        assert again["allocation_id"] == task["allocation_id"]
        assert again["expires_at"] > task["expires_at"] + LEASE
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    m = re.search(r"after (\d+) calls", out)
    assert m and int(m.group(1)) >= 30, out
    assert "expired" not in err and "was released by the Orion Controller" not in err, err
    assert exit_id(err) == task["allocation_id"]
    aid = task["allocation_id"]
    assert f"allocation {aid} released: lease expired" not in pool.controller_log()
    wait_for(lambda: released_by_client(pool, aid), 3, "the release")


def test_an_allocation_the_controller_took_back_ends_the_session(programs: dict[str, Path], pool: Pool) -> None:
    """Released behind the client's back (as when its node went down): the next renewal learns
    it, says so once, and the program's calls fail from then on instead of using vGPUs that may
    be lent to someone else."""
    p = subprocess.Popen([str(programs["hold"]), "20"], env=pool.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "1"]
        [task] = ctl.tasks(pool.addr)
        aid = task["allocation_id"]
        t0 = time.monotonic()
        ctl.release(pool.addr, aid, signer=pool.admin)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert time.monotonic() - t0 < LEASE + 2
    assert p.returncode == 4 and "failed" in out, out + err
    # whoever learns it first says it once: the client's next renewal, or oriond, which the
    # controller tells to revoke the token (it then ends the session with that reason)
    if "CUDA_ERROR_DEINITIALIZED" in out:
        assert err.count(f"[ERROR] Orion vGPU allocation {aid} was released by the Orion Controller (") == 1, err
        assert "; CUDA calls fail from now on" in err
    else:
        assert "CUDA_ERROR_NOT_PERMITTED" in out, out
        assert err.count(f"oriond ended the session: allocation {aid} was released with the Orion Controller") == 1, err
    assert exit_id(err) == aid


def test_over_shared_memory_with_a_controller_grant(programs: dict[str, Path], pool: Pool) -> None:
    """A device of the allocated node's oriond: the session runs over it (ORION_SERVER names a
    port nothing listens on, which the server_for rule would use for TCP)."""
    subprocess.run([str(BIN / "orion-shm"), "-i", "3", "--size", "16", "--path-base", str(pool.shm)],
                   check=True, capture_output=True)
    try:
        r = run(programs["deviceQuery"], env=pool.env(ORION_VGPU="2", ORION_GMEM="1024",
                                                      ORION_SHM_PATH_BASE=str(pool.shm),
                                                      ORION_SERVER="127.0.0.1:1"))
    finally:
        (pool.shm / "orionsock3").unlink(missing_ok=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("Total amount of global memory: 1024 MBytes") == 2
    assert "using TCP" not in r.stderr
    assert exit_id(r.stderr)


# -- release at exit paths -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_releases_the_allocation_at_once(programs: dict[str, Path], pool: Pool, tmp_path: Path,
                                                  sig: signal.Signals) -> None:
    p = subprocess.Popen([str(programs["hold"]), "0", str(tmp_path / "never")], env=pool.env(ORION_VGPU="2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "2"]
        [task] = ctl.tasks(pool.addr)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -sig, (p.returncode, out, err)  # still dies of the signal
    assert exit_id(err) == task["allocation_id"], err
    assert released_by_client(pool, task["allocation_id"])  # before it died: no lease expiry
    assert pool.free() == 8


def test_a_programs_own_sigterm_handler_is_left_alone(programs: dict[str, Path], pool: Pool,
                                                      tmp_path: Path) -> None:
    p = subprocess.Popen([str(programs["hold"]), "0", str(tmp_path / "never"), "own"], env=pool.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "1"]
        [task] = ctl.tasks(pool.addr)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and f"got signal {int(signal.SIGTERM)}" in out, out + err
    assert exit_id(err) == task["allocation_id"]  # the normal exit path released it
    wait_for(lambda: released_by_client(pool, task["allocation_id"]), 3, "the release")


def test_a_server_that_cannot_be_reached_gives_the_allocation_back(programs: dict[str, Path],
                                                                   pool: Pool) -> None:
    """The node registered a loopback address, so the client's own ORION_SERVER is used for it
    (the Python client's server_for rule); nothing listens there. The allocation is released at
    once, and the exit line still names it (as the seeds print it when the server is down)."""
    dead = free_port()
    r = run(programs["init_only"], env=pool.env(ORION_SERVER=f"127.0.0.1:{dead}"))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert f"cannot connect to oriond at 127.0.0.1:{dead}" in r.stderr
    aid = exit_id(r.stderr)
    assert aid, r.stderr
    assert released_by_client(pool, aid)


# -- refusals and an unreachable controller --------------------------------------------------------


def test_a_refused_allocation_fails_cuinit_with_the_reason_once(programs: dict[str, Path], pool: Pool) -> None:
    r = run(programs["init_only"], env=pool.env(ORION_VGPU="9"))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert "cuDeviceGetCount: 3 CUDA_ERROR_NOT_INITIALIZED" in r.stdout
    assert r.stderr.count(f"Orion Controller {pool.addr} refused 9 vGPU(s): request needs more than one node "
                          "can hold") == 1, r.stderr
    assert "Fail to get version information" not in r.stderr
    assert r.stderr.rstrip().endswith("Client exits without allocation ID")
    r = run(programs["init_only"], env=pool.env(ORION_GMEM="20000"))
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert r.stderr.count("exceeds the memory of any single GPU (16384 MiB)") == 1, r.stderr
    assert r.stderr.rstrip().endswith("Client exits without allocation ID")


@pytest.mark.parametrize("how", ["ORION_CONTROLLER", "ORION_OCNTROLLER", "client.conf"])
def test_an_unreachable_controller_prints_the_seed_messages(programs: dict[str, Path], tmp_path: Path,
                                                            how: str) -> None:
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(HOME=str(tmp_path), LD_LIBRARY_PATH=str(BUILD), ORION_VGPU="1",
               ORION_CLIENT_CONF_ETC=str(tmp_path / "none.conf"), ORION_SHM_PATH_BASE=str(tmp_path))
    origin = f"environment {how}"
    if how == "client.conf":
        conf = tmp_path / ".orion" / "client.conf"
        conf.parent.mkdir()
        conf.write_text(f'[controller]\n    controller_addr = "{addr}"   ; the pool\n')
        origin = str(conf)
    else:
        env[how] = addr
    r = run(programs["init_only"], env=env)
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    got = lines(r.stderr)
    i = got.index(compat.MSG_CONNECT)
    assert got[i + 1] == compat.MSG_VERSION
    assert got[i + 2] == f"Orion Controller {addr} (from {origin}): Connection refused"
    assert got[-1] == compat.MSG_NO_ALLOCATION
    assert r.stderr.count(compat.MSG_CONNECT) == 1


def test_a_malformed_controller_address_is_said(programs: dict[str, Path], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(HOME=str(tmp_path), LD_LIBRARY_PATH=str(BUILD), ORION_VGPU="1", ORION_CONTROLLER="nohost",
               ORION_CLIENT_CONF_ETC=str(tmp_path / "none.conf"))
    r = run(programs["init_only"], env=env)
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout
    assert "environment variable ORION_CONTROLLER='nohost': expected HOST:PORT" in r.stderr


# -- fake controllers: what a real one never answers ----------------------------------------------


class FakeController:
    """An HTTP listener whose answers ``script(method, path, body)`` gives as raw bytes (None:
    say nothing until closed). Records every request."""

    def __init__(self, script: Callable[[str, str, bytes], bytes | None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script
        self.requests: list[tuple[str, str, bytes]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(20)
            with conn:
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise OSError("closed")
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    m = re.search(rb"Content-Length: (\d+)", head, re.I)
                    while m and len(body) < int(m.group(1)):
                        body += conn.recv(4096)
                    method, path = head.split(b" ")[:2]
                    self.requests.append((method.decode(), path.decode(), body))
                    answer = self.script(method.decode(), path.decode(), body)
                    if answer is None:
                        self.done.wait(20)
                    else:
                        conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(5)


def http(status: int, body: bytes | str, extra: str = "") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}"
            f"\r\n").encode() + data


VERSION = http(200, '{"data_version": "0.1", "api_version": "0.1"}')


def allocation(nodes: tuple[str, ...] = ("n1",), server: str = "127.0.0.1:1", token: str = "o1.abc.def",
               **top: object) -> dict:
    vgpus = [{"index": i, "node_id": n, "server": server, "gpu_index": 0, "gpu_uuid": "GPU-x", "gpu_name": "x",
              "slot": i, "memory_mib": 1024, "ratio": 25, "token": token} for i, n in enumerate(nodes)]
    a = {"allocation_id": "fda38164-711b-4809-9984-2759a3a2165b", "group_id": "", "owner": "",
         "created_at": 1.0, "expires_at": 2.0, "lease_seconds": 30.0, "vgpus": vgpus,
         "tokens": {n: token for n in nodes}}
    a.update(top)
    return a


def then_allocate(answer: bytes) -> Callable[[str, str, bytes], bytes | None]:
    return lambda method, path, body: VERSION if path == "/version" else (
        answer if method == "POST" else http(200, '{"released": true}'))


def chunked(data: str) -> bytes:
    raw = data.encode()
    parts = [raw[i:i + 7] for i in range(0, len(raw), 7)]
    return (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-Trailer: 1\r\n\r\n")


def fake_run(programs: dict[str, Path], tmp_path: Path, script: Callable[[str, str, bytes], bytes | None],
             **extra: str) -> tuple[subprocess.CompletedProcess, FakeController]:
    fake = FakeController(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(HOME=str(tmp_path), LD_LIBRARY_PATH=str(BUILD), ORION_VGPU="1", ORION_CONTROLLER=fake.addr,
               ORION_CLIENT_CONF_ETC=str(tmp_path / "none.conf"), ORION_ENABLE_NET="1",
               ORION_CONNECT_TIMEOUT="1")
    env.update(extra)
    try:
        t0 = time.monotonic()
        r = run(programs["init_only"], env=env, timeout=30)
        assert time.monotonic() - t0 < 12, "the client hung on the controller"
    finally:
        fake.close()
    assert "cuInit: 100 CUDA_ERROR_NO_DEVICE" in r.stdout, r.stdout + r.stderr
    assert "cuDeviceGetCount: 3 CUDA_ERROR_NOT_INITIALIZED" in r.stdout
    return r, fake


VERSION_CASES: dict[str, tuple[Callable[[str, str, bytes], bytes | None], bool, str]] = {
    # the answer to GET /version -> (is it "unreachable"?, the reason printed after the address)
    "not HTTP": (lambda m, p, b: b"SSH-2.0-OpenSSH_9.6\r\n", True, "not an HTTP answer"),
    "silent": (lambda m, p, b: None, True, "timed out"),
    "closed at once": (lambda m, p, b: b"", True, "Remote end closed connection without response"),
    "not JSON": (lambda m, p, b: http(200, "<html>"), False, "answered HTTP 200 with non-JSON"),
    "no version": (lambda m, p, b: http(200, '{"x": 1}'), False, "did not answer version information"),
    "an error": (lambda m, p, b: http(503, '{"error": "store down"}'), False, "HTTP 503: store down"),
    "headers without end": (lambda m, p, b: b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 4000, True,
                            "HTTP headers over 16 KiB"),
}


@pytest.mark.parametrize("case", sorted(VERSION_CASES))
def test_a_controller_that_answers_no_version(programs: dict[str, Path], tmp_path: Path, case: str) -> None:
    script, unreachable, reason = VERSION_CASES[case]
    r, fake = fake_run(programs, tmp_path, script)
    got = lines(r.stderr)
    assert (compat.MSG_CONNECT in got) is unreachable, r.stderr
    i = got.index(compat.MSG_VERSION)
    assert got[i + 1].startswith(f"Orion Controller {fake.addr} (from environment ORION_CONTROLLER): ")
    assert got[i + 1].endswith(reason), got[i + 1]
    assert got[-1] == compat.MSG_NO_ALLOCATION
    assert [m for m, _p, _b in fake.requests] == ["GET"]  # no allocation was asked for


DEEP = '{"a": ' * 9 + "1" + "}" * 9
ALLOCATION_CASES: dict[str, tuple[bytes, str]] = {
    "not JSON": (http(201, "{'allocation_id': 1}"), "answered HTTP 201 with non-JSON"),
    "trailing comma": (http(201, '{"allocation_id": "a",}'), "answered HTTP 201 with non-JSON"),
    "nested too deep": (http(201, DEEP), "answered HTTP 201 with non-JSON"),
    "invalid UTF-8": (http(201, b'{"allocation_id": "\xff"}'), "answered HTTP 201 with non-JSON"),
    "a NUL escape": (http(201, json.dumps(allocation(allocation_id="a\u0000b"))), "'allocation_id' is missing"),
    "a path in the id": (http(201, json.dumps(allocation(allocation_id="../../nodes/x"))), "'allocation_id'"),
    "no vgpus": (http(201, json.dumps({k: v for k, v in allocation().items() if k != "vgpus"})), "'vgpus'"),
    "memory a string": (http(201, json.dumps(allocation()).replace('"memory_mib": 1024', '"memory_mib": "1"')),
                        "vgpus[0].memory_mib"),
    "a token with a newline": (http(201, json.dumps(allocation(token="o1.a\nb"))), "no token for node 'n1'"),
    "a token over 16 KiB": (http(201, json.dumps(allocation(token="t" * 20000))), "no token for node 'n1'"),
    "over 1 MiB": (http(201, "[" + "0," * 600000 + "0]"), "over 1 MiB"),
    "cut short": (http(201, json.dumps(allocation()))[:-10], "the answer was cut short"),
    "a bad chunk": (b"HTTP/1.1 201 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunked"),
    "5000 values": (http(201, "[" + ",".join(["1"] * 5000) + "]"), "answered HTTP 201 with non-JSON"),
}


@pytest.mark.parametrize("case", sorted(ALLOCATION_CASES))
def test_a_malformed_allocation_fails_cleanly(programs: dict[str, Path], tmp_path: Path, case: str) -> None:
    answer, reason = ALLOCATION_CASES[case]
    r, fake = fake_run(programs, tmp_path, then_allocate(answer))
    assert r.returncode == 3, r.stdout + r.stderr  # no crash
    [line] = [ln for ln in lines(r.stderr) if reason in ln]
    where = f"Orion Controller {fake.addr} (from environment ORION_CONTROLLER): allocation failed: "
    if line.startswith(where):  # no HTTP exchange: the seeds' first line before it
        assert lines(r.stderr).count(compat.MSG_CONNECT) == 1
        assert line.startswith(f"{where}{compat.MSG_CONNECT} {fake.addr}: "), line
    else:
        assert line.startswith(f"Orion Controller {fake.addr} could not allocate 1 vGPU(s): "), line
    assert compat.MSG_VERSION not in r.stderr
    assert lines(r.stderr)[-1] == compat.MSG_NO_ALLOCATION


def test_a_chunked_answer_is_read_and_names_the_server(programs: dict[str, Path], tmp_path: Path) -> None:
    """A well-formed allocation in chunks (extensions and a trailer included): the client goes
    on to the server it names, which the test left closed."""
    dead = free_port()
    r, fake = fake_run(programs, tmp_path, then_allocate(chunked(json.dumps(allocation(server=f"10.0.0.1:{dead}")))),
                       ORION_SERVER=f"127.0.0.1:{dead}")
    # 10.0.0.1 is not local: ORION_SERVER does not replace it (a timeout of 1 s, or unreachable)
    assert f"cannot connect to oriond at 10.0.0.1:{dead}" in r.stderr, r.stderr
    assert exit_id(r.stderr) == "fda38164-711b-4809-9984-2759a3a2165b"
    body = json.loads(fake.requests[1][2])
    import pwd

    who = f"{pwd.getpwuid(os.geteuid()).pw_name}@{socket.gethostname()}"
    assert body == {"vgpu": 1, "gmem_mib": None, "ratio": None, "cross_node": False, "group_id": "",
                    "owner": who, "cmdline": str(programs["init_only"])}
    assert fake.requests[-1][:2] == ("DELETE", "/api/v1/allocations/fda38164-711b-4809-9984-2759a3a2165b")


def test_a_cross_node_allocation_whose_server_is_down_is_given_back(programs: dict[str, Path], tmp_path: Path) -> None:
    """The cross-node request is sent as the Python client sends it; a node that cannot be reached
    fails cuInit with the seeds' line and the vGPUs go back at once (the router itself runs against
    real servers in test_controller_e2e)."""
    r, fake = fake_run(programs, tmp_path, then_allocate(http(201, json.dumps(allocation(("n1", "n2"))))),
                       ORION_VGPU="2", ORION_CROSS_NODE="1", ORION_RATIO="100")
    assert r.stderr.count("[ERROR] Could not connect to server: cannot connect to oriond at ") == 1, r.stderr
    assert "cuInit: 100" in r.stdout, r.stdout
    assert json.loads(fake.requests[1][2])["cross_node"] is True
    assert fake.requests[-1][:2] == ("DELETE", "/api/v1/allocations/fda38164-711b-4809-9984-2759a3a2165b")
    assert exit_id(r.stderr) == "fda38164-711b-4809-9984-2759a3a2165b"  # as after any grant


def test_the_grant_parser_survives_mutated_answers(tmp_path: Path) -> None:
    """orion_ctl.c's JSON reader under AddressSanitizer and UBSan: a real allocation answer,
    mutated 20000 times (bytes flipped, cut, brackets and quotes and escapes spliced in)."""
    inc = cuda_include()
    assert inc is not None
    driver = tmp_path / "driver.c"
    driver.write_text(r"""
#include "orion_ctl.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
void orion_log(const char *level, const char *fmt, ...) { (void)level; (void)fmt; }
void orion_log_file(const char *level, const char *text) { (void)level; (void)text; }
int orion_send_renew(int part, const void *body, uint32_t len) { (void)part; (void)body; (void)len; return 0; }
void orion_session_lost(void) {}
int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    static char seed[1 << 16], buf[1 << 17];
    size_t n = fread(seed, 1, sizeof seed, f);
    fclose(f);
    static orion_grant g;
    char why[400];
    if (orion_ctl_parse_grant(seed, n, &g, why, sizeof why)) { printf("seed: %s\n", why); return 1; }
    printf("seed ok: %s %d vGPU(s) %u MiB token %zu\n", g.allocation_id, g.vgpu_count, g.parts[0].gmem_mib,
           strlen(g.parts[0].token));
    static const char *splice[] = {"{", "}", "[", "]", "\"", "\\", "\\u", "\\ud800", ",", ":", "1e999", "-", "\xff",
                                   "\xc3", "null", "\"\\u0000\""};
    srand(7);
    int ok = 0;
    for (int i = 0; i < atoi(argv[2]); i++) {
        size_t m = n;
        memcpy(buf, seed, n);
        for (int k = rand() % 4; k >= 0; k--) {
            size_t at = (size_t)rand() % (m + 1);
            switch (rand() % 4) {
            case 0: if (at < m) buf[at] = (char)rand(); break;
            case 1: m = at; break;
            case 2: if (at < m) { memmove(buf + at, buf + at + 1, m - at - 1); m--; } break;
            default: {
                const char *s = splice[rand() % (sizeof splice / sizeof *splice)];
                size_t l = strlen(s);
                if (m + l < sizeof buf) { memmove(buf + at + l, buf + at, m - at); memcpy(buf + at, s, l); m += l; }
            }
            }
        }
        char *copy = malloc(m ? m : 1);  /* exactly m bytes: a read past them is caught */
        memcpy(copy, buf, m);
        ok += orion_ctl_parse_grant(copy, m, &g, why, sizeof why) == 0;
        free(copy);
    }
    printf("mutations parsed: %d\n", ok);
    return 0;
}
""")
    exe = tmp_path / "driver"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        "-pthread", f"-I{NATIVE}", f"-I{inc}", str(driver), str(NATIVE / "orion_ctl.c"),
                        str(NATIVE / "orion_conf.c"),
                        "-o", str(exe)], capture_output=True, text=True, timeout=180)
    assert c.returncode == 0, c.stderr
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(allocation(("n1", "n1", "n1"), token="o1.eyJhIjoiZmRhIn0.c2ln", group_id="g\u00e9\n")))
    r = subprocess.run([str(exe), str(seed), "20000"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed ok: fda38164-711b-4809-9984-2759a3a2165b 3 vGPU(s) 1024 MiB token 23" in r.stdout
