"""One controller served over HTTP on a loopback port in a thread, with a clock the test moves:
what the controller's API and metrics tests start."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from orion_virt.controller.api import make_server
from orion_virt.controller.pool import Policy
from orion_virt.controller.service import Controller
from orion_virt.controller.store import SqliteStore

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def serve(tmp_path: Path) -> Iterator[tuple[str, Controller, Clock]]:
    """(address, controller, clock) while the server runs (lease 30 s, heartbeat timeout 15 s)."""
    clock = Clock()
    c = Controller(SqliteStore(tmp_path / "c.db"), Policy(lease_seconds=30, heartbeat_timeout=15),
                   KEY, clock=clock)
    srv = make_server(c, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}", c, clock
    srv.shutdown()
    srv.server_close()
