"""oriond's logs: /var/log/orion/server.log and one file per session in /var/log/orion/session/.

Paths come from ServerConfig.log_dir; levels and switches from the seeds' [server-log] keys.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .. import fileperm
from ..config import ServerConfig
from ..errors import ConfigError


def _formatter(with_time: bool) -> logging.Formatter:
    fmt = "%(asctime)s [%(levelname)s] %(message)s" if with_time else "[%(levelname)s] %(message)s"
    return logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S")


def setup_server_logging(cfg: ServerConfig) -> logging.Logger:
    """The server logger. Raises ConfigError when the log directory cannot be written."""
    log = logging.getLogger("orion.server")
    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    lc = cfg.log
    if lc.log_to_screen:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(lc.log_level)
        h.setFormatter(_formatter(lc.log_with_time))
        log.addHandler(h)
    if lc.log_to_file:
        try:
            fileperm.make_dir(cfg.session_log_dir)
            fh = fileperm.file_handler(cfg.server_log_path)  # 0640: logs name allocations and programs
        except OSError as e:
            raise ConfigError(f"{cfg.source}: [server-log] log_dir={cfg.log_dir}: cannot write logs there "
                              f"({e.strerror}); set log_dir or run as root") from None
        fh.setLevel(lc.file_log_level)
        fh.setFormatter(_formatter(True))
        log.addHandler(fh)
    return log


def session_logger(cfg: ServerConfig, sid: int, parent: logging.Logger) -> logging.Logger:
    """A logger writing to session/<sid>.log (and nowhere else); falls back to ``parent``."""
    log = logging.getLogger(f"orion.session.{sid}")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG)
    if not cfg.log.log_to_file:
        return parent
    try:
        path = Path(cfg.session_log_dir) / f"{sid}.log"
        fh = fileperm.file_handler(path)
    except OSError:
        return parent
    fh.setLevel(cfg.log.file_log_level)
    fh.setFormatter(_formatter(True))
    log.addHandler(fh)
    return log
