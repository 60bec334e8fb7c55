"""The two ends of an Orion session as I/O-free state machines, in the style of h11.

``ClientProtocol`` and ``ServerProtocol`` own everything about a session that is not moving
bytes: framing and its validation, HELLO/WELCOME/ERROR/RENEW/BYE, the order of states, sequence
numbers and the matching of replies to calls, the deferred errors of NO_REPLY calls, and the
precompiled packers of every call. They never read or write; the I/O adapters
(``client.connection``, ``server.session``) and the tests give them bytes.

Two ways in, one set of checks:

* ``receive_data(bytes)`` then ``next_event()`` until ``NEED_DATA``: whole messages as events
  (tests, fuzzing, small peers);
* the step methods the adapters call on their hot path (``reply_header``, ``call_header`` ...):
  the adapter reads a header where it lies (a shared-memory ring unpacks it in place), hands its
  fields over, and reads exactly the body length the protocol object has validated; bulk blobs
  stream straight between the carrier and their buffer. ``next_event`` is built from these same
  step methods, so the fuzz tests exercise the code production runs.

Failure modes: ``ProtocolError`` for bytes the peer may not send (the session must end),
``Refused`` for an ERROR frame (its status and reason), ``UsageError`` for a method called in the
wrong state by the local side.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ..cuda_enums import CUresult
from ..errors import ProtocolError, Refused, UsageError
from .calls import MAX_REPLY_BLOB, SPECS, CallSpec
from .frames import (
    HEADER,
    HEADER_SIZE,
    MAX_CONTROL_BODY,
    PROTO_MAJOR,
    Flag,
    Hello,
    Kind,
    Welcome,
    encode_bye,
    encode_error,
    encode_renew,
    parse_header,
)

CALL: Final = int(Kind.CALL)
REPLY: Final = int(Kind.REPLY)
ERROR: Final = int(Kind.ERROR)


class State(Enum):
    IDLE = "idle"
    """Client: nothing sent yet. Server: waiting for HELLO."""
    HANDSHAKE = "handshake"
    """Client: HELLO sent, waiting for WELCOME."""
    READY = "ready"
    CLOSED = "closed"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True)
class Welcomed:
    welcome: Welcome


@dataclass(frozen=True)
class Replied:
    call: str
    seq: int
    status: int
    values: tuple
    blob: bytes = b""


@dataclass(frozen=True)
class HelloReceived:
    hello: Hello


@dataclass(frozen=True)
class CallReceived:
    call: str
    seq: int
    args: tuple
    blob: bytes = b""
    no_reply: bool = False


@dataclass(frozen=True)
class Renewed:
    token: str


@dataclass(frozen=True)
class Goodbye:
    pass


Event = Welcomed | Replied | HelloReceived | CallReceived | Renewed | Goodbye


class Plan:
    """One call's precompiled packers: request header+arguments in one struct, reply header+values
    in one struct, and what the checks need (fixed sizes, where a blob's length sits, limits)."""

    __slots__ = ("spec", "code", "name", "flags", "req", "req_size", "call_st", "resp", "resp_size",
                 "reply_st", "reply_ok", "req_blob_idx", "resp_blob_idx", "max_req_blob", "synchronizing", "zeros")

    def __init__(self, spec: CallSpec) -> None:
        self.spec = spec
        self.code = int(spec.call)
        self.name = spec.fn.name
        self.flags = int(Flag.NO_REPLY) if spec.async_ else 0
        self.req = spec.req
        self.req_size = spec.req.size
        self.call_st = struct.Struct(HEADER.format + spec.req.format[1:])
        self.resp = spec.resp
        self.resp_size = spec.resp.size
        self.reply_st = struct.Struct(HEADER.format + spec.resp.format[1:])
        self.reply_ok = functools.partial(self.reply_st.pack, spec.resp.size, REPLY, 0, self.code)
        """``reply_ok(seq, 0, *values)``: a successful blob-less REPLY (the hot path's packer)."""
        self.req_blob_idx = spec.req_names.index(spec.req_blob) if spec.req_blob else -1
        self.resp_blob_idx = spec.resp_names.index(spec.resp_blob) if spec.resp_blob else -1
        self.max_req_blob = spec.max_req_blob
        self.synchronizing = spec.synchronizing
        self.zeros = spec.resp.unpack(bytes(spec.resp.size))


PLANS: dict[int, Plan] = {code: Plan(spec) for code, spec in SPECS.items()}
_BY_CODE: list[Plan | None] = [PLANS.get(c) for c in range(max(PLANS) + 1)]
"""PLANS as a list: the hot paths index it (cheaper than a dict lookup)."""


def _refusal(status: int, body: bytes, by: str) -> Refused:
    return Refused(body.decode("utf-8", "replace"), status or int(CUresult.CUDA_ERROR_UNKNOWN), by)


class _Buffer:
    """The receive side of ``receive_data``/``next_event``: bytes in, whole messages out."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False

    def add(self, data: bytes) -> None:
        if self.eof:
            raise UsageError("receive_data after the end of the stream")
        if data:
            self.data += data
        else:
            self.eof = True

    def take(self, n: int) -> bytes | None:
        if len(self.data) < n:
            if self.eof:
                raise ProtocolError(f"the stream ended inside a message ({len(self.data)} of {n} bytes)")
            return None
        out = bytes(self.data[:n])
        del self.data[:n]
        return out


class _End:
    """What both ends share: the buffer behind ``receive_data``/``next_event``."""

    def __init__(self) -> None:
        self._in = _Buffer()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` marks the end of the stream."""
        self._in.add(data)


class ClientProtocol(_End):
    """The client end. Not thread-safe: the runtime serialises calls.

    Invariant: at most one call waits for its reply (``expect``); every REPLY must answer it
    (same code and sequence number) with a body exactly as long as its layout says.
    """

    def __init__(self, peer: str = "oriond") -> None:
        super().__init__()
        self.peer = peer
        self.state = State.IDLE
        self.seq = 0
        self.expect: Plan | None = None
        self.expect_seq = 0
        self._open = False
        """READY with no call waiting: ``call`` checks only this."""
        self.welcome: Welcome | None = None
        self._pending: tuple | None = None
        self._plan: Plan | None = None

    # -- sending ------------------------------------------------------------------------------

    def hello(self, hello: Hello) -> bytes:
        if self.state is not State.IDLE:
            raise UsageError(f"HELLO in state {self.state.value}")
        self.state = State.HANDSHAKE
        return hello.encode()

    def call(self, code: int, args: tuple, blob_len: int = 0) -> tuple[bytes, Plan]:
        """Header and fixed arguments of a CALL (``blob_len`` blob bytes must follow); for a call
        that waits, the reply it expects is recorded. Raises UsageError for an unknown code, bad
        arguments or a second waiting call, ProtocolError never."""
        try:
            p = _BY_CODE[code]
        except (IndexError, TypeError):
            p = None
        if p is None or code < 0 or not self._open or blob_len != (args[p.req_blob_idx] if p.req_blob_idx >= 0 else 0):
            raise self._misuse(p, code, args, blob_len)
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        try:
            if args:
                head = p.call_st.pack(p.req_size + blob_len, CALL, p.flags, p.code, seq, 0, *args)
            else:  # no star-call for argument-less calls: measurably cheaper on the null-call path
                head = p.call_st.pack(blob_len, CALL, p.flags, p.code, seq, 0)
        except struct.error as e:
            raise UsageError(f"{p.name}: {e}") from None
        if not p.flags:
            self.expect, self.expect_seq, self._open = p, seq, False
        return head, p

    def _misuse(self, p: Plan | None, code: int, args: tuple, blob_len: int) -> UsageError:
        if p is None or code < 0:
            return UsageError(f"call code {code} is not in the call spec")
        if self.state is not State.READY:
            return UsageError(f"{p.name} in state {self.state.value}")
        if self.expect is not None:
            return UsageError(f"{p.name} while {self.expect.name} waits for its reply")
        if p.req_blob_idx >= 0:
            return UsageError(f"{p.name}: blob of {blob_len} bytes, its length field says {args[p.req_blob_idx]}")
        return UsageError(f"{p.name} takes no blob")

    def renew(self, token: str) -> bytes:
        if self.state is not State.READY:
            raise UsageError(f"RENEW in state {self.state.value}")
        return encode_renew(token)

    def bye(self) -> bytes:
        self.state = State.CLOSED
        self._open = False
        return encode_bye()

    # -- receiving: step methods -------------------------------------------------------------

    def handshake_header(self, raw: bytes) -> int:
        """Validate the header that answers HELLO; returns its body length (WELCOME or ERROR)."""
        if self.state is not State.HANDSHAKE:
            raise UsageError(f"handshake reply in state {self.state.value}")
        hdr, _ = parse_header(raw)
        if hdr.kind is Kind.WELCOME or hdr.kind is Kind.ERROR:
            self._pending = (hdr.length, int(hdr.kind), int(hdr.flags), hdr.code, hdr.seq, hdr.status)
            return hdr.length
        raise ProtocolError(f"expected WELCOME, got {hdr.kind.name}")

    def handshake_body(self, body: bytes) -> Welcome:
        """WELCOME -> READY. ERROR -> raises Refused with its status and reason."""
        assert self._pending is not None
        length, kind, _f, _c, _s, status = self._pending
        self._pending = None
        if len(body) != length:
            raise ProtocolError(f"handshake body of {len(body)} bytes, header says {length}")
        if kind == ERROR:
            self.state = State.CLOSED
            raise _refusal(status, body, self.peer)
        w = Welcome.decode(body)
        if w.major != PROTO_MAJOR:
            self.state = State.CLOSED
            raise ProtocolError(f"{self.peer} speaks protocol {w.major}.{w.minor}, this client {PROTO_MAJOR}.x")
        self.welcome = w
        self.state = State.READY
        self._open = True
        return w

    def reply_header(self, h: tuple) -> Plan | None:
        """Check a header (as unpacked with HEADER) against the waiting call.

        Returns its Plan: the adapter reads ``plan.resp_size`` value bytes next, then, if the
        header's length is larger, calls ``reply_blob``. Returns None for an ERROR frame: the
        adapter reads ``h[0]`` bytes and passes them to ``error_body``. Anything else raises
        ProtocolError at once, before a body byte is read.
        """
        p = self.expect
        length, kind, flags, code, seq, status = h
        if kind == REPLY and p is not None and code == p.code and seq == self.expect_seq and not flags:
            if length == p.resp_size or (p.resp_blob_idx >= 0 and not status
                                         and p.resp_size < length <= p.resp_size + MAX_REPLY_BLOB):
                self.expect, self._open = None, True
                return p
        self._unexpected(h)
        return None

    def _unexpected(self, h: tuple) -> None:
        """Raise the ProtocolError a header that answers nothing deserves; an ERROR frame is kept
        pending for ``error_body``."""
        length, kind, flags, code, seq, status = h
        hdr, _ = parse_header(HEADER.pack(length, kind, flags, code, seq, status))
        if hdr.kind is Kind.ERROR:
            self._pending = h
            return
        p = self.expect
        if p is None:
            raise ProtocolError(f"{hdr.kind.name} code {code} seq {seq} arrived while no call waits")
        if hdr.kind is Kind.REPLY and code == p.code and seq == self.expect_seq and not flags:
            if status:
                raise ProtocolError(f"{p.name}: a failed reply (status {status}) carries a blob")
            raise ProtocolError(f"{p.name}: reply body of {length} bytes, its layout has {p.resp_size}"
                                + (" plus a blob" if p.resp_blob_idx >= 0 else ""))
        raise ProtocolError(f"{hdr.kind.name} code {code} seq {seq} does not answer {p.name} seq {self.expect_seq}")

    def reply_blob(self, p: Plan, values: tuple, length: int) -> int:
        """The reply blob's length, checked against the length field its values declare."""
        n = length - p.resp_size
        if p.resp_blob_idx < 0 or values[p.resp_blob_idx] != n:
            raise ProtocolError(f"{p.name}: reply blob of {n} bytes, its length field says "
                                f"{values[p.resp_blob_idx] if p.resp_blob_idx >= 0 else 'none'}")
        return n

    def error_body(self, body: bytes) -> Refused:
        """The Refused exception an ERROR frame stands for (the session is over)."""
        assert self._pending is not None
        status = self._pending[5]
        self._pending = None
        self.state = State.CLOSED
        self.expect, self._open = None, False
        return _refusal(status, body, self.peer)

    # -- receiving: whole messages ------------------------------------------------------------

    def next_event(self) -> Event | _NeedData:
        """The next complete message as an event, or NEED_DATA. Raises ProtocolError or Refused."""
        buf = self._in
        if self._pending is None:
            raw = buf.take(HEADER_SIZE)
            if raw is None:
                return NEED_DATA
            if self.state is State.HANDSHAKE:
                self.handshake_header(raw)
            else:
                h = HEADER.unpack(raw)
                p = self.reply_header(h)
                self._pending = h
                self._plan = p
        assert self._pending is not None
        length = self._pending[0]
        if self.state is State.HANDSHAKE:
            body = buf.take(length)
            if body is None:
                return NEED_DATA
            return Welcomed(self.handshake_body(body))
        p = self._plan
        if p is None:
            body = buf.take(length)
            if body is None:
                return NEED_DATA
            raise self.error_body(body)
        body = buf.take(length)
        if body is None:
            return NEED_DATA
        h, self._pending = self._pending, None
        values = p.resp.unpack_from(body) if p.resp_size else ()
        blob = b""
        if length > p.resp_size:
            n = self.reply_blob(p, values, length)
            blob = body[p.resp_size:p.resp_size + n]
        return Replied(p.name, h[4], h[5], values, blob)


class ServerProtocol(_End):
    """The server end. Owns the deferred error of NO_REPLY calls: the first one that fails is
    reported as the status of the next synchronising call, which then does not run."""

    def __init__(self, peer: str = "client") -> None:
        super().__init__()
        self.peer = peer
        self.state = State.IDLE
        self.deferred = 0
        self.hello: Hello | None = None
        self._pending: tuple | None = None
        self._plan: Plan | None = None

    # -- handshake ------------------------------------------------------------------------------

    def hello_header(self, raw: bytes) -> int:
        """Validate the first header; returns the HELLO body length to read."""
        if self.state is not State.IDLE:
            raise UsageError(f"HELLO in state {self.state.value}")
        hdr, _ = parse_header(raw)
        if hdr.kind is not Kind.HELLO:
            raise ProtocolError(f"expected HELLO, got {hdr.kind.name}")
        return hdr.length

    def hello_body(self, body: bytes) -> Hello:
        hello = Hello.decode(body)
        if hello.major != PROTO_MAJOR:
            raise ProtocolError(f"client speaks protocol {hello.major}.{hello.minor}, server {PROTO_MAJOR}.x")
        self.hello = hello
        self.state = State.HANDSHAKE
        return hello

    def welcome(self, w: Welcome) -> bytes:
        if self.state is not State.HANDSHAKE:
            raise UsageError(f"WELCOME in state {self.state.value}")
        self.state = State.READY
        return w.encode()

    def refuse(self, reason: str, status: int) -> bytes:
        """An ERROR frame (fatal: the session is over). ``status`` must be a non-zero CUresult."""
        self.state = State.CLOSED
        return encode_error(reason, status or int(CUresult.CUDA_ERROR_UNKNOWN))

    # -- calls: step methods ------------------------------------------------------------------

    def call_header(self, h: tuple) -> Plan | Kind:
        """Check a header (as unpacked with HEADER). Returns the call's Plan (read ``req_size``
        argument bytes next, then ``call_blob``), or Kind.RENEW (read ``h[0]`` bytes, then
        ``renew_body``) or Kind.BYE (the session is over). Raises ProtocolError otherwise."""
        length, kind, flags, code, _seq, st = h
        if kind == CALL and not st and code < len(_BY_CODE):
            p = _BY_CODE[code]
            if p is not None and flags == p.flags and (
                    length == p.req_size or p.req_blob_idx >= 0 and length > p.req_size):
                if self.state is State.READY:
                    return p
        return self._control(h)

    def _control(self, h: tuple) -> Kind:
        length, kind, flags, code, seq, status = h
        hdr, spec = parse_header(HEADER.pack(length, kind, flags, code, seq, status))
        if self.state is not State.READY:
            raise ProtocolError(f"{hdr.kind.name} before the session was welcomed")
        if hdr.kind is Kind.RENEW:
            return Kind.RENEW
        if hdr.kind is Kind.BYE:
            if length:
                raise ProtocolError("BYE carries no body")
            self.state = State.CLOSED
            return Kind.BYE
        if hdr.kind is Kind.CALL and status:
            raise ProtocolError("a CALL carries status 0")
        if hdr.kind is Kind.CALL and spec is not None:
            want = "NO_REPLY" if spec.async_ else "no flags"
            raise ProtocolError(f"{spec.fn.name} must be sent with {want}")
        raise ProtocolError(f"unexpected {hdr.kind.name} message from the {self.peer}")

    def call_blob(self, p: Plan, args: tuple, length: int) -> int:
        """The request blob's length, checked against its field and the call's limit."""
        if p.req_blob_idx < 0:
            return 0
        n = args[p.req_blob_idx]
        if n > p.max_req_blob or p.req_size + n != length:
            field = p.spec.req_blob
            if n > p.max_req_blob:
                raise ProtocolError(f"{p.name}: {field}={n} exceeds the limit {p.max_req_blob}")
            raise ProtocolError(f"{p.name}: {field}={n} does not match a body of {length} bytes")
        return n

    def renew_body(self, body: bytes) -> str:
        if len(body) > MAX_CONTROL_BODY:
            raise ProtocolError("RENEW body too long")
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("RENEW token is not ASCII") from None

    def take_deferred(self, p: Plan) -> int:
        """For a synchronising call, the deferred status it must report instead of running (0: run it)."""
        if p.synchronizing and self.deferred:
            status, self.deferred = self.deferred, 0
            return status
        return 0

    def finished(self, p: Plan, status: int) -> bool:
        """Record a call's outcome; True if a REPLY must be sent (False: NO_REPLY, error deferred)."""
        if p.flags:
            if status and not self.deferred:
                self.deferred = status
            return False
        return True

    @staticmethod
    def reply(p: Plan, seq: int, status: int, values: tuple = (), blob_len: int = 0) -> bytes:
        """A REPLY's header and values; a failed call's values are zero and it has no blob."""
        if status:
            return p.reply_st.pack(p.resp_size, REPLY, 0, p.code, seq, status, *p.zeros)
        if not values:  # no star-call for the header-only reply: measurably cheaper
            return p.reply_st.pack(blob_len, REPLY, 0, p.code, seq, 0)
        return p.reply_st.pack(p.resp_size + blob_len, REPLY, 0, p.code, seq, 0, *values)

    # -- receiving: whole messages -----------------------------------------------------------

    def next_event(self) -> Event | _NeedData:
        buf = self._in
        if self._pending is None:
            raw = buf.take(HEADER_SIZE)
            if raw is None:
                return NEED_DATA
            if self.state is State.IDLE:
                self._pending = (self.hello_header(raw),)
                self._plan = None
            else:
                h = HEADER.unpack(raw)
                r = self.call_header(h)
                if r is Kind.BYE:
                    return Goodbye()
                self._pending = h
                self._plan = r if isinstance(r, Plan) else None
        length = self._pending[0]
        body = buf.take(length)
        if body is None:
            return NEED_DATA
        pending, self._pending = self._pending, None
        if self.state is State.IDLE:
            return HelloReceived(self.hello_body(body))
        p = self._plan
        if p is None:
            return Renewed(self.renew_body(body))
        args = p.req.unpack_from(body) if p.req_size else ()
        n = self.call_blob(p, args, length)
        return CallReceived(p.name, pending[4], args, body[p.req_size:p.req_size + n], bool(p.flags))


def describe_answer(raw: bytes) -> str:
    """What a peer that is not oriond answered, for a message (printable bytes, abridged)."""
    text = raw[:48].decode("ascii", "replace")
    shown = "".join(c if c.isprintable() else "." for c in text)
    return f"{len(raw)} bytes {shown!r}" + (" (an HTTP server: is this the controller's port?)"
                                             if raw.startswith(b"HTTP/") else "")


__all__ = [
    "NEED_DATA", "CallReceived", "ClientProtocol", "Event", "Goodbye", "HelloReceived", "PLANS", "Plan",
    "Renewed", "Replied", "ServerProtocol", "State", "Welcomed", "describe_answer",
]
