"""A real oriond (sim backend) on a loopback port and a temporary shm directory, for tests.

Started as a subprocess and stopped by pid; ``Oriond.run`` runs a program under orion-run
against it with the given transport.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orion_virt.procs import stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Oriond:
    tmp: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def shm(self) -> Path:
        return self.tmp / "shm"

    @property
    def logs(self) -> Path:
        return self.tmp / "log"

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    def start(self) -> "Oriond":
        for d in (self.shm, self.logs, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [str(BIN / "oriond"), "--backend", "sim", "--sim-memory", "8192", "--bind-addr", "127.0.0.1",
             "--listen-port", str(self.port), "--shm-path-base", str(self.shm), "--log-dir", str(self.logs),
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oriond exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("oriond did not start")

    def device(self, index: int = 1, size_mib: int = 16) -> Path:
        subprocess.run([str(BIN / "orion-shm"), "-i", str(index), "--size", str(size_mib), "--path-base",
                        str(self.shm)], check=True, capture_output=True)
        return self.shm / f"orionsock{index}"

    def env(self, tcp: bool = False, **extra: str) -> dict[str, str]:
        env = dict(os.environ, HOME=str(self.home), ORION_SERVER=f"127.0.0.1:{self.port}",
                   ORION_SHM_PATH_BASE=str(self.shm), ORION_CLIENT_CONF_ETC=str(self.tmp / "none.conf"),
                   ORION_VGPU="2", ORION_GMEM="4096")
        env.pop("ORION_CONTROLLER", None)
        if tcp:
            env["ORION_ENABLE_NET"] = "1"
        env.update(extra)
        return env

    def run(self, *argv: str, tcp: bool = False, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "orion-run"), *argv], env=self.env(tcp, **extra),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *argv: str, tcp: bool = False, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "orion-run"), *argv], env=self.env(tcp, **extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def server_log(self) -> str:
        p = self.logs / "server.log"
        return p.read_text() if p.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.server_log()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} never appeared in server.log:\n{self.server_log()[-3000:]}")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
