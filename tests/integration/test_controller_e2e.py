"""End to end with real processes on loopback: ``orion-controller start`` (SQLite store in a temp
dir), ``oriond`` (sim backend, token mode: controller_addr + a shared token key file) and client
programs run through ``orion-run``. Release paths (normal exit, kill -9 of a client, loss of the
server, clean server stop), exclusivity under concurrency, quotas under a controller grant,
transports, the seeds' messages and ``orion-check`` against the running system.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt.config import load_server_config
from orion_virt.controller import client as ctl
from orion_virt.controller.exceptions import ControllerUnreachable
from orion_virt.controller.token import Grant, VGpuQuota, issue_token, load_key
from orion_virt.cuda_enums import CUresult
from orion_virt.errors import Refused, TransportError
from orion_virt.launch import OriondProcess, free_port
from orion_virt.server.authorize import node_id
from orion_virt.transport import tcp
from orion_virt.transport.shmdev import Device
from orion_virt.wire import Hello

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
PTX = ROOT / "orion_virt" / "kernels" / "test_kernels.ptx"
EXIT_WITH = re.compile(r"Client exits with allocation ID (\S+)")

HOLD = """
import os, sys, time
from cuda.bindings import driver as cuda
err, = cuda.cuInit(0)
if int(err):
    sys.exit(3)
err, n = cuda.cuDeviceGetCount()
print("ready", n, flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
err, n2 = cuda.cuDeviceGetCount()
print("after", int(err), n2, flush=True)
"""

OOM = """
import sys
from cuda.bindings import driver as cuda
assert int(cuda.cuInit(0)[0]) == 0
err, dev = cuda.cuDeviceGet(0)
err, total = cuda.cuDeviceTotalMem(dev)
err, ctx = cuda.cuCtxCreate(None, 0, dev)
e1, p1 = cuda.cuMemAlloc(200 << 20)
e2, p2 = cuda.cuMemAlloc(100 << 20)
print("total", total >> 20, "first", int(e1), "second", e2.name, flush=True)
"""

SPIN = """
import sys, time
import numpy as np
from cuda.bindings import driver as cuda
assert int(cuda.cuInit(0)[0]) == 0
err, dev = cuda.cuDeviceGet(0)
err, ctx = cuda.cuCtxCreate(None, 0, dev)
err, mod = cuda.cuModuleLoadData(open(sys.argv[1], "rb").read() + b"\\0")
err, fn = cuda.cuModuleGetFunction(mod, b"spin")
assert int(err) == 0, err
err, out = cuda.cuMemAlloc(4)
ns = np.array([50_000_000], dtype=np.int64)
po = np.array([int(out)], dtype=np.uint64)
params = np.array([ns.ctypes.data, po.ctypes.data], dtype=np.uint64)
t0 = time.perf_counter()
for _ in range(4):
    assert int(cuda.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, 0, params.ctypes.data, 0)[0]) == 0
assert int(cuda.cuCtxSynchronize()[0]) == 0
wall = time.perf_counter() - t0
got = np.zeros(1, dtype=np.int32)
cuda.cuMemcpyDtoH(got.ctypes.data, out, 4)
print(f"wall {wall:.3f} count {int(got[0])}", flush=True)
"""


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stop_proc(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process this test started, and whatever it forked (its own session)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # orphaned session workers, if any
    except (ProcessLookupError, PermissionError):
        pass


class Stack:
    """A controller and the oriond processes of one test (or module), in ``tmp``."""

    def __init__(self, tmp: Path, lease: float = 2.0, heartbeat_timeout: float = 3.0) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.key = tmp / "token.key"
        self.home = tmp / "home"
        self.no_shm = tmp / "no-shm"
        for d in (self.home, self.no_shm):
            d.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self._controller_argv = (
            [BIN / "orion-controller", "start", "-i", "127.0.0.1", "-p", str(self.port),
             "--kv", f"sqlite://{tmp}/controller.db", "--token-key", str(self.key),
             "--api-key", str(tmp / "controller.key"), "--client-key", str(tmp / "client.key"),
             "--portal-passwd", str(tmp / "portal.passwd"),
             "--log", str(tmp / "controller.log"), "--vgpu", "4", "--lease", str(lease),
             "--heartbeat-timeout", str(heartbeat_timeout)])
        self.controller = self._spawn(self._controller_argv, tmp / "controller.out")
        wait_for(self._version, 20, "the controller")
        # what a user configures: applications sign with the client key, tools with the API key
        self.client = ctl.load_signer("client", str(tmp / "client.key"))
        self.admin = ctl.load_signer("node", str(tmp / "controller.key"))
        self.servers: dict[str, tuple[subprocess.Popen, Path]] = {}

    def restart_controller(self) -> None:
        """Start the controller again on the same port, store and keys (after it was killed)."""
        self.controller = self._spawn(self._controller_argv, self.tmp / "controller-2.out")
        wait_for(self._version, 20, "the restarted controller")

    def _version(self) -> bool:
        try:
            ctl.get_version(self.addr, timeout=1)
            return True
        except ControllerUnreachable:
            assert self.controller.poll() is None, (self.tmp / "controller.out").read_text()
            return False

    def _spawn(self, argv: list, out: Path) -> subprocess.Popen:
        with open(out, "w") as f:
            p = subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def server_conf(self, name: str, port: int, controller: str, shm: Path) -> Path:
        conf = self.tmp / f"{name}.conf"
        conf.write_text(f"""
