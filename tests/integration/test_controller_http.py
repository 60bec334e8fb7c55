"""The real ``orion-controller start`` process on loopback, stopped by pid."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from etcd_fixture import etcd_url  # noqa: F401 - pytest fixture

from orion_virt.controller import client
from orion_virt.controller.client import AllocationRequest, GpuInfo, NodeInfo
from orion_virt.controller.exceptions import AllocationError, ControllerUnreachable
from orion_virt.controller.registration import Registrar
from orion_virt.controller.token import load_key, verify_token
from orion_virt.launch import free_port
from orion_virt.procs import stop_process

BIN = str(Path(sys.executable).parent / "orion-controller")
GPUS = [GpuInfo(0, "GPU-0", "Tesla V100-PCIE-16GB", 16384),
        GpuInfo(1, "GPU-1", "Tesla V100-PCIE-16GB", 16384)]


_SIGNERS: dict[str, tuple[client.Signer, client.Signer]] = {}


def cs(addr: str) -> client.Signer:
    """The client key of the controller at ``addr`` (what an application signs with)."""
    return _SIGNERS[addr][0]


def ops(addr: str) -> client.Signer:
    """Its API key (what oriond and tools sign with)."""
    return _SIGNERS[addr][1]


class ControllerProcess:
    def __init__(self, tmp: Path, kv: str, *extra: str) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.key_path = tmp / "token.key"
        self.log_path = tmp / "controller.log"
        self.proc = subprocess.Popen(
            [BIN, "start", "-i", "127.0.0.1", "-p", str(self.port), "--kv", kv,
             "--token-key", str(self.key_path), "--log", str(self.log_path),
             "--api-key", str(tmp / "controller.key"), "--client-key", str(tmp / "client.key"),
             "--portal-passwd", str(tmp / "portal.passwd"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.get_version(self.addr, timeout=1)
                _SIGNERS[self.addr] = (client.load_signer("client", str(tmp / "client.key")),
                                       client.load_signer("node", str(tmp / "controller.key")))
                return
            except ControllerUnreachable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"controller did not start: {self.proc.stderr.read()}"
                                       ) from None
                time.sleep(0.05)

    def stop(self) -> int:
        return stop_process(self.proc)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db",
                          "--heartbeat-timeout", "2", "--lease", "2", "--vgpu", "4")
    yield c
    c.stop()


def test_full_cycle_against_real_process(controller: ControllerProcess) -> None:
    addr = controller.addr
    reg = Registrar(addr, NodeInfo("gpu-host", "127.0.0.1:9960"), GPUS, interval=0.5, signer=ops(addr))
    reg.start()
    try:
        assert reg.wait_registered(5)
        s = client.summary(addr)
        assert (s.total_vgpus, s.free_vgpus) == (8, 8)
        a = client.allocate(addr, AllocationRequest(vgpu=2, gmem_mib=12000), signer=cs(addr))
        assert {v.gpu_index for v in a.vgpus} == {0, 1}
        key = load_key(controller.key_path)
        assert verify_token(key, a.token_for("gpu-host"), time.time()).allocation_id == \
            a.allocation_id
        with pytest.raises(AllocationError, match="exceeds the memory of any single GPU"):
            client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=20000), signer=cs(addr))
        b = client.allocate(addr, AllocationRequest(vgpu=1, gmem_mib=1024), signer=cs(addr))
        for _ in range(3):
            time.sleep(0.8)
            client.renew(addr, a.allocation_id, signer=ops(addr))
        live = {t["allocation_id"] for t in client.tasks(addr)}
        assert live == {a.allocation_id}, "b was never renewed: its lease must have expired"
        client.release(addr, a.allocation_id, signer=ops(addr))
        assert client.summary(addr).free_vgpus == 8
        assert b.allocation_id not in {t["allocation_id"] for t in client.tasks(addr)}
    finally:
        reg.stop()
    client.allocate(addr, AllocationRequest(vgpu=1), signer=cs(addr))
    deadline = time.monotonic() + 6
    while "marked down" not in controller.log_path.read_text():
        assert time.monotonic() < deadline, "node not marked down after missed heartbeats"
        time.sleep(0.2)
    s = client.summary(addr)
    assert (s.total_vgpus, s.allocations, s.nodes_down) == (0, 0, 1)
    assert controller.stop() == 0
    log = controller.log_path.read_text()
    assert "marked down" in log and "lease expired" in log and "Orion Controller stopping" in log


def test_key_file_created_private(controller: ControllerProcess) -> None:
    assert oct(controller.key_path.stat().st_mode & 0o777) == "0o600"


def test_restart_keeps_the_pool(tmp_path: Path) -> None:
    kv = f"sqlite://{tmp_path}/c.db"
    c1 = ControllerProcess(tmp_path, kv)
    client.register_node(c1.addr, NodeInfo("h", "127.0.0.1:9960"), GPUS, signer=ops(c1.addr))
    a = client.allocate(c1.addr, AllocationRequest(vgpu=1), signer=cs(c1.addr))
    assert c1.stop() == 0
    c2 = ControllerProcess(tmp_path, kv)
    try:
        assert [t["allocation_id"] for t in client.tasks(c2.addr)] == [a.allocation_id]
    finally:
        c2.stop()


@pytest.mark.integration
def test_two_controllers_share_one_etcd(tmp_path: Path, etcd_url: str) -> None:  # noqa: F811
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    c1 = ControllerProcess(tmp_path / "a", etcd_url)
    for f in ("token.key", "controller.key", "client.key"):
        (tmp_path / "b" / f).write_text((tmp_path / "a" / f).read_text())
    c2 = ControllerProcess(tmp_path / "b", etcd_url)
    try:
        client.register_node(c1.addr, NodeInfo("etcd-host", "127.0.0.1:9960"), GPUS, signer=ops(c1.addr))
        got = [client.allocate(c.addr, AllocationRequest(vgpu=1), signer=cs(c.addr)) for c in (c1, c2) * 4]
        held = {(v.node_id, v.gpu_index, v.slot) for a in got for v in a.vgpus}
        assert len(held) == 8
        with pytest.raises(AllocationError, match="pool exhausted: 0 vGPUs free"):
            client.allocate(c2.addr, AllocationRequest(vgpu=1), signer=cs(c2.addr))
        for a in got:
            client.release(c2.addr, a.allocation_id, signer=ops(c2.addr))
        assert client.summary(c1.addr).free_vgpus == 8
    finally:
        assert c1.stop() == 0
        assert c2.stop() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30)


def test_cli_errors_are_clean(tmp_path: Path, controller: ControllerProcess) -> None:
    busy = run_cli("start", "-i", "127.0.0.1", "-p", str(controller.port), "--kv",
                   f"sqlite://{tmp_path}/other.db", "--token-key", str(tmp_path / "k"))
    assert busy.returncode != 0 and "cannot listen on 127.0.0.1" in busy.stderr
    bad_kv = run_cli("start", "-p", str(free_port()), "--kv", "redis://x",
                     "--token-key", str(tmp_path / "k"))
    assert bad_kv.returncode == 2 and "--kv" in bad_kv.stderr
    etcd_down = run_cli("start", "-p", str(free_port()), "--kv",
                        f"http://127.0.0.1:{free_port()}", "--token-key", str(tmp_path / "k"))
    assert etcd_down.returncode == 1 and "cannot reach etcd" in etcd_down.stderr
    (tmp_path / "badkey").write_text("zz")
    bad_key = run_cli("start", "-p", str(free_port()), "--kv", f"sqlite://{tmp_path}/x.db",
                      "--token-key", str(tmp_path / "badkey"))
    assert bad_key.returncode == 2 and "token key" in bad_key.stderr
    assert run_cli("start", "--vgpu", "0").returncode == 2
    assert run_cli("start", "--log-level", "loud").returncode == 2
    for r in (busy, bad_kv, etcd_down, bad_key):
        assert "Traceback" not in r.stderr + r.stdout
    helptext = run_cli("start", "--help").stdout
    for flag in ("-i", "-p", "--kv", "--log-level", "--log", "--vgpu", "--token-key",
                 "--heartbeat-timeout"):
        assert flag in helptext
