"""Choosing oriond's backend: ``cuda`` when a driver and a GPU are present, else ``sim``.

Detection never initialises CUDA in oriond's main process (workers fork from it, and a CUDA
context does not survive fork): it runs in a short-lived child process.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from ..config import ServerConfig
from ..errors import BackendError
from .backend import Backend

_PROBE = (
    "from cuda.bindings import driver as d\n"
    "e,=d.cuInit(0)\n"
    "assert int(e)==0, e\n"
    "e,n=d.cuDeviceGetCount()\n"
    "print(n)\n"
)


def probe_cuda(timeout: float = 60.0) -> tuple[int, str]:
    """(number of GPUs, reason). 0 GPUs comes with the reason there is no usable CUDA."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"CUDA probe failed: {e}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
        return 0, f"no usable CUDA driver ({last})"
    try:
        n = int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0, "CUDA probe printed nothing"
    return (n, f"{n} GPU(s) found") if n else (0, "CUDA driver present but no GPU")


def select_backend(cfg: ServerConfig, log: logging.Logger, sim_gpus: int = 1,
                   sim_memory_mib: int = 16384) -> Backend:
    """Raises BackendError when ``cuda`` is forced but unusable."""
    choice = cfg.backend
    if choice in ("auto", "cuda"):
        n, why = probe_cuda()
        if n:
            from .cuda_backend import CudaBackend

            log.info("backend cuda: %s", why)
            return CudaBackend()
        if choice == "cuda":
            raise BackendError(f"--backend cuda: {why}")
        log.warning("backend sim (NOT a GPU: device memory in host RAM, NumPy kernels): %s", why)
    else:
        log.warning("backend sim forced by configuration (NOT a GPU)")
    from .sim import SimBackend

    return SimBackend(sim_gpus, sim_memory_mib)
