"""``orion-check runtime server|controller`` and ``install server|controller`` against an
in-process controller (real HTTP on loopback), a listening socket standing in for oriond, and a
fake /proc; the CLI's delegation to the client checks."""

from __future__ import annotations

import io
import socket
import sys
import threading
import types
from pathlib import Path
from typing import Iterator

import pytest
from check_fakes import make_proc
from click.testing import CliRunner

from orion_virt.check.common import GpuProbe
from orion_virt.check.controller import install_controller, runtime_controller
from orion_virt.check.controller_status import check_controller
from orion_virt.check.report import Report
from orion_virt.check.server import install_server, pick_oriond, runtime_server
from orion_virt.cli import orion_check
from orion_virt.config import load_server_config
from orion_virt.controller import client as ctl
from orion_virt.controller.api import make_server
from orion_virt.controller.pool import Policy
from orion_virt.controller.service import Controller
from orion_virt.controller.store import SqliteStore
from orion_virt.host.hookinstall import install_hook
from orion_virt.launch import free_port
from orion_virt.server.authorize import node_id

KEY_HEX = "ab" * 32
V100 = GpuProbe(2, "2 GPU(s) found", "418.67", ("Tesla V100-PCIE-16GB",) * 2)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[str]:
    c = Controller(SqliteStore(tmp_path / "c.db"), Policy(), bytes.fromhex(KEY_HEX))
    srv = make_server(c, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on (standing in for oriond's data plane)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def write_conf(tmp: Path, controller: str, port: int = 1, kvm: bool = True) -> Path:
    (tmp / "token.key").write_text(KEY_HEX + "\n")
    (tmp / "token.key").chmod(0o600)
    (tmp / "shm").mkdir(exist_ok=True)
    conf = tmp / "server.conf"
    conf.write_text(f"""[server]
    listen_port = {port}
    bind_addr = 127.0.0.1
    enable_shm = "true"
    enable_rdma = "false"
    enable_kvm = "{str(kvm).lower()}"
[server-shm]
    shm_path_base = {tmp / "shm"}
[server-log]
    log_dir = {tmp / "log"}
[controller]
    controller_addr = {controller}
    token_key_file = {tmp / "token.key"}
""")
    return conf


def register(addr: str, cfg_path: Path) -> str:
    cfg = load_server_config(cfg_path)
    nid = node_id(cfg)
    ctl.register_node(addr, ctl.NodeInfo(nid, f"127.0.0.1:{cfg.listen_port}"), [
        ctl.GpuInfo(0, "GPU-0", "Tesla V100-PCIE-16GB", 16384, 4),
        ctl.GpuInfo(1, "GPU-1", "Tesla V100-PCIE-16GB", 16384, 4)])
    return nid


def test_controller_lines_are_the_seeds(controller: str, tmp_path: Path) -> None:
    register(controller, write_conf(tmp_path, controller))
    out = io.StringIO()
    assert check_controller(Report(out), controller, "configuration file")
    assert out.getvalue().splitlines() == [
        f"Orion Controller addrress is set as {controller} in configuration file. Using this "
        "address to diagnose Orion Controller",
        f"Address {controller} is reached.",
        "Orion Controller Version Infomation : data_version=0.1,api_version=0.1",
        "There are 8 vGPU under managered by Orion Controller. 8 vGPU are free now.",
    ]
    ctl.allocate(controller, ctl.AllocationRequest(vgpu=3))
    out = io.StringIO()
    check_controller(Report(out), controller, "configuration file")
    assert out.getvalue().splitlines()[-1] == \
        "There are 8 vGPU under managered by Orion Controller. 5 vGPU are free now."


def test_unreachable_controller() -> None:
    addr = f"127.0.0.1:{free_port()}"
    out = io.StringIO()
    r = Report(out)
    assert not check_controller(r, addr, "environment variable ORION_CONTROLLER")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"Orion Controller addrress is set as {addr} in environment "
                               "variable ORION_CONTROLLER.")
    assert lines[1] == f"[Error] Address {addr} cannot be reached: Connection refused"
    assert lines[2] == "Could not connect to server"  # the seeds' two lines, as the client prints them
    assert lines[3] == "Fail to get version information from Orion Controller."
    assert r.exit_code == 1


def test_runtime_server_output(controller: str, listener: int, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, controller, port=4242)
    proc = tmp_path / "proc"
    # the running oriond overrides the file's port with a flag: the flag wins (node id too)
    make_proc(proc, 700, ["/usr/bin/python3", "/usr/bin/oriond", "--config", "server.conf",
                          "--listen-port", str(listener)], cwd=tmp_path)
    cfg_port_node = node_id(load_server_config(conf, {"listen_port": listener}))
    ctl.register_node(controller, ctl.NodeInfo(cfg_port_node, f"127.0.0.1:{listener}"),
                      [ctl.GpuInfo(0, "GPU-9", "Tesla V100-PCIE-16GB", 16384, 4)])
    libvirt = tmp_path / "libvirt"
    hook = install_hook(libvirt / "hooks", sys.executable, str(conf)).installed
    (libvirt / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
    out = io.StringIO()
    rc = runtime_server(conf, out, env={}, probe=lambda: V100, proc_root=proc, libvirt_etc=libvirt)
    text = out.getvalue()
    assert rc == 0, text
    assert text == f"""Searching NVIDIA GPU ...
CUDA driver 418.67
418.67 is installed.
2 NVIDIA GPUs are found :
    0 : Tesla V100-PCIE-16GB
    1 : Tesla V100-PCIE-16GB

Checking NVIDIA MPS ...
NVIDIA CUDA MPS is off.

Checking Orion Server status ...
Orion Server is running with Linux user   : root
Orion Server is running with command line : /usr/bin/python3 /usr/bin/oriond --config server.conf --listen-port {listener}
Enable SHM                              [Yes]
Enable RDMA                             [No]
Enable Local QEMU-KVM with SHM          [Yes]
Binding IP Address :                    127.0.0.1
Listening Port :                        {listener}
Configuration :                         {conf}

Testing the Orion Server network ...
Orion Server can be reached through 127.0.0.1:{listener}

Checking the VM host (enable_kvm) ...
libvirt hook {hook} installed (python {sys.executable})
QEMU (root:root) can open the VM device files

Checking Orion Controller status ...
[Info] Orion Controller setting may be different in different SHELL.
[Info] Environment variable ORION_CONTROLLER has the first priority.

Orion Controller addrress is set as {controller} in configuration file. Using this address to diagnose Orion Controller
Address {controller} is reached.
Orion Controller Version Infomation : data_version=0.1,api_version=0.1
There are 4 vGPU under managered by Orion Controller. 4 vGPU are free now.
Token key {tmp_path / "token.key"} is readable.
Orion Server is registered with Orion Controller as node {cfg_port_node} (127.0.0.1:{listener}): 1 GPU(s), 4 vGPU, 4 free.
"""


def test_runtime_server_failures(controller: str, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, controller, port=free_port())
    (tmp_path / "token.key").write_text("not hex")
    proc = tmp_path / "proc"
    make_proc(proc, 9, ["/usr/bin/oriond", "--config", "/elsewhere.conf", "--listen-port", "1"])
    out = io.StringIO()
    rc = runtime_server(conf, out, env={"ORION_CONTROLLER": "10.0.0.1:9123"},
                        probe=lambda: GpuProbe(0, "no driver"), proc_root=proc, libvirt_etc=tmp_path)
    text = out.getvalue()
    assert rc == 1
    assert f"[Error] Orion Server (oriond) is not running with {conf}" in text
    assert "[Info] other oriond processes run (pids 9)" in text
    assert "[Error] Orion Server cannot be reached through 127.0.0.1:" in text
    assert "[Info] ORION_CONTROLLER=10.0.0.1:9123 is set in this shell; oriond does not read it" \
        in text
    assert "token key must be hex text" in text
    assert "is not registered with the Orion Controller: start oriond" in text
    assert "[Warning] no driver: oriond will run the sim backend" in text


def test_runtime_server_direct_mode_and_bad_config(tmp_path: Path) -> None:
    conf = tmp_path / "s.conf"
    conf.write_text("[server]\nlisten_port = 9\n")
    out = io.StringIO()
    runtime_server(conf, out, env={}, probe=lambda: V100, proc_root=tmp_path)
    assert "oriond runs in direct mode" in out.getvalue()
    conf.write_text("[server]\nlisten_prot = 9\n")
    out = io.StringIO()
    assert runtime_server(conf, out, env={}, probe=lambda: V100, proc_root=tmp_path) == 1
    assert "unknown key 'listen_prot'" in out.getvalue()


def test_pick_oriond(tmp_path: Path) -> None:
    from orion_virt.check.common import find_processes

    conf = tmp_path / "a.conf"
    conf.write_text("[server]\nlisten_port = 5555\n")
    make_proc(tmp_path, 11, ["/usr/bin/oriond", "--listen-port", "7777"])
    make_proc(tmp_path, 12, ["/usr/bin/oriond", "--listen-port", "5555"])
    make_proc(tmp_path, 13, ["/usr/bin/oriond", "--config", "a.conf"], cwd=tmp_path)
    procs = find_processes("oriond", tmp_path)
    assert pick_oriond(procs, None).pid == 11
    assert pick_oriond(procs, conf).pid == 13
    assert pick_oriond(procs[:2], conf).pid == 12
    assert pick_oriond(procs[:1], conf) is None


def test_runtime_controller(controller: str, tmp_path: Path) -> None:
    register(controller, write_conf(tmp_path, controller))
    a = ctl.allocate(controller, ctl.AllocationRequest(vgpu=2, group_id="g1"))
    out = io.StringIO()
    rc = runtime_controller(out, env={"ORION_CONTROLLER": controller}, proc_root=tmp_path)
    text = out.getvalue()
    assert rc == 0, text
    assert "No Orion Controller process runs on this host." in text
    assert f"set as {controller} in environment variable ORION_CONTROLLER." in text
    assert "There are 8 vGPU under managered by Orion Controller. 6 vGPU are free now." in text
    assert "    0 : Tesla V100-PCIE-16GB 16384 MiB, 2/4 vGPU used, 2 free" in text
    assert f"    {a.allocation_id} : 2 vGPU (group g1)" in text
    # the address of a local controller process, 0.0.0.0 meaning loopback
    port = controller.rsplit(":", 1)[1]
    make_proc(tmp_path / "proc", 5, ["/usr/bin/python3", "/usr/bin/orion-controller", "start",
                                     "-p", port, "--lease", "10"])
    out = io.StringIO()
    assert runtime_controller(out, env={}, proc_root=tmp_path / "proc") == 0
    assert f"set as 127.0.0.1:{port} in the running orion-controller." in out.getvalue()
    assert "Lease (s) :                             10.0" in out.getvalue()


def test_install_controller(tmp_path: Path) -> None:
    port = free_port()
    out = io.StringIO()
    rc = install_controller(out, kv=f"sqlite://{tmp_path}/db/c.db", ip="127.0.0.1", port=port,
                            token_key=str(tmp_path / "k"), proc_root=tmp_path)
    text = out.getvalue()
    assert rc == 0, text
    assert f"SQLite store {tmp_path}/db/c.db will be created at first start." in text
    assert f"Token key {tmp_path / 'k'} will be created (mode 0600)" in text
    assert f"Port 127.0.0.1:{port} is free." in text
    (tmp_path / "k").write_text("zz")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        out = io.StringIO()
        rc = install_controller(out, kv="ftp://x", ip="127.0.0.1", port=port,
                                token_key=str(tmp_path / "k"), proc_root=tmp_path)
    text = out.getvalue()
    assert rc == 1
    assert "expected http://HOST:2379 (etcd) or sqlite:///PATH" in text
    assert "token key must be hex text" in text
    assert f"orion-controller cannot listen on 127.0.0.1:{port}" in text


def test_install_server(controller: str, tmp_path: Path) -> None:
    port = free_port()
    conf = write_conf(tmp_path, controller, port=port)
    out = io.StringIO()
    rc = install_server(conf, out, env={}, probe=lambda: V100, proc_root=tmp_path / "none")
    text = out.getvalue()
    assert rc == 0, text
    for line in [f"Configuration file {conf} is valid.", "2 NVIDIA GPUs are found :",
                 f"shm_path_base {tmp_path / 'shm'} is writable.",
                 f"Port 127.0.0.1:{port} is free.", f"Address {controller} is reached.",
                 f"Token key {tmp_path / 'token.key'} is readable."]:
        assert line in text.splitlines(), (line, text)
    (tmp_path / "shm").rmdir()
    out = io.StringIO()
    assert install_server(conf, out, env={}, probe=lambda: V100, proc_root=tmp_path) == 1
    assert f"shm_path_base {tmp_path / 'shm'} does not exist" in out.getvalue()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_client_checks_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import orion_virt.check

    monkeypatch.setitem(sys.modules, "orion_virt.check.client", None)
    monkeypatch.delattr(orion_virt.check, "client", raising=False)
    r = CliRunner().invoke(orion_check.main, ["runtime", "client"])
    assert r.exit_code == 2
    assert "the Orion Client checks are not available in this installation" in r.output


def test_cli_delegates_client_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def runtime_client(env: dict, out: object) -> int:
        calls.append(env.get("ORION_CLIENT_CONF_ETC"))
        out.write("client ok\n")  # type: ignore[attr-defined]
        out("line")  # type: ignore[operator]
        return 3

    fake = types.ModuleType("orion_virt.check.client")
    fake.runtime_client = runtime_client  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orion_virt.check.client", fake)
    import orion_virt.check

    monkeypatch.setattr(orion_virt.check, "client", fake, raising=False)
    r = CliRunner().invoke(orion_check.main, ["runtime", "client", "--config",
                                              str(tmp_path / "c.conf")])
    assert r.exit_code == 3 and r.output == "client ok\nline\n"
    assert calls == [str(tmp_path / "c.conf")]
    r = CliRunner().invoke(orion_check.main, ["install", "client"])
    assert r.exit_code == 2 and "install_client is not available" in r.output


def test_cli_usage() -> None:
    r = CliRunner().invoke(orion_check.main, ["runtime", "gpu"])
    assert r.exit_code == 2 and "'gpu' is not one of" in r.output
    r = CliRunner().invoke(orion_check.main, ["--help"])
    assert "orion-check runtime server|client|controller" in r.output
