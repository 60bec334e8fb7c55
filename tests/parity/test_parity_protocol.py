"""End-to-end parity: unmodified cuda-bindings programs -> the native client (libcuda.so.1) ->
wire protocol -> Session -> backend, over TCP, for every backend; and frames no driver API sends,
through the wire protocol's client end."""

from __future__ import annotations

import struct

import pytest

from orion_virt.cuda_enums import CUresult as E
from orion_virt.server.sim import SIM_NAME
from orion_virt.wire.calls import Call
from tests.parity.harness import CUBIN_SM90, PTX, compute_capability, is_cuda, run_native, wire_session

DRIVER_VERSION = 13000
"""cuDriverGetVersion over the native client: the version of its cuGetProcAddress table"""


def test_device_queries_answer_for_the_vgpu(backend, backend_name):
    gpus = backend.gpus()
    phys = [gpus[i % len(gpus)] for i in range(2)]
    out = run_native(backend, r"""
ok(cu.cuInit(0))
assert ok(cu.cuDeviceGetCount()) == 2
OUT["version"] = ok(cu.cuDriverGetVersion())
uuids = set()
for i in range(2):
    dev = ok(cu.cuDeviceGet(i))
    name = ok(cu.cuDeviceGetName(256, dev)).split(b"\0", 1)[0].decode()
    assert name == A["names"][i], (name, A["names"][i])
    assert (name == A["sim_name"]) == A["sim"]  # sim never pretends to be a GPU
    assert ok(cu.cuDeviceTotalMem(dev)) == 300 * MiB
    major = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
    assert major == A["majors"][i] > 0, (major, A["majors"][i])
    uuids.add(bytes(ok(cu.cuDeviceGetUuid(dev)).bytes))
assert len(uuids) == 2
ctx = ok(cu.cuCtxCreate(None, 0, ok(cu.cuDeviceGet(0))))
p = ok(cu.cuMemAlloc(100 * MiB))
free, total = ok(cu.cuMemGetInfo())
assert (free, total) == (200 * MiB, 300 * MiB), (free, total)
ok(cu.cuMemFree(p))
ok(cu.cuCtxDestroy(ctx))
""", vgpus=2, gmem_mib=300, names=[g.name for g in phys], sim=backend_name == "sim", sim_name=SIM_NAME,
        majors=[compute_capability(backend, g.index)[0] for g in phys])
    assert out["version"] == DRIVER_VERSION


def test_memory_quota_and_copies(backend):
    run_native(backend, r"""
setup_ctx()
assert status(cu.cuMemAlloc(65 * MiB)) is E.CUDA_ERROR_OUT_OF_MEMORY
for size in (1, 4096, 4097, MiB + 3, 9 * MiB + 1):
    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)
    d1, d2 = ok(cu.cuMemAlloc(size)), ok(cu.cuMemAlloc(size))
    ok(cu.cuMemcpyHtoD(d1, src.ctypes.data, size))
    ok(cu.cuMemcpyDtoD(d2, d1, size))
    ok(cu.cuMemcpyDtoH(dst.ctypes.data, d2, size))
    np.testing.assert_array_equal(dst, src)
    for d in (d1, d2):
        ok(cu.cuMemFree(d))
d = ok(cu.cuMemAlloc(4 * 1000))
stream = ok(cu.cuStreamCreate(0))
ok(cu.cuMemsetD32Async(d, 0xCAFEF00D, 1000, stream))
ok(cu.cuMemsetD8Async(d, 0x11, 8, stream))
out = np.zeros(1000, dtype=np.uint32)
ok(cu.cuMemcpyDtoHAsync(out.ctypes.data, d, out.nbytes, stream))
ok(cu.cuStreamSynchronize(stream))
assert (out[:2] == 0x11111111).all() and (out[2:] == 0xCAFEF00D).all()
ok(cu.cuMemsetD8(d, 0x7F, 4000))
ok(cu.cuMemcpyDtoH(out.ctypes.data, d, out.nbytes))
assert (out == 0x7F7F7F7F).all()
ok(cu.cuStreamDestroy(stream))
""", gmem_mib=64)


