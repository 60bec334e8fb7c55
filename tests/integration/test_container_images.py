"""The four container images (deploy/images/*.Dockerfile), built by scripts/build-images.sh, and
run as the manifests of deploy/k8s run them, without a container runtime.

crun cannot start containers on these machines (docs/containers.md), so a "container" here is a
buildah working container of the image (``buildah from``: a copy-on-write root, the image is left
unchanged) whose root is mounted (``buildah mount``) and entered with ``chroot`` in a fresh mount
namespace (plus PID and IPC namespaces where the Pod has no ``hostPID``/``hostIPC``), with the
image's ``Env``, ``Entrypoint`` and ``Cmd``, a private ``/dev`` and ``/dev/shm``, and the Pod's
hostPath volumes bound at their container paths. The network namespace is the host's
(``hostNetwork``), so everything talks on loopback.

The node is a directory tree under the test's ``tmp`` (``NodeTree``): its ``/dev/shm``,
``/etc/orion``, ``/usr/lib/orion``, ``/var/lib/orion`` and the kubelet's device-plugin directory,
where a stub kubelet (a grpcio Registration server) listens.

The first test builds the images (about 6½ minutes on 2 cores from nothing, under a minute of it the
debootstrap; seconds when their inputs are unchanged); it skips only where the build cannot run
at all (not root, buildah or debootstrap missing) and fails when a build fails.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import shlex
import shutil
import subprocess
import textwrap
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

from orion_virt.config import load_server_config
from orion_virt.launch import free_port, port_open
from tests.integration.test_controller_e2e import wait_for
from tests.nsutil import skip_reason, stop_pid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("oriond", "controller", "device-plugin", "client")
TAG = os.environ.get("ORION_IMAGE_TAG", "0.1.0")
CONTAINER_PREFIX = "orion-test-"


def _why_not() -> str | None:
    """Why the images cannot be built or entered here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, buildah's storage, chroot and namespaces)"
    for tool, pkg in (("buildah", "buildah"), ("debootstrap", "debootstrap"), ("unshare", "util-linux"),
                      ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {pkg}; scripts/install-test-deps.sh installs it)"
    return None


_NS: list[str | None] = []


