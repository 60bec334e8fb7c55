"""Inside a VM: the ivshmem-plain PCI device (vendor 0x1af4, device 0x1110) whose BAR2 is the
host's /dev/shm/orionsockN. Standard library only (this runs in guests).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DeviceError
from ..transport.shmdev import Device

VENDOR = "0x1af4"
DEVICE = "0x1110"


def sysfs_root() -> Path:
    return Path(os.environ.get("ORION_SYSFS_PCI", "/sys/bus/pci/devices"))


def find_devices(root: Path | None = None) -> list[Path]:
    """PCI device directories of ivshmem devices, sorted by address."""
    root = root or sysfs_root()
    out = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for d in entries:
        try:
            if (d / "vendor").read_text().strip() == VENDOR and (d / "device").read_text().strip() == DEVICE:
                out.append(d)
        except OSError:
            continue
    return out


def lock_dir() -> Path:
    for cand in (Path("/run/orion"), Path("/tmp/orion-locks")):
        try:
            cand.mkdir(mode=0o1777, parents=True, exist_ok=True)
            os.chmod(cand, 0o1777)
            return cand
        except OSError:
            continue
    raise DeviceError("cannot create a lock directory in /run/orion or /tmp")


def open_device(pci: Path) -> Device:
    """Enable the PCI device and map its BAR2 as an Orion device (claims lock in a guest-local file)."""
    try:
        (pci / "enable").write_text("1")
    except OSError:
        pass
    bar = pci / "resource2_wc"
    if not bar.exists():
        bar = pci / "resource2"
    if not bar.exists():
        raise DeviceError(f"{pci}: ivshmem device has no BAR2 (resource2)")
    lock = lock_dir() / f"ivshmem-{pci.name.replace(':', '_')}.lock"
    return Device(bar, lock_path=str(lock))
