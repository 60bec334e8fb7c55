"""Harness for booting a real QEMU (TCG) guest under a private libvirtd in the integration tests.

* image.ensure_guest_image() -> GuestImage   (cached Debian kernel + busybox initramfs + 9p rootfs)
* libvirtd.LibvirtDaemon(hook=...)            (private virtlogd + libvirtd, restored on stop)
* domain.run_guest(conn, name, script, ...)   (boot, run a shell script, collect its output)
* fixtures: pytest fixtures (guest_image, libvirt_daemon, libvirt_conn, ...)
See docs/testing-vms.md.
"""
from .domain import Guest, GuestError, GuestResult, define_guest, domain_xml, parse_console, run_guest
from .image import GuestImage, ensure_guest_image, lend_cuda_python
from .libvirtd import DOMAIN_PREFIX, ForeignDaemonError, LibvirtDaemon, libvirt_daemon
from .requirements import APT_PACKAGES, vm_skip_reason

__all__ = [
    "APT_PACKAGES", "DOMAIN_PREFIX", "ForeignDaemonError", "Guest", "GuestError", "GuestImage",
    "GuestResult", "LibvirtDaemon", "define_guest", "domain_xml", "ensure_guest_image", "lend_cuda_python",
    "libvirt_daemon", "parse_console", "run_guest", "vm_skip_reason",
]
