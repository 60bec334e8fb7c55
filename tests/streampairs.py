"""Real stream pairs for tests: a channel of a real shared-memory device file served in this
process, as oriond serves it (heartbeat ticking), and its client end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from orion_virt.server.shm_serve import ServerChannel, open_for_serving, pending_claims
from orion_virt.transport import shmdev
from orion_virt.transport.base import Stream
from orion_virt.transport.shmdev import Device, claim_channel


def _ticker(w: shmdev.Device, stop: threading.Event) -> None:
    while not stop.wait(0.02):
        w.q[shmdev.H_SERVER_BEAT] += 1


def _serve_one(path: Path, stop: threading.Event) -> tuple[Stream, ServerChannel]:
    w = open_for_serving(path)
    assert w is not None
    threading.Thread(target=_ticker, args=(w.dev, stop), daemon=True).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        claims = pending_claims(w)
        if claims:
            ch, gen = claims[0]
            chan = ServerChannel(w.dev, ch, gen, vm=False)
            return chan.start(), chan
        time.sleep(0.002)
    raise AssertionError("no client claimed a channel")


def _client(path: Path) -> Stream:
    deadline = time.monotonic() + 10
    while True:
        dev = Device(path)
        if dev.q[shmdev.H_SERVER_EPOCH]:
            return claim_channel(dev).stream()
        dev.close()
        if time.monotonic() > deadline:
            raise AssertionError("device never served")
        time.sleep(0.005)

