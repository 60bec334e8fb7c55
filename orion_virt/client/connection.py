"""A client session with oriond over any Stream: HELLO, calls, replies, BYE.

Calls marked async in the call table are sent without waiting; the next call that waits gets
their error, if any, as its status (the server reports it there). Replies must match the call's
code and sequence number, or the session is considered broken (ProtocolError).
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import ProtocolError, TransportError
from ..transport.base import Stream
from ..wire import HEADER, HEADER_SIZE, SPECS, Call, Hello, Kind, Welcome, parse_header
from ..wire.calls import CallSpec
from ..wire.frames import encode_bye, encode_renew

_HDR = "IBBHIi"


class _Packer:
    __slots__ = ("spec", "st", "flags", "fixed", "blob_idx", "resp", "resp_size", "resp_blob_idx")

    def __init__(self, spec: CallSpec) -> None:
        self.spec = spec
        self.st = struct.Struct("<" + _HDR + spec.req.format[1:])
        self.flags = 1 if spec.async_ else 0
        self.fixed = spec.req.size
        self.resp = spec.resp
        self.resp_size = spec.resp.size
        self.resp_blob_idx = spec.resp_names.index(spec.resp_blob) if spec.resp_blob else -1


PACKERS: dict[int, _Packer] = {code: _Packer(spec) for code, spec in SPECS.items()}
_NO_REPLY: tuple[int, tuple, bytes] = (0, (), b"")


class Connection:
    """Not thread-safe: the runtime serialises calls with a lock."""

    def __init__(self, stream: Stream, transport: str) -> None:
        self.stream = stream
        self.transport = transport
        self.seq = 0
        self.welcome: Welcome | None = None
        self.closed = False

    def handshake(self, hello: Hello) -> Welcome:
        """Send HELLO, wait for WELCOME. Raises TransportError with the server's reason if refused."""
        self.stream.send(hello.encode())
        self.stream.flush()
        hdr, _ = parse_header(self.stream.recv_exact(HEADER_SIZE))
        body = self.stream.recv_exact(hdr.length)
        if hdr.kind is Kind.ERROR:
            raise TransportError(f"oriond refused the session: {body.decode('utf-8', 'replace')}")
        if hdr.kind is not Kind.WELCOME:
            raise ProtocolError(f"expected WELCOME, got {hdr.kind.name}")
        self.welcome = Welcome.decode(body)
        return self.welcome

    def call(self, code: Call, args: tuple, blob: Any = None, blob_len: int = 0,
             out: memoryview | None = None) -> tuple[int, tuple, bytes]:
        """Send a call; for a synchronous one, wait for (status, values, reply blob).

        ``blob`` is sent after the fixed arguments (``blob_len`` bytes); ``out``, if given,
        receives the reply blob instead of returning it.
        """
        p = PACKERS[code]
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        stream = self.stream
        if args:
            head = p.st.pack(p.fixed + blob_len, 3, p.flags, code, seq, 0, *args)
        else:  # no star-call for argument-less calls (cuCtxSynchronize, ...): measurably cheaper
            head = p.st.pack(blob_len, 3, p.flags, code, seq, 0)
        if blob is None:
            stream.send(head)
        elif blob_len <= 4096:
            stream.send(head + bytes(blob))
        else:
            stream.send(head)
            stream.send_from(blob)
        if p.flags:
            return _NO_REPLY
        stream.flush()
        length, kind, flags, rcode, rseq, status = stream.recv_unpack(HEADER)
        if kind != 4 or rcode != code or rseq != seq:
            return self._unexpected(HEADER.pack(length, kind, flags, rcode, rseq, status), code, seq)
        if length == p.resp_size:  # the common reply: fixed values only, no blob
            return status, (stream.recv_unpack(p.resp) if length else ()), b""
        resp = p.resp
        values = resp.unpack(stream.recv_exact(resp.size)) if resp.size else ()
        if length < resp.size:
            raise ProtocolError(f"{Call(code).name}: short reply")
        extra = length - resp.size
        if extra:
            if p.resp_blob_idx < 0 or values[p.resp_blob_idx] != extra:
                raise ProtocolError(f"{Call(code).name}: reply blob of {extra} bytes is not declared")
            if out is not None:
                if extra > len(out):
                    raise ProtocolError(f"{Call(code).name}: reply blob larger than the buffer")
                stream.recv_into(out[:extra])
                return status, values, b""
            return status, values, stream.recv_exact(extra)
        return status, values, b""

    def _unexpected(self, raw: bytes, code: int, seq: int) -> tuple[int, tuple, bytes]:
        hdr, _ = parse_header(raw)
        if hdr.kind is Kind.ERROR:
            text = self.stream.recv_exact(hdr.length).decode("utf-8", "replace")
            raise TransportError(f"oriond ended the session: {text}")
        raise ProtocolError(f"reply {hdr.kind.name} code {hdr.code} seq {hdr.seq} does not answer "
                            f"{Call(code).name} seq {seq}")

    def renew(self, token: str) -> None:
        """Pass a renewed allocation token to the server (no reply; it ends the session when the
        token is not valid for this allocation)."""
        self.stream.send(encode_renew(token))
        self.stream.flush()

    def bye(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.stream.send(encode_bye())
            self.stream.flush()
        except TransportError:
            pass
        self.stream.close()
