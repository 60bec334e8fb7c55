"""Shared helpers of the backend-parity suite (tests/parity) and the gpu tests (tests/gpu).

Backends under test:

* ``sim``        the sim backend (always);
* ``cuda-fake``  the cuda backend's code on ``fake_cuda.FakeDriver`` (always: exercises its
                 logic -- contexts, parameter buffers, draining, teardown -- without a GPU);
* ``cuda``       the cuda backend on the real driver (marked ``gpu``; skipped with the probe's
                 reason where there is no NVIDIA driver/GPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from orion_virt.launch import OriondProcess

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "orion_virt" / "kernels"
PTX = (KERNELS / "test_kernels.ptx").read_bytes()
CUBIN_SM90 = (KERNELS / "test_kernels.sm_90.cubin").read_bytes()
FATBIN = (Path(__file__).resolve().parent / "data" / "test_kernels.fatbin").read_bytes()
"""nvcc --fatbin -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80"""

MiB = 1 << 20
_probe_cache: Any = None


def cuda_probe() -> Any:
    """The real host's ProbeResult (run once per test process, in a child process)."""
    global _probe_cache
    if _probe_cache is None:
        from orion_virt.server.cuda_probe import probe

        _probe_cache = probe()
    return _probe_cache


def cuda_missing_reason() -> str | None:
    res = cuda_probe()
    if res.error:
        return f"no NVIDIA driver/GPU: {res.error}"
    if not res.gpus:
        return "no NVIDIA driver/GPU: the CUDA driver sees no GPU"
    return None


def require_cuda() -> None:
    why = cuda_missing_reason()
    if why:
        print(why)
        pytest.skip(why)


def fake_probe(gpus: int = 2) -> Any:
    from orion_virt.cuda_enums import CUdevice_attribute as A
    from orion_virt.server.backend import PhysicalGpu
    from orion_virt.server.cuda_probe import ProbeResult

    attrs = {int(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR): 9,
             int(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR): 0,
             int(A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT): 132}
    return ProbeResult(13000, [PhysicalGpu(i, "Fake CUDA GPU (tests)", 16 << 30, bytes([i + 1]) * 16, attrs)
                               for i in range(gpus)])


_real_cuda_backend: Any = None


def make_backend(name: str) -> Any:
    global _real_cuda_backend
    if name == "sim":
        from orion_virt.server.sim import SimBackend

        return SimBackend(2, 16384)
    from orion_virt.server.cuda_backend import CudaBackend

    if name == "cuda-fake":
        from tests.parity.fake_cuda import FakeDriver

        return CudaBackend(fake_probe(2), driver=FakeDriver(2))
    if name == "cuda":
        require_cuda()
        if _real_cuda_backend is None:
            _real_cuda_backend = CudaBackend(cuda_probe())
        return _real_cuda_backend
    raise ValueError(name)


def is_cuda(name: str) -> bool:
    return name in ("cuda", "cuda-fake")


def compute_capability(backend: Any, physical: int = 0) -> tuple[int, int]:
    from orion_virt.cuda_enums import CUdevice_attribute as A

    attrs = backend.gpus()[physical].attributes
    return (attrs.get(int(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR), 0),
            attrs.get(int(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR), 0))


def pack(fmt: str, *values: Any) -> bytes:
    return struct.pack(fmt, *values)


# -- a Session of the backend under test, served in this process ----------------------------------


NATIVE_LIB = ROOT / "build" / "native"

