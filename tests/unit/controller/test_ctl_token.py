"""Tokens: round trip, tamper, wrong key, expiry, node binding, size; key files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orion_virt.controller.exceptions import TokenError, TokenExpired
from orion_virt.controller.token import Grant, VGpuQuota, issue_token, load_key, verify_token
from orion_virt.errors import ConfigError, ControllerError

KEY = bytes(range(32))
GRANT = Grant("fda38164-711b-4809-9984-2759a3a2165b", "gpu-host-1",
              (VGpuQuota(0, 4096, 25), VGpuQuota(1, 12000, 50)), 2_000_000_000.0)


def test_round_trip_and_shape() -> None:
    tok = issue_token(KEY, GRANT)
    assert tok.isascii() and " " not in tok and len(tok) < 1024
    got = verify_token(KEY, tok, now=1_999_999_999.0, node_id="gpu-host-1")
    assert got == GRANT and got.vgpus[1].memory_mib == 12000


def test_many_vgpus_stay_under_1k() -> None:
    g = Grant(GRANT.allocation_id, "n" * 40, tuple(VGpuQuota(i // 4, 16384, 25)
                                                   for i in range(32)), 2e9)
    assert len(issue_token(KEY, g)) < 1024


def test_wrong_key_and_tampering() -> None:
    tok = issue_token(KEY, GRANT)
    with pytest.raises(TokenError, match="signature"):
        verify_token(b"x" * 32, tok, 0)
    head, payload, sig = tok.split(".")
    forged = issue_token(b"y" * 32, Grant(GRANT.allocation_id, "gpu-host-1",
                                          (VGpuQuota(0, 16384, 100),), 2e9)).split(".")[1]
    with pytest.raises(TokenError):
        verify_token(KEY, f"{head}.{forged}.{sig}", 0)
    for bad in ("", "garbage", "o1..", tok + "x", tok.replace("o1.", "o2.")):
        with pytest.raises(TokenError):
            verify_token(KEY, bad, 0)


def test_expired_and_other_node() -> None:
    tok = issue_token(KEY, GRANT)
    with pytest.raises(TokenExpired) as e:
        verify_token(KEY, tok, now=2_000_000_000.0)
    assert isinstance(e.value, ControllerError)
    with pytest.raises(TokenError, match="not 'other'"):
        verify_token(KEY, tok, 0, node_id="other")


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "orion" / "token.key"
    k1 = load_key(p, create=True)
    assert len(k1) == 32
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_key(p, create=True) == k1 == load_key(p)


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(tmp_path / "missing")
    (tmp_path / "bad").write_text("not hex")
    with pytest.raises(ConfigError, match="hex"):
        load_key(tmp_path / "bad")
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(ConfigError, match="too short"):
        load_key(tmp_path / "short")


def test_guest_modules_import_without_site_packages() -> None:
    """token, client and registration must work in a guest with only the standard library."""
    root = Path(__file__).resolve().parents[3]
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); import orion_virt.controller.token, "
            "orion_virt.controller.client, orion_virt.controller.registration; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('click', 'numpy', 'sqlite3', 'http.server')))")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
