"""Server side of shared-memory devices: watching devices and serving one channel.

The watcher (in oriond's main process) keeps the device header's server heartbeat ticking, notices
newly claimed channels, devices that appear, and devices removed or replaced under it. A channel is
served by a worker process; ``serve_channel_stream`` builds that worker's stream.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DeviceError, StreamBroken
from ..transport.doorbell import DoorbellServer
from ..transport.ring import Bell, RingStream
from ..transport.shmdev import (
    C_CLIENT_BEAT,
    C_DB_SERVER,
    C_GEN,
    C_REQ_HEAD,
    C_REQ_TAIL,
    C_REQ_WAIT,
    C_RESP_HEAD,
    C_RESP_TAIL,
    C_RESP_WAIT,
    C_SERVED_GEN,
    C_STATE,
    CLAIMED,
    CLOSED,
    DEAD,
    H_DB_LISTENING,
    H_SERVER_BEAT,
    H_SERVER_EPOCH,
    H_SERVER_PID,
    SERVING,
    Device,
)

CLIENT_TIMEOUT_S = 10.0


class ServerChannel:
    """The worker's view of channel ``index`` for generation ``gen``."""

    def __init__(self, dev: Device, index: int, gen: int, vm: bool) -> None:
        self.dev = dev
        self.index = index
        self.gen = gen
        self.vm = vm
        self.ctrl = dev.ctrl(index)
        self._beat = (self.ctrl[C_CLIENT_BEAT], time.monotonic())

    def start(self, bells: tuple[Bell, Bell] | None = None) -> RingStream:
        """Reset the rings and serve the channel. ``bells`` (request ring's, response ring's):
        a doorbell VM device's worker sleeps and wakes through them, and says so (C_DB_SERVER)."""
        self.dev.populate(self.index)
        c = self.ctrl
        c[C_REQ_HEAD] = c[C_REQ_TAIL] = c[C_RESP_HEAD] = c[C_RESP_TAIL] = 0
        c[C_REQ_WAIT] = c[C_RESP_WAIT] = 0
        c[C_DB_SERVER] = 1 if bells is not None else 0
        c[C_SERVED_GEN] = self.gen
        c[C_STATE] = SERVING
        tx, rx = self.dev.ring_pair(self.index, server=True, bells=bells)
        return RingStream(tx, rx, check=self.check, name=f"shm {self.dev.path}#{self.index}", max_sleep=0.01)

    def check(self) -> None:
        c = self.ctrl
        if c[C_GEN] != self.gen:
            raise StreamBroken("channel reclaimed by a new client")
        state = c[C_STATE]
        if state == CLOSED:
            raise StreamBroken("client released the channel")
        if state == DEAD:
            raise StreamBroken(self.dev.reason(self.index) or "channel marked dead")
        if not self.vm:
            if not self.dev.owner_alive(self.index):
                raise StreamBroken("client process is gone (its channel lock was released)")
            return
        beat = c[C_CLIENT_BEAT]
        now = time.monotonic()
        if beat != self._beat[0]:
            self._beat = (beat, now)
        elif now - self._beat[1] > CLIENT_TIMEOUT_S:
            raise StreamBroken(f"client heartbeat stopped for {CLIENT_TIMEOUT_S:.0f} s")

    def finish(self, reason: str) -> None:
        """End the session: the channel is marked dead with ``reason`` (if still this session's)
        and its rings are zeroed once the client has read what was sent to it (an ERROR frame
        saying why), it is gone, or SCRUB_WAIT_S has passed: a client still reading never finds
        its last frame zeroed under it."""
        c = self.ctrl
        if c[C_GEN] == self.gen and c[C_STATE] == SERVING:
            self.dev.set_dead(self.index, reason[:63])
        deadline = time.monotonic() + SCRUB_WAIT_S
        while (c[C_GEN] == self.gen and c[C_RESP_TAIL] != c[C_RESP_HEAD] and time.monotonic() < deadline
               and (self.vm or self.dev.owner_alive(self.index))):
            time.sleep(0.001)
        self.dev.scrub(self.index)


