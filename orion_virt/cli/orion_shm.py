"""orion-shm: create, list and remove Orion shared-memory devices."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from pathlib import Path

import click

from ..config import load_server_config, parse_size_mib
from ..errors import DeviceError, OrionError
from ..transport.shmdev import (
    CLAIMED,
    SERVING,
    STATE_NAMES,
    Device,
    format_device,
    list_devices,
    scrub_device,
)
from . import version_option


def _in_use(path: Path) -> str | None:
    """Why ``path`` must not be clobbered, or None."""
    try:
        dev = Device(path)
    except DeviceError:
        return None
    try:
        for i in range(dev.layout.nchannels):
            if dev.state(i) in (CLAIMED, SERVING) and (dev.vm or dev.owner_alive(i)):
                return f"channel {i} is {STATE_NAMES[dev.state(i)]}"
        return None
    finally:
        dev.close()


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as e:
        raise click.BadParameter(f"no such user or group: {e.args[0]}") from None
    return uid, gid


@version_option("orion-shm")
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--index", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Device index N: creates <shm_path_base>/orionsockN.")
@click.option("-s", "--size", help="Size in MiB (e.g. 128, 1G). Default: shm_buffer_size from server.conf (128 MiB).")
@click.option("-l", "--list", "do_list", is_flag=True, help="List devices and their channels.")
@click.option("-r", "--remove", is_flag=True, help="Scrub and remove device N (refused while in use).")
@click.option("--owner", help="Owner user of the device file (default: you).")
@click.option("--group", help="Group of the device file.")
@click.option("--mode", default="0600", show_default=True, help="File mode (octal). Use 0660 with --group to share.")
@click.option("--force", is_flag=True, help="Recreate an existing idle device even if it looks fine.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="server.conf to read.")
@click.option("--path-base", help="Directory of devices (default: shm_path_base, /dev/shm).")
def main(index: int, size: str | None, do_list: bool, remove: bool, owner: str | None, group: str | None,
         mode: str, force: bool, config_path: Path | None, path_base: str | None) -> None:
    """Create the shared-memory device a container's Orion client uses to reach oriond.

    \b
      orion-shm -i 1
      docker run -v /dev/shm/orionsock1:/dev/shm/orionsock1:rw ...
    Every container needs its own device. Devices live in memory: create them again after a
    reboot. VMs need none of this: the libvirt hook prepares their devices.
    """
    try:
        cfg = load_server_config(config_path)
        base = Path(path_base or cfg.shm_path_base)
        if do_list:
            _list(base)
            return
        path = base / f"orionsock{index}"
        if remove:
            why = _in_use(path)
            if why:
                raise DeviceError(f"{path} is in use ({why}); stop its applications first")
            if not path.exists():
                raise DeviceError(f"{path}: no such device")
            scrub_device(path)
            click.echo(f"Removed {path}")
            return
        try:
            nbytes = parse_size_mib(size) if size else cfg.shm_buffer_size
        except ValueError:
            raise click.BadParameter(f"--size {size!r}: expected MiB such as 128, 512M or 1G") from None
        uid, gid = _ids(owner, group)
        try:
            fmode = int(mode, 8)
        except ValueError:
            raise click.BadParameter(f"--mode {mode!r} is not octal") from None
        if path.exists():
            why = _in_use(path)
            if why:
                raise DeviceError(f"{path} exists and is in use ({why}); refusing to recreate it. "
                                  "Use another index: orion-shm -i N")
            if not force:
                try:
                    d = Device(path)
                    ok = d.layout.size == nbytes and not d.vm
                    d.close()
                except DeviceError:
                    ok = False
                if ok:
                    click.echo(f"{path} already exists ({nbytes >> 20} MiB); nothing to do")
                    return
        base.mkdir(parents=True, exist_ok=True)
        format_device(path, nbytes, uid=uid, gid=gid, mode=fmode)
        click.echo(f"Created {path} ({nbytes >> 20} MiB, mode {fmode:04o})")
        click.echo(f"Mount it into a container with: docker run -v {path}:{path}:rw ...")
    except click.BadParameter as e:
        click.echo(f"orion-shm: {e.message}", err=True)
        sys.exit(2)
    except OrionError as e:
        click.echo(f"orion-shm: {e}", err=True)
        sys.exit(e.exit_code)


def _list(base: Path) -> None:
    paths = list_devices(base)
    if not paths:
        click.echo(f"No Orion devices under {base} (create one with: orion-shm -i N)")
        return
    for p in paths:
        try:
            d = Device(p)
        except DeviceError as e:
            click.echo(f"{p}: {e}")
            continue
        info = d.info()
        st = os.stat(p)
        states = ", ".join(f"{i}:{STATE_NAMES.get(s, s)}" for i, s in enumerate(info.channel_states))
        click.echo(f"{p}  {info.size >> 20} MiB  {'VM' if info.vm else 'container'}  "
                   f"mode {st.st_mode & 0o7777:04o} uid {st.st_uid}  "
                   f"{'served' if info.served else 'not served'}  channels [{states}]")
        d.close()
