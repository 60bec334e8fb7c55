"""Cross-node sessions (``ORION_CROSS_NODE=1``): one application, vGPUs on several Orion Servers.

The runtime opens one :class:`~.connection.Connection` per node of the allocation (each HELLO
carries that node's token and vGPU count) and puts a :class:`Router` in their place: it has the
Connection's ``call``/``bye``, so ``driver._call`` (and its single-server fast path) is unchanged.

Routing, per call:

* device ordinals are global: the allocation's vGPUs in order, each mapped to (server, local
  ordinal); device queries, ``cuDeviceGet``, ``cuDevicePrimaryCtxRetain/Release`` and
  ``cuCtxCreate`` go to the device's server (``cuCtxCreate`` makes it the current one);
* calls naming a context, stream, event, module or function go to the server that issued it
  (``cuCtxSetCurrent`` also makes it the current one; ``cuCtxSetCurrent(0)`` goes to all); a
  stream or event passed with another server's handle fails with ``CUDA_ERROR_INVALID_HANDLE``;
* everything else (allocations, copies on the default stream, creating streams, events and
  modules, ``cuCtxSynchronize``) goes to the server of the current context. Device pointers pass
  unchanged: each server checks them against its own session;
* ``cuInit`` and ``cuCtxSetCurrent(0)`` go to every server; ``cuDeviceGetCount`` sums,
  ``cuDriverGetVersion`` answers the lowest.

Servers number their handles independently (the same values on every server), so the handles
the client hands out carry their server in the top byte: ``(index + 1) << 56 | value``. A server
value that does not fit in 56 bits gets an alias (top bit set) from a table keyed by
(server, value). An asynchronous error is reported by its own server at that server's next
synchronising call. A server lost mid-session fails the whole process's session, as with one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..cuda_enums import CUresult
from ..errors import OrionError, Refused, TransportError, UsageError
from ..wire import Call
from ..wire.routes import ROUTES

TAG_SHIFT = 56
VALUE_MASK = (1 << TAG_SHIFT) - 1
ALIAS_BIT = 0x80
MAX_SERVERS = ALIAS_BIT - 1

INVALID_DEVICE = int(CUresult.CUDA_ERROR_INVALID_DEVICE)
INVALID_CONTEXT = int(CUresult.CUDA_ERROR_INVALID_CONTEXT)
INVALID_HANDLE = int(CUresult.CUDA_ERROR_INVALID_HANDLE)

Reply = tuple[int, tuple, bytes]
_NO_REPLY: Reply = (0, (), b"")


DEVICE_ARG: dict[int, int] = {c: r.device for c, r in ROUTES.items() if r.device is not None}
OWNED_BY: dict[int, tuple[int, tuple[int, ...]]] = {c: (r.owner, r.same) for c, r in ROUTES.items()
                                                    if r.owner is not None}
REPLY_HANDLE = frozenset(c for c, r in ROUTES.items() if r.reply_handle and not r.merge)
_CONTEXT_CALLS = frozenset(c for c, r in ROUTES.items() if r.context_call)
BROADCAST: dict[int, str] = {c: r.merge for c, r in ROUTES.items() if r.merge}
"""The routing tables of ``wire.routes``, indexed as the router uses them. DEVICE_ARG: code ->
position of the device argument (routed by device ordinal). OWNED_BY: code -> (position of the
routing handle, positions of further handles that must come from the same server); a 0 routing
handle (the default stream, no context) goes to the current server. REPLY_HANDLE: calls whose
first reply value is a new handle (tagged before the application sees it). BROADCAST: code ->
how the replies of every server merge ("sum", "min", "first")."""
C = Call


def device_map(node_of_vgpu: Sequence[str], nodes: Sequence[str]) -> list[tuple[int, int]]:
    """Global ordinal -> (index in ``nodes``, local ordinal on that server), for an allocation
    whose vGPU ``i`` sits on node ``node_of_vgpu[i]``. A server numbers its session's vGPUs in
    the allocation's order, so the local ordinal counts the earlier vGPUs of the same node."""
    seen = {n: 0 for n in nodes}
    out = []
    for n in node_of_vgpu:
        out.append((nodes.index(n), seen[n]))
        seen[n] += 1
    return out


