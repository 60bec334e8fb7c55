"""orion-smi over the native client's NVML and a real oriond (sim): the vGPUs this application was
given, their memory within the quota, and the processes using them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_native_client import native_env, oriond, programs, transport  # noqa: F401
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration

HOLD = r"""
import sys
from cuda.bindings import driver as d
from orion_virt.client import smi
assert d.cuInit(0)[0] == 0
err, ctx = d.cuDevicePrimaryCtxRetain(d.cuDeviceGet(1)[1])
assert d.cuCtxSetCurrent(ctx)[0] == 0
err, ptr = d.cuMemAlloc(300 << 20)
assert err == 0, err
sys.stdout.write(smi.render(smi.query()) + "\n")
"""


def test_orion_smi_shows_the_vgpus_of_the_application(programs: dict[str, Path], oriond: Oriond,  # noqa: F811
                                                      transport: str) -> None:  # noqa: F811
    env = native_env(oriond, transport, ORION_VGPU="2", ORION_GMEM="2048")
    r = subprocess.run([sys.executable, "-m", "orion_virt.client.smi"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if "Orion sim device" in ln]
    assert len(rows) == 2 and all("0MiB / 2048MiB" in ln for ln in rows), r.stdout
    assert "No running processes found" in r.stdout
    assert len({ln.split("|")[2].strip() for ln in rows}) == 2, "each vGPU has its own UUID"


def test_orion_smi_counts_what_the_process_holds(programs: dict[str, Path], oriond: Oriond,  # noqa: F811
                                                transport: str) -> None:  # noqa: F811
    env = native_env(oriond, transport, ORION_VGPU="2", ORION_GMEM="2048")
    r = subprocess.run([sys.executable, "-c", HOLD], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    gpu1 = next(ln for ln in r.stdout.splitlines() if ln.startswith("|   1 "))
    assert "300MiB / 2048MiB" in gpu1, r.stdout
    procs = [ln for ln in r.stdout.splitlines() if ln.startswith("|    1 ")]
    assert procs and "300MiB" in procs[0], r.stdout


def test_orion_smi_without_nvml_says_why(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "orion_virt.client.smi", "--lib", str(tmp_path / "none.so")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.startswith(f"orion-smi: cannot load {tmp_path / 'none.so'}")
