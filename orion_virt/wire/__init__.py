"""The Orion wire protocol, with no I/O: the call spec, framing, and both ends of a session
(docs/protocol.md)."""

from .calls import BY_NAME, SPECS, CallSpec
from .codes import Call
from .frames import (
    HEADER,
    HEADER_SIZE,
    PROTO_MAJOR,
    PROTO_MINOR,
    Flag,
    Header,
    Hello,
    Kind,
    Welcome,
    encode_bye,
    encode_error,
    encode_renew,
    parse_header,
)
from .protocol import (
    NEED_DATA,
    PLANS,
    CallReceived,
    ClientProtocol,
    Goodbye,
    HelloReceived,
    Plan,
    Renewed,
    Replied,
    ServerProtocol,
    State,
    Welcomed,
)

__all__ = [
    "BY_NAME", "HEADER", "HEADER_SIZE", "NEED_DATA", "PLANS", "PROTO_MAJOR", "PROTO_MINOR", "SPECS",
    "Call", "CallReceived", "CallSpec", "ClientProtocol", "Flag", "Goodbye", "Header", "Hello",
    "HelloReceived", "Kind", "Plan", "Renewed", "Replied", "ServerProtocol", "State", "Welcome",
    "Welcomed", "encode_bye", "encode_error", "encode_renew", "parse_header",
]
