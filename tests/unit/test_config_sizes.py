"""Sizes and counts in the environment and in client.conf: the forms users write, and errors that
name the variable, the value and what is allowed."""

from __future__ import annotations

import pytest

from orion_virt.config import load_client_config
from orion_virt.errors import ConfigError


@pytest.mark.parametrize(("text", "mib"), [("4096", 4096), ("4096M", 4096), ("4096MiB", 4096), ("4G", 4096),
                                           ("4gib", 4096), (" 512 M ", 512), ("2GB", 2048)])
def test_orion_gmem_takes_mib_and_suffixed_sizes(text: str, mib: int) -> None:
    cfg = load_client_config({"ORION_GMEM": text, "ORION_CLIENT_CONF_ETC": "/nonexistent", "HOME": "/nonexistent"})
    assert cfg.gmem_mib == mib


@pytest.mark.parametrize("text", ["0", "-4", "4T", "four", "4.5G"])
def test_a_bad_orion_gmem_names_the_variable_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_client_config({"ORION_GMEM": text, "ORION_CLIENT_CONF_ETC": "/nonexistent", "HOME": "/nonexistent"})
    assert "ORION_GMEM" in str(e.value) and repr(text) in str(e.value) and "4G" in str(e.value)


def test_a_bad_count_says_what_is_expected_not_a_python_error() -> None:
    with pytest.raises(ConfigError) as e:
        load_client_config({"ORION_VGPU": "two", "ORION_CLIENT_CONF_ETC": "/nonexistent", "HOME": "/nonexistent"})
    assert "ORION_VGPU" in str(e.value) and "whole number" in str(e.value)
    assert "invalid literal" not in str(e.value)
