"""orion-device-plugin against a stub kubelet over the real device-plugin gRPC API (v1beta1, unix
sockets in a temporary device-plugin directory), with a real controller and oriond (sim backend,
token mode) on loopback: registration, ListAndWatch, GetPreferredAllocation, Allocate, a kubelet
restart (socket removed and recreated: the plugin registers again), an unhealthy node (oriond
stopped: every slot Unhealthy); and a "container" (fresh mount, IPC and PID namespaces, a
private /dev/shm, the host's device directory hidden) started with exactly the mounts and
environment Allocate returned runs the native client's deviceQuery through oriond.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

grpc = pytest.importorskip("grpc", reason="the k8s extra (grpcio) is not installed")

from orion_virt.config import load_server_config  # noqa: E402
from orion_virt.k8s import deviceplugin_pb2 as pb  # noqa: E402
from orion_virt.k8s import deviceplugin_pb2_grpc as pbg  # noqa: E402
from orion_virt.k8s.plugin import DevicePlugin, Options  # noqa: E402
from orion_virt.k8s.shm import DeviceBook  # noqa: E402
from orion_virt.server.authorize import node_id  # noqa: E402
from tests.integration.test_controller_e2e import Stack, wait_for  # noqa: E402
from tests.nsutil import skip_reason  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "native"


class StubKubelet(pbg.RegistrationServicer):
    """The kubelet's Registration service on <dir>/kubelet.sock; records every RegisterRequest."""

    def __init__(self, plugin_dir: Path) -> None:
        self.dir = plugin_dir
        self.requests: queue.Queue[Any] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pbg.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request: Any, context: Any) -> Any:
        self.requests.put(request)
        return pb.Empty()

    def stop(self) -> None:
        """As a kubelet going down and starting again does: its socket goes, and on start it
        empties the directory (every plugin's socket with it)."""
        self.server.stop(0).wait(5)
        for p in self.dir.iterdir():
            if p.is_socket():
                p.unlink()


def plugin_stub(plugin_dir: Path, endpoint: str) -> Any:
    ch = grpc.insecure_channel(f"unix://{plugin_dir / endpoint}")
    return ch, pbg.DevicePluginStub(ch)