def test_events_and_kernels(backend, backend_name, tmp_path):
    cubin = tmp_path / "test_kernels.sm_90.cubin"
    cubin.write_bytes(CUBIN_SM90)
    run_native(backend, r"""
setup_ctx()
module = ok(cu.cuModuleLoadData(PTX))
n = 100_000
rng = np.random.default_rng(3)
a = rng.random(n, dtype=np.float32)
b = rng.random(n, dtype=np.float32)
da, db, dc = (ok(cu.cuMemAlloc(a.nbytes)) for _ in range(3))
stream = ok(cu.cuStreamCreate(0))
e0, e1 = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(0))
ok(cu.cuMemcpyHtoDAsync(da, a.ctypes.data, a.nbytes, stream))
ok(cu.cuMemcpyHtoDAsync(db, b.ctypes.data, b.nbytes, stream))
ok(cu.cuEventRecord(e0, stream))
vadd = ok(cu.cuModuleGetFunction(module, b"vectorAdd"))
args = [np.array([int(x)], dtype=np.uint64) for x in (da, db, dc)] + [np.array([n], dtype=np.int32)]
blocks = (n + 255) // 256
ok(cu.cuLaunchKernel(vadd, blocks, 1, 1, 256, 1, 1, 0, stream, params_of(*args).ctypes.data, 0))
ok(cu.cuEventRecord(e1, stream))
c = np.zeros(n, dtype=np.float32)
ok(cu.cuMemcpyDtoHAsync(c.ctypes.data, dc, c.nbytes, stream))
ok(cu.cuStreamSynchronize(stream))
np.testing.assert_array_equal(c, a + b)
ok(cu.cuEventSynchronize(e1))
assert ok(cu.cuEventElapsedTime(e0, e1)) >= 0.0
assert status(cu.cuEventQuery(e1)) is E.CUDA_SUCCESS

# saxpy with cuda-python's (values, types) form: y = 3 x + y (x = a, y = b)
saxpy = ok(cu.cuModuleGetFunction(module, b"saxpy"))
ok(cu.cuLaunchKernel(saxpy, blocks, 1, 1, 256, 1, 1, 0, stream,
                     ((3.0, da, db, n), (ctypes.c_float, None, None, ctypes.c_int)), 0))
ok(cu.cuMemcpyDtoHAsync(c.ctypes.data, db, c.nbytes, stream))
ok(cu.cuStreamSynchronize(stream))
np.testing.assert_allclose(c, np.float32(3.0) * a + b, rtol=1e-6)

fill = ok(cu.cuModuleGetFunction(module, b"fill_u32"))
ok(cu.cuLaunchKernel(fill, blocks, 1, 1, 256, 1, 1, 0, 0,
                     ((dc, 0xABCDEF01, n), (None, ctypes.c_uint, ctypes.c_int)), 0))
u = np.zeros(n, dtype=np.uint32)
ok(cu.cuMemcpyDtoH(u.ctypes.data, dc, u.nbytes))
assert (u == 0xABCDEF01).all()

k = 96
MA = rng.random((k, k), dtype=np.float32)
MB = rng.random((k, k), dtype=np.float32)
dA, dB, dC = (ok(cu.cuMemAlloc(MA.nbytes)) for _ in range(3))
ok(cu.cuMemcpyHtoD(dA, MA.ctypes.data, MA.nbytes))
ok(cu.cuMemcpyHtoD(dB, MB.ctypes.data, MB.nbytes))
mm = ok(cu.cuModuleGetFunction(module, b"matmul_f32"))
ok(cu.cuLaunchKernel(mm, k // 16, k // 16, 1, 16, 16, 1, 0, 0,
                     ((dA, dB, dC, k), (None, None, None, ctypes.c_int)), 0))
MC = np.zeros((k, k), dtype=np.float32)
ok(cu.cuMemcpyDtoH(MC.ctypes.data, dC, MC.nbytes))
np.testing.assert_allclose(MC, MA @ MB, rtol=1e-4)

# cubin: the cuda backend loads it (on an sm_90 GPU); sim answers NOT_SUPPORTED
res = cu.cuModuleLoadData(open(A["cubin"], "rb").read())
if not A["cuda"]:
    assert status(res) is E.CUDA_ERROR_NOT_SUPPORTED, res
elif A["sm90"]:
    ok(cu.cuModuleUnload(ok(res)))
ok(cu.cuModuleUnload(module))
for e in (e0, e1):
    ok(cu.cuEventDestroy(e))
ok(cu.cuStreamDestroy(stream))
""", cubin=str(cubin), cuda=is_cuda(backend_name), sm90=compute_capability(backend) == (9, 0))


