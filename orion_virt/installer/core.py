"""install-client: install the Orion client runtime for the system's Python. Standard library only,
so the same code runs from the project (``install-client``) and from a self-contained bundle
copied into a guest (``python3 install-client.pyz``).

What an installation consists of (every path recorded in a manifest, ``<PATH>/.orion-client-manifest.json``):

- ``<PATH>/orion_virt/...``: the standard-library part of the client and only that (orion-run,
  orion-smi, the transport selection, config, errors, enums, the controller's HTTP client, the
  client checks and this installer), found by following the imports of ``orion_virt/client``;
  nothing outside the standard library is needed;
- ``<site-packages>/orion-client.pth``: puts ``<PATH>`` on the system Python's ``sys.path`` (it
  imports nothing);
- ``/usr/local/bin/orion-run``, ``orion-check`` and ``orion-smi``: shell wrappers, no click needed
  (an existing file of that name that install-client did not write is left alone);
- ``/etc/orion/client.conf``: written only when absent; an existing one is kept;
- ``<PATH>/lib/libcuda.so.1``: the native client, when it is built (``make native``) or in the
  bundle, with ``/etc/ld.so.conf.d/orion.conf`` naming ``<PATH>/lib`` and ``ldconfig`` run, so that
  every program of the guest or container loads it with no launcher, as in the seeds. Not on a
  host with NVIDIA's driver (``/proc/driver/nvidia``): there it would hide the driver, and only
  ``orion-run`` (whose default client it is) uses it.

``uninstall`` removes all of it, plus the ``__pycache__`` directories Python created inside
``<PATH>``, and every directory it created that is then empty. ``client.conf`` is removed only if
install-client created it and it is unchanged; an edited one is kept (and said so), since it holds
the user's settings (controller address) that a reinstall should find again.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Callable

from .. import compat
from . import templates

DEFAULT_PREFIX = "/usr/lib/orion"
CONF_PATH = "/etc/orion/client.conf"
BIN_DIR = "/usr/local/bin"
PTH_NAME = "orion-client.pth"
MANIFEST_NAME = ".orion-client-manifest.json"
MIN_PYTHON = (3, 11)
PACKAGE = "orion_virt"
ROOT_MODULES = ("client", "installer/__main__.py", "check/client.py")
"""Where the client closure starts (directories are taken whole). Not the whole installer: its
``server*`` modules are install-server's, for the host only."""

LDCONF_PATH = "/etc/ld.so.conf.d/orion.conf"

_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")

Out = Callable[[str], None]


class InstallError(Exception):
    """install-client cannot proceed; ``str(e)`` says why and what to do."""


# -- which modules ---------------------------------------------------------------------------


def _package_root() -> Traversable:
    return resources.files(PACKAGE)


def _exists(rel: str) -> bool:
    node = _package_root()
    for part in rel.split("/"):
        node = node.joinpath(part)
    return node.is_file()


def _read(rel: str) -> bytes:
    node = _package_root()
    for part in rel.split("/"):
        node = node.joinpath(part)
    return node.read_bytes()


def _walk(rel_dir: str) -> list[str]:
    node = _package_root()
    for part in rel_dir.split("/"):
        node = node.joinpath(part)
    out: list[str] = []
    for child in node.iterdir():
        name = child.name
        if child.is_dir() and name != "__pycache__":
            out += _walk(f"{rel_dir}/{name}")
        elif child.is_file() and name.endswith(".py"):
            out.append(f"{rel_dir}/{name}")
    return out


