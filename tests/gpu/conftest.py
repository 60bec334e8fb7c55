"""gpu tests: need an NVIDIA GPU and driver; skipped elsewhere with the probe's reason."""

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.parity.harness import Oriond, cuda_probe, require_cuda  # noqa: E402


@pytest.fixture(scope="module")
def gpu_info():
    """The host's GPUs (ProbeResult); skips the module where there is no driver/GPU."""
    require_cuda()
    return cuda_probe()


@pytest.fixture(scope="module")
def oriond_cuda(gpu_info, tmp_path_factory):
    """oriond --backend cuda with one shm device and a loopback TCP port."""
    srv = Oriond(tmp_path_factory.mktemp("oriond-cuda"), "cuda").start()
    yield srv
    srv.stop()
    print("\n--- oriond server.log ---\n" + srv.server_log()[-4000:])
