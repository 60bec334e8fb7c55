"""Starting oriond as a child process and waiting until it serves: one launcher for the demo,
the benchmarks and the tests.

:class:`OriondProcess` starts ``oriond`` with a backend, a config file, ports and a log
directory, waits (with a bound) until it has written its pid file — oriond does that once it
listens — and its TCP port answers, and stops it by pid (``procs.stop_process``). When oriond
exits or does not become ready in time, the error quotes the end of its output and of its
``server.log``, which say why. :func:`free_port` is the one "pick a free loopback port" helper.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .procs import stop_process

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_until(cond: Callable[[], object], timeout: float, what: str,
               failed: Callable[[], str | None] | None = None, interval: float = 0.05) -> object:
    """Poll ``cond`` until it is true (returns its value), ``failed`` returns a reason, or
    ``timeout`` seconds pass (RuntimeError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        why = failed() if failed is not None else None
        if why:
            raise RuntimeError(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:g} s")
        time.sleep(interval)


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0, what: str = "the service",
              proc: subprocess.Popen | None = None) -> None:
    """Until ``host:port`` accepts connections; fails early when ``proc`` exits."""
    def exited() -> str | None:
        if proc is not None and proc.poll() is not None:
            return f"exited with {proc.returncode}"
        return None

    wait_until(lambda: port_open(host, port), timeout, f"{what} on {host}:{port}", exited)


def script(name: str, module: str) -> list[str]:
    """The console script ``name`` next to this Python, else the same entry point via -c (the
    program name stays ``name``, as ``orion-check`` looks processes up by it)."""
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {name!r}; sys.exit(main())"]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return text[-chars:].rstrip() or "(empty)"


class OriondProcess:
    """One oriond child process.

    ``backend``: ``--backend`` (None: the config's). ``config``: ``--config`` (None: an empty
    file in ``log_dir``, so a host's /etc/orion/server.conf never leaks into a test).
    ``port``: ``--listen-port`` (None: a free one). ``shm_path_base``, ``bind_addr``: their
    flags when given. ``extra``: more oriond flags. ``env``: the child's environment (default
    this one's). Output (stdout and stderr) goes to ``output`` (default ``log_dir/oriond.out``).
    """

    def __init__(self, log_dir: Path, *, backend: str | None = "sim", config: Path | None = None,
                 port: int | None = None, bind_addr: str | None = "127.0.0.1",
                 shm_path_base: Path | str | None = None, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, output: Path | None = None,
                 start_new_session: bool = False, command: Sequence[str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.config = config
        self.bind_addr = bind_addr
        self.port = port or free_port(bind_addr or "127.0.0.1")
        self.shm_path_base = shm_path_base
        self.extra = list(extra)
        self.env = dict(env) if env is not None else None
        self.output = output or self.log_dir / "oriond.out"
        self.pid_file = self.log_dir / "oriond.pid"
        self.start_new_session = start_new_session
        self.command = list(command) if command is not None else script("oriond", "orion_virt.cli.oriond")
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"{self.bind_addr or '127.0.0.1'}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def server_log_path(self) -> Path:
        return self.log_dir / "server.log"

    def server_log(self) -> str:
        p = self.server_log_path
        return p.read_text(errors="replace") if p.exists() else ""

    def argv(self) -> list[str]:
        config = self.config
        if config is None:
            config = self.log_dir / "empty-server.conf"
            config.touch()
        argv = [*self.command, "--config", str(config), "--log-dir", str(self.log_dir),
                "--listen-port", str(self.port), "--pid-file", str(self.pid_file)]
        if self.backend:
            argv += ["--backend", self.backend]
        if self.bind_addr:
            argv += ["--bind-addr", self.bind_addr]
        if self.shm_path_base is not None:
            argv += ["--shm-path-base", str(self.shm_path_base)]
        return argv + self.extra

    def start(self, timeout: float = 30.0, cpus: set[int] | None = None) -> OriondProcess:
        """Start oriond (on ``cpus`` if given: its session workers inherit them) and wait until
        it serves. RuntimeError, quoting its output and server.log, when it does not."""
        self.pid_file.unlink(missing_ok=True)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=self.start_new_session)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        try:
            wait_until(self.ready, timeout, f"oriond on {self.addr}", self._exited)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.output}:\n{_tail(self.output)}\n"
                               f"--- {self.server_log_path}:\n{_tail(self.server_log_path)}") from None
        return self

    def _exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"oriond exited with {self.proc.returncode}"
        return None

    def ready(self) -> bool:
        """oriond wrote its pid file (it does so once it listens) and its port answers."""
        try:
            written = self.pid_file.read_text().strip() == str(self.pid)
        except OSError:
            return False
        return written and port_open(self.bind_addr or "127.0.0.1", self.port)

    def wait_log(self, needle: str, timeout: float = 15.0) -> str:
        """server.log once it contains ``needle``; AssertionError quoting its end otherwise."""
        try:
            wait_until(lambda: needle in self.server_log(), timeout, "server.log")
        except RuntimeError:
            raise AssertionError(f"{needle!r} never appeared in server.log:\n{self.server_log()[-3000:]}") from None
        return self.server_log()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid, SIGKILL after ``timeout``; the exit status (None if never started)."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def __enter__(self) -> OriondProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