class Watch:
    """A ListAndWatch stream read in a thread, as the kubelet does."""

    def __init__(self, stub: Any) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.call = stub.ListAndWatch(pb.Empty())
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.q.put(r)
        except grpc.RpcError as e:
            self.q.put(e)

    def until(self, cond: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("ListAndWatch never sent the expected list")
            try:
                r = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(r, grpc.RpcError):
                raise AssertionError(f"ListAndWatch ended: {r}")
            if cond(r):
                return r

    def close(self) -> None:
        self.call.cancel()


def healthy(r: Any) -> list[str]:
    return [d.ID for d in r.devices if d.health == "Healthy"]


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.stack = Stack(tmp, lease=5.0, heartbeat_timeout=3.0)
        self.conf = self.stack.start_oriond("node", gpus=1)
        self.shm = tmp / "shm-node"
        self.node_id = node_id(load_server_config(self.conf))
        self.dir = tmp / "device-plugins"
        self.dir.mkdir()
        self.kubelet = StubKubelet(self.dir)
        self.lib = tmp / "host" / "usr-lib-orion"
        (self.lib / "lib").mkdir(parents=True)
        if (BUILD / "libcuda.so.1").exists():
            shutil.copy2(BUILD / "libcuda.so.1", self.lib / "lib" / "libcuda.so.1")
        opts = Options(controller=self.stack.addr, plugin_dir=self.dir, node_id=self.node_id,
                       client_lib_dir=str(self.lib), client_key_file=str(tmp / "client.key"),
                       health_interval=0.3, poll=0.1, backoff_initial=0.2,
                       backoff_max=1.0, sweep_interval=0.3)
        self.book = DeviceBook(self.shm, tmp / "state" / "devices.json", 8 << 20, grace=0.5)
        self.plugin = DevicePlugin(opts, self.book)
        self.thread = threading.Thread(target=self.plugin.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.plugin.stop()
        self.thread.join(10)
        self.kubelet.stop()
        self.stack.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_register_list_and_watch_preferred_and_allocate(rig: Rig) -> None:
    req = rig.kubelet.requests.get(timeout=20)
    assert (req.version, req.endpoint, req.resource_name) == ("v1beta1", "orion-vgpu.sock", "virtaitech.com/gpu")
    assert req.options.pre_start_required and req.options.get_preferred_allocation_available

    ch, stub = plugin_stub(rig.dir, req.endpoint)
    with ch:
        opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        assert opts.get_preferred_allocation_available
        w = Watch(stub)
        first = w.until(lambda r: len(r.devices) == 4)
        assert sorted(healthy(first)) == ["vgpu-0-0", "vgpu-0-1", "vgpu-0-2", "vgpu-0-3"]

        pref = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(available_deviceIDs=["vgpu-0-3", "vgpu-0-1", "vgpu-0-2"],
                                                   must_include_deviceIDs=["vgpu-0-2"], allocation_size=2)]),
            timeout=5)
        assert list(pref.container_responses[0].deviceIDs)[0] == "vgpu-0-2"
        assert len(pref.container_responses[0].deviceIDs) == 2

        resp = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=["vgpu-0-0", "vgpu-0-1"]),
            pb.ContainerAllocateRequest(devices_ids=["vgpu-0-2"])]), timeout=10)
        a, b = resp.container_responses
        assert a.envs["ORION_VGPU"] == "2" and b.envs["ORION_VGPU"] == "1"
        assert a.envs["ORION_CONTROLLER"] == rig.stack.addr
        assert a.envs["ORION_GMEM"] == str(16384 // 4) or int(a.envs["ORION_GMEM"]) > 0
        assert a.envs["ORION_RATIO"] == "25"
        dev_a, dev_b = (Path(r.envs["ORION_SHM_DEVICE"]) for r in (a, b))
        assert dev_a != dev_b and dev_a.parent == rig.shm and dev_a.exists() and dev_b.exists()
        mounts = {m.host_path: m for m in a.mounts}
        assert mounts[str(dev_a)].container_path == str(dev_a) and not mounts[str(dev_a)].read_only
        assert mounts[str(rig.lib)].container_path == str(rig.lib) and mounts[str(rig.lib)].read_only
        assert a.envs["LD_LIBRARY_PATH"] == f"{rig.lib}/lib"

        # an unknown slot is refused with the reason
        with pytest.raises(grpc.RpcError) as e:
            stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=["vgpu-9-9"])]), timeout=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "vgpu-9-9" in e.value.details()

        # the kubelet hands vgpu-0-2 out again: its earlier holder is gone, so is its device (the
        # new one may reuse the freed name, but it is a freshly formatted device)
        old_id = _device_id(dev_b)
        again = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=["vgpu-0-2"])]), timeout=10)
        new = Path(again.container_responses[0].envs["ORION_SHM_DEVICE"])
        assert new.exists() and (new != dev_b or _device_id(new) != old_id)
        assert sorted(rig.book.records) == sorted({str(dev_a), str(new)})

        # PreStartContainer recreates a device removed under a container about to restart
        dev_c = Path(again.container_responses[0].envs["ORION_SHM_DEVICE"])
        dev_c.unlink()
        stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=["vgpu-0-2"]), timeout=5)
        assert dev_c.exists()
        w.close()


def test_kubelet_restart_makes_the_plugin_register_again(rig: Rig) -> None:
    rig.kubelet.requests.get(timeout=20)
    rig.kubelet.stop()
    time.sleep(0.5)
    rig.kubelet = StubKubelet(rig.dir)  # a new kubelet.sock (new inode)
    req = rig.kubelet.requests.get(timeout=20)
    assert req.resource_name == "virtaitech.com/gpu"
    wait_for(lambda: rig.plugin.registered >= 2, 5, "the second registration to complete")
    ch, stub = plugin_stub(rig.dir, req.endpoint)
    with ch:
        w = Watch(stub)
        assert len(healthy(w.until(lambda r: len(r.devices) == 4))) == 4
        w.close()


def test_oriond_stopped_makes_every_slot_unhealthy(rig: Rig) -> None:
    req = rig.kubelet.requests.get(timeout=20)
    ch, stub = plugin_stub(rig.dir, req.endpoint)
    with ch:
        w = Watch(stub)
        w.until(lambda r: len(healthy(r)) == 4)
        proc, _conf = rig.stack.servers["node"]
        proc.terminate()
        proc.wait(20)
        r = w.until(lambda r: len(r.devices) == 4 and not healthy(r))
        assert {d.health for d in r.devices} == {"Unhealthy"}
        w.close()


# -- a container started as Allocate says ------------------------------------------------------


