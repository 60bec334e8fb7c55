"""install-server: install the Orion Server (oriond, orion-controller, the tools) in a
self-contained environment with its systemd units (see :mod:`orion_virt.installer.server`)."""

from __future__ import annotations

import os
import sys

import click

from ..installer import server
from . import version_option


def _ask(prompt: str) -> str:
    click.echo(prompt, nl=False)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    if not sys.stdin.isatty():
        click.echo(line.rstrip("\n"))
    return line


@version_option("install-server")
@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
examples:
  sudo install-server                 asks, then installs to /opt/orion
  sudo install-server -q              installs to /opt/orion, no question
  sudo install-server --uninstall     removes it again
  sudo install-server -q --wheel-dir /srv/wheels --no-index   offline
""")
@click.option("-d", "--prefix", default=None, metavar="PATH",
              help=f"The environment's path (default {server.DEFAULT_PREFIX}; given: no question is asked).")
@click.option("-q", "quiet", is_flag=True, help="Quiet install: skip the question.")
@click.option("--uninstall", is_flag=True, help="Remove the installation (at -d PATH, or the default).")
@click.option("--root", default="/", show_default=True, metavar="DIR",
              help="Install into DIR as the root directory (images, tests).")
@click.option("--from", "source", default="", metavar="PATH",
              help="The project to install: a checkout or an orion_virt wheel (default: this checkout).")
@click.option("--python", default="", metavar="PYTHON",
              help="The Python the environment is made from (default: this one's base interpreter).")
@click.option("--wheel-dir", default="", metavar="DIR", help="Find the dependencies' wheels in DIR too.")
@click.option("--no-index", is_flag=True, help="Do not use a package index (offline: with --wheel-dir).")
@click.option("--no-deps", is_flag=True,
              help="Install orion_virt alone (its dependencies from the system: with --system-site-packages).")
@click.option("--system-site-packages", is_flag=True, help="Let the environment see the system's packages.")
@click.option("--extras", default=",".join(server.EXTRAS), show_default=True,
              help="The project's extras to install (comma-separated; empty: none).")
@click.option("--cuda-home", default=None, metavar="DIR",
              help="Where CUDA is, for oriond's unit (default: $CUDA_HOME, else /usr/local/cuda).")
def main(prefix: str | None, quiet: bool, uninstall: bool, root: str, source: str, python: str,
         wheel_dir: str, no_index: bool, no_deps: bool, system_site_packages: bool, extras: str,
         cuda_home: str | None) -> None:
    """Install the Orion Server in a self-contained environment (default /opt/orion): oriond,
    orion-controller and the tools, linked into /usr/local/bin; /etc/orion/server.conf if absent;
    systemd units oriond.service and orion-controller.service; /etc/logrotate.d/orion and
    /var/log/orion. Each step prints a line."""
    o = server.Options(
        prefix=prefix or server.DEFAULT_PREFIX, root=root, source=source, python=python, wheel_dir=wheel_dir,
        no_index=no_index, no_deps=no_deps, system_site_packages=system_site_packages,
        extras=tuple(e for e in (x.strip() for x in extras.split(",")) if e),
        cuda_home=cuda_home or os.environ.get("CUDA_HOME") or server.server_files.DEFAULT_CUDA_HOME)
    ask = None if (quiet or prefix is not None or uninstall) else _ask
    sys.exit(server.run(o, do_uninstall=uninstall, ask=ask, out=lambda line: click.echo(line)))
