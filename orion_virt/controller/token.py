"""Allocation tokens: what a client shows oriond to prove the controller granted it vGPUs.

Stdlib-only (oriond and guests import it). A token is compact ASCII::

    o1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(key, "o1." + payload part))>

The payload names the allocation, the node it is valid on, the ``(gpu_index, memory_mib,
ratio)`` of each vGPU placed on that node, an expiry (whole seconds since the epoch), a unique
token id and how many sessions it may open (1: oriond admits one session per token and refuses
it again, see ``orion_virt/server/tokenstate.py``). The
key is shared by the controller and every server: a hex text file (default
``/etc/orion/token.key``), which the controller creates with mode 0600 when absent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import ConfigError
from .exceptions import TokenError, TokenExpired

DEFAULT_KEY_FILE = "/etc/orion/token.key"
MAX_TOKEN_LEN = 1024
_PREFIX = "o1."
_MIN_KEY = 16


class VGpuQuota(NamedTuple):
    gpu_index: int
    memory_mib: int
    ratio: int


@dataclass(frozen=True)
class Grant:
    """The vGPUs one allocation holds on one node, valid until ``expires_at`` (epoch seconds)."""

    allocation_id: str
    node_id: str
    vgpus: tuple[VGpuQuota, ...]
    expires_at: float
    token_id: str = ""
    """unique per issued token: oriond admits at most ``sessions`` sessions with one token id"""
    sessions: int = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def issue_token(key: bytes, grant: Grant) -> str:
    """Sign ``grant``. The expiry is rounded up to a whole second. Raises ``TokenError`` if the
    token would exceed ``MAX_TOKEN_LEN`` bytes (too many vGPUs on one node) or the key is short."""
    if len(key) < _MIN_KEY:
        raise TokenError(f"token key too short ({len(key)} bytes, need {_MIN_KEY})")
    payload = {"a": grant.allocation_id, "n": grant.node_id,
               "v": [list(v) for v in grant.vgpus], "e": math.ceil(grant.expires_at)}
    if grant.token_id:
        payload.update(j=grant.token_id, s=grant.sessions)
    signed = _PREFIX + _b64(json.dumps(payload, separators=(",", ":")).encode())
    token = f"{signed}.{_sign(key, signed)}"
    if len(token) > MAX_TOKEN_LEN:
        raise TokenError(f"token for {len(grant.vgpus)} vGPUs is {len(token)} bytes, over "
                         f"{MAX_TOKEN_LEN}")
    return token


def verify_token(key: bytes, token: str, now: float, node_id: str | None = None) -> Grant:
    """Check signature, expiry and (when given) the node; return the ``Grant``.

    Raises ``TokenExpired`` once ``now`` is past the expiry, ``TokenError`` for anything else
    (malformed, wrong key, wrong node). Comparison of signatures is constant-time.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN or not token.startswith(_PREFIX):
        raise TokenError("malformed token")
    signed, dot, sig = token.rpartition(".")
    if not dot or not hmac.compare_digest(_sign(key, signed), sig):
        raise TokenError("token signature does not match (wrong key or altered token)")
    try:
        p = json.loads(_unb64(signed[len(_PREFIX):]))
        grant = Grant(str(p["a"]), str(p["n"]),
                      tuple(VGpuQuota(int(g), int(m), int(r)) for g, m, r in p["v"]),
                      float(p["e"]), str(p.get("j", "")), int(p.get("s", 1)))
        if not 1 <= grant.sessions <= 64 or len(grant.token_id) > 64:
            raise ValueError("sessions or token id out of range")
    except (ValueError, KeyError, TypeError, binascii.Error, AttributeError):
        raise TokenError("malformed token payload") from None
    if now >= grant.expires_at:
        raise TokenExpired(f"token for allocation {grant.allocation_id} expired")
    if node_id is not None and grant.node_id != node_id:
        raise TokenError(f"token is for node {grant.node_id!r}, not {node_id!r}")
    return grant


def load_key(path: str | os.PathLike[str] = DEFAULT_KEY_FILE, create: bool = False) -> bytes:
    """Read the shared key (hex text). With ``create``, write a new random 32-byte key with
    mode 0600 (parent directories 0755) if the file is absent. ``ConfigError`` names the file
    when it cannot be read or created or does not hold at least 16 bytes of hex."""
    p = Path(path)
    if create and not p.exists():
        try:
            p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        except FileExistsError:
            pass
        except OSError as e:
            raise ConfigError(f"{p}: cannot create token key: {e.strerror}") from None
    try:
        text = p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read token key: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{p}: token key must be hex text") from None
    if len(key) < _MIN_KEY:
        raise ConfigError(f"{p}: token key too short ({len(key)} bytes, need {_MIN_KEY})")
    return key
