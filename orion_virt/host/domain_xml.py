"""Pure edits of libvirt domain XML: add, find and remove Orion's ivshmem device.

``attach`` adds to a domain definition, touching nothing else:

- ``<shmem name='orionsock<N>'><model type='ivshmem-plain'/><size unit='M'>S</size></shmem>``
  in ``<devices>`` (the guest's view of ``<shm_path_base>/orionsock<N>``), or with
  ``doorbell=<socket path>`` the interrupt-capable model
  ``<shmem name='orionsock<N>'><model type='ivshmem-doorbell'/><server path='…'/>
  <msi vectors='1' ioeventfd='on'/></shmem>``: QEMU then gets the memory (the same
  ``/dev/shm/orionsock<N>`` file) and the eventfds from oriond's ivshmem server
  (``orion_virt.transport.doorbell``) instead of a memory-backend-file, so libvirt takes no
  ``<size>`` for it (it rejects one) and the size lives in the metadata only. The doorbell model
  always interrupts through MSI-X (QEMU has no ``msi=off`` for it and libvirt drops
  ``<msi enabled='off'/>``), so a guest waits with vfio-pci, not uio_pci_generic (INTx);
- ``<sysinfo type='fwcfg'><entry name='opt/org.orion/config'>k=v\\n...</entry></sysinfo>``:
  the addresses the guest needs, readable in the guest without configuration at
  ``/sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/config/raw``;
- ``<metadata><orion:orion xmlns:orion='https://orion-virt.dev/xmlns/1'>`` recording the index,
  size, guest config and exactly what was added, so ``detach`` removes only that.

Invariants: ``attach`` is idempotent (same arguments on an attached domain return the input
unchanged); ``detach(attach(x)) == x`` for a domain that was not attached; a user's own shmem
devices, sysinfo blocks and fw_cfg entries are never modified or removed. Whitespace of the
input is kept and new elements follow its indentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from lxml import etree

from ..errors import ConfigError, HostError

NS = "https://orion-virt.dev/xmlns/1"
NS_PREFIX = "orion"
FWCFG_NAME = "opt/org.orion/config"
SHM_PREFIX = "orionsock"
METADATA_VERSION = "1"
MODEL_PLAIN = "ivshmem-plain"
MODEL_DOORBELL = "ivshmem-doorbell"
#: MSI-X vectors of the doorbell device (``transport.doorbell.DEVICE_VECTORS``): the guest rings
#: oriond on vector 0 after a claim and on 1 + i for channel i's worker; oriond rings the guest
#: on vector 0. The hook records the count in the device header so oriond's ivshmem server
#: offers exactly as many (QEMU refuses a server that sends more).
DOORBELL_VECTORS = 9

_MIB = 1 << 20
_Q = f"{{{NS}}}"
_SHM_NAME_RE = re.compile(r"^orionsock(\d+)$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

# libvirt's element order inside <domain> and <devices>: new elements go before the first of these.
_DOMAIN_AFTER_METADATA = (
    "maxMemory", "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu",
    "vcpus", "iothreads", "iothreadids", "defaultiothread", "cputune", "numatune", "resource",
    "sysinfo", "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock",
    "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf", "devices",
    "seclabel", "keywrap", "launchSecurity",
)
_DOMAIN_AFTER_SYSINFO = (
    "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock", "on_poweroff",
    "on_reboot", "on_crash", "on_lockfailure", "pm", "perf", "devices", "seclabel", "keywrap",
    "launchSecurity",
)
_DOMAIN_AFTER_DEVICES = ("seclabel", "keywrap", "launchSecurity")
_DEVICES_AFTER_SHMEM = ("memory", "iommu", "vsock", "crypto", "pstore")

_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}


@dataclass(frozen=True)
class AttachState:
    """What Orion's metadata in a domain says, and whether the devices it names are still there.

    ``created`` lists the containers Orion created (``devices``, ``sysinfo``, ``metadata``) and
    removes again on detach when they are empty. ``intact`` is False when someone removed or
    changed the shmem device or the fw_cfg entry by hand; ``attach`` then repairs them.
    """

    index: int
    size_bytes: int
    config: dict[str, str] = field(default_factory=dict)
    created: frozenset[str] = frozenset()
    shmem_present: bool = True
    fwcfg_present: bool = True
    #: the ivshmem server socket when the device is the doorbell model, else None (plain)
    doorbell: str | None = None

    @property
    def model(self) -> str:
        return MODEL_PLAIN if self.doorbell is None else MODEL_DOORBELL

    @property
    def shm_name(self) -> str:
        return shm_name(self.index)

    @property
    def intact(self) -> bool:
        return self.shmem_present and self.fwcfg_present


def shm_name(index: int) -> str:
    """``orionsock<index>``: the shmem device name and the file name under shm_path_base."""
    return f"{SHM_PREFIX}{index}"


def parse_domain(domain_xml: str) -> etree._Element:
    """Parse domain XML without entities or network access. Raises HostError if it is not XML
    or its root is not ``<domain>``."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(domain_xml.encode(), parser)
    except etree.XMLSyntaxError as e:
        raise HostError(f"domain XML is not well-formed: {e}") from None
    if root.tag != "domain":
        raise HostError(f"expected a <domain> document, got <{root.tag}>")
    return root


