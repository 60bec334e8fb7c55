"""Stopping a child process this program started: by pid, politely first."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def die_with_parent(parent: int) -> None:
    """In a forked child: be killed (SIGKILL) when ``parent`` exits, for whatever reason, kill -9
    included (Linux PR_SET_PDEATHSIG). A parent already gone before the request took effect
    ends the child at once. Elsewhere (no prctl): nothing."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig, sigkill = 1, 9
        libc.prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
