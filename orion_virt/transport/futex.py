"""Sleeping on a 32-bit word of a shared mapping until its writer wakes us (Linux futexes).

A futex on a ``MAP_SHARED`` file mapping is keyed by the file's inode and offset, so any two
processes that map the same device file (host and container alike: they share the kernel) can
sleep and wake each other through it. A VM's BAR is not such a mapping: callers use it only for
devices outside VMs.

The wake-up protocol of a ring (ivshmem/LAYOUT.md, "Waking"): the consumer sets its *waiting*
slot, then sleeps with ``wait(head_address, head_it_saw)``; the kernel re-reads the word with a
full barrier first, so a head published meanwhile makes the wait return at once. The producer
publishes its head, then ``fence()``, then reads the waiting slot and calls ``wake`` when it is
set. The two full barriers make a lost wake-up impossible; every wait still has a timeout, so a
peer that never wakes us (hostile or dead) costs a check interval, never a hang.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import threading

_SYS_FUTEX: int = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), -1)
_FUTEX_WAIT = 0  # shared (not FUTEX_PRIVATE_FLAG): the word lives in a file mapping of two processes
_FUTEX_WAKE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


AVAILABLE = _SYS_FUTEX >= 0 and platform.system() == "Linux"
"""False where this module cannot sleep on a futex: rings then poll (their Backoff)."""

_lock = threading.Lock()
_acquire, _release = _lock.acquire, _lock.release


def fence() -> None:
    """A full memory barrier: an uncontended lock's acquire is a locked compare-and-swap, which
    x86-64 orders against every earlier store and later load (the rings already assume x86-64's
    TSO). Costs ~0.1 µs from Python."""
    _acquire()
    _release()


def base_address(mm: mmap.mmap) -> int:
    """The address of ``mm``'s first byte (the mapping must be writable and stay open)."""
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def wait(address: int, expected: int, timeout: float) -> None:
    """Sleep while the u32 at ``address`` equals ``expected``, at most ``timeout`` seconds.

    Returns on a wake-up, on a changed value (at once), on a timeout or a signal: the caller
    re-reads its counters whichever it was. Raises OSError only for an invalid address."""
    t = max(0.0, timeout)
    ts = _Timespec(int(t), int((t - int(t)) * 1e9))
    r = _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(address), ctypes.c_int(_FUTEX_WAIT),
                 ctypes.c_uint(expected & 0xFFFF_FFFF), ctypes.byref(ts), None, ctypes.c_int(0))
    if r < 0:
        err = ctypes.get_errno()
        if err not in (11, 4, 110):  # EAGAIN (value changed), EINTR, ETIMEDOUT
            raise OSError(err, f"futex wait: {os.strerror(err)}")


def wake(address: int, count: int = 1) -> int:
    """Wake up to ``count`` sleepers on the u32 at ``address``; returns how many woke."""
    r = _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(address), ctypes.c_int(_FUTEX_WAKE),
                 ctypes.c_int(count), None, None, ctypes.c_int(0))
    return max(0, int(r))
