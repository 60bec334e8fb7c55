"""Choosing the client's transport: an ivshmem PCI device (in a VM), a shared-memory device file
(in a container or on the host), else TCP. The choice and its reason are returned for logging.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import compat
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
            reasons.append(_no_device_reason(cfg))
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
            # the seeds' message alone on its line (cuInit prints each line), then the details
            raise TransportError(f"{VM_NOT_SERVED}\n({why}; {e})") from None
        raise TransportError(f"{compat.MSG_CONNECT}: {e}"
                             + (f" (shared memory unusable: {why})" if why else "")) from None
    return Chosen(stream, "tcp", f"TCP to {addr}" + (f" because {why}" if why else ""))


def _no_device_reason(cfg: ClientConfig) -> str:
    """Why no device was found; louder (the runtime prints it) when shm was configured explicitly."""
    origin = cfg.origin("shm_path_base")
    if origin == "default":
        return f"no shared-memory device under {cfg.shm_path_base}"
    return (f"shm_path_base {cfg.shm_path_base} (from {origin}) holds no Orion device: create one on "
            f"the host with `orion-shm -i N` and mount it into the container at the same path "
            f"(docker run -v {cfg.shm_path_base}/orionsockN:{cfg.shm_path_base}/orionsockN:rw)")


@dataclass(frozen=True)
class Plan:
    """What ``choose`` would do now: ``transport`` (ivshmem, shm, tcp), ``target`` (device path or
    HOST:PORT), ``reason`` and any warnings. Built by ``plan`` without claiming or connecting."""

    transport: str
    target: str
    reason: str
    warnings: tuple[str, ...] = ()


def _preflight(dev: Device, me: int, beat_wait: float) -> str | None:
    """Why ``claim_channel`` would refuse ``dev`` (without claiming anything), or None."""
    from ..transport.shmdev import C_OWNER_NS, C_STATE, CLAIMED, H_SERVER_BEAT, H_SERVER_EPOCH, SERVING

    if dev.q[H_SERVER_EPOCH] == 0:
        return (f"{dev.path}: no oriond is serving this device (start oriond with enable_shm=true; "
                "for VMs also enable_kvm=true)")
    beat = dev.q[H_SERVER_BEAT]
    deadline = time.monotonic() + beat_wait
    while dev.q[H_SERVER_BEAT] == beat and time.monotonic() < deadline:
        time.sleep(0.01)
    if beat_wait > 0 and dev.q[H_SERVER_BEAT] == beat:
        return (f"{dev.path}: oriond marked it served but its heartbeat is stopped (oriond killed?); "
                "check `systemctl status oriond`")
    free = False
    for i in range(dev.layout.nchannels):
        c = dev.ctrl(i)
        if (dev.lock_fd == dev.fd and c[C_STATE] in (CLAIMED, SERVING)
                and c[C_OWNER_NS] not in (0, me) and dev.owner_alive(i)):
            return (f"{dev.path} is already in use by another container (mount namespace {c[C_OWNER_NS]}): "
                    "every container needs its own device — create one with `orion-shm -i N` and mount it "
                    "with `docker run -v /dev/shm/orionsockN:/dev/shm/orionsockN:rw`")
        if dev.try_lock(i):
            dev.unlock(i)
            free = True
    if not free:
        return (f"{dev.path}: all {dev.layout.nchannels} channels are in use; "
                "create another device with `orion-shm -i N`")
    return None


def plan(cfg: ClientConfig, server_addr: str | None = None, beat_wait: float = 0.3) -> Plan:
    """Dry run of ``choose`` for diagnostics (orion-check): the same order and reasons, but no
    channel is claimed and no connection is made. ``beat_wait``: how long to watch a device's
    server heartbeat (0 skips the check)."""
    from ..transport.shmdev import own_namespace_id

    reasons: list[str] = []
    warnings: list[str] = []
    addr = server_addr or cfg.server_addr or DEFAULT_SERVER
    if cfg.enable_net:
        return Plan("tcp", addr, f"TCP to {addr} because enable_net is true")
    me = own_namespace_id()
    candidates: list[tuple[str, Callable[[], Device]]] = []
    for pci in ivshmem.find_devices():
        candidates.append(("ivshmem", functools.partial(ivshmem.open_device, pci)))
    paths = [Path(cfg.shm_device)] if cfg.shm_device else list_devices(cfg.shm_path_base)
    if not paths:
        reasons.append(_no_device_reason(cfg))
    for p in paths:
        candidates.append(("shm", functools.partial(Device, p)))
    for kind, opener in candidates:
        try:
            dev = opener()
        except DeviceError as e:
            reasons.append(str(e))
            continue
        try:
            host = dev.host_path
            if kind == "shm" and host and os.path.realpath(host) != os.path.realpath(dev.path) and dev.path != host:
                warnings.append(f"{dev.path} was created on the host as {host}; mount it at the same path "
                                f"(docker run -v {host}:{host}:rw) as the Orion documentation requires")
            why = _preflight(dev, me, beat_wait)
            if why is None:
                return Plan(kind, dev.path, f"{kind} device {dev.path}", tuple(warnings))
            reasons.append(why)
        finally:
            dev.close()
    why = "; ".join(reasons)
    return Plan("tcp", addr, f"TCP to {addr}" + (f" because {why}" if why else ""), tuple(warnings))
