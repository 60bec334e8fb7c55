"""Framing and message codec. No I/O: bytes in, typed messages out (and back).

Every message is a 16-byte header followed by ``length`` body bytes::

    u32 length   body length
    u8  kind     Kind
    u8  flags    Flag bits
    u16 code     Call code (CALL/REPLY), 0 otherwise
    u32 seq      request sequence number, echoed by its reply
    i32 status   CUresult of a REPLY, 0 otherwise

``parse_header`` returns a valid header or raises ProtocolError: lengths are checked against
per-kind and per-call limits *before* anything is allocated. Whole sessions (states, sequence
numbers, replies matched to calls) are ``wire.protocol``'s.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ..errors import ProtocolError
from .calls import MAX_REPLY_BLOB, SPECS, CallSpec

HEADER = struct.Struct("<IBBHIi")
HEADER_SIZE = HEADER.size
PROTO_MAJOR = 1
PROTO_MINOR = 0
HELLO_MAGIC = 0x4F52494F  # "ORIO"


class Kind(IntEnum):
    HELLO = 1
    WELCOME = 2
    CALL = 3
    REPLY = 4
    ERROR = 5
    BYE = 6
    RENEW = 7


class Flag(IntFlag):
    NONE = 0
    NO_REPLY = 1


MAX_CONTROL_BODY = 64 << 10
"""Bound on HELLO/WELCOME/ERROR/BYE bodies."""


@dataclass(frozen=True)
class Header:
    length: int
    kind: Kind
    flags: Flag
    code: int
    seq: int
    status: int

    def pack(self) -> bytes:
        return HEADER.pack(self.length, self.kind, self.flags, self.code, self.seq, self.status)


def max_body(kind: Kind, code: int, spec: CallSpec | None) -> int:
    if kind in (Kind.CALL, Kind.REPLY):
        assert spec is not None
        fixed = spec.req.size if kind is Kind.CALL else spec.resp.size
        if kind is Kind.CALL:
            return fixed + (spec.max_req_blob if spec.req_blob else 0)
        return fixed + (MAX_REPLY_BLOB if spec.resp_blob else 0)
    return MAX_CONTROL_BODY


def parse_header(data: bytes | memoryview) -> tuple[Header, CallSpec | None]:
    """Validate a 16-byte header. Returns it and the call spec for CALL/REPLY."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"header must be {HEADER_SIZE} bytes, got {len(data)}")
    length, kind, flags, code, seq, status = HEADER.unpack(data)
    try:
        k = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown message kind {kind}") from None
    if flags & ~int(Flag.NO_REPLY):
        raise ProtocolError(f"unknown flags 0x{flags:02x}")
    spec: CallSpec | None = None
    if k in (Kind.CALL, Kind.REPLY):
        spec = SPECS.get(code)
        if spec is None:
            raise ProtocolError(f"unknown call code {code}")
        fixed = spec.req.size if k is Kind.CALL else spec.resp.size
        blob = spec.req_blob if k is Kind.CALL else spec.resp_blob
        if length < fixed or (blob is None and length != fixed):
            raise ProtocolError(f"{spec.call.name}: body of {length} bytes, expected {fixed}")
    elif code != 0:
        raise ProtocolError(f"{k.name} must carry code 0")
    if length > max_body(k, code, spec):
        raise ProtocolError(f"{k.name} body of {length} bytes exceeds the limit")
    return Header(length, k, Flag(flags), code, seq, status), spec


# --- HELLO / WELCOME / ERROR bodies -------------------------------------------------------------

HELLO_FIXED = struct.Struct("<IHHIHHIHHHH")


@dataclass(frozen=True)
class Hello:
    """First message of a session: who the client is and what it was granted."""

    pid: int
    vgpu_count: int
    gmem_mib: int
    ratio: int
    token: str = ""
    program: str = ""
    allocation_id: str = ""
    major: int = PROTO_MAJOR
    minor: int = PROTO_MINOR
    flags: int = 0

    def encode(self) -> bytes:
        tok, prog, alloc = (s.encode() for s in (self.token, self.program, self.allocation_id))
        body = HELLO_FIXED.pack(
            HELLO_MAGIC, self.major, self.minor, self.pid, self.vgpu_count, self.ratio,
            self.gmem_mib, len(tok), len(prog), len(alloc), self.flags,
        ) + tok + prog + alloc
        return Header(len(body), Kind.HELLO, Flag.NONE, 0, 0, 0).pack() + body

    @classmethod
    def decode(cls, body: bytes) -> Hello:
        if len(body) < HELLO_FIXED.size:
            raise ProtocolError("HELLO too short")
        magic, major, minor, pid, vgpu, ratio, gmem, lt, lp, la, flags = HELLO_FIXED.unpack_from(body)
        if magic != HELLO_MAGIC:
            raise ProtocolError("HELLO has a bad magic number: not an Orion client")
        if HELLO_FIXED.size + lt + lp + la != len(body):
            raise ProtocolError("HELLO string lengths do not match its body")
        rest = body[HELLO_FIXED.size:]
        try:
            tok = rest[:lt].decode("ascii")
            prog = rest[lt:lt + lp].decode("utf-8", "replace")
            alloc = rest[lt + lp:].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("HELLO token or allocation id is not ASCII") from None
        if vgpu > 64:
            raise ProtocolError(f"HELLO asks for {vgpu} vGPUs (at most 64)")
        if ratio > 100:
            raise ProtocolError(f"HELLO ratio {ratio} is over 100")
        if flags:
            raise ProtocolError(f"HELLO flags 0x{flags:04x}: this protocol version defines none")
        return cls(pid, vgpu, gmem, ratio, tok, prog, alloc, major, minor, flags)


WELCOME_FIXED = struct.Struct("<HHQH")


@dataclass(frozen=True)
class Welcome:
    session_id: int
    backend: str
    major: int = PROTO_MAJOR
    minor: int = PROTO_MINOR

    def encode(self) -> bytes:
        name = self.backend.encode()
        body = WELCOME_FIXED.pack(self.major, self.minor, self.session_id, len(name)) + name
        return Header(len(body), Kind.WELCOME, Flag.NONE, 0, 0, 0).pack() + body

    @classmethod
    def decode(cls, body: bytes) -> Welcome:
        if len(body) < WELCOME_FIXED.size:
            raise ProtocolError("WELCOME too short")
        major, minor, sid, ln = WELCOME_FIXED.unpack_from(body)
        if WELCOME_FIXED.size + ln != len(body):
            raise ProtocolError("WELCOME length mismatch")
        return cls(sid, body[WELCOME_FIXED.size:].decode("utf-8", "replace"), major, minor)


def encode_error(message: str, status: int = 0) -> bytes:
    """A fatal error: the sender closes the session after it."""
    body = message.encode("utf-8", "replace")[:MAX_CONTROL_BODY]
    return Header(len(body), Kind.ERROR, Flag.NONE, 0, 0, status).pack() + body


def encode_bye() -> bytes:
    return Header(0, Kind.BYE, Flag.NONE, 0, 0, 0).pack()


def encode_renew(token: str) -> bytes:
    """A renewed allocation token for the running session (no reply)."""
    body = token.encode("ascii")
    return Header(len(body), Kind.RENEW, Flag.NONE, 0, 0, 0).pack() + body
