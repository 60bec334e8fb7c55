"""The benchmark's client process: cuda-bindings, commands on stdin, JSON results on stdout.

Run as ``python -m orion_virt.bench.agent`` with the client's environment (ORION_SERVER,
ORION_SHM_PATH_BASE, ORION_ENABLE_NET, ...) choosing the transport. Every CUDA call goes through
cuda-bindings' ``cuda.bindings.driver`` to whichever ``libcuda.so.1`` the loader finds: the native
client (first on ``LD_LIBRARY_PATH``, as orion-run puts it) or, for the baseline, NVIDIA's. One
JSON object per line each way; ``{"op": "quit"}`` (or end of input) ends the session with the
usual BYE.

Ops: ``init`` (cuInit timed, then a context, the test module, a small buffer), ``null`` (round
trips of cuCtxSynchronize), ``pipelined`` (async calls counted until a final cuCtxSynchronize),
``copy`` (HtoD/DtoH of one size), ``quit``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .stats import latency_summary

PTX = Path(__file__).resolve().parent.parent / "kernels" / "test_kernels.ptx"


def _driver() -> str:
    """"native" for NVIDIA's libcuda.so.1, "orion-c" for the native client (ORION_BENCH_CLIENT_LIB,
    the directory the comparison put first on LD_LIBRARY_PATH)."""
    ours = os.environ.get("ORION_BENCH_CLIENT_LIB", "")
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libcuda.so" in line:
            return "orion-c" if ours and line.split()[-1].startswith(ours.rstrip("/") + "/") else "native"
    return "native"


class BenchError(RuntimeError):
    pass


class Agent:
    def __init__(self) -> None:
        from cuda.bindings import driver

        self.cuda = driver
        self.func: Any = None
        self.params: np.ndarray | None = None
        self._keep: list[np.ndarray] = []
        self.small: Any = None
        self.dptr: Any = None
        self.dsize = 0
        self.host: np.ndarray | None = None

    def check(self, result: tuple, what: str) -> Any:
        err, *values = result
        if int(err) != 0:
            raise BenchError(f"{what} failed: {self.cuda.CUresult(int(err)).name}")
        return values[0] if len(values) == 1 else values

    # -- ops ------------------------------------------------------------------------------------

    def init(self) -> dict:
        cuda = self.cuda
        t0 = time.perf_counter()
        err, = cuda.cuInit(0)
        cuinit_s = time.perf_counter() - t0
        self.check((err,), "cuInit")
        dev = self.check(cuda.cuDeviceGet(0), "cuDeviceGet")
        self.check(cuda.cuCtxCreate(None, 0, dev), "cuCtxCreate")
        module = self.check(cuda.cuModuleLoadData(PTX.read_bytes() + b"\0"), "cuModuleLoadData")
        self.func = self.check(cuda.cuModuleGetFunction(module, b"fill_u32"), "cuModuleGetFunction")
        self.small = self.check(cuda.cuMemAlloc(4096), "cuMemAlloc")
        # fill_u32(ptr, value, n) with n = 0: a kernel launch that does no work.
        self._keep = [np.array([int(self.small)], dtype=np.uint64), np.array([7], dtype=np.uint32),
                      np.array([0], dtype=np.int32)]
        self.params = np.array([a.ctypes.data for a in self._keep], dtype=np.uint64)
        return {"cuinit_s": cuinit_s, "transport": _driver()}

    def null(self, n: int, warmup: int = 200, raw: bool = False) -> dict:
        """``n`` timed cuCtxSynchronize round trips: their summary, or the samples (ns) if ``raw``."""
        sync = self.cuda.cuCtxSynchronize
        for _ in range(warmup):
            sync()
        clock = time.perf_counter_ns
        samples = [0] * n
        bad = 0
        for i in range(n):
            t0 = clock()
            r = sync()
            samples[i] = clock() - t0
            bad += r[0] != 0
        if bad:
            raise BenchError(f"{bad} of {n} cuCtxSynchronize calls failed")
        return {"samples": samples} if raw else latency_summary(samples)

    def first_call(self) -> dict:
        """One round trip after the session was idle (the waiters are in their slowest sleep)."""
        t0 = time.perf_counter_ns()
        self.check(self.cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        return {"us": (time.perf_counter_ns() - t0) / 1e3}

    def pipelined(self, n: int, kind: str = "launch") -> dict:
        cuda = self.cuda
        assert self.params is not None
        if kind == "launch":
            launch, f, p = cuda.cuLaunchKernel, self.func, self.params.ctypes.data

            def issue() -> None:
                for _ in range(n):
                    launch(f, 1, 1, 1, 1, 1, 1, 0, 0, p, 0)
        elif kind == "memset":
            memset, d = cuda.cuMemsetD8Async, self.small

            def issue() -> None:
                for _ in range(n):
                    memset(d, 0, 16, 0)
        else:
            raise BenchError(f"unknown pipelined kind {kind!r}")
        self.check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        t0 = time.perf_counter()
        issue()
        t1 = time.perf_counter()
        self.check(cuda.cuCtxSynchronize(), f"cuCtxSynchronize after {n} {kind}s")
        t2 = time.perf_counter()
        return {"n": n, "per_s": n / (t2 - t0), "issue_per_s": n / (t1 - t0), "seconds": t2 - t0}

    def _buffers(self, size: int) -> None:
        cuda = self.cuda
        if self.dsize < size:
            if self.dptr is not None:
                self.check(cuda.cuMemFree(self.dptr), "cuMemFree")
                self.check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
            self.dptr = self.check(cuda.cuMemAlloc(size), f"cuMemAlloc({size})")
            self.dsize = size
            self.host = np.empty(size, dtype=np.uint8)
            self.host.fill(1)  # pre-faulted, as the floors' buffers are

    def _pinned(self, size: int) -> int:
        """A page-locked host buffer of ``size`` bytes (cuMemAllocHost), pre-faulted; one kept."""
        cuda = self.cuda
        held = getattr(self, "pinned_buf", None)
        if held is not None and held[1] >= size:
            return int(held[0])
        if held is not None:
            self.check(cuda.cuMemFreeHost(held[0]), "cuMemFreeHost")
        addr = int(self.check(cuda.cuMemAllocHost(size), f"cuMemAllocHost({size})"))
        ctypes.memset(addr, 1, size)
        self.pinned_buf = (addr, size)
        return addr

    def copy(self, size: int, reps: int, direction: str, pinned: bool = False) -> dict:
        """``reps`` timed copies of ``size`` bytes between the device and pageable memory (a NumPy
        array, as cuda-python programs pass it) or, ``pinned``, page-locked memory (cuMemAllocHost)."""
        cuda = self.cuda
        self._buffers(size)
        assert self.host is not None
        host = self._pinned(size) if pinned else self.host.ctypes.data
        if direction == "htod":
            fn, args = cuda.cuMemcpyHtoD, (self.dptr, host, size)
        else:
            fn, args = cuda.cuMemcpyDtoH, (host, self.dptr, size)
        self.check(fn(*args), f"{direction} warm-up")  # faults the device pages in
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = fn(*args)
            out.append(time.perf_counter() - t0)
            self.check(r, direction)
        return {"seconds": out}

    def matmul(self, n: int, iters: int) -> dict:
        """A compute-bound program: ``iters`` products of n x n float32 matrices with the naive
        matmul_f32 kernel, launched back to back, then one synchronize; checked against NumPy."""
        cuda = self.cuda
        module = self.check(cuda.cuModuleLoadData(PTX.read_bytes() + b"\0"), "cuModuleLoadData")
        fn = self.check(cuda.cuModuleGetFunction(module, b"matmul_f32"), "cuModuleGetFunction")
        rng = np.random.default_rng(0)
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        c = np.zeros((n, n), dtype=np.float32)
        da, db, dc = (self.check(cuda.cuMemAlloc(a.nbytes), "cuMemAlloc") for _ in range(3))
        self.check(cuda.cuMemcpyHtoD(da, a.ctypes.data, a.nbytes), "HtoD")
        self.check(cuda.cuMemcpyHtoD(db, b.ctypes.data, b.nbytes), "HtoD")
        args = [np.array([int(x)], dtype=np.uint64) for x in (da, db, dc)] + [np.array([n], dtype=np.int32)]
        params = np.array([x.ctypes.data for x in args], dtype=np.uint64)
        grid = (n + 15) // 16
        launch = lambda: cuda.cuLaunchKernel(fn, grid, grid, 1, 16, 16, 1, 0, 0, params.ctypes.data, 0)  # noqa: E731
        self.check(launch(), "warm-up launch")
        self.check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        t0 = time.perf_counter()
        for _ in range(iters):
            launch()
        self.check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        seconds = time.perf_counter() - t0
        self.check(cuda.cuMemcpyDtoH(c.ctypes.data, dc, c.nbytes), "DtoH")
        rows = slice(0, min(n, 64))
        ok = bool(np.allclose(c[rows], a[rows] @ b, rtol=1e-3, atol=1e-2))
        for p in (da, db, dc):
            self.check(cuda.cuMemFree(p), "cuMemFree")
        self.check(cuda.cuModuleUnload(module), "cuModuleUnload")
        return {"n": n, "iters": iters, "seconds": seconds, "gflops": 2 * n ** 3 * iters / seconds / 1e9,
                "correct": ok}

    def cpu(self) -> dict:
        return {"cpu_s": time.process_time()}


def serve(inp: Any = None, out: Any = None) -> None:
    inp = inp or sys.stdin
    out = out or sys.stdout
    agent: Agent | None = None
    for line in inp:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            break
        try:
            if agent is None:
                agent = Agent()
            res = getattr(agent, op)(**req)
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator, which fails the run
            res = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()
    out.write(json.dumps({"bye": True}) + "\n")
    out.flush()


if __name__ == "__main__":
    serve()
