"""Make ``cuda.bindings.driver`` (and the legacy ``cuda.cuda``) resolve to the Orion client.

``install()`` puts a finder first on ``sys.meta_path``; the real cuda-python package, if present,
still provides everything else (``cuda.bindings.nvrtc`` runs on the client, needing no GPU). When
cuda-python is absent, empty ``cuda``/``cuda.bindings`` packages are provided so that
``from cuda.bindings import driver`` works in a guest with only the client installed.
Activation is switched by the environment: ``ORION_RUN=1`` (set by orion-run), or a ``.pth`` file
calling ``maybe_activate(require="ORION_VGPU")``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Mapping, Sequence

ALIASES = ("cuda.bindings.driver", "cuda.cuda")
STUB_PACKAGES = ("cuda", "cuda.bindings")


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        from . import driver

        driver.adopt_real_types()
        return driver

    def exec_module(self, module: ModuleType) -> None:
        return None


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__path__ = []


class OrionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname in ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader())
        if fullname in STUB_PACKAGES:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                if finder.find_spec(fullname, path, target) is not None:
                    return None
            return importlib.util.spec_from_loader(fullname, _StubLoader(), is_package=True)
        return None


def installed() -> bool:
    return any(isinstance(f, OrionFinder) for f in sys.meta_path)


def install() -> None:
    """Idempotent. Modules already imported under the aliased names are replaced."""
    if not installed():
        sys.meta_path.insert(0, OrionFinder())
    from . import driver

    for name in ALIASES:
        if name in sys.modules and sys.modules[name] is not driver:
            del sys.modules[name]


def maybe_activate(env: Mapping[str, str] | None = None, require: str = "ORION_RUN") -> bool:
    env = os.environ if env is None else env
    value = env.get(require, "").strip()
    if not value or value == "0":
        return False
    install()
    return True
