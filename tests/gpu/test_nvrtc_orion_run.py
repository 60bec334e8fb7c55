"""An unmodified cuda-python program (NVRTC on the client, driver API through Orion) on a real
GPU: orion-run against oriond --backend cuda, over shared memory and over TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

PROGRAM = Path(__file__).resolve().parent / "programs" / "nvrtc_saxpy.py"


@pytest.fixture(scope="module")
def nvrtc_available(gpu_info):
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as e:  # noqa: BLE001 - libnvrtc not found
        pytest.skip(f"NVRTC unavailable on this host: {type(e).__name__}: {e}")
    return (major, minor)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("kind", ["ptx", "cubin"])
def test_nvrtc_saxpy_through_orion(oriond_cuda, nvrtc_available, transport, kind):
    import sys

    r = oriond_cuda.run_client([sys.executable, str(PROGRAM), kind], tcp=transport == "tcp")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out + "\n" + oriond_cuda.server_log()[-3000:]
    assert f"saxpy ({kind}) of 16777216 elements: PASSED" in out, out
