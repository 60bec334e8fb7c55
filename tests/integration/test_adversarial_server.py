"""Adversarial replays of issue 15's attacks on oriond's and the controller's limits (items 5, 6, 10).

Each test replays one attack seen against main on loopback and checks it is refused or contained:
1000 half-open TCP connections (they made 1000 workers, 3.6 GiB: now they cost no process), a
silent client held past the HELLO timeout, more sessions from one address than allowed, an idle
session past the idle timeout, direct-mode over-subscription (more vGPUs or memory than the node
has), oversized controller bodies, slow-header and idle controller connections, and a huge
registration. Bounded: one oriond (sim backend) or controller per test, a few seconds each,
loopback only (half-open connections come from 127.0.x.y sources, all on lo).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.client.connection import Connection
from orion_virt.controller import client as ctl
from orion_virt.controller.client import GpuInfo, NodeInfo
from orion_virt.errors import Refused, TransportError
from orion_virt.launch import OriondProcess
from orion_virt.transport import tcp
from orion_virt.wire import Hello
from orion_virt.wire.codes import Call
from tests.integration.test_controller_http import ControllerProcess, ops
from tests.oriond_fixture import Oriond

HELLO_TIMEOUT = 2
LIMITS = f"""
[server-limits]
    max_pending_connections = 64
    max_sessions_per_client = 3
    max_sessions = 6
    hello_timeout = {HELLO_TIMEOUT}
"""
HOLD = textwrap.dedent("""
    import time
    from cuda.bindings import driver as cuda
    assert cuda.cuInit(0)[0] == 0
    err, dev = cuda.cuDeviceGet(0)
    err, ctx = cuda.cuCtxCreate(None, 0, dev)
    print("ready", flush=True)
    while True:
        err, = cuda.cuCtxSynchronize()
        if err != 0:
            raise SystemExit(3)
        time.sleep(0.05)
""")


class LimitedOriond(Oriond):
    """The tests' oriond (four sim GPUs of 8 GiB, 4 vGPUs each) with a server.conf of limits."""

    conf: str = LIMITS

    def start(self) -> LimitedOriond:
        for d in (self.shm, self.logs, self.home):
            d.mkdir(parents=True, exist_ok=True)
        config = self.tmp / "server.conf"
        config.write_text(self.conf)
        self.launcher = OriondProcess(self.logs, backend="sim", config=config, shm_path_base=self.shm,
                                      extra=["--sim-memory", "8192", "--sim-gpus", "4", *self.extra])
        self.port = self.launcher.port
        self.launcher.start(timeout=20)
        self.proc = self.launcher.proc
        return self


def start_oriond(tmp: Path, conf: str = LIMITS) -> LimitedOriond:
    o = LimitedOriond(tmp)
    o.conf = conf
    return o.start()


@pytest.fixture
def oriond(tmp_path: Path) -> Iterator[LimitedOriond]:
    o = start_oriond(tmp_path)
    yield o
    o.stop()


def session(o: Oriond, vgpu: int = 1, gmem: int = 1024) -> Connection:
    """A TCP session (HELLO answered by WELCOME); Refused with the server's text otherwise."""
    conn = Connection(tcp.connect(f"127.0.0.1:{o.port}", timeout=5), "tcp", hello_timeout=10)
    try:
        conn.handshake(Hello(pid=os.getpid(), vgpu_count=vgpu, gmem_mib=gmem, ratio=100))
    except BaseException:
        conn.stream.close()
        raise
    return conn


def refusal(o: Oriond, vgpu: int = 1, gmem: int = 1024) -> str:
    try:
        c = session(o, vgpu, gmem)
    except (Refused, TransportError) as e:
        return str(e)
    c.bye()
    return "ok"


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total


