"""The write-or-check loop every generator in tools/ shares."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Callable, Sequence


def regenerate(doc: str, root: Path, targets: Sequence[tuple[Path, Callable[[], str]]],
               argv: list[str] | None = None) -> int:
    """Write each target's new text (each is made only after the ones before it are written), or
    with ``--check`` write nothing and return 1 with a diff when any is stale."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for path, make in targets:
        new = make()
        old = path.read_text() if path.exists() else ""
        if new == old:
            continue
        if args.check:
            stale.append(path)
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), str(path), f"{path} (generated)", n=1))
        else:
            path.write_text(new)
            print(f"wrote {path.relative_to(root)}")
    if stale:
        tool = Path(sys.argv[0]).name
        print(f"\nstale: {', '.join(str(p.relative_to(root)) for p in stale)}; run python tools/{tool}")
        return 1
    return 0
