"""On a GPU host: the rate of back-to-back cuLaunchKernel (fill_u32, n=0) from Python by each way
oriond could issue it, in one process: cuda-bindings vs ctypes into libcuda, primary vs created
context, with and without a large page-locked registration (what a session's rings add)."""

from __future__ import annotations

import ctypes
import mmap
import sys
import time
from pathlib import Path

import numpy as np
from cuda.bindings import driver as d

ROOT = Path(__file__).resolve().parents[2]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000


def ok(r):  # noqa: ANN001, ANN201
    if int(r[0]):
        raise RuntimeError(r)
    return r[1] if len(r) == 2 else r[1:]


def rate(fn) -> float:  # noqa: ANN001
    for _ in range(1000):
        fn()
    ok(d.cuCtxSynchronize())
    t0 = time.perf_counter()
    for _ in range(N):
        fn()
    ok(d.cuCtxSynchronize())
    return N / (time.perf_counter() - t0)


def setup(created: bool):  # noqa: ANN201
    dev = ok(d.cuDeviceGet(0))
    if created:
        ctx = ok(d.cuCtxCreate(None, 0, dev))
    else:
        ctx = ok(d.cuDevicePrimaryCtxRetain(dev))
        ok(d.cuCtxSetCurrent(ctx))
    mod = ok(d.cuModuleLoadData((ROOT / "orion_virt/kernels/test_kernels.ptx").read_bytes() + b"\0"))
    f = ok(d.cuModuleGetFunction(mod, b"fill_u32"))
    ptr = ok(d.cuMemAlloc(64))
    vals = (ctypes.c_uint64 * 1)(int(ptr)), (ctypes.c_uint32 * 1)(1), (ctypes.c_int32 * 1)(0)
    params = (ctypes.c_void_p * 3)(*(ctypes.addressof(v) for v in vals))
    return ctx, f, params, vals


ok(d.cuInit(0))
lib = ctypes.CDLL("libcuda.so.1")
raw = lib.cuLaunchKernel
u, p = ctypes.c_uint, ctypes.c_void_p
raw.argtypes = [p, u, u, u, u, u, u, u, p, p, p]
raw.restype = ctypes.c_int


def measure(created: bool) -> None:
    ctx, f, params, _vals = setup(created)
    pa = ctypes.addressof(params)
    fr = int(f)
    name = "created ctx" if created else "primary ctx"
    print(f"{name}: cuda-bindings {rate(lambda: d.cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, 0, pa, 0)) / 1e3:.0f}k/s, "
          f"ctypes {rate(lambda: raw(fr, 1, 1, 1, 1, 1, 1, 0, None, pa, None)) / 1e3:.0f}k/s", flush=True)
    if created:
        mm = mmap.mmap(-1, 512 << 20)
        buf = np.frombuffer(mm, dtype=np.uint8)
        buf[::4096] = 1
        ok(d.cuMemHostRegister(buf.ctypes.data, len(buf), 1))
        k = rate(lambda: raw(fr, 1, 1, 1, 1, 1, 1, 0, None, pa, None)) / 1e3
        print(f"{name} + 512 MiB registered: ctypes {k:.0f}k/s", flush=True)


for created in (False, True):
    measure(created)