def test_invalid_handles_and_pointers_are_rejected(backend):
    run_native(backend, r"""
setup_ctx()
d = ok(cu.cuMemAlloc(4096))
big = np.zeros(3 * MiB, dtype=np.uint8)
assert status(cu.cuMemcpyHtoD(d, big.ctypes.data, big.nbytes)) is E.CUDA_ERROR_INVALID_VALUE  # overruns
assert status(cu.cuMemcpyHtoD(0xDEAD_0000, big.ctypes.data, 16)) is E.CUDA_ERROR_INVALID_VALUE
assert status(cu.cuMemcpyDtoH(big.ctypes.data, int(d) + 4000, 200)) is E.CUDA_ERROR_INVALID_VALUE
assert status(cu.cuStreamSynchronize(cu.CUstream(0xBAD))) is E.CUDA_ERROR_INVALID_HANDLE
assert status(cu.cuModuleGetFunction(cu.CUmodule(0xBAD), b"vectorAdd")) is E.CUDA_ERROR_INVALID_HANDLE
# calls sent without waiting report their failure at the next synchronising call
for call, want in ((lambda: cu.cuMemFree(int(d) + 8), E.CUDA_ERROR_INVALID_VALUE),
                   (lambda: cu.cuEventRecord(cu.CUevent(0xBAD), 0), E.CUDA_ERROR_INVALID_HANDLE),
                   (lambda: cu.cuMemsetD8Async(0xDEAD_0000, 1, 1, 0), E.CUDA_ERROR_INVALID_VALUE)):
    sent = status(call())
    assert sent is E.CUDA_SUCCESS, (sent, want)
    got = status(cu.cuCtxSynchronize())
    assert got is want, (got, want)
# a context that is not the session's: the native client refuses it at once (contexts are its own)
assert status(cu.cuCtxSetCurrent(cu.CUcontext(0xBAD))) is E.CUDA_ERROR_INVALID_CONTEXT
ok(cu.cuCtxSynchronize())
setup_ctx()
module = ok(cu.cuModuleLoadData(PTX))
fill = ok(cu.cuModuleGetFunction(module, b"fill_u32"))
# the session is still in step after every refusal
ok(cu.cuLaunchKernel(fill, 16, 1, 1, 256, 1, 1, 0, 0, ((d, 7, 1024), (None, ctypes.c_uint, ctypes.c_int)), 0))
out = np.zeros(1024, dtype=np.uint32)
ok(cu.cuMemcpyDtoH(out.ctypes.data, d, 4096))
assert (out == 7).all()
""", gmem_mib=64)


def _wire_ctx(conn) -> tuple[int, int]:
    """cuInit, a context on device 0, the test module's fill_u32(ptr, value, n): (function, dptr)."""
    assert conn.call(Call.cuInit, (0,))[0] == 0
    st, (dev,), _ = conn.call(Call.cuDeviceGet, (0,))
    assert st == 0 and conn.call(Call.cuCtxCreate, (0, dev))[0] == 0
    st, (module,), _ = conn.call(Call.cuModuleLoadData, (len(PTX),), PTX, len(PTX))
    assert st == 0
    st, (fn, _), _ = conn.call(Call.cuModuleGetFunction, (module, 8), b"fill_u32", 8)
    assert st == 0
    st, (d,), _ = conn.call(Call.cuMemAlloc, (4096,))
    assert st == 0
    return fn, d


def test_a_parameter_buffer_of_the_wrong_size_never_reaches_the_backend(backend):
    with wire_session(backend, gmem_mib=64) as conn:
        fn, d = _wire_ctx(conn)
        conn.call(Call.cuLaunchKernel, (fn, 1, 1, 1, 1, 1, 1, 0, 0, 4), b"\0" * 4, 4)  # async
        assert E(conn.call(Call.cuCtxSynchronize, ())[0]) is E.CUDA_ERROR_INVALID_VALUE
        # the session is still in step after the refusal
        params = struct.pack("<QIi", d, 7, 1024)
        conn.call(Call.cuLaunchKernel, (fn, 16, 1, 1, 256, 1, 1, 0, 0, len(params)), params, len(params))
        st, _, blob = conn.call(Call.cuMemcpyDtoH, (d, 4096))
        assert st == 0 and blob == struct.pack("<I", 7) * 1024


def test_bogus_launch_handle_reported_at_next_sync(backend):
    with wire_session(backend) as conn:
        _wire_ctx(conn)
        conn.call(Call.cuLaunchKernel, (0xBAD, 1, 1, 1, 1, 1, 1, 0, 0, 0), b"", 0)
        assert E(conn.call(Call.cuCtxSynchronize, ())[0]) is E.CUDA_ERROR_INVALID_HANDLE
        assert conn.call(Call.cuCtxSynchronize, ())[0] == 0


@pytest.mark.parametrize("ratio", [50, 100])
def test_compute_share_throttle(backend, ratio):
    """Two back-to-back 50 ms spins: at a 50 % share the second waits ~50 ms first."""
    out = run_native(backend, r"""
setup_ctx()
module = ok(cu.cuModuleLoadData(PTX))
spin = ok(cu.cuModuleGetFunction(module, b"spin"))
out = ok(cu.cuMemAlloc(4))
ok(cu.cuMemsetD32(out, 0, 1))
ok(cu.cuCtxSynchronize())
t0 = time.monotonic()
for _ in range(2):
    ok(cu.cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, 0, ((50_000_000, out), (ctypes.c_longlong, None)), 0))
ok(cu.cuCtxSynchronize())
OUT["wall"] = time.monotonic() - t0
count = np.zeros(1, dtype=np.int32)
ok(cu.cuMemcpyDtoH(count.ctypes.data, out, 4))
OUT["count"] = int(count[0])
""", ratio=ratio)
    assert out["count"] == 2
    if ratio == 50:
        assert out["wall"] >= 0.145, out
    else:
        assert 0.095 <= out["wall"] < 0.145, out

