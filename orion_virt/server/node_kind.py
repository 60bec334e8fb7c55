"""What this oriond runs on, as the controller's pool shows it: a plain host, a VM or a container.

Read from the kernel's own markers, no external tool: a container by the files its runtime
leaves (``/.dockerenv``, ``/run/.containerenv``) or the ``container`` variable systemd and
podman give PID 1 (``/proc/1/environ``, readable as root only); a VM by the CPU's
``hypervisor`` flag in ``/proc/cpuinfo``; otherwise a host. A marker that cannot be read counts
as absent (it is only a label, never a decision).
"""

from __future__ import annotations

from pathlib import Path

from ..controller.model import NODE_KINDS


def detect(root: Path = Path("/")) -> str:
    """One of ``NODE_KINDS``: ``container`` before ``vm`` (a container in a VM is a container)."""
    if (root / ".dockerenv").exists() or (root / "run/.containerenv").exists():
        return "container"
    try:
        if any(v.startswith(b"container=") for v in
               (root / "proc/1/environ").read_bytes().split(b"\0")):
            return "container"
    except OSError:
        pass
    try:
        flags = next((ln for ln in (root / "proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    kind = "vm" if " hypervisor" in flags else "host"
    assert kind in NODE_KINDS
    return kind
