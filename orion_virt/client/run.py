"""``python3 -m orion_virt.client.run COMMAND...``: orion-run without click (standard library only).

Does what ``orion-run`` does, for guests and containers that have only the client: runs COMMAND
with the Orion client activated in every Python it starts (``orion_virt/client/boot`` first on
``PYTHONPATH`` for its ``sitecustomize``, the package's parent next, ``ORION_RUN=1``).

    ORION_VGPU=2 ORION_GMEM=4096 python3 -m orion_virt.client.run python3 deviceQuery.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

USAGE = "usage: python3 -m orion_virt.client.run COMMAND [ARG...]\n"


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment that activates the Orion client in every Python the command starts."""
    pkg = Path(__file__).resolve().parent.parent
    boot = str(pkg / "client" / "boot")
    out = dict(env)
    parts = [boot, str(pkg.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    out["ORION_RUN"] = "1"
    return out


def exec_command(args: Sequence[str]) -> int:
    """Exec ``args`` with :func:`child_env` (never returns on success); 127 if it cannot run.

    A ``.py`` file that is not executable runs under this Python. Both front ends end here:
    ``python3 -m orion_virt.client.run`` (guests) and the click command ``orion-run``.
    """
    argv = list(args)
    if argv[0].endswith(".py") and not os.access(argv[0], os.X_OK):
        argv = [sys.executable, *argv]
    try:
        os.execvpe(argv[0], argv, child_env(os.environ))
    except OSError as e:
        sys.stderr.write(f"orion-run: cannot run {argv[0]}: {e.strerror}\n")
        return 127
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """Exec COMMAND (never returns on success); 2 for a usage error, 127 if it cannot run."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        return 0 if args else 2
    return exec_command(args)


if __name__ == "__main__":
    sys.exit(main())
