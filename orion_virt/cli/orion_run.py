"""orion-run: run an unmodified CUDA program (C, NVIDIA's runtime, cuda-python, PyTorch...) on Orion vGPUs.

A click front end over :mod:`orion_virt.client.run`, the standard-library implementation that
guests run (``guest/orion-run.in``); the environment (``child_env``) and the exec live only there.
"""

from __future__ import annotations

import sys

import click

from ..client import run
from . import version_option


@version_option("orion-run")
@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(command: tuple[str, ...]) -> None:
    """Run COMMAND with the native client (libcuda.so.1) first on LD_LIBRARY_PATH, so that its
    CUDA driver calls go to Orion vGPUs.

    \b
      ORION_VGPU=2 ORION_GMEM=4096 orion-run python3 deviceQuery.py
      ORION_VGPU=1 orion-run ./vectorAdd
    The native client is the only one (the Python client was retired: ORION_CLIENT other than
    native is refused). The library: ORION_NATIVE_LIB_DIR, else install-client's, else make
    native's build/native. Settings: ORION_VGPU, ORION_GMEM, ORION_RATIO, ORION_CONTROLLER or
    ORION_SERVER, ~/.orion/client.conf, /etc/orion/client.conf.
    """
    sys.exit(run.exec_command(list(command)))
