"""Attacks on a real oriond (sim backend) from its own clients: well-framed hostile calls, and a
tenant scribbling over its shared-memory device. Each may cost the attacker its own session,
never oriond nor another tenant. Bounded in count and time; loopback and temporary devices only.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.client.connection import Connection
from orion_virt.errors import OrionError
from orion_virt.transport import tcp
from orion_virt.transport.shmdev import PAGE, Device
from orion_virt.wire import Hello
from orion_virt.wire.calls import SPECS
from orion_virt.wire.spec import Role
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration

CALLS_PER_SESSION = int(os.environ.get("ORION_HOSTILE_CALLS", "1000"))
"""hostile calls per session (three sessions run); ORION_HOSTILE_CALLS raises it"""
ISSUED = (0, 1, 0x1000_0000, 0x2000_0000, 0x3000_0000, 0x4000_0000, 0x5000_0000, 0x6000_0000,
          0x7000_0000, 0x1000_0001, 0x4000_0001)
"""handle values near what a session is issued (its own, its neighbours', none)"""


@pytest.fixture
def oriond(tmp_path: Path) -> Iterator[Oriond]:
    o = Oriond(tmp_path).start()
    yield o
    o.stop()


def _value(rng: random.Random, fmt: str, role: Role | None) -> int | float:
    if fmt in "fd":
        return rng.choice([0.0, -1.0, 1e30, float("inf"), float("nan")])
    bits = {"B": 8, "b": 8, "H": 16, "h": 16, "I": 32, "i": 32, "Q": 64, "q": 64}[fmt]
    signed = fmt.islower()
    if role is Role.HANDLE and rng.random() < 0.7:
        v = rng.choice(ISSUED)
    else:
        v = rng.choice([0, 1, 2, 255, 4096, 1 << 20, 64 << 20, (1 << bits) - 1, rng.getrandbits(bits)])
    v &= (1 << bits) - 1
    if signed and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def _hostile_session(port: int, seed: int) -> tuple[int, int, str]:
    """One session of random well-framed calls: (calls answered, calls sent, how it ended)."""
    rng = random.Random(seed)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = Connection(tcp.SocketStream(sock, timeout=10), "tcp")
    conn.handshake(Hello(pid=os.getpid(), vgpu_count=2, gmem_mib=64, ratio=100, program="hostile"))
    codes = sorted(SPECS)
    answered = sent = 0
    try:
        for _ in range(CALLS_PER_SESSION):
            sp = SPECS[rng.choice(codes)]
            args = []
            blob = b""
            for f in sp.req_fields:
                args.append(_value(rng, f.fmt[-1], f.arg.role if f.arg is not None else None))
            if sp.req_blob:
                blob = os.urandom(rng.choice([0, 1, 8, 64, 4096]))
                args[sp.req_index(sp.req_blob)] = len(blob)
            out = None
            if sp.resp_blob:
                out = memoryview(bytearray(64 << 20))
                for i, f in enumerate(sp.req_fields):  # ask for at most what the buffer holds
                    if f.arg is not None and f.arg.role is Role.VALUE and f.fmt[-1] in "QI":
                        args[i] = min(int(args[i]), 1 << 20)
            sent += 1
            try:
                conn.call(sp.call, tuple(args), blob if sp.req_blob else None, len(blob), out)
                answered += 1
            except OrionError as e:
                return answered, sent, f"session ended: {type(e).__name__}: {e}"
        return answered, sent, "all answered"
    finally:
        try:
            conn.bye()
        except OrionError:
            pass
        sock.close()


def test_well_framed_hostile_calls_cost_at_most_their_own_session(oriond: Oriond) -> None:
    """Random calls of the spec with hostile values (handles of other kinds or sessions,
    huge sizes, extreme floats, random blobs): each is answered with a status or ends only the
    session that sent it; oriond and a tenant next to it go on."""
    t0 = time.monotonic()
    results = [_hostile_session(oriond.port, seed) for seed in (1, 2, 3)]
    for answered, sent, how in results:
        print(f"hostile session: {answered}/{sent} calls answered; {how}")
        assert sent > 0
    assert sum(r[1] for r in results) >= 3 * min(50, CALLS_PER_SESSION) // 2
    assert oriond.proc is not None and oriond.proc.poll() is None, oriond.server_log()
    r = oriond.run(sys.executable, str(ROOT / "examples" / "vectorAdd.py"), tcp=True)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 120


def test_a_tenant_scribbling_over_its_device_costs_no_other_tenant(oriond: Oriond) -> None:
    """Random values written into every header slot and every channel's control page of one
    device, round after round, while another device serves a program: oriond stays up, the
    other tenant's program runs to the end, and the scribbled device is served again once
    recreated."""
    victim = oriond.device(1)
    attacked = oriond.device(2)
    rng = random.Random(5)
    dev = Device(attacked)
    try:
        pages = [0] + [dev.layout.channel_offset(i) for i in range(dev.layout.nchannels)]
        for _ in range(300):
            page = rng.choice(pages)
            slot = rng.randrange(PAGE // 8)
            if page == 0 and slot == 0:
                continue  # the magic: a device without it is simply not an Orion device
            dev.view[page + 8 * slot:page + 8 * slot + 8] = rng.getrandbits(64).to_bytes(8, "little")
            if rng.random() < 0.05:
                time.sleep(0.01)  # let the watcher see intermediate states
    finally:
        dev.close()
    r = oriond.run(sys.executable, str(ROOT / "examples" / "vectorAdd.py"), ORION_SHM_DEVICE=str(victim))
    assert r.returncode == 0, r.stderr
    assert oriond.proc is not None and oriond.proc.poll() is None, oriond.server_log()
    attacked.unlink()
    oriond.device(2)
    r = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), ORION_SHM_DEVICE=str(attacked))
    assert r.returncode == 0, r.stderr + oriond.server_log()[-2000:]


def test_garbage_on_the_port_ends_only_that_connection(oriond: Oriond) -> None:
    """Bytes that are not the protocol: once a header's worth has arrived, oriond closes that
    connection at once (a shorter one waits for the HELLO timeout, see the limits' tests)."""
    rng = random.Random(9)
    for _ in range(20):
        n = rng.choice([1, 15, 16, 17, 64, 4096])
        with socket.create_connection(("127.0.0.1", oriond.port), timeout=5) as s:
            s.sendall(rng.randbytes(n))
            if n < 16:
                continue
            t0 = time.monotonic()
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            assert time.monotonic() - t0 < 3, f"a connection that sent {n} bytes of garbage was held"
    r = oriond.run(sys.executable, str(ROOT / "examples" / "deviceQuery.py"), tcp=True)
    assert r.returncode == 0, r.stderr
