"""pytest fixtures for the VM tests; import them into a conftest with ``from ... import *``.

Fixtures (all skip, with the reason, where a guest cannot be booted):

* ``vm_host`` (session): skips unless root / qemu / libvirtd / libvirt-python are there.
* ``guest_image`` (session) -> GuestImage: built once, cached across sessions.
* ``libvirt_hook`` (session) -> str | Path | None: hook installed at /etc/libvirt/hooks/qemu
  before libvirtd starts. None here; override it in a conftest to install the product's hook.
* ``libvirt_daemon`` (session) -> LibvirtDaemon: private virtlogd + libvirtd, stopped at the end.
* ``libvirt_conn`` (function) -> libvirt.virConnect to it; leftover ``orion-test-*`` domains are
  destroyed/undefined after each test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .image import GuestImage, cached_guest_image, ensure_guest_image
from .libvirtd import ForeignDaemonError, LibvirtDaemon
from .requirements import vm_skip_reason

__all__ = ["vm_host", "guest_image", "libvirt_hook", "libvirt_daemon", "libvirt_conn"]


@pytest.fixture(scope="session")
def vm_host() -> None:
    """Skip unless this host can boot a test guest."""
    reason = vm_skip_reason(need_build_tools=cached_guest_image() is None)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def guest_image(vm_host: None) -> GuestImage:
    """The cached guest (kernel, initramfs, 9p rootfs); built on first use (~45 s)."""
    return ensure_guest_image()


@pytest.fixture(scope="session")
def libvirt_hook() -> str | Path | None:
    """Hook script (path or text) for /etc/libvirt/hooks/qemu; override to install one."""
    return None


@pytest.fixture(scope="session")
def libvirt_daemon(vm_host: None, libvirt_hook: str | Path | None) -> Iterator[LibvirtDaemon]:
    """A private virtlogd + libvirtd for the session (config files restored afterwards)."""
    d = LibvirtDaemon(libvirt_hook)
    try:
        d.start()
    except ForeignDaemonError as e:
        pytest.skip(str(e))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def libvirt_conn(libvirt_daemon: LibvirtDaemon) -> Iterator[Any]:
    """A libvirt connection to the test daemon; test domains are cleaned up afterwards."""
    conn = libvirt_daemon.connect()
    try:
        yield conn
    finally:
        conn.close()
        libvirt_daemon.destroy_test_domains()
