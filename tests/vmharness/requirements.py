"""What the VM tests need on the host, and why they would be skipped."""
from __future__ import annotations

import importlib.util
import os
import shutil

#: Debian packages (installed by scripts/install-test-deps.sh with --no-install-recommends).
APT_PACKAGES: tuple[str, ...] = (
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
    "busybox-static", "cpio", "libvirt-dev", "pkg-config", "debootstrap",
)


def vm_skip_reason(need_build_tools: bool = True) -> str | None:
    """None when a guest can be booted here, else the reason to skip.

    *need_build_tools*: also require debootstrap/busybox/apt-get (only needed to build the image).
    """
    if os.geteuid() != 0:
        return "VM tests need root (libvirtd, /etc/libvirt, /dev/shm ivshmem files)"
    for binary in ("qemu-system-x86_64", "libvirtd", "virtlogd"):
        if shutil.which(binary) is None and not os.path.exists(f"/usr/sbin/{binary}"):
            return f"{binary} is missing (run scripts/install-test-deps.sh)"
    if need_build_tools:
        for binary in ("debootstrap", "apt-get", "dpkg-deb"):
            if shutil.which(binary) is None and not os.path.exists(f"/usr/sbin/{binary}"):
                return f"{binary} is missing (run scripts/install-test-deps.sh)"
        if not os.path.exists("/bin/busybox"):
            return "/bin/busybox is missing (apt-get install busybox-static)"
    if importlib.util.find_spec("libvirt") is None:
        return "libvirt-python is not installed in this environment (pip install libvirt-python)"
    if not os.path.isdir("/dev/shm"):
        return "/dev/shm is missing"
    return None
