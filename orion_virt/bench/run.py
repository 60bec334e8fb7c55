"""One benchmark run: oriond, client agents and floors, measured side by side, repeated.

Every comparison with a floor is made side by side: latencies in alternating batches of the floor
and the remoted call, copies and rounds with their order alternating; each reported value is the
median over rounds, so that load from other processes on a small machine moves both sides alike.
The client side (this process, the agents) runs on one CPU and the server side (oriond, the
floors' peers) on another, so that a round trip always crosses cores as it does in the floors.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import floors
from .harness import PKG_PARENT, AgentProcess, Oriond, cpu_seconds, has_socket, script
from .stats import gbps, latency_summary, median
from .targets import evaluate

KiB, MiB = 1 << 10, 1 << 20
FULL_SIZES = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB)
QUICK_SIZES = (4 * KiB, 64 * KiB, MiB, 64 * MiB)
TARGET_SIZE = 64 * MiB


@dataclass(frozen=True)
class Settings:
    transports: tuple[str, ...] = ("shm", "tcp")
    rounds: int = 5
    null_n: int = 20000
    """round trips per round over shm (and the shm floors)"""
    null_n_tcp: int = 3000
    batches: int = 10
    """floor and remoted batches alternate this many times per round"""
    pipelined_n: int = 100000
    pipelined_rounds: int = 3
    sizes: tuple[int, ...] = FULL_SIZES
    copy_rounds: int = 3
    copy_budget: int = 256 * MiB
    """bytes moved per measurement point (reps = budget / size, clamped)"""
    min_reps: int = 3
    max_reps: int = 200
    starts: int = 8
    programs: int = 3
    idle_s: float = 5.0
    idle_sessions: int = 8
    """sessions open (and idle) while oriond's idle CPU is measured"""
    wake_gaps: tuple[float, ...] = (0.1, 1.0, 10.0)
    """idle times after which the first call is timed (and the floors' first round trip)"""
    wake_samples: int = 3
    """first calls timed per idle time (one per 10 s and longer gap)"""
    settle_s: float = 1.2
    """quiet time before TCP latency and idle measurements (idle shm waiters reach their sleep)"""
    device_mib: int = 128
    pin: bool = True
    """client side (this process, agents) on one CPU, server side (oriond, floor peers) on another"""

    @classmethod
    def quick(cls, **kw: object) -> Settings:
        return dataclasses.replace(cls(
            rounds=3, null_n=5000, null_n_tcp=1000, pipelined_n=20000, pipelined_rounds=2,
            sizes=QUICK_SIZES, copy_rounds=2, copy_budget=64 * MiB, starts=4, programs=2, idle_s=2.0,
            wake_gaps=(0.1, 1.0), wake_samples=1,
        ), **kw)  # type: ignore[arg-type]

    @classmethod
    def smoke(cls, **kw: object) -> Settings:
        """Tiny counts: exercises every part in a few seconds (tests)."""
        return dataclasses.replace(cls(
            rounds=1, null_n=300, null_n_tcp=100, batches=2, pipelined_n=500, pipelined_rounds=1,
            sizes=(4 * KiB, 64 * KiB), copy_rounds=1, copy_budget=MiB, min_reps=2, max_reps=5,
            starts=1, programs=1, idle_s=0.3, settle_s=0.1, device_mib=16, idle_sessions=3,
            wake_gaps=(0.05,), wake_samples=1,
        ), **kw)  # type: ignore[arg-type]

    def reps(self, size: int) -> int:
        return max(self.min_reps, min(self.max_reps, self.copy_budget // size))


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "kernel": platform.release(), "system": platform.system(),
        "loadavg_start": list(os.getloadavg()),
    }


class Bench:
    def __init__(self, settings: Settings, workdir: Path, log: Log = _stderr) -> None:
        self.s = settings
        self.workdir = workdir
        self.log = log
        self.oriond = Oriond(workdir, settings.device_mib)
        self.agents: dict[str, AgentProcess] = {}
        self.ring_size = 0
        self.placement: tuple[set[int], set[int]] | None = None
        self._saved_affinity: set[int] | None = None

    # -- processes ------------------------------------------------------------------------------

    def _native_lib(self) -> Path:
        from .compare import native_client_dir

        lib = native_client_dir()
        if lib is None:
            raise RuntimeError("build the native client first (make native)")
        return lib

    def _agent(self, transport: str, tag: str = "") -> AgentProcess:
        name = f"{transport}{tag}"
        env = self.oriond.client_env(transport)
        lib = self._native_lib()
        env.update(ORION_BENCH_CLIENT_LIB=str(lib),
                   LD_LIBRARY_PATH=os.pathsep.join([str(lib), *filter(None, env.get("LD_LIBRARY_PATH", "")
                                                                       .split(os.pathsep))]))
        return AgentProcess(env, self.workdir / f"agent-{name}.log", name)

    def _pin(self) -> None:
        if not self.s.pin or not hasattr(os, "sched_setaffinity"):
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return
        self._saved_affinity = set(cpus)
        self.placement = ({cpus[0]}, {cpus[1]})
        os.sched_setaffinity(0, self.placement[0])  # agents and programs started from here inherit it
        floors.set_peer_cpus(self.placement[1])

    def _unpin(self) -> None:
        floors.set_peer_cpus(None)
        if self._saved_affinity:
            os.sched_setaffinity(0, self._saved_affinity)

    def start(self) -> None:
        self._pin()
        self.oriond.start(cpus=self.placement[1] if self.placement else None)
        from ..transport.shmdev import plan_layout

        self.ring_size = plan_layout(self.s.device_mib * MiB).ring_size
        for t in self.s.transports:
            a = self._agent(t)
            self.agents[t] = a
            got = a.call("init")
            if got["transport"] != "orion-c":
                raise RuntimeError(f"agent for {t} did not load the native client ({got['transport']!r})")

    def stop(self) -> None:
        for a in self.agents.values():
            a.quit()
        self.agents.clear()
        self.oriond.stop()
        self._unpin()

    # -- null calls -----------------------------------------------------------------------------

    def null_calls(self) -> dict:
        """Per round: the floor and the remoted call in alternating batches, so that both see
        the same machine state (on a small VM, a loopback round trip is ~7 µs while the other
        core is busy and ~70 µs when it has gone idle, and that flips within seconds)."""
        s = self.s
        out: dict = {}
        per: dict[str, list[dict]] = {t: [] for t in s.transports}
        spin: list[dict] = []
        same: list[dict] = []
        for r in range(s.rounds):
            self.log(f"null calls: round {r + 1}/{s.rounds}")
            if "shm" in s.transports:
                spin.append(floors.spin_pingpong(s.null_n))
                with floors.RingEcho(self.ring_size) as echo:
                    per["shm"].append(self._alternate(echo, self.agents["shm"], s.null_n, warmup=200))
            if "tcp" in s.transports:
                time.sleep(s.settle_s)  # idle shm waiters back in their sleep, as in a quiet system
                with floors.TcpEcho() as echo:
                    per["tcp"].append(self._alternate(echo, self.agents["tcp"], s.null_n_tcp, warmup=20))
                if self.placement:
                    same.append(self._tcp_same_core())
        for t, rounds in per.items():
            out[t] = {
                "floor_name": "RingStream ping-pong" if t == "shm" else "TCP loopback ping-pong",
                "floor": _median_summary([x["floor"] for x in rounds]),
                "remote": _median_summary([x["remote"] for x in rounds]),
                "ratio": median([x["ratio"] for x in rounds]),
                "ratio_rounds": [x["ratio"] for x in rounds],
            }
        if spin:
            out["shm"]["spin_floor"] = _median_summary(spin)
        if same:
            out["tcp_same_core"] = {
                "floor_name": "TCP loopback ping-pong, both ends on one core",
                "floor": _median_summary([x["floor"] for x in same]),
                "remote": _median_summary([x["remote"] for x in same]),
                "ratio": median([x["ratio"] for x in same]),
                "ratio_rounds": [x["ratio"] for x in same],
            }
        return out

    def _tcp_same_core(self) -> dict:
        """The TCP comparison again with both ends of each round trip on the client's core: the
        round trip is then a context switch (~7 µs) instead of a cross-core wake-up, so the
        Python work per call weighs several times more."""
        assert self.placement is not None
        client, server = self.placement
        workers = [p for p in self.oriond.process_tree()[1:] if has_socket(p)]
        for p in workers:
            os.sched_setaffinity(p, client)
        floors.set_peer_cpus(client)
        try:
            with floors.TcpEcho() as echo:
                return self._alternate(echo, self.agents["tcp"], self.s.null_n_tcp, warmup=20)
        finally:
            floors.set_peer_cpus(server)
            for p in workers:
                os.sched_setaffinity(p, server)

    def _alternate(self, echo: floors.RingEcho | floors.TcpEcho, agent: AgentProcess, n: int,
                   warmup: int) -> dict:
        k = max(1, n // self.s.batches)
        floor: list[int] = []
        remote: list[int] = []
        for b in range(self.s.batches):
            if b % 2 == 0:
                floor += echo.batch(k, warmup)
                remote += agent.call("null", n=k, warmup=warmup, raw=True)["samples"]
            else:
                remote += agent.call("null", n=k, warmup=warmup, raw=True)["samples"]
                floor += echo.batch(k, warmup)
        f, m = latency_summary(floor), latency_summary(remote)
        return {"floor": f, "remote": m, "ratio": m["median_us"] / f["median_us"]}

    # -- pipelined calls ------------------------------------------------------------------------

    def pipelined(self) -> dict:
        s = self.s
        got: dict[str, dict[str, list[dict]]] = {t: {"launch": [], "memset": []} for t in s.transports}
        for r in range(s.pipelined_rounds):
            self.log(f"pipelined calls: round {r + 1}/{s.pipelined_rounds}")
            for t in s.transports:
                for kind in ("launch", "memset"):
                    got[t][kind].append(self.agents[t].call("pipelined", n=s.pipelined_n, kind=kind))
        return {t: {kind: {"per_s": median([x["per_s"] for x in v]),
                           "issue_per_s": median([x["issue_per_s"] for x in v]), "n": s.pipelined_n}
                    for kind, v in kinds.items()}
                for t, kinds in got.items()}

    # -- copies ---------------------------------------------------------------------------------

    def copies(self) -> dict:
        s = self.s
        sizes = list(s.sizes)
        floor_of = {"shm": "ring", "tcp": "socket"}
        series = ["memcpy"] + [f"{name}_{d}" for t in s.transports for name in (t, floor_of[t])
                               for d in ("htod", "dtoh")]
        rates: dict[str, list[list[float]]] = {k: [[] for _ in sizes] for k in series}
        ratios: dict[str, list[list[float]]] = {f"{t}_{d}": [[] for _ in sizes]
                                                for t in s.transports for d in ("htod", "dtoh")}
        for i, size in enumerate(sizes):
            reps = s.reps(size)
            for r in range(s.copy_rounds):
                self.log(f"copies: {_size(size)} round {r + 1}/{s.copy_rounds} ({reps} reps)")
                rates["memcpy"][i].append(gbps(size, median(floors.memcpy(size, reps))))
                for t in s.transports:
                    for d in ("htod", "dtoh"):
                        fname, f_rate, m_rate = self._copy_pair(t, d, size, reps, floor_first=r % 2 == 0)
                        rates[f"{fname}_{d}"][i].append(f_rate)
                        rates[f"{t}_{d}"][i].append(m_rate)
                        ratios[f"{t}_{d}"][i].append(m_rate / f_rate)
        return {
            "sizes": sizes,
            "gbps": {k: [median(v) for v in per_size] for k, per_size in rates.items()},
            "ratio": {k: [median(v) for v in per_size] for k, per_size in ratios.items()},
        }

    def _copy_pair(self, t: str, d: str, size: int, reps: int, floor_first: bool) -> tuple[str, float, float]:
        """(floor name, floor GB/s, remoted GB/s) for one transport, direction and size."""
        def floor() -> list[float]:
            if t == "shm":
                return floors.ring_transfer(size, reps, d, self.ring_size)
            return floors.socket_transfer(size, reps, d)

        def remote() -> list[float]:
            return self.agents[t].call("copy", size=size, reps=reps, direction=d)["seconds"]

        if floor_first:
            fs, ms = floor(), remote()
        else:
            ms, fs = remote(), floor()
        return ("ring" if t == "shm" else "socket"), gbps(size, median(fs)), gbps(size, median(ms))

    # -- session start --------------------------------------------------------------------------

    def session_start(self) -> dict:
        s = self.s
        out: dict = {"cuinit_ms": {}, "program_s": {}}
        for t in s.transports:
            times = []
            for k in range(s.starts):
                # oriond notices a claimed shm channel at its next device scan (every 20 ms): a
                # random pause samples that phase instead of locking onto one
                time.sleep(random.uniform(0, 0.02))
                a = self._agent(t, f"-start{k}")
                try:
                    times.append(a.call("init")["cuinit_s"] * 1e3)
                finally:
                    a.quit()
            out["cuinit_ms"][t] = {"median": median(times), "samples": times}
        example = Path(PKG_PARENT) / "examples" / "deviceQuery.py"
        if not example.exists():
            out["program_s"]["skipped"] = f"{example} not found"
            return out
        run = script("orion-run", "orion_virt.cli.orion_run")
        for t in s.transports:
            times = []
            for _ in range(s.programs):
                t0 = time.perf_counter()
                env = self.oriond.client_env(t)
                env["ORION_NATIVE_LIB_DIR"] = str(self._native_lib())
                r = subprocess.run(run + [sys.executable, str(example)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
                times.append(time.perf_counter() - t0)
                if r.returncode != 0:
                    raise RuntimeError(f"deviceQuery over {t} failed: {r.stderr.decode(errors='replace')[-500:]}")
            out["program_s"][t] = {"median": median(times), "samples": times}
        times = []
        for _ in range(s.programs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            times.append(time.perf_counter() - t0)
        out["python_startup_s"] = median(times)
        return out

    # -- idle -----------------------------------------------------------------------------------

    def idle(self) -> dict:
        """oriond's and the clients' CPU while ``idle_sessions`` sessions sit idle."""
        s = self.s
        extra: list[AgentProcess] = []
        try:
            for i in range(max(0, s.idle_sessions - len(self.agents))):
                t = s.transports[i % len(s.transports)]
                a = self._agent(t, f"-idle{i}")
                extra.append(a)
                a.call("init")
            self.log(f"idle: {len(self.agents) + len(extra)} sessions, {s.settle_s:.1f} s to settle, "
                     f"then {s.idle_s:.1f} s measured")
            time.sleep(s.settle_s)
            pids = self.oriond.process_tree()
            roles = {self.oriond.pid: "oriond main"}
            for p in pids[1:]:
                roles[p] = "tcp worker" if has_socket(p) else "shm worker"
            watched = dict(roles)
            for a in [*self.agents.values(), *extra]:
                watched[a.pid] = f"client ({a.name.split('-')[0]})"
            before = {p: cpu_seconds(p) for p in watched}
            t0 = time.monotonic()
            time.sleep(s.idle_s)
            wall = time.monotonic() - t0
            after = {p: cpu_seconds(p) for p in watched}
        finally:
            for a in extra:
                a.quit()
        pct: dict[str, float] = {}
        for p, role in watched.items():
            if before[p] is None or after[p] is None:
                continue
            pct[role] = pct.get(role, 0.0) + (after[p] - before[p]) / wall * 100  # type: ignore[operator]
        server_total = sum(v for k, v in pct.items() if not k.startswith("client"))
        return {"window_s": wall, "sessions": len(self.agents) + len(extra), "percent_of_core": pct,
                "oriond_total_pct": server_total}

    def wakeups(self, warm: dict) -> dict:
        """The first call after each idle gap, over each transport, and the same first round trip
        of the transport's floor (whose waiters sleep as oriond's do): what waking up costs."""
        s = self.s
        out: dict = {"gaps_s": list(s.wake_gaps), "warm_us": {}, "remote_us": {}, "floor_us": {}}
        echoes: dict[str, floors.RingEcho | floors.TcpEcho] = {}
        try:
            for t in s.transports:
                echoes[t] = floors.RingEcho(self.ring_size, wakes=True) if t == "shm" else floors.TcpEcho()
                echoes[t].batch(1, warmup=5)
                out["warm_us"][t] = warm.get(t, {}).get("remote", {}).get("median_us")
                out["remote_us"][t], out["floor_us"][t] = [], []
            for gap in s.wake_gaps:
                n = 1 if gap >= 10 else s.wake_samples
                self.log(f"wake-ups: {n} x {len(s.transports) * 2} first calls after {gap:g} s idle")
                rem: dict[str, list[float]] = {t: [] for t in s.transports}
                flo: dict[str, list[float]] = {t: [] for t in s.transports}
                for _ in range(n):
                    for t in s.transports:
                        time.sleep(gap)
                        rem[t].append(self.agents[t].call("first_call")["us"])
                        time.sleep(gap)
                        flo[t].append(echoes[t].batch(1, warmup=0)[0] / 1e3)
                for t in s.transports:
                    out["remote_us"][t].append(median(rem[t]))
                    out["floor_us"][t].append(median(flo[t]))
        finally:
            for e in echoes.values():
                e.close()
        return out

    # -- all ------------------------------------------------------------------------------------

    def run(self) -> dict:
        res: dict = {"machine": machine(), "settings": dataclasses.asdict(self.s)}
        t0 = time.monotonic()
        try:
            self.start()
            res["placement"] = ({"client_cpus": sorted(self.placement[0]), "server_cpus": sorted(self.placement[1])}
                                if self.placement else None)
            res["null"] = self.null_calls()
            res["pipelined"] = self.pipelined()
            res["copy"] = self.copies()
            res["idle"] = self.idle()
            res["wake"] = self.wakeups(res["null"])
            self.log("session start and whole-program runs")
            res["session"] = self.session_start()
        finally:
            self.stop()
        res["machine"]["loadavg_end"] = list(os.getloadavg())
        res["elapsed_s"] = time.monotonic() - t0
        copy = res["copy"]
        if TARGET_SIZE in copy["sizes"]:
            i = copy["sizes"].index(TARGET_SIZE)
            res["targets_input"] = {f"htod_{t}_ratio": copy["ratio"][f"{t}_htod"][i] for t in self.s.transports}
        res["targets"] = evaluate(res)
        return res


def _median_summary(rounds: list[dict]) -> dict:
    keys = [k for k in rounds[0] if k != "n"]
    out = {k: median([r[k] for r in rounds]) for k in keys}
    out["n"] = sum(r["n"] for r in rounds)
    out["rounds"] = len(rounds)
    return out


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= MiB else f"{n >> 10} KiB"


def run_bench(settings: Settings, log: Log = _stderr, keep_dir: Path | None = None) -> dict:
    """Run the whole benchmark in a temporary directory (kept at ``keep_dir`` if given)."""
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        return Bench(settings, keep_dir, log).run()
    with tempfile.TemporaryDirectory(prefix="orion-bench-") as d:
        return Bench(settings, Path(d), log).run()
