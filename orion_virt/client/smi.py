"""``orion-smi``: the application's vGPUs in the layout ``nvidia-smi`` users know.

Standard library only (it runs in guests): it asks NVML through ``libnvidia-ml.so.1`` — in a
guest or container where install-client put the native client, or under
``orion-run`` (the native client), that is the Orion client's NVML, which answers for the vGPUs
``ORION_VGPU``/``ORION_GMEM`` give this process (memory used and total within the quota).

    ORION_VGPU=2 ORION_GMEM=4096 orion-smi            (python3 -m orion_virt.client.smi)

Exit status: 0, or 2 with one line saying why when NVML cannot be loaded or initialised.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _Process(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong), ("gpuInstanceId", ctypes.c_uint),
                ("computeInstanceId", ctypes.c_uint)]


class SmiError(Exception):
    """NVML could not answer; ``str(e)`` says why."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    total: int
    used: int
    processes: tuple[tuple[int, int], ...]
    """(pid, bytes) of the processes using the vGPU"""


@dataclass(frozen=True)
class Report:
    driver: str
    cuda: int
    gpus: tuple[Gpu, ...]


def query(lib: str = "libnvidia-ml.so.1") -> Report:
    """What NVML says now. Raises SmiError naming the library or the failing function."""
    try:
        nvml: Any = ctypes.CDLL(lib)
    except OSError as e:
        raise SmiError(f"cannot load {lib}: {e} (install-client installs the Orion client's NVML)") from None

    def ok(r: int, what: str) -> None:
        if r != NVML_SUCCESS:
            nvml.nvmlErrorString.restype = ctypes.c_char_p
            raise SmiError(f"{what}: {nvml.nvmlErrorString(r).decode(errors='replace')} (NVML error {r})")

    ok(nvml.nvmlInit_v2(), "nvmlInit")
    try:
        buf = ctypes.create_string_buffer(96)
        ok(nvml.nvmlSystemGetDriverVersion(buf, 96), "nvmlSystemGetDriverVersion")
        driver = buf.value.decode()
        cuda = ctypes.c_int()
        ok(nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)), "nvmlSystemGetCudaDriverVersion")
        n = ctypes.c_uint()
        ok(nvml.nvmlDeviceGetCount_v2(ctypes.byref(n)), "nvmlDeviceGetCount")
        gpus = []
        for i in range(n.value):
            h = ctypes.c_void_p()
            ok(nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)), f"nvmlDeviceGetHandleByIndex({i})")
            ok(nvml.nvmlDeviceGetName(h, buf, 96), "nvmlDeviceGetName")
            name = buf.value.decode(errors="replace")
            ok(nvml.nvmlDeviceGetUUID(h, buf, 96), "nvmlDeviceGetUUID")
            uuid = buf.value.decode(errors="replace")
            mem = _Memory()
            ok(nvml.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem)), "nvmlDeviceGetMemoryInfo")
            count = ctypes.c_uint(64)
            procs = (_Process * 64)()
            r = nvml.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(count), procs)
            found = tuple((procs[k].pid, procs[k].usedGpuMemory) for k in range(count.value)) if r == 0 else ()
            gpus.append(Gpu(i, name, uuid, mem.total, mem.used, found))
        return Report(driver, cuda.value, tuple(gpus))
    finally:
        nvml.nvmlShutdown()


def render(rep: Report) -> str:
    """The report as nvidia-smi lays it out (memory in MiB; NVML's answers only)."""
    cuda = f"{rep.cuda // 1000}.{rep.cuda % 1000 // 10}"

    def gpu_row(idx: str, name: str, uuid: str, mem: str) -> str:
        return f"| {idx:>3}  {name:<30} | {uuid:<40} | {mem:>21} |"

    head = gpu_row("GPU", "Name", "UUID", "Memory-Usage")
    w = len(head)
    line, double = "+" + "-" * (w - 2) + "+", "+" + "=" * (w - 2) + "+"

    def row(text: str) -> str:
        return f"| {text}".ljust(w - 1)[: w - 1] + "|"

    out = [line, row(f"ORION-SMI (orion_virt)   Driver Version: {rep.driver}   CUDA Version: {cuda}"), line,
           head, double]
    for g in rep.gpus:
        out += [gpu_row(str(g.index), g.name[:30], g.uuid[:40], f"{g.used >> 20}MiB / {g.total >> 20}MiB"), line]
    out += ["", line, row("Processes:"), row(f"{'GPU':>4} {'PID':>10}  Type  {'Process name':<40} {'GPU Memory':>12}"),
            double]
    rows = [(g.index, pid, used) for g in rep.gpus for pid, used in g.processes]
    if not rows:
        out.append(row("No running processes found"))
    for idx, pid, used in rows:
        out.append(row(f"{idx:>4} {pid:>10}     C  {_cmd(pid)[:40]:<40} {str(used >> 20) + 'MiB':>12}"))
    out.append(line)
    return "\n".join(out)


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace") or "?"
    except OSError:
        return "?"


USAGE = "usage: orion-smi [--lib PATH]   (the application's vGPUs, as NVML reports them)\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE + (__doc__ or ""))
        return 0
    if args[:1] == ["--version"]:
        from .. import __version__

        sys.stdout.write(f"orion-smi (orion_virt) {__version__}\n")
        return 0
    lib = os.environ.get("ORION_NVML_LIB", "libnvidia-ml.so.1")
    if len(args) == 2 and args[0] == "--lib":
        lib = args[1]
    elif args:
        sys.stderr.write(USAGE)
        return 2
    try:
        rep = query(lib)
    except SmiError as e:
        sys.stderr.write(f"orion-smi: {e}\n")
        return 2
    sys.stdout.write(render(rep) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
