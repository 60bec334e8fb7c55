"""orion-run: the click command and ``python3 -m orion_virt.client.run`` are one implementation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orion_virt.cli import orion_run as cli
from orion_virt.client import run


class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    got: list[tuple[str, list[str], dict[str, str]]] = []

    def fake(file: str, argv: list[str], env: dict[str, str]) -> None:
        got.append((file, argv, env))
        raise Exec

    monkeypatch.setattr(os, "execvpe", fake)
    return got


def test_click_command_delegates_to_the_stdlib_one(execs, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("")
    with pytest.raises(Exec):
        CliRunner().invoke(cli.main, [str(script), "--flag"], catch_exceptions=False)
    file, argv, env = execs[0]
    assert argv == [sys.executable, str(script), "--flag"] and file == sys.executable
    assert env["ORION_RUN"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith(os.path.join("orion_virt", "client", "boot"))
    assert env == run.child_env(os.environ)


def test_both_front_ends_report_a_missing_program_alike(monkeypatch, capsys) -> None:
    r = CliRunner().invoke(cli.main, ["/nonexistent/prog"])
    assert r.exit_code == 127 and "orion-run: cannot run /nonexistent/prog:" in r.output
    assert run.main(["/nonexistent/prog"]) == 127
    assert "orion-run: cannot run /nonexistent/prog:" in capsys.readouterr().err
    assert run.main([]) == 2
