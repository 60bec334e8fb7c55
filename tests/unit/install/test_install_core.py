"""install-client's logic in a throwaway root (no root privileges, no namespaces needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orion_virt.cli.install_client import main as cli_main
from orion_virt.config import ClientConfig, load_client_config
from orion_virt.installer import core, templates

PY = sys.executable
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_native_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether build/native exists must not change these tests; the ones about the native
    client give it its library explicitly."""
    monkeypatch.setattr(core, "native_library", lambda name="libcuda.so.1": None)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _install(root: Path, **kw) -> tuple[core.Manifest, list[str]]:
    lines: list[str] = []
    m = core.install(root=str(root), python=PY, out=lines.append, **kw)
    return m, lines


def _site(root: Path) -> Path:
    return root / core.query_python(PY).site_dir.lstrip("/")


def test_closure_is_the_client_and_stdlib_only() -> None:
    files, foreign = core.client_files()
    assert foreign == set()
    for need in ("__init__.py", "client/run.py", "client/smi.py", "client/select.py",
                 "transport/shmdev.py", "config.py", "errors.py", "cuda_enums.py", "controller/client.py",
                 "check/client.py", "installer/core.py", "installer/__main__.py"):
        assert need in files, need
    for gone in ("client/driver.py", "client/runtime.py", "client/activate.py", "client/multinode.py",
                 "client/allocation.py", "client/boot/sitecustomize.py"):
        assert gone not in files, gone  # the retired Python client
    for f in files:
        assert not f.startswith(("server/", "cli/", "host/", "bench/", "kernels/")), f
    assert "controller/service.py" not in files and "controller/pool.py" not in files
    assert "check/common.py" not in files  # the host's checks stay on the host


