"""The report every ``orion-check`` check writes to (the seeds' output format) and the network
probes the checks share. Standard library only: the guest's client checks use it too.

A failed check calls ``report.error`` and the command exits non-zero (``report.exit_code``);
warnings never change the exit code.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import TextIO

COLUMN = 40


class Report:
    """Lines to ``out``: a text stream (default stdout) or a callable taking one line at a time.
    Counts errors and warnings."""

    def __init__(self, out: TextIO | Callable[[str], None] | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._sections = 0

    def line(self, text: str = "") -> None:
        if callable(self.out):
            self.out(text)
            return
        self.out.write(text + "\n")
        self.out.flush()

    def section(self, title: str) -> None:
        """``Title ...``, separated from the previous section by a blank line."""
        if self._sections:
            self.line()
        self._sections += 1
        self.line(f"{title} ...")

    def info(self, text: str) -> None:
        self.line(f"[Info] {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.line(f"[Warning] {text}")

    def error(self, text: str) -> None:
        self.errors.append(text)
        self.line(f"[Error] {text}")

    def flag(self, name: str, on: bool) -> None:
        """``Enable SHM                              [Yes]``"""
        self.line(f"{name:<{COLUMN}}[{'Yes' if on else 'No'}]")

    def value(self, name: str, value: object) -> None:
        """``Binding IP Address :                    33.31.0.1``"""
        self.line(f"{name + ' :':<{COLUMN}}{value}")

    def summary(self) -> None:
        self.line()
        if self.errors:
            self.line(f"{len(self.errors)} check(s) failed, {len(self.warnings)} warning(s).")
        elif self.warnings:
            self.line(f"All checks passed with {len(self.warnings)} warning(s).")
        else:
            self.line("All checks passed.")

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.strip().rpartition(":")
    return host.strip("[]"), int(port)


def probe_host(host: str) -> str:
    """Where to connect to reach a service bound to ``host`` (``0.0.0.0`` -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def tcp_reach(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to ``host:port`` succeeds, else why not."""
    try:
        socket.create_connection((probe_host(host), port), timeout=timeout).close()
        return None
    except OSError as e:
        return e.strerror or str(e)