[server]
    listen_port = {port}
    bind_addr = 127.0.0.1
    vgpu_count = 4
    backend = sim
[server-shm]
    shm_path_base = {shm}
[controller]
    controller_addr = {controller}
    token_key_file = {self.key}
    api_key_file = {self.tmp}/controller.key
    token_state_dir = {self.tmp}/tokens
""")
        return conf

    def start_oriond(self, name: str = "node", controller: str | None = None,
                     register: bool = True, port: int | None = None, gpus: int = 2) -> Path:
        port = port or free_port()
        shm = self.tmp / f"shm-{name}"
        shm.mkdir(exist_ok=True)
        conf = self.server_conf(name, port, controller or self.addr, shm)
        launcher = OriondProcess(self.tmp / f"log-{name}", backend=None, config=conf, port=port,
                                 extra=["--sim-gpus", str(gpus)], output=self.tmp / f"{name}.out",
                                 start_new_session=True)
        launcher.start(timeout=20)
        p = launcher.proc
        assert p is not None
        self.procs.append(p)
        self.servers[name] = (p, conf)
        nid = node_id(load_server_config(conf))
        if register:
            wait_for(lambda: any(n["node_id"] == nid and n["up"] for n in ctl.nodes(self.addr))
                     or p.poll() is not None, 20, f"oriond {name} to register")
        assert p.poll() is None, (self.tmp / f"{name}.out").read_text()
        return conf

    def env(self, **extra: str) -> dict[str, str]:
        return client_env(self.tmp, self.addr, **extra)

    def script(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def run(self, argv: list, env: dict[str, str], timeout: float = 60
            ) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "orion-run"), *map(str, argv)], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def spawn(self, argv: list, env: dict[str, str]) -> subprocess.Popen:
        p = subprocess.Popen([str(BIN / "orion-run"), *map(str, argv)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def summary(self) -> ctl.Summary:
        return ctl.summary(self.addr)

    def close(self) -> None:
        for p in reversed(self.procs):
            stop_proc(p)


def client_env(tmp: Path, controller: str, **extra: str) -> dict[str, str]:
    """A client environment: no config files, no shm devices, HOME (client logs) in ``tmp``;
    an empty value removes a variable."""
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "no-shm").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    env.update(HOME=str(tmp / "home"), ORION_CONTROLLER=controller,
               ORION_CLIENT_CONF_ETC=str(tmp / "no-client.conf"),
               ORION_SHM_PATH_BASE=str(tmp / "no-shm"), ORION_VGPU="1",
               ORION_CLIENT_KEY_FILE=str(tmp / "client.key"))
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def latest_client_log(home: Path) -> str:
    logs = sorted((home / ".orion" / "log").glob("client-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


def exit_id(stderr: str) -> str | None:
    m = EXIT_WITH.search(stderr)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("e2e"))
    try:
        s.start_oriond()
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _pool_is_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that uses the shared stack leaves the pool as it found it."""
    if "stack" not in request.fixturenames:
        yield
        return
    s: Stack = request.getfixturevalue("stack")
    assert s.summary().free_vgpus == 8
    yield
    wait_for(lambda: s.summary().free_vgpus == 8, 10, "the pool to be whole again")


# -- normal path and messages --------------------------------------------------------------------


