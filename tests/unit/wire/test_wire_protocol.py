"""Both ends of the protocol wired together in memory, and hostile bytes thrown at each.

The objects under test are the ones production runs: ``client.connection`` and
``server.session`` call the same step methods that ``receive_data``/``next_event`` use here.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from fuzzing import fuzz_client, fuzz_server, ready_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from orion_virt.cuda_enums import CUresult
from orion_virt.errors import ProtocolError, Refused, UsageError
from orion_virt.wire import (
    HEADER,
    HEADER_SIZE,
    NEED_DATA,
    PLANS,
    SPECS,
    Call,
    CallReceived,
    ClientProtocol,
    Goodbye,
    Hello,
    HelloReceived,
    Kind,
    Renewed,
    Replied,
    ServerProtocol,
    State,
    Welcome,
    Welcomed,
)
from orion_virt.wire.frames import MAX_CONTROL_BODY


def _values(fmt: struct.Struct) -> list:
    out: list = []
    for ch in fmt.format.lstrip("<"):
        if ch.isdigit():
            continue
        out.append({"s": b"x" * 16, "f": 1.5, "B": 7}.get(ch, 7))
    return out


def _pump(src: bytes, dst: ClientProtocol | ServerProtocol) -> list:
    dst.receive_data(src)
    events = []
    while (ev := dst.next_event()) is not NEED_DATA:
        events.append(ev)
    return events


def test_handshake_then_bye() -> None:
    c, s = ClientProtocol(), ServerProtocol()
    hello = Hello(pid=12, vgpu_count=2, gmem_mib=4096, ratio=50, token="o1.abc.def", program="p y",
                  allocation_id="a-1")
    [ev] = _pump(c.hello(hello), s)
    assert isinstance(ev, HelloReceived) and ev.hello == hello
    [w] = _pump(s.welcome(Welcome(session_id=99, backend="sim")), c)
    assert isinstance(w, Welcomed) and w.welcome.session_id == 99 and c.state is State.READY
    [r] = _pump(c.renew("o1.new"), s)
    assert r == Renewed("o1.new")
    [b] = _pump(c.bye(), s)
    assert isinstance(b, Goodbye) and s.state is State.CLOSED


@pytest.mark.parametrize("code", sorted(SPECS))
def test_every_call_round_trips_between_the_two_ends(code: int) -> None:
    c, s = ready_pair()
    p = PLANS[code]
    args = _values(p.req)
    blob = b""
    if p.req_blob_idx >= 0:
        args[p.req_blob_idx] = 5
        blob = b"hello"
    head, _ = c.call(code, tuple(args), len(blob))
    [ev] = _pump(head + blob, s)
    assert isinstance(ev, CallReceived)
    assert (ev.call, ev.args, ev.blob, ev.no_reply) == (p.name, tuple(args), blob, bool(p.flags))
    if p.flags:
        assert c.expect is None
        return
    values = _values(p.resp)
    rblob = b""
    if p.resp_blob_idx >= 0:
        values[p.resp_blob_idx] = 3
        rblob = b"abc"
    [rep] = _pump(s.reply(p, ev.seq, 0, tuple(values), len(rblob)) + rblob, c)
    assert rep == Replied(p.name, ev.seq, 0, tuple(values), rblob)
    assert c.expect is None


def test_a_failed_call_replies_zeros_and_no_blob() -> None:
    c, s = ready_pair()
    head, p = c.call(Call.cuMemAlloc, (1 << 40,))
    [ev] = _pump(head, s)
    [rep] = _pump(s.reply(p, ev.seq, int(CUresult.CUDA_ERROR_OUT_OF_MEMORY)), c)
    assert rep.status == CUresult.CUDA_ERROR_OUT_OF_MEMORY and rep.values == (0,)


def test_deferred_error_is_the_status_of_the_next_synchronising_call() -> None:
    s = ServerProtocol()
    launch, query, sync = PLANS[Call.cuLaunchKernel], PLANS[Call.cuStreamQuery], PLANS[Call.cuCtxSynchronize]
    assert s.finished(launch, int(CUresult.CUDA_ERROR_INVALID_VALUE)) is False
    assert s.finished(launch, int(CUresult.CUDA_ERROR_INVALID_HANDLE)) is False  # the first one is kept
    assert s.take_deferred(query) == 0  # not synchronising: runs, error still pending
    assert s.take_deferred(sync) == CUresult.CUDA_ERROR_INVALID_VALUE
    assert s.take_deferred(sync) == 0


def test_an_error_frame_is_a_refusal_with_its_status() -> None:
    c, s = ClientProtocol(), ServerProtocol()
    _pump(c.hello(Hello(pid=1, vgpu_count=1, gmem_mib=1, ratio=100)), s)
    with pytest.raises(Refused) as e:
        _pump(s.refuse("invalid token", int(CUresult.CUDA_ERROR_NOT_PERMITTED)), c)
    assert e.value.status == CUresult.CUDA_ERROR_NOT_PERMITTED and e.value.reason == "invalid token"
    assert c.state is State.CLOSED


def test_an_error_frame_during_a_call_is_a_refusal() -> None:
    c, s = ready_pair()
    c.call(Call.cuCtxSynchronize, ())
    with pytest.raises(Refused, match="expired") as e:
        _pump(s.refuse("allocation a-1 expired", int(CUresult.CUDA_ERROR_NOT_PERMITTED)), c)
    assert e.value.status == CUresult.CUDA_ERROR_NOT_PERMITTED


def test_an_error_frame_without_status_still_fails_the_call() -> None:
    c, _ = ready_pair()
    c.call(Call.cuCtxSynchronize, ())
    c.receive_data(HEADER.pack(3, Kind.ERROR, 0, 0, 0, 0) + b"bad")
    with pytest.raises(Refused) as e:
        c.next_event()
    assert e.value.status == CUresult.CUDA_ERROR_UNKNOWN


def _reply_raw(code: int, seq: int, body: bytes, kind: int = Kind.REPLY, flags: int = 0) -> bytes:
    return HEADER.pack(len(body), kind, flags, code, seq, 0) + body


MALFORMED = {
    "truncated body": lambda seq: _reply_raw(Call.cuMemAlloc, seq, b"\0" * 4),
    "body too long": lambda seq: _reply_raw(Call.cuMemAlloc, seq, b"\0" * 12),
    "wrong code": lambda seq: _reply_raw(Call.cuMemGetInfo, seq, b"\0" * 16),
    "wrong seq": lambda seq: _reply_raw(Call.cuMemAlloc, seq + 1, b"\0" * 8),
    "unknown kind": lambda seq: _reply_raw(Call.cuMemAlloc, seq, b"\0" * 8, kind=99),
    "a CALL instead of a REPLY": lambda seq: _reply_raw(Call.cuMemAlloc, seq, b"\0" * 8, kind=Kind.CALL),
    "unknown flags": lambda seq: _reply_raw(Call.cuMemAlloc, seq, b"\0" * 8, flags=0x80),
    "a WELCOME again": lambda seq: Welcome(1, "sim").encode(),
    "HTTP": lambda seq: b"HTTP/1.1 400 Bad Request\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_reply_is_refused_on_its_header(case: str) -> None:
    c, _ = ready_pair()
    _, p = c.call(Call.cuMemAlloc, (64,))
    raw = MALFORMED[case](c.seq)
    with pytest.raises(ProtocolError):
        c.reply_header(HEADER.unpack(raw[:HEADER_SIZE]))  # the adapter reads no body byte first


def test_a_reply_blob_must_match_its_declared_length() -> None:
    c, _ = ready_pair()
    _, p = c.call(Call.cuMemcpyDtoH, (0x1000, 8))
    body = struct.pack("<Q", 5) + b"12345678"
    r = c.reply_header(HEADER.unpack(_reply_raw(Call.cuMemcpyDtoH, c.seq, body)[:HEADER_SIZE]))
    assert r is p
    with pytest.raises(ProtocolError, match="length field says 5"):
        c.reply_blob(p, (5,), len(body))


def test_a_reply_with_no_waiting_call_is_a_protocol_error() -> None:
    c, _ = ready_pair()
    c.receive_data(_reply_raw(Call.cuMemAlloc, 1, b"\0" * 8))
    with pytest.raises(ProtocolError, match="no call waits"):
        c.next_event()


def test_local_misuse_is_a_usage_error_not_a_protocol_error() -> None:
    c, _ = ready_pair()
    for bad in (14, -1, 999):
        with pytest.raises(UsageError, match="not in the call spec"):
            c.call(bad, ())
    with pytest.raises(UsageError, match="blob"):
        c.call(Call.cuModuleLoadData, (10,), 3)
    with pytest.raises(UsageError):
        c.call(Call.cuMemAlloc, (-1,))
    c.call(Call.cuMemAlloc, (1,))
    with pytest.raises(UsageError, match="waits for its reply"):
        c.call(Call.cuMemAlloc, (1,))
    fresh = ClientProtocol()
    with pytest.raises(UsageError, match="state idle"):
        fresh.call(Call.cuInit, (0,))


def test_server_checks_limits_before_reading_a_blob() -> None:
    _, s = ready_pair()
    for code in (Call.cuModuleLoadData, Call.cuLaunchKernel, Call.cuModuleGetFunction):
        p = PLANS[code]
        args = [0] * len(p.req.format.lstrip("<"))
        args[p.req_blob_idx] = p.max_req_blob + 1
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            s.call_blob(p, tuple(args), p.req_size + p.max_req_blob + 1)
    with pytest.raises(ProtocolError):
        s.call_header((0xFFFFFFFF, Kind.RENEW, 0, 0, 1, 0))
    assert MAX_CONTROL_BODY < 1 << 20


def test_server_refuses_calls_with_the_wrong_reply_flag() -> None:
    _, s = ready_pair()
    with pytest.raises(ProtocolError, match="NO_REPLY"):
        s.call_header((8, Kind.CALL, 0, Call.cuMemFree, 1, 0))
    with pytest.raises(ProtocolError, match="no flags"):
        s.call_header((8, Kind.CALL, 1, Call.cuMemAlloc, 1, 0))


def test_calls_before_welcome_are_refused() -> None:
    s = ServerProtocol()
    c = ClientProtocol()
    _pump(c.hello(Hello(pid=1, vgpu_count=1, gmem_mib=1, ratio=100)), s)
    s.receive_data(HEADER.pack(0, Kind.CALL, 0, Call.cuCtxSynchronize, 1, 0))
    with pytest.raises(ProtocolError, match="before the session was welcomed"):
        s.next_event()


def test_hello_rejects_bad_magic_and_absurd_requests() -> None:
    good = Hello(pid=1, vgpu_count=1, gmem_mib=1, ratio=100).encode()
    for raw, match in ((good[:HEADER_SIZE] + b"XXXX" + good[HEADER_SIZE + 4:], "magic"),
                       (Hello(pid=1, vgpu_count=65, gmem_mib=1, ratio=100).encode(), "vGPUs"),
                       (Hello(pid=1, vgpu_count=1, gmem_mib=1, ratio=100, flags=4).encode(), "flags")):
        s = ServerProtocol()
        s.receive_data(raw)
        with pytest.raises(ProtocolError, match=match):
            s.next_event()


def test_a_stream_ending_inside_a_message_is_a_protocol_error() -> None:
    c, _ = ready_pair()
    c.call(Call.cuMemAlloc, (64,))
    c.receive_data(_reply_raw(Call.cuMemAlloc, c.seq, b"\0" * 8)[:20])
    assert c.next_event() is NEED_DATA
    c.receive_data(b"")
    with pytest.raises(ProtocolError, match="ended inside a message"):
        c.next_event()


FUZZ_EXAMPLES = int(os.environ.get("ORION_FUZZ_EXAMPLES", "5000"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 2**32 - 1))
def test_fuzz_server_protocol(data: bytes, seed: int) -> None:
    fuzz_server(data, random.Random(seed))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 2**32 - 1))
def test_fuzz_client_protocol(data: bytes, seed: int) -> None:
    fuzz_client(data, random.Random(seed))


@pytest.mark.long
@pytest.mark.timeout(7200)
def test_fuzz_long_run() -> None:
    """At least a million inputs to each end (``pytest -m long``): random bytes, and valid
    message streams with bytes flipped, cut and spliced."""
    n = int(os.environ.get("ORION_FUZZ_LONG", "1000000"))
    rng = random.Random(int(os.environ.get("ORION_FUZZ_SEED", "1")))
    for _ in range(n):
        data = rng.randbytes(rng.randrange(0, 256))
        fuzz_server(data, rng)
        fuzz_client(data, rng)