PRELUDE = r"""
import ctypes, json, sys, time
import numpy as np
from cuda.bindings import driver as cu
E = cu.CUresult
MiB = 1 << 20
A = json.loads(sys.argv[1])
PTX = open(A["ptx"], "rb").read()
OUT = {}

def ok(result):
    err, *values = result
    assert int(err) == 0, f"CUDA error {err!r}"
    if not values:
        return None
    return values[0] if len(values) == 1 else values

def status(result):
    return E(int(result[0]))

def setup_ctx(ordinal=0):
    ok(cu.cuInit(0))
    dev = ok(cu.cuDeviceGet(ordinal))
    return dev, ok(cu.cuCtxCreate(None, 0, dev))

def params_of(*arrays):
    return np.array([a.ctypes.data for a in arrays], dtype=np.uint64)
"""
"""What every program run by :func:`run_native` starts with: cuda-bindings' own driver module
(over the native client), ``ok``/``status``/``setup_ctx``/``params_of``, the test's values ``A``
and ``OUT``, which the program fills and the test gets back."""


@contextlib.contextmanager
def _served(backend: Any, gmem_mib: int, throttle: bool, accept: Any) -> Iterator[dict[str, str]]:
    """One Session of ``backend`` in a thread on the stream ``accept()`` returns; ends with BYE."""
    from orion_virt.server.session import Session, open_authorizer

    log = logging.getLogger("orion.test.parity")
    ended: dict[str, str] = {}
    streams: list[Any] = []

    def serve() -> None:
        srv = accept()
        streams.append(srv)
        session = Session(srv, backend, open_authorizer(1, gmem_mib, gpus=len(backend.gpus())), 1, log,
                          throttle=throttle)
        ended["why"] = session.run()

    t = threading.Thread(target=serve, name="parity-session", daemon=True)
    t.start()
    try:
        yield ended
    finally:
        t.join(20)
        for srv in streams:
            srv.close()
    assert not t.is_alive(), "the session thread did not end"
    assert ended.get("why") == "bye", ended


def build_native() -> None:
    """make native (the client the programs load); quick when it is built."""
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr


def run_native(backend: Any, program: str, vgpus: int = 1, gmem_mib: int = 256, ratio: int = 100,
               throttle: bool = True, **values: Any) -> dict[str, Any]:
    """Run ``PRELUDE + program`` under orion-run (the native client, TCP to a Session of
    ``backend`` served here) with ``values`` as ``A``; return its ``OUT``. Calls go through
    cuda-bindings, the native client, the wire protocol, the session layer's checks and the
    backend exactly as in oriond (minus the fork)."""
    import json

    from orion_virt.transport.tcp import SocketStream

    build_native()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(60)
    port = lsock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="orion-parity-") as tmp:
        script = Path(tmp) / "prog.py"
        script.write_text(PRELUDE + program + "\nprint('OUT', json.dumps(OUT))\n")
        env = child_env(ORION_VGPU=str(vgpus), ORION_GMEM=str(gmem_mib), ORION_RATIO=str(ratio),
                        ORION_SERVER=f"127.0.0.1:{port}", ORION_ENABLE_NET="1", HOME=tmp,
                        ORION_CLIENT_CONF_ETC=str(Path(tmp) / "no-client.conf"),
                        ORION_NATIVE_LIB_DIR=str(NATIVE_LIB))
        env.pop("ORION_CONTROLLER", None)
        env.pop("ORION_CLIENT", None)
        try:
            with _served(backend, gmem_mib, throttle, lambda: SocketStream(lsock.accept()[0], name="parity-server")):
                r = subprocess.run(py_cli("orion_run") + [sys.executable, str(script),
                                                         json.dumps({"ptx": str(KERNELS / "test_kernels.ptx"),
                                                                     **values})],
                                   env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stdout + r.stderr
        finally:
            lsock.close()
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("OUT ")]
    assert line, r.stdout + r.stderr
    return json.loads(line[-1][4:])


