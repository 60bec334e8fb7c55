"""Fixtures for host tests: a fake netlink (IPRoute) and an isolated libvirt test driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from host_fakes import NODE_XML, FakeIPRoute


@pytest.fixture
def fake_ipr() -> FakeIPRoute:
    return FakeIPRoute({"virbr-orion": [("10.99.0.1", 0)], "br0": [], "eth9": [("10.5.0.7", 0)]})


@pytest.fixture
def libvirt_conn(tmp_path: Path) -> Iterator[Any]:
    """A private libvirt test-driver connection (no daemon; state dies with the connection)."""
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    conn = libvirt.open(f"test://{node}")
    try:
        yield conn
    finally:
        conn.close()

