"""The cuda backend's parts that need no GPU: images, parameter buffers, the probe, selection,
and the argument conventions of its cuda-bindings calls."""

from __future__ import annotations

import ctypes
import json
import logging
import struct
import subprocess
import sys

import pytest

from orion_virt.cuda_enums import CUresult as E
from orion_virt.errors import BackendError
from orion_virt.server.backend import CudaCallError, ParamSlot
from orion_virt.server.cuda_backend import CudaBackend, ParamBuffer, buffer_address, image_kind, prepare_image
from orion_virt.server.cuda_probe import ProbeResult, parse
from tests.parity.harness import CUBIN_SM90, FATBIN, PTX, ROOT, cuda_probe, fake_probe

# -- images ------------------------------------------------------------------------------------------


def test_image_kinds():
    assert image_kind(PTX) == "ptx"
    assert image_kind(CUBIN_SM90) == "cubin"
    assert image_kind(FATBIN) == "fatbin"
    assert image_kind(b"hello") == "unknown"
    assert image_kind(b"") == "unknown"


def test_prepare_image_nul_terminates_ptx_and_checks_binaries():
    kind, data = prepare_image(PTX)
    assert kind == "ptx" and data == PTX.split(b"\0")[0] + b"\0" and data.count(b"\0") == 1
    assert prepare_image(PTX + b"\0trailing junk")[1] == data
    assert prepare_image(CUBIN_SM90) == ("cubin", CUBIN_SM90)
    assert prepare_image(FATBIN + b"padding") == ("fatbin", FATBIN)
    bad = [
        b"\x7fELF" + bytes(60),  # not 64-bit little-endian
        CUBIN_SM90[:18] + struct.pack("<H", 62) + CUBIN_SM90[20:],  # an x86-64 ELF, not CUDA
        FATBIN[:200],  # truncated: header declares more
        FATBIN[:8],
        b"\x00\x01garbage" * 10,
    ]
    for image in bad:
        with pytest.raises(CudaCallError) as ei:
            prepare_image(image)
        assert ei.value.code == E.CUDA_ERROR_INVALID_IMAGE


# -- kernel parameters -------------------------------------------------------------------------------


def _read_back(pb: ParamBuffer) -> list[bytes]:
    ptrs = (ctypes.c_void_p * len(pb.slots)).from_address(pb.address)
    return [ctypes.string_at(p, s.size) for p, s in zip(ptrs, pb.slots)]


def test_param_buffer_points_into_server_memory():
    slots = [ParamSlot(0, 4), ParamSlot(8, 8), ParamSlot(16, 8), ParamSlot(24, 4)]  # saxpy
    pb = ParamBuffer(slots)
    assert pb.size == 28
    params = struct.pack("<fxxxxQQi", 2.5, 0x1111_2222_3333_4444, 0x5555_6666_7777_8888, 1000)
    addr = pb.fill(params)
    assert addr == pb.address == ctypes.addressof(pb.ptrs)
    base = ctypes.addressof(pb.buf)
    assert [p - base for p in pb.ptrs] == [0, 8, 16, 24]  # only ever inside the server's buffer
    got = _read_back(pb)
    assert got == [params[0:4], params[8:16], params[16:24], params[24:28]]
    # refilling for the next launch reuses the same memory
    params2 = struct.pack("<fxxxxQQi", -1.0, 1, 2, 3)
    assert pb.fill(params2) == addr
    assert _read_back(pb)[3] == struct.pack("<i", 3)


def test_param_buffer_sizes_and_empty_kernels():
    pb = ParamBuffer([ParamSlot(0, 8), ParamSlot(8, 4)])
    for wrong in (b"", b"\0" * 11, b"\0" * 13):
        with pytest.raises(CudaCallError) as ei:
            pb.fill(wrong)
        assert ei.value.code == E.CUDA_ERROR_INVALID_VALUE
    empty = ParamBuffer([])
    assert empty.size == 0 and empty.fill(b"") == 0
    with pytest.raises(CudaCallError):
        ParamBuffer([ParamSlot(-8, 8)])
    big = ParamBuffer([ParamSlot(0, 4096), ParamSlot(4096, 1)])  # a struct passed by value
    raw = bytes(range(256)) * 16 + b"\x7f"
    big.fill(raw)
    assert b"".join(_read_back(big)) == raw


def test_buffer_address_of_read_only_views():
    ba = bytearray(b"abcdef")
    ro = memoryview(ba).toreadonly()[2:]
    assert ctypes.string_at(buffer_address(ro), 4) == b"cdef"
    assert buffer_address(memoryview(b"")) == 0


# -- probe, backend and selection ---------------------------------------------------------------------


def test_probe_parse():
    doc = {"driver_version": 13000, "gpus": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_mem": 85 << 30, "uuid": "ab" * 16,
         "attributes": {"75": 9, "76": 0, "16": 132}}]}
    res = parse("some noise\n" + json.dumps(doc) + "\n")
    assert not res.error and res.driver_version == 13000
    g = res.gpus[0]
    assert (g.index, g.name, g.total_mem, g.uuid) == (0, "NVIDIA H100 80GB HBM3", 85 << 30, b"\xab" * 16)
    assert g.attributes == {75: 9, 76: 0, 16: 132}
    assert parse(json.dumps({"error": "RuntimeError: cuInit failed"})).error == "RuntimeError: cuInit failed"
    assert parse("").error and parse("{not json").error


