"""``orion-virt attach --doorbell``: the ivshmem-doorbell model through the CLI (libvirt test driver)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from host_fakes import NODE_XML, make_domain

from orion_virt.cli.orion_virt_cmd import _Ctx, main
from orion_virt.host import domain_xml as dx


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    conn = libvirt.open(f"test://{node}")
    conn.defineXML(make_domain("vm1"))
    shm = tmp_path / "shm"
    shm.mkdir()
    conf = tmp_path / "server.conf"
    conf.write_text(f"[server]\nenable_kvm = true\n[server-shm]\nshm_path_base = {shm}\n"
                    "shm_buffer_size = 32M\n")
    return {"conn": conn, "conf": str(conf), "tmp": tmp_path}


def run(env: dict[str, Any], *args: str) -> Any:
    ctx = _Ctx("test:///x", None, connect=lambda uri: env["conn"])
    return CliRunner().invoke(main, ["--config", env["conf"], *args], obj=ctx)


def test_attach_doorbell_then_plain(env: dict[str, Any]) -> None:
    r = run(env, "attach", "vm1", "--index", "4", "--doorbell")
    assert r.exit_code == 0, r.output
    assert "vm1: attached as orionsock4 (32 MiB" in r.output
    assert "ivshmem-doorbell, server /run/orion/ivshmem-orionsock4.sock" in r.output
    xml = env["conn"].lookupByName("vm1").XMLDesc(2)
    assert "ivshmem-doorbell" in xml and "/run/orion/ivshmem-orionsock4.sock" in xml
    st = dx.orion_state(xml)
    assert st is not None and st.intact and st.doorbell == "/run/orion/ivshmem-orionsock4.sock"
    r = run(env, "attach", "vm1", "--doorbell")
    assert r.exit_code == 0 and "already attached as orionsock4" in r.output
    r = run(env, "status", "vm1", "--json")
    d = json.loads(r.output)["defined"]
    assert d["model"] == "ivshmem-doorbell" and d["doorbell"].endswith("orionsock4.sock")
    assert "ivshmem-doorbell, server" in run(env, "status", "vm1").output
    # without the flag, attach puts the plain model back
    r = run(env, "attach", "vm1")
    assert r.exit_code == 0 and "vm1: attached as orionsock4" in r.output and "ivshmem-doorbell" not in r.output
    xml = env["conn"].lookupByName("vm1").XMLDesc(2)
    assert "ivshmem-doorbell" not in xml and "ivshmem-plain" in xml


def test_help_mentions_doorbell() -> None:
    r = CliRunner().invoke(main, ["attach", "--help"])
    assert r.exit_code == 0 and "--doorbell" in r.output
