"""Real Linux namespaces standing in for containers (Docker's engine does not run in CI).

A "container" here is ``unshare --mount --ipc --pid --fork --mount-proc`` (plus ``--net``, or a
named network namespace joined to the host by a veth pair) whose mount namespace gets a private
tmpfs ``/dev/shm``, private tmpfs over directories it must not see (the host's shm_path_base), and
single host files bind-mounted at chosen paths — what ``docker run --ipc=private
-v /dev/shm/orionsockN:/dev/shm/orionsockN:rw`` does. Everything a helper creates (processes,
network namespaces, links) is recorded and removed by ``cleanup``; processes are stopped by pid.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from orion_virt.launch import OriondProcess

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def skip_reason(need_ip: bool = False) -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create namespaces (unshare)"
    if shutil.which("unshare") is None:
        return "util-linux 'unshare' not found"
    if need_ip and shutil.which("ip") is None:
        return "iproute2 'ip' not found"
    probe = subprocess.run(["unshare", "--mount", "--ipc", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare cannot create namespaces here: {probe.stderr.strip()}"
    return None


def stop_pid(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps. Only for processes we started."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        except ProcessLookupError:
            pass


@dataclass
class Mount:
    """Bind host file ``src`` at ``dest`` inside the container."""

    src: str
    dest: str


def container_argv(argv: Sequence[str], *, binds: Sequence[Mount] = (), hide: Sequence[str] = (),
                   stage_dir: Path, net: bool = False, netns: str | None = None) -> list[str]:
    """The command line that runs ``argv`` in a fresh container-like set of namespaces.

    ``hide``: directories covered by an empty tmpfs (as a container does not see the host's
    tree). ``/dev/shm`` is always private. Bind sources are first bound onto stage files so
    they stay reachable after the directories holding them are hidden.
    """
    lines = ["set -eu"]
    for i, b in enumerate(binds):
        stage = stage_dir / f"stage{i}"
        stage.touch()
        lines.append(f"mount --bind {shlex.quote(b.src)} {shlex.quote(str(stage))}")
    lines.append("mount -t tmpfs -o mode=1777,size=16m orion-ct-shm /dev/shm")
    for d in hide:
        lines.append(f"mount -t tmpfs -o mode=755,size=16m orion-ct-hide {shlex.quote(d)}")
    for i, b in enumerate(binds):
        stage = stage_dir / f"stage{i}"
        dest = shlex.quote(b.dest)
        lines.append(f"mkdir -p \"$(dirname {dest})\" && touch {dest}")
        lines.append(f"mount --bind {shlex.quote(str(stage))} {dest}")
    lines.append('exec "$@"')
    cmd = ["unshare", "--mount", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc",
           "--propagation", "private"]
    if net:
        cmd.append("--net")
    cmd += ["sh", "-c", "\n".join(lines), "orion-container", *argv]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return cmd


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Lab:
    """Owns everything a test creates: temp dirs, processes, network namespaces, links."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orion-ns-")))
    procs: list[subprocess.Popen] = field(default_factory=list)
    netnses: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    _n: int = 0

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _stage(self) -> Path:
        self._n += 1
        return self.path(f"stage-{self._n}")

    def start(self, argv: Sequence[str], env: Mapping[str, str], *, binds: Sequence[Mount] = (),
              hide: Sequence[str] = (), net: bool = False, netns: str | None = None,
              log_name: str | None = None) -> tuple[subprocess.Popen, Path]:
        """Start a container in the background; its stdout+stderr go to a file (returned)."""
        cmd = container_argv(argv, binds=binds, hide=hide, stage_dir=self._stage(), net=net, netns=netns)
        log = self.tmp / (log_name or f"ct-{self._n}.log")
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=ROOT)
        self.procs.append(proc)
        return proc, log

    def run(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0,
            binds: Sequence[Mount] = (), hide: Sequence[str] = (), net: bool = False,
            netns: str | None = None) -> Result:
        """Run a container to completion (killed after ``timeout`` seconds: never hangs)."""
        cmd = container_argv(argv, binds=binds, hide=hide, stage_dir=self._stage(), net=net, netns=netns)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
            err += f"\n[nsutil] killed after {timeout} s (hang)"
        return Result(proc.returncode, out, err, time.monotonic() - t0)

    # -- network ---------------------------------------------------------------------------

    def ip(self, *args: str) -> None:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")

    def bridge(self, cidr: str) -> str:
        """A host bridge (like docker0) holding ``cidr`` (e.g. 10.213.0.1/24); deleted at cleanup."""
        name = f"orbr{uuid.uuid4().hex[:6]}"
        self.ip("link", "add", name, "type", "bridge")
        self.links.append(name)
        self.ip("addr", "add", cidr, "dev", name)
        self.ip("link", "set", name, "up")
        return name

    def netns_on_bridge(self, bridge: str, cidr: str, gateway: str) -> str:
        """A named network namespace with a veth into ``bridge``: address ``cidr``, default route
        via ``gateway``. Deleting the namespace deletes the veth pair."""
        tag = uuid.uuid4().hex[:6]
        ns, host_if, ct_if = f"orion-ct-{tag}", f"orv{tag}", f"orc{tag}"
        self.ip("netns", "add", ns)
        self.netnses.append(ns)
        self.ip("link", "add", host_if, "type", "veth", "peer", "name", ct_if)
        self.links.append(host_if)
        self.ip("link", "set", ct_if, "netns", ns)
        self.ip("link", "set", host_if, "master", bridge)
        self.ip("link", "set", host_if, "up")
        self.ip("-n", ns, "link", "set", "lo", "up")
        self.ip("-n", ns, "link", "set", ct_if, "name", "eth0")
        self.ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
        self.ip("-n", ns, "link", "set", "eth0", "up")
        self.ip("-n", ns, "route", "add", "default", "via", gateway)
        return ns

    def cleanup(self) -> None:
        # newest first: containers before the oriond they use. SIGTERM lets oriond end its
        # session workers; unshare --kill-child takes a container's pid namespace with it.
        for proc in reversed(self.procs):
            stop_pid(proc, grace=3.0)
        for ns in self.netnses:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Oriond:
    """An oriond (sim backend) run by a test; stopped by pid."""

    proc: subprocess.Popen
    addr: str
    shm: Path
    log_dir: Path

    @property
    def server_log(self) -> str:
        p = self.log_dir / "server.log"
        return p.read_text() if p.exists() else ""