def domain_name(domain_xml: str) -> str:
    """The domain's ``<name>``, or ``""`` if it has none."""
    return (parse_domain(domain_xml).findtext("name") or "").strip()


def _serialize(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")


def parse_size(el: etree._Element) -> int:
    """Bytes of a libvirt scaled ``<size unit='…'>`` element (default unit: bytes)."""
    unit = (el.get("unit") or "b").strip().lower()
    if unit not in _UNITS:
        raise HostError(f"unknown size unit {unit!r}")
    try:
        return int((el.text or "").strip()) * _UNITS[unit]
    except ValueError:
        raise HostError(f"bad size {el.text!r}") from None


def check_size(size_bytes: int) -> None:
    """An ivshmem BAR is a power of two of at least 1 MiB; libvirt's unit here is whole MiB.

    Raises ConfigError otherwise (the size normally comes from ``shm_buffer_size``).
    """
    if size_bytes < _MIB or size_bytes % _MIB or size_bytes & (size_bytes - 1):
        raise ConfigError(
            f"shm size {size_bytes} bytes: an ivshmem device needs a power of two of at least "
            "1 MiB (for example shm_buffer_size = 128M)"
        )


def _check_config(guest_config: Mapping[str, str]) -> None:
    for k, v in guest_config.items():
        if not _KEY_RE.match(k):
            raise ConfigError(f"guest config key {k!r}: expected letters, digits, _ . -")
        if any(c in v for c in "\n\r\0"):
            raise ConfigError(f"guest config {k}: value must be one line")


def config_text(guest_config: Mapping[str, str]) -> str:
    """The fw_cfg entry's text: ``key=value`` lines joined by ``\\n`` (no trailing newline)."""
    return "\n".join(f"{k}={v}" for k, v in guest_config.items())


def parse_config_text(text: str) -> dict[str, str]:
    """Inverse of ``config_text``; lines without ``=`` are ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out


# --- whitespace-preserving tree edits -------------------------------------------------------


def _ws_before(el: etree._Element) -> str | None:
    prev = el.getprevious()
    parent = el.getparent()
    return prev.tail if prev is not None else (parent.text if parent is not None else None)


def _indent_of(el: etree._Element) -> str | None:
    """The indentation of ``el``'s own line, or None if the document is not pretty-printed."""
    ws = _ws_before(el)
    if ws is None or "\n" not in ws:
        return None
    return ws.rsplit("\n", 1)[1]


def _pretty(root: etree._Element) -> tuple[bool, str]:
    """Whether the document is indented, and its indentation unit."""
    if root.text is None or "\n" not in root.text or not len(root):
        return False, ""
    unit = root.text.rsplit("\n", 1)[1]
    return True, unit or "  "


def _level(el: etree._Element) -> int:
    n = 0
    p = el.getparent()
    while p is not None:
        n += 1
        p = p.getparent()
    return n


def _insert(parent: etree._Element, pos: int, child: etree._Element) -> None:
    """Insert ``child`` at ``pos`` among ``parent``'s children, indented like its siblings."""
    root = parent.getroottree().getroot()
    pretty, unit = _pretty(root)
    children = list(parent)
    if not pretty:
        parent.insert(pos, child)
        return
    etree.indent(child, space=unit, level=_level(parent) + 1)
    if not children:
        own = _indent_of(parent)
        own = own if own is not None else unit * _level(parent)
        parent.text = "\n" + own + unit
        child.tail = "\n" + own
        parent.append(child)
        return
    if pos >= len(children):
        last = children[-1]
        child.tail = last.tail
        last.tail = "\n" + (_indent_of(last) or "")
        parent.append(child)
        return
    ws = _ws_before(children[pos])
    child.tail = ws
    parent.insert(pos, child)


def _remove(el: etree._Element) -> None:
    """Remove ``el`` keeping the surrounding indentation as it was before ``_insert``."""
    parent = el.getparent()
    if parent is None:
        return
    if el.getnext() is None:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = el.tail
        else:
            parent.text = None if _only_ws(parent.text) else parent.text
    parent.remove(el)


def _only_ws(text: str | None) -> bool:
    return text is None or text.strip() == ""


def _pos_before(parent: etree._Element, names: Iterable[str], default_end: bool = True) -> int:
    """Index of the first child whose tag is in ``names`` (or is namespaced), else the end."""
    wanted = set(names)
    for i, c in enumerate(parent):
        if not isinstance(c.tag, str):
            continue
        if c.tag in wanted or c.tag.startswith("{"):
            return i
    return len(parent) if default_end else 0


def _pos_after_last(parent: etree._Element, tag: str) -> int | None:
    idx = None
    for i, c in enumerate(parent):
        if c.tag == tag:
            idx = i + 1
    return idx


# --- queries ---------------------------------------------------------------------------------


def _orion_meta(root: etree._Element) -> etree._Element | None:
    md = root.find("metadata")
    return None if md is None else md.find(_Q + "orion")


def _fwcfg_entries(root: etree._Element, name: str) -> list[etree._Element]:
    return [
        e for s in root.findall("sysinfo") if s.get("type") == "fwcfg"
        for e in s.findall("entry") if e.get("name") == name
    ]


def _shmems(root: etree._Element, name: str) -> list[etree._Element]:
    devices = root.find("devices")
    if devices is None:
        return []
    return [s for s in devices.findall("shmem") if s.get("name") == name]


def _shmem_matches(el: etree._Element, size_bytes: int, doorbell: str | None = None) -> bool:
    model = el.find("model")
    size = el.find("size")
    if doorbell is not None:
        server = el.find("server")
        msi = el.find("msi")
        return (model is not None and model.get("type") == MODEL_DOORBELL and size is None
                and server is not None and server.get("path") == doorbell
                and msi is not None and msi.get("vectors") == str(DOORBELL_VECTORS))
    if model is None or model.get("type") != MODEL_PLAIN or size is None:
        return False
    try:
        return parse_size(size) == size_bytes
    except HostError:
        return False


def _state(root: etree._Element) -> AttachState | None:
    meta = _orion_meta(root)
    if meta is None:
        return None
    dev = meta.find(_Q + "device")
    if dev is None:
        raise HostError("orion metadata has no <orion:device> element")
    try:
        index = int(dev.get("index", ""))
        size = int(dev.get("size", ""))
    except ValueError:
        raise HostError("orion metadata: <orion:device> index/size are not integers") from None
    doorbell = dev.get("server") if dev.get("model") == MODEL_DOORBELL else None
    config = {
        e.get("key", ""): e.text or ""
        for e in meta.findall(f"{_Q}config/{_Q}entry") if e.get("key")
    }
    added = meta.find(_Q + "added")
    created = frozenset((added.get("created") or "").split()) if added is not None else frozenset()
    name = added.get("shmem") if added is not None else shm_name(index)
    shm_ok = any(_shmem_matches(s, size, doorbell) for s in _shmems(root, name or shm_name(index)))
    fw = _fwcfg_entries(root, FWCFG_NAME)
    fw_ok = len(fw) == 1 and parse_config_text(fw[0].text or "") == config
    return AttachState(index, size, config, created, shm_ok, fw_ok, doorbell)


def orion_state(domain_xml: str) -> AttachState | None:
    """Orion's attachment recorded in the domain, or None if the domain carries no orion metadata.

    Raises HostError on malformed XML or malformed orion metadata.
    """
    return _state(parse_domain(domain_xml))


def used_indexes(domain_xml: str) -> set[int]:
    """Indexes this domain occupies: its orion metadata index and any shmem named orionsock<N>."""
    root = parse_domain(domain_xml)
    out: set[int] = set()
    st = _state(root)
    if st is not None:
        out.add(st.index)
    devices = root.find("devices")
    for s in devices.findall("shmem") if devices is not None else ():
        m = _SHM_NAME_RE.match(s.get("name") or "")
        if m:
            out.add(int(m.group(1)))
    return out


def choose_index(other_domain_xmls: Iterable[str], *, taken: Iterable[int] = (),
                 first: int = 0) -> int:
    """The lowest index >= ``first`` used by none of ``other_domain_xmls`` and not in ``taken``.

    Malformed documents among the others are skipped (they cannot hold a usable device).
    """
    used = set(taken)
    for x in other_domain_xmls:
        try:
            used |= used_indexes(x)
        except HostError:
            continue
    n = first
    while n in used:
        n += 1
    return n


# --- edits -----------------------------------------------------------------------------------


def _el(tag: str, attrib: Mapping[str, str] | None = None, text: str | None = None,
        nsmap: Mapping[str, str] | None = None) -> etree._Element:
    e = etree.Element(tag, attrib=dict(attrib or {}), nsmap=dict(nsmap) if nsmap else None)
    e.text = text
    return e


def _sub(parent: etree._Element, tag: str, attrib: Mapping[str, str] | None = None,
         text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, tag, attrib=dict(attrib or {}))
    e.text = text
    return e


def _do_detach(root: etree._Element) -> bool:
    meta = _orion_meta(root)
    if meta is None:
        return False
    st = _state(root)
    assert st is not None
    added = meta.find(_Q + "added")
    shm = added.get("shmem") if added is not None else st.shm_name
    fw_name = added.get("fwcfg") if added is not None else FWCFG_NAME
    for s in _shmems(root, shm or st.shm_name):
        _remove(s)
    for e in _fwcfg_entries(root, fw_name or FWCFG_NAME):
        sysinfo = e.getparent()
        _remove(e)
        if "sysinfo" in st.created and sysinfo is not None and not len(sysinfo):
            _remove(sysinfo)
    devices = root.find("devices")
    if "devices" in st.created and devices is not None and not len(devices):
        _remove(devices)
    md = meta.getparent()
    _remove(meta)
    if md is not None and "metadata" in st.created and not len(md):
        _remove(md)
    return True


def _do_attach(root: etree._Element, index: int, size_bytes: int,
               guest_config: Mapping[str, str], doorbell: str | None = None) -> None:
    name = shm_name(index)
    created: list[str] = []
    if _shmems(root, name):
        raise HostError(
            f"the domain already has a <shmem name='{name}'> that orion did not add; "
            "remove it or choose another --index"
        )
    if _fwcfg_entries(root, FWCFG_NAME):
        raise HostError(
            f"the domain already has a fw_cfg entry {FWCFG_NAME!r} that orion did not add; "
            "remove it"
        )

    devices = root.find("devices")
    if devices is None:
        devices = _el("devices")
        _insert(root, _pos_before(root, _DOMAIN_AFTER_DEVICES), devices)
        created.append("devices")
    shmem = _el("shmem", {"name": name})
    if doorbell is None:
        _sub(shmem, "model", {"type": MODEL_PLAIN})
        _sub(shmem, "size", {"unit": "M"}, str(size_bytes // _MIB))
    else:
        _sub(shmem, "model", {"type": MODEL_DOORBELL})
        _sub(shmem, "server", {"path": doorbell})
        _sub(shmem, "msi", {"vectors": str(DOORBELL_VECTORS), "ioeventfd": "on"})
    pos = _pos_after_last(devices, "shmem")
    if pos is None:
        pos = _pos_before(devices, _DEVICES_AFTER_SHMEM)
    _insert(devices, pos, shmem)

    sysinfo = next((s for s in root.findall("sysinfo") if s.get("type") == "fwcfg"), None)
    entry = _el("entry", {"name": FWCFG_NAME}, config_text(guest_config))
    if sysinfo is None:
        sysinfo = _el("sysinfo", {"type": "fwcfg"})
        pos = _pos_after_last(root, "sysinfo")
        _insert(root, pos if pos is not None else _pos_before(root, _DOMAIN_AFTER_SYSINFO), sysinfo)
        created.append("sysinfo")
    _insert(sysinfo, len(sysinfo), entry)

    md = root.find("metadata")
    if md is None:
        md = _el("metadata")
        _insert(root, _pos_before(root, _DOMAIN_AFTER_METADATA), md)
        created.append("metadata")
    meta = _el(_Q + "orion", {"version": METADATA_VERSION}, nsmap={NS_PREFIX: NS})
    dev = {"index": str(index), "size": str(size_bytes)}
    if doorbell is not None:
        dev.update(model=MODEL_DOORBELL, server=doorbell)
    _sub(meta, _Q + "device", dev)
    cfg = _sub(meta, _Q + "config")
    for k, v in guest_config.items():
        _sub(cfg, _Q + "entry", {"key": k}, v)
    _sub(meta, _Q + "added", {"shmem": name, "fwcfg": FWCFG_NAME, "created": " ".join(created)})
    _insert(md, len(md), meta)


def attach(domain_xml: str, index: int, size_bytes: int, guest_config: Mapping[str, str],
           *, doorbell: str | None = None) -> str:
    """Add Orion's shmem device, fw_cfg entry and metadata; return the new domain XML.

    *doorbell*: the ivshmem server socket (``transport.doorbell.socket_path(index)``) to attach
    the ``ivshmem-doorbell`` model instead of ``ivshmem-plain``; it must be an absolute path.

    Idempotent: if the domain is already attached with the same index, size and config and its
    devices are intact, the input is returned unchanged. Any other existing attachment is
    replaced (detach, then attach). Raises ConfigError for a bad size, index or config, and
    HostError for malformed XML or a user device that already uses the name orion would add.
    """
    if index < 0:
        raise ConfigError(f"shm index {index}: must be >= 0")
    check_size(size_bytes)
    _check_config(guest_config)
    if doorbell is not None and (not doorbell.startswith("/") or any(c in doorbell for c in "\n\r\0,")):
        raise ConfigError(f"doorbell socket {doorbell!r}: expected an absolute path without commas")
    root = parse_domain(domain_xml)
    st = _state(root)
    if (st is not None and st.intact and st.index == index and st.size_bytes == size_bytes
            and st.config == dict(guest_config) and st.doorbell == doorbell):
        return domain_xml
    _do_detach(root)
    _do_attach(root, index, size_bytes, guest_config, doorbell)
    return _serialize(root)


def detach(domain_xml: str) -> str:
    """Remove exactly what ``attach`` added; a domain without orion metadata is returned unchanged.

    Raises HostError for malformed XML.
    """
    root = parse_domain(domain_xml)
    if not _do_detach(root):
        return domain_xml
    return _serialize(root)


def dac_owner(domain_xml: str) -> tuple[str, str] | None:
    """``(user, group)`` of a static DAC ``<seclabel model='dac'><label>user:group</label>``.

    Only labels written into the definition count (the hook runs before libvirt generates
    dynamic ones). ``+uid`` numeric forms are returned as written.
    """
    root = parse_domain(domain_xml)
    for sl in root.findall("seclabel"):
        if sl.get("model") == "dac" and sl.get("type") == "static":
            label = (sl.findtext("label") or "").strip()
            user, sep, group = label.partition(":")
            if sep and user:
                return user, group
    return None


def shmem_size(domain_xml: str, name: str) -> int | None:
    """Bytes of ``<shmem name=name>``'s ``<size>`` (what QEMU maps), or None if absent (always
    for the doorbell model: QEMU maps the server's fd whole; the size is in orion's metadata)."""
    for s in _shmems(parse_domain(domain_xml), name):
        size = s.find("size")
        if size is not None:
            return parse_size(size)
    return None


def shmem_vectors(domain_xml: str, name: str) -> int | None:
    """``<msi vectors=…>`` of ``<shmem name=name>`` (the doorbell model's MSI-X vectors), or None."""
    for s in _shmems(parse_domain(domain_xml), name):
        msi = s.find("msi")
        if msi is not None and (v := msi.get("vectors", "")).isdigit():
            return int(v)
    return None


def normalize(xml: str) -> str:
    """Canonical form for comparing domain XML: C14N 2.0, insignificant whitespace dropped.

    Two documents that libvirt would parse to the same definition (quote style, attribute
    order, indentation) normalise to the same string.
    """
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(xml.encode(), parser)
    return etree.canonicalize(etree.tostring(root, encoding="unicode"), strip_text=True)
