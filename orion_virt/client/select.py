"""Choosing the client's transport: an ivshmem PCI device (in a VM), a shared-memory device file
(in a container or on the host), else TCP. The choice and its reason are returned for logging.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ClientConfig
from ..errors import DeviceError, TransportError
from ..transport import tcp
from ..transport.base import Stream
from ..transport.shmdev import ClientChannel, Device, claim_channel, list_devices
from . import ivshmem

DEFAULT_SERVER = "127.0.0.1:9960"
VM_NOT_SERVED = "Fail to finish system initialization."


@dataclass
class Chosen:
    stream: Stream
    transport: str
    reason: str
    channel: ClientChannel | None = None
    device_config: dict[str, str] | None = None


class Heartbeat:
    """Ticks a shared-memory channel's client heartbeat once a second (a daemon thread)."""

    def __init__(self, channel: ClientChannel, interval: float = 1.0) -> None:
        self.channel = channel
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="orion-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.channel.heartbeat()
            except (ValueError, TypeError):
                return

    def start(self) -> Heartbeat:
        self.channel.heartbeat()
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def _try_device(dev: Device, reasons: list[str], timeout: float) -> Chosen | None:
    try:
        ch = claim_channel(dev, wait_s=timeout)
    except DeviceError as e:
        reasons.append(str(e))
        dev.close()
        return None
    kind = "ivshmem" if dev.lock_fd != dev.fd else "shm"
    return Chosen(ch.stream(), kind, f"{kind} device {dev.path} channel {ch.index}", ch, dev.config)


def choose(cfg: ClientConfig, server_addr: str | None = None,
           log: Callable[[str], None] = lambda m: None) -> Chosen:
    """Connect over the best available transport. Raises TransportError listing every reason."""
    reasons: list[str] = []
    vm_unserved = False
    if cfg.enable_net:
        reasons.append("enable_net is true")
    else:
        for pci in ivshmem.find_devices():
            try:
                dev = ivshmem.open_device(pci)
            except DeviceError as e:
                reasons.append(str(e))
                continue
            if not dev.info().served:
                vm_unserved = True
                reasons.append(f"ivshmem device {pci} is not served by oriond (enable_kvm is off on the host?)")
                dev.close()
                continue
            got = _try_device(dev, reasons, cfg.connect_timeout)
            if got:
                return got
        paths = [Path(cfg.shm_device)] if cfg.shm_device else list_devices(cfg.shm_path_base)
        if not paths:
            reasons.append(f"no shared-memory device under {cfg.shm_path_base}")
        for p in paths:
            try:
                dev = Device(p)
            except DeviceError as e:
                reasons.append(str(e))
                continue
            host = dev.host_path
            if host and os.path.realpath(host) != os.path.realpath(str(p)) and str(p) != host:
                log(f"warning: {p} was created on the host as {host}; mount it at the same path "
                    f"(docker run -v {host}:{host}:rw) as the Orion documentation requires")
            got = _try_device(dev, reasons, cfg.connect_timeout)
            if got:
                return got
    addr = server_addr or cfg.server_addr or DEFAULT_SERVER
    why = "; ".join(reasons)
    try:
        stream = tcp.connect(addr, timeout=cfg.connect_timeout)
    except TransportError as e:
        if vm_unserved:
            raise TransportError(f"{VM_NOT_SERVED} ({why}; {e})") from None
        raise TransportError(f"Could not connect to server: {e}" + (f" (shared memory unusable: {why})" if why else "")) from None
    return Chosen(stream, "tcp", f"TCP to {addr}" + (f" because {why}" if why else ""))
