"""The client's cuda-python conventions: parameter packing, host buffers, enums, activation."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from orion_virt.client import driver as d
from orion_virt.client.run import child_env


def _func(layout: list[tuple[int, int]]) -> d._Kernel:
    return d._Kernel("k", layout)


VECADD = [(0, 8), (8, 8), (16, 8), (24, 4)]
SAXPY = [(0, 4), (8, 8), (16, 8), (24, 4)]


def test_params_from_an_address_of_pointers_numpy_style() -> None:
    args = [np.array([0x1000], dtype=np.uint64), np.array([0x2000], dtype=np.uint64),
            np.array([0x3000], dtype=np.uint64), np.array([77], dtype=np.int32)]
    ptrs = np.array([a.ctypes.data for a in args], dtype=np.uint64)
    assert d._pack_params(_func(VECADD), ptrs.ctypes.data) == struct.pack("<QQQi", 0x1000, 0x2000, 0x3000, 77)
    assert d._pack_params(_func(VECADD), ptrs) == struct.pack("<QQQi", 0x1000, 0x2000, 0x3000, 77)


def test_params_from_values_and_ctypes_types_with_padding() -> None:
    x, y = d.CUdeviceptr(0x10), d.CUdeviceptr(0x20)
    raw = d._pack_params(_func(SAXPY), ((2.5, x, y, 9), (ctypes.c_float, None, None, ctypes.c_int)))
    assert raw == struct.pack("<f4xQQi", 2.5, 0x10, 0x20, 9)


def test_params_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="takes 4 parameters"):
        d._pack_params(_func(VECADD), ((1, 2), (None, None)))


def test_host_buffers_by_protocol_or_address() -> None:
    a = np.arange(16, dtype=np.uint8)
    assert bytes(d._host_view(a, 16, writable=False)) == a.tobytes()
    assert bytes(d._host_view(a.ctypes.data, 8, writable=False)) == a.tobytes()[:8]
    assert bytes(d._host_view(bytearray(b"abcd"), 2, writable=True)) == b"ab"
    with pytest.raises(ValueError, match="read-only"):
        d._host_view(b"abcd", 4, writable=True)
    with pytest.raises(ValueError, match="smaller"):
        d._host_view(b"ab", 4, writable=False)
    f32 = np.ones(4, dtype=np.float32)
    assert len(d._host_view(f32, 16, writable=True)) == 16


def test_handles_behave_like_cuda_python() -> None:
    p = d.CUdeviceptr(1234)
    assert int(p) == 1234 and repr(p) == "<CUdeviceptr 1234>"
    assert ctypes.c_uint64.from_address(p.getPtr()).value == 1234
    assert d.CUdevice(3) == d.CUdevice(3) and d.CUdevice(3) != d.CUcontext(3)


def test_enums_match_the_installed_cuda_bindings() -> None:
    real = pytest.importorskip("cuda.bindings.driver")
    for name in ("CUresult", "CUdevice_attribute"):
        ours, theirs = getattr(d, name), getattr(real, name)
        assert {m.name: int(m) for m in ours} == {m.name: int(m.value) for m in theirs}


def test_calls_before_cuinit_are_not_initialized() -> None:
    assert d.cuDeviceGetCount()[0] == d.CUresult.CUDA_ERROR_NOT_INITIALIZED
    assert d.cuGetErrorName(d.CUresult.CUDA_ERROR_OUT_OF_MEMORY) == (d.CUresult.CUDA_SUCCESS,
                                                                 b"CUDA_ERROR_OUT_OF_MEMORY")
    assert d.cuGetErrorString(2)[1] == b"out of memory"


def test_orion_run_environment_swaps_only_the_driver_module() -> None:
    code = ("import cuda.bindings.driver as drv, orion_virt.client.driver as ours\n"
            "from cuda.bindings import driver as drv2\n"
            "assert drv is ours and drv2 is ours\n"
            "import cuda.bindings._version\n"
            "real = drv._real\n"
            "assert drv.CUdeviceptr is real.CUdeviceptr and drv.CUresult is real.CUresult\n"
            "import cuda.bindings.nvrtc as nvrtc\n"
            "assert 'orion' not in nvrtc.__name__\n"
            "print('ok')\n")
    env = child_env({**os.environ, "ORION_CLIENT": "python"})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_client_imports_no_host_packages() -> None:
    code = ("import sys\n"
            "import orion_virt.client.driver, orion_virt.client.activate\n"
            "bad = [m for m in ('libvirt', 'lxml', 'pyroute2', 'cuda.bindings', 'click', 'numpy')\n"
            "       if m in sys.modules]\n"
            "print(bad)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_params_are_read_live_and_padding_is_zero() -> None:
    a = np.array([1.5], dtype=np.float32)
    x = np.array([0x10], dtype=np.uint64)
    y = np.array([0x20], dtype=np.uint64)
    n = np.array([3], dtype=np.int32)
    ptrs = np.array([v.ctypes.data for v in (a, x, y, n)], dtype=np.uint64)
    f = _func(SAXPY)
    assert d._pack_params(f, ptrs.ctypes.data) == struct.pack("<f4xQQi", 1.5, 0x10, 0x20, 3)
    a[0], n[0] = 2.0, 9  # the same arrays, new values: the next launch must see them
    assert d._pack_params(f, ptrs.ctypes.data) == struct.pack("<f4xQQi", 2.0, 0x10, 0x20, 9)
    with pytest.raises(ValueError, match="NULL"):
        d._pack_params(f, np.zeros(4, dtype=np.uint64).ctypes.data)


def test_a_driver_function_the_client_does_not_remote_never_reaches_the_host_driver(capsys) -> None:
    from orion_virt.client import driver as d

    assert d.cuGraphCreate(None, 0) == (d.CUresult.CUDA_ERROR_NOT_SUPPORTED,)
    assert d.cuGraphCreate(None, 0) == (d.CUresult.CUDA_ERROR_NOT_SUPPORTED,)
    err = capsys.readouterr().err
    assert err.count("[WARN] cuGraphCreate is not supported by the orion_virt client") == 1
    assert d.cuGraphCreate.__name__ == "cuGraphCreate"
