"""Files with the narrowest modes: logs and stores 0640, secrets (keys, passwords) 0600.

Stdlib-only (the client's logs use it too). The mode is set when the file is created, whatever
the umask, and tightened (never widened) on a file that already exists with a wider mode, so an
upgrade from a release that wrote world-readable logs fixes them at the next start.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import stat
from pathlib import Path

LOG_MODE = 0o640
STORE_MODE = 0o640
SECRET_MODE = 0o600
DIR_MODE = 0o750


def restrict(path: str | os.PathLike[str], mode: int) -> None:
    """Clear every permission bit of ``path`` that ``mode`` does not have (owner's own only)."""
    try:
        cur = stat.S_IMODE(os.stat(path).st_mode)
        if cur & ~mode:
            os.chmod(path, cur & mode)
    except OSError:
        pass


def create(path: str | os.PathLike[str], mode: int) -> None:
    """Create ``path`` (empty) with ``mode`` if absent; tighten it if present."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode)
    try:
        cur = stat.S_IMODE(os.fstat(fd).st_mode)
        if cur & ~mode:
            os.fchmod(fd, cur & mode)
    finally:
        os.close(fd)


def make_dir(path: str | os.PathLike[str], mode: int = DIR_MODE) -> Path:
    """``mkdir -p`` where the directories it creates get ``mode`` (existing ones are kept)."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            pass
        os.chmod(d, mode)  # mkdir's mode is masked by the umask
    return p


class _WatchedFile(logging.handlers.WatchedFileHandler):
    """Reopens its file when it was moved or removed (logrotate), creating it with ``perm``."""

    def __init__(self, path: str | os.PathLike[str], perm: int) -> None:
        self.perm = perm
        super().__init__(path)

    def _open(self) -> io.TextIOWrapper:
        create(self.baseFilename, self.perm)
        return super()._open()


def file_handler(path: str | os.PathLike[str], mode: int = LOG_MODE) -> logging.FileHandler:
    """A handler appending to ``path``, created with ``mode``; when the file is moved away or
    removed (logrotate), the next line goes to a new one of that name (``WatchedFileHandler``: no
    signal needed, and it works in every process writing a log, session workers included).
    Raises OSError."""
    create(path, mode)
    return _WatchedFile(path, mode)
