"""``orion-controller start``: run the vGPU pool controller (HTTP API, web portal, /metrics)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from .. import fileperm
from ..controller.store import DEFAULT_SQLITE_PATH
from ..errors import ConfigError, ControllerError, OrionError
from . import version_option

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}


@version_option("orion-controller")
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Orion Controller: manages the GPU pool, hands vGPUs to clients, takes them back."""


@main.command()
@click.option("-i", "--ip", "ip", default="0.0.0.0", show_default=True,
              help="IP address to bind the HTTP API and web portal to.")
@click.option("-p", "--port", default=9123, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--kv", default=None, metavar="URL",
              help=f"Pool store. Default: embedded SQLite at {DEFAULT_SQLITE_PATH}. "
                   "'http://HOST:2379' uses etcd v3 (several controllers may share it); "
                   "'sqlite:///PATH' uses SQLite at /PATH.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warn", "error"], case_sensitive=False),
              help="Log level.")
@click.option("--log", "log_file", default=None, metavar="FILE",
              help="Write the log to FILE (appending). Default: standard output.")
@click.option("--vgpu", default=4, show_default=True, type=click.IntRange(min=1),
              help="vGPUs per physical GPU for servers that do not set vgpu_count themselves. "
                   "A vGPU's default memory is the GPU's memory divided by this, its default "
                   "compute share 100/this %.")
@click.option("--token-key", default="/etc/orion/token.key", show_default=True, metavar="PATH",
              help="HMAC key shared with every Orion Server (hex text); created with mode "
                   "0600 if absent. Copy it to the servers' token_key_file.")
@click.option("--api-key", default="/etc/orion/controller.key", show_default=True, metavar="PATH",
              help="HMAC key (hex text) that servers, tools and the device plugin sign their "
                   "requests with; created with mode 0600 if absent. Copy it to the servers' "
                   "[controller] api_key_file.")
@click.option("--client-key", default="/etc/orion/client.key", show_default=True, metavar="PATH",
              help="HMAC key (hex text) that applications sign allocations with; created with "
                   "mode 0600 if absent. Give it to clients as [controller] client_key_file or "
                   "ORION_CLIENT_KEY_FILE.")
@click.option("--portal-passwd", default="/etc/orion/portal.passwd", show_default=True,
              metavar="PATH",
              help="The web portal's login (user admin): a password hash, mode 0600. Absent at "
                   "first start: ORION_PORTAL_PASSWORD sets it, else a random password is "
                   "generated and printed once.")
@click.option("--heartbeat-timeout", default=15.0, show_default=True,
              type=click.FloatRange(min=1.0),
              help="Seconds without a heartbeat after which a server is marked down and its "
                   "allocations are released.")
@click.option("--lease", "lease_seconds", default=30.0, show_default=True,
              type=click.FloatRange(min=1.0),
              help="Allocation lease in seconds; clients renew it, a dead client's lease "
                   "expires.")
@click.option("--max-body", default=1 << 20, show_default=True, type=click.IntRange(min=1024),
              help="Largest request body in bytes; a larger one answers 413 unread.")
@click.option("--header-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.1),
              help="Seconds a client may take to send a request's line and headers (and then "
                   "its body); a kept-alive connection idle this long is closed.")
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(min=1),
              help="Connections served at once (a thread each); one more answers 503.")