def start_oriond(lab: Lab, *, shm: Path, bind: str = "127.0.0.1", port: int | None = None,
                 name: str = "oriond") -> Oriond:
    logs = lab.path(f"{name}-log")
    launcher = OriondProcess(logs, backend="sim", bind_addr=bind, port=port, shm_path_base=shm,
                             config=lab.tmp / "no-server.conf", output=lab.tmp / f"{name}.stderr",
                             extra=["--sim-gpus", "1", "--sim-memory", "16384", "--enable-shm"],
                             env={**os.environ, "HOME": str(lab.path("home"))})
    (lab.tmp / "no-server.conf").touch()
    launcher.start(timeout=15)
    proc = launcher.proc
    assert proc is not None
    lab.procs.append(proc)
    port = launcher.port
    return Oriond(proc, f"{bind}:{port}", shm, logs)


def orion_shm(shm: Path, index: int, size_mib: int = 8) -> Path:
    subprocess.run([str(VENV_BIN / "orion-shm"), "-i", str(index), "--size", str(size_mib),
                    "--path-base", str(shm), "--mode", "0666"],
                   check=True, capture_output=True, timeout=30)
    return shm / f"orionsock{index}"


def client_env(lab: Lab, **extra: str) -> dict[str, str]:
    """The environment of a client in a container: no config files, logs under the lab's HOME."""
    home = lab.path(f"home-{uuid.uuid4().hex[:6]}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "ORION_CLIENT_CONF_ETC": str(lab.tmp / "no-client.conf"), "ORION_VGPU": "1",
           "ORION_GMEM": "1024", "ORION_CONNECT_TIMEOUT": "3"}
    env.update(extra)
    return env


def client_log(env: Mapping[str, str]) -> str:
    """Every client log written under the container's HOME, concatenated."""
    d = Path(env["HOME"]) / ".orion" / "log"
    return "".join(p.read_text() for p in sorted(d.glob("client-*.log"))) if d.is_dir() else ""


def orion_run(*argv: str) -> list[str]:
    return [str(VENV_BIN / "orion-run"), str(VENV_BIN / "python"), *argv]


def overlay_chroot_argv(lab: Lab, steps: Sequence[str], *, extra_lower: Path | None = None,
                        writable: bool = False, net: bool = False) -> list[str]:
    """Run shell ``steps`` in a mount namespace whose root is an overlay of the host's ``/``:
    with ``extra_lower`` (an install-client --root tree) on top, read-only; or ``writable`` with
    a tmpfs upper layer, so that writes to /usr, /etc... stay in the namespace. Each step runs
    via ``chroot MERGED /bin/sh -c STEP``; ``$UPPER`` names the upper layer between steps (list
    it to see what a step left behind). The lab directory is visible at the same path inside.
    """
    t = lab.path(f"ovl-{uuid.uuid4().hex[:6]}")
    q = shlex.quote
    lines = ["set -eu", f"T={q(str(t))}", 'mount -t tmpfs -o size=256m orion-ovl "$T"',
             'mkdir -p "$T/M" "$T/U" "$T/W" "$T/L"', 'UPPER="$T/U"']
    if extra_lower is not None:
        lines.append(f'cp -a {q(str(extra_lower))}/. "$T/L/"')  # a lower layer may not nest in /
        lower = '"$T/L":/'
    else:
        lower = "/"
    if writable:
        lines.append(f'mount -t overlay overlay -o lowerdir={lower},upperdir="$T/U",workdir="$T/W" "$T/M"')
    else:
        if extra_lower is None:
            raise ValueError("a read-only overlay needs extra_lower")
        lines.append(f'mount -t overlay overlay -o lowerdir={lower} "$T/M"')
    lines += ['mount --rbind /dev "$T/M/dev"', 'mount --rbind /proc "$T/M/proc"',
              'mount --rbind /sys "$T/M/sys"',
              f'mount --bind {q(str(lab.tmp))} "$T/M"{q(str(lab.tmp))}']
    for step in steps:
        if step.startswith("@host "):
            lines.append(step[6:])
        else:
            lines.append(f'chroot "$T/M" /bin/sh -c {q(step)}')
    cmd = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child"]
    if net:
        cmd.append("--net")
    return [*cmd, "sh", "-c", "\n".join(lines)]
