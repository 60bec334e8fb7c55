"""A real oriond (sim backend) on a loopback port and a temporary shm directory, for tests.

Started and stopped by pid with ``orion_virt.launch``; ``Oriond.run`` runs a program under orion-run
against it with the given transport.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orion_virt.launch import OriondProcess, free_port

__all__ = ["BIN", "ROOT", "Oriond", "free_port"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Oriond:
    tmp: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    extra: list[str] = field(default_factory=list)
    launcher: OriondProcess | None = None

    @property
    def shm(self) -> Path:
        return self.tmp / "shm"

    @property
    def logs(self) -> Path:
        return self.tmp / "log"

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    def start(self) -> Oriond:
        for d in (self.shm, self.logs, self.home):
            d.mkdir(parents=True, exist_ok=True)
        # four sim GPUs of 8 GiB: direct mode accounts grants, and tests run several sessions
        # of ORION_VGPU=2 ORION_GMEM=4096 at once
        self.launcher = OriondProcess(self.logs, backend="sim", port=self.port or None, shm_path_base=self.shm,
                                      extra=["--sim-memory", "8192", "--sim-gpus", "4", *self.extra])
        self.port = self.launcher.port
        self.launcher.start(timeout=20)
        self.proc = self.launcher.proc
        return self

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
        return self.launcher.server_log() if self.launcher else ""

    def wait_log(self, needle: str, timeout: float = 15) -> str:
        assert self.launcher is not None
        return self.launcher.wait_log(needle, timeout)

    def stop(self) -> None:
        if self.launcher:
            self.launcher.stop()
