"""``make demo``: the whole path on one machine, no GPU and no external services.

Starts oriond (sim backend) on a temporary shared-memory device and a loopback port, runs the
deviceQuery-like and vectorAdd-like examples through orion-run with ORION_VGPU=2 ORION_GMEM=4096
once over shared memory and once over TCP, prints their output, and stops what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"oriond did not start listening on port {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def main() -> int:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orion-demo-")))
        shm, logs, home = tmp / "shm", tmp / "log", tmp / "home"
        for d in (shm, logs, home):
            d.mkdir()
        port = free_port()
        banner("orion-shm -i 1 (a device for the 'container')")
        subprocess.run([BIN / "orion-shm", "-i", "1", "--size", "64", "--path-base", str(shm)], check=True)
        banner(f"oriond --backend sim on 127.0.0.1:{port}")
        server = subprocess.Popen([
            BIN / "oriond", "--backend", "sim", "--sim-gpus", "1", "--sim-memory", "16384",
            "--bind-addr", "127.0.0.1", "--listen-port", str(port), "--shm-path-base", str(shm),
            "--log-dir", str(logs),
        ])
        stack.callback(stop, server)
        wait_port(port)
        env = dict(os.environ, ORION_VGPU="2", ORION_GMEM="4096", HOME=str(home),
                   ORION_SERVER=f"127.0.0.1:{port}", ORION_SHM_PATH_BASE=str(shm),
                   ORION_CLIENT_CONF_ETC=str(tmp / "no-client.conf"))
        failed = 0
        for transport, extra in (("shared memory", {}), ("TCP", {"ORION_ENABLE_NET": "1"})):
            for prog in ("deviceQuery.py", "vectorAdd.py"):
                banner(f"ORION_VGPU=2 ORION_GMEM=4096 orion-run python3 examples/{prog}   [{transport}]")
                r = subprocess.run([BIN / "orion-run", sys.executable, str(ROOT / "examples" / prog)],
                                   env={**env, **extra}, timeout=120)
                failed |= r.returncode != 0
            used = sorted((home / ".orion" / "log").glob("client-*.log"))[-1].read_text()
            line = next((ln for ln in used.splitlines() if "transport:" in ln), "transport: ?")
            print(f"--> client log: {line.split('transport:', 1)[1].strip()}")
        banner("oriond's log (tail)")
        print("\n".join((logs / "server.log").read_text().splitlines()[-6:]))
        banner("demo " + ("FAILED" if failed else "finished: every program passed"))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
