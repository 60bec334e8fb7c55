"""Files with the narrowest modes (issue 15, item 9): logs and stores 0640 or tighter, keys 0600,
whatever the umask, and a file left wider by an older release is tightened at the next start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orion_virt import fileperm
from orion_virt.config import ServerConfig
from orion_virt.controller.store import SqliteStore
from orion_virt.controller.token import load_key


def mode(p: Path | str) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(autouse=True)
def wide_umask():
    old = os.umask(0)  # the worst case: nothing masked
    yield
    os.umask(old)


def test_server_and_session_logs(tmp_path):
    from orion_virt.server.logs import session_logger, setup_server_logging

    cfg = ServerConfig(log_dir=str(tmp_path / "log"))
    log = setup_server_logging(cfg)
    log.info("x")
    slog = session_logger(cfg, 7, log)
    slog.info("y")
    assert mode(cfg.server_log_path) == 0o640
    assert mode(cfg.session_log_dir / "7.log") == 0o640
    assert mode(cfg.session_log_dir) & 0o007 == 0
    for lg in (log, slog):
        for h in lg.handlers:
            h.close()


def test_existing_wide_log_is_tightened(tmp_path):
    p = tmp_path / "server.log"
    p.write_text("old\n")
    os.chmod(p, 0o666)
    h = fileperm.file_handler(p)
    h.close()
    assert mode(p) == 0o640
    assert p.read_text() == "old\n"


def test_sqlite_store_and_its_wal(tmp_path):
    db = tmp_path / "ctl" / "orion.db"
    s = SqliteStore(db)
    s.update(lambda st: st.nodes.clear())
    for f in db.parent.iterdir():
        assert mode(f) & 0o137 == 0, (f, oct(mode(f)))
    s.close()


def test_token_key_0600(tmp_path):
    p = tmp_path / "etc" / "token.key"
    load_key(p, create=True)
    assert mode(p) == 0o600
