"""Console scripts of the Kubernetes part. A missing optional module is one line naming the extra
that installs it (as :func:`orion_virt.cli.entry` does for the other commands)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

from ..cli import EXTRAS as _CLI_EXTRAS

EXTRAS = {**_CLI_EXTRAS, "grpc": "k8s", "google": "k8s", "kubernetes": "k8s", "grpc_tools": "k8s"}
"""Third-party module -> the extra of pyproject.toml that installs it."""


def missing_module_message(prog: str, e: ModuleNotFoundError) -> str | None:
    top = (e.name or "").split(".")[0]
    if not top or top == "orion_virt":
        return None
    extra = EXTRAS.get(top)
    how = f"pip install 'orion_virt[{extra}]'" if extra else f"pip install {top}"
    return f"{prog}: the Python module {top!r} is not installed: {how} (or: make test-deps)"


def _entry(func: str, prog: str) -> Callable[[], Any]:
    def run() -> Any:
        try:
            mod = importlib.import_module(f"{__package__}.cli")
            return getattr(mod, func)()
        except ModuleNotFoundError as e:
            line = missing_module_message(prog, e)
            if line is None:
                raise
            sys.stderr.write(line + "\n")
            raise SystemExit(2) from None

    run.__name__ = prog.replace("-", "_")
    return run


device_plugin_main = _entry("device_plugin", "orion-device-plugin")
node_labeller_main = _entry("node_labeller", "orion-node-labeller")
scheduler_extender_main = _entry("scheduler_extender", "orion-scheduler-extender")
