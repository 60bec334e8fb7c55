"""The node labeller against a fake API server (an HTTP server on loopback answering the PATCH the
``kubernetes`` client sends), with pyroute2 discovering the address of a real interface (lo)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

pytest.importorskip("kubernetes", reason="the k8s extra is not installed")
pytest.importorskip("pyroute2", reason="the host extra is not installed")

from orion_virt.k8s.labeller import Labeller, LabellerOptions  # noqa: E402


class FakeApi:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.patches: list[tuple[str, str, str, Any]] = []
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.patches.append((self.path, self.headers.get("Content-Type", ""),
                                    self.headers.get("Authorization", ""), body))
                name = self.path.rsplit("/", 1)[-1]
                if api.status == 200:
                    out = {"kind": "Node", "apiVersion": "v1",
                           "metadata": {"name": name, "labels": body["metadata"]["labels"]}}
                else:
                    out = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": api.status,
                           "reason": "Forbidden", "message": f"nodes \"{name}\" is forbidden"}
                data = json.dumps(out).encode()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    a = FakeApi()
    yield a
    a.close()


def test_labels_the_node_with_the_interface_address(api: FakeApi) -> None:
    lab = Labeller(LabellerOptions("node-7", "lo", api_server=api.url, token="s3cret"))
    assert lab.run(once=True) == 0
    (path, ctype, auth, body) = api.patches[0]
    assert path == "/api/v1/nodes/node-7"
    assert ctype in ("application/strategic-merge-patch+json", "application/merge-patch+json")
    assert auth == "Bearer s3cret"
    assert body == {"metadata": {"labels": {"ORION_BIND_ADDR": "127.0.0.1"}}}
    # same address: no second patch
    assert lab.once() and len(api.patches) == 1


def test_missing_interface_waits_with_the_seeds_line(api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    lab = Labeller(LabellerOptions("n", "orion-no-such0", api_server=api.url, backoff_initial=0.01,
                                   backoff_max=0.02))
    assert not lab.once()
    assert "Waiting for network interface orion-no-such0" in caplog.text
    assert api.patches == []


def test_forbidden_is_explained_and_retried() -> None:
    a = FakeApi(status=403)
    try:
        lab = Labeller(LabellerOptions("n", "lo", api_server=a.url, backoff_initial=0.01, backoff_max=0.02))
        t = threading.Thread(target=lab.run, daemon=True)
        t.start()
        while len(a.patches) < 3:
            t.join(0.05)
        lab.stop()
        t.join(5)
        assert not t.is_alive() and lab.labelled is None
    finally:
        a.close()


def test_forbidden_message(caplog: pytest.LogCaptureFixture) -> None:
    a = FakeApi(status=403)
    try:
        assert not Labeller(LabellerOptions("n", "lo", api_server=a.url)).once()
        assert "403" in caplog.text and "may not patch nodes" in caplog.text
    finally:
        a.close()
