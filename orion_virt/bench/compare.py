"""``orion-bench --native``: the remoted path against the same program on the real driver.

On a GPU host: oriond runs the ``cuda`` backend, and the same client operations run side by side
in one run — natively (cuda-python's own ``cuda.bindings.driver``, no orion_virt) and remoted
over shared memory and over TCP by the native client (``c-shm``, ``c-tcp``: the same
cuda-bindings program over ``libcuda.so.1`` from ``make native``; the retired Python client's
``shm`` and ``tcp`` columns are gone): null-call round trip, pipelined launches, HtoD/DtoH
throughput against size, and a compute-bound program (a loop of matrix products) whose
remoted/native time ratio is the cost users feel. Without a GPU it runs on ``sim`` (no native
column): useful only to check the plumbing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import AgentProcess, Oriond
from .stats import latency_summary


@dataclass(frozen=True)
class CompareSettings:
    backend: str = "cuda"
    null_calls: int = 3000
    launches: int = 20000
    sizes: tuple[int, ...] = tuple(4 << (2 * i) for i in range(5, 15))  # 4 KiB .. 256 MiB
    copy_reps: int = 5
    pinned_sizes: tuple[int, ...] = (1 << 20, 16 << 20, 256 << 20, 1 << 30)
    matmul_n: int = 1024
    matmul_iters: int = 40

    @classmethod
    def quick(cls, backend: str) -> CompareSettings:
        return cls(backend, 500, 2000, (4096, 1 << 20, 16 << 20), 2, (1 << 20, 16 << 20), 128, 4)


def native_client_dir() -> Path | None:
    """Where the native client's libcuda.so.1 is, as orion-run finds it."""
    from ..client.run import native_lib_dir

    return native_lib_dir(os.environ)


def _modes(backend: str) -> list[str]:
    """NVIDIA's driver (cuda backend only), then the native client over shm and over TCP."""
    if native_client_dir() is None:
        raise RuntimeError("build the native client first (make native)")
    return (["native"] if backend == "cuda" else []) + ["c-shm", "c-tcp"]


