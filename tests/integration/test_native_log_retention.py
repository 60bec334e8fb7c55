"""The native client's log directory keeps the newest 100 run logs (orion_log.c built alone with
a main that logs one line: the real file-opening path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NATIVE = Path(__file__).resolve().parents[2] / "orion_virt" / "client" / "native"
KEEP = 100
MAIN = '#include "orion_log.h"\nint main(void) { orion_log_line("INFO", "one run"); return 0; }\n'


def test_native_client_prunes_the_oldest_run_logs(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the native client (make test-deps installs it)")
    (tmp_path / "main.c").write_text(MAIN)
    exe = tmp_path / "logone"
    c = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{NATIVE}",
                        str(tmp_path / "main.c"), str(NATIVE / "orion_log.c"), str(NATIVE / "orion_conf.c"),
                        "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    logs = tmp_path / "log"
    logs.mkdir()
    old = [f"client-20200101-{i // 60:02d}{i % 60:02d}00-{1000 + i}.log" for i in range(KEEP + 5)]
    for name in old:
        (logs / name).write_text("old\n")
    (logs / "keep-me.txt").write_text("mine\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ORION_LOG_DIR": str(logs),
           "ORION_CLIENT_CONF_ETC": str(tmp_path / "none.conf")}
    r = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    runs = sorted(p.name for p in logs.glob("client-*.log"))
    assert len(runs) == KEEP
    new = [n for n in runs if n not in old]
    assert len(new) == 1 and "one run" in (logs / new[0]).read_text()
    assert runs[:-1] == old[-(KEEP - 1):]  # the oldest went
    assert (logs / "keep-me.txt").exists()
