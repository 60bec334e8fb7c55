"""Host memory a client shares with its session (``orionHostShare``): page-locked memory without a copy.

The native client makes each ``cuMemHostAlloc`` block a memfd it seals against shrinking, maps it,
and names its descriptor; oriond takes its own copy of that descriptor from the process holding the
channel (``pidfd_getfd``: the same open file, never a re-open with oriond's rights), maps it and
registers it with the GPU. A copy between that block and the device is then one DMA, and the bytes
never cross the ring.

Invariants, each checked before a block is used:

* only a process whose pid oriond itself found (the holder of the channel's lock) is asked for a
  descriptor, so a client can name only its own descriptors;
* the descriptor is a memfd sealed against shrinking (``F_SEAL_SHRINK``) whose size is what the
  client said: its pages cannot vanish under oriond's mapping (no SIGBUS in the worker);
* blocks of one session do not overlap (by client address), their count and total size are
  bounded, and a copy's range must lie inside one block.

Failure modes: every refusal is a CudaCallError the client receives as the call's status (it then
keeps the memory in its own process and copies through the ring).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..cuda_enums import CUresult as E
from .backend import BackendSession, CudaCallError

SYS_PIDFD_GETFD = 438
MAX_BLOCKS = 4096
PAGE = mmap.PAGESIZE
_F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_at(fd: int, size: int, addr: int) -> int:
    """Map ``size`` bytes of ``fd`` shared and writable, at ``addr`` if that range is free in this
    process (then a host pointer means the same here as in the client: UVA), else anywhere.
    Returns the address; raises OSError."""
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED
    r = _libc.mmap(addr, size, prot, flags | MAP_FIXED_NOREPLACE, fd, 0)
    if r not in (None, _MAP_FAILED) and r != addr:  # a kernel that takes the flag as a hint
        _libc.munmap(r, size)
        r = None
    if r in (None, _MAP_FAILED):
        r = _libc.mmap(None, size, prot, flags, fd, 0)
        if r in (None, _MAP_FAILED):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return int(r)


def default_limit() -> int:
    """The most bytes one session may share: half the host's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 16 << 30


def take_fd(pid: int, fd: int) -> int:
    """A descriptor of this process for descriptor ``fd`` of process ``pid``. Raises OSError."""
    pidfd = os.pidfd_open(pid)
    try:
        r = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return int(r)
    finally:
        os.close(pidfd)


@dataclass
class Block:
    addr: int
    """The client's address of the block."""
    size: int
    local: int
    """Where oriond mapped it: ``addr`` itself unless that range was taken in the worker."""
    view: memoryview

    @property
    def same_address(self) -> bool:
        return self.local == self.addr


def _refuse(why: str) -> CudaCallError:
    return CudaCallError(E.CUDA_ERROR_INVALID_VALUE, f"orionHostShare: {why}")


