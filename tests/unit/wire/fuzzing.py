"""Fuzz drivers for the two protocol objects: the same inputs for the short (hypothesis) and the
long (a million inputs) runs. An input may only end in ProtocolError (or Refused, for an ERROR
frame at the client); every event that comes out must satisfy the protocol's invariants."""

from __future__ import annotations

import random
import struct

from orion_virt.errors import ProtocolError, Refused
from orion_virt.wire import (
    NEED_DATA,
    PLANS,
    CallReceived,
    ClientProtocol,
    Goodbye,
    Hello,
    Plan,
    Renewed,
    Replied,
    ServerProtocol,
    Welcome,
)

CODES = sorted(PLANS)


def ready_pair() -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server protocol past the handshake."""
    c, s = ClientProtocol(), ServerProtocol()
    s.receive_data(c.hello(Hello(pid=1, vgpu_count=2, gmem_mib=64, ratio=100)))
    s.next_event()
    c.receive_data(s.welcome(Welcome(7, "sim")))
    c.next_event()
    return c, s


def _args(p: Plan, rng: random.Random, blob_len: int) -> tuple:
    out: list = []
    for ch in p.req.format.lstrip("<"):
        if ch.isdigit():
            continue
        out.append({"s": b"u" * 16, "f": rng.random(), "B": rng.randrange(256), "i": rng.randrange(-5, 5),
                    "I": rng.randrange(1 << 32)}.get(ch, rng.randrange(1 << 64)))
    if p.req_blob_idx >= 0:
        out[p.req_blob_idx] = blob_len
    return tuple(out)


def _valid_calls(rng: random.Random) -> bytes:
    c, _ = ready_pair()
    parts = []
    for _ in range(rng.randrange(1, 6)):
        p = PLANS[rng.choice(CODES)]
        n = rng.randrange(0, 40) if p.req_blob_idx >= 0 else 0
        head, _ = c.call(p.code, _args(p, rng, n), n)
        c.expect, c._open = None, True  # the fuzzer sends without waiting for replies
        parts.append(head + rng.randbytes(n))
    return b"".join(parts)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(0, 4)):
        op = rng.randrange(3)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        else:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randrange(1, 9))
    return bytes(b)


def _feed(proto: ClientProtocol | ServerProtocol, data: bytes, rng: random.Random) -> list:
    events = []
    pos = 0
    while pos < len(data):
        k = rng.randrange(1, 64)
        proto.receive_data(data[pos:pos + k])
        pos += k
        while (ev := proto.next_event()) is not NEED_DATA:
            events.append(ev)
    if rng.random() < 0.3:
        proto.receive_data(b"")
        while (ev := proto.next_event()) is not NEED_DATA:
            events.append(ev)
    return events


def fuzz_server(data: bytes, rng: random.Random) -> None:
    _, s = ready_pair()
    mode = rng.randrange(3)
    if mode == 1:
        data = _valid_calls(rng)
    elif mode == 2:
        data = _mutate(_valid_calls(rng), rng)
    try:
        events = _feed(s, data, rng)
    except ProtocolError:
        return
    for ev in events:
        if isinstance(ev, CallReceived):
            p = next(x for x in PLANS.values() if x.name == ev.call)
            assert len(ev.args) == len(p.spec.req_names)
            assert len(ev.blob) <= p.max_req_blob
            assert ev.no_reply == bool(p.flags)
        else:
            assert isinstance(ev, (Renewed, Goodbye))


def _valid_reply(c: ClientProtocol, p: Plan, rng: random.Random) -> bytes:
    status = rng.choice((0, 0, 1, 2, 400))
    values = list(struct.unpack(p.resp.format, bytes(p.resp_size)))
    n = 0
    if p.resp_blob_idx >= 0 and not status:
        n = rng.randrange(0, 40)
        values[p.resp_blob_idx] = n
    return ServerProtocol.reply(p, c.expect_seq, status, tuple(values), n) + rng.randbytes(n)


def fuzz_client(data: bytes, rng: random.Random) -> None:
    c, _ = ready_pair()
    waiting = [x for x in PLANS.values() if not x.flags]
    p = rng.choice(waiting)
    c.call(p.code, _args(p, rng, 0) if p.req_blob_idx < 0 else _args(p, rng, 0), 0)
    mode = rng.randrange(3)
    if mode == 1:
        data = _valid_reply(c, p, rng)
    elif mode == 2:
        data = _mutate(_valid_reply(c, p, rng), rng)
    try:
        events = _feed(c, data, rng)
    except (ProtocolError, Refused):
        return
    assert len(events) <= 1
    for ev in events:
        assert isinstance(ev, Replied) and ev.call == p.name and ev.seq == c.seq
        if ev.status:
            assert not ev.blob
