"""A stand-in for ``cuda.bindings.driver`` that runs the cuda backend's logic without a GPU.

It follows cuda-bindings' conventions (every function returns a tuple starting with a CUresult;
host buffers are buffer-protocol objects or integer addresses; ``kernelParams`` is the address
of a ``void*[]``), keeps device memory in host RAM, and executes the test kernels with the sim
backend's NumPy references, reading each parameter *through the pointer array* as the driver
does. It also checks the rules the real driver enforces and the backend must respect: the right
context is current for memory, streams and modules; handles are live; events were recorded.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from orion_virt.cuda_enums import CUresult
from orion_virt.server import ptx as ptx_parser
from orion_virt.server.sim_kernels import KERNELS, Launch

KERNEL_PTX = Path(__file__).resolve().parents[2] / "orion_virt" / "kernels" / "test_kernels.ptx"
S = CUresult.CUDA_SUCCESS


class _H:
    """An opaque handle like cuda-bindings' (int() gives its value)."""

    def __init__(self, kind: str, value: int) -> None:
        self.kind, self.value = kind, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.kind} 0x{self.value:x}>"


def _view(buf: Any, n: int) -> memoryview:
    if isinstance(buf, int):
        return memoryview((ctypes.c_char * n).from_address(buf)).cast("B")
    mv = memoryview(buf).cast("B")
    assert len(mv) >= n, "host buffer smaller than the copy"
    return mv[:n]


