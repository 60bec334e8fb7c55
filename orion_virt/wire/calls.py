"""The wire layout of every call, derived from the call spec (``wire.spec``) at import.

Each call has a fixed little-endian request struct and reply struct (Python ``struct`` notation,
documented in docs/protocol.md so a C client can speak it), plus optional variable-length blobs:

* ``req_blob``: name of the request field that holds the byte length of the blob that follows the
  fixed arguments (the blob *is* the rest of the body), or ``None``;
* ``resp_blob``: likewise for the reply.

``async_`` calls are sent with the NO_REPLY flag: the client does not wait, and an error they cause
is reported by the server as the status of the next synchronising call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codes import Call
from .spec import CALLS, Arg, Dir, Fn, Role

MAX_BODY = 0xFFFFFFFF
"""A message body's length is a u32."""
MAX_COPY = MAX_BODY - 64
"""Copies are streamed: a blob's length is bounded by what the session owns, checked before reading,
and by the u32 body length; a client splits a larger copy into several calls."""
MAX_REPLY_BLOB = MAX_COPY

WIRE_TYPES: dict[str, str] = {
    "int": "i", "CUdevice": "i", "CUdevice_attribute": "i", "unsigned int": "I", "unsigned char": "B",
    "size_t": "Q", "CUdeviceptr": "Q", "float": "f", "CUuuid": "16s",
    "CUcontext": "Q", "CUstream": "Q", "CUevent": "Q", "CUmodule": "Q", "CUfunction": "Q",
    "CUfunction_attribute": "i", "CUlimit": "i", "CUpointer_attribute": "i", "unsigned long long": "Q",
    "CUgraph": "Q", "CUgraphExec": "Q", "CUstreamCaptureMode": "i", "CUstreamCaptureStatus": "i", "cuuint64_t": "Q",
}
"""C type (pointee for ``out`` arguments) -> struct code of its wire field."""

_BUFFERS = (Role.HOST_IN, Role.HOST_OUT)


@dataclass(frozen=True)
class WireField:
    name: str
    fmt: str
    arg: Arg | None
    """The C argument the field carries, or None for a length field the wire adds."""
    length_of: str = ""
    """For a length field: the buffer argument whose byte count it is."""


@dataclass(frozen=True)
class CallSpec:
    fn: Fn
    call: Call
    req: struct.Struct
    req_names: tuple[str, ...]
    req_fields: tuple[WireField, ...]
    resp: struct.Struct
    resp_names: tuple[str, ...]
    resp_fields: tuple[WireField, ...]
    req_blob: str | None = None
    resp_blob: str | None = None
    async_: bool = False
    synchronizing: bool = False
    max_req_blob: int = 0

    def req_index(self, arg: str) -> int:
        """Position in the request tuple of the field carrying C argument ``arg``."""
        return self.req_names.index(arg)


def _pointee(a: Arg) -> str:
    t = a.ctype.removesuffix("*").strip() if a.dir is not Dir.IN else a.ctype
    try:
        return WIRE_TYPES[t]
    except KeyError:
        raise ValueError(f"argument {a.name}: no wire type for C type {a.ctype!r}") from None


def layout(fn: Fn) -> CallSpec:
    """The wire layout of ``fn``. Raises ValueError for a spec entry that cannot be laid out."""
    req: list[WireField] = []
    resp: list[WireField] = []
    req_blob = resp_blob = None
    limit = 0
    names = {a.name for a in fn.args}
    for a in fn.args:
        if a.role is Role.NULL:
            continue
        if a.role is Role.HOST_IN:
            if req_blob is not None:
                raise ValueError(f"{fn.name}: more than one input buffer")
            if a.length:
                if a.length not in names:
                    raise ValueError(f"{fn.name}: {a.name} length {a.length!r} is not an argument")
                req_blob, limit = a.length, MAX_COPY
            else:
                req_blob, limit = f"{a.name}_len", a.limit
                req.append(WireField(req_blob, "I", None, a.name))
                if not a.limit:
                    raise ValueError(f"{fn.name}: {a.name} needs a limit")
        elif a.role is Role.HOST_OUT:
            if resp_blob is not None:
                raise ValueError(f"{fn.name}: more than one output buffer")
            resp_blob = f"{a.name}_len"
            resp.append(WireField(resp_blob, "Q", None, a.name))
        elif a.dir is Dir.IN:
            req.append(WireField(a.name, _pointee(a), a))
        else:
            if a.dir is Dir.INOUT:
                req.append(WireField(a.name, _pointee(a), a))
            resp.append(WireField(a.name, _pointee(a), a))
    if fn.no_reply and resp:
        raise ValueError(f"{fn.name}: a NO_REPLY call cannot return values")
    return CallSpec(
        fn, Call(fn.code),
        struct.Struct("<" + "".join(f.fmt for f in req)), tuple(f.name for f in req), tuple(req),
        struct.Struct("<" + "".join(f.fmt for f in resp)), tuple(f.name for f in resp), tuple(resp),
        req_blob, resp_blob, fn.no_reply, fn.sync, limit,
    )


SPECS: dict[int, CallSpec] = {fn.code: layout(fn) for fn in CALLS}
BY_NAME: dict[str, CallSpec] = {s.fn.name: s for s in SPECS.values()}