def test_normal_exit_allocates_and_releases(stack: Stack) -> None:
    r = stack.run([sys.executable, ROOT / "examples" / "vectorAdd.py"],
                  stack.env(ORION_VGPU="2", ORION_GMEM="4096"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("sum check: PASSED") == 2
    aid = exit_id(r.stderr)
    assert aid, r.stderr
    log = (stack.tmp / "controller.log").read_text()
    assert f"allocation {aid} (vgpu=2 gmem=4096" in log and f"allocation {aid} released" in log
    assert stack.summary().free_vgpus == 8  # released at exit, not by lease expiry
    server_log = (stack.tmp / "log-node" / "server.log").read_text()
    assert "token mode" in server_log


def test_device_query_reports_the_granted_memory(stack: Stack) -> None:
    r = stack.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  stack.env(ORION_VGPU="2", ORION_GMEM="4096"))
    assert r.returncode == 0, r.stderr
    assert "Detected 2 CUDA Capable device(s)" in r.stdout
    assert r.stdout.count("Total amount of global memory: 4096 MBytes") == 2


def test_unreachable_controller_prints_the_seed_messages(tmp_path: Path) -> None:
    env = client_env(tmp_path, f"127.0.0.1:{free_port()}")
    r = subprocess.run([str(BIN / "orion-run"), sys.executable,
                        str(ROOT / "examples" / "deviceQuery.py")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [ln.split("] ", 1)[-1] for ln in r.stderr.splitlines()]
    assert "Could not connect to server" in lines
    assert "Fail to get version information from Orion Controller." in lines
    assert lines[-1] == "Client exits without allocation ID"
    assert "CUDA_ERROR_NO_DEVICE" in r.stderr


def test_refused_allocation_prints_reason_and_exits_without_id(stack: Stack) -> None:
    r = stack.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  stack.env(ORION_VGPU="9"))
    assert r.returncode != 0
    assert "refused 9 vGPU(s): request needs more than one node can hold" in r.stderr
    assert "Fail to get version information" not in r.stderr
    assert r.stderr.rstrip().endswith("Client exits without allocation ID")
    r = stack.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  stack.env(ORION_GMEM="20000"))
    assert "exceeds the memory of any single GPU (16384 MiB)" in r.stderr
    assert r.stderr.rstrip().endswith("Client exits without allocation ID")


# -- the server trusts only the controller -------------------------------------------------------


def _hello(addr: str, token: str, allocation_id: str = "") -> str:
    """Handshake with oriond over TCP: 'ok' or the refusal text."""
    from orion_virt.client.connection import Connection

    conn = Connection(tcp.connect(addr, timeout=5), "tcp")
    try:
        conn.handshake(Hello(pid=os.getpid(), vgpu_count=8, gmem_mib=16000, ratio=100,
                             token=token, allocation_id=allocation_id))
        conn.bye()
        return "ok"
    except (TransportError, Refused) as e:  # a refusal is Refused since the one protocol core
        conn.stream.close()
        return str(e)


def test_server_refuses_sessions_not_granted_by_the_controller(stack: Stack) -> None:
    conf = load_server_config(stack.servers["node"][1])
    addr, me = f"127.0.0.1:{conf.listen_port}", node_id(conf)
    key = load_key(stack.key)
    quota = (VGpuQuota(0, 1024, 25),)
    assert "presented no allocation token" in _hello(addr, "")
    forged = issue_token(b"x" * 32, Grant("a1", me, quota, time.time() + 60))
    assert "signature does not match" in _hello(addr, forged)
    expired = issue_token(key, Grant("a2", me, quota, time.time() - 1))
    assert "expired" in _hello(addr, expired)
    other = issue_token(key, Grant("a3", "elsewhere:1.2.3.4:9960", quota, time.time() + 60))
    assert "is for node 'elsewhere:1.2.3.4:9960'" in _hello(addr, other)
    # a client without a controller (direct mode) is refused with the reason, no allocation
    r = stack.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  stack.env(ORION_CONTROLLER="", ORION_SERVER=addr))
    assert r.returncode != 0 and "presented no allocation token" in r.stderr
    # a real grant opens a session with exactly its vGPUs, whatever the HELLO asks for
    a = ctl.allocate(stack.addr, ctl.AllocationRequest(vgpu=2, gmem_mib=1024), signer=stack.client)
    try:
        assert _hello(addr, a.token_for(me), "someone-else").startswith(
            "oriond refused: allocation token refused: it is for allocation")
        assert _hello(addr, a.token_for(me), a.allocation_id) == "ok"
    finally:
        try:
            ctl.release(stack.addr, a.allocation_id, signer=stack.admin)
        except ctl.NotFound:  # the admitted session's end already released it (oriond's notice)
            pass
    sessions = "".join(f.read_text() for f in (stack.tmp / "log-node" / "session").iterdir())
    assert f"allocation '{a.allocation_id}': 2 vGPU(s) 1024 MiB/25% on GPU" in sessions