SCRUB_WAIT_S = 0.5
"""The longest a finished session's rings wait for the client to read its last frame."""


@dataclass
class Watched:
    path: Path
    dev: Device
    inode: tuple[int, int]
    workers: dict[int, tuple[int, int]] = field(default_factory=dict)
    """channel -> (worker pid, generation)"""
    doorbell: DoorbellServer | None = None
    """the ivshmem server of a doorbell VM device (listening while the device is served)"""


def device_removed(w: Watched) -> str | None:
    try:
        st = os.stat(w.path)
    except FileNotFoundError:
        return "device was removed on the host"
    if (st.st_dev, st.st_ino) != w.inode:
        return "device was replaced on the host"
    if st.st_size != w.dev.layout.size:
        return "device was resized on the host"
    return None


def open_for_serving(path: Path, accept: Callable[[Device], bool] | None = None,
                     skipped: Callable[[str], None] | None = None) -> Watched | None:
    """Map ``path`` for serving; None if it is not (yet) a valid Orion device (``skipped`` gets
    the reason), or if ``accept`` rejects it (then its header is left untouched: another oriond
    may be serving it)."""
    try:
        dev = Device(path)
    except DeviceError as e:
        if skipped is not None:
            skipped(str(e))
        return None
    if accept is not None and not accept(dev):
        dev.close()
        return None
    dev.q[H_SERVER_PID] = os.getpid()
    dev.q[H_SERVER_EPOCH] = int(time.time() * 1000) | 1
    return Watched(path, dev, dev.inode)


def tick(w: Watched) -> None:
    """The server heartbeat. The counter lives in memory a client can write: it wraps, whatever
    value it holds."""
    w.dev.q[H_SERVER_BEAT] = (w.dev.q[H_SERVER_BEAT] + 1) & 0xFFFF_FFFF_FFFF_FFFF


def pending_claims(w: Watched) -> list[tuple[int, int]]:
    """(channel, generation) pairs claimed by a client and not yet served at that generation.

    On a host or container device a claim counts only while its claimer holds the channel's
    lock (it takes the lock before it writes the claim): one without is marked dead with the
    reason. A VM's claims cannot be checked so (its locks are the guest's)."""
    out = []
    for i in range(w.dev.layout.nchannels):
        c = w.dev.ctrl(i)
        if c[C_STATE] == CLAIMED:
            gen = c[C_GEN]
            cur = w.workers.get(i)
            if cur is None or cur[1] != gen:
                if not w.dev.vm and not w.dev.owner_alive(i):
                    c[C_SERVED_GEN] = gen
                    w.dev.set_dead(i, "claimed without holding the channel's lock")
                    continue
                out.append((i, gen))
    return out


def start_doorbell(w: Watched, sock_path: Path, log: Callable[[str], None]) -> DoorbellServer:
    """Listen for the QEMU of a doorbell VM device (before it starts: the hook waits for
    H_DB_LISTENING), with as many vectors as the domain's device has. Raises TransportError or
    DeviceError when the socket cannot be had."""
    srv = DoorbellServer(w.path, sock_path, vectors=w.dev.doorbell_vectors, log=log)
    srv.start()
    w.doorbell = srv
    w.dev.q[H_DB_LISTENING] = os.getpid()
    return srv


def stop_serving(w: Watched, reason: str) -> None:
    for i in range(w.dev.layout.nchannels):
        if w.dev.state(i) in (CLAIMED, SERVING):
            w.dev.set_dead(i, reason[:63])
    w.dev.q[H_SERVER_EPOCH] = 0
    if w.doorbell is not None:
        w.doorbell.close()
        w.doorbell = None
        w.dev.q[H_DB_LISTENING] = 0
