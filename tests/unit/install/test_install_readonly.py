"""install-client on a read-only root (the VM tests' 9p root): a clear error naming the path and
what to do, exit status 2. A real read-only tmpfs in a private mount namespace (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_read_only_root_is_said(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a read-only tmpfs in a private mount namespace")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {ro} && cd {ROOT} && "
              f"{sys.executable} -m orion_virt.installer -q --root {ro} --python {sys.executable}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"install-client: {ro}/usr: read-only file system." in r.stdout, r.stdout + r.stderr
    assert "/usr/lib/orion (-d PATH)" in r.stdout and "make the root writable" in r.stdout
