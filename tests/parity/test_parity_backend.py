"""Backend-session level parity: every backend answers the same validated operations the same way."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from orion_virt.cuda_enums import CUresult as E
from orion_virt.server import ptx as ptx_parser
from orion_virt.server.backend import CudaCallError, VGpu
from tests.parity.harness import CUBIN_SM90, FATBIN, PTX, MiB, compute_capability, is_cuda, pack

KERNEL_FMT = {"vectorAdd": "<QQQi", "saxpy": "<fxxxxQQi", "fill_u32": "<QIi", "matmul_f32": "<QQQi", "spin": "<qQ"}


def code_of(excinfo: pytest.ExceptionInfo) -> E:
    return E(excinfo.value.code)


def upload(bs, arr: np.ndarray, dev: int = 0) -> int:
    p = bs.alloc(dev, arr.nbytes)
    bs.write(p, [memoryview(arr.tobytes())])
    return p


def download(bs, p: int, dtype: type, count: int) -> np.ndarray:
    out = bytearray(np.dtype(dtype).itemsize * count)
    bs.read(p, [memoryview(out)])
    return np.frombuffer(bytes(out), dtype=dtype)


def launch(bs, module, name: str, grid, block, *values, stream=None) -> float:
    func, slots = bs.get_function(module, name)
    params = pack(KERNEL_FMT[name], *values)
    assert len(params) == max(s.offset + s.size for s in slots)
    return bs.launch(func, grid, block, 0, stream, params)


# -- memory ----------------------------------------------------------------------------------------


def test_alloc_free_and_quota(bs):
    a = bs.alloc(0, 200 * MiB)
    with pytest.raises(CudaCallError) as ei:
        bs.alloc(0, 100 * MiB)
    assert code_of(ei) is E.CUDA_ERROR_OUT_OF_MEMORY
    b = bs.alloc(0, 56 * MiB)  # exactly fills the 256 MiB quota
    assert bs.mem.used[0] == 256 * MiB
    bs.free(a)
    c = bs.alloc(0, 100 * MiB)
    for p in (b, c):
        bs.free(p)
    assert bs.mem.used == [0]
    with pytest.raises(CudaCallError) as ei:
        bs.free(c)
    assert code_of(ei) is E.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(CudaCallError) as ei:
        bs.alloc(0, 0)
    assert code_of(ei) is E.CUDA_ERROR_INVALID_VALUE


@pytest.mark.parametrize("size", [1, 7, 4096, 65537, MiB, 3 * MiB + 5])
def test_htod_dtoh_round_trip(bs, size):
    data = os.urandom(size)
    p = bs.alloc(0, size + 64)
    # the transport hands chunks of any size; the backend must place them back to back
    cuts = sorted({0, size, size // 3, size // 2, min(size, 4096)})
    bs.write(p + 64, [memoryview(data)[a:b].toreadonly() for a, b in zip(cuts, cuts[1:])])
    sinks = [bytearray(b - a) for a, b in zip(cuts, cuts[1:])]
    bs.read(p + 64, [memoryview(s) for s in sinks])
    assert b"".join(sinks) == data
    bs.free(p)


def test_dtod_copy(bs):
    data = os.urandom(1 << 20)
    a = bs.alloc(0, len(data))
    b = bs.alloc(0, len(data))
    bs.write(a, [memoryview(data)])
    bs.copy(b + 100, a, len(data) - 100)
    bs.synchronize(None)
    got = bytearray(len(data) - 100)
    bs.read(b + 100, [memoryview(got)])
    assert bytes(got) == data[:-100]


@pytest.mark.parametrize("elem,value", [(1, 0xAB), (2, 0xBEEF), (4, 0xDEADBEEF)])
def test_memset(bs, elem, value):
    n = 10007
    p = bs.alloc(0, elem * (n + 2))
    bs.memset(p, 0, 1, elem * (n + 2))
    bs.memset(p + elem, value, elem, n)
    bs.synchronize(None)
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[elem]
    got = download(bs, p, dtype, n + 2)
    assert got[0] == 0 and got[-1] == 0 and (got[1:-1] == value).all()


def test_out_of_range_is_rejected(bs):
    p = bs.alloc(0, 4096)
    # (ranges of write/read are validated by the session layer; see test_parity_protocol)
    for op in (lambda: bs.write(0xDEAD0000, [memoryview(b"x")]),
               lambda: bs.copy(p, p + 2048, 4096),
               lambda: bs.memset(p + 4092, 1, 4, 2),
               lambda: bs.free(p + 16)):
        with pytest.raises(CudaCallError) as ei:
            op()
        assert code_of(ei) is E.CUDA_ERROR_INVALID_VALUE


# -- streams and events ------------------------------------------------------------------------------


def test_streams_and_events(bs):
    s = bs.stream_create(0)
    nb = bs.stream_create(1)  # CU_STREAM_NON_BLOCKING
    e0, e1 = bs.event_create(0), bs.event_create(0)
    m = bs.module_load(PTX)
    out = bs.alloc(0, 4)
    bs.memset(out, 0, 4, 1)
    bs.event_record(e0, s)
    launch(bs, m, "spin", (1, 1, 1), (1, 1, 1), 2_000_000, out, stream=s)
    bs.event_record(e1, s)
    bs.event_synchronize(e1)
    ms = bs.event_elapsed(e0, e1)
    assert ms >= 0.0
    assert bs.event_query(e1) and bs.stream_query(s) and bs.stream_query(None)
    # work on a non-blocking stream is still ordered with the (default-stream) copies
    launch(bs, m, "spin", (1, 1, 1), (1, 1, 1), 1_000_000, out, stream=nb)
    assert download(bs, out, np.int32, 1)[0] == 2
    bs.event_record(e0, None)
    bs.synchronize(s)
    bs.synchronize(nb)
    bs.synchronize(None)
    for e in (e0, e1):
        bs.event_destroy(e)
    bs.stream_destroy(s)
    bs.stream_destroy(nb)


# -- modules and kernels ---------------------------------------------------------------------------


def test_ptx_module_layouts_match_the_ptx(bs):
    m = bs.module_load(PTX)
    table = ptx_parser.entries(PTX.decode())
    for name in ("vectorAdd", "saxpy", "fill_u32", "matmul_f32", "spin"):
        _func, slots = bs.get_function(m, name)
        assert slots == table[name], name
    with pytest.raises(CudaCallError) as ei:
        bs.get_function(m, "no_such_kernel")
    assert code_of(ei) is E.CUDA_ERROR_NOT_FOUND
    bs.module_unload(m)


def test_ptx_module_loads_with_or_without_nul(bs):
    for image in (PTX, PTX + b"\0", PTX + b"\0\0garbage"):
        m = bs.module_load(image)
        bs.get_function(m, "vectorAdd")
        bs.module_unload(m)


def test_cubin_and_fatbin(bs, backend, backend_name):
    if not is_cuda(backend_name):
        for image in (CUBIN_SM90, FATBIN):
            with pytest.raises(CudaCallError) as ei:
                bs.module_load(image)
            assert code_of(ei) is E.CUDA_ERROR_NOT_SUPPORTED
        return
    images = [("fatbin", FATBIN)]
    if compute_capability(backend) == (9, 0):
        images.append(("cubin", CUBIN_SM90))
    for kind, image in images:
        m = bs.module_load(image)
        p = bs.alloc(0, 4 * 1000)
        launch(bs, m, "fill_u32", (4, 1, 1), (256, 1, 1), p, 0x12345678, 1000)
        assert (download(bs, p, np.uint32, 1000) == 0x12345678).all(), kind
        bs.free(p)
        bs.module_unload(m)


def test_bad_images_are_refused(bs, backend_name):
    for image in (b"\x00" * 64, b"MZ this is not a kernel", b"\x7fELF" + bytes(60)):
        with pytest.raises(CudaCallError) as ei:
            bs.module_load(image)
        assert code_of(ei) in (E.CUDA_ERROR_INVALID_IMAGE, E.CUDA_ERROR_NOT_SUPPORTED)
        if is_cuda(backend_name):
            assert code_of(ei) is E.CUDA_ERROR_INVALID_IMAGE


def test_kernels_match_numpy(bs):
    rng = np.random.default_rng(7)
    m = bs.module_load(PTX)
    n = 50_001
    a = rng.random(n, dtype=np.float32)
    b = rng.random(n, dtype=np.float32)
    pa, pb = upload(bs, a), upload(bs, b)
    pc = bs.alloc(0, a.nbytes)
    blocks = (n + 255) // 256
    assert launch(bs, m, "vectorAdd", (blocks, 1, 1), (256, 1, 1), pa, pb, pc, n) >= 0.0
    np.testing.assert_array_equal(download(bs, pc, np.float32, n), a + b)

    launch(bs, m, "saxpy", (blocks, 1, 1), (256, 1, 1), 2.5, pa, pb, n)  # b = 2.5 a + b
    np.testing.assert_allclose(download(bs, pb, np.float32, n), np.float32(2.5) * a + b, rtol=1e-6)

    launch(bs, m, "fill_u32", (blocks, 1, 1), (256, 1, 1), pc, 0xC0FFEE, n - 1)
    got = download(bs, pc, np.uint32, n)
    assert (got[:-1] == 0xC0FFEE).all() and got[-1] == (a + b).view(np.uint32)[-1]

    k = 67
    A = rng.random((k, k), dtype=np.float32)
    B = rng.random((k, k), dtype=np.float32)
    pA, pB = upload(bs, A), upload(bs, B)
    pC = bs.alloc(0, A.nbytes)
    t = (k + 15) // 16
    launch(bs, m, "matmul_f32", (t, t, 1), (16, 16, 1), pA, pB, pC, k)
    np.testing.assert_allclose(download(bs, pC, np.float32, k * k).reshape(k, k), A @ B, rtol=1e-4)


def test_launch_measures_device_time_below_full_share(backend):
    s = backend.open_session([VGpu(0, 64 * MiB, 50)])
    try:
        s.use_device(0)
        m = s.module_load(PTX)
        out = s.alloc(0, 4)
        s.memset(out, 0, 4, 1)
        secs = launch(s, m, "spin", (1, 1, 1), (1, 1, 1), 30_000_000, out)
        assert 0.025 <= secs < 5.0
        assert download(s, out, np.int32, 1)[0] == 1
    finally:
        s.close()


# -- several vGPUs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("physical", [(0, 0), (0, 1)], ids=["same-gpu", "two-gpus"])
def test_two_vgpus(backend, physical):
    if max(physical) >= len(backend.gpus()):
        pytest.skip(f"needs {max(physical) + 1} GPUs, this host has {len(backend.gpus())}")
    s = backend.open_session([VGpu(physical[0], 32 * MiB, 100), VGpu(physical[1], 32 * MiB, 100)])
    try:
        data = np.arange(1000, dtype=np.uint32)
        p0 = upload(s, data, dev=0)
        p1 = s.alloc(1, data.nbytes)
        s.copy(p1, p0, data.nbytes)  # across vGPUs (and GPUs)
        s.synchronize(None)
        np.testing.assert_array_equal(download(s, p1, np.uint32, 1000), data)
        for dev, p in ((1, p1), (0, p0)):
            s.use_device(dev)
            m = s.module_load(PTX)
            st = s.stream_create(0)
            launch(s, m, "fill_u32", (4, 1, 1), (256, 1, 1), p, 100 + dev, 1000, stream=st)
            s.synchronize(st)
            assert (download(s, p, np.uint32, 1000) == 100 + dev).all()
        with pytest.raises(CudaCallError) as ei:
            s.alloc(1, 33 * MiB)  # each vGPU has its own quota
        assert code_of(ei) is E.CUDA_ERROR_OUT_OF_MEMORY
    finally:
        s.close()
    assert s.mem.used == [0, 0]


# -- teardown and pinned host memory -------------------------------------------------------------


def test_close_frees_everything(backend, backend_name):
    s = backend.open_session([VGpu(0, 64 * MiB, 100)])
    s.use_device(0)
    for _ in range(3):
        s.alloc(0, MiB)
    st = s.stream_create(0)
    ev = s.event_create(0)
    s.event_record(ev, st)
    m = s.module_load(PTX)
    s.get_function(m, "vectorAdd")
    s.close()
    s.close()  # idempotent
    assert s.mem.used == [0] and not list(s.mem.items())
    if backend_name == "cuda-fake":
        drv = backend._driver
        assert not drv.ctxs and not drv.allocs and not drv.streams and not drv.events and not drv.modules


@pytest.mark.parametrize("kind", ["anonymous", "file"])
def test_registered_host_region(backend, backend_name, kind, tmp_path):
    """The shared-memory path: chunks are views into rings the session registered once -- a plain
    pin first for both rings (tmpfs allows it), READ_ONLY as the fallback for the request ring. A shared mapping of a
    regular file (not tmpfs) cannot be pinned writable: that one stays pageable, and works."""
    if kind == "file":
        f = open(tmp_path / "ring", "w+b")
        f.truncate(4 * MiB)
        region = mmap.mmap(f.fileno(), 4 * MiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        f.close()
    else:
        region = mmap.mmap(-1, 4 * MiB)
    s = backend.open_session([VGpu(0, 64 * MiB, 100)])
    try:
        s.use_device(0)
        view = memoryview(region)
        rx, tx = view[:2 * MiB].toreadonly(), view[2 * MiB:]
        s.register_host(rx)
        s.register_host(tx)
        s.register_host(tx)  # twice is harmless
        data = os.urandom(2 * MiB)
        region[:len(data)] = data
        p = s.alloc(0, len(data))
        s.write(p, [rx[0:MiB], rx[MiB:2 * MiB]])
        s.read(p, [tx[MiB:2 * MiB], tx[0:MiB]])
        assert region[3 * MiB:4 * MiB] == data[:MiB] and region[2 * MiB:3 * MiB] == data[MiB:]
        del view, rx, tx
    finally:
        s.close()
    if backend_name == "cuda-fake":
        assert backend._driver.register_flags == [3, 3] and not backend._driver.registered  # PORTABLE|DEVICEMAP
    region.close()  # no buffer export may outlive the session
