"""Profile one oriond session serving a C program's pipelined launches (the native client over a
real shared-memory device), in this process: where the server's time per launch goes.

    python tools/profile/session_launches.py [--backend sim|cuda] [--launches N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orion_virt.server.session import Session, open_authorizer  # noqa: E402
from orion_virt.transport.shmdev import format_device  # noqa: E402
from tests.streampairs import _serve_one  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="sim", choices=["sim", "cuda"])
    ap.add_argument("--launches", type=int, default=50000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--direct", action="store_true",
                    help="also time the backend's launch alone (no ring, no session) in this process")
    a = ap.parse_args()
    if a.direct:
        direct(a.backend, a.launches)
    inc = os.environ.get("CUDA_INCLUDE") or next(
        str(p) for d in __import__("nvidia").__path__ for p in Path(d).glob("cu*/include") if (p / "cuda.h").exists())
    work = Path(tempfile.mkdtemp(prefix="orion-prof-", dir="/dev/shm"))
    exe = work / "launch_loop"
    subprocess.run(["make", "-s", "-C", str(ROOT), "native"], check=True)
    subprocess.run(["gcc", "-std=c11", "-O2", f"-I{inc}", f"-I{ROOT / 'tests/native'}",
                    str(ROOT / "tools/profile/launch_loop.c"), f"-L{ROOT / 'build/native'}", "-lcuda",
                    "-o", str(exe)], check=True)
    path = work / "orionsock0"
    format_device(path, 64 << 20)
    if a.backend == "cuda":
        from orion_virt.server.cuda_backend import CudaBackend
        backend = CudaBackend()
        backend.gpus()
    else:
        from orion_virt.server.sim import SimBackend
        backend = SimBackend()
    env = dict(os.environ, ORION_SHM_PATH_BASE=str(work), ORION_SERVER="127.0.0.1:1", ORION_VGPU="1",
               ORION_GMEM="1024", LD_LIBRARY_PATH=str(ROOT / "build/native"), ORION_CLIENT_CONF_ETC="/nonexistent")
    proc = subprocess.Popen([str(exe), str(ROOT / "orion_virt/kernels/test_kernels.ptx"), str(a.launches)], env=env)
    stop = threading.Event()
    stream, _chan = _serve_one(path, stop)
    s = Session(stream, backend, open_authorizer(), 1, logging.getLogger("prof"))
    pr = cProfile.Profile() if a.profile else None
    if pr:
        pr.enable()
    t0 = time.perf_counter()
    why = s.run()
    dt = time.perf_counter() - t0
    if pr:
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(20)
    print(f"server: {why}; {s.calls} calls in {dt:.3f} s; sleeps waiting for the client: "
          f"{getattr(stream, 'sleeps', '?')}")
    proc.wait()
    stop.set()


def direct(backend_name: str, n: int) -> None:
    """The backend session's own launch cost: fill_u32 (n=0) issued ``n`` times by
    ``BackendSession.launch`` as the session calls it, then one synchronize."""
    import struct

    from orion_virt.server.backend import VGpu

    if backend_name == "cuda":
        from orion_virt.server.cuda_backend import CudaBackend
        backend = CudaBackend()
    else:
        from orion_virt.server.sim import SimBackend
        backend = SimBackend()  # type: ignore[assignment]
    bs = backend.open_session([VGpu(0, 1024 << 20, 100)])
    bs.use_device(0)
    mod = bs.module_load((ROOT / "orion_virt/kernels/test_kernels.ptx").read_bytes() + b"\0")
    func, slots = bs.get_function(mod, "fill_u32")
    size = max((sl.offset + sl.size for sl in slots), default=0)
    params = struct.pack(f"{size}x")
    for label in ("warm-up", "timed"):
        t0 = time.perf_counter()
        for _ in range(n):
            bs.launch(func, (1, 1, 1), (1, 1, 1), 0, None, params)
        bs.synchronize(None)
        dt = time.perf_counter() - t0
        print(f"backend {backend_name} launch alone ({label}): {n / dt:.0f}/s")
    bs.close()


if __name__ == "__main__":
    main()
