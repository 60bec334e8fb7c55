"""Keeps a server registered with the controller: register, then heartbeat every ``interval``.

Stdlib-only. The controller being down is not fatal: the registrar keeps trying and logs each
change of state once (not every attempt). When a heartbeat answers 404 (controller restarted
with an empty store, or it dropped the node) or 403 (another registration took the node's secret)
it registers again at once.

Every request is signed with the controller's API key (``signer``); the node secret the first
registration answers is kept and presented with heartbeats and re-registrations, so only this
server can move its node. Each heartbeat answer lists the allocations released since whose
tokens for this node have not expired: they go to ``on_revoked`` (oriond refuses those tokens
and ends their sessions; see ``orion_virt/server/tokenstate.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from . import client
from .client import GpuInfo, NodeInfo, Signer
from .exceptions import ControllerError, Forbidden, NotFound

log = logging.getLogger("orion_virt.controller.registration")


class Registrar(threading.Thread):
    """``start()`` begins; ``stop()`` ends (optionally deregistering, which frees the node's
    vGPUs at once). ``interval`` should be well under the controller's heartbeat timeout
    (default 15 s); the default 5 s tolerates two lost heartbeats."""

    def __init__(self, controller_addr: str, node_info: NodeInfo, gpus: Sequence[GpuInfo],
                 interval: float = 5.0, timeout: float = 5.0, signer: Signer | None = None,
                 on_revoked: Callable[[list[str]], object] | None = None) -> None:
        super().__init__(name="orion-registrar", daemon=True)
        self.controller_addr = controller_addr
        self.node_info = node_info
        self.gpus = tuple(gpus)
        self.interval = interval
        self.timeout = timeout
        self.last_error: str | None = None
        self.signer = signer
        self.on_revoked = on_revoked
        self.node_secret: str | None = None
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
            except (NotFound, Forbidden) as e:
                log.warning("controller %s no longer knows node %s as this server (%s): "
                            "registering again", self.controller_addr, self.node_info.node_id, e)
                self._registered.clear()
                continue
            self._stop_event.wait(self.interval)

    def beat_once(self) -> None:
        """Register if needed, else heartbeat. ``NotFound`` propagates; other controller errors
        are recorded in ``last_error`` and logged when they first appear."""
        try:
            if not self.registered:
                d = client.register(self.controller_addr, self.node_info, self.gpus,
                                    self.timeout, self.signer, self.node_secret)
                if d.get("node_secret"):
                    self.node_secret = str(d["node_secret"])
                hb_timeout = float(d.get("heartbeat_timeout", 15.0))
                if self.interval > hb_timeout / 3:  # heartbeat well within the controller's timeout
                    self.interval = max(0.1, hb_timeout / 3)
                self._registered.set()
                log.info("registered node %s (%s, %d GPU(s)) with controller %s",
                         self.node_info.node_id, self.node_info.address, len(self.gpus),
                         self.controller_addr)
            else:
                revoked = client.heartbeat(self.controller_addr, self.node_info.node_id,
                                           self.timeout, self.signer, self.node_secret)
                if revoked and self.on_revoked is not None:
                    self.on_revoked(revoked)
            if self.last_error is not None:
                log.info("controller %s reachable again", self.controller_addr)
            self.last_error = None
        except (NotFound, Forbidden):
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
                client.deregister_node(self.controller_addr, self.node_info.node_id, self.timeout,
                                       self.signer)
            except ControllerError as e:
                log.warning("could not deregister node %s: %s", self.node_info.node_id, e)
            self._registered.clear()
