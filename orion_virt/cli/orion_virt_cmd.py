"""``orion-virt``: give libvirt/KVM guests an Orion vGPU device (host agent CLI).

Exit codes: 0 success; 1 host error (domain missing, libvirt refused, netlink, files);
2 configuration or usage error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import click

from ..config import ServerConfig, load_server_config
from ..controller.auth import DEFAULT_CLIENT_KEY_FILE as DEFAULT_CLIENT_KEY
from ..errors import HostError, OrionError
from ..host.agent import COLD_BOOT_NOTE, HostAgent
from ..host.hookinstall import DEFAULT_HOOKS_DIR, install_hook, reload_libvirt, uninstall_hook
from . import version_option

DEFAULT_URI = "qemu:///system"


class _Ctx:
    def __init__(self, uri: str, config_path: str | None,
                 connect: Callable[[str], Any] | None = None) -> None:
        self.uri = uri
        self.config_path = config_path
        self._connect = connect
        self._config: ServerConfig | None = None
        self._conn: Any = None

    @property
    def config(self) -> ServerConfig:
        if self._config is None:
            self._config = load_server_config(Path(self.config_path) if self.config_path else None)
        return self._config

    def conn(self) -> Any:
        if self._conn is None:
            if self._connect is not None:
                self._conn = self._connect(self.uri)
            else:
                try:
                    import libvirt
                except ImportError:
                    raise HostError(
                        "libvirt-python is not installed (pip install libvirt-python; it needs "
                        "libvirt-dev and pkg-config to build)"
                    ) from None
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as e:
                    msg = e.get_error_message()
                    raise HostError(f"cannot connect to {self.uri}: {msg}") from None
        return self._conn

    def agent(self) -> HostAgent:
        return HostAgent(self.conn(), self.config, log=lambda m: click.echo(m, err=True))


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except OrionError as e:
        click.echo(f"orion-virt: error: {e}", err=True)
        sys.exit(e.exit_code)


@version_option("orion-virt")
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connect", "-c", "uri", default=DEFAULT_URI, show_default=True, metavar="URI",
              envvar="LIBVIRT_DEFAULT_URI", help="libvirt connection URI.")
@click.option("--config", "config_path", metavar="PATH", envvar="ORION_SERVER_CONF",
              help="server.conf to read [default: /etc/orion/server.conf if present; "
                   "env ORION_SERVER_CONF].")
@click.pass_context
def main(ctx: click.Context, uri: str, config_path: str | None) -> None:
    """Give KVM guests an Orion vGPU device.

    `attach` adds to a domain's persistent definition an ivshmem-plain device
    (orionsock<N>, size shm_buffer_size) and a fw_cfg entry with the server and controller
    addresses; the libvirt hook (`install-hook`) prepares the shared-memory file when the
    VM starts and scrubs it when the VM stops. Changes reach a running VM at its next cold
    boot (shut down, then start; a reboot is not enough).
    """
    ctx.obj = ctx.obj if isinstance(ctx.obj, _Ctx) else _Ctx(uri, config_path)
    ctx.obj.uri, ctx.obj.config_path = uri, config_path


@main.command()
@click.argument("domain")
@click.option("--index", "-i", type=click.IntRange(min=0), default=None,
              help="Use /dev/shm/orionsock<N> [default: the current index, else the lowest "
                   "one no other domain uses].")
@click.option("--doorbell/--no-doorbell", default=False, show_default=True,
              help="Use the interrupt-capable ivshmem-doorbell model (oriond's ivshmem server at "
                   "/run/orion/ivshmem-orionsock<N>.sock must listen when the VM starts; the guest "
                   "needs a vIOMMU and vfio-pci to sleep on it) instead of ivshmem-plain.")
@click.option("--client-key", "client_key", metavar="PATH", default=DEFAULT_CLIENT_KEY, show_default=True,
              help="The controller's client key, given to the guest's clients in its fw_cfg entry "
                   "(readable by the guest's root only) so they sign allocations with no copy step; "
                   "used when the file exists.")
@click.option("--no-client-key", is_flag=True, help="Give the guest no client key.")
@click.pass_obj
def attach(obj: _Ctx, domain: str, index: int | None, doorbell: bool, client_key: str,
           no_client_key: bool) -> None:
    """Attach an Orion device to DOMAIN (idempotent)."""
    def go() -> None:
        key = None if no_client_key or not os.path.exists(client_key) else client_key
        r = obj.agent().attach(domain, index, doorbell=doorbell, client_key=key)
        verb = "attached" if r.changed else "already attached"
        click.echo(f"{domain}: {verb} as orionsock{r.index} ({r.size_bytes >> 20} MiB, "
                   f"{r.shm_path})")
        if r.doorbell:
            click.echo(f"  ivshmem-doorbell, server {r.doorbell}")
        for k, v in r.config.items():
            click.echo(f"  client key from {key}" if k == "client_key" else f"  {k} = {v}")
        if r.pending:
            click.echo(f"  {domain} is running: {COLD_BOOT_NOTE}")
    _run(go)


@main.command()
@click.argument("domain")
@click.pass_obj
def detach(obj: _Ctx, domain: str) -> None:
    """Remove what `attach` added from DOMAIN (user devices are kept)."""
    def go() -> None:
        changed, pending = obj.agent().detach(domain)
        click.echo(f"{domain}: {'detached' if changed else 'was not attached'}")
        if pending:
            click.echo(f"  {domain} is running with the device: {COLD_BOOT_NOTE}")
    _run(go)


@main.command()
@click.argument("domain")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: _Ctx, domain: str, as_json: bool) -> None:
    """Show DOMAIN's Orion device, addresses and whether a cold boot is pending."""
    def go() -> None:
        st = obj.agent().status(domain)
        click.echo(json.dumps(st.as_dict(), indent=2) if as_json else "\n".join(st.describe()))
    _run(go)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include domains without Orion.")
