"""The oriond image's entrypoint (deploy/images/entrypoint.sh, on top of server/entrypoint.sh): with
--dry-run it writes server.conf from BIND_ADDR (or BIND_NET's address), PORT, VGPU and
ORION_CONTROLLER and prints it; load_server_config reads back exactly those values. And the
Dockerfiles copy what exists and use that entrypoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orion_virt.config import load_server_config

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "deploy" / "images"
ENTRYPOINT = IMAGES / "entrypoint.sh"


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ORION_SERVER_CONF": str(tmp_path / "server.conf"),
            "ORION_WAIT_INTERVAL": "0.1", **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=full, capture_output=True, text=True, timeout=30)


def test_dry_run_generates_a_server_conf_with_the_given_values(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run", BIND_ADDR="10.1.2.3", PORT="9970", VGPU="6", ORION_CONTROLLER="10.1.2.1:9123",
            ORION_TOKEN_KEY_FILE="/etc/orion/keys/token.key")
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "server.conf"
    assert r.stdout == conf.read_text()  # printed as written
    cfg = load_server_config(conf)
    assert (cfg.bind_addr, cfg.listen_port, cfg.vgpu_count, cfg.controller_addr) == ("10.1.2.3", 9970, 6,
                                                                                     "10.1.2.1:9123")
    assert cfg.token_key_file == "/etc/orion/keys/token.key"
    assert cfg.enable_shm is True and cfg.shm_path_base == "/dev/shm"
    assert cfg.ignored == ()  # nothing in it that oriond would warn about


def test_seeds_defaults(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = load_server_config(tmp_path / "server.conf")
    # the seeds: Docker bridge gateway, port 9960, 4 vGPUs per GPU, controller on 127.0.0.1:9123
    assert (cfg.bind_addr, cfg.listen_port, cfg.vgpu_count, cfg.controller_addr) == ("172.17.0.1", 9960, 4,
                                                                                     "127.0.0.1:9123")


def test_node_label_name_and_no_controller(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run", ORION_BIND_ADDR="192.168.7.9", ORION_CONTROLLER="none")
    assert r.returncode == 0, r.stderr
    cfg = load_server_config(tmp_path / "server.conf")
    assert cfg.bind_addr == "192.168.7.9" and cfg.controller_addr == ""


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip (apt-get install iproute2)")
def test_bind_net_takes_the_interfaces_address(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run", BIND_NET="lo", BIND_ADDR="172.17.0.1")
    assert r.returncode == 0, r.stderr
    assert load_server_config(tmp_path / "server.conf").bind_addr == "127.0.0.1"
    assert "BIND_NET=lo: bind_addr 127.0.0.1" in r.stderr


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip (apt-get install iproute2)")
def test_bind_net_waits_for_the_interface(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as e:
        subprocess.run(["sh", str(ENTRYPOINT), "--dry-run"], capture_output=True, text=True, timeout=2,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BIND_NET": "orionnosuch0",
                            "ORION_SERVER_CONF": str(tmp_path / "server.conf"), "ORION_WAIT_INTERVAL": "0.1"})
    err = e.value.stderr
    err = err.decode() if isinstance(err, bytes) else (err or "")
    assert "Waiting for net orionnosuch0 becoming ready" in err  # the seeds' line
    assert not (tmp_path / "server.conf").exists()


def test_bad_values_are_refused(tmp_path: Path) -> None:
    r = run(tmp_path, "--dry-run", PORT="99999")
    assert r.returncode == 2 and "PORT=99999 is out of range" in r.stderr
    r = run(tmp_path, "--dry-run", BIND_NET="eth0;rm")
    assert r.returncode == 2 and "is not an interface name" in r.stderr


def test_runs_oriond_with_the_conf_after_the_keys_exist(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "token.key").write_text("00" * 32)
    fake = tmp_path / "oriond"
    fake.write_text('#!/bin/sh\necho "oriond $*"\n')
    fake.chmod(0o755)
    # controller.key is read from /etc/orion: only wait when the test host has one
    wait = "1" if Path("/etc/orion/controller.key").is_file() else "0"
    r = run(tmp_path, "--backend", "sim", ORIOND=str(fake), ORION_WAIT_FOR_KEYS=wait,
            ORION_TOKEN_KEY_FILE=str(keys / "token.key"), BIND_ADDR="127.0.0.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"oriond --config {tmp_path / 'server.conf'} --backend sim")


def test_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in IMAGES.glob("*.Dockerfile")))
def test_dockerfiles_copy_what_exists(dockerfile: str) -> None:
    text = (IMAGES / dockerfile).read_text()
    assert re.search(r"^FROM debian:12\b", text, re.M)
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *srcs, _dest = line.split()
        for src in srcs:
            assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"
    if dockerfile == "oriond.Dockerfile":
        assert "COPY deploy/images/entrypoint.sh /usr/local/bin/entrypoint.sh" in text
        assert "COPY server/entrypoint.sh /usr/local/bin/orion-server-entrypoint.sh" in text
        assert 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' in text


def test_images_named_by_the_manifests_have_dockerfiles() -> None:
    named = set()
    for p in (ROOT / "deploy" / "k8s").rglob("*.yaml"):
        named |= set(re.findall(r"image: (orion-virt/[a-z-]+)", p.read_text()))
    assert named == {"orion-virt/" + p.name.removesuffix(".Dockerfile") for p in IMAGES.glob("*.Dockerfile")}