def test_half_open_connections_cost_no_worker(oriond: LimitedOriond) -> None:
    """1000 TCP connections that never send their HELLO: oriond forks no worker for them, holds
    at most max_pending_connections, refuses the rest with an ERROR frame naming the limit,
    closes the held ones at the HELLO timeout, and serves a real client afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    assert oriond.proc is not None
    pid = oriond.proc.pid
    before = tree(pid)
    rss_before = rss_kib(before)
    socks: list[socket.socket] = []
    peak_procs, peak_rss = len(before), rss_before
    t0 = time.monotonic()
    try:
        for i in range(1000):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((f"127.0.{1 + i // 200}.{1 + i % 200}", 0))  # 5 connections per source: under the per-client limit
            err = s.connect_ex(("127.0.0.1", oriond.port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
            socks.append(s)
            if i % 100 == 99:
                procs = tree(pid)
                peak_procs, peak_rss = max(peak_procs, len(procs)), max(peak_rss, rss_kib(procs))
        opened = time.monotonic() - t0
        # read every answer (bounded: the held ones end at the HELLO timeout)
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + HELLO_TIMEOUT + 15
        live = {s.fileno(): s for s in socks}
        while live and time.monotonic() < deadline:
            procs = tree(pid)
            peak_procs, peak_rss = max(peak_procs, len(procs)), max(peak_rss, rss_kib(procs))
            p = select.poll()
            for fd in live:
                p.register(fd, select.POLLIN)
            for fd, _ in p.poll(200):
                try:
                    data = live[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    answers[fd] = answers.get(fd, b"") + data
                else:
                    del live[fd]
        elapsed = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    texts = list(answers.values())
    at_cap = sum(1 for t in texts if b"max_pending_connections" in t)
    timed_out = sum(1 for t in texts if b"no HELLO within" in t)
    print(f"\n1000 half-open TCP connections (opened in {opened:.2f} s, all answered in {elapsed:.1f} s): "
          f"oriond processes {len(before)} before, at most {peak_procs} during; total RSS "
          f"{rss_before / 1024:.1f} MiB before, at most {peak_rss / 1024:.1f} MiB during; "
          f"{at_cap} refused at max_pending_connections, {timed_out} closed at the HELLO timeout")
    assert not live, f"{len(live)} connections were never answered"
    assert peak_procs == len(before), f"workers were forked for half-open connections: {peak_procs}"
    assert peak_rss - rss_before < 64 << 10, (rss_before, peak_rss)
    assert at_cap + timed_out == 1000, (at_cap, timed_out)
    assert 0 < timed_out <= 64
    log = oriond.server_log()
    assert "refused: oriond has 64 connections waiting for their HELLO" in log
    assert "not logged one by one" in log  # a flood of refusals is a few log lines, not 1000
    assert log.count("\n") < 1000 + 400, "one log line per refused connection and more"
    assert refusal(oriond) == "ok"  # served again once the flood is gone


def test_silent_client_is_closed_at_the_hello_timeout(oriond: LimitedOriond) -> None:
    """A client that connects and says nothing (or half a HELLO) is not held for ever: after
    hello_timeout it gets an ERROR frame saying so, and oriond logs it."""
    silent = socket.create_connection(("127.0.0.1", oriond.port), timeout=HELLO_TIMEOUT + 5)
    partial = socket.create_connection(("127.0.0.1", oriond.port), timeout=HELLO_TIMEOUT + 5)
    partial.sendall(b"\x00" * 5)  # part of a header
    try:
        t0 = time.monotonic()
        for s in (silent, partial):
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert b"no HELLO within 2 s of connecting ([server-limits] hello_timeout)" in data, data
        took = time.monotonic() - t0
        assert HELLO_TIMEOUT - 0.5 < took < HELLO_TIMEOUT + 3, took
    finally:
        silent.close()
        partial.close()
    assert "no HELLO within 2 s" in oriond.wait_log("no HELLO within")
    # what the application sees: the client library's refusal carries the text
    s = tcp.connect(f"127.0.0.1:{oriond.port}", timeout=5)
    time.sleep(HELLO_TIMEOUT + 0.5)
    conn = Connection(s, "tcp")
    with pytest.raises((Refused, TransportError)):
        conn.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=64, ratio=100))
    s.close()


def test_sessions_from_one_address_are_limited(oriond: LimitedOriond, tmp_path: Path) -> None:
    """max_sessions_per_client = 3: the fourth session from 127.0.0.1 is refused with a message
    naming the limit (the application's error), the first three go on, and once one ends a new
    one is served."""
    held = [session(oriond) for _ in range(3)]
    try:
        why = refusal(oriond)
        assert "max_sessions_per_client" in why and "127.0.0.1" in why, why
        # an application sees the text too
        prog = tmp_path / "hold.py"
        prog.write_text(HOLD)
        r = oriond.run(sys.executable, str(prog), tcp=True, timeout=30)
        assert r.returncode != 0 and "max_sessions_per_client" in r.stderr, r.stderr[-2000:]
        assert "max_sessions_per_client" in oriond.server_log()
    finally:
        held.pop().bye()
    time.sleep(0.3)
    assert refusal(oriond) == "ok"
    for c in held:
        c.bye()


def test_sessions_in_total_are_limited(oriond: LimitedOriond) -> None:
    """max_sessions = 6 over all addresses: the seventh is refused, naming the limit."""
    held: list[Connection] = []
    try:
        for i in range(6):
            s = socket.socket()
            s.bind((f"127.0.9.{i + 1}", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", oriond.port))
            c = Connection(tcp.SocketStream(s, timeout=5), "tcp")
            c.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=256, ratio=100))
            held.append(c)
        why = refusal(oriond, gmem=256)
        assert "max_sessions" in why and "6 sessions" in why, why
    finally:
        for c in held:
            c.bye()


def test_idle_session_is_closed_at_the_idle_timeout(tmp_path: Path) -> None:
    o = start_oriond(tmp_path, LIMITS + "    idle_timeout = 1\n")
    try:
        c = session(o)
        assert c.call(int(Call.cuInit), (0,))[0] == 0
        time.sleep(0.5)
        assert c.call(int(Call.cuInit), (0,))[0] == 0  # a call resets the clock
        time.sleep(2.0)
        with pytest.raises(Refused, match=r"session idle: no call for 1 s \(\[server-limits\] idle_timeout\)"):
            c.call(int(Call.cuInit), (0,))
        o.wait_log("session idle")
    finally:
        o.stop()


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[LimitedOriond]:
    o = start_oriond(tmp_path, LIMITS.replace("max_sessions_per_client = 3", "max_sessions_per_client = 16")
                     .replace("max_sessions = 6", "max_sessions = 16"))
    yield o
    o.stop()


def test_direct_mode_grants_only_what_the_node_has(roomy: LimitedOriond) -> None:
    """Four sim GPUs of 8 GiB, 4 vGPUs each: what the sessions hold together never exceeds that
    (the attack: 64 vGPUs of a GPU's whole memory, granted to every session at once)."""
    oriond = roomy
    assert "exceeds the vGPUs of this Orion Server (16" in refusal(oriond, vgpu=64, gmem=8192)
    big = session(oriond, vgpu=4, gmem=8192)  # all the memory of the node
    try:
        why = refusal(oriond, vgpu=1, gmem=1024)
        assert "cannot grant 1 vGPU(s) of 1024 MiB" in why and "0 MiB" in why, why
    finally:
        big.bye()
    time.sleep(0.3)
    # released when the session ended: 12 vGPUs of 2 GiB fit now, a 13th GiB does not
    held = [session(oriond, vgpu=4, gmem=2048) for _ in range(3)]
    try:
        assert "cannot grant" in refusal(oriond, vgpu=2, gmem=4096)
        assert refusal(oriond, vgpu=1, gmem=2048) == "ok"  # the 16th slot
    finally:
        for c in held:
            c.bye()
    # a worker killed mid-session gives its grant back when oriond reaps it
    victim = session(oriond, vgpu=4, gmem=8192)
    assert oriond.proc is not None
    workers = [p for p in tree(oriond.proc.pid) if p != oriond.proc.pid]
    assert workers
    for w in workers:
        os.kill(w, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while refusal(oriond, vgpu=4, gmem=8192) != "ok":
        assert time.monotonic() < deadline, "a killed worker's grant was never released"
        time.sleep(0.2)
    victim.stream.close()


# -- the controller ---------------------------------------------------------------------------

@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db", "--vgpu", "4",
                          "--header-timeout", "1", "--max-connections", "40", "--max-body", "65536")
    yield c
    c.stop()


def _status(data: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


def _connect(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_oversized_bodies_are_refused_unread(controller: ControllerProcess) -> None:
    s = _connect(controller.addr)
    try:
        t0 = time.monotonic()
        s.sendall(b"POST /api/v1/allocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        data = _read_all(s)  # answered at once, without waiting for (or reading) the gigabyte
        assert _status(data) == 413 and b"--max-body" in data, data
        assert time.monotonic() - t0 < 1.0
    finally:
        s.close()
    s = _connect(controller.addr)
    try:
        s.sendall(b"POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n" + b" " * 65537)
        assert _status(_read_all(s)) == 413
    finally:
        s.close()


def test_slow_and_idle_connections_hold_no_thread(controller: ControllerProcess) -> None:
    """A client dribbling its headers a byte at a time, one that never sends a body, and
    kept-alive idle ones are closed at --header-timeout (1 s here); past --max-connections
    (40) a new connection gets 503 at once instead of a thread, and new clients are served at
    full speed again once the idle ones are gone."""
    addr = controller.addr
    slow = _connect(addr)
    t0 = time.monotonic()
    closed_at = None
    try:
        for ch in b"GET /api/v1/summary HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                slow.sendall(bytes([ch]))
            except OSError:
                closed_at = time.monotonic() - t0
                break
            r, _, _ = select.select([slow], [], [], 0.2)
            if r:
                _read_all(slow)
                closed_at = time.monotonic() - t0
                break
        assert closed_at is not None and closed_at < 2.5, closed_at
    finally:
        slow.close()
    nobody = _connect(addr)
    nobody.sendall(b"POST /api/v1/allocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    data = _read_all(nobody)
    nobody.close()
    assert time.monotonic() - t0 < 2.5 and _status(data) in (0, 408), data
    # idle connections: 60 opened, 40 served (and closed at the timeout), 20 answered 503
    idle = [_connect(addr) for _ in range(60)]
    try:
        time.sleep(0.3)
        busy = 0
        for s in idle:
            r, _, _ = select.select([s], [], [], 0)
            if r and _status(s.recv(4096)) == 503:
                busy += 1
        assert busy == 20, busy
        t0 = time.monotonic()
        for s in idle:
            s.settimeout(3)
            _read_all(s)  # each is closed by the controller
        assert time.monotonic() - t0 < 3.0
    finally:
        for s in idle:
            s.close()
    # new connections are accepted at once: measure the rate with 30 idle ones held
    held = [_connect(addr) for _ in range(30)]
    try:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:
            assert ctl.summary(addr) is not None
            n += 1
        print(f"\ncontroller: {n} new connections answered in 1 s with 30 idle connections held")
        assert n > 50, n
    finally:
        for s in held:
            s.close()


def test_huge_registration_is_refused(tmp_path: Path) -> None:
    """A 12,000-GPU registration (it made every summary take 4.9 s; under the default 1 MiB body
    limit) answers 413, as does a GPU split into 100,000 vGPUs; summaries stay fast."""
    controller = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db", "--vgpu", "4")
    try:
        _huge_registration(controller.addr)
    finally:
        controller.stop()


def _huge_registration(addr: str) -> None:
    huge = [GpuInfo(i, f"GPU-{i}", "sim", 16384) for i in range(12000)]
    with pytest.raises(Exception, match="--max-gpus-per-node"):
        ctl.register_node(addr, NodeInfo("huge", "127.0.0.1:9961"), huge, signer=ops(addr))
    with pytest.raises(Exception, match="--max-vgpus-per-gpu"):
        ctl.register_node(addr, NodeInfo("split", "127.0.0.1:9962"),
                          [GpuInfo(0, "GPU-0", "sim", 16384, 100000)], signer=ops(addr))
    ctl.register_node(addr, NodeInfo("fine", "127.0.0.1:9963"),
                      [GpuInfo(i, f"GPU-{i}", "sim", 16384) for i in range(64)], signer=ops(addr))
    t0 = time.monotonic()
    s = ctl.summary(addr)
    assert time.monotonic() - t0 < 0.5 and s.total_vgpus == 64 * 4
    nodes = json.dumps(ctl.request(addr, "GET", "/api/v1/nodes"))
    assert '"fine"' in nodes and '"huge"' not in nodes and '"split"' not in nodes


def test_node_count_is_limited(tmp_path: Path) -> None:
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db", "--max-nodes", "2")
    try:
        gpus = [GpuInfo(0, "GPU-0", "sim", 16384)]
        for n in ("a", "b"):
            ctl.register_node(c.addr, NodeInfo(n, f"127.0.0.1:99{ord(n)}"), gpus, signer=ops(c.addr))
        with pytest.raises(Exception, match="--max-nodes"):
            ctl.register_node(c.addr, NodeInfo("c", "127.0.0.1:9999"), gpus, signer=ops(c.addr))
        ctl.register_node(c.addr, NodeInfo("a", "127.0.0.1:9997"), gpus, signer=ops(c.addr))  # a known one re-registers
    finally:
        c.stop()


def test_controller_limit_flags_are_documented() -> None:
    out = subprocess.run(["orion-controller", "start", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    for flag in ("--max-body", "--header-timeout", "--max-connections", "--max-gpus-per-node",
                 "--max-vgpus-per-gpu", "--max-nodes"):
        assert flag in out.stdout, flag
