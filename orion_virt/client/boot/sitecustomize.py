"""Put first on PYTHONPATH by orion-run: activates the Orion client in every Python it starts,
then chains to any other sitecustomize module further down the path."""

import importlib
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from orion_virt.client.activate import maybe_activate

    maybe_activate()
except Exception as _e:  # a broken activation must not stop the user's program from starting
    sys.stderr.write(f"orion-run: could not activate the Orion client: {_e}\n")

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_self = sys.modules.pop("sitecustomize", None)
try:
    importlib.import_module("sitecustomize")
except ImportError:
    if _self is not None:
        sys.modules["sitecustomize"] = _self