@click.option("--max-gpus-per-node", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most GPUs one server may register; a larger registration answers 413.")
@click.option("--max-vgpus-per-gpu", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most vGPUs (vgpu_count) a registered GPU may be split into.")
@click.option("--max-nodes", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Most servers (nodes) in the pool; registering one more answers 413.")
def start(ip: str, port: int, kv: str | None, log_level: str, log_file: str | None, vgpu: int,
          token_key: str, api_key: str, client_key: str, portal_passwd: str,
          heartbeat_timeout: float, lease_seconds: float, max_body: int, header_timeout: float,
          max_connections: int, max_gpus_per_node: int, max_vgpus_per_gpu: int,
          max_nodes: int) -> None:
    """Start the controller and serve until SIGTERM or Ctrl-C.

    \b
    Example:
      orion-controller start -i 0.0.0.0 -p 9123 --kv http://127.0.0.1:2379
    """
    from ..controller.api import Limits

    limits = Limits(max_body=max_body, header_timeout=header_timeout,
                    max_connections=max_connections, max_gpus_per_node=max_gpus_per_node,
                    max_vgpus_per_gpu=max_vgpus_per_gpu, max_nodes=max_nodes)
    try:
        _setup_logging(log_level, log_file)
        _serve(ip, port, kv, vgpu, token_key, heartbeat_timeout, lease_seconds,
               (api_key, client_key, portal_passwd), limits)
    except OrionError as e:
        click.echo(f"orion-controller: {e}", err=True)
        sys.exit(e.exit_code)


def _setup_logging(level: str, log_file: str | None) -> None:
    try:
        handler: logging.Handler = (fileperm.file_handler(log_file) if log_file
                                    else logging.StreamHandler(sys.stdout))
    except OSError as e:
        raise ConfigError(f"--log {log_file}: cannot open: {e.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level.lower()])


def _portal_hash(path: str, log: logging.Logger) -> str:
    """The admin's password hash from ``path``, created at first start (never a fixed default)."""
    import os
    import secrets

    from ..controller import auth

    p = Path(path)
    if not p.exists():
        pw = os.environ.get("ORION_PORTAL_PASSWORD") or secrets.token_urlsafe(12)
        try:
            fileperm.make_dir(p.parent, 0o755)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, fileperm.SECRET_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(auth.hash_password(pw) + "\n")
        except FileExistsError:
            pass
        except OSError as e:
            raise ConfigError(f"--portal-passwd {p}: cannot create: {e.strerror}") from None
        else:
            if "ORION_PORTAL_PASSWORD" not in os.environ:
                click.echo(f"orion-controller: web portal login: user {auth.PORTAL_USER}, password "
                           f"{pw} (stored hashed in {p}; this is the only time it is shown)",
                           err=True)
            log.info("web portal password set in %s", p)
    try:
        text = p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"--portal-passwd {p}: cannot read: {e.strerror}") from None
    fileperm.restrict(p, fileperm.SECRET_MODE)
    return text


def _serve(ip: str, port: int, kv: str | None, vgpu: int, token_key: str,
           heartbeat_timeout: float, lease_seconds: float,
           auth_files: tuple[str, str, str], limits: Any = None) -> None:
    from ..controller.api import make_server
    from ..controller.pool import Policy
    from ..controller.service import Controller, Reaper
    from ..controller.store import open_store
    from ..controller.token import load_key

    log = logging.getLogger("orion_virt.controller")
    store = open_store(kv)
    store.read()
    key = load_key(token_key, create=True)
    api_key, client_key, portal_passwd = auth_files
    keys = {"node": load_key(api_key, create=True), "client": load_key(client_key, create=True)}
    portal_hash = _portal_hash(portal_passwd, log)
    policy = Policy(default_vgpu_count=vgpu, lease_seconds=lease_seconds,
                    heartbeat_timeout=heartbeat_timeout)
    controller = Controller(store, policy, key)
    try:
        server = make_server(controller, ip, port, keys, portal_hash, limits)
    except OSError as e:
        raise ConfigError(f"cannot listen on {ip}:{port}: {e.strerror or e}") from None
    reaper = Reaper(controller, interval=min(1.0, heartbeat_timeout / 3))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # systemctl reload orion-controller: its settings are flags, there is nothing to re-read (its
    # log file is reopened by itself after logrotate); without this, SIGHUP would end it
    signal.signal(signal.SIGHUP, lambda *_: log.info(
        "SIGHUP: nothing to reload (the settings are command-line flags: change them and restart)"))
    serving = threading.Thread(target=server.serve_forever, name="orion-http", daemon=True)
    serving.start()
    reaper.start()
    log.info("Orion Controller listening on http://%s:%d (store: %s, vgpu per GPU: %d, "
             "heartbeat timeout %.0fs, lease %.0fs)", ip, port, store.describe(), vgpu,
             heartbeat_timeout, lease_seconds)
    lim = server.limits
    log.info("limits: body %d bytes, header timeout %gs, %d connections, %d GPUs per node, "
             "%d vGPUs per GPU, %d nodes", lim.max_body, lim.header_timeout, lim.max_connections,
             lim.max_gpus_per_node, lim.max_vgpus_per_gpu, lim.max_nodes)
    while not stop.wait(1.0):
        if not serving.is_alive():
            raise ControllerError("HTTP server stopped unexpectedly")
    log.info("Orion Controller stopping")
    server.shutdown()
    server.server_close()
    reaper.stop()
    store.close()
