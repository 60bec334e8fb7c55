"""cuFFT's export table over the native client, on the sim backend: TOOLS_MODULE {6e163fbe-...},
which cuFFT 12 (CUDA 13) asks for in cufftCreate, and its slot 7 (a module's kernels handed to a
callback, their count returned), driven by tests/native/cufft_plan.c against a real oriond over TCP
and shared memory; then NVIDIA's own libcufft.so.12, unmodified, as far as the sim can take it (it
cannot load cuFFT's cubins).

libcufft.so.12 comes from the nvidia-cufft wheel of the test extra (or ``ORION_CUFFT_LIB``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_native_client import BUILD, PTX, SOURCES, cuda_include, native_env
from tests.integration.test_native_client import oriond as oriond  # noqa: F401 (fixture)
from tests.integration.test_native_client import transport as transport  # noqa: F401 (fixture)
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration



def cufft_library() -> Path | None:
    """NVIDIA's libcufft.so.12: ORION_CUFFT_LIB, else the nvidia-cufft wheel where Python finds it."""
    if os.environ.get("ORION_CUFFT_LIB"):
        return Path(os.environ["ORION_CUFFT_LIB"])
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return None
    for d in nvidia.__path__:
        for lib in sorted(Path(d).glob("cu*/lib/libcufft.so.12")):
            return lib
    return None


@pytest.fixture(scope="module")
def cufft_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the native client (make test-deps installs it)")
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    inc = cuda_include()
    assert inc is not None, "cuda.h not found after make native (pip install nvidia-cuda-runtime)"
    exe = tmp_path_factory.mktemp("cufft") / "cufft_plan"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{inc}",
                        f"-I{SOURCES}", str(SOURCES / "cufft_plan.c"), f"-L{BUILD}", "-lcuda", "-lm", "-o",
                        str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def run(exe: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_the_table_is_answered(cufft_plan: Path, oriond: Oriond, transport: str) -> None:
    """The table is there (64 slots), with no refusal said, over either transport."""
    r = run(cufft_plan, str(PTX), env=native_env(oriond, transport, ORION_LOG_LEVEL="DEBUG"))
    assert "table TOOLS_MODULE: 512 bytes" in r.stdout, r.stdout + r.stderr
    assert "6e163fbe" not in r.stderr, r.stderr
    assert "slot 7 without a module: returned 0, callback called 0 times" in r.stdout


def test_slot7_hands_out_a_modules_kernels(cufft_plan: Path, oriond: Oriond, transport: str) -> None:
    """Every kernel of the module once, the count returned; a module of one kernel (cuFFT's kind)
    gives a function that launches."""
    r = run(cufft_plan, str(PTX), env=native_env(oriond, transport))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "slot 7 on a module of 5 kernels: returned 5, callback called 5 times" in r.stdout
    assert "slot 7 on a module of one kernel: returned 1, callback called 1 times" in r.stdout
    assert "vectorAdd through the function slot 7 gave: PASSED" in r.stdout
    assert "Result = PASS" in r.stdout
    assert "not supported" not in r.stderr, r.stderr


def test_nvidias_cufft_plans_as_far_as_the_sim_loads(cufft_plan: Path, oriond: Oriond) -> None:
    """cufftCreate succeeds (without the table it is CUFFT_INTERNAL_ERROR). The plan then fails
    where the sim stops: at loading cuFFT's cubins, which the session log names; on a sim device
    that reports no opt-in shared memory per block (attribute 97 = 0) cuFFT gives up before
    loading anything."""
    lib = cufft_library()
    assert lib is not None and lib.exists(), "libcufft.so.12 not found: make .venv/.full installs nvidia-cufft"
    logs = set((oriond.logs / "session").glob("*.log"))
    r = run(cufft_plan, str(PTX), str(lib), env=native_env(oriond, ORION_LOG_LEVEL="DEBUG"))
    assert "cufftCreate: 0" in r.stdout, r.stdout + r.stderr
    assert "6e163fbe" not in r.stderr, r.stderr
    assert not [ln for ln in r.stderr.splitlines() if "TOOLS_MODULE" in ln and "is not supported" in ln], r.stderr
    assert "cufftMakePlan1d(256, C2C): 5," in r.stdout, r.stdout
    assert "Result = FAIL" in r.stdout
    session = "".join(p.read_text() for p in set((oriond.logs / "session").glob("*.log")) - logs)
    loads = [ln for ln in session.splitlines() if "cuModuleLoadData failed" in ln]
    assert any("CUDA_ERROR_NOT_SUPPORTED (the sim backend loads PTX only" in ln for ln in loads), session