class FakeDriver:
    CUresult = CUresult

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.inited = False
        self.current: _H | None = None
        self.ids = itertools.count(0x1000)
        self.ctxs: dict[int, int] = {}  # ctx id -> device ordinal
        self.allocs: dict[int, tuple[int, bytearray]] = {}  # base -> (ctx id, storage)
        self.next_ptr = 0x7000_0000_0000
        self.streams: dict[int, int] = {}  # stream id -> ctx id
        self.events: dict[int, tuple[int, float | None]] = {}
        self.modules: dict[int, tuple[int, dict]] = {}
        self.functions: dict[int, tuple[int, str, list]] = {}  # id -> (module id, name, slots)
        self.registered: dict[int, int] = {}
        self.register_flags: list[int] = []
        self.launches: list[tuple[str, tuple]] = []
        self.calls: list[str] = []

    # -- helpers ---------------------------------------------------------------------------

    def _cur(self) -> int | None:
        return None if self.current is None else int(self.current)

    def _need_ctx(self) -> int:
        c = self._cur()
        if c is None or c not in self.ctxs:
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        return c

    def _mem(self, ptr: int, n: int) -> tuple[int, memoryview]:
        ptr = int(ptr)
        for base, (ctx, store) in self.allocs.items():
            if base <= ptr and ptr + n <= base + len(store):
                return ctx, memoryview(store)[ptr - base:ptr - base + n]
        raise _Err(CUresult.CUDA_ERROR_INVALID_VALUE)

    def _in_ctx(self, ptr: int, n: int) -> memoryview:
        ctx, mv = self._mem(ptr, n)
        if ctx != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)  # the backend switched contexts wrongly
        return mv

    def __getattr__(self, name: str) -> Any:
        impl = type(self).__dict__.get("_" + name)
        if impl is None:
            raise AttributeError(name)

        def call(*args: Any) -> tuple:
            self.calls.append(name)
            try:
                out = impl(self, *args)
            except _Err as e:
                return (e.code,)
            return (S, *out) if isinstance(out, tuple) else (S,) if out is None else (S, out)

        return call

    # -- API (names are the cuda-bindings ones, prefixed with '_') ---------------------------------

    def _cuInit(self, flags: int) -> None:
        self.inited = True

    def _cuGetErrorString(self, err: Any) -> tuple:
        return (CUresult(int(err)).name.encode(),)

    def _cuDeviceGet(self, i: int) -> Any:
        if not 0 <= i < self.devices:
            raise _Err(CUresult.CUDA_ERROR_INVALID_DEVICE)
        return _H("CUdevice", i)

    def _cuCtxCreate(self, params: Any, flags: int, dev: Any) -> Any:
        assert params is None and flags == 0
        h = _H("CUcontext", next(self.ids))
        self.ctxs[h.value] = int(dev)
        self.current = h
        return h

    def _cuCtxSetCurrent(self, ctx: Any) -> None:
        if int(ctx) not in self.ctxs:
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        self.current = ctx

    def _cuCtxSynchronize(self) -> None:
        self._need_ctx()

    def _cuCtxDestroy(self, ctx: Any) -> None:
        c = int(ctx)
        if c not in self.ctxs:
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        del self.ctxs[c]
        for base in [b for b, (cc, _s) in self.allocs.items() if cc == c]:
            del self.allocs[base]
        if self._cur() == c:
            self.current = None

    def _cuMemAlloc(self, n: int) -> Any:
        ctx = self._need_ctx()
        if n <= 0:
            raise _Err(CUresult.CUDA_ERROR_INVALID_VALUE)
        base = self.next_ptr
        self.next_ptr += (n + 511) // 512 * 512
        self.allocs[base] = (ctx, bytearray(n))
        return _H("CUdeviceptr", base)

    def _cuMemFree(self, p: Any) -> None:
        ctx, _mv = self._mem(int(p), 0)
        if int(p) not in self.allocs or ctx != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_VALUE)
        del self.allocs[int(p)]

    def _cuMemcpyHtoD(self, dst: int, src: Any, n: int) -> None:
        assert isinstance(dst, int), "device pointers are passed as ints"
        self._in_ctx(dst, n)[:] = _view(src, n)

    def _cuMemcpyDtoH(self, dst: Any, src: int, n: int) -> None:
        _view(dst, n)[:] = self._in_ctx(src, n)

    def _cuMemcpyDtoD(self, dst: int, src: int, n: int) -> None:
        self._in_ctx(dst, n)[:] = bytes(self._in_ctx(src, n))

    def _cuMemcpyPeer(self, dst: int, dctx: Any, src: int, sctx: Any, n: int) -> None:
        dc, dmv = self._mem(dst, n)
        sc, smv = self._mem(src, n)
        assert (dc, sc) == (int(dctx), int(sctx))
        dmv[:] = bytes(smv)

    def _memset(self, ptr: int, value: int, size: int, count: int) -> None:
        mv = self._in_ctx(ptr, size * count)
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[size]
        np.frombuffer(mv, dtype=dtype)[:] = value

    def _cuMemsetD8(self, p: int, v: int, n: int) -> None:
        assert 0 <= v <= 0xFF
        self._memset(p, v, 1, n)

    def _cuMemsetD16(self, p: int, v: int, n: int) -> None:
        self._memset(p, v, 2, n)

    def _cuMemsetD32(self, p: int, v: int, n: int) -> None:
        self._memset(p, v, 4, n)

    def _cuMemHostRegister(self, p: int, n: int, flags: int) -> None:
        assert isinstance(p, int) and flags in (1, 3, 9)  # PORTABLE, with DEVICEMAP or READ_ONLY
        if p in self.registered:
            raise _Err(CUresult.CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED)
        self.registered[p] = n
        self.register_flags.append(flags)

    def _cuMemHostUnregister(self, p: int) -> None:
        if self.registered.pop(int(p), None) is None:
            raise _Err(CUresult.CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED)

    def _cuStreamCreate(self, flags: int) -> Any:
        h = _H("CUstream", next(self.ids))
        self.streams[h.value] = self._need_ctx()
        return h

    def _stream(self, s: Any) -> None:
        s = int(s)
        if s and self.streams.get(s) != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE)

    def _cuStreamSynchronize(self, s: Any) -> None:
        self._stream(s)

    def _cuStreamQuery(self, s: Any) -> None:
        self._stream(s)

    def _cuStreamDestroy(self, s: Any) -> None:
        self._stream(s)
        del self.streams[int(s)]

    def _cuEventCreate(self, flags: int) -> Any:
        h = _H("CUevent", next(self.ids))
        self.events[h.value] = (self._need_ctx(), None)
        return h

    def _ev(self, e: Any) -> tuple[int, float | None]:
        try:
            return self.events[int(e)]
        except KeyError:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE) from None

    def _cuEventRecord(self, e: Any, s: Any) -> None:
        ctx, _t = self._ev(e)
        self._stream(s)
        if ctx != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE)
        self.events[int(e)] = (ctx, time.perf_counter())

    def _cuEventSynchronize(self, e: Any) -> None:
        self._ev(e)

    def _cuEventQuery(self, e: Any) -> None:
        self._ev(e)

    def _cuEventElapsedTime(self, a: Any, b: Any) -> float:
        (_c1, t1), (_c2, t2) = self._ev(a), self._ev(b)
        if t1 is None or t2 is None:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE)
        return (t2 - t1) * 1000.0

    def _cuEventDestroy(self, e: Any) -> None:
        self._ev(e)
        del self.events[int(e)]

    def _cuModuleLoadData(self, image: Any) -> Any:
        ctx = self._need_ctx()
        data = bytes(memoryview(image).cast("B"))
        if data[:4] == b"\x7fELF" or data[:4] == struct.pack("<I", 0xBA55ED50):
            table = ptx_parser.entries(KERNEL_PTX.read_text())  # the fake "knows" the test kernels
        else:
            assert data.endswith(b"\0"), "PTX must reach the driver NUL-terminated"
            try:
                table = ptx_parser.entries(data[:-1].decode())
            except (UnicodeDecodeError, ValueError):
                raise _Err(CUresult.CUDA_ERROR_INVALID_PTX) from None
        h = _H("CUmodule", next(self.ids))
        self.modules[h.value] = (ctx, table)
        return h

    def _cuModuleUnload(self, m: Any) -> None:
        if self.modules.pop(int(m), None) is None:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE)

    def _cuModuleGetFunction(self, m: Any, name: bytes) -> Any:
        assert isinstance(name, bytes)
        try:
            ctx, table = self.modules[int(m)]
        except KeyError:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE) from None
        if ctx != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        slots = table.get(name.decode())
        if slots is None:
            raise _Err(CUresult.CUDA_ERROR_NOT_FOUND)
        h = _H("CUfunction", next(self.ids))
        self.functions[h.value] = (int(m), name.decode(), slots)
        return h

    def _cuFuncGetParamInfo(self, f: Any, i: int) -> tuple:
        _m, _name, slots = self.functions[int(f)]
        if not 0 <= i < len(slots):
            raise _Err(CUresult.CUDA_ERROR_INVALID_VALUE)
        return (slots[i].offset, slots[i].size)

    def _cuLaunchKernel(self, f: Any, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                        shared: int, stream: Any, kernel_params: Any, extra: Any) -> None:
        try:
            mod, name, slots = self.functions[int(f)]
        except KeyError:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE) from None
        if mod not in self.modules:
            raise _Err(CUresult.CUDA_ERROR_INVALID_HANDLE)
        if self.modules[mod][0] != self._need_ctx():
            raise _Err(CUresult.CUDA_ERROR_INVALID_CONTEXT)
        self._stream(stream)
        assert extra in (None, 0)
        total = max((s.offset + s.size for s in slots), default=0)
        packed = bytearray(total)
        if slots:
            assert isinstance(kernel_params, int) and kernel_params, "kernelParams must be a void** address"
            ptrs = (ctypes.c_void_p * len(slots)).from_address(kernel_params)
            for s, p in zip(slots, ptrs):
                packed[s.offset:s.offset + s.size] = ctypes.string_at(p, s.size)
        else:
            assert kernel_params in (None, 0)
        self.launches.append((name, (gx, gy, gz, bx, by, bz)))
        kernel = KERNELS.get(name)
        if kernel is None:
            raise _Err(CUresult.CUDA_ERROR_NOT_SUPPORTED)
        args = struct.unpack_from(kernel.fmt, bytes(packed))
        kernel.run(_DeviceView(self), Launch((gx, gy, gz), (bx, by, bz)), args)


class _DeviceView:
    def __init__(self, drv: FakeDriver) -> None:
        self.drv = drv

    def array(self, ptr: int, dtype: type, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        try:
            _ctx, mv = self.drv._mem(ptr, size)
        except _Err:
            raise _Err(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS) from None
        return np.frombuffer(mv, dtype=dtype)


class _Err(Exception):
    def __init__(self, code: CUresult) -> None:
        super().__init__(code.name)
        self.code = code
