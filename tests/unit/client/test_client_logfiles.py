"""A user's client log directory keeps the newest logfiles.KEEP per-run files, nothing else touched."""

from __future__ import annotations

from pathlib import Path

from orion_virt.client import logfiles


def test_the_oldest_runs_beyond_keep_are_removed(tmp_path: Path) -> None:
    runs = [f"client-20260101-{h:02d}0000-{100 + h}.log" for h in range(12)]
    for name in runs:
        (tmp_path / name).write_text("x\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "client-old.log").write_text("not a run's name\n")
    removed = logfiles.prune(tmp_path, keep=5)
    assert sorted(p.name for p in removed) == runs[:7]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*runs[7:], "notes.txt", "client-old.log"])
    assert logfiles.prune(tmp_path, keep=5) == []
    assert logfiles.prune(tmp_path / "absent") == []
