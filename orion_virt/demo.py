"""``make demo``: the whole path on one machine, no GPU and no external services.

Starts orion-controller (embedded SQLite store in a temporary directory, a loopback port) and
oriond (sim backend, token mode: it registers its GPU with the controller and accepts only
controller-issued allocation tokens) on a temporary shared-memory device and a loopback port,
runs the deviceQuery-like and vectorAdd-like examples through orion-run with ORION_VGPU=2
ORION_GMEM=4096 once over shared memory and once over TCP (each run allocates its vGPUs from the
controller at cuInit and releases them at exit), prints their output, shows
``orion-check runtime server`` and checks the pool is whole again, and stops what it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from .launch import OriondProcess, free_port, wait_port
from .procs import stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_registered(addr: str, timeout: float = 15.0) -> int:
    """The pool's vGPU count once oriond has registered with the controller at ``addr``."""
    from .controller import client as ctl
    from .errors import ControllerError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            total = ctl.summary(addr, timeout=1).total_vgpus
            if total:
                return total
        except ControllerError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"oriond did not register with the controller at {addr}")


SERVER_CONF = """[server]
    listen_port = {port}
    bind_addr = 127.0.0.1
    vgpu_count = 4
[server-shm]
    shm_path_base = {shm}
[controller]
    controller_addr = {controller}
    token_key_file = {key}
    api_key_file = {tmp}/controller.key
    token_state_dir = {tmp}/tokens
"""


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def main() -> int:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orion-demo-")))
        shm, logs, home = tmp / "shm", tmp / "log", tmp / "home"
        for d in (shm, logs, home):
            d.mkdir()
        port, ctl_port = free_port(), free_port()
        controller_addr = f"127.0.0.1:{ctl_port}"
        key = tmp / "token.key"
        banner(f"orion-controller start on {controller_addr} (SQLite store in the temp dir)")
        controller = subprocess.Popen([
            BIN / "orion-controller", "start", "-i", "127.0.0.1", "-p", str(ctl_port),
            "--kv", f"sqlite://{tmp}/controller.db", "--token-key", str(key),
            "--log", str(tmp / "controller.log"), "--vgpu", "4", "--lease", "30",
            "--api-key", str(tmp / "controller.key"), "--client-key", str(tmp / "client.key"),
            "--portal-passwd", str(tmp / "portal.passwd"),
        ], env=dict(os.environ, ORION_PORTAL_PASSWORD=os.environ.get("ORION_PORTAL_PASSWORD", "demo")))
        stack.callback(stop_process, controller)
        wait_port(ctl_port, what="orion-controller", proc=controller)
        print(f"listening; token key {key} and API key {tmp / 'controller.key'} (shared with oriond), "
              f"client key {tmp / 'client.key'} (for applications); portal login admin")
        banner("orion-shm -i 1 (a device for the 'container')")
        subprocess.run([BIN / "orion-shm", "-i", "1", "--size", "64", "--path-base", str(shm)], check=True)
        conf = tmp / "server.conf"
        conf.write_text(SERVER_CONF.format(port=port, shm=shm, controller=controller_addr,
                                           key=key, tmp=tmp))
        banner(f"oriond --backend sim on 127.0.0.1:{port}, controller_addr = {controller_addr}")
        server = OriondProcess(logs, backend="sim", config=conf, port=port,
                               extra=["--sim-gpus", "1", "--sim-memory", "16384"])
        stack.callback(server.stop)
        server.start()
        total = wait_registered(controller_addr)
        print(f"oriond registered its GPU with the controller: {total} vGPUs in the pool")
        env = dict(os.environ, ORION_VGPU="2", ORION_GMEM="4096", HOME=str(home),
                   ORION_CONTROLLER=controller_addr, ORION_SHM_PATH_BASE=str(shm),
                   ORION_CLIENT_CONF_ETC=str(tmp / "no-client.conf"),
                   ORION_CLIENT_KEY_FILE=str(tmp / "client.key"))
        env.pop("ORION_SERVER", None)
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
        banner("the controller's log (tail)")
        print("\n".join((tmp / "controller.log").read_text().splitlines()[-4:]))
        banner(f"orion-check runtime server --config {conf}")
        check_env = {k: v for k, v in os.environ.items() if not k.startswith("ORION_")}
        subprocess.run([BIN / "orion-check", "runtime", "server", "--config", str(conf)],
                       env=check_env, timeout=120)
        from .controller import client as ctl

        s = ctl.summary(controller_addr)
        back = s.free_vgpus == s.total_vgpus == total and s.allocations == 0
        print(f"--> pool: {s.free_vgpus} of {s.total_vgpus} vGPUs free, {s.allocations} "
              f"allocation(s) held" + ("" if back else "  (NOT back to the start!)"))
        failed |= not back
        banner("demo " + ("FAILED" if failed else "finished: every program passed"))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
