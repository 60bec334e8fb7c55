"""Choosing oriond's backend: ``cuda`` when a driver and a GPU are present, else ``sim``.

Detection never initialises CUDA in oriond's main process (workers fork from it, and a CUDA
context does not survive fork): ``cuda_probe`` runs in a short-lived child process, once per
oriond start, and its result is handed to the backend.
"""

from __future__ import annotations

import logging

from ..config import ServerConfig
from ..errors import BackendError
from . import cuda_probe
from .backend import Backend
from .cuda_probe import ProbeResult


def probe_cuda(timeout: float = 120.0) -> ProbeResult:
    """The host's GPUs (names, memory, attributes, driver version), read in one child process."""
    return cuda_probe.probe(timeout)


def probe_summary(res: ProbeResult) -> tuple[int, str]:
    """(number of GPUs, reason) of a probe. 0 GPUs comes with the reason there is no usable CUDA."""
    if res.error:
        return 0, f"no usable CUDA driver ({res.error})"
    if not res.gpus:
        return 0, "CUDA driver present but no GPU"
    return len(res.gpus), f"{len(res.gpus)} GPU(s) found"


def select_backend(cfg: ServerConfig, log: logging.Logger, sim_gpus: int = 1,
                   sim_memory_mib: int = 16384) -> Backend:
    """Raises BackendError when ``cuda`` is forced but unusable. The CUDA probe runs once per
    call and its result goes to the CudaBackend (which would otherwise probe again)."""
    choice = cfg.backend
    if choice in ("auto", "cuda"):
        res = probe_cuda()
        n, why = probe_summary(res)
        if n:
            from .cuda_backend import CudaBackend

            log.info("backend cuda: %s", why)
            return CudaBackend(probe_result=res)
        if choice == "cuda":
            raise BackendError(f"--backend cuda: {why}")
        log.warning("backend sim (NOT a GPU: device memory in host RAM, NumPy kernels): %s", why)
    else:
        log.warning("backend sim forced by configuration (NOT a GPU)")
    from .sim import SimBackend

    return SimBackend(sim_gpus, sim_memory_mib)
