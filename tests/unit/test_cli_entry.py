"""Every command answers --version, and a missing optional dependency is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orion_virt import __version__

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_answers_version(script: str) -> None:
    module, fn = SCRIPTS[script].split(":")
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = [{script!r}, '--version']; "
                        f"from {module} import {fn}; {fn}()"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{script} (orion_virt) {__version__}"


def test_a_missing_optional_module_names_the_extra_to_install() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['lxml'] = None; sys.argv = ['orion-virt', "
                        "'--help']; from orion_virt.cli import orion_virt_main; orion_virt_main()"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == ("orion-virt: the Python module 'lxml' is not installed: pip install 'orion_virt[host]' "
                        "(or: make test-deps)\n")
