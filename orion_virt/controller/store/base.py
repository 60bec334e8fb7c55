"""The store interface: an atomic read-modify-write of the whole pool state.

The pool is kept as JSON documents keyed ``node/<id>`` and ``alloc/<id>``. ``update`` loads
them, runs a pure function on the decoded :class:`PoolState`, and writes back only the documents
that changed, atomically: concurrent updates (threads, processes, several controllers on one
etcd) never interleave. ``fn`` may run more than once (optimistic stores retry on conflict), so
it must not have side effects outside the state it is given.
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, TypeVar

from ..exceptions import StoreError
from ..model import Allocation, Node, PoolState, Revocation

T = TypeVar("T")
NODE = "node/"
ALLOC = "alloc/"
REVOKED = "revoked/"


def encode(state: PoolState) -> dict[str, str]:
    docs = {NODE + k: json.dumps(n.to_store(), sort_keys=True) for k, n in state.nodes.items()}
    docs.update({REVOKED + k: json.dumps(r.to_json(), sort_keys=True)
                 for k, r in state.revoked.items()})
    docs.update({ALLOC + k: json.dumps(a.to_json(), sort_keys=True)
                 for k, a in state.allocations.items()})
    return docs


def decode(docs: Mapping[str, str]) -> PoolState:
    """Rebuild the state; a document that does not parse is a ``StoreError`` naming its key."""
    state = PoolState()
    for key, text in docs.items():
        try:
            if key.startswith(NODE):
                state.nodes[key[len(NODE):]] = Node.from_json(json.loads(text))
            elif key.startswith(ALLOC):
                state.allocations[key[len(ALLOC):]] = Allocation.from_json(json.loads(text))
            elif key.startswith(REVOKED):
                state.revoked[key[len(REVOKED):]] = Revocation.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"corrupt store document {key!r}: {e}") from None
    return state


class Store(ABC):
    """Subclasses provide a consistent snapshot (``_begin``) and a conditional write."""

    retry_seconds: float = 20.0

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs (``sqlite:///var/lib/...``, ``etcd http://...``)."""

    @abstractmethod
    def _begin(self) -> tuple[dict[str, str], Any]:
        """Snapshot the documents; the handle is passed to ``_commit`` or ``_abort``."""

    @abstractmethod
    def _commit(self, handle: Any, puts: dict[str, str], deletes: list[str]) -> bool:
        """Write if nothing changed since ``_begin``; False means conflict (retry)."""

    @abstractmethod
    def _abort(self, handle: Any) -> None: ...

    def read(self) -> PoolState:
        docs, handle = self._begin()
        self._abort(handle)
        return decode(docs)

    def update(self, fn: Callable[[PoolState], T]) -> T:
        """Apply ``fn`` atomically; its exceptions abort the update and propagate."""
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            before, handle = self._begin()
            try:
                state = decode(before)
                result = fn(state)
            except BaseException:
                self._abort(handle)
                raise
            after = encode(state)
            puts = {k: v for k, v in after.items() if before.get(k) != v}
            deletes = [k for k in before if k not in after]
            if not puts and not deletes:
                self._abort(handle)
                return result
            if self._commit(handle, puts, deletes):
                return result
            attempt += 1
            if time.monotonic() > deadline:
                raise StoreError(f"{self.describe()}: gave up after {attempt} conflicting updates")
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release resources; the default holds none between calls."""
