"""The demo programs (examples/deviceQuery.py, examples/vectorAdd.py) through orion-run against
oriond --backend cuda, over shared memory and over TCP, with ORION_VGPU=2 ORION_GMEM=4096."""

from __future__ import annotations

import sys

import pytest

from tests.parity.harness import ROOT

pytestmark = pytest.mark.gpu


def _client_transport(home) -> str:
    logs = sorted((home / ".orion" / "log").glob("client-*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text() if logs else ""
    return next((ln.split("transport:", 1)[1].strip() for ln in text.splitlines() if "transport:" in ln), "?")


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_device_query(oriond_cuda, gpu_info, transport):
    r = oriond_cuda.run_client([sys.executable, str(ROOT / "examples" / "deviceQuery.py")],
                               tcp=transport == "tcp", vgpus=2, gmem_mib=4096)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    print(out)
    assert "Detected 2 CUDA Capable device(s)" in out
    assert out.count(f'"{gpu_info.gpus[0].name}"') == 2  # the physical GPU's name
    assert "Total amount of global memory: 4096 MBytes" in out  # the vGPU's memory
    assert "Result = PASS" in out
    used = _client_transport(oriond_cuda.home)
    assert used.lower().startswith("tcp" if transport == "tcp" else "shm"), used


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_vector_add(oriond_cuda, transport):
    r = oriond_cuda.run_client([sys.executable, str(ROOT / "examples" / "vectorAdd.py")],
                               tcp=transport == "tcp", vgpus=2, gmem_mib=4096)
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out + "\n" + oriond_cuda.server_log()[-3000:]
    assert out.count("sum check: PASSED") == 2 and "Test PASSED" in out


def test_server_log_names_the_backend_and_pins_the_ring(oriond_cuda):
    log = oriond_cuda.server_log()
    assert "backend cuda" in log
    assert "NOT a GPU" not in log
    # the shm sessions above registered their rings with cuMemHostRegister (best effort: where
    # pinning fails, copies stay pageable and a warning says so; on tmpfs it must succeed)
    if oriond_cuda.on_tmpfs:
        assert log.count("with CUDA (pinned") >= 2, log[-3000:]  # both rings of a session
        assert "copies stay pageable" not in log, log[-3000:]
    else:
        assert "shared memory at 0x" in log or "cuMemHostRegister" in log, log[-3000:]
