"""Who may change the pool: HMAC-signed requests, per-allocation and per-node secrets.

Stdlib-only (oriond, the guest client and tools import it).

**Why a shared secret (HMAC of each request) and not mutual TLS.** Every party that changes the
pool (oriond, tools, the device plugin, the applications' clients, including the native C client
in a guest with nothing but libc) can compute HMAC-SHA256 with the standard library or 60 lines of
C, while mutual TLS needs a certificate authority, certificates per node with their renewal, and
an OpenSSL dependency in the guest client. The controller's deployments (one host, or a few hosts
on a management network) already distribute one secret file (the token key); two more files of
the same kind cost the operator nothing new. A signature covers the method, the path, a
timestamp, a nonce and the body's SHA-256, so a request cannot be altered, replayed (nonces are
remembered for the allowed clock skew) or moved to another endpoint. What TLS would add,
confidentiality of the HTTP exchange, is not what the attacks of issue 15 used; the secrets that
do cross the wire (per-allocation secrets, tokens) are useless to anyone who cannot reach the
data plane as that client, and are bound to one allocation.

Keys (hex text files, mode 0600, created by ``orion-controller start`` when absent):

- the **API key** (``--api-key``, default ``/etc/orion/controller.key``; oriond reads it from
  server.conf ``[controller] api_key_file``): servers, tools and the device plugin. Registering,
  heartbeating and deregistering nodes need it; it also lets an operator release or renew any
  allocation.
- the **client key** (``--client-key``, default ``/etc/orion/client.key``; clients read
  ``client_key_file`` from client.conf ``[controller]`` or ``ORION_CLIENT_KEY_FILE``):
  applications; allocating needs it (or the API key), so nobody who merely reaches port 9123 can
  empty the pool.

Per allocation: ``POST /api/v1/allocations`` answers a ``secret``; renewing and releasing need it
in ``X-Orion-Allocation-Secret`` (or an API-key signature), so a tenant can renew or release only
what it holds. Per node: the first registration answers a ``node_secret``; a registration that
would change a registered node's address must present it in ``X-Orion-Node-Secret`` (unless the
node is down), and so must its heartbeats. The controller stores only SHA-256 hashes of secrets.

Header: ``X-Orion-Auth: <role> <unix time> <nonce> <hex HMAC-SHA256>`` where role is ``node``
(API key) or ``client``, and the HMAC is over
``"orion-auth-v1\\n" METHOD "\\n" PATH "\\n" TIME "\\n" NONCE "\\n" hex(SHA-256(body))``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
import time

AUTH_HEADER = "X-Orion-Auth"
ALLOCATION_SECRET_HEADER = "X-Orion-Allocation-Secret"
NODE_SECRET_HEADER = "X-Orion-Node-Secret"
DEFAULT_API_KEY_FILE = "/etc/orion/controller.key"
DEFAULT_CLIENT_KEY_FILE = "/etc/orion/client.key"
NODE = "node"
CLIENT = "client"
MAX_SKEW = 300.0
"""Seconds a signature's timestamp may differ from the controller's clock."""
MAX_HEADER = 512


class AuthFailed(Exception):
    """A signature was presented and is wrong (bad key, altered, stale or replayed)."""


def _message(method: str, path: str, t: str, nonce: str, body: bytes) -> bytes:
    return "\n".join(("orion-auth-v1", method.upper(), path, t, nonce,
                      hashlib.sha256(body).hexdigest())).encode()


def sign(key: bytes, role: str, method: str, path: str, body: bytes,
         now: float | None = None, nonce: str | None = None) -> str:
    """The ``X-Orion-Auth`` value for one request."""
    t = str(int(now if now is not None else time.time()))
    n = nonce or secrets.token_hex(12)
    mac = hmac.new(key, _message(method, path, t, n, body), hashlib.sha256).hexdigest()
    return f"{role} {t} {n} {mac}"


class ReplayCache:
    """Nonces seen within the allowed skew (bounded: the oldest are forgotten first)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, nonce: str, now: float) -> bool:
        with self._lock:
            while self._seen:
                old, t = next(iter(self._seen.items()))
                if t > now - 2 * MAX_SKEW and len(self._seen) < self.limit:
                    break
                del self._seen[old]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def verify(keys: dict[str, bytes], header: str | None, method: str, path: str, body: bytes,
           now: float, replay: ReplayCache) -> str | None:
    """The role the request proves (``node``/``client``), None when it carries no signature;
    ``AuthFailed`` (saying why) when it carries a bad one."""
    if not header:
        return None
    parts = header.split(" ")
    if len(header) > MAX_HEADER or len(parts) != 4:
        raise AuthFailed(f"malformed {AUTH_HEADER} header")
    role, t, nonce, mac = parts
    key = keys.get(role)
    if key is None:
        raise AuthFailed(f"unknown role {role[:20]!r} in {AUTH_HEADER}")
    if not t.isdigit() or abs(int(t) - now) > MAX_SKEW:
        raise AuthFailed(f"{AUTH_HEADER} timestamp is more than {MAX_SKEW:.0f}s from the "
                         f"controller's clock (check the clocks)")
    if not 8 <= len(nonce) <= 64:
        raise AuthFailed(f"malformed nonce in {AUTH_HEADER}")
    good = hmac.new(key, _message(method, path, t, nonce, body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(good, mac):
        raise AuthFailed(f"{AUTH_HEADER} signature does not match (wrong {role} key?)")
    if not replay.first_use(nonce, now):
        raise AuthFailed(f"{AUTH_HEADER} nonce already used (a replayed request)")
    return role


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def secret_matches(secret: str | None, stored_hash: str) -> bool:
    if not secret or not stored_hash or len(secret) > 256:
        return False
    return hmac.compare_digest(secret_hash(secret), stored_hash)


# -- the portal's login ---------------------------------------------------------------------------

PORTAL_USER = "admin"
DEFAULT_PORTAL_PASSWD_FILE = "/etc/orion/portal.passwd"
_ITER = 200_000


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITER)
    return f"pbkdf2-sha256${_ITER}${salt.hex()}${dk.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, it, salt, dk = stored.strip().split("$")
        if scheme != "pbkdf2-sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(it))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), dk)