def container_argv(argv: list[str], mounts: list[Any], hide: list[str], stage: Path) -> list[str]:
    """``argv`` in fresh mount/IPC/PID namespaces: a private /dev/shm, ``hide`` covered by empty
    tmpfs, then each Allocate mount bound at its container path (read-only where it says so), as
    a container runtime applies a ContainerAllocateResponse."""
    q = shlex.quote
    lines = ["set -eu"]
    for i, m in enumerate(mounts):
        s = stage / f"m{i}"
        if Path(m.host_path).is_dir():
            s.mkdir()
        else:
            s.touch()
        lines.append(f"mount --bind {q(m.host_path)} {q(str(s))}")
    lines.append("mount -t tmpfs -o mode=1777,size=16m k8s-ct-shm /dev/shm")
    for d in hide:
        lines.append(f"mount -t tmpfs -o mode=755,size=1m k8s-ct-hide {q(d)}")
    for i, m in enumerate(mounts):
        s, dest = q(str(stage / f"m{i}")), q(m.container_path)
        if Path(m.host_path).is_dir():
            lines.append(f"mkdir -p {dest}")
        else:
            lines.append(f'mkdir -p "$(dirname {dest})" && touch {dest}')
        lines.append(f"mount --bind {s} {dest}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {dest}")
    lines.append('exec "$@"')
    return ["unshare", "--mount", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", "sh", "-c", "\n".join(lines), "k8s-container", *argv]


def _device_query(tmp: Path) -> Path:
    from tests.integration.test_native_client import cuda_include

    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (make test-deps installs it)")
    b = subprocess.run(["make", "-C", str(ROOT), "native"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    inc = cuda_include()
    assert inc is not None, "cuda.h not found after make native"
    exe = tmp / "deviceQuery"
    src = ROOT / "tests" / "native" / "deviceQuery.c"
    c = subprocess.run(["gcc", "-std=c11", "-O1", f"-I{inc}", f"-I{src.parent}", str(src), f"-L{BUILD}", "-lcuda",
                        "-lm", "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    return exe


def test_a_container_with_the_allocated_mounts_and_env_runs_cuda(tmp_path: Path) -> None:
    why = skip_reason()
    if why:
        pytest.skip(why)
    exe = _device_query(tmp_path)
    r = Rig(tmp_path / "rig")
    try:
        assert (r.lib / "lib" / "libcuda.so.1").exists()
        req = r.kubelet.requests.get(timeout=20)
        ch, stub = plugin_stub(r.dir, req.endpoint)
        with ch:
            w = Watch(stub)
            w.until(lambda x: len(healthy(x)) == 4)
            resp = stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=["vgpu-0-0", "vgpu-0-1"])]), timeout=10)
            w.close()
        c = resp.container_responses[0]
        dev = Path(c.envs["ORION_SHM_DEVICE"])
        wait_for(lambda: _served(dev), 10, "oriond to serve the new device")
        home = tmp_path / "home"
        home.mkdir()
        # exactly Allocate's environment, plus what any container has (PATH, HOME); ORION_SERVER
        # names a port nothing listens on, so success means the shared-memory device was used
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), **dict(c.envs),
               "ORION_CLIENT_CONF_ETC": str(tmp_path / "no-client.conf"), "ORION_SERVER": "127.0.0.1:1"}
        stage = tmp_path / "stage"
        stage.mkdir()
        # the container sees neither the host's device directory nor the library's host tree:
        # only what the mounts bring
        argv = container_argv(["sh", "-c", f"{exe} && sleep 1.5"], list(c.mounts),
                              [str(r.shm), str(tmp_path / "rig" / "host")], stage)
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "Detected 2 CUDA Capable device(s)" in p.stdout, p.stdout + p.stderr
        assert "Result = PASS" in p.stdout
        assert "Client exits with allocation ID" in p.stderr
        # the container is gone: the plugin saw the device mounted, then unmounted, and removed it
        wait_for(lambda: not dev.exists(), 15, f"the plugin to remove {dev}")
    finally:
        r.close()


def _device_id(dev: Path) -> int:
    from orion_virt.transport.shmdev import Device

    d = Device(dev)
    try:
        return d.device_id
    finally:
        d.close()


def _served(dev: Path) -> bool:
    from orion_virt.transport.shmdev import Device

    d = Device(dev)
    try:
        return d.info().served
    finally:
        d.close()


def test_plugin_waits_for_the_controller_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No controller: the seeds' line with the reason, retried; no exception, no exit."""
    import logging

    caplog.set_level(logging.WARNING, logger="orion.k8s.plugin")
    d = tmp_path / "dp"
    d.mkdir()
    from orion_virt.launch import free_port

    opts = Options(controller=f"127.0.0.1:{free_port()}", plugin_dir=d, node_id="x", backoff_initial=0.1,
                   backoff_max=0.2)
    plugin = DevicePlugin(opts, DeviceBook(tmp_path / "shm", tmp_path / "s.json", 8 << 20))
    t = threading.Thread(target=plugin.run, daemon=True)
    t.start()
    wait_for(lambda: caplog.text.count("Fail to get device list. Retry in") >= 3, 10, "three retries")
    assert t.is_alive() and "Could not connect to server" in caplog.text
    plugin.stop()
    t.join(5)
    assert not t.is_alive()
    assert os.listdir(d) == []
