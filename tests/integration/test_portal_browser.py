"""The portal in a real headless browser (Debian's chromium): a real ``orion-controller start``,
a pool the test sets up (a host node, a VM node that goes down, two client processes allocating
with group ids through the client runtime), then what a user sees on the page after login."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from lxml import html as lhtml

from orion_virt.controller import client
from orion_virt.controller.client import GpuInfo, NodeInfo
from orion_virt.controller.registration import Registrar
from tests.integration.test_controller_http import ControllerProcess, ops

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(scripts/install-test-deps.sh installs it)")
PASSWORD = "portal-test-pw"

# one client process: the allocation a client asks for at cuInit (vGPUs, memory, group, owner and
# command line, signed with the client key), then it stays alive holding the allocation until the
# test stops it by pid (no oriond runs here, so the native client would give it back at once)
HOLD = """
import getpass, os, socket, time
from orion_virt.config import load_client_config
from orion_virt.controller import client as ctl
cfg = load_client_config()
raw = open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").replace(b"\\0", b" ").decode()
cmdline = "".join(c if c.isprintable() else "?" for c in raw)  # as the native client reports it
req = ctl.AllocationRequest(vgpu=cfg.vgpu, gmem_mib=cfg.gmem_mib, ratio=cfg.ratio, group_id=cfg.group_id,
                            owner=f"{getpass.getuser()}@{socket.gethostname()}", cmdline=cmdline)
key = cfg.client_key_file
signer = ctl.load_signer("client", key) if key and os.path.exists(key) else None
print(ctl.allocate(cfg.controller_addr, req, signer=signer).allocation_id, flush=True)
time.sleep(300)
"""


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerProcess]:
    monkeypatch.setenv("ORION_PORTAL_PASSWORD", PASSWORD)
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db",
                          "--heartbeat-timeout", "2", "--lease", "300", "--vgpu", "4")
    yield c
    c.stop()


def _client(tmp: Path, addr: str, group: str, gmem: str, tag: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "ORION_CONTROLLER": addr,
           "ORION_VGPU": "1", "ORION_GMEM": gmem, "ORION_GROUP_ID": group,
           "ORION_CLIENT_KEY_FILE": str(tmp / "client.key"), "ORION_LOG_DIR": str(tmp / "log"),
           "PYTHONPATH": str(Path(__file__).parents[2])}
    p = subprocess.Popen([sys.executable, "-c", HOLD, "--tag", tag], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if not line:
        p.kill()
        raise AssertionError(f"client {tag} did not allocate: {p.communicate()[1]}")
    return p


def _dump_dom(url: str, tmp: Path) -> lhtml.HtmlElement:
    # chromium refuses to run as root without --no-sandbox (the tests run as root in make test)
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp / 'chromium'}", "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), f"chromium rendered nothing: {out.stderr[-2000:]}"
    return lhtml.fromstring(out.stdout)


def test_portal_renders_the_pool_in_chromium(controller: ControllerProcess, tmp_path: Path) -> None:
    addr = controller.addr
    host = Registrar(addr, NodeInfo("gpu-host:0.0.0.0:9960", "127.0.0.1:9960", "host"),
                     [GpuInfo(0, "GPU-a0", "Tesla V100-PCIE-16GB", 16384),
                      GpuInfo(1, "GPU-a1", "Tesla V100-PCIE-16GB", 16384)],
                     interval=0.5, signer=ops(addr))
    vm = Registrar(addr, NodeInfo("guest-1:0.0.0.0:9961", "192.168.122.5:9961", "vm"),
                   [GpuInfo(0, "GPU-b0", "Tesla T4", 15360)], interval=0.5, signer=ops(addr))
    host.start()
    vm.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        assert host.wait_registered(10) and vm.wait_registered(10)
        vm.stop()  # no deregistration: the node goes silent and is marked down after 2 s
        deadline = time.monotonic() + 10
        while client.summary(addr).nodes_down != 1:
            assert time.monotonic() < deadline, "the silent VM node was never marked down"
            time.sleep(0.2)
        procs.append(_client(tmp_path, addr, "team-a", "16G", "first<&>"))
        procs.append(_client(tmp_path, addr, "team-b", "4096", "second"))
        doc = _dump_dom(f"http://admin:{PASSWORD}@{addr}/", tmp_path)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        host.stop()

    assert doc.findtext(".//h1") == "Orion Controller"
    nodes = {h.get("data-node"): h for h in doc.xpath("//h3[@data-node]")}
    assert set(nodes) == {"gpu-host:0.0.0.0:9960", "guest-1:0.0.0.0:9961"}
    h, g = nodes["gpu-host:0.0.0.0:9960"], nodes["guest-1:0.0.0.0:9961"]
    assert h.xpath("string(.//span[@class='kind'])") == "host"
    assert g.xpath("string(.//span[@class='kind'])") == "VM"
    assert "up" in h.xpath(".//span/text()") and "down" in g.xpath(".//span/text()")

    rows = h.getnext().xpath(".//tr[td]")
    states = [[d.get("data-state") for d in r.xpath(".//div[@data-state]")] for r in rows]
    # team-a took a whole GPU's memory: nothing else fits there; team-b a quarter of the other
    assert sorted(states) == sorted([["used", "unavailable", "unavailable", "unavailable"],
                                     ["used", "free", "free", "free"]])
    assert [d.get("data-state") for d in g.getnext().xpath(".//div[@data-state]")] == ["down"] * 4
    graphs = doc.xpath("//svg[@class='util']")
    assert len(graphs) == 3 and all(int(s.get("data-samples")) >= 1 for s in graphs)
    assert all(s.xpath("./polyline[@class='memory']") for s in graphs)

    tasks = doc.xpath("//h2[.='Tasks']/following-sibling::table[1]//tr[td]")
    cells = [[td.text_content() for td in r.xpath("./td")] for r in tasks]
    by_group = {c[1]: c for c in cells}
    assert set(by_group) == {"team-a", "team-b"}
    for group, tag in (("team-a", "first<&>"), ("team-b", "second")):
        row = by_group[group]
        assert "@" in row[2], f"owner column empty: {row}"
        assert row[3].endswith(f"--tag {tag}"), row[3]
    assert not doc.xpath("//script")