@click.pass_obj
def list_(obj: _Ctx, as_json: bool, show_all: bool) -> None:
    """List domains with an Orion device."""
    def go() -> None:
        rows = [s for s in obj.agent().list() if show_all or s.defined or s.live]
        if as_json:
            click.echo(json.dumps([s.as_dict() for s in rows], indent=2))
            return
        if not rows:
            click.echo("no domain has an Orion device" + ("" if show_all else " (--all lists all)"))
        for s in rows:
            st = s.defined or s.live
            dev = f"{st.shm_name:<12} {st.size_bytes >> 20:>6} MiB" if st else "-"
            state = "running" if s.active else "shut off"
            flag = "  (cold boot pending)" if s.pending else ""
            click.echo(f"{s.domain:<24} {state:<9} {dev}{flag}")
    _run(go)


@main.command()
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds between polls of libvirt's domain list.")
@click.pass_obj
def watch(obj: _Ctx, interval: float) -> None:
    """Attach every domain defined from now on (needs enable_kvm = true).

    Runs until SIGINT/SIGTERM. Domains that exist already are left alone.
    """
    def go() -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        obj.agent().watch(stop, interval)
    _run(go)


@main.command("install-hook")
@click.option("--hooks-dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_HOOKS_DIR, show_default=True, help="libvirt's hooks directory.")
@click.option("--python", "python", metavar="PATH", default=None,
              help="Interpreter the hook runs with [default: this one].")
@click.option("--no-reload", is_flag=True,
              help="Do not send the running libvirtd SIGHUP; print the command instead.")
@click.pass_obj
def install_hook_cmd(obj: _Ctx, hooks_dir: Path, python: str | None, no_reload: bool) -> None:
    """Install the libvirt qemu hook as <hooks-dir>/qemu.d/orion-virt and make libvirtd take it.

    An existing <hooks-dir>/qemu of yours is left in place: libvirt (>= 6.5) runs it and then
    every executable in qemu.d/. With --config, the hook reads that server.conf. A running
    libvirtd in this mount namespace gets SIGHUP (it rescans its hooks; domains keep running);
    otherwise the command to run is printed.
    """
    def go() -> None:
        for line in install_hook(hooks_dir, python, obj.config_path).actions:
            click.echo(line)
        if no_reload:
            click.echo("libvirtd takes the hook at its next start or SIGHUP: run `systemctl reload libvirtd` "
                       "(or `kill -HUP $(cat /run/libvirtd.pid)`)")
        else:
            click.echo(reload_libvirt(hooks_dir))
    _run(go)


@main.command("uninstall-hook")
@click.option("--hooks-dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_HOOKS_DIR, show_default=True, help="libvirt's hooks directory.")
def uninstall_hook_cmd(hooks_dir: Path) -> None:
    """Remove Orion's libvirt hook; other hooks are kept."""
    def go() -> None:
        for line in uninstall_hook(hooks_dir):
            click.echo(line)
    _run(go)


if __name__ == "__main__":
    main()
