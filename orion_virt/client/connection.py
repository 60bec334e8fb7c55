"""A client session with oriond over any Stream: the I/O half of ``wire.ClientProtocol``.

The protocol object validates every header before a body byte is read, matches each reply to
its call, and turns ERROR frames into ``Refused`` (status and reason). This adapter moves the
bytes: it reads headers and values where they lie and streams bulk blobs straight between the
carrier and the application's buffer.

Waits are bounded where an answer is due at once: the HELLO waits ``hello_timeout`` seconds and
then fails naming the address and what answered. Calls wait as long as the GPU work takes;
a dead peer is noticed by the transport (shm heartbeat, TCP keepalive) within its heartbeat.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError, Refused, TransportError, TransportTimeout
from ..transport.base import Stream
from ..wire import HEADER, HEADER_SIZE, ClientProtocol, Hello, Welcome
from ..wire.protocol import describe_answer

HELLO_TIMEOUT_S = 5.0
"""Default bound on the wait for WELCOME (``ORION_HELLO_TIMEOUT``, ``[client] hello_timeout``)."""

_NO_REPLY: tuple[int, tuple, bytes] = (0, (), b"")


class Connection:
    """Not thread-safe: the runtime serialises calls with a lock."""

    def __init__(self, stream: Stream, transport: str, hello_timeout: float = HELLO_TIMEOUT_S) -> None:
        self.stream = stream
        self.transport = transport
        self.hello_timeout = hello_timeout
        self.proto = ClientProtocol()
        self._call, self._reply_header = self.proto.call, self.proto.reply_header
        self.welcome: Welcome | None = None
        self.closed = False

    def handshake(self, hello: Hello) -> Welcome:
        """Send HELLO, wait for WELCOME. Raises Refused (the server's status and reason),
        ProtocolError naming what answered when it is not oriond, TransportTimeout when
        nothing answered within ``hello_timeout``."""
        stream, proto = self.stream, self.proto
        where = stream.name
        saved = stream.timeout
        stream.set_timeout(self.hello_timeout)
        raw = b""
        try:
            stream.send(proto.hello(hello))
            stream.flush()
            raw = stream.recv_exact(HEADER_SIZE)
            n = proto.handshake_header(raw)
            self.welcome = proto.handshake_body(stream.recv_exact(n))
        except TransportTimeout:
            raise TransportTimeout(
                f"{where}: no answer to HELLO within {self.hello_timeout:g} s"
                + (f" (it sent {describe_answer(raw)})" if raw else " (the port accepts connections but "
                   "nothing answered: is it oriond's port, 9960 by default?)")) from None
        except ProtocolError as e:
            raise ProtocolError(f"{where} is not an Orion Server: it answered {describe_answer(raw)} ({e})") from None
        finally:
            stream.set_timeout(saved)
        return self.welcome

    def call(self, code: int, args: tuple, blob: Any = None, blob_len: int = 0,
             out: memoryview | None = None) -> tuple[int, tuple, bytes]:
        """Send a call; for one that waits, return (status, values, reply blob).

        ``blob`` is sent after the fixed arguments (``blob_len`` bytes); ``out``, if given,
        receives the reply blob instead of returning it. Raises Refused when the server ended
        the session with a reason, ProtocolError for a reply that breaks the protocol,
        TransportError when the carrier fails.
        """
        stream = self.stream
        head, p = self._call(code, args, blob_len)
        if blob is None:
            stream.send(head)
        elif blob_len <= 4096:
            stream.send(head + bytes(blob))
        else:
            stream.send(head)
            stream.send_from(blob)
        if p.flags:
            return _NO_REPLY
        if stream.buffered:
            stream.flush()
        h = stream.recv_unpack(HEADER)
        r = self._reply_header(h)
        if r is None:
            raise self.proto.error_body(stream.recv_exact(h[0]))
        length = h[0]
        values = stream.recv_unpack(r.resp) if r.resp_size else ()
        if length == r.resp_size:
            return h[5], values, b""
        n = self.proto.reply_blob(r, values, length)
        if out is not None:
            if n > len(out):
                raise ProtocolError(f"{r.name}: reply blob of {n} bytes, the buffer holds {len(out)}")
            stream.recv_into(out[:n])
            return h[5], values, b""
        return h[5], values, stream.recv_exact(n)

    def renew(self, token: str) -> None:
        """Pass a renewed allocation token to the server (no reply; it ends the session when the
        token is not valid for this allocation)."""
        self.stream.send(self.proto.renew(token))
        self.stream.flush()

    def bye(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.stream.send(self.proto.bye())
            self.stream.flush()
        except TransportError:
            pass
        self.stream.close()


__all__ = ["HELLO_TIMEOUT_S", "Connection", "Refused"]
