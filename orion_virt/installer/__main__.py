"""install-client's one front end: ``install-client`` (the console script, via
``orion_virt.cli.install_client``), ``python3 -m orion_virt.installer`` and the bundle
(``python3 install-client``) all parse their arguments here. Standard library only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import core

EPILOG = """\
examples:
  sudo install-client              asks, then installs to /usr/lib/orion
  sudo install-client -d /orion    installs to /orion
  sudo install-client --uninstall  removes it again

Installs only the client (standard library only), a .pth file that activates it for cuda-python
programs whenever ORION_VGPU is set, orion-run and orion-check wrappers, and
/etc/orion/client.conf (an existing one is kept).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install-client", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Install the Orion vGPU client environment for the system's Python.")
    p.add_argument("-d", dest="prefix", metavar="PATH",
                   help=f"installation path (default {core.DEFAULT_PREFIX}; given: no question is asked)")
    p.add_argument("-q", dest="quiet", action="store_true", help="quiet install: skip the question")
    p.add_argument("--uninstall", action="store_true",
                   help="remove the installation (at -d PATH, or the default)")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="install into DIR as the root directory (images, tests; default /)")
    p.add_argument("--python", metavar="PYTHON", help="the Python to install for (default: this one, "
                   "or /usr/bin/python3 when run from a virtual environment)")
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="instead of installing, write a self-contained installer (a Python zip "
                        "application) to copy into a guest and run there: sudo python3 FILE")
    return p


def ask(prompt: str) -> str:
    """The seeds' question on stdout; the answer echoed when stdin is not a terminal (as a
    terminal would have shown it). EOFError when stdin is closed."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    if not sys.stdin.isatty():
        print(line.rstrip("\n"), flush=True)
    return line


def out(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.bundle is not None:
        files = core.build_bundle(a.bundle)
        out(f"Wrote {a.bundle} ({len(files)} modules). In the guest: sudo python3 {a.bundle.name} [-d PATH] [-q]")
        return 0
    return core.run(prefix=a.prefix, quiet=a.quiet, do_uninstall=a.uninstall, root=a.root,
                    python=a.python, out=out, ask=ask)


if __name__ == "__main__":
    sys.exit(main())