class Router:
    """Connection-compatible front of one Connection per server. Not thread-safe: the runtime
    serialises calls with its lock, as for one Connection."""

    def __init__(self, links: Sequence[Any], devices: Sequence[tuple[int, int]],
                 names: Sequence[str] = (), on_close: Sequence[Callable[[], None]] = ()) -> None:
        if not 1 <= len(links) <= MAX_SERVERS:
            raise ValueError(f"a cross-node session spans 1 to {MAX_SERVERS} servers, not {len(links)}")
        self.links = list(links)
        self.devices = list(devices)
        self._global = {d: g for g, d in enumerate(self.devices)}
        self.names = list(names) or [f"server {i}" for i in range(len(self.links))]
        self.on_close = list(on_close)
        self.current = 0
        self.transport = "+".join(dict.fromkeys(str(getattr(c, "transport", "")) for c in self.links))
        self.closed = False
        self._alias: dict[int, tuple[int, int]] = {}
        self._alias_of: dict[tuple[int, int], int] = {}
        self._next_alias = 1

    # -- handles ----------------------------------------------------------------------------

    def tag(self, i: int, value: int) -> int:
        """The client-visible handle of server ``i``'s ``value`` (0 stays 0)."""
        if value == 0:
            return 0
        if 0 < value <= VALUE_MASK:
            return ((i + 1) << TAG_SHIFT) | value
        key = (i, value)
        h = self._alias_of.get(key)
        if h is None:
            h = ((ALIAS_BIT | (i + 1)) << TAG_SHIFT) | self._next_alias
            self._next_alias += 1
            self._alias_of[key] = h
            self._alias[h] = key
        return h

    def owner(self, h: int) -> tuple[int, int] | None:
        """(server index, server value) of a client-visible handle, None if not one of ours."""
        top = h >> TAG_SHIFT
        if top & ALIAS_BIT:
            return self._alias.get(h)
        if 0 < top <= len(self.links):
            return top - 1, h & VALUE_MASK
        return None

    # -- calls ------------------------------------------------------------------------------

    def call(self, code: Call, args: tuple, blob: Any = None, blob_len: int = 0,
             out: memoryview | None = None) -> Reply:
        c = int(code)
        pos = DEVICE_ARG.get(c)
        if pos is not None:
            return self._by_device(c, pos, args, blob, blob_len, out)
        owned = OWNED_BY.get(c)
        if owned is not None:
            return self._by_handle(c, owned, args, blob, blob_len, out)
        if c in BROADCAST:
            return self._broadcast(c, args)
        i = self.current
        st, v, rb = self._send(i, c, args, blob, blob_len, out)
        if not st and c in REPLY_HANDLE:
            return st, (self.tag(i, v[0]), *v[1:]), rb
        return st, v, rb

    def _by_device(self, c: int, pos: int, args: tuple, blob: Any, blob_len: int,
                   out: memoryview | None) -> Reply:
        g = args[pos]
        if not 0 <= g < len(self.devices):
            return INVALID_DEVICE, (), b""
        i, local = self.devices[g]
        a = list(args)
        a[pos] = local
        st, v, rb = self._send(i, c, tuple(a), blob, blob_len, out)
        if st:
            return st, v, rb
        if c == C.cuDeviceGet:
            return st, (self._global.get((i, v[0]), g),), rb
        if c in REPLY_HANDLE:
            if c == C.cuCtxCreate:
                self.current = i
            return st, (self.tag(i, v[0]), *v[1:]), rb
        return st, v, rb

    def _by_handle(self, c: int, owned: tuple[int, tuple[int, ...]], args: tuple, blob: Any,
                   blob_len: int, out: memoryview | None) -> Reply:
        pos, same = owned
        h = args[pos]
        if h == 0:
            if c == C.cuCtxSetCurrent:
                for i in range(len(self.links)):
                    self._send(i, c, args, None, 0, None)
                return _NO_REPLY
            i = self.current
            a = list(args)
        else:
            found = self.owner(h)
            if found is None:
                return (INVALID_CONTEXT if c in _CONTEXT_CALLS else INVALID_HANDLE), (), b""
            i, a = found[0], list(args)
            a[pos] = found[1]
        for p in same:
            other = args[p]
            if other == 0:
                continue
            o = self.owner(other)
            if o is None or o[0] != i:
                return INVALID_HANDLE, (), b""
            a[p] = o[1]
        if c == C.cuCtxSetCurrent:
            self.current = i
        st, v, rb = self._send(i, c, tuple(a), blob, blob_len, out)
        if not st and c in REPLY_HANDLE:
            return st, (self.tag(i, v[0]), *v[1:]), rb
        return st, v, rb

    def _broadcast(self, c: int, args: tuple) -> Reply:
        replies = [self._send(i, c, args, None, 0, None) for i in range(len(self.links))]
        for r in replies:
            if r[0]:
                return r
        merge = BROADCAST[c]
        if merge == "sum":
            return 0, (sum(r[1][0] for r in replies),), b""
        if merge == "min":
            return 0, (min(r[1][0] for r in replies),), b""
        if merge == "or":
            bits = 0
            for r in replies:
                bits |= r[1][0]
            return 0, (bits,), b""
        return replies[0]

    def _send(self, i: int, c: int, args: tuple, blob: Any, blob_len: int,
              out: memoryview | None) -> Reply:
        link = self.links[i]
        try:
            return link.call(c, args, blob, blob_len, out)
        except UsageError:
            raise
        except Refused as e:
            link.closed = True
            raise Refused(f"{self.names[i]}: {e.reason}", e.status, e.by) from None
        except OrionError as e:
            # this server's stream is unusable: forget it (no BYE into a broken stream)
            link.closed = True
            try:
                link.stream.close()
            except (OrionError, OSError):
                pass
            raise TransportError(f"{self.names[i]}: {e}") from None

    # -- end --------------------------------------------------------------------------------

    def bye(self) -> None:
        """BYE to every server still connected. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for f in self.on_close:
            f()
        for link in self.links:
            link.bye()
