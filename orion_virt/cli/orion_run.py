"""orion-run: run an unmodified cuda-python program on Orion vGPUs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment that activates the Orion client in every Python the command starts."""
    import orion_virt

    pkg_parent = str(Path(orion_virt.__file__).resolve().parent.parent)
    boot = str(Path(orion_virt.__file__).resolve().parent / "client" / "boot")
    out = dict(env)
    parts = [boot, pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(parts)
    out["ORION_RUN"] = "1"
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(command: tuple[str, ...]) -> None:
    """Run COMMAND so that its cuda.bindings.driver calls go to Orion vGPUs.

    \b
      ORION_VGPU=2 ORION_GMEM=4096 orion-run python3 deviceQuery.py
    The same switch from the environment: ORION_RUN=1 with orion_virt importable (or the .pth
    installed by install-client, active whenever ORION_VGPU is set). Settings: ORION_VGPU,
    ORION_GMEM, ORION_RATIO, ORION_CONTROLLER or ORION_SERVER, ~/.orion/client.conf,
    /etc/orion/client.conf.
    """
    argv = list(command)
    if argv[0].endswith(".py") and not os.access(argv[0], os.X_OK):
        argv = [sys.executable, *argv]
    try:
        os.execvpe(argv[0], argv, child_env(dict(os.environ)))
    except OSError as e:
        click.echo(f"orion-run: cannot run {argv[0]}: {e.strerror}", err=True)
        sys.exit(127)
