"""install-client: install the Orion vGPU client environment (the seeds' installer)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..installer import core


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "prefix", metavar="PATH",
              help=f"Installation path (default {core.DEFAULT_PREFIX}). Given: no question is asked.")
@click.option("-q", "quiet", is_flag=True, help="Quiet install: skip the question.")
@click.option("--uninstall", is_flag=True, help="Remove the installation (at -d PATH, or the default).")
@click.option("--root", default="/", show_default=True, metavar="DIR",
              help="Install into DIR as the root directory (images, tests).")
@click.option("--python", metavar="PYTHON",
              help="The Python to install for (default: /usr/bin/python3 when run from a venv).")
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of installing, write a self-contained installer (a Python zip "
                   "application) to copy into a guest and run there: sudo python3 FILE")
def main(prefix: str | None, quiet: bool, uninstall: bool, root: str, python: str | None,
         bundle: Path | None) -> None:
    """Install the Orion vGPU client environment for the system's Python.

    \b
      sudo install-client              asks, then installs to /usr/lib/orion
      sudo install-client -d /orion    installs to /orion
      sudo install-client --uninstall  removes it again
    Installs only the client (standard library only), a .pth file that activates it for
    cuda-python programs whenever ORION_VGPU is set, orion-run and orion-check wrappers, and
    /etc/orion/client.conf (an existing one is kept).
    """
    if bundle is not None:
        files = core.build_bundle(bundle)
        click.echo(f"Wrote {bundle} ({len(files)} modules). In the guest: sudo python3 {bundle.name} [-d PATH] [-q]")
        return

    def ask(prompt: str) -> str:
        click.echo(prompt, nl=False)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        if not sys.stdin.isatty():
            click.echo(line.rstrip("\n"))  # as a terminal would have echoed it
        return line

    sys.exit(core.run(prefix=prefix, quiet=quiet, do_uninstall=uninstall, root=root, python=python,
                      out=click.echo, ask=ask))
