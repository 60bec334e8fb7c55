"""The strings kept byte-identical to the original Orion tools (orion_virt/compat.py).

Each constant is pinned to its exact bytes here, unconditionally; and, where the seeds (the
Orion documentation, ``shared/seeds``) are present, each is found in them, so a "fix" of a typo
on either side is noticed. Without the seeds that second half is skipped with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orion_virt import compat

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO.parent / "shared" / "seeds"

PINNED = {
    "ENV_CONTROLLER_MISSPELT": b"ORION_OCNTROLLER",
    "ENV_CONTROLLER": b"ORION_CONTROLLER",
    "CONTROLLER_ADDR_SET": b"Orion Controller addrress is set as {addr} in {origin}. "
                           b"Using this address to diagnose Orion Controller",
    "CONTROLLER_VERSION": b"Orion Controller Version Infomation : {version}",
    "VGPU_SUMMARY": b"There are {total} vGPU under managered by Orion Controller. {free} vGPU are free now.",
    "MSG_CONNECT": b"Could not connect to server",
    "MSG_VERSION": b"Fail to get version information from Orion Controller.",
    "MSG_NO_ALLOCATION": b"Client exits without allocation ID",
    "MSG_EXIT_WITH": b"Client exits with allocation ID {allocation_id}",
    "BANNER_PREFIX": b"VirtaiTech Resource. Build-cuda-",
    "CONTROLLER_SHELL_INFO": b"Orion Controller setting may be different in different SHELL.",
    "CONTROLLER_ENV_PRIORITY": b"Environment variable ORION_CONTROLLER has the first priority.",
    "ADDRESS_REACHED": b"Address {addr} is reached.",
    "SERVER_REACHED": b"Orion Server can be reached through {addr}",
    "SERVER_USER": b"Orion Server is running with Linux user   : {user}",
    "SERVER_COMMAND": b"Orion Server is running with command line : {command}",
    "INSTALL_TO": b"Orion client environment will be installed to {prefix}",
    "INSTALL_QUESTION": b"Do you want to continue [n/y] ?",
    "INSTALL_CONF_GENERATED": b"Configuration file is generated to {path}",
    "INSTALL_EDIT_CONTROLLER": b'Please edit the "controller_addr" setting and make it point to the '
                               b"controller address in your environment.",
    "INSTALL_DONE": b"Orion vGPU client environment has been installed in {prefix}",
    "INSTALL_HOW_TO_RUN": b"To run application with Orion vGPU environment, please make sure Orion "
                          b"environment is loaded. e.g.",
}


def _seeds_text() -> str:
    if not SEEDS.is_dir() or not any(SEEDS.iterdir()):
        pytest.skip(f"the seeds are not here ({SEEDS}): only the pinned bytes are checked")
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(SEEDS.iterdir())
                     if p.is_file())


def _pattern(template: str) -> str:
    """The template as a regex: its literal bytes exactly, each ``{field}`` a non-empty value."""
    return re.sub(r"\\\{\w+\\\}", r"\\S.*?", re.escape(template))


def test_every_constant_is_pinned() -> None:
    assert set(compat.ALL) == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_exact_bytes(name: str) -> None:
    assert getattr(compat, name).encode("utf-8") == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_seeds_contain_it(name: str) -> None:
    text = _seeds_text()
    assert re.search(_pattern(getattr(compat, name)), text), f"{name} not in {SEEDS}"


def test_the_typos_are_the_seeds_typos() -> None:
    text = _seeds_text()
    for typo in ("addrress", "Infomation", "managered", "ORION_OCNTROLLER"):
        assert typo in text
        assert any(typo in v for v in compat.ALL.values())


def test_the_code_uses_them() -> None:
    """The misspelt strings appear nowhere in the package but compat.py (one place)."""
    pkg = REPO / "orion_virt"
    for path in pkg.rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        for typo in ("addrress", "Infomation", "managered", "OCNTROLLER", "VirtaiTech"):
            assert typo not in text, f"{path.relative_to(REPO)} spells {typo!r} itself: use orion_virt.compat"


def test_the_formatted_lines() -> None:
    assert compat.CONTROLLER_ADDR_SET.format(addr="127.0.0.1:9123", origin="configuration file") == (
        "Orion Controller addrress is set as 127.0.0.1:9123 in configuration file. Using this address "
        "to diagnose Orion Controller")
    assert compat.VGPU_SUMMARY.format(total=8, free=8) == \
        "There are 8 vGPU under managered by Orion Controller. 8 vGPU are free now."
    from orion_virt.config import CLIENT_KEYS

    key = next(k for k in CLIENT_KEYS if k.attr == "controller_addr")
    assert key.env == ("ORION_CONTROLLER", "ORION_OCNTROLLER")
