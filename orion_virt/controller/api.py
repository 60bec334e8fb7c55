"""HTTP/JSON API of the controller (stdlib ``ThreadingHTTPServer``); see docs/controller-api.md.

Errors answer ``{"error": message, "field": name?}`` with 400 (bad JSON or field, malformed
Content-Length), 401 (a signature is needed or wrong), 403 (another tenant's allocation, another
node's secret), 404 (unknown node/allocation/path), 405, 408 (request not sent in time), 409 (pool
cannot satisfy the request, a node's address held by another server), 413 (body or registration
over a limit), 503 (store unreachable, or every connection slot taken).

Limits (:class:`Limits`, ``orion-controller start`` flags): a request's line and headers, and then
its body, must each arrive within ``header_timeout`` seconds, and a kept-alive connection that
sends no request for that long is closed, so an idle or slow client holds its thread for a
bounded time; the listen backlog takes a burst of connections at once; at most
``max_connections`` are served at once (one more is answered 503 and closed, costing no
thread); bodies over ``max_body`` bytes answer 413 unread; a registration of
more than ``max_gpus_per_node`` GPUs, of more than ``max_vgpus_per_gpu`` vGPUs on a GPU, or of a
new node past ``max_nodes``, answers 413.

Who may call what (see :mod:`.auth`): reading (version, summary, nodes, tasks, allocations,
/metrics) is open; the portal page needs the admin login (HTTP Basic); allocating needs a
signature with the client key or the API key; renewing and releasing need the allocation's secret
or the API key; registering, heartbeating and deregistering nodes need the API key (and, to move
a node or heartbeat for it, that node's secret).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from . import auth, metrics, portal
from .exceptions import (
    AllocationError,
    BadRequest,
    Conflict,
    ControllerError,
    Forbidden,
    NotFound,
    StoreError,
    Unauthorized,
)
from .service import Controller

log = logging.getLogger("orion_virt.controller.http")
MAX_BODY = 1 << 20
MAX_JSON_DEPTH = 32
"""Deeper nesting of arrays/objects in a request body is a 400 (the decoder recurses)."""
_ID = r"([^/]+)"
OPEN, NODE, CLIENT, HOLDER = "open", "node", "client", "holder"
"""What a route needs: nothing; an API-key signature; a client- or API-key signature; the
allocation's secret or an API-key signature."""

Route = tuple[str, "re.Pattern[str]", str, Callable[..., Any]]


@dataclass(frozen=True)
class Limits:
    """What one request or registration may take of the controller (see the module's notes)."""

    max_body: int = MAX_BODY
    header_timeout: float = 10.0
    max_connections: int = 256
    max_gpus_per_node: int = 64
    max_vgpus_per_gpu: int = 64
    max_nodes: int = 1024


def check_registration(body: Any, limits: Limits, known: Callable[[], set[str]]) -> None:
    """413 (``_TooLarge``) for a registration over the limits, before it is parsed or stored:
    its GPU count, each GPU's ``vgpu_count`` and, for a node not yet known, the node count
    (``known()``: the registered node ids)."""
    if not isinstance(body, dict):
        return  # parse_registration says what is wrong
    gpus = body.get("gpus")
    if isinstance(gpus, list):
        if len(gpus) > limits.max_gpus_per_node:
            raise _TooLarge(f"registration of {len(gpus)} GPUs: a node may register at most "
                            f"{limits.max_gpus_per_node} (orion-controller --max-gpus-per-node)")
        for i, g in enumerate(gpus):
            n = g.get("vgpu_count") if isinstance(g, dict) else None
            if isinstance(n, int) and not isinstance(n, bool) and n > limits.max_vgpus_per_gpu:
                raise _TooLarge(f"registration: gpus[{i}].vgpu_count {n} is over the limit of "
                                f"{limits.max_vgpus_per_gpu} vGPUs per GPU "
                                f"(orion-controller --max-vgpus-per-gpu)")
    nid = body.get("node_id")
    if isinstance(nid, str):
        nodes = known()
        if nid.strip() not in nodes and len(nodes) >= limits.max_nodes:
            raise _TooLarge(f"the pool has {len(nodes)} nodes, its limit (orion-controller "
                            f"--max-nodes); node {nid[:80]!r} is not registered")