def test_installed_copy_imports_with_the_standard_library_only(tmp_path: Path) -> None:
    m, _ = _install(tmp_path)
    prefix = tmp_path / m.prefix.lstrip("/")
    code = (
        "import sys, site\n"
        f"sys.path.insert(0, {str(prefix)!r})\n"  # the .pth names /usr/lib/orion, not this root
        f"site.addsitedir({str(_site(tmp_path))!r})\n"  # runs orion-client.pth
        "import orion_virt.client.run, orion_virt.client.smi, orion_virt.check.client\n"
        "import orion_virt.installer.core\n"
        f"assert orion_virt.__file__.startswith({str(prefix)!r}), orion_virt.__file__\n"
        "bad = [m for m in ('click', 'numpy', 'lxml', 'pyroute2', 'libvirt') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    # -S: no site-packages at all, so nothing but the standard library can be imported
    r = subprocess.run([PY, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                       env={"ORION_VGPU": "1", "PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_pth_puts_the_client_on_the_path_and_imports_nothing(tmp_path: Path) -> None:
    m, _ = _install(tmp_path)
    prefix = str(tmp_path / m.prefix.lstrip("/"))
    pth = (_site(tmp_path) / core.PTH_NAME).read_text()
    assert [ln for ln in pth.splitlines() if ln and not ln.startswith("#")] == [m.prefix]
    code = (f"import site, sys; sys.path.insert(0, {prefix!r}); site.addsitedir({str(_site(tmp_path))!r}); "
            "print('orion_virt' in sys.modules, 'cuda' in sys.modules)")
    for env in ({}, {"ORION_VGPU": "0"}, {"ORION_VGPU": "2"}):
        r = subprocess.run([PY, "-S", "-c", code], capture_output=True, text=True, timeout=60, env=env,
                           cwd=tmp_path)
        assert r.stdout.strip() == "False False", (env, r.stdout, r.stderr)


def test_install_writes_what_the_manifest_says_and_prints_the_seeds_hints(tmp_path: Path) -> None:
    m, lines = _install(tmp_path)
    text = "\n".join(lines)
    assert "Configuration file is generated to /etc/orion/client.conf" in text
    assert ('Please edit the "controller_addr" setting and make it point to the controller address '
            "in your environment.") in text
    assert "Orion vGPU client environment has been installed in /usr/lib/orion" in text
    assert "To run application with Orion vGPU environment, please make sure Orion environment is loaded. e.g." in text
    manifest = json.loads((tmp_path / "usr/lib/orion" / core.MANIFEST_NAME).read_text())
    assert manifest["prefix"] == "/usr/lib/orion" and manifest["conf_created"] is True
    on_disk = {"/" + p for p in _tree(tmp_path) if (tmp_path / p).is_file()}
    assert on_disk == set(m.files) | {"/etc/orion/client.conf", "/usr/lib/orion/" + core.MANIFEST_NAME}
    pth = (_site(tmp_path) / core.PTH_NAME).read_text()
    assert [ln for ln in pth.splitlines() if not ln.startswith("#")] == ["/usr/lib/orion"]  # no import line
    for name in ("orion-run", "orion-check"):
        w = tmp_path / "usr/local/bin" / name
        assert os.access(w, os.X_OK) and 'PYTHONPATH="/usr/lib/orion' in w.read_text()
        assert f'exec "{PY}" -m orion_virt.' in w.read_text()
    assert (tmp_path / "etc/orion/client.conf").read_text() == templates.CLIENT_CONF


def test_uninstall_restores_the_tree(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin/orion-check").write_text("not ours\n")
    before = _tree(tmp_path)
    m, lines = _install(tmp_path)
    assert any("Kept the existing /usr/local/bin/orion-check" in ln for ln in lines)
    assert "/usr/local/bin/orion-check" not in m.files
    # Python's bytecode caches appear next to the modules when root imports them
    cache = tmp_path / "usr/lib/orion/orion_virt/client/__pycache__"
    cache.mkdir()
    (cache / "driver.cpython-311.pyc").write_bytes(b"x")
    out: list[str] = []
    core.uninstall(root=str(tmp_path), python=PY, out=out.append)
    assert out == ["Orion vGPU client environment has been removed from /usr/lib/orion"]
    assert _tree(tmp_path) == before
    assert (tmp_path / "usr/local/bin/orion-check").read_text() == "not ours\n"


def test_edited_client_conf_is_kept_unedited_one_removed(tmp_path: Path) -> None:
    _install(tmp_path)
    conf = tmp_path / "etc/orion/client.conf"
    conf.write_text(conf.read_text() + "\n[controller]\n    controller_addr = 33.31.0.1:9123\n")
    out: list[str] = []
    core.uninstall(root=str(tmp_path), python=PY, out=out.append)
    assert any("Kept /etc/orion/client.conf: it was edited after installation" in ln for ln in out)
    assert _tree(tmp_path) == ["etc", "etc/orion", "etc/orion/client.conf"]


def test_existing_client_conf_is_never_touched(tmp_path: Path) -> None:
    conf = tmp_path / "etc/orion/client.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[controller]\n    controller_addr = 10.0.0.1:9123\n")
    before = _tree(tmp_path)
    m, lines = _install(tmp_path)
    assert "Configuration file /etc/orion/client.conf already exists and is kept unchanged" in lines
    assert not m.conf_created
    core.uninstall(root=str(tmp_path), python=PY, out=lambda s: None)
    assert _tree(tmp_path) == before and "10.0.0.1:9123" in conf.read_text()


def test_reinstall_over_an_installation(tmp_path: Path) -> None:
    before = _tree(tmp_path)
    _install(tmp_path)
    stale = tmp_path / "usr/lib/orion/orion_virt/client/old_module.py"
    m1 = json.loads((tmp_path / "usr/lib/orion" / core.MANIFEST_NAME).read_text())
    stale.write_text("")
    m1["files"].append("/usr/lib/orion/orion_virt/client/old_module.py")
    (tmp_path / "usr/lib/orion" / core.MANIFEST_NAME).write_text(json.dumps(m1))
    m2, _ = _install(tmp_path)
    assert not stale.exists() and m2.conf_created  # the first install's conf stays ours
    core.uninstall(root=str(tmp_path), python=PY, out=lambda s: None)
    assert _tree(tmp_path) == before


def test_custom_path_and_uninstall_found_through_the_pth(tmp_path: Path) -> None:
    _, lines = _install(tmp_path, prefix="/orion")
    assert "Orion vGPU client environment has been installed in /orion" in lines
    assert (tmp_path / "orion/orion_virt/client/run.py").is_file()
    with pytest.raises(core.InstallError, match="already installed in /orion; remove it first"):
        _install(tmp_path)  # a second installation elsewhere would fight over the .pth
    core.uninstall(root=str(tmp_path), python=PY, out=lambda s: None)  # no -d: found via the .pth
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("bad", ["/", "/usr/lib/or ion", '/x"y', "/a$b", "/a\nb"])
def test_unsafe_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(core.InstallError, match="must be an absolute path"):
        core.install(prefix=bad, root=str(tmp_path), python=PY, out=lambda s: None)


def test_old_python_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho '{\"v\": [3, 9, 2], \"site\": [\"/usr/lib/python3/dist-packages\"], "
                    "\"path\": []}'\n")
    fake.chmod(0o755)
    out: list[str] = []
    rc = core.run(prefix=None, quiet=True, do_uninstall=False, root=str(tmp_path / "r"),
                  python=str(fake), out=out.append)
    assert rc == 2 and "is Python 3.9.2; the Orion client needs Python 3.11 or newer" in out[-1]


def test_question_no_cancels_and_yes_installs(tmp_path: Path) -> None:
    out: list[str] = []
    rc = core.run(prefix=None, quiet=False, do_uninstall=False, root=str(tmp_path), python=PY,
                  out=out.append, ask=lambda p: (out.append(p), "n")[1])
    assert rc == 1 and _tree(tmp_path) == []
    assert out == ["Orion client environment will be installed to /usr/lib/orion",
                   "Do you want to continue [n/y] ?", "Installation is cancelled."]
    rc = core.run(prefix=None, quiet=False, do_uninstall=False, root=str(tmp_path), python=PY,
                  out=out.append, ask=lambda p: "y")
    assert rc == 0 and (tmp_path / "usr/lib/orion/orion_virt").is_dir()


def test_given_path_or_quiet_asks_nothing(tmp_path: Path) -> None:
    def never(prompt: str) -> str:
        raise AssertionError("asked")

    for i, kw in enumerate(({"prefix": "/opt/orion", "quiet": False}, {"prefix": None, "quiet": True})):
        rc = core.run(do_uninstall=False, root=str(tmp_path / str(i)), python=PY, out=lambda s: None,
                      ask=never, **kw)
        assert rc == 0


def test_uninstall_without_installation_says_so(tmp_path: Path) -> None:
    out: list[str] = []
    rc = core.run(prefix=None, quiet=True, do_uninstall=True, root=str(tmp_path), python=PY, out=out.append)
    assert rc == 2 and "no Orion client installation found in /usr/lib/orion" in out[0]


def test_click_front_end(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli_main, ["--root", str(tmp_path), "--python", PY], input="y\n")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Orion client environment will be installed to /usr/lib/orion\n"
                               "Do you want to continue [n/y] ?y\n\nConfiguration file is generated")
    r = CliRunner().invoke(cli_main, ["--uninstall", "--root", str(tmp_path), "--python", PY])
    assert r.exit_code == 0 and "has been removed from /usr/lib/orion" in r.output
    assert _tree(tmp_path) == []


def test_bundle_installs_without_click(tmp_path: Path) -> None:
    bundle = tmp_path / "install-client"
    files = core.build_bundle(bundle)
    assert files == core.client_files()[0]
    root = tmp_path / "root"
    # -S: the bundle runs with the standard library alone (no click, no site-packages)
    r = subprocess.run([PY, "-S", str(bundle), "-q", "--root", str(root), "--python", PY],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Orion vGPU client environment has been installed in /usr/lib/orion" in r.stdout
    installed = sorted(str(p.relative_to(root / "usr/lib/orion/orion_virt"))
                       for p in (root / "usr/lib/orion/orion_virt").rglob("*.py"))
    assert installed == files
    r = subprocess.run([PY, "-S", str(bundle), "--uninstall", "--root", str(root), "--python", PY],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and _tree(root) == [], r.stdout + r.stderr


def test_guest_files_are_the_installed_templates() -> None:
    for name, text in templates.GUEST_FILES.items():
        assert (REPO / "guest" / name).read_text() == text, f"guest/{name} differs from installer/templates.py"


def test_default_client_conf_parses_to_the_defaults(tmp_path: Path) -> None:
    cfg = load_client_config({"ORION_CLIENT_CONF_ETC": str(REPO / "guest/client.conf"), "HOME": str(tmp_path)})
    default = load_client_config({"ORION_CLIENT_CONF_ETC": str(tmp_path / "none"), "HOME": str(tmp_path)})
    assert cfg.source == str(REPO / "guest/client.conf")
    strip = {"source": "", "sources": ()}
    import dataclasses

    assert dataclasses.replace(cfg, **strip) == dataclasses.replace(default, **strip)
    assert isinstance(cfg, ClientConfig)


def test_the_native_client_is_installed_with_an_ld_so_conf_entry(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "native_library", lambda name="libcuda.so.1": b"\x7fELF " + name.encode())
    before = _tree(tmp_path)
    m, lines = _install(tmp_path)
    lib = tmp_path / "usr/lib/orion/lib/libcuda.so.1"
    assert lib.read_bytes() == b"\x7fELF libcuda.so.1" and lib.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "usr/lib/orion/lib/libnvidia-ml.so.1").read_bytes() == b"\x7fELF libnvidia-ml.so.1"
    assert (tmp_path / "etc/ld.so.conf.d/orion.conf").read_text().splitlines()[-1] == "/usr/lib/orion/lib"
    assert "/usr/lib/orion/lib/libcuda.so.1" in m.files and core.LDCONF_PATH in m.files
    assert any(ln.startswith("(ldconfig not run for the root directory") for ln in lines)
    assert any("Every program now loads the native client /usr/lib/orion/lib/libcuda.so.1" in ln for ln in lines)
    core.uninstall(root=str(tmp_path), python=PY, out=lambda s: None)
    assert _tree(tmp_path) == before


def test_on_a_host_with_nvidias_driver_the_library_does_not_replace_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "native_library", lambda name="libcuda.so.1": b"\x7fELF native client")
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    m, lines = _install(tmp_path)
    assert (tmp_path / "usr/lib/orion/lib/libcuda.so.1").exists()
    assert not (tmp_path / "etc/ld.so.conf.d/orion.conf").exists()
    assert any("NVIDIA's driver is installed here" in ln for ln in lines)


def test_without_a_built_library_install_client_says_so(tmp_path: Path) -> None:
    _m, lines = _install(tmp_path)
    assert any("The native client (libcuda.so.1) is not installed" in ln for ln in lines)
    assert not (tmp_path / "usr/lib/orion/lib").exists()
