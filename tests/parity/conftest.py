"""Backend-parity suite: the same tests over ``sim``, ``cuda-fake`` and ``cuda`` (gpu-marked).

``cuda`` is skipped, with the probe's reason, where there is no NVIDIA driver/GPU.
"""

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.parity.harness import make_backend  # noqa: E402

BACKENDS = ["sim", "cuda-fake", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend(backend_name: str):
    return make_backend(backend_name)  # skips 'cuda' without a driver/GPU, printing why


@pytest.fixture
def bs(backend):
    """A backend session with one 256 MiB vGPU on physical GPU 0, current device 0."""
    from orion_virt.server.backend import VGpu

    s = backend.open_session([VGpu(0, 256 << 20, 100)])
    s.use_device(0)
    yield s
    s.close()