@contextlib.contextmanager
def wire_session(backend: Any, vgpus: int = 1, gmem_mib: int = 256, ratio: int = 100) -> Iterator[Any]:
    """A Session of ``backend`` over a socketpair and the wire protocol's client end
    (``client.connection.Connection``) handshaken with it: for frames no driver API sends."""
    from orion_virt.client.connection import Connection
    from orion_virt.transport.tcp import SocketStream
    from orion_virt.wire import Hello

    a, b = socket.socketpair()
    cli = SocketStream(b, name="parity-client")
    with _served(backend, gmem_mib, True, lambda: SocketStream(a, name="parity-server")):
        conn = Connection(cli, "tcp")
        conn.handshake(Hello(pid=os.getpid(), vgpu_count=vgpus, gmem_mib=gmem_mib, ratio=ratio,
                             program="tests/parity"))
        try:
            yield conn
        finally:
            conn.bye()


def ok(result: Any) -> Any:
    """cuda-python style: assert CUDA_SUCCESS and return the value(s)."""
    err, *values = result
    assert int(err) == 0, f"CUDA error {err!r}"
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# -- a real oriond in a subprocess ------------------------------------------------------------------


def py_cli(module: str) -> list[str]:
    """A command line running a click entry point of orion_virt without installed scripts."""
    code = f"import sys; from orion_virt.cli.{module} import main; sys.argv[0] = {module!r}; main()"
    return [sys.executable, "-c", code]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Oriond:
    """oriond with ``--backend NAME`` on a loopback port and one shm device: under /dev/shm
    (tmpfs, as deployed: there the cuda backend can pin the rings) where writable, else ``tmp``."""

    def __init__(self, tmp: Path, backend: str) -> None:
        self.tmp = tmp
        self.backend = backend
        self.logs, self.home = tmp / "log", tmp / "home"
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            self.shm = Path(tempfile.mkdtemp(prefix="orion-test-", dir="/dev/shm"))
        else:
            self.shm = tmp / "shm"
        self.on_tmpfs = str(self.shm).startswith("/dev/shm/")
        for d in (self.shm, self.logs, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.launcher = OriondProcess(self.logs, backend=backend, shm_path_base=self.shm, env=child_env(),
                                      command=py_cli("oriond"))
        self.port = self.launcher.port
        self.proc: subprocess.Popen | None = None

    def start(self) -> Oriond:
        subprocess.run(py_cli("orion_shm") + ["-i", "1", "--size", "64", "--path-base", str(self.shm)],
                       check=True, env=child_env(), capture_output=True, timeout=60)
        self.launcher.start(timeout=120)  # the cuda backend probes its GPUs first
        self.proc = self.launcher.proc
        return self

    def server_log(self) -> str:
        p = self.logs / "server.log"
        return p.read_text(errors="replace") if p.exists() else "(no server.log)"

    def client_env(self, tcp: bool, vgpus: int = 1, gmem_mib: int = 1024, ratio: int = 100) -> dict[str, str]:
        extra = dict(ORION_VGPU=str(vgpus), ORION_GMEM=str(gmem_mib), ORION_RATIO=str(ratio),
                     HOME=str(self.home), ORION_SERVER=f"127.0.0.1:{self.port}",
                     ORION_SHM_PATH_BASE=str(self.shm),
                     ORION_CLIENT_CONF_ETC=str(self.tmp / "no-client.conf"))
        if tcp:
            extra["ORION_ENABLE_NET"] = "1"
        return child_env(**extra)

    def run_client(self, argv: list[str], tcp: bool, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
        """``orion-run ARGV`` against this server; returns the completed process (text output)."""
        return subprocess.run(py_cli("orion_run") + argv, env=self.client_env(tcp, **kw), capture_output=True,
                              text=True, timeout=timeout)

    def active_sessions(self) -> int:
        log = self.server_log()
        return (len(re.findall(r"session \d+: (?:TCP connection|shared-memory channel)", log))
                - len(re.findall(r"session \d+ ended", log)))

    def stop(self) -> None:
        deadline = time.monotonic() + 10
        while self.active_sessions() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # let sessions of clients that just exited finish their teardown
        self.launcher.stop(15)
        if self.on_tmpfs:
            shutil.rmtree(self.shm, ignore_errors=True)
