"""Integration-test fixtures. The VM fixtures come from tests/vmharness (see docs/testing-vms.md)."""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.vmharness.fixtures import (  # noqa: E402,F401
    guest_image,
    libvirt_conn,
    libvirt_daemon,
    libvirt_hook,
    vm_host,
)
