"""Address precedence of the client configuration (``load_client_config``: orion-check, and the
rule the native client follows, tests/integration/test_native_hostagent_addrs.py): environment >
~/.orion/client.conf > /etc/orion/client.conf > the host agent's fw_cfg entry > none (direct mode /
default server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orion_virt.config import load_client_config
from orion_virt.errors import ConfigError
from orion_virt.hostagent_addrs import MAX_BYTES, ORIGIN


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".orion").mkdir(parents=True)
    fw = tmp_path / "fwcfg"
    fw.write_text("server_addr=192.168.122.1:9960\ncontroller_addr=192.168.122.1:9123")
    return {"HOME": str(home), "ORION_CLIENT_CONF_ETC": str(tmp_path / "etc.conf"),
            "ORION_FWCFG_PATH": str(fw)}


def test_fwcfg_used_when_nothing_else(env: dict[str, str]) -> None:
    cfg = load_client_config(env)
    assert cfg.controller_addr == "192.168.122.1:9123"
    assert cfg.server_addr == "192.168.122.1:9960"
    assert cfg.origin("controller_addr") == ORIGIN == "fw_cfg opt/org.orion/config"


def test_etc_then_home_then_env_override(env: dict[str, str]) -> None:
    Path(env["ORION_CLIENT_CONF_ETC"]).write_text("[controller]\ncontroller_addr = 10.0.0.1:9123\n")
    cfg = load_client_config(env)
    assert (cfg.controller_addr, cfg.origin("controller_addr")) == ("10.0.0.1:9123", env["ORION_CLIENT_CONF_ETC"])
    assert cfg.origin("server_addr") == ORIGIN  # only the key the file sets is overridden
    home_conf = Path(env["HOME"]) / ".orion" / "client.conf"
    home_conf.write_text("[controller]\ncontroller_addr = 10.0.0.2:9123\n")
    assert load_client_config(env).controller_addr == "10.0.0.2:9123"
    cfg = load_client_config({**env, "ORION_CONTROLLER": "10.0.0.3:9123", "ORION_SERVER": "10.0.0.3:9960"})
    assert (cfg.controller_addr, cfg.origin("controller_addr")) == ("10.0.0.3:9123", "environment ORION_CONTROLLER")
    assert cfg.origin("server_addr") == "environment ORION_SERVER"


def test_no_entry_means_direct_mode(env: dict[str, str], tmp_path: Path) -> None:
    cfg = load_client_config({**env, "ORION_FWCFG_PATH": str(tmp_path / "absent")})
    assert (cfg.controller_addr, cfg.server_addr, cfg.notes) == ("", "", ())


def test_only_the_keys_in_the_entry(env: dict[str, str]) -> None:
    Path(env["ORION_FWCFG_PATH"]).write_text("server_addr=192.168.122.1:9960\nother=x\n")
    cfg = load_client_config(env)
    assert (cfg.controller_addr, cfg.server_addr) == ("", "192.168.122.1:9960")


def test_malformed_address_named_unless_overridden(env: dict[str, str]) -> None:
    Path(env["ORION_FWCFG_PATH"]).write_text("server_addr=192.168.122.1:9960\ncontroller_addr=no-port\n")
    with pytest.raises(ConfigError, match=r"fwcfg \(fw_cfg opt/org.orion/config\): controller_addr='no-port': "
                                          r"expected HOST:PORT"):
        load_client_config(env)
    cfg = load_client_config({**env, "ORION_CONTROLLER": "10.0.0.3:9123"})
    assert cfg.controller_addr == "10.0.0.3:9123"


def test_oversized_entry_refused(env: dict[str, str]) -> None:
    Path(env["ORION_FWCFG_PATH"]).write_text("controller_addr=1.2.3.4:9123\n" + "x" * MAX_BYTES)
    with pytest.raises(ConfigError, match=f"more than {MAX_BYTES} bytes"):
        load_client_config(env)


def test_unreadable_entry_is_a_note(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "dir-not-file"
    d.mkdir()
    cfg = load_client_config({**env, "ORION_FWCFG_PATH": str(d)})
    assert cfg.controller_addr == ""
    assert len(cfg.notes) == 1 and str(d) in cfg.notes[0] and "cannot read" in cfg.notes[0]


def test_the_client_key_in_the_fwcfg_entry_is_read_and_a_malformed_one_named(env: dict[str, str]) -> None:
    """What `orion-virt attach --client-key` gives a guest (the native client signs its allocations
    with it: tests/integration/test_native_controller.py); a malformed key is named and not used."""
    from orion_virt.hostagent_addrs import read_fwcfg

    key = bytes(range(32))
    fw = Path(env["ORION_FWCFG_PATH"])
    fw.write_text(fw.read_text() + f"\nclient_key={key.hex()}")
    assert read_fwcfg(env, lambda v: v).client_key == key

    fw.write_text("client_key=xyz")
    got = read_fwcfg(env, lambda v: v)
    assert got.client_key is None and "client_key is not 16 to 256 bytes of hex" in got.problems["client_key"]
