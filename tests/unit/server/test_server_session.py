"""Session isolation and call semantics, with a real Session and client Connection over a socketpair."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from orion_virt.client.connection import Connection
from orion_virt.cuda_enums import CUresult as R
from orion_virt.errors import Refused
from orion_virt.server.session import Session, open_authorizer
from orion_virt.server.sim import SimBackend
from orion_virt.transport.tcp import SocketStream
from orion_virt.wire import HEADER, Call, Hello, Kind

PTX = (Path(__file__).resolve().parents[3] / "orion_virt" / "kernels" / "test_kernels.ptx").read_bytes()
BACKEND = SimBackend(gpus=2, memory_mib=1024)
LOG = logging.getLogger("test.session")


class Client:
    def __init__(self, vgpus: int = 1, gmem: int = 64, ratio: int = 100) -> None:
        a, b = socket.socketpair()
        self.session = Session(SocketStream(b), BACKEND, open_authorizer(1, 64, 2, 1024), 1, LOG)
        self.result: list[str] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.session.run()), daemon=True)
        self.thread.start()
        self.conn = Connection(SocketStream(a), "test")
        self.conn.handshake(Hello(pid=1, vgpu_count=vgpus, gmem_mib=gmem, ratio=ratio))

    def __call__(self, code: Call, *args: int, blob: bytes | None = None, out: memoryview | None = None
                 ) -> tuple[int, tuple, bytes]:
        return self.conn.call(code, args, blob, len(blob) if blob else 0, out)

    def ctx(self, dev: int = 0) -> int:
        st, (h,), _ = self(Call.cuCtxCreate, 0, dev)
        assert st == 0
        return h

    def alloc(self, n: int) -> int:
        st, (p,), _ = self(Call.cuMemAlloc, n)
        assert st == 0, R(st).name
        return p

    def close(self) -> None:
        self.conn.bye()
        self.thread.join(5)


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(vgpus=2, gmem=64)
    yield c
    c.close()


def test_device_queries_report_the_vgpus(client: Client) -> None:
    assert client(Call.cuDeviceGetCount)[1] == (2,)
    assert client(Call.cuDeviceTotalMem, 1)[1] == (64 << 20,)
    st, _, name = client(Call.cuDeviceGetName, 256, 0)
    assert st == 0 and b"sim" in name
    assert client(Call.cuDeviceGet, 2)[0] == R.CUDA_ERROR_INVALID_DEVICE
    u0, u1 = client(Call.cuDeviceGetUuid, 0)[1][0], client(Call.cuDeviceGetUuid, 1)[1][0]
    assert u0 != u1


def test_memory_quota_is_enforced_by_the_server(client: Client) -> None:
    client.ctx()
    p = client.alloc(48 << 20)
    assert client(Call.cuMemAlloc, 32 << 20)[0] == R.CUDA_ERROR_OUT_OF_MEMORY
    st, (free, total), _ = client(Call.cuMemGetInfo)
    assert (st, free, total) == (0, 16 << 20, 64 << 20)
    client(Call.cuMemFree, p)
    assert client(Call.cuMemGetInfo)[1] == (64 << 20, 64 << 20)


def test_copies_round_trip_and_stay_inside_allocations(client: Client) -> None:
    client.ctx()
    p = client.alloc(1 << 20)
    data = np.random.default_rng(1).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes()
    assert client(Call.cuMemcpyHtoD, p, len(data), blob=data)[0] == 0
    out = bytearray(len(data))
    assert client(Call.cuMemcpyDtoH, p, len(data), out=memoryview(out))[0] == 0
    assert bytes(out) == data
    # one byte past the end, and an address nobody allocated
    assert client(Call.cuMemcpyHtoD, p + 1, len(data), blob=data)[0] == R.CUDA_ERROR_INVALID_VALUE
    assert client(Call.cuMemcpyDtoH, 0x1234, 16)[0] == R.CUDA_ERROR_INVALID_VALUE
    # the session still works after refused calls
    assert client(Call.cuMemsetD32, p, 0xABCD, 4)[0] == 0
    st, _, blob = client(Call.cuMemcpyDtoH, p, 16)
    assert struct.unpack("<4I", blob) == (0xABCD,) * 4


def test_a_tenant_cannot_touch_another_tenants_memory_or_handles() -> None:
    a, b = Client(), Client()
    try:
        a.ctx()
        b.ctx()
        secret = b"tenant A secret!" * 4
        pa = a.alloc(64)
        a(Call.cuMemcpyHtoD, pa, len(secret), blob=secret)
        _, (sa,), _ = a(Call.cuStreamCreate, 0)
        _, (mod,), _ = a(Call.cuModuleLoadData, len(PTX), blob=PTX)
        assert b(Call.cuMemcpyDtoH, pa, 64)[0] == R.CUDA_ERROR_INVALID_VALUE
        assert b(Call.cuMemcpyHtoD, pa, 4, blob=b"evil")[0] == R.CUDA_ERROR_INVALID_VALUE
        assert b(Call.cuMemcpyDtoD, pa, pa, 8)[0] == R.CUDA_ERROR_INVALID_VALUE
        assert b(Call.cuStreamSynchronize, sa)[0] == R.CUDA_ERROR_INVALID_HANDLE
        assert b(Call.cuModuleGetFunction, mod, 9, blob=b"vectorAdd")[0] == R.CUDA_ERROR_INVALID_HANDLE
        b(Call.cuMemFree, pa)  # async: its error surfaces at the next synchronising call
        assert b(Call.cuCtxSynchronize)[0] == R.CUDA_ERROR_INVALID_VALUE
        assert a(Call.cuMemcpyDtoH, pa, len(secret))[2] == secret
    finally:
        a.close()
        b.close()


def test_async_errors_surface_at_the_next_synchronising_call(client: Client) -> None:
    client.ctx()
    assert client(Call.cuStreamDestroy, 0xDEAD)[0] == 0  # not waited for
    assert client(Call.cuMemAlloc, 16)[0] == 0  # not a synchronising call: keeps the error
    assert client(Call.cuCtxSynchronize)[0] == R.CUDA_ERROR_INVALID_HANDLE
    assert client(Call.cuCtxSynchronize)[0] == 0


def _launch(c: Client, func: int, grid: int, block: int, params: bytes) -> int:
    return c(Call.cuLaunchKernel, func, grid, 1, 1, block, 1, 1, 0, 0, len(params), blob=params)[0]


def test_kernels_run_and_out_of_bounds_access_is_an_illegal_address(client: Client) -> None:
    client.ctx()
    _, (mod,), _ = client(Call.cuModuleLoadData, len(PTX), blob=PTX)
    st, (fn, plen), layout = client(Call.cuModuleGetFunction, mod, 9, blob=b"vectorAdd")
    assert st == 0 and [struct.unpack_from("<II", layout, i) for i in range(0, plen, 8)] == [
        (0, 8), (8, 8), (16, 8), (24, 4)]
    n = 1000
    a = np.arange(n, dtype=np.float32)
    pa, pb, pc = (client.alloc(a.nbytes) for _ in range(3))
    client(Call.cuMemcpyHtoD, pa, a.nbytes, blob=a.tobytes())
    client(Call.cuMemcpyHtoD, pb, a.nbytes, blob=(2 * a).tobytes())
    assert _launch(client, fn, 4, 256, struct.pack("<QQQi", pa, pb, pc, n)) == 0
    st, _, blob = client(Call.cuMemcpyDtoH, pc, a.nbytes)
    assert np.array_equal(np.frombuffer(blob, np.float32), 3 * a)
    # n larger than the allocations: the sim reports what a GPU would
    assert _launch(client, fn, 8, 256, struct.pack("<QQQi", pa, pb, pc, 2 * n)) == 0
    assert client(Call.cuCtxSynchronize)[0] == R.CUDA_ERROR_ILLEGAL_ADDRESS
    # wrong parameter buffer size is refused
    assert _launch(client, fn, 1, 1, b"\0" * 8) == 0
    assert client(Call.cuCtxSynchronize)[0] == R.CUDA_ERROR_INVALID_VALUE
    assert client(Call.cuModuleGetFunction, mod, 4, blob=b"nope")[0] == R.CUDA_ERROR_NOT_FOUND


def test_launch_attributes_are_checked_before_the_backend_sees_them(client: Client) -> None:
    """orionLaunchKernelEx: a cooperative, prioritised launch runs; a cluster that does not divide the
    grid is INVALID_CLUSTER_SIZE, half-set cluster dimensions and bad flags INVALID_VALUE; the sim
    device has no clusters (NOT_SUPPORTED). Each error is deferred to the next synchronising call."""
    client.ctx()
    _, (mod,), _ = client(Call.cuModuleLoadData, len(PTX), blob=PTX)
    _, (fn, _), _ = client(Call.cuModuleGetFunction, mod, 9, blob=b"vectorAdd")
    n = 1024
    a = np.arange(n, dtype=np.float32)
    pa, pb, pc = (client.alloc(a.nbytes) for _ in range(3))
    client(Call.cuMemcpyHtoD, pa, a.nbytes, blob=a.tobytes())
    client(Call.cuMemcpyHtoD, pb, a.nbytes, blob=a.tobytes())
    params = struct.pack("<QQQi", pa, pb, pc, n)

    def launch_ex(cluster: tuple[int, int, int], policy: int = 0, coop: int = 0, prog: int = 0, prio: int = 0
                  ) -> int:
        assert client(Call.orionLaunchKernelEx, fn, 4, 1, 1, 256, 1, 1, 0, 0, *cluster, policy, coop, prog, prio,
                      len(params), blob=params)[0] == 0
        return client(Call.cuCtxSynchronize)[0]

    assert launch_ex((0, 0, 0), coop=1, prog=1, prio=-1) == 0
    st, _, blob = client(Call.cuMemcpyDtoH, pc, a.nbytes)
    assert np.array_equal(np.frombuffer(blob, np.float32), 2 * a)
    assert launch_ex((3, 1, 1)) == R.CUDA_ERROR_INVALID_CLUSTER_SIZE
    assert launch_ex((2, 0, 1)) == R.CUDA_ERROR_INVALID_VALUE
    assert launch_ex((0, 0, 0), coop=2) == R.CUDA_ERROR_INVALID_VALUE
    assert launch_ex((0, 0, 0), policy=7) == R.CUDA_ERROR_INVALID_VALUE
    assert launch_ex((2, 1, 1), policy=1) == R.CUDA_ERROR_NOT_SUPPORTED
    assert client(Call.cuCtxSynchronize)[0] == 0


def test_cubin_is_not_supported_on_sim(client: Client) -> None:
    client.ctx()
    cubin = (Path(__file__).resolve().parents[3] / "orion_virt" / "kernels" / "test_kernels.sm_90.cubin").read_bytes()
    assert client(Call.cuModuleLoadData, len(cubin), blob=cubin)[0] == R.CUDA_ERROR_NOT_SUPPORTED


def test_garbage_ends_only_that_session() -> None:
    bad, good = Client(), Client()
    try:
        good.ctx()
        bad.conn.stream.send(HEADER.pack(8, Kind.CALL, 0, 9999, 1, 0) + b"\0" * 8)
        bad.conn.stream.flush()
        with pytest.raises(Refused, match="protocol error: unknown call code 9999") as e:
            bad(Call.cuCtxSynchronize)
        assert e.value.status == R.CUDA_ERROR_UNKNOWN
        bad.thread.join(5)
        assert bad.result and bad.result[0].startswith("protocol error")
        assert good(Call.cuCtxSynchronize)[0] == 0
    finally:
        good.close()


def test_session_end_frees_device_memory() -> None:
    c = Client()
    c.ctx()
    for _ in range(3):
        c.alloc(1 << 20)
    bs = c.session.bs
    assert bs is not None and bs.mem.used[0] == 3 << 20
    c.close()
    assert c.result == ["bye"] and c.session.bs is None and bs.mem.used[0] == 0


def test_handshake_refused_with_a_reason() -> None:
    a, b = socket.socketpair()
    s = Session(SocketStream(b), BACKEND, open_authorizer(1, 64, 2, 1024), 1, LOG)
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    conn = Connection(SocketStream(a), "test")
    with pytest.raises(Refused, match="exceeds the memory of one GPU") as e:
        conn.handshake(Hello(pid=1, vgpu_count=1, gmem_mib=4096, ratio=100))
    assert e.value.status == R.CUDA_ERROR_OUT_OF_MEMORY
    t.join(5)


def test_context_lifecycle(client: Client) -> None:
    assert client(Call.cuMemAlloc, 16)[0] == R.CUDA_ERROR_INVALID_CONTEXT
    c0, c1 = client.ctx(0), client.ctx(1)
    p1 = client.alloc(1 << 20)  # on device 1, the current one
    assert client(Call.cuMemGetInfo)[1] == (63 << 20, 64 << 20)
    client(Call.cuCtxSetCurrent, c0)
    assert client(Call.cuMemGetInfo)[1] == (64 << 20, 64 << 20)
    assert client(Call.cuCtxDestroy, c1)[0] == 0
    assert client(Call.cuMemGetInfo)[0] == 0  # c0 still current
    assert client(Call.cuCtxDestroy, c0)[0] == 0
    assert client(Call.cuCtxSynchronize)[0] == R.CUDA_ERROR_INVALID_CONTEXT
    assert client(Call.cuCtxDestroy, c0)[0] == R.CUDA_ERROR_INVALID_CONTEXT
    assert p1
