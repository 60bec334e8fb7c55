"""oriond: the Orion Server daemon."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..config import load_server_config, warn_ignored_keys
from ..errors import OrionError
from . import version_option


@version_option("oriond")
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="server.conf to read (default /etc/orion/server.conf if present).")
@click.option("--backend", type=click.Choice(["auto", "sim", "cuda"]),
              help="Execution backend; auto picks cuda when a driver and GPU are present, else sim.")
@click.option("--bind-addr", help="Data-plane address to listen on ([server] bind_addr).")
@click.option("--listen-port", type=int, help="TCP port ([server] listen_port, default 9960).")
@click.option("--shm-path-base", help="Directory of shared-memory devices ([server-shm], default /dev/shm).")
@click.option("--enable-shm/--disable-shm", default=None, help="Serve container/host shm devices.")
@click.option("--enable-kvm/--disable-kvm", default=None, help="Serve VM (ivshmem) devices.")
@click.option("--log-dir", help="Log directory (default /var/log/orion).")
@click.option("--vgpu-count", type=int, help="vGPUs per physical GPU ([server] vgpu_count).")
@click.option("--sim-gpus", type=int, default=1, show_default=True, help="sim backend: physical devices.")
@click.option("--sim-memory", type=int, default=16384, show_default=True, help="sim backend: MiB per device.")
@click.option("--pid-file", type=click.Path(path_type=Path), help="Write the daemon's pid here.")
def main(config_path: Path | None, backend: str | None, bind_addr: str | None, listen_port: int | None,
         shm_path_base: str | None, enable_shm: bool | None, enable_kvm: bool | None,
         log_dir: str | None, vgpu_count: int | None, sim_gpus: int, sim_memory: int,
         pid_file: Path | None) -> None:
    """Run the Orion Server: executes the CUDA calls of Orion clients on this host's GPUs.

    Clients reach it over shared-memory devices under shm_path_base (create them with
    orion-shm; the libvirt hook prepares them for VMs) or over TCP on bind_addr:listen_port.
    Logs go to /var/log/orion/server.log and /var/log/orion/session/<id>.log.
    SIGHUP (systemctl reload oriond) re-reads the configuration: logging and [server-limits]
    apply at once, sessions keep running, keys that need a restart are logged.
    With [controller] controller_addr set, only sessions with an allocation token of that
    Orion Controller are accepted, and this server's GPUs are registered there (heartbeats;
    deregistered on a clean stop). Without it, sessions get what they ask for (direct mode).
    """
    import logging

    from ..server.authorize import build_authorizer, make_registrar
    from ..server.daemon import run_daemon
    from ..server.logs import setup_server_logging
    from ..server.select_backend import select_backend

    registrar = None
    flags = {"backend": backend, "bind_addr": bind_addr, "listen_port": listen_port,
             "shm_path_base": shm_path_base, "enable_shm": enable_shm, "enable_kvm": enable_kvm,
             "log_dir": log_dir, "vgpu_count": vgpu_count}
    try:
        cfg = load_server_config(config_path, flags)
        log = setup_server_logging(cfg)
        log.info("configuration from %s", cfg.source)
        warn_ignored_keys(cfg, log)  # the seeds' keys without effect here, each once with why
        be = select_backend(cfg, log, sim_gpus, sim_memory)
        authorize = build_authorizer(cfg, be, log)
        registrar = make_registrar(cfg, be)
        if registrar is not None:
            reg_log = logging.getLogger("orion_virt.controller.registration")
            reg_log.handlers[:] = log.handlers
            reg_log.propagate = False
            reg_log.setLevel(logging.INFO)

        def ready() -> None:
            if pid_file:
                pid_file.write_text(f"{os.getpid()}\n")
            if registrar is not None:  # only once clients can reach us
                log.info("registering node %s (%s) with the Orion Controller %s",
                         registrar.node_info.node_id, registrar.node_info.address,
                         cfg.controller_addr)
                registrar.start()

        # SIGHUP (systemctl reload oriond): the same file, the same flags over it
        run_daemon(cfg, be, authorize, log, ready, lambda: load_server_config(config_path, flags))
    except OrionError as e:
        click.echo(f"oriond: {e}", err=True)
        sys.exit(e.exit_code)
    finally:
        if registrar is not None and registrar.is_alive():
            registrar.stop(deregister=True)
        if pid_file and pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
