"""orion-virt CLI: commands, messages and exit codes (libvirt test driver, temp hooks dir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from host_fakes import cli_env, run_cli

from orion_virt.cli.orion_virt_cmd import _Ctx, main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    return cli_env(tmp_path)


run = run_cli


def test_attach_status_list_detach(env: dict[str, Any]) -> None:
    r = run(env, "attach", "vm1", "--index", "4")
    assert r.exit_code == 0, r.output
    assert "vm1: attached as orionsock4 (32 MiB" in r.output
    r = run(env, "attach", "vm1")
    assert r.exit_code == 0 and "already attached as orionsock4" in r.output
    r = run(env, "status", "vm1")
    assert r.exit_code == 0 and "vm1: attached as orionsock4" in r.output
    r = run(env, "status", "vm1", "--json")
    assert json.loads(r.output)["defined"]["index"] == 4
    r = run(env, "list")
    assert "vm1" in r.output and "orionsock4" in r.output
    r = run(env, "detach", "vm1")
    assert r.exit_code == 0 and "vm1: detached" in r.output
    assert "no domain has an Orion device" in run(env, "list").output


def test_running_domain_message(env: dict[str, Any]) -> None:
    env["conn"].lookupByName("vm1").create()
    r = run(env, "attach", "vm1")
    assert r.exit_code == 0 and "cold boot" in r.output


def test_errors_and_exit_codes(env: dict[str, Any]) -> None:
    r = run(env, "attach", "ghost")
    assert r.exit_code == 1 and "domain 'ghost'" in r.output
    bad = env["tmp"] / "bad.conf"
    bad.write_text("[server]\nenable_kvmm = true\n")
    ctx = _Ctx("test:///x", None, connect=lambda uri: env["conn"])
    r = CliRunner().invoke(main, ["--config", str(bad), "status", "vm1"], obj=ctx)
    assert r.exit_code == 2 and "enable_kvmm" in r.output
    r = run(env, "attach", "vm1", "--index", "-1")
    assert r.exit_code == 2


def test_install_hook_command(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    r = CliRunner().invoke(main, ["install-hook", "--hooks-dir", str(hooks)])
    assert r.exit_code == 0 and "qemu.d/orion-virt" in r.output
    assert (hooks / "qemu.d" / "orion-virt").is_file()
    r = CliRunner().invoke(main, ["uninstall-hook", "--hooks-dir", str(hooks)])
    assert r.exit_code == 0 and not (hooks / "qemu.d" / "orion-virt").exists()


def test_help() -> None:
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("attach", "detach", "status", "list", "watch", "install-hook"):
        assert cmd in r.output
