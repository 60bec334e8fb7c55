"""A real oriond (``--backend sim`` / ``--backend cuda``) in a subprocess; unmodified cuda-python
programs through orion-run, over shared memory and over TCP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.parity.harness import ROOT, Oriond, require_cuda

PROGRAMS = Path(__file__).resolve().parent / "programs"


@pytest.fixture(scope="module", params=["sim", pytest.param("cuda", marks=pytest.mark.gpu)])
def server(request, tmp_path_factory):
    if request.param == "cuda":
        require_cuda()
    srv = Oriond(tmp_path_factory.mktemp(f"oriond-{request.param}"), request.param).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_vector_add_and_fault_isolation(server, transport):
    tcp = transport == "tcp"
    r = server.run_client([sys.executable, str(ROOT / "examples" / "vectorAdd.py")], tcp=tcp)
    assert r.returncode == 0 and "Test PASSED" in r.stdout, r.stdout + r.stderr + server.server_log()[-3000:]
    # a faulting kernel is reported to its own session ...
    r = server.run_client([sys.executable, str(PROGRAMS / "illegal_address.py")], tcp=tcp)
    assert r.returncode == 0, r.stdout + r.stderr + server.server_log()[-3000:]
    # ... and the next session works
    r = server.run_client([sys.executable, str(ROOT / "examples" / "vectorAdd.py")], tcp=tcp)
    assert r.returncode == 0 and "Test PASSED" in r.stdout, r.stdout + r.stderr


def test_oriond_logs_its_backend(server):
    log = server.server_log()
    if server.backend == "sim":
        assert "backend sim" in log and "NOT a GPU" in log
    else:
        assert "backend cuda" in log and "NOT a GPU" not in log