class Caller:
    """Who sent a request: the role its signature proves (None: unsigned) and its secrets."""

    def __init__(self, role: str | None, headers: Any, checked: bool = True) -> None:
        self.role = role
        self.checked = checked
        """False in the in-process test mode (no keys): node secrets are not asked for either"""
        self.admin = role == auth.NODE
        self.allocation_secret = headers.get(auth.ALLOCATION_SECRET_HEADER)
        self.node_secret = headers.get(auth.NODE_SECRET_HEADER)


def _routes(c: Controller, limits: Limits | None = None) -> list[Route]:
    lim = limits or Limits()

    def register(who: Caller, body: Any) -> Any:
        check_registration(body, lim, lambda: set(c.snapshot().nodes))
        return HTTPStatus.CREATED, c.register(body, who.node_secret, who.checked)

    r: list[tuple[str, str, str, Callable[..., Any]]] = [
        ("GET", "/version", OPEN, lambda who, body: c.version()),
        ("GET", "/api/v1/version", OPEN, lambda who, body: c.version()),
        ("GET", "/api/v1/summary", OPEN, lambda who, body: c.summary()),
        ("GET", "/api/v1/nodes", OPEN, lambda who, body: {"nodes": c.nodes()}),
        ("POST", "/api/v1/nodes", NODE, register),
        ("DELETE", f"/api/v1/nodes/{_ID}", NODE, lambda who, body, nid: c.deregister(nid)),
        ("POST", f"/api/v1/nodes/{_ID}/heartbeat", NODE,
         lambda who, body, nid: c.heartbeat(nid, who.node_secret, who.checked)),
        ("GET", "/api/v1/tasks", OPEN, lambda who, body: {"tasks": c.tasks()}),
        ("GET", "/api/v1/allocations", OPEN, lambda who, body: {"allocations": c.tasks()}),
        ("POST", "/api/v1/allocations", CLIENT,
         lambda who, body: (HTTPStatus.CREATED, c.allocate(body))),
        ("GET", f"/api/v1/allocations/{_ID}", OPEN, lambda who, body, aid: c.get_allocation(aid)),
        ("DELETE", f"/api/v1/allocations/{_ID}", HOLDER,
         lambda who, body, aid: c.release(aid, who.allocation_secret, who.admin)),
        ("POST", f"/api/v1/allocations/{_ID}/ended", NODE,
         lambda who, body, aid: c.session_ended(aid, _node_of(body))),
        ("POST", f"/api/v1/allocations/{_ID}/renew", HOLDER,
         lambda who, body, aid: c.renew(aid, who.allocation_secret, who.admin)),
    ]
    return [(m, re.compile(p + "$"), need, f) for m, p, need, f in r]


def _node_of(body: Any) -> str:
    node = body.get("node") if isinstance(body, dict) else None
    if not isinstance(node, str) or not node or len(node) > 300:
        raise BadRequest("body must be {\"node\": \"<node id>\"}", "node")
    return node


def _depth_ok(raw: bytes) -> bool:
    """True when no array/object nests deeper than MAX_JSON_DEPTH (brackets in strings do not
    count), so ``json.loads`` never recurses far; linear in the body."""
    depth, in_str, esc = 0, False, False
    for ch in raw.decode("utf-8", "replace"):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


