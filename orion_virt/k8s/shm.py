"""Each container's own shared-memory device: created at Allocate, removed once the container is
gone. Created exactly as ``orion-shm -i N`` does (``transport.shmdev.format_device`` in oriond's
``shm_path_base``, where oriond picks it up), recorded in a state file so a restarted plugin
still knows its devices.

How "the container is gone" is detected (the kubelet tells a device plugin nothing when a
container ends), by three signals, each sufficient:

1. **A slot id handed out again.** The kubelet gives a slot id to one container at a time and
   frees it only when that container's Pod is finished, so an ``Allocate`` naming a slot id of a
   recorded device proves that device's container is gone: it is scrubbed and removed first.
2. **Unmounted.** Every ``sweep`` reads ``/proc/<pid>/mountinfo`` of all processes (the plugin
   runs with ``hostPID``) for bind mounts of the device file (same filesystem ``major:minor``
   and the file's path inside that filesystem). A device that was seen mounted and has been
   mounted nowhere for ``grace`` seconds, with no channel held by a live process, is removed.
   A restarting container (same Pod: the kubelet reuses the Allocate answer) gets its device
   back through ``PreStartContainer`` -> :meth:`DeviceBook.ensure`, which recreates it.
3. **Never used.** A device never seen mounted within ``unused_timeout`` (image pulls can be
   slow: default one hour) is removed too.

A device with a channel claimed by a live process is never removed (``orion-shm -r`` refuses
such a device the same way).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import DeviceError
from ..transport.shmdev import CLAIMED, SERVING, Device, format_device, scrub_device

log = logging.getLogger("orion.k8s.shm")


@dataclass
class Record:
    path: str
    slot_ids: list[str]
    created_at: float
    seen_mounted: bool = False
    unmounted_since: float | None = None


@dataclass
class DeviceBook:
    """The plugin's devices: ``base``/orionsock<N> for N from ``first_index`` up."""

    base: Path
    state_file: Path
    size: int
    mode: int = 0o666
    first_index: int = 100
    grace: float = 30.0
    unused_timeout: float = 3600.0
    proc: Path = Path("/proc")
    clock: Callable[[], float] = time.time
    records: dict[str, Record] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.state_file = Path(self.state_file)
        self._load()

    # -- state -------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = json.loads(self.state_file.read_text())
            self.records = {r["path"]: Record(**r) for r in raw.get("devices", [])}
        except FileNotFoundError:
            self.records = {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("state file %s unreadable (%s): starting with no recorded devices", self.state_file, e)
            self.records = {}

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"devices": [asdict(r) for r in self.records.values()]}, indent=1))
        os.replace(tmp, self.state_file)

    # -- allocate / ensure / remove ------------------------------------------------------------

    def _free_index(self) -> int:
        taken = set(self.records)
        i = self.first_index
        while str(self.base / f"orionsock{i}") in taken or (self.base / f"orionsock{i}").exists():
            i += 1
        return i

    def allocate(self, slot_ids: Sequence[str]) -> Path:
        """A fresh device for a container holding ``slot_ids``; devices of earlier holders of any
        of these ids are removed first (signal 1)."""
        ids = set(slot_ids)
        for r in list(self.records.values()):
            if ids & set(r.slot_ids):
                log.info("slot(s) %s handed out again: the container of %s is gone; removing it",
                         ",".join(sorted(ids & set(r.slot_ids))), r.path)
                self.remove(r.path, why="its slots were allocated again")
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / f"orionsock{self._free_index()}"
        format_device(path, self.size, mode=self.mode)
        self.records[str(path)] = Record(str(path), sorted(ids), self.clock())
        self._save()
        log.info("created %s (%d MiB) for slot(s) %s", path, self.size >> 20, ",".join(sorted(ids)))
        return path

    def ensure(self, slot_ids: Sequence[str]) -> Path | None:
        """PreStartContainer: the recorded device of exactly these slots exists again (a container
        that restarts mounts the same path); None when no device is recorded for them."""
        ids = sorted(set(slot_ids))
        for r in self.records.values():
            if r.slot_ids == ids:
                p = Path(r.path)
                if not p.exists():
                    format_device(p, self.size, mode=self.mode)
                    log.info("recreated %s for a restarting container of slot(s) %s", p, ",".join(ids))
                r.unmounted_since = None
                self._save()
                return p
        return None

    def remove(self, path: str, why: str) -> bool:
        """Scrub and unlink ``path`` unless a live process holds one of its channels."""
        busy = _busy(Path(path))
        if busy:
            log.info("keeping %s (%s) although %s", path, busy, why)
            return False
        scrub_device(Path(path))
        self.records.pop(path, None)
        self._save()
        log.info("removed %s: %s", path, why)
        return True

    # -- sweep ---------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Signals 2 and 3; returns the paths removed."""
        if not self.records:
            return []
        mounted = mounted_paths(self.records, self.proc)
        now = self.clock()
        gone = []
        for r in list(self.records.values()):
            if r.path in mounted:
                r.seen_mounted, r.unmounted_since = True, None
                continue
            if r.seen_mounted:
                r.unmounted_since = r.unmounted_since or now
                if now - r.unmounted_since >= self.grace and \
                        self.remove(r.path, f"no container has mounted it for {now - r.unmounted_since:.0f} s"):
                    gone.append(r.path)
            elif now - r.created_at >= self.unused_timeout and \
                    self.remove(r.path, f"no container mounted it within {self.unused_timeout:.0f} s"):
                gone.append(r.path)
        self._save()
        return gone


def _busy(path: Path) -> str | None:
    try:
        dev = Device(path)
    except (DeviceError, OSError):
        return None
    try:
        for i in range(dev.layout.nchannels):
            if dev.state(i) in (CLAIMED, SERVING) and dev.owner_alive(i):
                return f"channel {i} is held by a live process"
        return None
    finally:
        dev.close()


def _mountinfo(path: Path) -> Iterable[tuple[str, str, str]]:
    """(major:minor, root, mount point) of each line of a mountinfo file."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5:
            out.append((f[2], _unescape(f[3]), _unescape(f[4])))
    return out


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fs_key(path: Path, proc: Path = Path("/proc")) -> tuple[str, str] | None:
    """``(major:minor, path inside its filesystem)`` of ``path``, as other mount namespaces'
    mountinfo name a bind mount of it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    devno = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    p = str(Path(path).resolve())
    best: tuple[int, str] | None = None
    for dev, root, point in _mountinfo(proc / "self" / "mountinfo"):
        if dev != devno:
            continue
        if p == point or p.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > best[0]:
                rel = p[len(point.rstrip("/")):]
                best = (len(point), (root.rstrip("/") + rel) or "/")
    return (devno, best[1]) if best else None


def mounted_paths(paths: Iterable[str], proc: Path = Path("/proc")) -> set[str]:
    """Those of ``paths`` that some process (other than this one's own namespace's plain view)
    has bind-mounted: a mountinfo entry with the file's filesystem and path as its root."""
    keys = {}
    for p in paths:
        k = fs_key(Path(p), proc)
        if k is not None:
            keys[k] = p
    if not keys:
        return set()
    found: set[str] = set()
    seen_ns: set[int] = set()
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            ns = os.stat(d / "ns" / "mnt").st_ino
        except OSError:
            continue
        if ns in seen_ns:
            continue
        seen_ns.add(ns)
        for dev, root, _point in _mountinfo(d / "mountinfo"):
            hit = keys.get((dev, root))
            if hit is not None:
                found.add(hit)
        if len(found) == len(keys):
            break
    return found