class SharedHost:
    """The blocks one session shares, by client address. ``peer_pid`` says who holds the channel
    (None: a transport where oriond cannot see the client's process, TCP or a VM)."""

    def __init__(self, peer_pid: Callable[[], int | None] | None, limit: int | None = None) -> None:
        self.peer_pid = peer_pid
        self.limit = default_limit() if limit is None else limit
        self.bytes = 0
        self._starts: list[int] = []
        self._blocks: dict[int, Block] = {}

    def share(self, fd: int, addr: int, size: int, backend: BackendSession) -> Block:
        pid = self.peer_pid() if self.peer_pid is not None else None
        if pid is None:
            raise CudaCallError(E.CUDA_ERROR_NOT_SUPPORTED,
                                "orionHostShare: only a shared-memory channel of this host or of a container "
                                "can share host memory (not TCP, not a VM)")
        if size <= 0 or size % PAGE or addr % PAGE or addr <= 0 or addr + size > 1 << 64:
            raise _refuse(f"block of {size} bytes at {addr:#x}: not whole pages")
        if len(self._blocks) >= MAX_BLOCKS:
            raise CudaCallError(E.CUDA_ERROR_OUT_OF_MEMORY, f"orionHostShare: at most {MAX_BLOCKS} blocks")
        if self.bytes + size > self.limit:
            raise CudaCallError(E.CUDA_ERROR_OUT_OF_MEMORY,
                                f"orionHostShare: {size} more bytes would pass the session's limit of "
                                f"{self.limit} bytes of shared host memory")
        i = bisect.bisect_right(self._starts, addr)
        if i and self._blocks[self._starts[i - 1]].addr + self._blocks[self._starts[i - 1]].size > addr or \
                i < len(self._starts) and self._starts[i] < addr + size:
            raise _refuse(f"block at {addr:#x} overlaps one already shared")
        try:
            own = take_fd(pid, fd)
        except OSError as e:
            hint = " (oriond needs CAP_SYS_PTRACE over the client: run it as root)" if e.errno == errno.EPERM else ""
            why = f"orionHostShare: cannot take descriptor {fd} of pid {pid}: {e.strerror}{hint}"
            raise CudaCallError(E.CUDA_ERROR_NOT_PERMITTED, why) from None
        try:
            st = os.fstat(own)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 0:
                raise _refuse(f"descriptor {fd} is not a memfd")
            try:
                seals = fcntl.fcntl(own, _F_GET_SEALS)
            except OSError:
                raise _refuse(f"descriptor {fd} is not a memfd") from None
            if not seals & _F_SEAL_SHRINK:
                raise _refuse(f"descriptor {fd} is not sealed against shrinking (F_SEAL_SHRINK)")
            if st.st_size != size:
                raise _refuse(f"descriptor {fd} holds {st.st_size} bytes, not {size}")
            try:
                local = map_at(own, size, addr)
            except OSError as e:
                raise CudaCallError(E.CUDA_ERROR_OUT_OF_MEMORY, f"orionHostShare: mmap: {e.strerror}") from None
        finally:
            os.close(own)
        b = Block(addr, size, local, memoryview((ctypes.c_char * size).from_address(local)).cast("B"))
        backend.register_host(b.view)
        bisect.insort(self._starts, addr)
        self._blocks[addr] = b
        self.bytes += size
        return b

    def unshare(self, addr: int, backend: BackendSession) -> None:
        b = self._blocks.pop(addr, None)
        if b is None:
            raise _refuse(f"no block shared at {addr:#x}")
        self._starts.remove(addr)
        self.bytes -= b.size
        backend.unregister_host(b.view)
        self._release(b)

    def view(self, addr: int, n: int) -> memoryview:
        """The ``n`` bytes at client address ``addr``; CUDA_ERROR_INVALID_VALUE unless they lie in one block."""
        try:
            b = self.block(addr)
        except CudaCallError:
            b = None
        off = addr - b.addr if b is not None else 0
        if b is None or not 0 <= n <= b.size - off:
            raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                                f"{n} bytes at host address {addr:#x} are not in memory shared with the session")
        return b.view[off:off + n]

    def close(self) -> None:
        """Unmap every block (after the backend has unregistered them). Idempotent."""
        for b in self._blocks.values():
            self._release(b)
        self._blocks.clear()
        self._starts.clear()
        self.bytes = 0

    def block(self, addr: int) -> Block:
        """The block that holds client address ``addr``; CUDA_ERROR_INVALID_VALUE if none."""
        i = bisect.bisect_right(self._starts, addr)
        if i:
            b = self._blocks[self._starts[i - 1]]
            if addr - b.addr < b.size:
                return b
        raise CudaCallError(E.CUDA_ERROR_INVALID_VALUE,
                            f"host address {addr:#x} is not in memory shared with the session")

    @staticmethod
    def _release(b: Block) -> None:
        """Unmap. A graph captured with a copy to or from the block and replayed later would touch
        unmapped memory, as natively after cuMemFreeHost: only this session's worker can suffer."""
        b.view.release()
        _libc.munmap(b.local, b.size)
