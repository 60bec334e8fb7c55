"""Who may open a session, with what: direct grants, or controller tokens when a key is set."""

from __future__ import annotations

import logging

from ..config import ServerConfig
from .backend import Backend
from .session import Authorizer, open_authorizer


def build_authorizer(cfg: ServerConfig, backend: Backend, log: logging.Logger) -> Authorizer:
    gpus = backend.gpus()
    mem = min(g.total_mem for g in gpus) >> 20 if gpus else 0
    default_gmem = mem // cfg.vgpu_count if mem else 1024
    log.info("direct mode: sessions get what their HELLO asks for (default %d MiB per vGPU)", default_gmem)
    return open_authorizer(1, default_gmem, max(1, len(gpus)), mem or None)