class Handler(BaseHTTPRequestHandler):
    server_version = "orion-controller/0.1"
    protocol_version = "HTTP/1.1"
    controller: Controller
    routes: list[Route]
    keys: dict[str, bytes] | None = None
    """None: no signatures checked (in-process tests only; ``orion-controller start`` always
    passes the API and client keys)"""
    portal_hash: str | None = None
    replay: auth.ReplayCache
    limits: Limits = Limits()
    timeout = Limits.header_timeout
    """socket timeout of each read and write (``StreamRequestHandler``); the whole of a
    request's line and headers is bounded too (``handle_one_request``)"""

    def setup(self) -> None:
        super().setup()
        self._rx = _DeadlineIO(self.connection)
        self.rfile = io.BufferedReader(self._rx, 1 << 16)

    def handle_one_request(self) -> None:
        """One request, its line and headers within ``header_timeout`` in all (a client sending a
        byte now and then is not let hold its thread; nor is a kept-alive idle one)."""
        self._rx.deadline = time.monotonic() + self.limits.header_timeout
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        try:
            raw = self._raw_body()
            body = self._decode(method, raw)
            if method == "GET" and path == "/":
                if not self._portal_login_ok():
                    return self._send(401, b"login required (user admin)\n", "text/plain",
                                      {"WWW-Authenticate": 'Basic realm="Orion Controller"'})
                return self._send(200, portal.render(self.controller).encode(),
                                  "text/html; charset=utf-8")
            if method == "GET" and path == "/metrics":
                return self._send(200, metrics.render(self.controller).encode(),
                                  metrics.CONTENT_TYPE)
            allowed = []
            for m, pattern, need, fn in self.routes:
                match = pattern.match(path)
                if match is None:
                    continue
                if m != method:
                    allowed.append(m)
                    continue
                args = [urllib.parse.unquote(g) for g in match.groups()]
                who = self._caller(method, raw, need)
                result = fn(who, body, *args)
                status, result = result if isinstance(result, tuple) else (HTTPStatus.OK, result)
                return self._json(status, result)
            if allowed:
                return self._json(405, {"error": f"{method} not allowed on {path}; use "
                                                 f"{', '.join(sorted(set(allowed)))}"})
            self._json(404, {"error": f"no such endpoint: {method} {path}"})
        except BadRequest as e:
            self._json(400, {"error": str(e), "field": e.field})
        except NotFound as e:
            self._json(404, {"error": str(e)})
        except Unauthorized as e:
            self._json(401, {"error": str(e)})
        except Forbidden as e:
            self._json(403, {"error": str(e)})
        except (AllocationError, Conflict) as e:
            self._json(409, {"error": str(e)})
        except StoreError as e:
            log.error("store: %s", e)
            self._json(503, {"error": str(e)})
        except ControllerError as e:
            self._json(500, {"error": str(e)})
        except _TooLarge as e:
            self._json(413, {"error": str(e) or f"request body over {self.limits.max_body} bytes"})
        except TimeoutError:
            self.close_connection = True
            log.info("%s: request body not sent within %g s; closed", self.address_string(),
                     self.limits.header_timeout)
            self._try_json(408, {"error": f"request body not sent within "
                                          f"{self.limits.header_timeout:g} s"})
        except Exception:  # noqa: BLE001 - a handler bug must answer 500, not drop the socket
            log.exception("internal error on %s %s", method, path)
            self._json(500, {"error": "internal error (see controller log)"})

    def _raw_body(self) -> bytes:
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit() or len(text) > 12:
            self.close_connection = True  # where the next request starts is unknown
            raise BadRequest(f"malformed Content-Length {text[:40]!r}", "Content-Length")
        length = int(text)
        if length > self.limits.max_body:
            self.close_connection = True
            raise _TooLarge(f"request body of {length} bytes: the limit is {self.limits.max_body} "
                            f"(orion-controller --max-body)")
        if length <= 0:
            return b""
        self._rx.deadline = time.monotonic() + self.limits.header_timeout  # the body's own
        return self.rfile.read(length)

    @staticmethod
    def _decode(method: str, raw: bytes) -> Any:
        if method != "POST" or not raw.strip():
            return {}
        if not _depth_ok(raw):
            raise BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None

    def _caller(self, method: str, raw: bytes, need: str) -> Caller:
        if self.keys is None:  # in-process tests: everyone is an operator
            return Caller(auth.NODE, self.headers, checked=False)
        try:
            role = auth.verify(self.keys, self.headers.get(auth.AUTH_HEADER), method, self.path,
                               raw, time.time(), self.replay)
        except auth.AuthFailed as e:
            raise Unauthorized(f"authentication failed: {e}") from None
        who = Caller(role, self.headers)
        if need == NODE and role != auth.NODE:
            raise Unauthorized(f"{method} {self.path} needs a request signed with the controller's "
                               f"API key ({auth.AUTH_HEADER}; oriond: [controller] api_key_file)")
        if need == CLIENT and role is None:
            raise Unauthorized(f"allocating needs a request signed with the client key "
                               f"({auth.AUTH_HEADER}; client.conf [controller] client_key_file "
                               f"or ORION_CLIENT_KEY_FILE)")
        if need == HOLDER and not who.admin and not who.allocation_secret:
            raise Unauthorized(f"{method} {self.path} needs the allocation's secret "
                               f"({auth.ALLOCATION_SECRET_HEADER}) or the API key")
        return who

    def _portal_login_ok(self) -> bool:
        if self.keys is None:
            return True
        if not self.portal_hash:
            return False
        h = self.headers.get("Authorization") or ""
        if not h.startswith("Basic ") or len(h) > 512:
            return False
        try:
            user, _, pw = base64.b64decode(h[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == auth.PORTAL_USER and auth.check_password(pw, self.portal_hash)

    def _try_json(self, status: int, obj: Any) -> None:
        try:
            self._json(status, obj)
        except OSError:
            pass

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str,
              extra: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.limits.header_timeout)  # not what a read's deadline left
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class _TooLarge(Exception):
    pass


class _DeadlineIO(io.RawIOBase):
    """A connection's read side whose every ``recv`` waits at most what is left until
    ``deadline`` (a socket timeout bounds one ``recv``; this bounds a request that dribbles in a
    byte at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + Limits.header_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(b)


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


class ControllerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    """listen backlog, capped by net.core.somaxconn (socketserver's default is 5: a burst of
    connections waited for SYN retries, about one accepted a second)"""
    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._active = 0
        self._lock = threading.Lock()
        self._busy_logged = 0.0
        super().__init__(*args, **kwargs)

    @property
    def active(self) -> int:
        """Connections being served now (each holds a thread)."""
        return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self._active >= self.limits.max_connections
            if not full:
                self._active += 1
        if full:
            self._busy(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._lock:
                self._active -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._active -= 1

    def _busy(self, request: socket.socket, client_address: Any) -> None:
        msg = (f"the controller serves {self.limits.max_connections} connections, its limit "
               f"(orion-controller --max-connections); try again")
        now = time.monotonic()
        if now - self._busy_logged > 1.0:
            self._busy_logged = now
            log.warning("%s refused: %s", client_address[0], msg)
        body = json.dumps({"error": msg}).encode()
        try:
            request.settimeout(0.5)
            request.sendall(BUSY % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)


def make_server(controller: Controller, host: str, port: int,
                keys: dict[str, bytes] | None = None,
                portal_hash: str | None = None, limits: Limits | None = None) -> ControllerHTTPServer:
    """Bind (``OSError`` if the address is in use); call ``serve_forever`` to serve.

    ``keys``: ``{"node": API key, "client": client key}``, checked on every state change
    (None checks nothing: for in-process tests). ``portal_hash``: the admin's password hash.
    ``limits``: see :class:`Limits` (default: its defaults)."""
    lim = limits or Limits()
    metrics.of(controller)  # its registry and counters, from now on
    handler = type("BoundHandler", (Handler,), {"controller": controller,
                                                "routes": _routes(controller, lim), "keys": keys,
                                                "portal_hash": portal_hash,
                                                "replay": auth.ReplayCache(), "limits": lim,
                                                "timeout": lim.header_timeout})
    server = type("BoundServer", (ControllerHTTPServer,), {"limits": lim})
    return server((host, port), handler)
