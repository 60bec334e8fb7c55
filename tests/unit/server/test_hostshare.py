"""orionHostShare's checks on what a client hands oriond: real descriptors of a real process (this
test's child), taken with pidfd_getfd as oriond takes them."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orion_virt.cuda_enums import CUresult as E
from orion_virt.server.backend import CudaCallError
from orion_virt.server.hostshare import PAGE, SharedHost

CHILD = r"""
import fcntl, os, sys, time
def memfd(n, seals):
    fd = os.memfd_create("orion-pinned", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, n)
    os.pwrite(fd, b"client bytes", 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd
fds = {
    "sealed": memfd(4 * 4096, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL),
    "sealed2": memfd(2 * 4096, fcntl.F_SEAL_SHRINK),
    "unsealed": memfd(4096, 0),
    "file": os.open(sys.argv[1], os.O_RDONLY),
}
print(" ".join(f"{k}={v}" for k, v in fds.items()), flush=True)
time.sleep(60)
"""


class Recorder:
    """The backend hooks hostshare calls (pinning is the cuda backend's, tested on the GPU)."""

    def __init__(self) -> None:
        self.registered: list[int] = []

    def register_host(self, view: memoryview) -> None:
        self.registered.append(view.nbytes)

    def unregister_host(self, view: memoryview) -> None:
        self.registered.remove(view.nbytes)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[int, dict[str, int]]]:
    secret = tmp_path / "not-yours"
    secret.write_bytes(b"x" * 4096)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(secret)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        fds = {k: int(v) for k, v in (kv.split("=") for kv in p.stdout.readline().split())}
        yield p.pid, fds
    finally:
        p.kill()
        p.wait()


def _status(e: pytest.ExceptionInfo[CudaCallError]) -> int:
    return e.value.code


def test_a_sealed_memfd_is_mapped_and_its_bytes_are_the_clients(client: tuple[int, dict[str, int]]) -> None:
    pid, fds = client
    sh, be = SharedHost(lambda: pid), Recorder()
    base = 0x7F00_0000_0000
    sh.share(fds["sealed"], base, 4 * PAGE, be)  # type: ignore[arg-type]
    assert bytes(sh.view(base, 12)) == b"client bytes"
    sh.view(base + 100, 4 * PAGE - 100)[:4] = b"back"  # oriond writes (a DtoH), the client reads the same pages
    assert be.registered == [4 * PAGE] and sh.bytes == 4 * PAGE
    with pytest.raises(CudaCallError) as e:
        sh.view(base + 1, 4 * PAGE)  # one byte past the block
    assert _status(e) == E.CUDA_ERROR_INVALID_VALUE and "not in memory shared" in str(e.value.message)
    with pytest.raises(CudaCallError):
        sh.view(base - 1, 2)
    sh.unshare(base, be)  # type: ignore[arg-type]
    assert be.registered == [] and sh.bytes == 0
    with pytest.raises(CudaCallError):
        sh.view(base, 1)


@pytest.mark.parametrize("which, size, words", [
    ("unsealed", PAGE, "not sealed against shrinking"),
    ("file", PAGE, "is not a memfd"),
    ("sealed", 2 * PAGE, "holds 16384 bytes, not 8192"),
])
def test_anything_but_a_sealed_memfd_of_the_size_given_is_refused(client: tuple[int, dict[str, int]], which: str,
                                                                  size: int, words: str) -> None:
    pid, fds = client
    sh, be = SharedHost(lambda: pid), Recorder()
    with pytest.raises(CudaCallError) as e:
        sh.share(fds[which], 0x7F00_0000_0000, size, be)  # type: ignore[arg-type]
    assert _status(e) == E.CUDA_ERROR_INVALID_VALUE and words in str(e.value.message)
    assert be.registered == [] and sh.bytes == 0


def test_overlaps_limits_odd_sizes_and_other_transports_are_refused(client: tuple[int, dict[str, int]]) -> None:
    pid, fds = client
    be = Recorder()
    sh = SharedHost(lambda: pid, limit=6 * PAGE)
    base = 0x7F00_0000_0000
    sh.share(fds["sealed"], base, 4 * PAGE, be)  # type: ignore[arg-type]
    with pytest.raises(CudaCallError, match="overlaps"):
        sh.share(fds["sealed2"], base + 3 * PAGE, 2 * PAGE, be)  # type: ignore[arg-type]
    with pytest.raises(CudaCallError, match="not whole pages"):
        sh.share(fds["sealed2"], base + 4 * PAGE + 1, 2 * PAGE, be)  # type: ignore[arg-type]
    sh.share(fds["sealed2"], base + 4 * PAGE, 2 * PAGE, be)  # adjacent: fine, and exactly the limit
    assert sh.bytes == 6 * PAGE
    with pytest.raises(CudaCallError) as e:
        sh.share(fds["sealed2"], base + 8 * PAGE, 2 * PAGE, be)  # type: ignore[arg-type]
    assert _status(e) == E.CUDA_ERROR_OUT_OF_MEMORY and "limit" in str(e.value.message)
    with pytest.raises(CudaCallError, match="no block shared"):
        sh.unshare(base + PAGE, be)  # type: ignore[arg-type]
    sh.close()
    assert sh.bytes == 0
    tcp = SharedHost(None)
    with pytest.raises(CudaCallError) as e:
        tcp.share(fds["sealed"], base, 4 * PAGE, be)  # type: ignore[arg-type]
    assert _status(e) == E.CUDA_ERROR_NOT_SUPPORTED


def test_a_descriptor_the_client_does_not_have_is_refused_with_the_reason(client: tuple[int, dict[str, int]]) -> None:
    pid, _fds = client
    sh = SharedHost(lambda: pid)
    with pytest.raises(CudaCallError) as e:
        sh.share(987, 0x7F00_0000_0000, PAGE, Recorder())  # type: ignore[arg-type]
    assert _status(e) == E.CUDA_ERROR_NOT_PERMITTED and "cannot take descriptor 987" in str(e.value.message)


def test_the_seals_it_relies_on_are_the_kernels() -> None:
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, PAGE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)  # what would take pages away from under oriond's mapping
    finally:
        os.close(fd)