def _module_file(dotted: str) -> str | None:
    """``orion_virt.a.b`` -> ``a/b.py`` or ``a/b/__init__.py`` (relative to the package)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return "__init__.py"
    base = "/".join(parts)
    for cand in (f"{base}.py", f"{base}/__init__.py"):
        if _exists(cand):
            return cand
    return None


def _imports(rel: str) -> tuple[set[str], set[str]]:
    """(orion_virt modules, third-party top-level names) imported by ``rel``. Imports inside a
    ``try`` block are optional and not reported as third-party."""
    tree = ast.parse(_read(rel), filename=rel)
    pkg = [PACKAGE, *rel.split("/")[:-1]]  # the package a relative import starts from
    inner: set[str] = set()
    foreign: set[str] = set()
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for sub in node.body:
                optional.update(id(n) for n in ast.walk(sub))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names if a.name != "*"]
        for name in names:
            top = name.split(".")[0]
            if top == PACKAGE:
                inner.add(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__" and id(node) not in optional:
                foreign.add(top)
    return inner, foreign


def client_files() -> tuple[list[str], set[str]]:
    """The files (relative to the package) an installation needs, and any third-party imports
    found among them (should be none)."""
    todo: list[str] = []
    for root in ROOT_MODULES:
        if root.endswith(".py"):
            if _exists(root):
                todo.append(root)
        else:
            todo += _walk(root)
    seen: set[str] = set()
    foreign: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        # every package on the way needs its __init__
        parts = rel.split("/")[:-1]
        for i in range(len(parts) + 1):
            init = "/".join([*parts[:i], "__init__.py"])
            if _exists(init) and init not in seen:
                todo.append(init)
        inner, bad = _imports(rel)
        foreign |= bad
        for dotted in inner:
            f = _module_file(dotted)
            if f and f not in seen:
                todo.append(f)
    return sorted(seen), foreign


# -- the target system -------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonInfo:
    executable: str
    version: tuple[int, int, int]
    site_dir: str


_QUERY = ("import json, site, sys; print(json.dumps({'v': list(sys.version_info[:3]), "
          "'site': site.getsitepackages(), 'path': sys.path}))")


def default_python() -> str:
    """The system's Python: this interpreter unless it runs in a virtual environment."""
    if sys.prefix == sys.base_prefix and sys.executable:
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    raise InstallError("cannot find the system's python3 (this one runs in a virtual environment): "
                       "name it with --python")


def query_python(python: str) -> PythonInfo:
    """Version and site-packages directory of ``python`` (runs it; no shell)."""
    try:
        p = subprocess.run([python, "-I", "-c", _QUERY], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise InstallError(f"cannot run {python}: {e.strerror}") from None
    if p.returncode != 0:
        raise InstallError(f"{python} failed: {p.stderr.strip()}")
    info = json.loads(p.stdout)
    version = tuple(info["v"])
    sites = [s for s in info["site"] if s.startswith("/")]
    if not sites:
        raise InstallError(f"{python} reports no site-packages directory")
    site_dir = next((s for s in sites if s in info["path"]), sites[0])
    return PythonInfo(python, version, site_dir)


def check_prefix(prefix: str) -> str:
    """An absolute, normalised installation path safe to write into a .pth and a shell script."""
    p = os.path.normpath(os.path.abspath(prefix))
    if not _SAFE_PATH.fullmatch(p) or p == "/":
        raise InstallError(f"installation path {prefix!r} must be an absolute path of letters, digits "
                           "and . _ - + @ /, and not /")
    return p


# -- manifest ----------------------------------------------------------------------------------


@dataclass
class Manifest:
    prefix: str
    python: str
    site_dir: str
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    conf_created: bool = False
    conf_sha256: str = ""
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in fields})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Target:
    """Paths of the target system, under ``root`` ("/" for the real one)."""

    def __init__(self, root: str = "/") -> None:
        self.root = Path(os.path.abspath(root))

    def __call__(self, path: str) -> Path:
        """The real location of the target system's absolute ``path``."""
        return self.root / PurePosixPath(path).relative_to("/")

    def find_manifest(self, prefix: str | None, python: str | None = None) -> Manifest | None:
        """The manifest of the installation at ``prefix``; without one: the default path, then the
        path named by the system Python's orion-client.pth."""
        cands = [prefix] if prefix else [DEFAULT_PREFIX]
        if not prefix:
            try:
                info = query_python(python or default_python())
                pth = self(info.site_dir) / PTH_NAME
                for line in pth.read_text().splitlines():
                    if line.startswith("/"):
                        cands.append(line.strip())
            except (InstallError, OSError, ValueError):
                pass
        for c in cands:
            m = self(c) / MANIFEST_NAME
            if m.is_file():
                try:
                    return Manifest.from_json(m.read_text())
                except (ValueError, TypeError) as e:
                    raise InstallError(f"{m}: unreadable manifest ({e}); remove the installation by hand") from None
        return None


