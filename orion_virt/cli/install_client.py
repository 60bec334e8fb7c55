"""install-client: install the Orion vGPU client environment (the seeds' installer).

The console script is a thin click wrapper: its arguments (and ``--help``) go unchanged to
:func:`orion_virt.installer.__main__.main`, the standard-library front end that the bundle and
``python3 -m orion_virt.installer`` run, so there is one set of options and one behaviour.
"""

from __future__ import annotations

import sys

import click

from ..installer.__main__ import main as installer_main
from . import version_option


@version_option("install-client")
@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                                 "help_option_names": []},
               add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def main(args: tuple[str, ...]) -> None:
    """Install the Orion vGPU client environment (see install-client --help)."""
    sys.exit(installer_main(list(args)))