# -- release paths ------------------------------------------------------------------------------


def test_kill_9_client_is_released_when_its_session_ends(tmp_path: Path) -> None:
    """oriond tells the controller when a session ends: a killed client's vGPUs return within
    seconds, not at the end of its (here 60 s) lease."""
    s = Stack(tmp_path, lease=60)
    try:
        s.start_oriond()
        go = tmp_path / "go-kill"
        p = s.spawn([sys.executable, s.script("hold.py", HOLD), go], s.env(ORION_VGPU="2"))
        assert p.stdout.readline().split() == ["ready", "2"]
        assert s.summary().free_vgpus == 6
        [task] = ctl.tasks(s.addr)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        wait_for(lambda: s.summary().free_vgpus == 8, 10, "the vGPUs to return")
        took = time.monotonic() - t0
        line = f"allocation {task['allocation_id']} released: its session on node"
        assert line in (tmp_path / "controller.log").read_text()
        print(f"a kill -9'd client's vGPUs returned after {took:.2f} s (lease 60 s)")
        assert took < 5
    finally:
        s.close()


def test_a_controller_killed_mid_lease_loses_no_allocation(tmp_path: Path) -> None:
    """kill -9 of the controller while an application runs: the application goes on (its
    session is with oriond; renewals are retried), and the restarted controller has the
    allocation still, from its store; the application's release at exit then works."""
    s = Stack(tmp_path, lease=6)
    try:
        s.start_oriond()
        go = tmp_path / "go"
        p = s.spawn([sys.executable, s.script("hold.py", HOLD), go], s.env(ORION_VGPU="2"))
        assert p.stdout.readline().split() == ["ready", "2"]
        [task] = ctl.tasks(s.addr)
        s.controller.send_signal(signal.SIGKILL)
        s.controller.wait(10)
        time.sleep(1.0)  # a renewal (every lease/3) fails meanwhile
        s.restart_controller()
        assert [t["allocation_id"] for t in ctl.tasks(s.addr)] == [task["allocation_id"]]
        go.touch()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and out.split()[:3] == ["after", "0", "2"], out + err
        wait_for(lambda: ctl.tasks(s.addr) == [], 10, "the allocation to be released at exit")
    finally:
        s.close()


def test_lease_is_renewed_while_the_client_runs(stack: Stack) -> None:
    go = stack.tmp / "go-renew"
    p = stack.spawn([sys.executable, stack.script("hold.py", HOLD), go], stack.env())
    assert p.stdout.readline().split() == ["ready", "1"]
    time.sleep(5)  # 2.5 leases
    assert stack.summary().free_vgpus == 7
    go.touch()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.split() == ["after", "0", "1"]
    assert "was released by the Orion Controller" not in err
    assert exit_id(err)


def test_concurrent_clients_never_share_a_vgpu(stack: Stack) -> None:
    go = stack.tmp / "go-many"
    hold = stack.script("hold.py", HOLD)
    procs = [stack.spawn([sys.executable, hold, go], stack.env()) for _ in range(8)]
    for p in procs:
        assert p.stdout.readline().split() == ["ready", "1"], p.stderr.read()
    tasks = ctl.tasks(stack.addr)
    slots = [(v["node_id"], v["gpu_index"], v["slot"]) for t in tasks for v in t["vgpus"]]
    assert len(tasks) == 8 and len(set(slots)) == 8
    assert stack.summary().free_vgpus == 0
    # a ninth finds the pool exhausted
    r = stack.run([sys.executable, hold, go], stack.env())
    assert "pool exhausted" in r.stderr and "Client exits without allocation ID" in r.stderr
    go.touch()
    ids = set()
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ids.add(exit_id(err))
    assert ids == {t["allocation_id"] for t in tasks}
    assert stack.summary().free_vgpus == 8


