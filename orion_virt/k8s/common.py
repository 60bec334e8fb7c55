"""What the Kubernetes commands share: the seeds' messages, a bounded backoff, the probes."""

from __future__ import annotations

import socket

DEFAULT_RESOURCE = "virtaitech.com/gpu"
"""The extended resource, as in the seeds."""
MSG_DEVICE_LIST = "Fail to get device list. Retry in {delay:g} seconds ..."
"""The seeds' device-plugin line while the controller gives no device list."""
MSG_WAIT_IFACE = "Waiting for network interface {name}"
"""The seeds' line while the configured interface has no address."""


class Backoff:
    """Delays ``initial``, doubling up to ``maximum``; ``reset`` after a success."""

    def __init__(self, initial: float = 2.0, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = initial

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.maximum, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.initial


def tcp_probe(address: str, timeout: float = 1.0) -> bool:
    """oriond's data-plane address accepts a TCP connection (``0.0.0.0`` is tried on loopback)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return False
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def pyroute2_addr(name: str) -> str:
    from pyroute2 import IPRoute  # the host extra

    from ..host.netaddr import addr_of_interface

    with IPRoute() as ipr:
        return addr_of_interface(name, ipr)
