"""Keeps a server registered with the controller: register, then heartbeat every ``interval``.

Stdlib-only. The controller being down is not fatal: the registrar keeps trying and logs each
change of state once (not every attempt). When a heartbeat answers 404 (controller restarted
with an empty store, or it dropped the node) it registers again at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Sequence

from . import client
from .client import GpuInfo, NodeInfo
from .exceptions import ControllerError, NotFound

log = logging.getLogger("orion_virt.controller.registration")


class Registrar(threading.Thread):
    """``start()`` begins; ``stop()`` ends (optionally deregistering, which frees the node's
    vGPUs at once). ``interval`` should be well under the controller's heartbeat timeout
    (default 15 s); the default 5 s tolerates two lost heartbeats."""

    def __init__(self, controller_addr: str, node_info: NodeInfo, gpus: Sequence[GpuInfo],
                 interval: float = 5.0, timeout: float = 5.0) -> None:
        super().__init__(name="orion-registrar", daemon=True)
        self.controller_addr = controller_addr
        self.node_info = node_info
        self.gpus = tuple(gpus)
        self.interval = interval
        self.timeout = timeout
        self.last_error: str | None = None
        self._registered = threading.Event()
        self._stop_event = threading.Event()

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def wait_registered(self, timeout: float | None = None) -> bool:
        """True once the controller has accepted the registration (within ``timeout``)."""
        return self._registered.wait(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.beat_once()
            except NotFound:
                log.warning("controller %s no longer knows node %s: registering again",
                            self.controller_addr, self.node_info.node_id)
                self._registered.clear()
                continue
            self._stop_event.wait(self.interval)

    def beat_once(self) -> None:
        """Register if needed, else heartbeat. ``NotFound`` propagates; other controller errors
        are recorded in ``last_error`` and logged when they first appear."""
        try:
            if not self.registered:
                hb_timeout = client.register_node(self.controller_addr, self.node_info,
                                                  self.gpus, self.timeout)
                if self.interval > hb_timeout / 3:  # heartbeat well within the controller's timeout
                    self.interval = max(0.1, hb_timeout / 3)
                self._registered.set()
                log.info("registered node %s (%s, %d GPU(s)) with controller %s",
                         self.node_info.node_id, self.node_info.address, len(self.gpus),
                         self.controller_addr)
            else:
                client.heartbeat(self.controller_addr, self.node_info.node_id, self.timeout)
            if self.last_error is not None:
                log.info("controller %s reachable again", self.controller_addr)
            self.last_error = None
        except NotFound:
            raise
        except ControllerError as e:
            if str(e) != self.last_error:
                log.warning("controller %s: %s (will retry every %.0fs)", self.controller_addr,
                            e, self.interval)
            self.last_error = str(e)

    def stop(self, deregister: bool = False) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self.timeout + 1)
        if deregister and self.registered:
            try:
                client.deregister_node(self.controller_addr, self.node_info.node_id, self.timeout)
            except ControllerError as e:
                log.warning("could not deregister node %s: %s", self.node_info.node_id, e)
            self._registered.clear()
