"""The addresses the host agent (``orion-virt attach``) gave a VM: its fw_cfg entry
``opt/org.orion/config``, read in the guest at ``/sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/
config/raw`` (``ORION_FWCFG_PATH`` overrides the path, for tests). Standard library only.

The entry is ``key=value`` lines (orion_virt/host/domain_xml.py ``config_text``); only
``server_addr`` and ``controller_addr`` are taken, each checked as HOST:PORT. The text is at
most ``MAX_BYTES``; a longer, non-UTF-8 or malformed entry is not used and ``problems`` says why
(the client raises it only where that value would have been used). Precedence (config.py):
environment > ~/.orion/client.conf > /etc/orion/client.conf > this > none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

DEFAULT_FWCFG_PATH = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/config/raw"
ORIGIN = "fw_cfg opt/org.orion/config"
MAX_BYTES = 4096
KEYS = ("server_addr", "controller_addr")


@dataclass(frozen=True)
class HostAgentAddrs:
    """``values``: attr -> HOST:PORT; ``problems``: attr -> why the entry's value is unusable;
    ``note``: a reason the entry could not be read at all (e.g. not root), else ""."""

    path: str
    values: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    note: str = ""
    client_key: bytes | None = None
    """The controller's client key ``orion-virt attach`` gave the guest (``client_key=<hex>``)."""


def fwcfg_path(env: Mapping[str, str]) -> str:
    return env.get("ORION_FWCFG_PATH", "") or DEFAULT_FWCFG_PATH


def read_fwcfg(env: Mapping[str, str], parse_addr: Callable[[str], str]) -> HostAgentAddrs:
    """The entry's addresses. No file (not a VM, or no attach): empty. Never raises."""
    path = fwcfg_path(env)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return HostAgentAddrs(path)
    except OSError as e:
        return HostAgentAddrs(path, note=f"{path}: cannot read the host agent's addresses: {e.strerror}"
                                         + (" (fw_cfg is readable by root only)" if e.errno == 13 else ""))
    try:
        raw = os.read(fd, MAX_BYTES + 1)
    except OSError as e:
        return HostAgentAddrs(path, note=f"{path}: cannot read the host agent's addresses: {e.strerror}")
    finally:
        os.close(fd)
    bad = ""
    if len(raw) > MAX_BYTES:
        bad = f"{path}: more than {MAX_BYTES} bytes, not an entry orion-virt attach wrote"
    else:
        try:
            text = raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            bad = f"{path}: not UTF-8 text"
    if bad:
        return HostAgentAddrs(path, problems={k: bad for k in KEYS})
    values: dict[str, str] = {}
    problems: dict[str, str] = {}
    key: bytes | None = None
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        k, v = k.strip(), v.strip()
        if sep and k == "client_key":
            try:
                key = bytes.fromhex(v)
            except ValueError:
                key = None
            if key is None or not 16 <= len(key) <= 256:
                problems[k] = f"{path} ({ORIGIN}): client_key is not 16 to 256 bytes of hex"
                key = None
            continue
        if not sep or k not in KEYS:
            continue
        try:
            values[k] = parse_addr(v)
        except ValueError as e:
            problems[k] = f"{path} ({ORIGIN}): {k}={v[:80]!r}: {e}"
    return HostAgentAddrs(path, values, problems, client_key=key)
