"""``orion-virt attach --doorbell``: the ivshmem-doorbell model through the CLI (libvirt test driver)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from host_fakes import cli_env, run_cli

from orion_virt.cli.orion_virt_cmd import main
from orion_virt.host import domain_xml as dx


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    return cli_env(tmp_path)


run = run_cli


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
