"""A ring's idle waiter sleeps on a futex and is woken by the peer's write, never by its timeout.

Each pair is a channel of a real device file with its peer in another process. A lost wake-up
would show as a round trip of about ``CHECK_S`` (the sleeper's timeout); these tests bound the
round trips well below it. The bounds are about correctness (nothing lost), not speed:
``orion-bench`` measures the wake-up latency.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from orion_virt.transport import futex
from orion_virt.transport.ring import CHECK_S, RingStream
from orion_virt.transport.shmdev import Device, format_device
from tests.unit.transport.test_transport_conformance import make_pair, roundtrip

pytestmark = pytest.mark.skipif(not futex.AVAILABLE, reason="futexes need Linux on x86-64 or aarch64")
LOST = CHECK_S / 2
"""A round trip this long means the peer woke by its timeout: its wake-up was lost."""


@pytest.fixture(params=["shm-local-client", "shm-local-server"])
def pair_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_an_idle_peer_sleeps_and_the_next_write_wakes_it(pair_kind: str, tmp_path: Path) -> None:
    pair = make_pair(pair_kind, "echo", tmp_path)
    try:
        s = pair.local
        assert isinstance(s, RingStream) and s.tx.wait_i >= 0
        assert roundtrip(s, b"warm") == b"warm"
        deadline = time.monotonic() + 5
        while not s.tx.ctrl[s.tx.wait_i]:  # the peer has spun, then gone to sleep on our head
            assert time.monotonic() < deadline, "the idle peer never went to sleep"
            time.sleep(0.001)
        time.sleep(0.05)
        t0 = time.monotonic()
        assert roundtrip(s, b"wake up") == b"wake up"
        assert time.monotonic() - t0 < LOST
    finally:
        pair.close()


def test_no_wakeup_is_lost_between_spinning_and_sleeping(pair_kind: str, tmp_path: Path) -> None:
    """Gaps around the spin window, so that writes land while the peer is deciding to sleep."""
    pair = make_pair(pair_kind, "echo", tmp_path)
    rng = random.Random(7)
    try:
        worst = 0.0
        for i in range(400):
            time.sleep(rng.choice([0, 20e-6, 60e-6, 120e-6, 400e-6, 2e-3]))
            msg = i.to_bytes(4, "little")
            t0 = time.monotonic()
            assert roundtrip(pair.local, msg) == msg
            worst = max(worst, time.monotonic() - t0)
        assert worst < LOST, f"a round trip took {worst * 1e3:.0f} ms: a wake-up was lost"
    finally:
        pair.close()


def test_a_vm_device_polls_and_never_sleeps_on_a_futex(tmp_path: Path) -> None:
    """A guest cannot wake a host futex (nor the host a guest's): both ends poll a VM device."""
    path = tmp_path / "orionsock3"
    format_device(path, 2 << 20, vm=True)
    dev = Device(path)
    try:
        assert not dev.wakes
        for server in (True, False):
            assert all(r.wait_i < 0 for r in dev.ring_pair(0, server))
    finally:
        dev.close()


def test_a_doorbell_vm_device_sleeps_on_eventfds_and_loses_no_wakeup(tmp_path: Path) -> None:
    """A doorbell VM device: the ends sleep on eventfds (what QEMU signals for a guest's ring and
    turns into the guest's MSI-X for oriond's), each ring's bell one way; no wake-up is lost."""
    import os

    from orion_virt.transport.doorbell import EventfdBell

    path = tmp_path / "orionsock4"
    format_device(path, 2 << 20, vm=True, doorbell_vectors=9)
    dev = Device(path)
    to_server = os.eventfd(0, os.EFD_NONBLOCK)
    to_client = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert dev.doorbell and dev.doorbell_vectors == 9 and not dev.wakes
        pid = os.fork()
        if pid == 0:  # the worker: an echo server on the request ring
            code = 1
            try:
                tx, rx = dev.ring_pair(0, True, (EventfdBell(wait_fd=to_server), EventfdBell(ring_fd=to_client)))
                s = RingStream(tx, rx, timeout=10)
                while (msg := s.recv_exact(4)) != b"\0\0\0\0":
                    s.send(msg)
                code = 0
            finally:
                os._exit(code)
        ring_server, sleep_client = EventfdBell(ring_fd=to_server), EventfdBell(wait_fd=to_client)
        tx, rx = dev.ring_pair(0, False, (ring_server, sleep_client))
        c = RingStream(tx, rx, timeout=10)
        rng = random.Random(11)
        worst = 0.0
        for i in range(1, 300):
            time.sleep(rng.choice([0, 20e-6, 60e-6, 120e-6, 400e-6, 2e-3]))
            msg = i.to_bytes(4, "little")
            t0 = time.monotonic()
            c.send(msg)
            assert c.recv_exact(4) == msg
            worst = max(worst, time.monotonic() - t0)
        c.send(b"\0\0\0\0")
        assert os.waitpid(pid, 0)[1] == 0
        assert worst < LOST, f"a round trip took {worst * 1e3:.0f} ms: a wake-up was lost"
        assert ring_server.wakes > 0, "the worker never slept on its doorbell"
        assert sleep_client.sleeps > 0, "the client never slept on its doorbell"
    finally:
        os.close(to_server)
        os.close(to_client)
        dev.close()


def test_a_client_that_never_rings_clears_a_previous_clients_doorbell_peer(tmp_path: Path) -> None:
    """The worker sleeps on the doorbell only for a client that said it rings (slot 72): a
    claim by a client that never rings (``claim_channel``) must not inherit a native client's value."""
    import threading

    from orion_virt.transport.shmdev import (
        C_DB_PEER,
        C_SERVED_GEN,
        C_STATE,
        CLAIMED,
        H_SERVER_EPOCH,
        SERVING,
        claim_channel,
    )

    path = tmp_path / "orionsock5"
    format_device(path, 2 << 20, vm=True, doorbell_vectors=9)
    dev = Device(path)
    try:
        dev.q[H_SERVER_EPOCH] = 1
        c = dev.ctrl(0)
        c[C_DB_PEER] = 3  # left by an earlier native client
        seen: list[int] = []

        def serve() -> None:
            while c[C_STATE] != CLAIMED:
                time.sleep(0.001)
            seen.append(int(c[C_DB_PEER]))
            c[C_SERVED_GEN] = c[1]
            c[C_STATE] = SERVING

        t = threading.Thread(target=serve)
        t.start()
        ch = claim_channel(dev, check_tenants=False)
        t.join()
        assert seen == [0]
        ch.release()
    finally:
        dev.close()