def test_server_loss_and_clean_stop(tmp_path: Path) -> None:
    s = Stack(tmp_path, lease=3, heartbeat_timeout=2)
    try:
        s.start_oriond("a")
        assert (s.summary().total_vgpus, s.summary().free_vgpus) == (8, 8)
        go = tmp_path / "go"
        p = s.spawn([sys.executable, s.script("hold.py", HOLD), go], s.env(ORION_VGPU="2"))
        assert p.stdout.readline().split() == ["ready", "2"]
        [task] = ctl.tasks(s.addr)
        oriond_a, conf_a = s.servers["a"]
        os.kill(oriond_a.pid, signal.SIGKILL)  # server loss: no deregistration
        oriond_a.wait()
        wait_for(lambda: s.summary().nodes_down == 1, 6, "the node to be marked down")
        assert ctl.tasks(s.addr) == [] and s.summary().total_vgpus == 0
        line = f"allocation {task['allocation_id']} released: its node is down"
        wait_for(lambda: line in (tmp_path / "controller.log").read_text(), 3, "the reaper")
        # the client learns at its next renewal (every lease/3) that its vGPUs are gone, and
        # stops using them (its session worker died with oriond)
        wait_for(lambda: "lost:" in latest_client_log(s.home), 5, "the client to notice")
        go.touch()
        out, err = p.communicate(timeout=40)
        assert "was released by the Orion Controller" in err, err
        assert out.split()[0] == "after" and out.split()[1] != "0", out
        try:  # no session worker outlives oriond (it dies with it): nothing is left in its group
            os.killpg(oriond_a.pid, signal.SIGKILL)
            raise AssertionError("a process of the killed oriond's group was still alive")
        except ProcessLookupError:
            pass
        # the server comes back: the pool is whole again
        s.start_oriond("a", port=load_server_config(conf_a).listen_port)
        su = s.summary()
        assert (su.total_vgpus, su.free_vgpus, su.nodes_down) == (8, 8, 0)
        # clean stop: deregistered at once, allocations released at once
        a = ctl.allocate(s.addr, ctl.AllocationRequest(vgpu=1), signer=s.client)
        stop_proc(s.servers["a"][0])
        assert s.summary().total_vgpus == 0 and s.summary().nodes_up == 0
        with pytest.raises(ctl.NotFound):
            ctl.renew(s.addr, a.allocation_id, signer=s.admin)
        assert "deregistered; released 1 allocation(s)" in (tmp_path / "controller.log"
                                                            ).read_text()
    finally:
        s.close()


def _session_logs(tmp: Path, name: str) -> str:
    d = tmp / f"log-{name}" / "session"
    return "".join(f.read_text() for f in sorted(d.iterdir())) if d.is_dir() else ""


