"""A fake /proc for orion-check tests."""

from __future__ import annotations

import os
from pathlib import Path


def make_proc(root: Path, pid: int, argv: list[str], uid: int = 0, ppid: int = 1,
              cwd: Path | None = None) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "stat").write_text(f"{pid} (py thon) S {ppid} {pid} {pid} 0 -1\n")
    os.symlink(str(cwd or root), d / "cwd")
