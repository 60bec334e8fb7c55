"""``python3 -m orion_virt.client.run COMMAND...``: orion-run without click (standard library only).

Does what ``orion-run`` does, for guests and containers that have only the client. Which client
``ORION_CLIENT`` says:

* ``native`` (the default, also when unset or empty): the native client's directory
  (``libcuda.so.1``) goes first on ``LD_LIBRARY_PATH``, so every program COMMAND starts — C, C++,
  NVIDIA's runtime and libraries, cuda-bindings, PyTorch — loads it instead of NVIDIA's driver.
  It is found in ``ORION_NATIVE_LIB_DIR``, else ``<install prefix>/lib`` (install-client), else
  ``build/native`` of a checkout (``make native``); where none has it, orion-run refuses (it
  never lets COMMAND reach a host driver);
* ``python`` (until the Python client is retired): the Orion client is activated in every Python
  COMMAND starts (``orion_virt/client/boot`` first on ``PYTHONPATH`` for its ``sitecustomize``,
  the package's parent next, ``ORION_RUN=1``): cuda-python's driver module goes to Orion.

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
    """The environment that puts COMMAND on Orion vGPUs with the client ``ORION_CLIENT`` names.
    Raises RunError for an unknown client or a native client that is not built or installed."""
    pkg = Path(__file__).resolve().parent.parent
    which = env.get("ORION_CLIENT", "native").strip().lower() or "native"
    out = dict(env)
    if which == "native":
        lib = native_lib_dir(env)
        if lib is None:
            raise RunError("the native client (libcuda.so.1, the default ORION_CLIENT=native) is neither "
                           "installed (install-client) nor built (make native); set ORION_NATIVE_LIB_DIR to "
                           "its directory, or ORION_CLIENT=python for the Python client")
        parts = [str(lib)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        out["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(parts))
        return out
    if which != "python":
        raise RunError(f"ORION_CLIENT={env['ORION_CLIENT']!r}: expected native or python")
    boot = str(pkg / "client" / "boot")
    parts = [boot, str(pkg.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    out["ORION_RUN"] = "1"
    return out


def exec_command(args: Sequence[str]) -> int:
    """Exec ``args`` with :func:`child_env` (never returns on success); 127 if it cannot run, 2 if
    the client asked for is not there.

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
