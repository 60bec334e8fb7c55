"""etcd v3 store through the JSON gateway (``/v3/kv/...``) with urllib; no etcd client package.

Documents live under ``<prefix>pool/``; ``<prefix>meta/guard`` is rewritten by every commit.
A commit is a txn comparing the guard's ``mod_revision`` with the one seen in the snapshot, so
two writers that read the same revision cannot both succeed (optimistic concurrency; the loser
retries). Keep each change below etcd's ``--max-txn-ops`` (default 128): the pool reaps at most
100 allocations per update for that reason.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from ..exceptions import StoreError
from .base import Store


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with ``prefix`` (ASCII prefixes)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdStore(Store):
    def __init__(self, url: str, prefix: str = "/orion/v1/", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.timeout = timeout
        self._docs = prefix + "pool/"
        self._guard = prefix + "meta/guard"

    def describe(self) -> str:
        return f"etcd {self.url}"

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; ``StoreError`` on network or etcd errors."""
        req = urllib.request.Request(self.url + "/v3/" + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise StoreError(f"etcd {self.url} /v3/{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StoreError(f"cannot reach etcd at {self.url}: {reason}") from None
        except ValueError:
            raise StoreError(f"etcd {self.url} /v3/{path}: reply is not JSON") from None
        if not isinstance(reply, dict):
            raise StoreError(f"etcd {self.url} /v3/{path}: unexpected reply {reply!r:.100}")
        return reply

    def _begin(self) -> tuple[dict[str, str], Any]:
        got = self.call("kv/range", {"key": _b64(self.prefix),
                                     "range_end": _b64(prefix_end(self.prefix))})
        docs: dict[str, str] = {}
        guard_rev = "0"
        for kv in got.get("kvs", []):
            key = _unb64(kv["key"])
            if key == self._guard:
                guard_rev = kv.get("mod_revision", "0")
            elif key.startswith(self._docs):
                docs[key[len(self._docs):]] = _unb64(kv.get("value", ""))
        return docs, guard_rev

    def _commit(self, handle: Any, puts: dict[str, str], deletes: list[str]) -> bool:
        ops: list[dict[str, Any]] = [
            {"request_put": {"key": _b64(self._guard), "value": _b64(str(handle))}}]
        ops += [{"request_put": {"key": _b64(self._docs + k), "value": _b64(v)}}
                for k, v in puts.items()]
        ops += [{"request_delete_range": {"key": _b64(self._docs + k)}} for k in deletes]
        got = self.call("kv/txn", {
            "compare": [{"key": _b64(self._guard), "result": "EQUAL", "target": "MOD",
                         "mod_revision": str(handle)}],
            "success": ops})
        return bool(got.get("succeeded", False))

    def _abort(self, handle: Any) -> None:
        return None

    def wipe(self) -> None:
        """Delete everything under the prefix (tests, ``--kv`` resets)."""
        self.call("kv/deleterange", {"key": _b64(self.prefix),
                                     "range_end": _b64(prefix_end(self.prefix))})
