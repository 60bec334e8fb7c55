"""The commands. Each console script enters through :func:`entry` (``<command>_main`` here: the
bare names are the command modules), so that a missing optional
dependency is one line naming the module and the extra that brings it, not a traceback; each
click command has ``--version`` (:func:`version_option`)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

from .. import __version__

EXTRAS = {"lxml": "host", "libvirt": "host", "pyroute2": "host", "sysv_ipc": "host", "posix_ipc": "host",
          "matplotlib": "bench", "cuda": "cuda",
          "grpc": "k8s", "google": "k8s", "kubernetes": "k8s", "grpc_tools": "k8s"}
"""Third-party module -> the extra of pyproject.toml that installs it."""


def version_option(prog: str) -> Callable[[Any], Any]:
    import click

    return click.version_option(__version__, "--version", prog_name=prog, message="%(prog)s (orion_virt) %(version)s")


def missing_module_message(prog: str, e: ModuleNotFoundError) -> str | None:
    """The line for a third-party module that is not installed; None for one of ours (a bug)."""
    top = (e.name or "").split(".")[0]
    if not top or top == "orion_virt":
        return None
    extra = EXTRAS.get(top)
    how = f"pip install 'orion_virt[{extra}]'" if extra else f"pip install {top}"
    return f"{prog}: the Python module {top!r} is not installed: {how} (or: make test-deps)"


def entry(module: str, prog: str, func: str = "main") -> Callable[[], Any]:
    """The console script ``prog``: ``func`` of ``module`` (a command module here, or a dotted
    module path), with a missing optional dependency said in one line (exit status 2)."""
    name = module if "." in module else f"{__name__}.{module}"

    def run() -> Any:
        try:  # a command may import an optional module only when it runs
            return getattr(importlib.import_module(name), func)()
        except ModuleNotFoundError as e:
            line = missing_module_message(prog, e)
            if line is None:
                raise
            sys.stderr.write(line + "\n")
            raise SystemExit(2) from None

    run.__name__ = prog.replace("-", "_")
    return run


oriond_main = entry("oriond", "oriond")
orion_shm_main = entry("orion_shm", "orion-shm")
orion_run_main = entry("orion_run", "orion-run")
orion_controller_main = entry("orion_controller", "orion-controller")
orion_check_main = entry("orion_check", "orion-check")
orion_virt_main = entry("orion_virt_cmd", "orion-virt")
orion_bench_main = entry("orion_bench", "orion-bench")
install_client_main = entry("install_client", "install-client")
install_server_main = entry("install_server", "install-server")
orion_smi_main = entry("orion_smi", "orion-smi")
