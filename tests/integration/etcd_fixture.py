"""A real etcd on loopback for tests: temp data dir, random free ports, stopped by pid.

Use ``etcd_url`` (a pytest fixture, import it into the test module) or ``EtcdProcess`` directly.
Skips the test with a message when ``/usr/bin/etcd`` (Debian ``etcd-server``) is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from orion_virt.launch import free_port
from orion_virt.procs import stop_process

__all__ = ["EtcdProcess", "etcd_url", "free_port"]

ETCD_BINARY = os.environ.get("ORION_TEST_ETCD", "/usr/bin/etcd")


class EtcdProcess:
    def __init__(self, binary: str = ETCD_BINARY) -> None:
        self.binary = binary
        self.data_dir = Path(tempfile.mkdtemp(prefix="orion-etcd-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.data_dir / "etcd.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "orion-test", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"orion-test={peer}", "--log-level", "error"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.data_dir / 'etcd.log').read_text()}")
            try:
                req = urllib.request.Request(self.url + "/v3/kv/range", data=json.dumps(
                    {"key": "AA=="}).encode(), method="POST")
                urllib.request.urlopen(req, timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    if not os.access(ETCD_BINARY, os.X_OK):
        pytest.skip(f"{ETCD_BINARY} not found: install the Debian package etcd-server "
                    f"(make test installs it)")
    etcd = EtcdProcess()
    etcd.start()
    try:
        yield etcd.url
    finally:
        etcd.stop()
