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


@pytest.fixture
def native_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding a libcuda.so.1, named by ORION_NATIVE_LIB_DIR; no ORION_CLIENT set."""
    d = tmp_path / "native"
    d.mkdir()
    (d / "libcuda.so.1").write_bytes(b"\x7fELF")
    monkeypatch.setenv("ORION_NATIVE_LIB_DIR", str(d))
    monkeypatch.delenv("ORION_CLIENT", raising=False)
    return d


def test_click_command_delegates_to_the_stdlib_one(execs, tmp_path: Path, native_lib: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("")
    with pytest.raises(Exec):
        CliRunner().invoke(cli.main, [str(script), "--flag"], catch_exceptions=False)
    file, argv, env = execs[0]
    assert argv == [sys.executable, str(script), "--flag"] and file == sys.executable
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(native_lib)
    assert env == run.child_env(os.environ)


@pytest.mark.parametrize("value", [None, "", "  ", "Native"])
def test_the_native_client_is_the_default(native_lib: Path, value: str | None) -> None:
    env = {"ORION_NATIVE_LIB_DIR": str(native_lib), "PYTHONPATH": "/keep"}
    if value is not None:
        env["ORION_CLIENT"] = value
    got = run.child_env(env)
    assert got["LD_LIBRARY_PATH"] == str(native_lib)
    assert got["PYTHONPATH"] == "/keep"


@pytest.mark.parametrize("value", ["python", "Python", "gpu"])
def test_another_client_is_refused_as_retired(execs, native_lib: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, value: str) -> None:
    monkeypatch.setenv("ORION_CLIENT", value)
    with pytest.raises(run.RunError, match=f"ORION_CLIENT='{value}': the Python client was retired; .*"
                                           "programs .* run unmodified over it: unset ORION_CLIENT"):
        run.child_env(os.environ)
    assert run.main(["true"]) == 2 and not execs  # COMMAND is not started
    err = capsys.readouterr().err
    assert err.startswith(f"orion-run: ORION_CLIENT='{value}': the Python client was retired") and "native" in err
    r = CliRunner().invoke(cli.main, ["true"])
    assert r.exit_code == 2 and not execs and "the Python client was retired" in r.output


def test_both_front_ends_report_a_missing_program_alike(monkeypatch, capsys, native_lib: Path) -> None:
    r = CliRunner().invoke(cli.main, ["/nonexistent/prog"])
    assert r.exit_code == 127 and "orion-run: cannot run /nonexistent/prog:" in r.output
    assert run.main(["/nonexistent/prog"]) == 127
    assert "orion-run: cannot run /nonexistent/prog:" in capsys.readouterr().err
    assert run.main([]) == 2


def test_native_client_goes_first_on_ld_library_path(tmp_path: Path) -> None:
    (tmp_path / "libcuda.so.1").write_bytes(b"\x7fELF")
    env = run.child_env({"ORION_CLIENT": "native", "ORION_NATIVE_LIB_DIR": str(tmp_path),
                         "LD_LIBRARY_PATH": "/opt/x:/usr/lib", "PYTHONPATH": "/keep"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(tmp_path), "/opt/x", "/usr/lib"]
    assert env["PYTHONPATH"] == "/keep"


def test_a_native_client_that_is_not_there_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(run, "native_lib_dir", lambda env: None)
    for env in ({"ORION_CLIENT": "native"}, {}):  # asked for, or the default
        with pytest.raises(run.RunError, match="neither installed .install-client. nor built .make native.; "
                                               "set ORION_NATIVE_LIB_DIR to its directory$"):
            run.child_env(env)
    monkeypatch.delenv("ORION_CLIENT", raising=False)
    assert run.main(["true"]) == 2  # COMMAND is not started without it (no host driver behind its back)
    assert "orion-run: the native client (libcuda.so.1" in capsys.readouterr().err


def test_help_names_the_one_client() -> None:
    r = CliRunner().invoke(cli.main, ["--help"])
    assert r.exit_code == 0 and "The native client is the only one" in r.output
    assert "the Python client was retired" in " ".join(r.output.split())
