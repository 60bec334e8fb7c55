"""The NVML library for the vGPUs (build/native/libnvidia-ml.so.1) end to end: NVIDIA's own Python
bindings (nvidia-ml-py's pynvml, unmodified) and a C program, with LD_LIBRARY_PATH pointing at the
build, against a real oriond (sim) over shm and TCP. NVML answers from the client's libcuda.so.1:
the vGPUs ORION_VGPU asked for, ORION_GMEM as their memory, this process's allocations as the
memory used; a function it does not answer is a stub that says its name once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import test_native_client as native
from tests.integration.test_native_client import BUILD, cuda_include, native_env
from tests.oriond_fixture import ROOT, Oriond

pytestmark = pytest.mark.integration

# test_native_client's fixtures, by name: the build (make native, the C programs), a sim oriond
# of this module's own, each transport
programs = native.programs
oriond = native.oriond
transport = native.transport

NVML = BUILD / "libnvidia-ml.so.1"
NVML_SRC = ROOT / "orion_virt" / "client" / "native" / "nvml"
SIM_NAME = "Orion sim device (no GPU)"
STUB_LINE = "[WARN] {} is not supported by the orion_virt client: NVML_ERROR_NOT_SUPPORTED"

# Run as a separate program: pynvml, cuda-bindings' driver module and torch's way of counting
# devices, each loading its library by soname as it does on a GPU host. Prints one JSON object.
PYNVML_PROGRAM = r'''
import ctypes, json, os
import pynvml
from cuda.bindings import driver as cu

def ok(r):
    assert r[0] == cu.CUresult.CUDA_SUCCESS, r
    return r[1] if len(r) > 1 else None

out = {}
# torch.cuda.device_count(): CDLL("libnvidia-ml.so.1"), nvmlInit, nvmlDeviceGetCount_v2
lib = ctypes.CDLL("libnvidia-ml.so.1")
n = ctypes.c_uint(0)
out["torch"] = [lib.nvmlInit(), lib.nvmlDeviceGetCount_v2(ctypes.byref(n)), n.value]
out["unknown_symbol"] = hasattr(lib, "nvmlNoSuchFunction")

pynvml.nvmlInit()
out["loaded"] = sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "libnvidia-ml" in ln})
out["driver"] = pynvml.nvmlSystemGetDriverVersion()
out["nvml"] = pynvml.nvmlSystemGetNVMLVersion()
out["cuda"] = [pynvml.nvmlSystemGetCudaDriverVersion(), pynvml.nvmlSystemGetCudaDriverVersion_v2()]

def memory(h):
    m, m2 = pynvml.nvmlDeviceGetMemoryInfo(h), pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    return {"total": m.total, "free": m.free, "used": m.used, "total2": m2.total, "used2": m2.used}

def procs(h):
    return [[p.pid, p.usedGpuMemory] for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]

out["count"] = pynvml.nvmlDeviceGetCount()
handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(out["count"])]
out["devices"] = []
for h in handles:
    uuid = pynvml.nvmlDeviceGetUUID(h)
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    out["devices"].append({
        "name": pynvml.nvmlDeviceGetName(h), "uuid": uuid, "index": pynvml.nvmlDeviceGetIndex(h),
        "by_uuid": pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(uuid)),
        "minor": pynvml.nvmlDeviceGetMinorNumber(h), "cc": list(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
        "bus": pci.busId, "bus_legacy": pci.busIdLegacy, "pci_id": pci.pciDeviceId,
        "memory": memory(h), "procs": procs(h)})

# 64 MiB through cuda-bindings on the second vGPU, in its primary context (as the runtime does)
ok(cu.cuInit(0))
dev = ok(cu.cuDeviceGet(1))
ctx = ok(cu.cuDevicePrimaryCtxRetain(dev))
ok(cu.cuCtxSetCurrent(ctx))
ptr = ok(cu.cuMemAlloc(64 << 20))
out["allocated"] = {"memory": [memory(h) for h in handles], "procs": [procs(h) for h in handles],
                    "context_kept": int(ok(cu.cuCtxGetCurrent())) == int(ctx)}
ok(cu.cuMemFree(ptr))
out["freed"] = memory(handles[1])

out["unsupported"] = []
for name, call in [("nvmlDeviceGetTemperature", lambda: pynvml.nvmlDeviceGetTemperature(handles[0], 0)),
                   ("nvmlDeviceGetTemperature", lambda: pynvml.nvmlDeviceGetTemperature(handles[1], 0)),
                   ("nvmlDeviceGetUtilizationRates", lambda: pynvml.nvmlDeviceGetUtilizationRates(handles[0])),
                   ("nvmlDeviceGetPowerUsage", lambda: pynvml.nvmlDeviceGetPowerUsage(handles[0]))]:
    try:
        call()
        out["unsupported"].append([name, "answered"])
    except pynvml.NVMLError as e:
        out["unsupported"].append([name, str(e)])
pynvml.nvmlShutdown()
print(json.dumps({"pid": os.getpid(), **out}))
'''


def run_pynvml(env: dict[str, str]) -> tuple[dict, subprocess.CompletedProcess]:
    env = dict(env)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", PYNVML_PROGRAM], env=env, capture_output=True, text=True,
                       timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r


# -- the library itself -------------------------------------------------------------------------


def test_generated_stubs_are_current() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_nvml.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"stale nvml_stubs_gen.c (or a new nvidia-ml-py): python tools/gen_nvml.py\n{r.stdout}"


def test_the_library_exports_every_function_pynvml_looks_up_and_only_nvml(programs: dict[str, Path]) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_nvml
    nm = subprocess.run(["nm", "-D", "--defined-only", str(NVML)], capture_output=True, text=True,
                        check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    looked_up = set(gen_nvml.looked_up(gen_nvml.pynvml_source().read_text()))
    assert len(looked_up) > 300
    assert looked_up <= exported, sorted(looked_up - exported)
    hand = set(gen_nvml.hand_written())
    assert {"nvmlInit", "nvmlInit_v2", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetPciInfo",
            "nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetComputeRunningProcesses"} <= hand <= exported
    assert all(n.startswith("nvml") for n in exported), sorted(n for n in exported if not n.startswith("nvml"))
    dyn = subprocess.run(["readelf", "-d", str(NVML)], capture_output=True, text=True).stdout
    assert "Library soname: [libnvidia-ml.so.1]" in dyn
    assert "libcuda" not in dyn  # loaded with dlopen, by soname, at nvmlInit


@pytest.mark.parametrize("opt", ["-O0", "-O1", "-O2", "-O3"])
def test_the_library_builds_warning_free_at_every_optimisation_level(tmp_path: Path, opt: str) -> None:
    inc = cuda_include()
    assert inc is not None
    target = tmp_path / "libnvidia-ml.so.1"
    r = subprocess.run(["make", "-s", "-C", str(ROOT / "orion_virt" / "client" / "native"), f"OUT={tmp_path}",
                        f"CUDA_INCLUDE={inc}", str(target)], env={**os.environ, "CFLAGS": opt},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert target.exists()


# -- pynvml against oriond (sim) ---------------------------------------------------------------


def test_pynvml_sees_the_vgpus_their_quota_and_this_process(programs: dict[str, Path], oriond: Oriond,
                                                             transport: str) -> None:
    out, r = run_pynvml(native_env(oriond, transport, ORION_VGPU="2", ORION_GMEM="1024"))
    mib = 1 << 20
    assert out["loaded"] == [str(NVML)]
    assert out["torch"] == [0, 0, 2]
    assert out["unknown_symbol"] is False
    assert out["count"] == 2
    assert out["cuda"] == [13000, 13000]
    assert out["driver"] == "580.65.06" and out["nvml"] == "13.580.65.06"
    devs = out["devices"]
    assert [d["name"] for d in devs] == [SIM_NAME, SIM_NAME]
    assert [d["index"] for d in devs] == [0, 1] and [d["by_uuid"] for d in devs] == [0, 1]
    assert [d["minor"] for d in devs] == [0, 1]
    uuids = [d["uuid"] for d in devs]
    assert len(set(uuids)) == 2 and all(u.startswith("GPU-") and len(u) == 40 for u in uuids), uuids
    for d in devs:
        assert d["cc"] == [8, 0]
        assert d["bus"] == "00000000:00:00.0" and d["bus_legacy"] == "0000:00:00.0"
        assert d["pci_id"] == 0x10DE
        m = d["memory"]
        assert m["total"] == m["total2"] == 1024 * mib
        assert m["used"] == m["used2"] and m["used"] + m["free"] == m["total"]
    # the process has no memory on the second vGPU yet
    assert devs[1]["memory"]["used"] == 0 and devs[1]["procs"] == []

    before, after = devs[1]["memory"], out["allocated"]["memory"][1]
    assert after["used"] - before["used"] == 64 * mib
    assert after["free"] == before["free"] - 64 * mib and after["total"] == 1024 * mib
    assert out["allocated"]["memory"][0] == devs[0]["memory"]
    assert out["allocated"]["procs"][1] == [[out["pid"], after["used"]]]
    assert out["allocated"]["context_kept"] is True
    assert out["freed"]["used"] == before["used"]

    assert out["unsupported"] == [["nvmlDeviceGetTemperature", "Not Supported"]] * 2 + [
        ["nvmlDeviceGetUtilizationRates", "Not Supported"], ["nvmlDeviceGetPowerUsage", "Not Supported"]]
    warned = [ln for ln in r.stderr.splitlines() if "is not supported" in ln]
    assert warned == [STUB_LINE.format(n) for n in
                      ("nvmlDeviceGetTemperature", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage")]
    assert "Client exits with allocation ID" in r.stderr
    if transport == "shm":
        assert "using TCP" not in r.stderr


def test_the_device_count_and_memory_follow_orion_vgpu_and_orion_gmem(programs: dict[str, Path], oriond: Oriond,
                                                                      transport: str) -> None:
    env = native_env(oriond, transport, ORION_VGPU="1", ORION_GMEM="512")
    code = ("import pynvml; pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0); "
            "print(pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetMemoryInfo(h).total >> 20)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["1", "512"]


# -- C ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nvml_program(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("nvml") / "nvml_query"
    src = ROOT / "tests" / "native" / "nvml" / "nvml_query.c"
    c = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{cuda_include()}",
                        f"-I{NVML_SRC}", str(src), f"-L{BUILD}", "-l:libnvidia-ml.so.1", "-lcuda", "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def test_a_c_program_linked_with_nvml(nvml_program: Path, oriond: Oriond, transport: str) -> None:
    r = subprocess.run([str(nvml_program)], env=native_env(oriond, transport, ORION_GMEM="2048"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "devices: 2" in out
    assert "driver 580.65.06, NVML 13.580.65.06, CUDA 13000" in out
    assert f"device 1: {SIM_NAME}, GPU-" in out and "total 2048 MiB, used 0 MiB, cc 8.0" in out
    assert "by uuid 1" in out
    assert "ok: nvmlDeviceGetName(d0, small, sizeof small) -> NVML_ERROR_INSUFFICIENT_SIZE" in out
    assert "-> NVML_ERROR_ARGUMENT_VERSION_MISMATCH" in out
    assert "memory v2: total 2048 MiB, free 2048 MiB, used 0 MiB" in out
    assert "after 96 MiB: used 96 MiB of 2048 MiB; context kept: yes" in out
    assert "processes: 1, this one: yes, using 96 MiB" in out
    assert "processes (v1): 1, using 96 MiB" in out
    assert "graphics processes: 0" in out
    assert "after free: used 0 MiB" in out
    assert "Test PASSED" in out
    assert r.stderr.count(STUB_LINE.format("nvmlDeviceGetTemperature")) == 1


# -- without a server ---------------------------------------------------------------------------


def test_without_oriond_nvml_init_fails_and_no_gpus_initialises_empty(programs: dict[str, Path]) -> None:
    code = ("import ctypes; lib = ctypes.CDLL('libnvidia-ml.so.1'); n = ctypes.c_uint(7); "
            "a = lib.nvmlInit_v2(); b = lib.nvmlInitWithFlags(1); c = lib.nvmlDeviceGetCount_v2(ctypes.byref(n)); "
            "print(a, b, c, n.value)")
    env = native_env(ORION_SERVER="127.0.0.1:1", ORION_CONNECT_TIMEOUT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["9", "0", "0", "0"]  # NVML_ERROR_DRIVER_NOT_LOADED; NO_GPUS: no devices
    assert "cannot connect to oriond at 127.0.0.1:1" in r.stderr
    assert "NVML (orion_virt): cuInit of libcuda.so.1: 100 CUDA_ERROR_NO_DEVICE" in r.stderr
