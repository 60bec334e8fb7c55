"""Smoke test of the VM harness: a real QEMU (TCG) guest under libvirtd with an ivshmem-plain device.

Host -> guest: 64 random bytes at offset 4096 of /dev/shm/orionsock91 are read by the guest
through BAR2 (``resource2``); guest -> host: the guest writes a reply at offset 8192. Also checks
the guest's Python (numpy), the read-only 9p share of the source tree at /opt/orion, and that a
libvirt hook installed while libvirtd runs (SIGHUP) is called.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.vmharness import GuestImage, LibvirtDaemon, run_guest

pytestmark = [pytest.mark.integration, pytest.mark.vm]

if os.geteuid() != 0:
    pytest.skip("VM tests need root", allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is missing (scripts/install-test-deps.sh)", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHM_NAME = "orionsock91"
SHM_SIZE_MIB = 4

GUEST_SCRIPT = r"""set -e
python3 - <<'EOF'
import glob, hashlib, mmap, os
devs = []
for d in sorted(glob.glob('/sys/bus/pci/devices/*')):
    with open(d + '/vendor') as v, open(d + '/device') as p:
        if v.read().strip() == '0x1af4' and p.read().strip() == '0x1110':
            devs.append(d)
print('IVSHMEM', len(devs), os.path.basename(devs[0]))
d = devs[0]
with open(d + '/enable', 'w') as f:
    f.write('1')
fd = os.open(d + '/resource2', os.O_RDWR | os.O_SYNC)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
print('SIZE', size)
print('READ', m[4096:4096 + 64].hex())
m[8192:8192 + 64] = bytes.fromhex('@REPLY@')
m.close()
os.close(fd)
import numpy
print('NUMPY', numpy.__version__, int(numpy.arange(10).sum()))
with open('/opt/orion/pyproject.toml', 'rb') as f:
    print('PYPROJECT', hashlib.sha256(f.read()).hexdigest())
EOF
echo "STDERR-CHECK" >&2
"""

HOOK = """#!/bin/sh
echo "$*" >> @LOG@
"""


def _fields(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, *rest = line.split()
        out[key] = rest
    return out


def test_vm_ivshmem_both_ways(libvirt_conn, libvirt_daemon: LibvirtDaemon,
                              guest_image: GuestImage, tmp_path: Path) -> None:
    shm = Path("/dev/shm") / SHM_NAME
    pattern, reply = os.urandom(64), os.urandom(64)
    hook_log = tmp_path / "hook.log"
    libvirt_daemon.install_hook(HOOK.replace("@LOG@", str(hook_log)))
    try:
        with open(shm, "wb") as f:
            f.truncate(SHM_SIZE_MIB << 20)
            f.seek(4096)
            f.write(pattern)
        shm.chmod(0o666)
        res = run_guest(libvirt_conn, "orion-test-smoke", GUEST_SCRIPT.replace("@REPLY@", reply.hex()),
                        shmem=(SHM_NAME, SHM_SIZE_MIB), timeout=240, img=guest_image)
        print(f"guest: first output {res.seconds_to_first_output}s, script started "
              f"{res.seconds_to_command}s, total {res.seconds_total}s")
        assert res.exit_code == 0, res.stderr
        assert res.stderr == "STDERR-CHECK\n"
        f = _fields(res.stdout)
        assert f["IVSHMEM"][0] == "1"
        assert int(f["SIZE"][0]) == SHM_SIZE_MIB << 20
        assert f["READ"][0] == pattern.hex()                       # host -> guest
        with open(shm, "rb") as fh:
            fh.seek(8192)
            assert fh.read(64) == reply                            # guest -> host
        assert f["NUMPY"][1] == "45"
        assert f["PYPROJECT"][0] == hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
        calls = hook_log.read_text().splitlines()
        ops = [c.split()[1:3] for c in calls if c.startswith("orion-test-smoke ")]
        assert ["prepare", "begin"] in ops and ["release", "end"] in ops, calls
        assert "orion-test-smoke" not in [d.name() for d in libvirt_conn.listAllDomains()]
    finally:
        libvirt_daemon.restore_hook()
        shm.unlink(missing_ok=True)

