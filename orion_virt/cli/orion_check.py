"""orion-check: health checks before installing and while running (the seeds' tool)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import version_option

COMPONENTS = click.Choice(["controller", "server", "client"])


class _Out:
    """stdout that works both as a text stream (``write``) and as a line printer (called)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __call__(self, line: str = "") -> None:
        self.stream.write(f"{line}\n")
        self.stream.flush()


def _client_check(name: str, config: Path | None) -> int:
    try:
        from ..check import client as client_checks
    except ImportError as e:
        click.echo(f"orion-check: the Orion Client checks are not available in this "
                   f"installation (orion_virt.check.client: {e})", err=True)
        return 2
    fn: Callable[..., int] | None = getattr(client_checks, name, None)
    if fn is None:
        click.echo(f"orion-check: the Orion Client check {name} is not available in this "
                   f"installation", err=True)
        return 2
    env = dict(os.environ)
    if config is not None:
        env["ORION_CLIENT_CONF_ETC"] = str(config)
    return int(fn(env, _Out(sys.stdout)) or 0)


@version_option("orion-check")
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Check an Orion vGPU installation.

    \b
      orion-check install controller|server|client   before installing a component
      orion-check runtime server|client|controller   diagnose the running system
    Exit status: 0 when every check passed (warnings allowed), 1 when one failed.
    """


_config = click.option("--config", "config", type=click.Path(path_type=Path), default=None,
                       help="server.conf (server, controller) or client.conf (client) to "
                            "diagnose; default: the one the running process uses, else "
                            "/etc/orion/server.conf or /etc/orion/client.conf.")


@main.command()
@click.argument("component", type=COMPONENTS)
@_config
@click.option("--kv", default=None, metavar="URL",
              help="controller: the store orion-controller will use (default embedded SQLite; "
                   "http://HOST:2379 for etcd).")
@click.option("--token-key", default="/etc/orion/token.key", show_default=True,
              help="controller: the token key file.")
@click.option("-i", "--ip", default="0.0.0.0", show_default=True,
              help="controller: the address it will bind.")
@click.option("-p", "--port", default=9123, show_default=True, type=click.IntRange(1, 65535),
              help="controller: the port it will listen on.")
def install(component: str, config: Path | None, kv: str | None, token_key: str, ip: str,
            port: int) -> None:
    """Check this host before installing COMPONENT (controller, server or client)."""
    if component == "server":
        from ..check.server import install_server

        rc = install_server(config, sys.stdout)
    elif component == "controller":
        from ..check.controller import install_controller

        rc = install_controller(sys.stdout, kv=kv, ip=ip, port=port, token_key=token_key)
    else:
        rc = _client_check("install_client", config)
    sys.exit(rc)


@main.command()
@click.argument("component", type=COMPONENTS)
@_config
def runtime(component: str, config: Path | None) -> None:
    """Diagnose the running COMPONENT (server, client or controller)."""
    if component == "server":
        from ..check.server import runtime_server

        rc = runtime_server(config, sys.stdout)
    elif component == "controller":
        from ..check.controller import runtime_controller

        rc = runtime_controller(sys.stdout, config_path=config)
    else:
        rc = _client_check("runtime_client", config)
    sys.exit(rc)
