"""HTTP/JSON API of the controller (stdlib ``ThreadingHTTPServer``); see docs/controller-api.md.

Errors answer ``{"error": message, "field": name?}`` with 400 (bad JSON or field), 404 (unknown
node/allocation/path), 405, 409 (pool cannot satisfy the request), 413, 503 (store unreachable).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from . import metrics, portal
from .exceptions import AllocationError, BadRequest, ControllerError, NotFound, StoreError
from .service import Controller

log = logging.getLogger("orion_virt.controller.http")
MAX_BODY = 1 << 20
_ID = r"([^/]+)"

Route = tuple[str, "re.Pattern[str]", Callable[..., Any]]


def _routes(c: Controller) -> list[Route]:
    r: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", "/version", lambda body: c.version()),
        ("GET", "/api/v1/version", lambda body: c.version()),
        ("GET", "/api/v1/summary", lambda body: c.summary()),
        ("GET", "/api/v1/nodes", lambda body: {"nodes": c.nodes()}),
        ("POST", "/api/v1/nodes", lambda body: (HTTPStatus.CREATED, c.register(body))),
        ("DELETE", f"/api/v1/nodes/{_ID}", lambda body, nid: c.deregister(nid)),
        ("POST", f"/api/v1/nodes/{_ID}/heartbeat", lambda body, nid: c.heartbeat(nid)),
        ("GET", "/api/v1/tasks", lambda body: {"tasks": c.tasks()}),
        ("GET", "/api/v1/allocations", lambda body: {"allocations": c.tasks()}),
        ("POST", "/api/v1/allocations", lambda body: (HTTPStatus.CREATED, c.allocate(body))),
        ("GET", f"/api/v1/allocations/{_ID}", lambda body, aid: c.get_allocation(aid)),
        ("DELETE", f"/api/v1/allocations/{_ID}", lambda body, aid: c.release(aid)),
        ("POST", f"/api/v1/allocations/{_ID}/renew", lambda body, aid: c.renew(aid)),
    ]
    return [(m, re.compile(p + "$"), f) for m, p, f in r]


class Handler(BaseHTTPRequestHandler):
    server_version = "orion-controller/0.1"
    protocol_version = "HTTP/1.1"
    controller: Controller
    routes: list[Route]

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
            body = self._body(method)
            if method == "GET" and path == "/":
                return self._send(200, portal.render(self.controller).encode(),
                                  "text/html; charset=utf-8")
            if method == "GET" and path == "/metrics":
                return self._send(200, metrics.render(self.controller).encode(),
                                  metrics.CONTENT_TYPE)
            allowed = []
            for m, pattern, fn in self.routes:
                match = pattern.match(path)
                if match is None:
                    continue
                if m != method:
                    allowed.append(m)
                    continue
                args = [urllib.parse.unquote(g) for g in match.groups()]
                result = fn(body, *args)
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
        except AllocationError as e:
            self._json(409, {"error": str(e)})
        except StoreError as e:
            log.error("store: %s", e)
            self._json(503, {"error": str(e)})
        except ControllerError as e:
            self._json(500, {"error": str(e)})
        except _TooLarge:
            self._json(413, {"error": f"request body over {MAX_BODY} bytes"})
        except Exception:  # noqa: BLE001 - a handler bug must answer 500, not drop the socket
            log.exception("internal error on %s %s", method, path)
            self._json(500, {"error": "internal error (see controller log)"})

    def _body(self, method: str) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise _TooLarge()
        raw = self.rfile.read(length) if length > 0 else b""
        if method != "POST" or not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class _TooLarge(Exception):
    pass


class ControllerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(controller: Controller, host: str, port: int) -> ControllerHTTPServer:
    """Bind (``OSError`` if the address is in use); call ``serve_forever`` to serve."""
    handler = type("BoundHandler", (Handler,), {"controller": controller,
                                                "routes": _routes(controller)})
    return ControllerHTTPServer((host, port), handler)
