"""oriond's logs: /var/log/orion/server.log and one file per session in /var/log/orion/session/.

Paths come from ServerConfig.log_dir; levels and switches from the seeds' [server-log] keys.
Files are reopened when logrotate moves them away (:func:`fileperm.file_handler`), so the
logrotate file sends no signal; session logs are removed by its postrotate after 14 days.
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


FOLLOWERS = ("orion_virt.controller.registration",)
"""Loggers that write through the server logger's handlers once given them (oriond does): a
reload hands them the new ones."""


def setup_server_logging(cfg: ServerConfig) -> logging.Logger:
    """The server logger (again, on a reload: the previous handlers are closed only once the new
    ones are open). Raises ConfigError when the log directory cannot be written, leaving the
    logger as it was."""
    log = logging.getLogger("orion.server")
    handlers = _server_handlers(cfg)
    old = list(log.handlers)
    log.handlers[:] = handlers
    for name in FOLLOWERS:
        follower = logging.getLogger(name)
        if follower.handlers and all(h in old for h in follower.handlers):
            follower.handlers[:] = handlers
    for h in old:
        h.close()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def _server_handlers(cfg: ServerConfig) -> list[logging.Handler]:
    out: list[logging.Handler] = []
    lc = cfg.log
    if lc.log_to_screen:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(lc.log_level)
        h.setFormatter(_formatter(lc.log_with_time))
        out.append(h)
    if lc.log_to_file:
        try:
            fileperm.make_dir(cfg.session_log_dir)
            fh = fileperm.file_handler(cfg.server_log_path)  # 0640: logs name allocations and programs
        except OSError as e:
            raise ConfigError(f"{cfg.source}: [server-log] log_dir={cfg.log_dir}: cannot write logs there "
                              f"({e.strerror}); set log_dir or run as root") from None
        fh.setLevel(lc.file_log_level)
        fh.setFormatter(_formatter(True))
        out.append(fh)
    return out


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
