"""Adversarial replays of issue 15's attacks on the controller and the tokens (items 2, 3, 10).

Each test replays one attack seen against main on loopback and checks it is refused: unsigned or
wrongly signed state changes, another tenant's allocation renewed or released, a node's address
replaced by another server, the pool emptied without a key, a token replayed after release or
opening more sessions than granted, calls sent without waiting after the lease, and hostile HTTP
(malformed Content-Length, deeply nested JSON) answering 400, not 500. Bounded: a few hundred
requests, one controller and one oriond (sim backend), loopback only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.config import load_server_config
from orion_virt.controller import auth
from orion_virt.controller import client as ctl
from orion_virt.controller.client import AllocationRequest, NodeInfo
from orion_virt.controller.exceptions import Conflict, Forbidden, Unauthorized
from orion_virt.server.authorize import node_id
from tests.integration.test_controller_e2e import Stack, _hello, wait_for
from tests.integration.test_controller_http import GPUS, ControllerProcess, cs, ops


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/controller.db", "--vgpu", "4")
    ctl.register_node(c.addr, NodeInfo("victim", "127.0.0.1:9960"), GPUS, signer=ops(c.addr))
    yield c
    c.stop()


def raw(addr: str, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_unsigned_state_changes_are_refused(controller: ControllerProcess) -> None:
    addr = controller.addr
    a = ctl.allocate(addr, AllocationRequest(vgpu=1), signer=cs(addr))
    body = json.dumps({"node_id": "victim", "address": "10.6.6.6:9960",
                       "gpus": [g.to_json() for g in GPUS]}).encode()
    attacks = [
        ("POST", "/api/v1/allocations", b'{"vgpu": 1}'),              # exhaust the pool
        ("POST", "/api/v1/nodes", body),                              # replace a node
        ("DELETE", "/api/v1/nodes/victim", b""),                      # deregister a node
        ("POST", "/api/v1/nodes/victim/heartbeat", b"{}"),            # keep a dead node "up"
        ("DELETE", f"/api/v1/allocations/{a.allocation_id}", b""),    # release someone's
        ("POST", f"/api/v1/allocations/{a.allocation_id}/renew", b"{}"),  # renew someone's
    ]
    for method, path, b in attacks:
        status, _ = raw(addr, method, path, b)
        assert status == 401, (method, path, status)
    # signed with a key of the right form but the wrong value, or replayed: refused too
    bad = ctl.Signer("node", b"z" * 32)
    with pytest.raises(Unauthorized, match="signature does not match"):
        ctl.register_node(addr, NodeInfo("evil", "10.6.6.6:9960"), GPUS, signer=bad)
    hdr = ops(addr).header("DELETE", "/api/v1/nodes/nonexistent", b"")
    assert raw(addr, "DELETE", "/api/v1/nodes/nonexistent", headers={auth.AUTH_HEADER: hdr})[0] == 404
    assert raw(addr, "DELETE", "/api/v1/nodes/nonexistent", headers={auth.AUTH_HEADER: hdr})[0] == 401
    # a signature is bound to its path: moved to another endpoint it is refused
    moved = ops(addr).header("DELETE", "/api/v1/nodes/x", b"")
    assert raw(addr, "DELETE", "/api/v1/nodes/victim", headers={auth.AUTH_HEADER: moved})[0] == 401
    # the client key allocates, but cannot touch nodes
    with pytest.raises(Unauthorized):
        ctl.deregister_node(addr, "victim", signer=cs(addr))
    # nothing changed: the allocation and the node are still there, at their address
    assert [t["allocation_id"] for t in ctl.tasks(addr)] == [a.allocation_id]
    assert [(n["node_id"], n["address"]) for n in ctl.nodes(addr)] == [("victim", "127.0.0.1:9960")]
    # read-only endpoints stay open
    assert raw(addr, "GET", "/api/v1/summary")[0] == 200


def test_pool_cannot_be_emptied_without_the_client_key(controller: ControllerProcess) -> None:
    addr = controller.addr
    for _ in range(20):
        assert raw(addr, "POST", "/api/v1/allocations", b'{"vgpu": 8}')[0] == 401
    assert ctl.summary(addr).free_vgpus == 8


def test_only_the_holder_renews_or_releases(controller: ControllerProcess) -> None:
    addr = controller.addr
    mine = ctl.allocate(addr, AllocationRequest(vgpu=1), signer=cs(addr))
    theirs = ctl.allocate(addr, AllocationRequest(vgpu=1), signer=cs(addr))
    assert mine.secret and theirs.secret and mine.secret != theirs.secret
    # another tenant (with the client key, and its own secret) cannot renew or release mine
    for fn in (ctl.renew, ctl.release):
        with pytest.raises(Forbidden, match="is not yours"):
            fn(addr, mine.allocation_id, secret=theirs.secret)
        with pytest.raises(Unauthorized):
            fn(addr, mine.allocation_id, signer=cs(addr))
    # the holder can; an operator (API key) can release anything
    renewed = ctl.renew(addr, mine.allocation_id, secret=mine.secret)
    assert renewed.tokens and renewed.allocation_id == mine.allocation_id
    ctl.release(addr, mine.allocation_id, secret=mine.secret)
    ctl.release(addr, theirs.allocation_id, signer=ops(addr))
    assert ctl.summary(addr).free_vgpus == 8


def test_a_node_address_changes_only_by_that_node(controller: ControllerProcess) -> None:
    addr = controller.addr
    me = NodeInfo("n1", "127.0.0.1:7001")
    first = ctl.register(addr, me, GPUS, signer=ops(addr))
    secret = first["node_secret"]
    # another server holding the API key tries to move n1 to its own listener: 409
    with pytest.raises(Conflict, match="address changes only by that node"):
        ctl.register(addr, NodeInfo("n1", "10.6.6.6:7001"), GPUS, signer=ops(addr))
    with pytest.raises(Forbidden):
        ctl.heartbeat(addr, "n1", signer=ops(addr))  # without n1's secret
    assert {n["node_id"]: n["address"] for n in ctl.nodes(addr)}["n1"] == "127.0.0.1:7001"
    # n1 itself moves (its secret), and heartbeats
    ctl.register(addr, NodeInfo("n1", "127.0.0.2:7001"), GPUS, signer=ops(addr), node_secret=secret)
    ctl.heartbeat(addr, "n1", signer=ops(addr), node_secret=secret)
    assert {n["node_id"]: n["address"] for n in ctl.nodes(addr)}["n1"] == "127.0.0.2:7001"


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999", " 5x", "+3"])
def test_malformed_content_length_is_400(controller: ControllerProcess, length: str) -> None:
    host, _, port = controller.addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"POST /api/v1/allocations HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
                  .encode())
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 400"), answer[:200]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_400(controller: ControllerProcess, depth: int) -> None:
    addr = controller.addr
    body = b"[" * depth + b"]" * depth
    hdr = cs(addr).header("POST", "/api/v1/allocations", body)
    status, text = raw(addr, "POST", "/api/v1/allocations", body, {auth.AUTH_HEADER: hdr})
    assert status == 400, (status, text[:200])
    # the body is read before authentication: unsigned, it is still a 400, never a 500
    assert raw(addr, "POST", "/api/v1/nodes", body)[0] == 400


def test_portal_needs_the_admin_login(controller: ControllerProcess, tmp_path: Path) -> None:
    import base64

    addr = controller.addr
    assert raw(addr, "GET", "/")[0] == 401
    wrong = base64.b64encode(b"admin:admin").decode()
    assert raw(addr, "GET", "/", headers={"Authorization": f"Basic {wrong}"})[0] == 401
    # the password was generated at first start (no default), printed once, stored hashed 0600
    passwd = tmp_path / "portal.passwd"
    assert oct(passwd.stat().st_mode & 0o777) == "0o600"
    assert passwd.read_text().startswith("pbkdf2-sha256$")


def test_portal_password_set_at_install(tmp_path: Path) -> None:
    import base64

    os.environ["ORION_PORTAL_PASSWORD"] = "s3cret-at-install"
    try:
        c = ControllerProcess(tmp_path, f"sqlite://{tmp_path}/c.db")
    finally:
        del os.environ["ORION_PORTAL_PASSWORD"]
    try:
        good = base64.b64encode(b"admin:s3cret-at-install").decode()
        status, page = raw(c.addr, "GET", "/", headers={"Authorization": f"Basic {good}"})
        assert status == 200 and b"Orion Controller" in page
    finally:
        c.stop()


# -- tokens (item 3) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("adv"), lease=6.0, heartbeat_timeout=3.0)
    try:
        s.start_oriond()
        yield s
    finally:
        s.close()


def _node(stack: Stack) -> tuple[str, str]:
    conf = load_server_config(stack.servers["node"][1])
    return f"127.0.0.1:{conf.listen_port}", node_id(conf)


def test_one_token_opens_one_session(stack: Stack) -> None:
    addr, me = _node(stack)
    a = ctl.allocate(stack.addr, AllocationRequest(vgpu=1), signer=stack.client)
    try:
        token = a.token_for(me)
        assert _hello(addr, token, a.allocation_id) == "ok"
        for _ in range(3):  # the adversarial run opened three sessions with one token
            got = _hello(addr, token, a.allocation_id)
            # refused as used, or as released: the first session's end gave the vGPUs back
            assert "already used" in got or "was released" in got, got
    finally:
        with contextlib.suppress(ctl.NotFound):
            ctl.release(stack.addr, a.allocation_id, secret=a.secret)


def test_token_replayed_after_release_is_refused(stack: Stack) -> None:
    addr, me = _node(stack)
    a = ctl.allocate(stack.addr, AllocationRequest(vgpu=1), signer=stack.client)
    unused = [ctl.renew(stack.addr, a.allocation_id, secret=a.secret).token_for(me)
              for _ in range(3)]  # valid, never used: what an eavesdropper would replay
    ctl.release(stack.addr, a.allocation_id, secret=a.secret)
    # the server pulls the revocation with its next heartbeat (every heartbeat_timeout/3 = 1 s)
    revoked = stack.tmp / "tokens" / "revoked" / a.allocation_id
    wait_for(revoked.exists, 10, "the revocation to reach oriond")
    for token in unused:
        got = _hello(addr, token, a.allocation_id)
        assert "was released" in got, got


def test_live_session_of_a_released_allocation_ends(stack: Stack) -> None:
    from orion_virt.client.connection import Connection
    from orion_virt.errors import Refused, TransportError
    from orion_virt.transport import tcp
    from orion_virt.wire import Call, Hello

    addr, me = _node(stack)
    a = ctl.allocate(stack.addr, AllocationRequest(vgpu=1), signer=stack.client)
    v = a.vgpus[0]
    conn = Connection(tcp.connect(addr, timeout=5), "tcp")
    conn.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=v.memory_mib, ratio=v.ratio,
                         token=a.token_for(me), allocation_id=a.allocation_id))
    assert conn.call(Call.cuDeviceGetCount, ())[1] == (1,)  # type: ignore[attr-defined]
    ctl.release(stack.addr, a.allocation_id, secret=a.secret)
    t0 = time.monotonic()
    with pytest.raises((Refused, TransportError), match="released|revoked|closed|reset|EOF"):
        while time.monotonic() - t0 < 10:
            conn.call(Call.cuDeviceGetCount, ())  # type: ignore[attr-defined]
            time.sleep(0.1)
    assert time.monotonic() - t0 < 5  # within a heartbeat or two, not at the lease's end


def test_calls_sent_without_waiting_are_checked_against_the_lease(stack: Stack) -> None:
    from orion_virt.client.connection import Connection
    from orion_virt.errors import Refused, TransportError
    from orion_virt.transport import tcp
    from orion_virt.wire import Call, Hello

    addr, me = _node(stack)
    a = ctl.allocate(stack.addr, AllocationRequest(vgpu=1), signer=stack.client)
    v = a.vgpus[0]
    conn = Connection(tcp.connect(addr, timeout=5), "tcp")
    welcome = conn.handshake(Hello(pid=os.getpid(), vgpu_count=1, gmem_mib=v.memory_mib,
                                   ratio=v.ratio, token=a.token_for(me),
                                   allocation_id=a.allocation_id))
    try:
        conn.call(Call.cuInit, (0,))  # type: ignore[attr-defined]
        conn.call(Call.cuDevicePrimaryCtxRetain, (0,))  # type: ignore[attr-defined]
        ptr = conn.call(Call.cuMemAlloc, (4096,))  # type: ignore[attr-defined]
        # no renewal: wait past the lease and the server's 2 s grace, then send NO_REPLY frees
        time.sleep(max(0.0, a.expires_at + 3.5 - time.time()))  # token expiry is rounded up
        with pytest.raises((Refused, TransportError), match="expired|closed|reset|EOF"):
            for _ in range(50):  # NO_REPLY: the adversarial run had them accepted for 12 s
                conn.call(Call.cuMemFree, (ptr[1][0],))  # type: ignore[attr-defined]
            conn.call(Call.cuDeviceGetCount, ())  # type: ignore[attr-defined]
        # the first free after the lease ended the session: none of the others was executed
        slog = stack.tmp / "log-node" / "session" / f"{welcome.session_id}.log"
        wait_for(lambda: "closed after" in slog.read_text(), 10, "the session to close")
        assert "closed after 4 calls" in slog.read_text(), slog.read_text()
    finally:
        wait_for(lambda: a.allocation_id not in {t["allocation_id"] for t in ctl.tasks(stack.addr)},
                 15, "the lease to expire")