def _ns_reason() -> str | None:
    """Why mount/IPC/PID namespaces cannot be made here (probed once), or None."""
    if not _NS:
        _NS.append(skip_reason())
    return _NS[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every image built (or kept, when its inputs hash matches): name -> reference."""
    why = _why_not()
    if why:
        pytest.skip(why)
    log = tmp_path_factory.mktemp("build") / "build-images.log"
    start = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(["sh", str(ROOT / "scripts" / "build-images.sh"), *IMAGES], stdout=f,
                           stderr=subprocess.STDOUT, timeout=1700, cwd=ROOT)
    text = log.read_text(errors="replace")
    assert p.returncode == 0, f"scripts/build-images.sh failed (exit {p.returncode}); {log}:\n{text[-6000:]}"
    print(f"build-images.sh: {time.monotonic() - start:.0f} s")
    return {name: f"localhost/orion-virt/{name}:{TAG}" for name in IMAGES}


def _buildah(*args: str, timeout: float = 120) -> str:
    p = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout.strip()


def image_config(ref: str) -> dict[str, Any]:
    """The image's OCI config (Env, Entrypoint, Cmd, Labels, ...)."""
    conf = json.loads(_buildah("inspect", "--type", "image", ref))["OCIv1"]["config"]
    assert isinstance(conf, dict)
    return conf


@dataclass(frozen=True)
class Bind:
    """A hostPath volume: ``src`` on this machine at ``dest`` in the container."""

    src: Path
    dest: str
    ro: bool = False


class Container:
    """A buildah working container of ``ref``, its root mounted at ``root``.

    ``argv`` gives the command line that runs a command in it; ``close`` unmounts and removes
    it (the image is unchanged). Each run is its own mount namespace, private propagation, so
    nothing it mounts is seen by this machine.
    """

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.name = f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:10]}"
        self.config = image_config(ref)
        _buildah("from", "--pull-never", "--name", self.name, ref)
        try:
            self.root = Path(_buildah("mount", self.name))
        except AssertionError:
            _buildah("rm", self.name)
            raise

    def close(self) -> None:
        try:
            _buildah("umount", self.name)
        finally:
            _buildah("rm", self.name)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The image's Env, HOME=/root, then ``extra`` (as a Pod's env overrides the image's)."""
        env = dict(e.split("=", 1) for e in self.config.get("Env") or [])
        env.setdefault("HOME", "/root")
        env.update(extra or {})
        return env

    def command(self, args: Sequence[str] | None = None) -> list[str]:
        """Entrypoint + ``args`` (default: the image's Cmd), as ``kubectl``'s ``args:`` does."""
        cmd = list(args) if args is not None else list(self.config.get("Cmd") or [])
        return list(self.config.get("Entrypoint") or []) + cmd

    def argv(self, cmd: Sequence[str], *, env: Mapping[str, str], binds: Sequence[Bind] = (),
             host_pid: bool = False, host_ipc: bool = False) -> list[str]:
        """``cmd`` chroot'd into the root with exactly ``env``: /proc (the host's with
        ``host_pid``), a /dev of null, zero, full, random, urandom, a private /dev/shm tmpfs
        (the node's with ``host_ipc``, as Kubernetes mounts it then), /tmp, then ``binds``.
        Without ``host_pid`` the command is PID 1 of its own PID namespace (``unshare --fork
        --kill-child``: killing the returned process kills it); with it, the returned process
        execs into the command."""
        why = _ns_reason()
        if why:
            pytest.skip(f"a container needs its own namespaces: {why}")
        q = shlex.quote
        r = str(self.root)
        lines = ["set -eu"]
        if host_pid:
            lines.append(f"mount --rbind /proc {q(r + '/proc')}")
        else:
            lines.append(f"mount -t proc proc {q(r + '/proc')}")
        lines.append(f"mount -t tmpfs -o mode=755,size=1m orion-ct-dev {q(r + '/dev')}")
        for d in ("null", "zero", "full", "random", "urandom"):
            lines.append(f"touch {q(f'{r}/dev/{d}')} && mount --bind /dev/{d} {q(f'{r}/dev/{d}')}")
        lines.append(f"mkdir {q(r + '/dev/shm')}")
        if not host_ipc:
            lines.append(f"mount -t tmpfs -o mode=1777,size=64m orion-ct-shm {q(r + '/dev/shm')}")
        lines.append(f"mount -t tmpfs -o mode=1777,size=64m orion-ct-tmp {q(r + '/tmp')}")
        for b in binds:
            dest = q(r + b.dest)
            if b.src.is_dir():
                lines.append(f"mkdir -p {dest}")
            else:
                lines.append(f'mkdir -p "$(dirname {dest})" && touch {dest}')
            lines.append(f"mount --bind {q(str(b.src))} {dest}")
            if b.ro:
                lines.append(f"mount -o remount,bind,ro {dest}")
        envs = " ".join(q(f"{k}={v}") for k, v in env.items())
        lines.append(f'exec chroot {q(r)} /usr/bin/env -i {envs} "$@"')
        ns = ["unshare", "--mount", "--propagation", "private"]
        if not host_ipc:
            ns.append("--ipc")
        if not host_pid:
            ns += ["--pid", "--fork", "--kill-child"]
        return [*ns, "sh", "-c", "\n".join(lines), "orion-container", *cmd]

    def run(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, binds: Sequence[Bind] = (),
            timeout: float = 120, host_ipc: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to its end (killed, with its PID namespace, after ``timeout``)."""
        argv = self.argv(cmd, env=self.env() if env is None else env, binds=binds, host_ipc=host_ipc)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.fixture
def container(images: dict[str, str]) -> Iterator[Any]:
    """``container(name)``: a fresh working container of image ``name``; all removed at the end."""
    made: list[Container] = []

    def make(name: str) -> Container:
        c = Container(images[name])
        made.append(c)
        return c

    try:
        yield make
    finally:
        errors = []
        for c in made:
            try:
                c.close()
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, errors


# -- contents ----------------------------------------------------------------------------------


def _ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_each_dockerfile_has_the_context_ignore_file() -> None:
    """docker build (BuildKit) takes <Dockerfile>.dockerignore, buildah bud the --ignorefile
    build-images.sh names: both are images.dockerignore."""
    want = (ROOT / "deploy/images/images.dockerignore").read_text()
    assert ".venv" in want.splitlines() and "build" in want.splitlines()
    for name in IMAGES:
        f = ROOT / "deploy/images" / f"{name}.Dockerfile.dockerignore"
        assert f.read_text() == want, f"{f} differs from deploy/images/images.dockerignore"


def test_a_second_build_keeps_the_current_images(images: dict[str, str]) -> None:
    """Each image carries the hash of its inputs; build-images.sh again rebuilds none."""
    p = subprocess.run(["sh", str(ROOT / "scripts" / "build-images.sh"), *IMAGES], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    for name, ref in images.items():
        label = (image_config(ref).get("Labels") or {}).get("org.orion-virt.inputs", "")
        assert len(label) == 16, (ref, label)
        assert f"{name}: {ref} is current (inputs {label}), kept" in p.stderr, p.stderr[-4000:]
    assert "buildah bud" not in p.stderr


def test_oriond_image_contents(container: Any) -> None:
    c = container("oriond")
    assert c.command() == ["/usr/local/bin/entrypoint.sh"]
    assert c.env()["PATH"].startswith("/opt/orion/bin:")
    assert c.env()["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    for f in ("entrypoint.sh", "orion-server-entrypoint.sh"):
        st = (c.root / "usr/local/bin" / f).stat()
        assert st.st_mode & 0o111, f"{f} is not executable in the oriond image"
    assert (c.root / "usr/local/bin/orion-server-entrypoint.sh").read_bytes() == \
        (ROOT / "server/entrypoint.sh").read_bytes()
    out = _ok(c.run(["sh", "-c", "oriond --version && python -c 'import cuda.bindings.driver as d, "
                     "orion_virt.server.cuda_backend; print(d.__file__)' && orion-shm --version"]))
    assert "oriond (orion_virt) 0.1.0" in out
    assert "/opt/orion/lib/python3" in out and "cuda/bindings/driver" in out
    # the driver comes from the host (NVIDIA's container runtime): none in the image
    assert "libcuda.so" not in _ok(c.run(["ldconfig", "-p"]))


def test_client_image_contents(container: Any) -> None:
    c = container("client")
    assert c.command() == ["python3", "/usr/share/orion/examples/deviceQuery.py"]
    assert (c.root / "usr/share/orion/examples/deviceQuery.py").is_file()
    cache = _ok(c.run(["ldconfig", "-p"]))
    libcuda = [ln for ln in cache.splitlines() if "libcuda.so.1 " in ln]
    assert libcuda and all("/usr/lib/orion/" in ln for ln in libcuda), cache
    nvml = [ln for ln in cache.splitlines() if "libnvidia-ml.so.1 " in ln]
    assert nvml and all("/usr/lib/orion/" in ln for ln in nvml), cache
    # the native client is what a program loading libcuda.so.1 by name gets, without
    # LD_LIBRARY_PATH; and its cuda-python gets the Orion client
    probe = textwrap.dedent("""\
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        print([ln.split()[-1] for ln in open("/proc/self/maps") if "libcuda.so.1" in ln][0])
        import cuda.bindings.driver
        print("cuda-bindings", cuda.bindings.driver.__name__)
        """)
    out = _ok(c.run(["python3", "-c", probe]))
    assert out.splitlines()[0].startswith("/usr/lib/orion/"), out
    assert "cuda-bindings" in out
    assert "orion-smi" in _ok(c.run(["sh", "-c", "ls /usr/lib/orion/bin /usr/local/bin /usr/bin | grep orion-"]))
    # no driver, nothing of the build left behind
    for gone in ("src", "opt/orion-native", "tmp/installer", "build-venv"):
        assert not (c.root / gone).exists(), f"/{gone} left in the client image"


@pytest.mark.parametrize("name, commands", [
    ("controller", ["orion-controller"]),
    ("device-plugin", ["orion-device-plugin", "orion-node-labeller", "orion-scheduler-extender",
                       "install-client"]),
])
def test_commands_answer_version(container: Any, name: str, commands: list[str]) -> None:
    c = container(name)
    assert c.command()[0] == commands[0]
    for cmd in commands:
        out = _ok(c.run([cmd, "--version"]))
        assert out.startswith(f"{cmd} (orion_virt) 0.1.0"), (cmd, out)
    if name == "device-plugin":
        assert c.env()["ORION_NATIVE_LIB_DIR"] == "/opt/orion/native"
        for lib in ("libcuda.so.1", "libnvidia-ml.so.1"):
            assert (c.root / "opt/orion/native" / lib).is_file(), f"{lib} not in the device-plugin image"
        _ok(c.run(["python", "-c", "import grpc, kubernetes, pyroute2, libvirt"]))


# -- the entrypoint's server.conf --------------------------------------------------------------


def _conf(text: str) -> dict[str, dict[str, str]]:
    cp = configparser.ConfigParser()
    cp.read_string(text)
    return {s: {k: v.strip('"') for k, v in cp[s].items()} for s in cp.sections()}


def test_entrypoint_generates_server_conf(container: Any, tmp_path: Path) -> None:
    c = container("oriond")
    etc = tmp_path / "etc-orion"
    etc.mkdir()
    env = c.env({"BIND_ADDR": "10.9.8.7", "PORT": "9970", "VGPU": "3", "ORION_CONTROLLER": "10.9.8.1:9123"})
    p = c.run(["/usr/local/bin/entrypoint.sh", "--dry-run"], env=env, binds=[Bind(etc, "/etc/orion")])
    conf = _conf(_ok(p))
    assert conf["server"]["listen_port"] == "9970"
    assert conf["server"]["bind_addr"] == "10.9.8.7"
    assert conf["server"]["vgpu_count"] == "3"
    assert conf["server"]["enable_shm"] == "true"
    assert conf["controller"]["controller_addr"] == "10.9.8.1:9123"
    assert conf["controller"]["token_key_file"] == "/etc/orion/token.key"
    assert conf["server-shm"]["shm_path_base"] == "/dev/shm"
    # the file lies where oriond reads it, and this checkout's parser takes it as the keys say
    cfg = load_server_config(etc / "server.conf")
    assert (cfg.listen_port, cfg.bind_addr, cfg.vgpu_count, cfg.controller_addr) == (9970, "10.9.8.7", 3,
                                                                                     "10.9.8.1:9123")

    # defaults (the seeds'), and ORION_CONTROLLER=none leaves controller_addr out
    (etc / "server.conf").unlink()
    conf = _conf(_ok(c.run(["/usr/local/bin/entrypoint.sh", "--dry-run"], env=c.env({"ORION_CONTROLLER": "none"}),
                           binds=[Bind(etc, "/etc/orion")])))
    assert (conf["server"]["listen_port"], conf["server"]["bind_addr"], conf["server"]["vgpu_count"]) == \
        ("9960", "172.17.0.1", "4")
    assert "controller_addr" not in conf["controller"]

    # an existing file is kept unless ORION_REGENERATE_CONF=1
    p = c.run(["/usr/local/bin/entrypoint.sh", "--dry-run"], env=c.env({"PORT": "9971"}),
              binds=[Bind(etc, "/etc/orion")])
    assert _conf(_ok(p))["server"]["listen_port"] == "9960" and "keeping the existing" in p.stderr
    p = c.run(["/usr/local/bin/entrypoint.sh", "--dry-run"], env=c.env({"PORT": "9971", "ORION_REGENERATE_CONF": "1"}),
              binds=[Bind(etc, "/etc/orion")])
    assert _conf(_ok(p))["server"]["listen_port"] == "9971"

    # a bad value is refused with its name, before any file is written
    (etc / "server.conf").unlink()
    for var, value in (("PORT", "70000"), ("VGPU", "0"), ("ORION_CONTROLLER", "nohostport"), ("BIND_ADDR", "a b")):
        p = c.run(["/usr/local/bin/entrypoint.sh", "--dry-run"], env=c.env({var: value}),
                  binds=[Bind(etc, "/etc/orion")])
        assert p.returncode == 2 and f"{var}={value}" in p.stderr, (var, p.stderr)
        assert not (etc / "server.conf").exists()


# -- end to end: controller, oriond, device plugin and a client Pod, each from its image --------


class NodeTree:
    """The node's hostPath volumes, relocated under ``base``: Allocate's host paths (paths on
    the node) map to this machine through ``local``."""

    PATHS = {"/dev/shm": "dev-shm", "/etc/orion": "etc-orion", "/usr/lib/orion": "usr-lib-orion",
             "/var/lib/orion": "var-lib-orion", "/var/lib/kubelet/device-plugins": "device-plugins"}

    def __init__(self, base: Path) -> None:
        self.base = base
        for d in self.PATHS.values():
            (base / d).mkdir(parents=True)
        (base / "dev-shm").chmod(0o1777)

    def __getitem__(self, node_path: str) -> Path:
        return self.base / self.PATHS[node_path]

    def bind(self, node_path: str, ro: bool = False) -> Bind:
        return Bind(self[node_path], node_path, ro)

    def local(self, node_path: str) -> Path:
        for prefix in sorted(self.PATHS, key=len, reverse=True):
            if node_path == prefix or node_path.startswith(prefix + "/"):
                return self[prefix] / node_path[len(prefix):].lstrip("/")
        raise AssertionError(f"Allocate mounted {node_path}, which is in none of the node's volumes {list(self.PATHS)}")


class StubKubelet:
    """The kubelet's Registration service on the node's device-plugin directory."""

    def __init__(self, plugin_dir: Path) -> None:
        import grpc

        from orion_virt.k8s import deviceplugin_pb2 as pb
        from orion_virt.k8s import deviceplugin_pb2_grpc as pbg

        self.requests: queue.Queue[Any] = queue.Queue()
        kubelet = self

        class Registration(pbg.RegistrationServicer):
            def Register(self, request: Any, context: Any) -> Any:
                kubelet.requests.put(request)
                return pb.Empty()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pbg.add_RegistrationServicer_to_server(Registration(), self.server)
        self.server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)


class Service:
    """A long-running container process (hostPID: the Popen is the service itself)."""

    def __init__(self, ct: Container, cmd: list[str], env: Mapping[str, str], binds: Sequence[Bind],
                 log: Path, host_ipc: bool = True) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(ct.argv(cmd, env=env, binds=binds, host_pid=True, host_ipc=host_ipc),
                                         stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"{self.log.name} exited {self.proc.returncode}:\n{self.text()[-4000:]}"
        return True

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int | None:
        stop_pid(self.proc, grace=15)
        return self.proc.returncode


ROUND_TRIP = """\
import ctypes, os, sys
from cuda.bindings import driver as cuda

def check(r):
    err, *v = r
    if err != cuda.CUresult.CUDA_SUCCESS:
        sys.exit(f"CUDA error {int(err)}")
    return v[0] if len(v) == 1 else v

n = 3 << 20
check(cuda.cuInit(0))
ctx = check(cuda.cuCtxCreate(None, 0, check(cuda.cuDeviceGet(0))))
data = os.urandom(n)
src = (ctypes.c_char * n).from_buffer_copy(data)
back = (ctypes.c_char * n)()
d = check(cuda.cuMemAlloc(n))
check(cuda.cuMemcpyHtoD(d, ctypes.addressof(src), n))
check(cuda.cuMemcpyDtoH(ctypes.addressof(back), d, n))
check(cuda.cuMemFree(d))
check(cuda.cuCtxDestroy(ctx))
print("python round trip of", n, "bytes:", "PASSED" if bytes(back) == data else "FAILED")
"""

NATIVE = """\
import ctypes, os, sys
from ctypes import byref, c_char, c_int, c_size_t, c_uint64, c_void_p

cu = ctypes.CDLL("libcuda.so.1")
def check(rc, what):
    if rc:
        sys.exit(f"{what}: CUDA error {rc}")
cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(c_uint64), c_size_t]
cu.cuMemcpyHtoD_v2.argtypes = [c_uint64, c_void_p, c_size_t]
cu.cuMemcpyDtoH_v2.argtypes = [c_void_p, c_uint64, c_size_t]
cu.cuMemFree_v2.argtypes = [c_uint64]
check(cu.cuInit(0), "cuInit")
count = c_int()
check(cu.cuDeviceGetCount(byref(count)), "cuDeviceGetCount")
print("native client", [ln.split()[-1] for ln in open("/proc/self/maps") if "libcuda.so.1" in ln][0])
print("native devices", count.value)
dev, ctx = c_int(), c_void_p()
check(cu.cuDeviceGet(byref(dev), count.value - 1), "cuDeviceGet")
check(cu.cuCtxCreate_v2(byref(ctx), 0, dev), "cuCtxCreate")
n = 1 << 20
data = os.urandom(n)
src, back, d = (c_char * n).from_buffer_copy(data), (c_char * n)(), c_uint64()
check(cu.cuMemAlloc_v2(byref(d), n), "cuMemAlloc")
check(cu.cuMemcpyHtoD_v2(d.value, src, n), "cuMemcpyHtoD")
check(cu.cuMemcpyDtoH_v2(back, d.value, n), "cuMemcpyDtoH")
check(cu.cuMemFree_v2(d.value), "cuMemFree")
print("native round trip of", n, "bytes:", "PASSED" if bytes(back) == data else "FAILED")
"""


def _client_logs(ct: Container) -> str:
    d = ct.root / "root" / ".orion" / "log"
    return "".join(p.read_text(errors="replace") for p in sorted(d.rglob("*")) if p.is_file()) if d.is_dir() else ""


def test_a_client_pod_runs_cuda_through_oriond_from_the_images(container: Any, tmp_path: Path) -> None:
    """The shm-single-host overlay's Pods on one node: the controller (its keys and store in
    the node's /etc/orion and /var/lib/orion), oriond through its entrypoint (sim backend, the
    node's /dev/shm), the device plugin's init container installing the client into the node's
    /usr/lib/orion, then the plugin registering with a stub kubelet; a client container of the
    client image started with exactly the mounts and environment Allocate returned runs a
    device query and memory round trips (cuda-python and the native client) over its
    shared-memory device, then the same over TCP."""
    grpc = pytest.importorskip("grpc", reason="the k8s extra (grpcio) is not installed")
    from orion_virt.k8s import deviceplugin_pb2 as pb
    from orion_virt.k8s import deviceplugin_pb2_grpc as pbg

    node = NodeTree(tmp_path / "node")
    logs = tmp_path / "logs"
    for d in ("oriond", "controller"):
        (logs / d).mkdir(parents=True)
    ctl_port, oriond_port = free_port(), free_port()
    controller = f"127.0.0.1:{ctl_port}"
    services: list[Service] = []
    kubelet: StubKubelet | None = None
    try:
        ct = container("controller")
        ctl = Service(ct, ct.command(["start", "--ip", "127.0.0.1", "--port", str(ctl_port), "--lease", "10"]),
                      ct.env({"ORION_PORTAL_PASSWORD": "test-portal"}),
                      [node.bind("/etc/orion"), node.bind("/var/lib/orion")], logs / "controller.out")
        services.append(ctl)
        wait_for(lambda: ctl.alive() and port_open("127.0.0.1", ctl_port), 60, "the controller's port")
        for key in ("token.key", "controller.key", "client.key"):
            assert (node["/etc/orion"] / key).stat().st_size > 0, f"the controller did not create /etc/orion/{key}"

        ot = container("oriond")
        oriond = Service(ot, ot.command(["--backend", "sim", "--sim-gpus", "1"]),
                         ot.env({"BIND_ADDR": "127.0.0.1", "PORT": str(oriond_port), "VGPU": "4",
                                 "ORION_CONTROLLER": controller, "ORION_WAIT_FOR_KEYS": "1"}),
                         [node.bind("/etc/orion"), node.bind("/dev/shm"), Bind(logs / "oriond", "/var/log/orion")],
                         logs / "oriond.out")
        services.append(oriond)
        wait_for(lambda: oriond.alive() and port_open("127.0.0.1", oriond_port), 60, "oriond's port")

        # the plugin's init container, then the plugin (deploy/k8s/base/device-plugin.yaml)
        pt = container("device-plugin")
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        init = pt.run(["install-client", "-q", "-d", "/usr/lib/orion", "--root", "/scratch"], env=pt.env(),
                      binds=[Bind(scratch, "/scratch"), Bind(node["/usr/lib/orion"], "/scratch/usr/lib/orion")])
        _ok(init)
        assert (node["/usr/lib/orion"] / "lib" / "libcuda.so.1").is_file(), sorted(
            str(p) for p in node["/usr/lib/orion"].rglob("*"))
        kubelet = StubKubelet(node["/var/lib/kubelet/device-plugins"])
        plugin = Service(pt, pt.command(["--resource", "virtaitech.com/gpu", "--plugin-dir",
                                         "/var/lib/kubelet/device-plugins", "--health-interval", "0.5"]),
                         pt.env({"ORION_CONTROLLER": controller}),
                         [node.bind("/var/lib/kubelet/device-plugins"), node.bind("/dev/shm"),
                          node.bind("/usr/lib/orion", ro=True), node.bind("/var/lib/orion"),
                          node.bind("/etc/orion", ro=True)], logs / "device-plugin.out")
        services.append(plugin)
        try:
            req = kubelet.requests.get(timeout=60)
        except queue.Empty:
            plugin.alive()
            raise AssertionError(f"the device plugin never registered:\n{plugin.text()[-4000:]}")
        assert (req.resource_name, req.endpoint) == ("virtaitech.com/gpu", "orion-vgpu.sock")

        sock = node["/var/lib/kubelet/device-plugins"] / req.endpoint
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            stub = pbg.DevicePluginStub(ch)
            watch = stub.ListAndWatch(pb.Empty(), timeout=60)
            listed: Any = None
            for listed in watch:
                if sum(d.health == "Healthy" for d in listed.devices) == 4:
                    break
            watch.cancel()
            assert listed is not None and len(listed.devices) == 4, (listed, plugin.text()[-4000:])
            ids = sorted(d.ID for d in listed.devices)[:2]
            resp = stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=ids)]), timeout=30)
        a = resp.container_responses[0]
        envs = dict(a.envs)
        assert envs["ORION_VGPU"] == "2" and envs["ORION_CONTROLLER"] == controller
        dev = envs["ORION_SHM_DEVICE"]
        assert dev.startswith("/dev/shm/orionsock"), envs
        binds = [Bind(node.local(m.host_path), m.container_path, m.read_only) for m in a.mounts]
        assert {b.dest for b in binds} >= {dev, "/usr/lib/orion", "/etc/orion/client.key"}, binds
        wait_for(lambda: _served(node.local(dev)), 20, f"oriond to serve {dev}")

        sessions = logs / "oriond" / "session"
        for transport, extra in (("shm", {}), ("tcp", {"ORION_ENABLE_NET": "true"})):
            cc = container("client")
            env = cc.env({**envs, **extra})
            out = []
            for name, cmd in (("deviceQuery.py", cc.command()), ("round trip", ["python3", "-c", ROUND_TRIP]),
                              ("native", ["python3", "-c", NATIVE])):
                before = set(sessions.glob("*.log"))
                p = cc.run(cmd, env=env, binds=binds, timeout=120)
                assert p.returncode == 0, f"{transport} {name}: exit {p.returncode}\n{p.stdout}\n{p.stderr}\n" \
                                          f"{_client_logs(cc)[-3000:]}"
                assert "Client exits with allocation ID" in p.stderr, p.stderr
                # oriond's own account of the session: the transport, the container's PID 1
                new = [f.read_text(errors="replace") for f in set(sessions.glob("*.log")) - before]
                assert len(new) == 1, (name, new)
                want = f"over shm {dev}#" if transport == "shm" else "over tcp 127.0.0.1:"
                assert want in new[0] and "pid 1 program" in new[0], (transport, name, new[0])
                out.append(p.stdout)
            query, trip, native = out
            assert "Detected 2 CUDA Capable device(s)" in query and "Result = PASS" in query, query
            assert "python round trip of 3145728 bytes: PASSED" in trip, trip
            assert "native client /usr/lib/orion/lib/libcuda.so.1" in native, native
            assert "native devices 2" in native and "native round trip of 1048576 bytes: PASSED" in native, native
        for s in services:
            s.alive()
    finally:
        for s in reversed(services):
            s.stop()
        if kubelet is not None:
            kubelet.stop()
    assert services[-1].proc.returncode is not None


def _served(dev: Path) -> bool:
    from orion_virt.transport.shmdev import Device

    if not dev.exists():
        return False
    d = Device(dev)
    try:
        return bool(d.info().served)
    finally:
        d.close()
