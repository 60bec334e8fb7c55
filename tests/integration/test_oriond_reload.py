"""systemctl reload oriond (SIGHUP) on a real oriond (sim): a session open across the reload keeps
working, a changed log level and limit apply, a key needing a restart is logged as such, a
malformed file changes nothing; and server.log moved away (as logrotate does) is written anew."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.oriond_fixture import BIN, Oriond

pytestmark = pytest.mark.integration

# one round trip through the device for each line on stdin
SESSION = textwrap.dedent("""
    import sys
    from cuda.bindings import driver as cuda
    assert cuda.cuInit(0)[0] == 0
    err, dev = cuda.cuDeviceGet(0)
    err, ctx = cuda.cuCtxCreate(None, 0, dev)
    print("ready", flush=True)
    for n, _ in enumerate(sys.stdin):
        data = bytes([n % 256]) * 4096
        err, p = cuda.cuMemAlloc(len(data))
        assert err == 0, err
        assert cuda.cuMemcpyHtoD(p, data, len(data))[0] == 0
        back = bytearray(len(data))
        assert cuda.cuMemcpyDtoH(back, p, len(data))[0] == 0
        print("ok" if bytes(back) == data else "corrupt", flush=True)
""")


@pytest.fixture
def oriond(tmp_path: Path) -> Iterator[Oriond]:
    o = Oriond(tmp_path).start()
    yield o
    o.stop()


def _conf(o: Oriond) -> Path:
    return o.logs / "empty-server.conf"  # the --config the fixture gives oriond


def _hup(o: Oriond) -> None:
    assert o.proc is not None
    os.kill(o.proc.pid, signal.SIGHUP)


def test_reload_applies_live_keys_and_keeps_the_session(oriond: Oriond, tmp_path: Path) -> None:
    oriond.device(1)
    prog = tmp_path / "session.py"
    prog.write_text(SESSION)
    p = subprocess.Popen([str(BIN / "orion-run"), sys.executable, str(prog)], env=oriond.env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline().strip() == "ready"
        _conf(oriond).write_text("[server-log]\n    file_log_level = DEBUG\n[server-limits]\n    max_sessions = 7\n"
                                 "[server]\n    vgpu_count = 2\n")
        _hup(oriond)
        log = oriond.wait_log("reloaded ")
        assert "[server-log] file_log_level 'INFO' -> 'DEBUG'" in log and "[server-limits] max_sessions 256 -> 7" in log
        assert "1 sessions kept" in log
        assert "[server] vgpu_count 4 -> 2 needs a restart (systemctl restart oriond); still 4" in log
        # the file log level applies: the reload's DEBUG line is in server.log
        assert "[DEBUG] reload: live settings now" in oriond.wait_log("[DEBUG] reload: live settings")
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ok"

        _conf(oriond).write_text("[server-limits]\n    max_sessions = lots\n")
        _hup(oriond)
        log = oriond.wait_log("the running configuration is kept")
        bad = next(line for line in log.splitlines() if "the running configuration is kept" in line)
        assert str(_conf(oriond)) in bad and "max_sessions" in bad and "lots" in bad, bad
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ok"
    finally:
        p.kill()
        p.wait(10)
    assert oriond.proc is not None and oriond.proc.poll() is None


def test_server_log_moved_away_is_written_anew(oriond: Oriond) -> None:
    log = oriond.logs / "server.log"
    oriond.wait_log("listening on")
    rotated = log.with_name("server.log.1")
    log.rename(rotated)
    _hup(oriond)  # any line will do: a reload with nothing changed logs one
    oriond.wait_log("reloaded ")
    assert "listening on" in rotated.read_text() and "reloaded " not in rotated.read_text()
    assert "reloaded " in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
