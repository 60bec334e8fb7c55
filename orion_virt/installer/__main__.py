"""``python3 -m orion_virt.installer`` / ``python3 install-client.pyz``: install-client without click."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import core


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install-client",
        description="Install the Orion vGPU client environment for this system's Python.")
    p.add_argument("-d", dest="prefix", metavar="PATH",
                   help=f"installation path (default {core.DEFAULT_PREFIX}; given: no question asked)")
    p.add_argument("-q", dest="quiet", action="store_true", help="quiet install: skip the question")
    p.add_argument("--uninstall", action="store_true", help="remove an installation (see -d)")
    p.add_argument("--root", default="/", metavar="DIR", help="install into DIR as the root directory")
    p.add_argument("--python", metavar="PYTHON", help="the Python to install for (default: this one, "
                   "or /usr/bin/python3 when run from a virtual environment)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)

    def out(line: str) -> None:
        print(line, flush=True)

    def ask(prompt: str) -> str:
        answer = input(prompt)
        if not sys.stdin.isatty():
            print(answer, flush=True)  # as a terminal would have echoed it
        return answer

    return core.run(prefix=a.prefix, quiet=a.quiet, do_uninstall=a.uninstall, root=a.root,
                    python=a.python, out=out, ask=ask)


if __name__ == "__main__":
    sys.exit(main())
