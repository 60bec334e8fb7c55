"""install-client end to end: install into a throwaway root, run a cuda-python program (NVIDIA's
real cuda-bindings, copied from the venv, under the system's Python, which has neither numpy nor
click) and a C program against a real oriond through the native client, uninstall, and compare
file lists.

The "system" is the host's ``/`` seen through an overlay in a private mount namespace: read-only
with the ``--root`` tree on top, or writable with a tmpfs upper layer, where the self-contained
bundle installs to the real paths (/usr/lib/orion, /etc/orion, dist-packages) without touching
the host. Everything runs under timeouts; the namespace and its mounts vanish with its process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.nsutil import Lab, Oriond, orion_shm, overlay_chroot_argv, skip_reason, start_oriond

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = "/usr/bin/python3"
VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
PTX = ROOT / "orion_virt" / "kernels" / "test_kernels.ptx"

# vectorAdd with cuda-bindings and the standard library only (array + ctypes), as a guest runs it
PROGRAM = r'''
import array, ctypes, sys
from cuda.bindings import driver as cuda

def check(r):
    err, *vals = r
    if err != cuda.CUresult.CUDA_SUCCESS:
        sys.exit(f"CUDA error {err!r}")
    return vals[0] if len(vals) == 1 else vals

check(cuda.cuInit(0))
dev = check(cuda.cuDeviceGet(0))
ctx = check(cuda.cuCtxCreate(None, 0, dev))
mod = check(cuda.cuModuleLoadData(open(sys.argv[1], "rb").read() + b"\0"))
fn = check(cuda.cuModuleGetFunction(mod, b"vectorAdd"))
n = 10000
a = array.array("f", (i * 0.5 for i in range(n)))
b = array.array("f", (2.0 for _ in range(n)))
c = array.array("f", bytes(4 * n))
da, db, dc = (check(cuda.cuMemAlloc(4 * n)) for _ in range(3))
check(cuda.cuMemcpyHtoD(da, a, 4 * n))
check(cuda.cuMemcpyHtoD(db, b, 4 * n))
vals = [ctypes.c_uint64(int(da)), ctypes.c_uint64(int(db)), ctypes.c_uint64(int(dc)), ctypes.c_int(n)]
params = (ctypes.c_void_p * 4)(*[ctypes.addressof(v) for v in vals])
check(cuda.cuLaunchKernel(fn, (n + 255) // 256, 1, 1, 256, 1, 1, 0, 0, ctypes.addressof(params), 0))
check(cuda.cuMemcpyDtoH(c, dc, 4 * n))
check(cuda.cuCtxSynchronize())
bad = [i for i in range(n) if abs(c[i] - (a[i] + b[i])) > 1e-5]
print("mods:", sorted(m for m in ("numpy", "click", "lxml", "orion_virt") if m in sys.modules))
print("Test PASSED" if not bad else f"Test FAILED at {bad[:5]}")
'''


def _cuda_python(dest: Path) -> Path:
    """A directory holding a copy of the venv's ``cuda`` package (cuda-bindings, cuda-pathfinder),
    for PYTHONPATH: the system's Python has the same version as the venv's."""
    import cuda.bindings

    src = Path(cuda.bindings.__file__).resolve().parents[1]
    shutil.copytree(src, dest / "cuda", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _client_log(home: Path) -> str:
    return "".join(p.read_text() for p in sorted((home / ".orion" / "log").glob("client-*.log")))


def _files(root: Path) -> list[str]:
    """Every path under ``root`` (files, links, directories), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    why = skip_reason()
    if why:
        pytest.skip(why)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (the system's Python) is missing")
    v = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                       capture_output=True, text=True, timeout=30).stdout.strip()
    if v != str(sys.version_info[:2]):
        pytest.skip(f"{SYSTEM_PYTHON} is Python {v}, not the venv's {sys.version_info[:2]}: "
                    "the venv's cuda-bindings cannot be lent to it")
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.skip("the kernel has no overlayfs")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def oriond(lab: Lab) -> Oriond:
    shm = lab.path("shm")
    orion_shm(shm, 1)
    return start_oriond(lab, shm=shm)