def test_cross_node_allocation_uses_the_vgpus_of_every_server(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    try:
        # two nodes of one GPU each; ratio 100 holds one vGPU per GPU: two vGPUs must span them
        s.start_oriond("n1", gpus=1)
        s.start_oriond("n2", gpus=1)
        assert len({n["node_id"] for n in ctl.nodes(s.addr)}) == 2
        assert (s.summary().total_vgpus, s.summary().free_vgpus) == (8, 8)
        env = s.env(ORION_VGPU="2", ORION_GMEM="3072", ORION_CROSS_NODE="1", ORION_RATIO="100")
        r = s.run([sys.executable, ROOT / "examples" / "deviceQuery.py"], env)
        assert r.returncode == 0, r.stderr
        assert "Detected 2 CUDA Capable device(s)" in r.stdout
        assert r.stdout.count("Total amount of global memory: 3072 MBytes") == 2, r.stdout
        assert len(EXIT_WITH.findall(r.stderr)) == 1, r.stderr
        log = latest_client_log(s.home)
        assert "cross-node allocation:" in log and log.count(": session ") == 2, log
        r = s.run([sys.executable, ROOT / "examples" / "vectorAdd.py"], env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("sum check: PASSED") == 2 and "on device 1]" in r.stdout, r.stdout
        assert r.stdout.rstrip().endswith("Test PASSED")
        aid = exit_id(r.stderr)
        assert aid and len(EXIT_WITH.findall(r.stderr)) == 1, r.stderr
        assert all(t["allocation_id"] != aid for t in ctl.tasks(s.addr))  # released at exit
        # each server served one vGPU of that allocation (its own token), ran a whole vectorAdd
        # on it (context, module, copies, launch, sync, frees: 20 calls and more) and heard the
        # client's goodbye
        pattern = re.compile(rf"session (\d+): pid \d+ program .*vectorAdd.* allocation "
                             rf"'{aid}': 1 vGPU\(s\)")

        def ended(name: str) -> bool:
            logs = _session_logs(tmp_path, name)
            m = pattern.search(logs)
            done = m and re.search(rf"session {m.group(1)}: closed after (\d+) calls", logs)
            return bool(done) and f"session {m.group(1)}: client said goodbye" in logs \
                and int(done.group(1)) >= 20  # type: ignore[union-attr]

        for name in ("n1", "n2"):
            wait_for(lambda n=name: ended(n), 5, f"the session on {name} to end")  # type: ignore[misc]
        wait_for(lambda: s.summary().free_vgpus == 8, 10, "the pool to be whole again")
        # a driver-API C program on both servers: its own contexts, streams and modules on
        # each, data handed from one device to the other through the host, and a stream of
        # one server used with a kernel of the other refused (handles name their server)
        exe = tmp_path / "two_devices"
        _gcc(ROOT / "tests" / "native" / "two_devices.c", exe)
        r = s.run([exe, ROOT / "orion_virt" / "kernels" / "test_kernels.ptx", "strict"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "two-device chain: PASSED" in r.stdout and "-> CUDA_ERROR_INVALID_HANDLE" in r.stdout, r.stdout
        assert "can access peer: 0->1 0, 0->0 0" in r.stdout, r.stdout  # another node: no peer
        assert r.stdout.count("3072 MiB") == 2, r.stdout
        wait_for(lambda: s.summary().free_vgpus == 8, 10, "the pool to be whole again")
        # more than the whole pool holds is still refused before anything is opened
        r = s.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  {**env, "ORION_VGPU": "3"})
        assert r.returncode != 0 and "more than the whole pool can hold" in r.stderr, r.stderr
        assert r.stderr.rstrip().endswith("Client exits without allocation ID")
    finally:
        s.close()


def _gcc(src: Path, exe: Path) -> None:
    """A driver-API C program linked against the native client (make native builds it)."""
    from tests.integration.test_native_client import BUILD, cuda_include

    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{cuda_include()}",
                        f"-I{src.parent}", str(src), f"-L{BUILD}", "-lcuda", "-lm", "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr


def test_cross_node_session_fails_cleanly_when_a_server_is_unreachable(tmp_path: Path) -> None:
    s = Stack(tmp_path, heartbeat_timeout=30)
    try:
        s.start_oriond("n1", gpus=1)
        s.start_oriond("n2", gpus=1)
        # the controller places equal candidates in node id order and the client connects in
        # that order: stop the second, so the first one's session is opened, then closed
        first, second = sorted(("n1", "n2"), key=lambda n: node_id(load_server_config(
            s.servers[n][1])))
        dead = s.servers[second][0]
        os.kill(dead.pid, signal.SIGKILL)  # still "up" at the controller for 30 s
        dead.wait()
        r = s.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  s.env(ORION_VGPU="2", ORION_CROSS_NODE="1", ORION_RATIO="100"))
        assert r.returncode != 0
        assert "Could not connect to server" in r.stderr, r.stderr
        assert exit_id(r.stderr), r.stderr  # an allocation was obtained, and released
        assert s.summary().free_vgpus == 8
        # the first node's session was opened, then closed with a goodbye
        nid = node_id(load_server_config(s.servers[first][1]))
        assert f"node {nid}: session" in latest_client_log(s.home)
        wait_for(lambda: "client said goodbye" in _session_logs(tmp_path, first), 5,
                 f"the session on {first} to end")
    finally:
        s.close()


# -- quotas under a controller grant ----------------------------------------------------------------


def test_memory_quota_is_enforced(stack: Stack) -> None:
    r = stack.run([sys.executable, stack.script("oom.py", OOM)], stack.env(ORION_GMEM="256"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["total", "256", "first", "0", "second",
                                "CUDA_ERROR_OUT_OF_MEMORY"]


def test_compute_share_throttles_launches(stack: Stack) -> None:
    def wall(ratio: str) -> float:
        r = stack.run([sys.executable, stack.script("spin.py", SPIN), PTX],
                      stack.env(ORION_RATIO=ratio))
        assert r.returncode == 0, r.stderr
        m = re.search(r"wall ([\d.]+) count 4", r.stdout)
        assert m, r.stdout
        return float(m.group(1))

    full, half = wall("100"), wall("50")
    print(f"spin x4: ratio 100 {full:.3f}s, ratio 50 {half:.3f}s")
    assert 0.19 <= full < 0.33, full
    assert half >= 0.33 and half - full >= 0.1, (full, half)


# -- transports ---------------------------------------------------------------------------------------


def _make_device(shm: Path, index: int = 1) -> Path:
    subprocess.run([str(BIN / "orion-shm"), "-i", str(index), "--size", "16", "--path-base",
                    str(shm)], check=True, capture_output=True)
    dev = shm / f"orionsock{index}"
    wait_for(lambda: Device(dev).info().served, 10, f"oriond to serve {dev}")
    return dev


def _transport_line(home: Path) -> str:
    return next(ln for ln in latest_client_log(home).splitlines() if "transport:" in ln)


def test_shared_memory_device_with_a_controller_grant(stack: Stack) -> None:
    shm = stack.tmp / "shm-node"
    _make_device(shm)
    r = stack.run([sys.executable, ROOT / "examples" / "vectorAdd.py"],
                  stack.env(ORION_VGPU="2", ORION_SHM_PATH_BASE=str(shm)))
    assert r.returncode == 0, r.stderr
    assert "transport: shm device" in _transport_line(stack.home)
    assert exit_id(r.stderr)


def test_device_of_another_server_falls_back_to_tcp(stack: Stack) -> None:
    # oriond "other" serves a device here but is not the node the controller allocates on
    dead = f"127.0.0.1:{free_port()}"
    stack.start_oriond("other", controller=dead, register=False)
    _make_device(stack.tmp / "shm-other")
    r = stack.run([sys.executable, ROOT / "examples" / "deviceQuery.py"],
                  stack.env(ORION_SHM_PATH_BASE=str(stack.tmp / "shm-other")))
    assert r.returncode == 0, r.stderr
    line = _transport_line(stack.home)
    assert "transport: TCP to 127.0.0.1:" in line and "token is for node" in line, line
    stop_proc(stack.servers.pop("other")[0])


# -- orion-check against the running system -------------------------------------------------------------


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
    return subprocess.run([str(BIN / "orion-check"), *args], capture_output=True, text=True,
                          timeout=60, env=env or e)


def test_orion_check_runtime_server_and_controller(stack: Stack) -> None:
    conf = stack.servers["node"][1]
    cfg = load_server_config(conf)
    go = stack.tmp / "go-check"
    p = stack.spawn([sys.executable, stack.script("hold.py", HOLD), go],
                    stack.env(ORION_VGPU="2"))
    assert p.stdout.readline().split() == ["ready", "2"]
    r = _check("runtime", "server", "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    for expected in [
        "Searching NVIDIA GPU ...", "Checking NVIDIA MPS ...", "Checking Orion Server status ...",
        "Orion Server is running with Linux user   : root",
        "Enable SHM                              [Yes]",
        "Enable RDMA                             [No]",
        "Enable Local QEMU-KVM with SHM          [No]",
        "Binding IP Address :                    127.0.0.1",
        f"Listening Port :                        {cfg.listen_port}",
        "Testing the Orion Server network ...",
        f"Orion Server can be reached through 127.0.0.1:{cfg.listen_port}",
        "Checking Orion Controller status ...",
        f"Orion Controller addrress is set as {stack.addr} in configuration file. Using this "
        "address to diagnose Orion Controller",
        f"Address {stack.addr} is reached.",
        "Orion Controller Version Infomation : data_version=0.1,api_version=0.1",
        "There are 8 vGPU under managered by Orion Controller. 6 vGPU are free now.",
    ]:
        assert expected in out, (expected, r.stdout)
    cmd = next(ln for ln in out if ln.startswith("Orion Server is running with command line : "))
    assert str(conf) in cmd
    r = _check("runtime", "controller", env={**stack.env(), "ORION_CONTROLLER": stack.addr})
    assert r.returncode == 0, r.stdout
    assert "There are 8 vGPU under managered by Orion Controller. 6 vGPU are free now." in r.stdout
    assert "1 allocation(s) active." in r.stdout
    go.touch()
    p.communicate(timeout=30)
    wait_for(lambda: stack.summary().free_vgpus == 8, 5, "release")
    r = _check("runtime", "server", "--config", str(conf))
    assert "There are 8 vGPU under managered by Orion Controller. 8 vGPU are free now." \
        in r.stdout.splitlines()


def test_orion_check_fails_when_things_are_down(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    port, ctl_port = free_port(), free_port()
    conf.write_text(f"[server]\nlisten_port = {port}\nbackend = sim\n"
                    f"[controller]\ncontroller_addr = 127.0.0.1:{ctl_port}\n"
                    f"token_key_file = {tmp_path}/missing.key\n")
    r = _check("runtime", "server", "--config", str(conf))
    assert r.returncode == 1
    assert "[Error] Orion Server (oriond) is not running" in r.stdout
    assert f"[Error] Address 127.0.0.1:{ctl_port} cannot be reached: Connection refused" \
        in r.stdout
    assert "Fail to get version information from Orion Controller." in r.stdout
    assert "cannot read token key" in r.stdout
    r = _check("install", "server", "--config", str(conf))
    assert r.returncode == 1 and f"Port 127.0.0.1:{port} is free." in r.stdout
    assert "cannot read token key" in r.stdout
    r = _check("install", "controller", "--kv", f"sqlite://{tmp_path}/c.db", "--token-key",
               str(tmp_path / "k"), "-i", "127.0.0.1", "-p", str(ctl_port))
    assert r.returncode == 0, r.stdout
    assert f"SQLite store {tmp_path}/c.db will be created at first start." in r.stdout
    r = _check("install", "controller", "--kv", f"http://127.0.0.1:{ctl_port}")
    assert r.returncode == 1 and f"etcd at http://127.0.0.1:{ctl_port} cannot be used" in r.stdout


def _session_on_lease(stack: Stack) -> tuple[object, object]:
    """A raw session (no renewal thread) on a fresh 1-vGPU allocation: (connection, allocation)."""
    from orion_virt.client.connection import Connection

    alloc = ctl.allocate(stack.addr, ctl.AllocationRequest(vgpu=1), signer=stack.client)
    v = alloc.vgpus[0]
    conn = Connection(tcp.connect(v.server, timeout=5), "tcp")
    conn.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=v.memory_mib, ratio=v.ratio,
                         token=alloc.token_for(v.node_id), allocation_id=alloc.allocation_id))
    return conn, alloc


def test_server_ends_a_session_whose_lease_was_not_renewed(stack: Stack) -> None:
    from orion_virt.wire import Call

    conn, alloc = _session_on_lease(stack)
    assert conn.call(Call.cuDeviceGetCount, ())[1] == (1,)  # type: ignore[attr-defined]
    # no renewal: past the lease (2 s) and the server's grace (2 s) the next call ends the session
    deadline = alloc.expires_at + 2 + 15
    with pytest.raises(Refused, match=f"allocation {alloc.allocation_id} expired") as e:
        while time.time() < deadline:
            conn.call(Call.cuDeviceGetCount, ())  # type: ignore[attr-defined]
            time.sleep(0.25)
    assert e.value.status == CUresult.CUDA_ERROR_NOT_PERMITTED
    assert time.time() > alloc.expires_at + 2  # not before the lease and its grace ran out
    wait_for(lambda: stack.summary().free_vgpus == 8, 10, "the expired lease back in the pool")


def test_renewed_tokens_keep_a_session_alive_past_its_first_lease(stack: Stack) -> None:
    from orion_virt.wire import Call

    conn, alloc = _session_on_lease(stack)
    node = alloc.vgpus[0].node_id
    deadline = time.monotonic() + alloc.lease_seconds * 2 + 2.5
    while time.monotonic() < deadline:
        conn.renew(ctl.renew(stack.addr, alloc.allocation_id, signer=stack.admin).token_for(node))  # type: ignore[attr-defined]
        time.sleep(alloc.lease_seconds / 3)
    assert conn.call(Call.cuDeviceGetCount, ())[:2] == (0, (1,))  # type: ignore[attr-defined]
    # a token for another allocation is refused and ends the session
    other = ctl.allocate(stack.addr, ctl.AllocationRequest(vgpu=1), signer=stack.client)
    conn.renew(other.token_for(other.vgpus[0].node_id))  # type: ignore[attr-defined]
    with pytest.raises(Refused, match="renewed token") as e:
        conn.call(Call.cuDeviceGetCount, ())  # type: ignore[attr-defined]
    assert e.value.status == CUresult.CUDA_ERROR_UNKNOWN  # a protocol error: the RENEW was not valid
    ctl.release(stack.addr, other.allocation_id, signer=stack.admin)
    # the ended session's allocation went back to the pool when oriond said it ended
    wait_for(lambda: alloc.allocation_id not in {t["allocation_id"] for t in ctl.tasks(stack.addr)}, 5,
             "the ended session's allocation to be released")
