"""The click commands: ``orion-device-plugin``, ``orion-node-labeller``, ``orion-scheduler-extender``.
Every option can also come from the environment variable shown in ``--help`` (a DaemonSet sets
them in its Pod spec)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click

from ..cli import version_option
from .common import DEFAULT_RESOURCE

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%Y/%m/%d %H:%M:%S")


def _on_term(stop: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        logging.getLogger("orion.k8s").info("signal %d: stopping", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@version_option("orion-device-plugin")
@click.command(context_settings=CTX)
@click.option("--controller", envvar="ORION_CONTROLLER", default="127.0.0.1:9123",
              help="The Orion controller HOST:PORT (env ORION_CONTROLLER).")
@click.option("--client-controller", envvar="ORION_CLIENT_CONTROLLER",
              help="ORION_CONTROLLER given to containers, when they reach the controller at another address "
                   "(e.g. the docker bridge gateway); default: --controller.")
@click.option("--plugin-dir", envvar="ORION_DEVICE_PLUGIN_DIR", default="/var/lib/kubelet/device-plugins",
              type=click.Path(path_type=Path), help="The kubelet's device-plugin directory (kubelet.sock).")
@click.option("--resource", envvar="ORION_RESOURCE_NAME", default=DEFAULT_RESOURCE, help="Extended resource name.")
@click.option("--endpoint", default="orion-vgpu.sock", help="Socket file name of this plugin in --plugin-dir.")
@click.option("--node-id", envvar="ORION_NODE_ID",
              help="This node's oriond id at the controller (default: any whose id starts with <hostname>:, "
                   "or whose address is on --interface).")
@click.option("--interface", "interface", envvar="ORION_BIND_NET",
              help="Data-plane interface (the seeds' eth0): wait for it, and find this node's oriond by its address.")
@click.option("--shm-path-base", envvar="ORION_SHM_PATH_BASE", default="/dev/shm",
              type=click.Path(path_type=Path), help="Where oriond serves shared-memory devices.")
@click.option("--shm-size", default="128", help="Size of each container's device in MiB (e.g. 128, 1G).")
@click.option("--shm-mode", default="0666", help="Mode of the device files (0600: only root containers).")
@click.option("--shm-first-index", default=100, type=int, help="Devices are orionsock<N> from this N up.")
@click.option("--state-dir", default="/var/lib/orion/device-plugin", type=click.Path(path_type=Path),
              help="Where the plugin records its devices (not --plugin-dir: the kubelet empties it).")
@click.option("--client-lib-dir", envvar="ORION_CLIENT_LIB_DIR", default="/usr/lib/orion",
              help="install-client's directory on the host, mounted read-only ('' for none).")
@click.option("--client-key-file", envvar="ORION_CLIENT_KEY_FILE", default="/etc/orion/client.key",
              help="The controller's client key, mounted read-only into containers when it exists.")
@click.option("--gmem", "gmem", type=click.IntRange(1), envvar="ORION_DEFAULT_GMEM",
              help="Default ORION_GMEM in MiB (default: one slot's share of its GPU).")
@click.option("--ratio", type=click.IntRange(1, 100), envvar="ORION_DEFAULT_RATIO",
              help="Default ORION_RATIO in % (default: one slot's share).")
@click.option("--health-interval", default=2.0, type=float, help="Seconds between health checks.")
@click.option("--unmounted-grace", default=30.0, type=float,
              help="Remove a device this many seconds after the last container that mounted it is gone.")
@click.option("-v", "--verbose", is_flag=True)
def device_plugin(controller: str, client_controller: str | None, plugin_dir: Path, resource: str, endpoint: str,
                  node_id: str | None, interface: str | None, shm_path_base: Path, shm_size: str, shm_mode: str,
                  shm_first_index: int, state_dir: Path, client_lib_dir: str,
                  client_key_file: str, gmem: int | None, ratio: int | None,
                  health_interval: float, unmounted_grace: float, verbose: bool) -> None:
    """The kubelet device plugin: advertises this node's vGPU slots as RESOURCE and gives each
    container its own shared-memory device, the client library and the ORION_* environment."""
    from ..config import parse_size_mib
    from .plugin import DevicePlugin, Options
    from .shm import DeviceBook

    _logging(verbose)
    try:
        size = parse_size_mib(shm_size)
        mode = int(shm_mode, 8)
    except ValueError:
        raise click.BadParameter(f"--shm-size {shm_size!r} / --shm-mode {shm_mode!r}") from None
    book = DeviceBook(shm_path_base, state_dir / "devices.json", size, mode=mode, first_index=shm_first_index,
                      grace=unmounted_grace)
    opts = Options(controller=controller, plugin_dir=plugin_dir, resource=resource, endpoint=endpoint,
                   node_id=node_id, hostname=socket.gethostname(), interface=interface,
                   client_controller=client_controller, client_lib_dir=client_lib_dir or None,
                   client_key_file=client_key_file or None, gmem_mib=gmem,
                   ratio=ratio, health_interval=health_interval)
    plugin = DevicePlugin(opts, book)
    _on_term(plugin.stop)
    logging.getLogger("orion.k8s").info("orion-device-plugin: resource %s, controller %s, kubelet %s",
                                        resource, controller, plugin_dir / "kubelet.sock")
    sys.exit(plugin.run())


@version_option("orion-node-labeller")
@click.command(context_settings=CTX)
@click.option("--interface", "interface", envvar="ORION_BIND_NET", default="eth0",
              help="The data-plane interface whose IPv4 address becomes ORION_BIND_ADDR.")
@click.option("--node-name", envvar="NODE_NAME", help="This Kubernetes node (default: the hostname).")
@click.option("--api-server", envvar="ORION_K8S_API_SERVER",
              help="API server URL (default: in-cluster config, else kubeconfig).")
@click.option("--token-file", type=click.Path(path_type=Path), help="Bearer token for --api-server.")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file when not in a cluster.")
@click.option("--insecure", is_flag=True, help="Do not verify the API server's certificate (--api-server).")
@click.option("--interval", default=60.0, type=float, help="Seconds between checks of the address.")
@click.option("--once", is_flag=True, help="Label once and exit (0 when labelled).")
@click.option("-v", "--verbose", is_flag=True)
def node_labeller(interface: str, node_name: str | None, api_server: str | None, token_file: Path | None,
                  kubeconfig: str | None, insecure: bool, interval: float, once: bool, verbose: bool) -> None:
    """Label this node ORION_BIND_ADDR=<IPv4 address of INTERFACE>."""
    from .labeller import Labeller, LabellerOptions

    _logging(verbose)
    token = token_file.read_text().strip() if token_file else os.environ.get("ORION_K8S_TOKEN")
    lab = Labeller(LabellerOptions(node_name or socket.gethostname(), interface, api_server=api_server,
                                   token=token, kubeconfig=kubeconfig, insecure=insecure, interval=interval))
    _on_term(lab.stop)
    sys.exit(lab.run(once=once))


@version_option("orion-scheduler-extender")
@click.command(context_settings=CTX)
@click.option("--controller", envvar="ORION_CONTROLLER", default="127.0.0.1:9123", help="The Orion controller.")
@click.option("--listen", default="0.0.0.0", help="Address to listen on.")
@click.option("--port", default=9124, type=int, help="Port (the scheduler's urlPrefix http://HOST:PORT/).")
@click.option("--resource", envvar="ORION_RESOURCE_NAME", default=DEFAULT_RESOURCE, help="Extended resource name.")
@click.option("-v", "--verbose", is_flag=True)
def scheduler_extender(controller: str, listen: str, port: int, resource: str, verbose: bool) -> None:
    """A kube-scheduler extender: filter/prioritize nodes by whether the controller has room there for the
    Pod's ORION_VGPU/ORION_GMEM/ORION_RATIO."""
    from .extender import Extender, make_server

    _logging(verbose)
    srv = make_server(Extender(controller, resource), listen, port)
    _on_term(lambda: __import__("threading").Thread(target=srv.shutdown, daemon=True).start())
    logging.getLogger("orion.k8s").info("orion-scheduler-extender on http://%s:%d/ (filter, prioritize), "
                                        "controller %s", listen, srv.server_address[1], controller)
    srv.serve_forever()
    srv.server_close()
