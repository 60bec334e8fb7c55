"""No wait without a bound: the client's Connection over real TCP and real shared memory, against
a peer that answers badly or not at all. Every case must end in a clear error within 2 s."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from orion_virt.client.connection import Connection
from orion_virt.cuda_enums import CUresult
from orion_virt.errors import ProtocolError, Refused, TransportTimeout
from orion_virt.transport.base import Stream
from orion_virt.transport.shmdev import format_device
from orion_virt.transport.tcp import SocketStream
from orion_virt.wire import HEADER, HEADER_SIZE, Call, Hello, Kind, ServerProtocol, Welcome
from tests.streampairs import _client, _serve_one

HELLO = Hello(pid=1, vgpu_count=1, gmem_mib=64, ratio=100)
BOUND_S = 2.0


def _reply(code: int, seq: int, body: bytes, kind: int = Kind.REPLY, flags: int = 0) -> bytes:
    return HEADER.pack(len(body), kind, flags, code, seq, 0) + body


MALFORMED: dict[str, Callable[[int], bytes]] = {
    "truncated body": lambda seq: _reply(Call.cuMemAlloc, seq, b"\0" * 4),
    "body too long": lambda seq: _reply(Call.cuMemAlloc, seq, b"\0" * 12),
    "wrong call code": lambda seq: _reply(Call.cuMemGetInfo, seq, b"\0" * 16),
    "wrong sequence number": lambda seq: _reply(Call.cuMemAlloc, seq + 7, b"\0" * 8),
    "unknown kind": lambda seq: _reply(Call.cuMemAlloc, seq, b"\0" * 8, kind=99),
    "unknown flags": lambda seq: _reply(Call.cuMemAlloc, seq, b"\0" * 8, flags=0x40),
    "a second WELCOME": lambda seq: Welcome(2, "sim").encode(),
    "garbage": lambda seq: b"\xff" * 64,
}


def _peer(server: Stream, answer: Callable[[int], bytes] | None) -> None:
    """A peer that welcomes the client, reads one call, sends ``answer(seq)`` and then stays
    silent with the connection open (the client must not rely on a close)."""
    proto = ServerProtocol()
    n = proto.hello_header(server.recv_exact(HEADER_SIZE))
    proto.hello_body(server.recv_exact(n))
    server.send(proto.welcome(Welcome(1, "sim")))
    server.flush()
    length, _k, _f, _c, seq, _s = server.recv_unpack(HEADER)
    server.recv_exact(length)
    if answer is not None:
        server.send(answer(seq))
        server.flush()
    time.sleep(30)


def _silent(server: Stream) -> None:
    time.sleep(30)


CTX = mp.get_context("fork")


@pytest.fixture(params=["tcp", "shm"])
def connect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Stream]]:
    """connect(peer, *args) -> the client end of a real stream whose other end runs
    ``peer(server_stream, *args)`` in a forked process (shared-memory liveness is per process)."""
    procs: list[mp.process.BaseProcess] = []
    streams: list[Stream] = []

    def make(peer: Callable[..., None], *args: object) -> Stream:
        if request.param == "tcp":
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            port = lsock.getsockname()[1]

            def child() -> None:
                s, _ = lsock.accept()
                peer(SocketStream(s), *args)

            proc = CTX.Process(target=child, daemon=True)
            proc.start()
            client: Stream = SocketStream(socket.create_connection(("127.0.0.1", port)), name=f"tcp 127.0.0.1:{port}")
            lsock.close()
        else:
            path = tmp_path / "orionsock5"
            format_device(path, 2 << 20)

            def child() -> None:
                stop = threading.Event()
                s, _chan = _serve_one(path, stop)
                peer(s, *args)

            proc = CTX.Process(target=child, daemon=True)
            proc.start()
            client = _client(path)
        procs.append(proc)
        streams.append(client)
        return client

    yield make
    for st in streams:
        st.close()
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(5)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_reply_is_an_error_at_once(connect: Callable[..., Stream], case: str) -> None:
    client = connect(_peer, MALFORMED[case])
    conn = Connection(client, "test", hello_timeout=BOUND_S)
    conn.handshake(HELLO)
    t0 = time.monotonic()
    with pytest.raises(ProtocolError):
        conn.call(Call.cuMemAlloc, (64,))
    assert time.monotonic() - t0 < BOUND_S


def _expired(seq: int) -> bytes:
    return ServerProtocol().refuse("allocation a-1 expired", int(CUresult.CUDA_ERROR_NOT_PERMITTED))


def test_an_error_frame_mid_session_is_a_refusal_with_its_status(connect: Callable[..., Stream]) -> None:
    client = connect(_peer, _expired)
    conn = Connection(client, "test", hello_timeout=BOUND_S)
    conn.handshake(HELLO)
    with pytest.raises(Refused, match="a-1 expired") as e:
        conn.call(Call.cuCtxSynchronize, ())
    assert e.value.status == CUresult.CUDA_ERROR_NOT_PERMITTED


def test_a_silent_listener_times_out_naming_the_address(connect: Callable[..., Stream]) -> None:
    client = connect(_silent)  # the other end reads nothing and answers nothing
    conn = Connection(client, "test", hello_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(TransportTimeout, match="no answer to HELLO within 1 s") as e:
        conn.handshake(HELLO)
    assert time.monotonic() - t0 < BOUND_S
    assert client.name in str(e.value)


def test_a_port_that_is_not_oriond_is_named_with_what_it_answered() -> None:
    """ORION_SERVER pointed at the controller's HTTP port by mistake."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def http_like() -> None:
        s, _ = lsock.accept()
        s.recv(4096)
        s.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        time.sleep(5)
        s.close()

    threading.Thread(target=http_like, daemon=True).start()
    from orion_virt.transport.tcp import connect

    addr = f"127.0.0.1:{lsock.getsockname()[1]}"
    conn = Connection(connect(addr), "tcp", hello_timeout=BOUND_S)
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="is not an Orion Server.*HTTP/1.0 400.*controller's port") as e:
        conn.handshake(HELLO)
    assert time.monotonic() - t0 < BOUND_S and addr in str(e.value)
    conn.stream.close()
    lsock.close()
