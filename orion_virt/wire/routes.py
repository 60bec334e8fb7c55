"""Cross-node routing of each call, from the roles of the call spec: which request field names the
server a call goes to, which further handles must come from that server, whether the reply's
first value is a new handle, and how the replies of a broadcast merge.

``tools/gen_native.py`` writes these tables into the native client's cross-node router
(``route_call``) as byte offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from .calls import SPECS, CallSpec
from .spec import Role


@dataclass(frozen=True)
class Route:
    """How one call is routed. Positions index the request fields (``CallSpec.req_fields``)."""

    device: int | None = None
    """the field with the device ordinal (global at the client, local at the server)"""
    owner: int | None = None
    """the field with the handle whose server the call goes to (0: the current server)"""
    same: tuple[int, ...] = ()
    """further handle fields that must be 0 or come from the owner's server"""
    reply_handle: bool = False
    """the first reply value is a new handle, tagged with its server before the caller sees it"""
    context_call: bool = False
    """the owner handle is a context (a foreign one is CUDA_ERROR_INVALID_CONTEXT)"""
    merge: str = ""
    """broadcast to every server, the first reply values merged: "sum", "min", "or" (bits) or "first"."""


def route_of(sp: CallSpec) -> Route:
    """The route of one call. Devices win over handles; a call with neither goes to the server of
    the current context."""
    fn = sp.fn
    if fn.route.startswith("all:"):
        return Route(merge=fn.route[4:])
    fields = sp.req_fields
    handles = [i for i, f in enumerate(fields) if f.arg is not None and f.arg.role is Role.HANDLE]
    devices = [i for i, f in enumerate(fields) if f.arg is not None and f.arg.role is Role.DEVICE]
    outs = [f for f in sp.resp_fields if f.arg is not None]
    reply = bool(outs) and outs[0].arg is not None and outs[0].arg.role is Role.HANDLE \
        and sp.resp_fields[0] is outs[0]
    if devices:
        return Route(device=devices[0], reply_handle=reply)
    if handles:
        first = fields[handles[0]].arg
        return Route(owner=handles[0], same=tuple(handles[1:]), reply_handle=reply,
                     context_call=first is not None and first.kind == "context")
    return Route(reply_handle=reply)


ROUTES: dict[int, Route] = {code: route_of(sp) for code, sp in SPECS.items()}
"""code -> its Route"""