def test_backend_from_probe_result():
    be = CudaBackend(fake_probe(2))
    assert [g.index for g in be.gpus()] == [0, 1]
    assert be.driver_version() == 13000
    assert "2 GPU(s)" in be.describe() and "Fake CUDA GPU" in be.describe()
    with pytest.raises(BackendError):
        CudaBackend(ProbeResult(0, [], "no driver")).gpus()
    with pytest.raises(BackendError):
        CudaBackend(ProbeResult(13000, [])).describe()


def test_real_probe_runs_in_a_child_process():
    res = cuda_probe()
    if res.error:
        assert not res.gpus  # e.g. 'DynamicLibNotFoundError: ...' on a machine without a driver
    else:
        assert res.gpus and res.driver_version >= 12040


def test_importing_the_backend_does_not_load_cuda():
    code = ("import sys; import orion_virt.server.cuda_backend, orion_virt.server.select_backend; "
            "print('cuda.bindings.driver' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_select_backend_builds_cuda_backend_lazily(monkeypatch):
    from orion_virt.config import load_server_config
    from orion_virt.server import select_backend as sb

    cfg = load_server_config(None, {"backend": "auto"})
    probes = []

    def one_gpu(timeout: float = 120.0) -> ProbeResult:
        probes.append(timeout)
        return fake_probe(1)

    monkeypatch.setattr(sb, "probe_cuda", one_gpu)
    be = sb.select_backend(cfg, logging.getLogger("test"))
    assert isinstance(be, CudaBackend) and be._probe is not None  # the probe's result is handed down
    assert [g.index for g in be.gpus()] == [0] and len(probes) == 1  # ... so the backend never probes again
    monkeypatch.setattr(sb, "probe_cuda", lambda timeout=120.0: ProbeResult(0, [], "test"))
    assert sb.select_backend(cfg, logging.getLogger("test")).name == "sim"
    with pytest.raises(BackendError, match="test"):
        sb.select_backend(load_server_config(None, {"backend": "cuda"}), logging.getLogger("test"))


# -- cuda-bindings argument conventions ---------------------------------------------------------------


def test_calls_match_cuda_bindings_signatures():
    """Every call shape the backend makes is accepted by cuda-bindings' argument conversion.

    Without a driver, a call whose arguments convert gets as far as loading libcuda
    (DynamicLibNotFoundError); a wrong argument type would raise TypeError first.
    """
    d = pytest.importorskip("cuda.bindings.driver")
    if not cuda_probe().error:
        pytest.skip("a CUDA driver is present: the GPU tests exercise these calls for real")
    from cuda.pathfinder._dynamic_libs.load_dl_common import DynamicLibNotFoundError

    ro = memoryview(bytes(64)).toreadonly()[8:24]
    rw = memoryview(bytearray(64))[8:24]
    pb = ParamBuffer([ParamSlot(0, 8)])
    calls = [
        (d.cuInit, (0,)), (d.cuDeviceGet, (0,)), (d.cuCtxCreate, (None, 0, d.CUdevice(0))),
        (d.cuCtxSetCurrent, (d.CUcontext(0),)), (d.cuCtxSynchronize, ()), (d.cuCtxDestroy, (d.CUcontext(0),)),
        (d.cuMemAlloc, (4096,)), (d.cuMemFree, (d.CUdeviceptr(0),)),
        (d.cuMemcpyHtoD, (0x7000, ro, 16)), (d.cuMemcpyDtoH, (rw, 0x7000, 16)),
        (d.cuMemcpyDtoD, (0x7000, 0x8000, 16)), (d.cuMemcpyPeer, (0x7000, d.CUcontext(0), 0x8000, d.CUcontext(0), 16)),
        (d.cuMemsetD8, (0x7000, 0xFF, 4)), (d.cuMemsetD16, (0x7000, 0xFFFF, 4)),
        (d.cuMemsetD32, (0x7000, 0xFFFFFFFF, 4)),
        (d.cuMemHostRegister, (buffer_address(rw), 16, 1)), (d.cuMemHostUnregister, (buffer_address(rw),)),
        (d.cuStreamCreate, (1,)), (d.cuStreamSynchronize, (d.CUstream(0),)), (d.cuStreamQuery, (0,)),
        (d.cuStreamDestroy, (d.CUstream(0),)), (d.cuEventCreate, (0,)), (d.cuEventRecord, (d.CUevent(0), 0)),
        (d.cuEventRecord, (d.CUevent(0), d.CUstream(0))), (d.cuEventSynchronize, (d.CUevent(0),)),
        (d.cuEventElapsedTime, (d.CUevent(0), d.CUevent(0))), (d.cuEventQuery, (d.CUevent(0),)),
        (d.cuEventDestroy, (d.CUevent(0),)), (d.cuModuleLoadData, (prepare_image(PTX)[1],)),
        (d.cuModuleUnload, (d.CUmodule(0),)), (d.cuModuleGetFunction, (d.CUmodule(0), b"vectorAdd")),
        (d.cuFuncGetParamInfo, (d.CUfunction(0), 0)),
        (d.cuLaunchKernel, (d.CUfunction(0), 1, 1, 1, 32, 1, 1, 0, 0, pb.fill(bytes(8)), 0)),
        (d.cuLaunchKernel, (d.CUfunction(0), 1, 1, 1, 32, 1, 1, 0, d.CUstream(0), None, 0)),
        (d.cuGetErrorString, (d.CUresult(1),)), (d.cuDeviceGetUuid, (d.CUdevice(0),)),
        (d.cuDeviceGetAttribute, (d.CUdevice_attribute(75), d.CUdevice(0))),
    ]
    for fn, args in calls:
        with pytest.raises(DynamicLibNotFoundError):
            fn(*args)
