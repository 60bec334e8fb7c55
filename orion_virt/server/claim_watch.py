"""Waking oriond's main loop when a client claims a channel, without polling the devices.

A client rings a device's claim bell after claiming a channel (``shmdev.ring_claim_bell``): it
bumps a header word and wakes the futex on it. One thread per device sleeps on that futex and, on
a change, writes a byte to a pipe that the main loop's ``select`` watches along with the TCP
listener. The threads only sleep, compare and write: they take no lock a forked worker could
inherit held, and each holds its device's mapping until it has stopped, so the memory it sleeps
on stays mapped. A VM's guest cannot reach a host futex: VM devices are polled by the main loop.
"""

from __future__ import annotations

import os
import threading

from ..transport import futex
from ..transport.shmdev import H_CLAIM_BELL, Device

WAKE_CHECK_S = 1.0
"""A sleeping watcher re-reads the bell at least this often (a bell rung by a client that does
not wake the futex is still noticed)."""


class ClaimBells:
    """The watcher threads of the served devices and the pipe they write to."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threads: dict[int, tuple[threading.Thread, threading.Event, Device]] = {}

    def fileno(self) -> int:
        return self.r

    def watch(self, dev: Device) -> bool:
        """Start watching ``dev`` (False where futexes cannot wake us: a VM device)."""
        if not dev.wakes or id(dev) in self._threads:
            return False
        stop = threading.Event()
        t = threading.Thread(target=self._run, args=(dev, stop), name=f"claims {dev.path}", daemon=True)
        self._threads[id(dev)] = (t, stop, dev)
        t.start()
        return True

    def _run(self, dev: Device, stop: threading.Event) -> None:
        addr = dev.address + 8 * H_CLAIM_BELL
        q = dev.q
        seen = q[H_CLAIM_BELL]
        while not stop.is_set():
            futex.wait(addr, seen, WAKE_CHECK_S)
            now = q[H_CLAIM_BELL]
            if now != seen:
                seen = now
                try:
                    os.write(self.w, b"c")
                except BlockingIOError:
                    pass  # the pipe is full: the main loop has a wake-up pending anyway

    def unwatch(self, dev: Device) -> None:
        entry = self._threads.pop(id(dev), None)
        if entry is None:
            return
        t, stop, _dev = entry
        stop.set()
        futex.wake(dev.address + 8 * H_CLAIM_BELL, 1 << 20)
        t.join(timeout=2 * WAKE_CHECK_S)

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for entry in list(self._threads.values()):
            self.unwatch(entry[2])
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass

    def close_in_child(self) -> None:
        """In a forked worker: the threads do not exist there; only the fds are inherited."""
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
