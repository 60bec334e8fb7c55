"""The host agent: attach Orion's ivshmem device to libvirt domains' persistent definitions.

Works on a libvirt-python ``virConnect`` passed in (the CLI builds the default one). It edits
only persistent definitions (``XMLDesc(INACTIVE|SECURE)`` -> ``defineXML``), so a running
domain keeps its current devices until its next cold boot: shut it down and start it again;
a guest reboot keeps the running QEMU process and its devices.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from ..config import ServerConfig
from ..errors import ConfigError, HostError, OrionError
from ..transport import doorbell as _doorbell
from . import domain_xml as dx
from .guestcfg import guest_config

VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_INACTIVE = 2
LIBVIRT_SHM_DIR = "/dev/shm"
COLD_BOOT_NOTE = (
    "the change takes effect at its next cold boot: shut it down and start it again "
    "(a reboot inside the guest keeps the running configuration)"
)

IPRouteFactory = Callable[[], ContextManager[Any]]


@dataclass(frozen=True)
class AttachResult:
    """Outcome of ``attach``: ``changed`` is False when the definition already matched."""

    domain: str
    index: int
    size_bytes: int
    config: dict[str, str]
    changed: bool
    active: bool
    pending: bool
    shm_path: str
    doorbell: str | None = None


@dataclass(frozen=True)
class DomainStatus:
    """Orion's state in a domain's persistent definition (``defined``) and, while it runs, in
    its live configuration (``live``). ``pending`` means the two differ until a cold boot."""

    domain: str
    uuid: str
    persistent: bool
    active: bool
    defined: dx.AttachState | None
    live: dx.AttachState | None
    shm_path: str

    @property
    def pending(self) -> bool:
        return self.active and _key(self.defined) != _key(self.live)

    def describe(self) -> list[str]:
        """Human-readable lines, the first naming the domain."""
        st = self.defined if self.persistent else self.live
        run = "running" if self.active else "shut off"
        if st is None:
            lines = [f"{self.domain}: not attached ({run})"]
        else:
            lines = [
                f"{self.domain}: attached as {st.shm_name} ({st.size_bytes >> 20} MiB, "
                f"{self.shm_path}) ({run})"
            ]
            if st.doorbell is not None:
                lines.append(f"  ivshmem-doorbell, server {st.doorbell}")
            for k, v in st.config.items():
                lines.append(f"  {k} = {v}")
            if not st.intact:
                lines.append("  devices were edited by hand: run `orion-virt attach` to repair")
        if not self.persistent:
            lines.append("  transient domain: orion-virt edits persistent definitions only")
        if self.pending:
            live = self.live.shm_name if self.live else "no orion device"
            lines.append(f"  running with {live}; {COLD_BOOT_NOTE}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        def st(s: dx.AttachState | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"index": s.index, "shm_name": s.shm_name, "size_bytes": s.size_bytes,
                    "config": dict(s.config), "intact": s.intact, "model": s.model,
                    "doorbell": s.doorbell}
        return {"domain": self.domain, "uuid": self.uuid, "persistent": self.persistent,
                "active": self.active, "defined": st(self.defined), "live": st(self.live),
                "pending": self.pending, "shm_path": self.shm_path}


def _key(st: dx.AttachState | None) -> tuple[Any, ...] | None:
    return None if st is None else (st.index, st.size_bytes, tuple(sorted(st.config.items())), st.doorbell)


def _default_ipr() -> ContextManager[Any]:
    from pyroute2 import IPRoute

    return IPRoute()


class HostAgent:
    """attach / detach / status / list / watch over one libvirt connection.

    Every error is a HostError or ConfigError whose message names the domain; libvirt's own
    errors are wrapped. ``log`` receives warnings and watch progress (default: dropped).
    """

    def __init__(self, conn: Any, config: ServerConfig, *,
                 ipr_factory: IPRouteFactory | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.conn = conn
        self.config = config
        self._ipr_factory = ipr_factory or _default_ipr
        self._log = log or (lambda _msg: None)

    # --- libvirt access ----------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OrionError:
            raise
        except Exception as e:  # libvirt.libvirtError and friends, without importing libvirt
            msg = e.get_error_message() if hasattr(e, "get_error_message") else str(e)
            raise HostError(f"{what}: {msg}") from None

    def _lookup(self, name: str) -> Any:
        return self._call(f"domain {name!r}: not found", self.conn.lookupByName, name)

    def _inactive_xml(self, dom: Any, name: str) -> str:
        return self._call(f"domain {name!r}: cannot read its definition", dom.XMLDesc,
                          VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE)

    def _live_xml(self, dom: Any, name: str) -> str:
        return self._call(f"domain {name!r}: cannot read its live XML", dom.XMLDesc, 0)

    def _all_domains(self) -> list[Any]:
        return self._call("cannot list domains", self.conn.listAllDomains, 0)

    def _network_bridges(self, xml: str) -> dict[str, str]:
        out: dict[str, str] = {}
        root = dx.parse_domain(xml)
        for src in root.findall("devices/interface[@type='network']/source"):
            net = src.get("network")
            if not net or net in out:
                continue
            try:
                out[net] = self.conn.networkLookupByName(net).bridgeName()
            except Exception as e:  # a missing network only removes one candidate gateway
                self._log(f"network {net!r}: cannot find its bridge: {e}")
        return out

    def shm_path(self, index: int) -> str:
        return str(Path(self.config.shm_path_base) / dx.shm_name(index))

    # --- index choice --------------------------------------------------------------------------

    def _others(self, uuid: str) -> Iterator[tuple[str, str]]:
        """(name, xml) of every other domain: definition and, while running, live XML."""
        for d in self._all_domains():
            if d.UUIDString() == uuid:
                continue
            n = d.name()
            with contextlib.suppress(HostError):
                if d.isPersistent():
                    yield n, self._inactive_xml(d, n)
                if d.isActive():
                    yield n, self._live_xml(d, n)

    def _files_in_use(self) -> set[int]:
        base = Path(self.config.shm_path_base)
        out: set[int] = set()
        with contextlib.suppress(OSError):
            for p in base.iterdir():
                m = re.fullmatch(r"orionsock(\d+)", p.name)
                if m:
                    out.add(int(m.group(1)))
        return out

    def _pick_index(self, name: str, uuid: str, current: dx.AttachState | None,
                    requested: int | None) -> int:
        claimed: dict[int, str] = {}
        for other, xml in self._others(uuid):
            with contextlib.suppress(HostError):
                for i in dx.used_indexes(xml):
                    claimed.setdefault(i, other)
        if requested is not None:
            if requested in claimed:
                raise HostError(
                    f"domain {name!r}: index {requested} ({dx.shm_name(requested)}) is "
                    f"already used by domain {claimed[requested]!r}"
                )
            return requested
        if current is not None:
            return current.index
        return dx.choose_index([], taken=set(claimed) | self._files_in_use())

    # --- operations ----------------------------------------------------------------------------

    def attach(self, name: str, index: int | None = None, *, doorbell: bool = False,
               run_dir: str = _doorbell.DEFAULT_RUN_DIR, client_key: str | None = None) -> AttachResult:
        """Attach ``name``'s persistent definition (idempotent). ``index`` None keeps the current
        index or picks the lowest one no other domain (and no container device file) uses.
        ``doorbell``: the ``ivshmem-doorbell`` model, served by oriond's ivshmem server at
        ``<run_dir>/ivshmem-orionsock<N>.sock`` (which must listen when the domain starts).
        ``client_key``: a controller's client key file whose key goes into the guest's fw_cfg entry
        (readable by the guest's root only), so its clients sign allocations with no copy step.

        Raises HostError if the domain is missing or transient, the index is taken, or libvirt
        rejects the new definition; ConfigError for a bad shm_buffer_size.
        """
        if self.config.shm_path_base.rstrip("/") != LIBVIRT_SHM_DIR:
            self._log(
                f"warning: libvirt maps ivshmem devices at {LIBVIRT_SHM_DIR}/<name> but "
                f"shm_path_base is {self.config.shm_path_base}; the guest will not see oriond"
            )
        dom = self._lookup(name)
        if not self._call(f"domain {name!r}", dom.isPersistent):
            raise HostError(
                f"domain {name!r} is transient: orion-virt edits persistent definitions only "
                "(define it with `virsh define`)"
            )
        uuid = dom.UUIDString()
        xml = self._inactive_xml(dom, name)
        current = dx.orion_state(xml)
        idx = self._pick_index(name, uuid, current, index)
        active = bool(self._call(f"domain {name!r}", dom.isActive))
        net_xml = self._live_xml(dom, name) if active else xml
        with self._ipr_factory() as ipr:
            cfg = guest_config(self.config, net_xml, ipr, self._network_bridges(net_xml),
                               warn=lambda m: self._log(f"warning: {m}"))
        if client_key is not None:
            from ..controller.token import load_key

            cfg["client_key"] = load_key(client_key).hex()
        size = self.config.shm_buffer_size
        try:
            sock = str(_doorbell.socket_path(idx, run_dir)) if doorbell else None
            new = dx.attach(xml, idx, size, cfg, doorbell=sock)
        except OrionError as e:
            raise type(e)(f"domain {name!r}: {e}") from None
        changed = dx.normalize(new) != dx.normalize(xml)
        if changed:
            self._call(f"domain {name!r}: libvirt rejected the new definition",
                       self.conn.defineXML, new)
        live = dx.orion_state(self._live_xml(dom, name)) if active else None
        pending = active and _key(live) != _key(dx.orion_state(new))
        return AttachResult(name, idx, size, cfg, changed, active, pending, self.shm_path(idx), sock)

    def detach(self, name: str) -> tuple[bool, bool]:
        """Remove what attach added from ``name``'s persistent definition.

        Returns ``(changed, pending)``: pending is True while the domain still runs with the
        device. Raises HostError if the domain is missing or libvirt rejects the definition.
        """
        dom = self._lookup(name)
        xml = self._inactive_xml(dom, name)
        new = dx.detach(xml)
        changed = new is not xml
        if changed:
            self._call(f"domain {name!r}: libvirt rejected the new definition",
                       self.conn.defineXML, new)
        active = bool(self._call(f"domain {name!r}", dom.isActive))
        pending = active and dx.orion_state(self._live_xml(dom, name)) is not None
        return changed, pending

    def _status_of(self, dom: Any) -> DomainStatus:
        name = dom.name()
        persistent = bool(self._call(f"domain {name!r}", dom.isPersistent))
        active = bool(self._call(f"domain {name!r}", dom.isActive))
        defined = dx.orion_state(self._inactive_xml(dom, name)) if persistent else None
        live = dx.orion_state(self._live_xml(dom, name)) if active else None
        st = defined or live
        return DomainStatus(name, dom.UUIDString(), persistent, active, defined, live,
                            self.shm_path(st.index) if st else "")

    def status(self, name: str) -> DomainStatus:
        """Orion's state of one domain. Raises HostError if it does not exist."""
        return self._status_of(self._lookup(name))

    def list(self) -> list[DomainStatus]:
        """Status of every domain, sorted by name; domains that vanish meanwhile are skipped."""
        out = []
        for d in self._all_domains():
            with contextlib.suppress(HostError):
                out.append(self._status_of(d))
        return sorted(out, key=lambda s: s.domain)

    def watch(self, stop: threading.Event | None = None, interval: float = 5.0,
              max_cycles: int | None = None) -> None:
        """Attach every persistent domain defined after the watch started, polling
        ``listAllDomains`` every ``interval`` seconds until ``stop`` is set.

        Domains present at start are left as they are (attach them explicitly; a detached
        domain is never re-attached). A failed attach is logged and retried next cycle.
        Raises ConfigError if ``enable_kvm`` is off.
        """
        if not self.config.enable_kvm:
            raise ConfigError(
                f"{self.config.source}: [server] enable_kvm is false: set enable_kvm = true "
                "to let orion-virt watch attach new domains"
            )
        stop = stop or threading.Event()
        seen = {d.UUIDString() for d in self._all_domains()}
        self._log(f"watching for new domains every {interval:g}s ({len(seen)} already defined)")
        cycles = 0
        while not stop.is_set():
            if max_cycles is not None and cycles >= max_cycles:
                return
            cycles += 1
            try:
                domains = self._all_domains()
            except HostError as e:
                self._log(f"error: {e}")
                domains = []
            for d in domains:
                uuid = d.UUIDString()
                if uuid in seen:
                    continue
                name = d.name()
                try:
                    if not d.isPersistent():
                        continue
                    r = self.attach(name)
                except OrionError as e:
                    self._log(f"error: {e}")
                    continue
                except Exception as e:  # the domain vanished between listing and lookup
                    self._log(f"error: domain {name!r}: {e}")
                    continue
                seen.add(uuid)
                note = f"; {COLD_BOOT_NOTE}" if r.pending else ""
                self._log(f"attached {name} as {dx.shm_name(r.index)}{note}")
            if max_cycles is not None and cycles >= max_cycles:
                return
            stop.wait(interval)