def native_library(name: str = "libcuda.so.1") -> bytes | None:
    """One of the native client's libraries (libcuda.so.1, libnvidia-ml.so.1): the bundle's copy,
    else a checkout's build/native."""
    rel = f"client/native/lib/{name}"
    if _exists(rel):
        return _read(rel)
    from ..client.run import native_lib_dir

    d = native_lib_dir(os.environ)
    return (d / name).read_bytes() if d is not None and (d / name).is_file() else None


def _ldconfig(t: Target, out: Out) -> None:
    if t.root != Path("/"):
        out(f"(ldconfig not run for the root directory {t.root}: run ldconfig -r {t.root} there)")
        return
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if exe is None:
        out("ldconfig not found: run it yourself so that programs find the native client")
        return
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    if r.returncode:
        out(f"ldconfig failed ({r.stderr.strip()}): run it yourself")


# -- install / uninstall -----------------------------------------------------------------------


class _Writer:
    def __init__(self, t: Target, m: Manifest) -> None:
        self.t = t
        self.m = m

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """``mkdir -p``; the directories it creates get ``mode`` (whatever the umask) and are recorded."""
        missing: list[str] = []
        p = PurePosixPath(path)
        while not self.t(str(p)).is_dir():
            if p == p.parent:
                raise InstallError(f"root directory {self.t.root} does not exist")
            missing.append(str(p))
            p = p.parent
        for d in reversed(missing):
            self.t(d).mkdir(mode=mode)
            os.chmod(self.t(d), mode)
            self.m.dirs.append(d)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(str(PurePosixPath(path).parent))
        real = self.t(path)
        tmp = real.with_name(real.name + ".orion-tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, real)
        if path not in self.m.files:
            self.m.files.append(path)

    def link(self, path: str, target: str) -> None:
        """A symbolic link ``path`` -> ``target`` (a path of the target system), replacing one."""
        self.mkdir(str(PurePosixPath(path).parent))
        real = self.t(path)
        tmp = real.with_name(real.name + ".orion-tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, real)
        if path not in self.m.files:
            self.m.files.append(path)


def remove_unedited_conf(t: Target, m: Manifest, path: str) -> bool:
    """Remove the config file at ``path`` if this installation created it and it is unchanged;
    True when it was kept because it was edited (it holds the user's settings)."""
    conf = t(path)
    if not (m.conf_created and conf.is_file()):
        return False
    if _sha(conf.read_bytes()) == m.conf_sha256:
        conf.unlink()
        return False
    return True


def _remove_files(t: Target, m: Manifest, out: Out | None, who: str = "install-client",
                  quiet_dirs: tuple[str, ...] = (os.path.dirname(CONF_PATH),)) -> None:
    """Remove ``m``'s files, then its directories that are empty (``out`` names each one kept,
    except ``quiet_dirs``, which are expected to keep a user's files)."""
    for f in m.files:
        try:
            t(f).unlink()
        except FileNotFoundError:
            pass
    # Python leaves __pycache__ next to the modules it imported as root
    for d in sorted(m.dirs, key=len, reverse=True):
        cache = t(d) / "__pycache__"
        if cache.is_dir() and all(p.suffix == ".pyc" for p in cache.iterdir()):
            shutil.rmtree(cache)
    for d in sorted(m.dirs, key=len, reverse=True):
        real = t(d)
        try:
            real.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            if out and d not in quiet_dirs:
                out(f"Left {d} in place: it holds files {who} did not install")


def install(*, prefix: str = DEFAULT_PREFIX, root: str = "/", python: str | None = None,
            out: Out = print) -> Manifest:
    """Install (or reinstall over a previous installation at ``prefix``). Returns the manifest."""
    prefix = check_prefix(prefix)
    t = Target(root)
    if t.root != Path("/"):
        t.root.mkdir(parents=True, exist_ok=True)
    info = query_python(python or default_python())
    if info.version[:2] < MIN_PYTHON:
        raise InstallError(f"{info.executable} is Python {'.'.join(map(str, info.version))}; the Orion "
                           f"client needs Python {'.'.join(map(str, MIN_PYTHON))} or newer (name another "
                           "one with --python)")
    files, foreign = client_files()
    if foreign:
        raise InstallError(f"the client modules import {', '.join(sorted(foreign))}, which a guest may "
                           "lack; this is a bug in orion_virt")
    other = t.find_manifest(None, info.executable)
    if other is not None and other.prefix != prefix:
        raise InstallError(f"the Orion client is already installed in {other.prefix}; remove it first "
                           f"(install-client --uninstall -d {other.prefix})")
    old = t.find_manifest(prefix)
    m = Manifest(prefix, info.executable, info.site_dir)
    if old is not None:
        # reinstall: drop the previous files, remember what it created
        _remove_files(t, Manifest(old.prefix, old.python, old.site_dir, list(old.files), [], False), None)
        m.dirs = list(old.dirs)
        m.conf_created, m.conf_sha256 = old.conf_created, old.conf_sha256
    w = _Writer(t, m)
    w.mkdir(prefix)
    for rel in files:
        w.write(f"{prefix}/{PACKAGE}/{rel}", _read(rel))
    w.write(f"{info.site_dir}/{PTH_NAME}", templates.render(templates.PTH, prefix, info.executable).encode())
    for name, tpl, module in (("orion-run", templates.ORION_RUN, "orion_virt.client.run"),
                              ("orion-check", templates.ORION_CHECK, "orion_virt.check.client"),
                              ("orion-smi", templates.ORION_SMI, "orion_virt.client.smi")):
        path = f"{BIN_DIR}/{name}"
        if t(path).exists() and path not in (old.files if old else []):
            out(f"Kept the existing {path} (not installed by install-client); the client's is "
                f"available as: PYTHONPATH={prefix} {info.executable} -m {module}")
            continue
        w.write(path, templates.render(tpl, prefix, info.executable).encode(), 0o755)
    lib = native_library()
    ld_conf = False
    if lib is not None:
        w.write(f"{prefix}/lib/libcuda.so.1", lib, 0o755)
        nvml = native_library("libnvidia-ml.so.1")
        if nvml is not None:  # NVML of the vGPUs, for nvidia-ml-py and the frameworks' device count
            w.write(f"{prefix}/lib/libnvidia-ml.so.1", nvml, 0o755)
        if t("/proc/driver/nvidia").exists():
            out(f"NVIDIA's driver is installed here: {prefix}/lib/libcuda.so.1 is not made the system's "
                "libcuda.so.1 (orion-run COMMAND uses it)")
        else:
            w.write(LDCONF_PATH, f"# Orion vGPU native client, installed by install-client\n{prefix}/lib\n".encode())
            ld_conf = True
    conf = t(CONF_PATH)
    conf_new = not conf.exists()
    if conf_new:
        data = templates.CLIENT_CONF.encode()
        w.write(CONF_PATH, data)
        m.files.remove(CONF_PATH)  # tracked separately: kept on uninstall once edited
        m.conf_created, m.conf_sha256 = True, _sha(data)
    (t(prefix) / MANIFEST_NAME).write_text(m.to_json())
    if ld_conf:
        _ldconfig(t, out)
    out("")
    if conf_new:
        out(compat.INSTALL_CONF_GENERATED.format(path=CONF_PATH))
    else:
        out(f"Configuration file {CONF_PATH} already exists and is kept unchanged")
    out(compat.INSTALL_EDIT_CONTROLLER)
    out("")
    out(compat.INSTALL_DONE.format(prefix=prefix))
    out(compat.INSTALL_HOW_TO_RUN)
    out("export ORION_VGPU=1")
    if ld_conf:
        out(f"Every program now loads the native client {prefix}/lib/libcuda.so.1 (CUDA C/C++ programs, "
            "NVIDIA's runtime, cuda-bindings)")
    elif lib is None:
        out("The native client (libcuda.so.1) is not installed: it is not built (make native) nor in this bundle")
    else:
        out(f"Run programs with orion-run, which puts the native client {prefix}/lib/libcuda.so.1 first")
    if t.root != Path("/"):
        out(f"(all of it under the root directory {t.root})")
    return m


def uninstall(*, prefix: str | None = None, root: str = "/", python: str | None = None,
              out: Out = print) -> Manifest:
    """Remove what ``install`` installed (see the module docstring for client.conf)."""
    t = Target(root)
    m = t.find_manifest(check_prefix(prefix) if prefix else None, python)
    if m is None:
        where = prefix or DEFAULT_PREFIX
        raise InstallError(f"no Orion client installation found in {where} (no {MANIFEST_NAME}); "
                           "name its path with -d PATH")
    conf_kept = remove_unedited_conf(t, m, CONF_PATH)
    (t(m.prefix) / MANIFEST_NAME).unlink(missing_ok=True)
    had_ld_conf = LDCONF_PATH in m.files
    _remove_files(t, m, out)
    out(f"Orion vGPU client environment has been removed from {m.prefix}")
    if had_ld_conf:
        _ldconfig(t, out)
    if conf_kept:
        out(f"Kept {CONF_PATH}: it was edited after installation (remove it yourself if it is no longer needed)")
    return m


def confirm(prefix: str, ask: Callable[[str], str], out: Out) -> bool:
    """The seeds' question before installing to the default path."""
    out(compat.INSTALL_TO.format(prefix=prefix))
    try:
        answer = ask(compat.INSTALL_QUESTION)
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def run(*, prefix: str | None, quiet: bool, do_uninstall: bool, root: str, python: str | None,
        out: Out = print, ask: Callable[[str], str] = input) -> int:
    """The whole command (both front ends call this). Returns the exit status."""
    try:
        if do_uninstall:
            uninstall(prefix=prefix, root=root, python=python, out=out)
            return 0
        target = prefix or DEFAULT_PREFIX
        if not quiet and prefix is None and not confirm(target, ask, out):
            out("Installation is cancelled.")
            return 1
        install(prefix=target, root=root, python=python, out=out)
        return 0
    except InstallError as e:
        out(f"install-client: {e}")
        return 2
    except PermissionError as e:
        out(f"install-client: {e.filename}: permission denied (run it as root: sudo install-client)")
        return 2
    except OSError as e:
        if e.errno == errno.EROFS:
            out(f"install-client: {e.filename}: read-only file system. install-client writes "
                f"{prefix or DEFAULT_PREFIX} (-d PATH), the system Python's site-packages, /usr/local/bin "
                "and /etc/orion: on a read-only root, give -d a writable directory if only that is "
                "read-only, or make the root writable (an overlay) and run it again")
            return 2
        out(f"install-client: {e}")
        return 2


def build_bundle(dest: Path) -> list[str]:
    """Write a self-contained ``install-client`` (a Python zip application) to ``dest``: copy it
    into a guest and run ``sudo python3 install-client``. Returns the files it holds."""
    import zipapp  # noqa: F401  (documents the format; the archive is written by hand below)
    import zipfile

    files, _ = client_files()
    tmp = dest.with_name(dest.name + ".orion-tmp")
    with open(tmp, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("__main__.py", "from orion_virt.installer.__main__ import main\nraise SystemExit(main())\n")
            for rel in files:
                z.writestr(f"{PACKAGE}/{rel}", _read(rel))
            for name in ("libcuda.so.1", "libnvidia-ml.so.1"):
                lib = native_library(name)
                if lib is not None:
                    z.writestr(f"{PACKAGE}/client/native/lib/{name}", lib)
                    files = [*files, f"client/native/lib/{name}"]
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return files
