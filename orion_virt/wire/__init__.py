"""The Orion wire protocol, with no I/O: call table, framing, message codec (docs/protocol.md)."""

from .calls import SPECS, Call, CallSpec
from .frames import (
    HEADER, HEADER_SIZE, PROTO_MAJOR, PROTO_MINOR, Flag, Header, Hello, Kind, Message, Welcome,
    check_blob, decode_message, encode_bye, encode_call, encode_error, encode_renew, encode_reply, parse_header,
)

__all__ = [
    "SPECS", "Call", "CallSpec", "HEADER", "HEADER_SIZE", "PROTO_MAJOR", "PROTO_MINOR", "Flag",
    "Header", "Hello", "Kind", "Message", "Welcome", "check_blob", "decode_message", "encode_bye",
    "encode_call", "encode_error", "encode_renew", "encode_reply", "parse_header",
]
