"""The wire codec: round trips for every call, and hostile bytes never crash or over-allocate."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orion_virt.errors import ProtocolError
from orion_virt.wire import (
    HEADER, HEADER_SIZE, SPECS, Call, Hello, Kind, Welcome, decode_message, encode_bye, encode_call,
    encode_error, encode_renew, encode_reply, parse_header,
)
from orion_virt.wire.frames import MAX_CONTROL_BODY


def _args_for(fmt: struct.Struct) -> tuple:
    out = []
    for ch in fmt.format.lstrip("<"):
        if ch.isdigit():
            continue
        out.append({"s": b"x" * 16, "f": 1.5, "d": 2.5}.get(ch, 7))
    return tuple(out)


@pytest.mark.parametrize("code", sorted(SPECS))
def test_every_call_round_trips(code: int) -> None:
    spec = SPECS[code]
    args = list(_args_for(spec.req))
    blob = b""
    if spec.req_blob:
        args[spec.req_names.index(spec.req_blob)] = 5
        blob = b"hello"
    msg = decode_message(encode_call(spec, 42, tuple(args), len(blob)) + blob)
    assert msg.header.kind is Kind.CALL and msg.header.code == code and msg.header.seq == 42
    assert msg.args == tuple(args) and msg.blob == blob
    assert bool(msg.header.flags & 1) == spec.async_

    values = list(_args_for(spec.resp))
    rblob = b""
    if spec.resp_blob:
        values[spec.resp_names.index(spec.resp_blob)] = 3
        rblob = b"abc"
    reply = decode_message(encode_reply(spec, 42, 0, tuple(values), len(rblob)) + rblob)
    assert reply.header.kind is Kind.REPLY and reply.args == tuple(values) and reply.blob == rblob


def test_hello_welcome_error_bye_round_trip() -> None:
    h = Hello(pid=12, vgpu_count=2, gmem_mib=4096, ratio=50, token="o1.abc.def", program="p y",
              allocation_id="a-1")
    assert decode_message(h.encode()).hello == h
    w = Welcome(session_id=99, backend="sim")
    assert decode_message(w.encode()).welcome == w
    assert decode_message(encode_error("no such thing")).text == "no such thing"
    assert decode_message(encode_bye()).header.kind is Kind.BYE
    renew = decode_message(encode_renew("o1.abc.def"))
    assert renew.header.kind is Kind.RENEW and renew.text == "o1.abc.def"


def test_blob_length_must_match_its_field() -> None:
    spec = SPECS[Call.cuModuleLoadData]
    raw = encode_call(spec, 1, (10,), 3) + b"abc"
    with pytest.raises(ProtocolError, match="does not match"):
        decode_message(raw)


def test_oversized_lengths_are_refused_before_reading() -> None:
    for kind, code in ((Kind.HELLO, 0), (Kind.CALL, Call.cuModuleLoadData), (Kind.CALL, Call.cuLaunchKernel)):
        raw = HEADER.pack(0xFFFFFFFF, kind, 0, code, 1, 0)
        with pytest.raises(ProtocolError):
            parse_header(raw)
    assert MAX_CONTROL_BODY < 1 << 20


def test_fixed_size_calls_reject_extra_bytes() -> None:
    spec = SPECS[Call.cuCtxSynchronize]
    with pytest.raises(ProtocolError):
        parse_header(HEADER.pack(4, Kind.CALL, 0, spec.call, 1, 0))


def test_hello_rejects_bad_magic_and_absurd_requests() -> None:
    good = Hello(pid=1, vgpu_count=1, gmem_mib=1, ratio=100).encode()[HEADER_SIZE:]
    bad = b"XXXX" + good[4:]
    with pytest.raises(ProtocolError, match="magic"):
        Hello.decode(bad)
    with pytest.raises(ProtocolError, match="vGPUs"):
        Hello.decode(Hello(pid=1, vgpu_count=65, gmem_mib=1, ratio=100).encode()[HEADER_SIZE:])


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=256))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**16 - 1),
       st.binary(max_size=64))
def test_valid_looking_headers_with_random_bodies(length: int, kind: int, flags: int, code: int,
                                                  body: bytes) -> None:
    raw = HEADER.pack(length, kind, flags, code, 1, 0) + body
    try:
        msg = decode_message(raw)
    except ProtocolError:
        return
    assert msg.header.length == len(body)
