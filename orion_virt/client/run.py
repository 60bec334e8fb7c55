"""``python3 -m orion_virt.client.run COMMAND...``: orion-run without click (standard library only).

Does what ``orion-run`` does, for guests and containers that have only the client: the native
client's directory (``libcuda.so.1``) goes first on ``LD_LIBRARY_PATH``, so every program COMMAND
starts — C, C++, NVIDIA's runtime and libraries, cuda-bindings, PyTorch — loads it instead of
NVIDIA's driver. It is found in ``ORION_NATIVE_LIB_DIR``, else ``<install prefix>/lib``
(install-client), else ``build/native`` of a checkout (``make native``); where none has it,
orion-run refuses (it never lets COMMAND reach a host driver). ``ORION_CLIENT`` may be unset,
empty or ``native``; any other value (the retired Python client's ``python``) is refused.

    ORION_VGPU=2 ORION_GMEM=4096 python3 -m orion_virt.client.run python3 deviceQuery.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

USAGE = "usage: python3 -m orion_virt.client.run COMMAND [ARG...]\n"


class RunError(Exception):
    """orion-run cannot start COMMAND as asked; ``str(e)`` says why and what to do."""


def native_lib_dir(env: Mapping[str, str]) -> Path | None:
    """The directory holding the native client's libcuda.so.1, or None."""
    pkg = Path(__file__).resolve().parent.parent
    cands = [Path(env["ORION_NATIVE_LIB_DIR"])] if env.get("ORION_NATIVE_LIB_DIR") else []
    cands += [pkg.parent / "lib", pkg.parent / "build" / "native"]
    return next((c for c in cands if (c / "libcuda.so.1").is_file()), None)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment that puts COMMAND on Orion vGPUs with the native client. Raises RunError
    for an ``ORION_CLIENT`` other than native, or a native client that is not built or installed."""
    which = env.get("ORION_CLIENT", "").strip().lower() or "native"
    if which != "native":
        raise RunError(f"ORION_CLIENT={env['ORION_CLIENT']!r}: the Python client was retired; there is one "
                       "client, the native libcuda.so.1, and programs (cuda-bindings, PyTorch, C) run "
                       "unmodified over it: unset ORION_CLIENT")
    lib = native_lib_dir(env)
    if lib is None:
        raise RunError("the native client (libcuda.so.1) is neither installed (install-client) nor built "
                       "(make native); set ORION_NATIVE_LIB_DIR to its directory")
    out = dict(env)
    parts = [str(lib)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    out["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(parts))
    return out


def exec_command(args: Sequence[str]) -> int:
    """Exec ``args`` with :func:`child_env` (never returns on success); 127 if it cannot run, 2 if
    the native client is not there or ``ORION_CLIENT`` asks for another.

    A ``.py`` file that is not executable runs under this Python. Both front ends end here:
    ``python3 -m orion_virt.client.run`` (guests) and the click command ``orion-run``.
    """
    argv = list(args)
    if argv[0].endswith(".py") and not os.access(argv[0], os.X_OK):
        argv = [sys.executable, *argv]
    try:
        os.execvpe(argv[0], argv, child_env(os.environ))
    except RunError as e:
        sys.stderr.write(f"orion-run: {e}\n")
        return 2
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