def _measure(agent: AgentProcess, s: CompareSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"init": agent.call("init")}
    out["null"] = latency_summary(agent.call("null", n=s.null_calls, raw=True)["samples"])
    out["launch"] = agent.call("pipelined", n=s.launches, kind="launch")
    out["copy"] = {}
    for direction in ("htod", "dtoh"):
        rows = []
        for size in s.sizes:
            secs = agent.call("copy", size=size, reps=s.copy_reps, direction=direction)["seconds"]
            best = sorted(secs)[len(secs) // 2]
            rows.append({"size": size, "gbps": size / best / 1e9})
        out["copy"][direction] = rows
    for direction in ("htod", "dtoh"):
        rows = []
        for size in s.pinned_sizes:
            secs = agent.call("copy", size=size, reps=s.copy_reps, direction=direction, pinned=True)["seconds"]
            rows.append({"size": size, "gbps": size / sorted(secs)[len(secs) // 2] / 1e9})
        out["copy"][f"{direction}-pinned"] = rows
    out["matmul"] = agent.call("matmul", n=s.matmul_n, iters=s.matmul_iters)
    return out


def run_compare(s: CompareSettings, keep_dir: Path | None = None) -> dict[str, Any]:
    """Measure every mode; raises RuntimeError when oriond or an agent fails."""
    work = Path(keep_dir or tempfile.mkdtemp(prefix="orion-bench-native-"))
    work.mkdir(parents=True, exist_ok=True)
    shm_dir = Path(tempfile.mkdtemp(prefix="orion-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    server = Oriond(work, device_mib=512 if s.backend == "cuda" else 128, backend=s.backend, shm_dir=shm_dir)
    results: dict[str, Any] = {"backend": s.backend, "modes": {}}
    try:
        server.start(timeout=120)
        for mode in _modes(s.backend):
            env = server.client_env("tcp" if mode.endswith("tcp") else "shm")
            if mode.startswith("c-"):
                env["ORION_BENCH_CLIENT_LIB"] = str(native_client_dir())
                env["LD_LIBRARY_PATH"] = os.pathsep.join(
                    [str(native_client_dir()), *filter(None, env.get("LD_LIBRARY_PATH", "").split(os.pathsep))])
            agent = AgentProcess(env, work / f"agent-{mode}.log", mode)
            try:
                results["modes"][mode] = _measure(agent, s)
            finally:
                agent.quit()
    finally:
        server.stop()
        shutil.rmtree(shm_dir, ignore_errors=True)
        if keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return results


def text_compare(res: dict[str, Any]) -> str:
    modes = list(res["modes"])
    m = res["modes"]
    lines = [f"orion-bench --native (oriond backend {res['backend']}); modes: {', '.join(modes)}", ""]

    def row(label: str, vals: list[str]) -> str:
        return f"  {label:<34}" + "".join(f"{v:>14}" for v in vals)

    lines.append(row("", modes))
    lines.append(row("transport", [m[k]["init"]["transport"] for k in modes]))
    lines.append(row("cuInit (ms)", [f"{m[k]['init']['cuinit_s'] * 1e3:.1f}" for k in modes]))
    lines.append(row("null call median (us)", [f"{m[k]['null']['median_us']:.2f}" for k in modes]))
    lines.append(row("null call p99 (us)", [f"{m[k]['null']['p99_us']:.2f}" for k in modes]))
    lines.append(row("pipelined launches (k/s)", [f"{m[k]['launch']['per_s'] / 1e3:.0f}" for k in modes]))
    for direction in ("htod", "dtoh"):
        for i, r in enumerate(m[modes[0]]["copy"][direction]):
            size = r["size"]
            amount = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
            label = f"{direction.upper()} {amount}"
            lines.append(row(label + " (GB/s)", [f"{m[k]['copy'][direction][i]['gbps']:.2f}" for k in modes]))
    pm = [k for k in modes if "htod-pinned" in m[k]["copy"]]
    for direction in ("htod-pinned", "dtoh-pinned"):
        for i, r in enumerate(m[pm[0]]["copy"][direction] if pm else []):
            size = r["size"]
            label = f"{direction.split('-')[0].upper()} {size >> 20} MiB page-locked (GB/s)"
            lines.append(row(label, [f"{m[k]['copy'][direction][i]['gbps']:.2f}" if k in pm else "-" for k in modes]))
            if "native" in pm:
                nat = m["native"]["copy"][direction][i]["gbps"]
                lines.append(row("  / native page-locked", [f"{m[k]['copy'][direction][i]['gbps'] / nat:.2f}x"
                                                            if k in pm else "-" for k in modes]))
    mm = {k: m[k]["matmul"] for k in modes}
    first = mm[modes[0]]
    lines.append(row(f"matmul {first['n']}^2 x{first['iters']} (s)", [f"{mm[k]['seconds']:.3f}" for k in modes]))
    lines.append(row("matmul GFLOP/s", [f"{mm[k]['gflops']:.0f}" for k in modes]))
    lines.append(row("matmul result correct", [str(mm[k]["correct"]) for k in modes]))
    if "native" in m:
        base = mm["native"]["seconds"]
        lines.append(row("matmul time / native", [f"{mm[k]['seconds'] / base:.3f}x" for k in modes]))
        nb = m["native"]["null"]["median_us"]
        lines.append(row("null call / native", [f"{m[k]['null']['median_us'] / nb:.1f}x" for k in modes]))
    return "\n".join(lines)


def plot_compare(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["modes"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, direction in zip(axes[:2], ("htod", "dtoh")):
        for mode, r in m.items():
            rows = r["copy"][direction]
            ax.plot([x["size"] for x in rows], [x["gbps"] for x in rows], marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes")
        ax.set_ylabel("GB/s")
        ax.set_title(f"{direction.upper()} throughput")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[2]
    names = list(m)
    ax.bar(names, [m[k]["null"]["median_us"] for k in names], color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("us (log)")
    ax.set_title("null call (cuCtxSynchronize) median")
    fig.suptitle(f"orion-bench --native: backend {res['backend']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
