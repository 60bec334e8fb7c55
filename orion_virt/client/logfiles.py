"""How many per-run log files a user's log directory (~/.orion/log) keeps. Standard library only.

Both clients (this one and the native client's orion_log.c) write ``client-YYYYmmdd-HHMMSS-PID.log``
there, one per application run; at each new file the oldest beyond :data:`KEEP` are removed
(the names sort by time). Nothing else in the directory is touched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

KEEP = 100
"""client-*.log files kept per directory, the newest ones (orion_log.c's ORION_LOG_KEEP too)"""

_NAME = re.compile(r"client-\d{8}-\d{6}-\d+\.log")


def prune(directory: str | os.PathLike[str], keep: int = KEEP) -> list[Path]:
    """Remove the oldest client-*.log files of ``directory`` beyond ``keep``; the removed ones.
    A file gone meanwhile (another run pruning) or one that cannot be removed is skipped."""
    d = Path(directory)
    try:
        names = sorted(n for n in os.listdir(d) if _NAME.fullmatch(n))
    except OSError:
        return []
    removed: list[Path] = []
    for name in names[: max(0, len(names) - keep)]:
        try:
            (d / name).unlink()
            removed.append(d / name)
        except OSError:
            pass
    return removed