def _env_line(lab: Lab, od: Oriond, **extra: str) -> str:
    """``env -i ...``: a clean login-like environment for a step inside the chroot."""
    home = lab.path("home")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
           "LANG": "C.UTF-8", "ORION_SERVER": od.addr, "ORION_SHM_PATH_BASE": str(od.shm), **extra}
    return "env -i " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def _run_ns(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"namespace script failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def test_root_install_runs_with_system_python_and_uninstalls_cleanly(lab: Lab, oriond: Oriond) -> None:
    """A --root install (no ldconfig): orion-run puts the native client first, and the real
    cuda-bindings under the system's Python runs on the vGPU over shm and over TCP."""
    _native_device_query(lab.tmp)  # builds the native client that install-client copies
    root = lab.path("root")
    # something that was there before and must survive: an orion-check that is not ours
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/orion-check").write_text("#!/bin/sh\necho not ours\n")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("guest\n")
    before = _files(root)

    r = subprocess.run([str(VENV_BIN / "install-client"), "-q", "--root", str(root),
                        "--python", SYSTEM_PYTHON], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Configuration file is generated to /etc/orion/client.conf" in out
    assert 'Please edit the "controller_addr" setting' in out
    assert "Orion vGPU client environment has been installed in /usr/lib/orion" in out
    assert "Kept the existing /usr/local/bin/orion-check" in out
    assert (root / "usr/local/bin/orion-check").read_text() == "#!/bin/sh\necho not ours\n"
    assert (root / "usr/lib/orion/lib/libcuda.so.1").is_file()
    assert not (root / "usr/lib/orion/orion_virt/client/driver.py").exists()
    assert not (root / "usr/lib/orion/orion_virt/server").exists()
    assert not (root / "usr/lib/orion/orion_virt/cli").exists()
    site = subprocess.run([SYSTEM_PYTHON, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    assert (root / site.lstrip("/") / "orion-client.pth").is_file()

    prog = lab.tmp / "prog.py"
    prog.write_text(PROGRAM)
    ptx = lab.tmp / "kernels.ptx"
    shutil.copy(PTX, ptx)
    pylib = _cuda_python(lab.path("pylib"))
    run = f"{SYSTEM_PYTHON} {prog} {ptx}"
    probe = f"{SYSTEM_PYTHON} -c 'import sys; print(sorted(m for m in sys.modules if m.startswith(\"orion\")))'"
    res = lab.tmp / "res"
    res.mkdir()
    homes = {k: lab.path(f"home-{k}") for k in ("shm", "tcp")}
    steps = [
        # ORION_VGPU set, no launcher: the .pth only puts /usr/lib/orion on sys.path
        f"{_env_line(lab, oriond, ORION_VGPU='1')} {probe} > {res}/pth.out 2>&1",
        # orion-run (shell wrapper, no click): the native client over the shm device
        f"{_env_line(lab, oriond, ORION_VGPU='1', ORION_GMEM='1024', PYTHONPATH=str(pylib), HOME=str(homes['shm']))}"
        f" orion-run {run} > {res}/shm.out 2>&1",
        # forced to TCP
        f"{_env_line(lab, oriond, ORION_VGPU='1', ORION_ENABLE_NET='1', PYTHONPATH=str(pylib), HOME=str(homes['tcp']))}"
        f" orion-run {run} > {res}/tcp.out 2>&1",
    ]
    _run_ns(overlay_chroot_argv(lab, steps, extra_lower=root))
    assert (res / "pth.out").read_text().strip() == "[]", (res / "pth.out").read_text()
    shm_out = (res / "shm.out").read_text()
    assert "Test PASSED" in shm_out, shm_out
    assert "mods: []" in shm_out, "the client pulled in a third-party or an Orion Python module"
    assert "VirtaiTech Resource" in shm_out and "Client exits with allocation ID" in shm_out
    assert f"transport: shm device {oriond.shm}" in _client_log(homes["shm"]), _client_log(homes["shm"])
    tcp_out = (res / "tcp.out").read_text()
    assert "Test PASSED" in tcp_out, tcp_out
    assert f"transport: TCP to {oriond.addr}" in _client_log(homes["tcp"]), _client_log(homes["tcp"])

    r = subprocess.run([str(VENV_BIN / "install-client"), "--uninstall", "--root", str(root),
                        "--python", SYSTEM_PYTHON], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Orion vGPU client environment has been removed from /usr/lib/orion" in r.stdout
    assert _files(root) == before


def _native_device_query(dest: Path) -> Path:
    """The native client built (make native) and the C device query linked against it."""
    from tests.integration.test_native_client import BUILD, SOURCES, cuda_include

    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    inc = cuda_include()
    assert inc is not None
    exe = dest / "deviceQuery"
    c = subprocess.run(["gcc", "-std=c11", "-O1", f"-I{inc}", f"-I{SOURCES}", str(SOURCES / "deviceQuery.c"),
                        f"-L{BUILD}", "-lcuda", "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def test_bundle_installs_to_real_paths_asks_first_and_uninstalls(lab: Lab, oriond: Oriond) -> None:
    """The seeds' flow in a guest: the bundle installs the native libcuda.so.1 (with ldconfig),
    then an unmodified C program and a cuda-bindings program run on the vGPU with no launcher and
    no LD_LIBRARY_PATH."""
    device_query = _native_device_query(lab.tmp)
    bundle = lab.tmp / "install-client"
    r = subprocess.run([str(VENV_BIN / "install-client"), "--bundle", str(bundle)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    prog = lab.tmp / "prog.py"
    prog.write_text(PROGRAM)
    ptx = lab.tmp / "kernels.ptx"
    shutil.copy(PTX, ptx)
    pylib = _cuda_python(lab.path("pylib"))
    home = lab.path("home")
    res = lab.tmp / "res"
    res.mkdir()
    listing = (r'find "$UPPER" -mindepth 1 \( -type f -o -type l -o -type c \) -printf "/%P\n" '
               r'| grep -v "^/usr/lib/python3[^/]*/.*__pycache__/" '
               r'| grep -v "^/etc/ld.so.cache\|^/var/cache/ldconfig/" | sort')  # ldconfig's own state
    steps = [
        f"@host {listing} > {res}/upper-before.txt",
        # the seeds' session: answer the question with n (nothing happens), then with y
        f"echo n | {SYSTEM_PYTHON} {bundle} > {res}/no.out 2>&1 || echo rc=$? >> {res}/no.out",
        f"@host {listing} > {res}/upper-after-no.txt",
        f"echo y | {SYSTEM_PYTHON} {bundle} > {res}/install.out 2>&1",
        f"@host {listing} > {res}/upper-installed.txt",
        f"{_env_line(lab, oriond, ORION_VGPU='1', PYTHONPATH=str(pylib))} {SYSTEM_PYTHON} {prog} {ptx}"
        f" > {res}/run.out 2>&1",
        f"{_env_line(lab, oriond, ORION_VGPU='1')} {device_query} > {res}/native.out 2>&1"
        f" || echo rc=$? >> {res}/native.out",
        # as root, so Python writes __pycache__ into /usr/lib/orion: uninstall must remove it
        f"{_env_line(lab, oriond)} orion-check runtime client > {res}/check.out 2>&1 || echo rc=$? >> {res}/check.out",
        f"@host {listing} > {res}/upper-ran.txt",
        f"{SYSTEM_PYTHON} {bundle} --uninstall > {res}/uninstall.out 2>&1",
        f"@host {listing} > {res}/upper-after.txt",
    ]
    _run_ns(overlay_chroot_argv(lab, steps, writable=True))
    no = (res / "no.out").read_text()
    assert "Orion client environment will be installed to /usr/lib/orion" in no
    assert "Do you want to continue [n/y] ?n\nInstallation is cancelled." in no and "rc=1" in no
    assert (res / "upper-after-no.txt").read_text() == (res / "upper-before.txt").read_text()
    out = (res / "install.out").read_text()
    assert out.startswith("Orion client environment will be installed to /usr/lib/orion\n"
                          "Do you want to continue [n/y] ?y\n\n"
                          "Configuration file is generated to /etc/orion/client.conf\n"), out
    assert "Configuration file is generated to /etc/orion/client.conf" in out
    assert "Orion vGPU client environment has been installed in /usr/lib/orion" in out
    installed = (res / "upper-installed.txt").read_text().splitlines()
    assert "/etc/orion/client.conf" in installed
    assert "/usr/local/bin/orion-run" in installed and "/usr/local/bin/orion-check" in installed
    assert any(p.endswith("dist-packages/orion-client.pth") for p in installed), installed
    run = (res / "run.out").read_text()
    assert "Test PASSED" in run and "mods: []" in run, run
    assert f"transport: shm device {oriond.shm}" in _client_log(home), _client_log(home)
    assert "/usr/lib/orion/lib/libcuda.so.1" in installed and "/etc/ld.so.conf.d/orion.conf" in installed
    native = (res / "native.out").read_text()
    assert "Detected 1 CUDA Capable device(s)" in native and "Result = PASS" in native, native
    ran = (res / "upper-ran.txt").read_text()
    assert "/usr/lib/orion/orion_virt/check/__pycache__/" in ran, "Python wrote no bytecode cache?"
    check = (res / "check.out").read_text()
    assert "Orion client is installed in /usr/lib/orion" in check, check
    assert ("The native client /usr/lib/orion/lib/libcuda.so.1 is the system's libcuda.so.1: "
            "programs reach Orion vGPUs with no launcher") in check, check
    assert "Transport: shared memory (shm)" in check, check
    assert "Orion Controller address is not set" in check, check
    assert "Orion vGPU client environment has been removed from /usr/lib/orion" in (res / "uninstall.out").read_text()
    assert (res / "upper-after.txt").read_text() == (res / "upper-before.txt").read_text()
