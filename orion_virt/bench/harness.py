"""The processes a benchmark run starts: its own oriond and its client agents.

Everything lives in one temporary directory (shared-memory device, logs, client home); oriond
listens on a free loopback port and is stopped by its pid. Agents are ``orion_virt.bench.agent``
processes that talk JSON lines over pipes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orion_virt

from ..launch import OriondProcess, free_port, script
from ..transport.shmdev import format_device

__all__ = ["PKG_PARENT", "AgentProcess", "Oriond", "cpu_seconds", "free_port", "has_socket", "script"]

PKG_PARENT = str(Path(orion_virt.__file__).resolve().parent.parent)


def _python_path(env: dict[str, str]) -> str:
    parts = [PKG_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


class Oriond:
    """oriond on the sim backend, a shared-memory device and a loopback port, under ``workdir``."""

    def __init__(self, workdir: Path, device_mib: int = 128, backend: str = "sim",
                 shm_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.backend = backend
        self.shm = shm_dir or workdir / "shm"
        self.logs = workdir / "log"
        self.home = workdir / "home"
        for d in (self.shm, self.logs, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.device = self.shm / "orionsock0"
        self.device_mib = device_mib
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.launcher: OriondProcess | None = None

    def start(self, timeout: float = 20.0, cpus: set[int] | None = None) -> None:
        """Start oriond (on ``cpus`` if given: its session workers inherit them)."""
        format_device(self.device, self.device_mib << 20)
        self.launcher = OriondProcess(
            self.logs, backend=self.backend, shm_path_base=self.shm, output=self.workdir / "oriond.out",
            extra=[*(["--sim-gpus", "1", "--sim-memory", "16384"] if self.backend == "sim" else []), "--enable-shm"],
            env=dict(os.environ, PYTHONPATH=_python_path(dict(os.environ))))
        self.port = self.launcher.port
        self.launcher.start(timeout, cpus)
        self.proc, self.pid = self.launcher.proc, self.launcher.pid
        # Wait until oriond has taken up the device (its heartbeat starts ticking).
        time.sleep(0.6)

    def client_env(self, transport: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
        env.update(
            HOME=str(self.home), PYTHONPATH=_python_path(env),
            ORION_SERVER=f"127.0.0.1:{self.port}", ORION_SHM_PATH_BASE=str(self.shm),
            ORION_CLIENT_CONF_ETC=str(self.workdir / "no-client.conf"),
            ORION_LOG_DIR=str(self.workdir / "client-log"),
            ORION_VGPU="1", ORION_GMEM="4096", ORION_ENABLE_NET="1" if transport == "tcp" else "0",
        )
        return env

    def process_tree(self) -> list[int]:
        """oriond's pid and its session workers' pids."""
        pids = [self.pid]
        try:
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                kids = (task / "children").read_text().split()
                pids.extend(int(k) for k in kids)
        except OSError:
            for p in Path("/proc").iterdir():
                if p.name.isdigit():
                    try:
                        fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    if int(fields[1]) == self.pid:
                        pids.append(int(p.name))
        return pids

    def stop(self) -> None:
        if self.launcher is None:
            return
        self.launcher.stop()
        self.launcher = None
        self.proc = None


class AgentProcess:
    """One client process (``python -m orion_virt.bench.agent``) and its request/response pipe."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str) -> None:
        self.name = name
        log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "orion_virt.bench.agent"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        log.close()
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, op: str, timeout: float = 600.0, **kw: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"agent {self.name} gave no answer to {op!r}; its log ends:\n{tail}")
        res = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"agent {self.name}: {op}: {res['error']}")
        return res

    def quit(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by all threads of ``pid``: the scheduler's nanosecond count
    (/proc/<pid>/task/*/schedstat), else utime + stime from /proc/<pid>/stat (clock ticks).
    None when the process is gone."""
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def has_socket(pid: int) -> bool:
    """Whether ``pid`` holds an open socket (a TCP session worker does; a shm worker does not)."""
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False
