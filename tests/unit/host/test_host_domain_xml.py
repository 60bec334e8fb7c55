"""Golden tests for orion_virt.host.domain_xml, in the style of virt-manager's virtinst tests.

Each case reads ``golden/<case>-in.xml``, applies an edit and compares the result with
``golden/<case>-out.xml`` after normalisation (C14N, insignificant whitespace dropped).
Regenerate the expected files with ``ORION_REGEN_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orion_virt.errors import ConfigError, HostError
from orion_virt.host import domain_xml as dx

GOLDEN = Path(__file__).parent / "golden"
MIB = 1 << 20
CFG = {"server_addr": "192.168.122.1:9960", "controller_addr": "192.168.122.1:9123"}


def read(name: str) -> str:
    return (GOLDEN / name).read_text()


def compare(actual: str, expected_file: str) -> None:
    path = GOLDEN / expected_file
    if os.environ.get("ORION_REGEN_GOLDEN") == "1":
        path.write_text(actual if actual.endswith("\n") else actual + "\n")
    assert dx.normalize(actual) == dx.normalize(path.read_text()), f"differs from {path}"


ATTACH_CASES = ["pc", "q35", "nodevices", "usershmem", "othermeta", "compact"]


@pytest.mark.parametrize("case", ATTACH_CASES)
def test_attach_golden(case: str) -> None:
    out = dx.attach(read(f"{case}-in.xml"), 1, 128 * MIB, CFG)
    compare(out, f"{case}-out.xml")


@pytest.mark.parametrize("case", ATTACH_CASES)
def test_detach_round_trip(case: str) -> None:
    original = read(f"{case}-in.xml")
    attached = dx.attach(original, 1, 128 * MIB, CFG)
    detached = dx.detach(attached)
    assert dx.normalize(detached) == dx.normalize(original)
    assert dx.orion_state(detached) is None


@pytest.mark.parametrize("case", ["pc", "usershmem", "othermeta", "compact"])
def test_detach_keeps_whitespace_exactly(case: str) -> None:
    """Round trip is byte-exact up to quote style, which lxml always writes as double quotes."""
    original = read(f"{case}-in.xml")
    detached = dx.detach(dx.attach(original, 1, 128 * MIB, CFG))
    assert detached.replace('"', "'") == original.rstrip("\n").replace('"', "'")


def test_already_attached_is_unchanged() -> None:
    attached = read("attached-in.xml")
    out = dx.attach(attached, 1, 128 * MIB, CFG)
    assert out == attached


def test_reindex_replaces_previous_attachment() -> None:
    out = dx.attach(read("attached-in.xml"), 3, 64 * MIB, CFG)
    compare(out, "reindex-out.xml")
    assert "orionsock1" not in out
    st = dx.orion_state(out)
    assert st is not None and (st.index, st.size_bytes) == (3, 64 * MIB)
    assert dx.normalize(dx.detach(out)) == dx.normalize(read("pc-in.xml"))


def test_config_change_rewrites_entry() -> None:
    new_cfg = {"server_addr": "10.1.0.1:9960", "controller_addr": "10.1.0.1:9123"}
    out = dx.attach(read("attached-in.xml"), 1, 128 * MIB, new_cfg)
    st = dx.orion_state(out)
    assert st is not None and st.config == new_cfg and st.intact
    assert out.count("opt/org.orion/config") == 2  # the entry and the metadata record


def test_detach_golden() -> None:
    assert dx.normalize(dx.detach(read("attached-in.xml"))) == dx.normalize(read("pc-in.xml"))


def test_detach_not_attached_is_identity() -> None:
    x = read("q35-in.xml")
    assert dx.detach(x) is x


def test_user_devices_kept() -> None:
    out = dx.attach(read("othermeta-in.xml"), 2, 128 * MIB, CFG)
    assert "opt/com.example/name" in out and "libosinfo" in out and "app1:foo" in out
    back = dx.detach(out)
    assert "opt/com.example/name" in back and "<sysinfo type=\"fwcfg\">" in back
    st = dx.orion_state(out)
    assert st is not None and st.created == frozenset()  # reused metadata, sysinfo, devices
    out2 = dx.attach(read("usershmem-in.xml"), 0, 128 * MIB, CFG)
    assert "my_shmem0" in dx.detach(out2)


def test_orion_state() -> None:
    assert dx.orion_state(read("pc-in.xml")) is None
    st = dx.orion_state(read("attached-in.xml"))
    assert st is not None
    assert (st.index, st.size_bytes, st.shm_name) == (1, 128 * MIB, "orionsock1")
    assert st.config == CFG and st.intact
    assert st.created == frozenset({"sysinfo", "metadata"})


def test_hand_edited_device_is_repaired() -> None:
    attached = read("attached-in.xml")
    broken = attached.replace('<size unit="M">128</size>', '<size unit="M">4</size>')
    st = dx.orion_state(broken)
    assert st is not None and not st.shmem_present and not st.intact
    fixed = dx.attach(broken, 1, 128 * MIB, CFG)
    assert dx.normalize(fixed) == dx.normalize(attached)


def test_conflicting_user_device_names() -> None:
    x = read("usershmem-in.xml").replace("my_shmem0", "orionsock1")
    with pytest.raises(HostError, match="orionsock1"):
        dx.attach(x, 1, 128 * MIB, CFG)
    assert "orionsock2" in dx.attach(x, 2, 128 * MIB, CFG)
    y = read("othermeta-in.xml").replace("opt/com.example/name", dx.FWCFG_NAME)
    with pytest.raises(HostError, match="fw_cfg"):
        dx.attach(y, 1, 128 * MIB, CFG)


@pytest.mark.parametrize("size", [0, 3 * MIB, 1000, 96 * MIB, MIB + 4096])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(ConfigError, match="power of two"):
        dx.attach(read("pc-in.xml"), 1, size, CFG)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        dx.attach(read("pc-in.xml"), -1, MIB, CFG)
    with pytest.raises(ConfigError):
        dx.attach(read("pc-in.xml"), 1, MIB, {"server_addr": "a\nb"})
    with pytest.raises(ConfigError):
        dx.attach(read("pc-in.xml"), 1, MIB, {"bad key": "x"})
    with pytest.raises(HostError, match="well-formed"):
        dx.attach("<domain>", 1, MIB, CFG)
    with pytest.raises(HostError, match="<network>"):
        dx.orion_state("<network/>")


def test_entities_not_expanded() -> None:
    evil = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            "<domain><name>&x;</name></domain>")
    out = dx.attach(evil, 1, MIB, CFG)
    assert "root:" not in out


def test_choose_index() -> None:
    pc, attached = read("pc-in.xml"), read("attached-in.xml")
    assert dx.choose_index([]) == 0
    assert dx.choose_index([pc]) == 0
    assert dx.choose_index([attached]) == 0
    assert dx.choose_index([attached], taken=[0]) == 2
    user = read("usershmem-in.xml").replace("my_shmem0", "orionsock0")
    assert dx.choose_index([user, attached]) == 2
    assert dx.choose_index([user, "not xml"], first=0) == 1
    assert dx.used_indexes(dx.attach(user, 5, MIB, CFG)) == {0, 5}


def test_fwcfg_text_round_trip() -> None:
    assert dx.parse_config_text(dx.config_text(CFG)) == CFG
    assert dx.config_text(CFG) == (
        "server_addr=192.168.122.1:9960\ncontroller_addr=192.168.122.1:9123")


def test_sizes_and_owner_helpers() -> None:
    st_xml = read("usershmem-in.xml")
    assert dx.shmem_size(st_xml, "my_shmem0") == 4 * MIB
    assert dx.shmem_size(st_xml, "nope") is None
    assert dx.dac_owner(st_xml) is None
    with_label = st_xml.replace(
        "</devices>", "</devices><seclabel type='static' model='dac' relabel='yes'>"
        "<label>+107:+108</label></seclabel>")
    assert dx.dac_owner(with_label) == ("+107", "+108")
    assert dx.domain_name(st_xml) == "with-user-shmem"


# --- the ivshmem-doorbell model ----------------------------------------------------------------

DOORBELL = "/run/orion/ivshmem-orionsock1.sock"
DOORBELL_CASES = ["pc", "q35"]


@pytest.mark.parametrize("case", DOORBELL_CASES)
def test_attach_doorbell_golden(case: str) -> None:
    out = dx.attach(read(f"{case}-in.xml"), 1, 128 * MIB, CFG, doorbell=DOORBELL)
    compare(out, f"{case}-doorbell-out.xml")
    # libvirt 9.0 rejects <size> for ivshmem-doorbell: the size is in the metadata only
    assert "<size" not in out.split("<shmem", 1)[1].split("</shmem>", 1)[0]
    assert dx.shmem_size(out, "orionsock1") is None


@pytest.mark.parametrize("case", DOORBELL_CASES)
def test_doorbell_round_trip_and_state(case: str) -> None:
    original = read(f"{case}-in.xml")
    out = dx.attach(original, 1, 128 * MIB, CFG, doorbell=DOORBELL)
    st = dx.orion_state(out)
    assert st is not None and st.intact and st.doorbell == DOORBELL and st.model == "ivshmem-doorbell"
    assert st.size_bytes == 128 * MIB
    assert dx.attach(out, 1, 128 * MIB, CFG, doorbell=DOORBELL) is out  # idempotent
    assert dx.normalize(dx.detach(out)) == dx.normalize(original)
    assert dx.detach(out).replace('"', "'") == original.rstrip("\n").replace('"', "'")


def test_plain_state_has_no_doorbell() -> None:
    st = dx.orion_state(read("attached-in.xml"))
    assert st is not None and st.doorbell is None and st.model == "ivshmem-plain"


def test_switching_models_replaces_the_device() -> None:
    plain = read("attached-in.xml")
    bell = dx.attach(plain, 1, 128 * MIB, CFG, doorbell=DOORBELL)
    assert "ivshmem-plain" not in bell and bell.count("ivshmem-doorbell") == 2  # device + metadata
    back = dx.attach(bell, 1, 128 * MIB, CFG)
    assert dx.normalize(back) == dx.normalize(plain)
    moved = dx.attach(bell, 1, 128 * MIB, CFG, doorbell="/run/other.sock")
    assert "/run/other.sock" in moved and DOORBELL not in moved


def test_hand_edited_doorbell_is_not_intact() -> None:
    bell = dx.attach(read("pc-in.xml"), 1, 128 * MIB, CFG, doorbell=DOORBELL)
    for broken in (bell.replace(DOORBELL + '"/>', '/tmp/x.sock"/>', 1),
                   bell.replace('<model type="ivshmem-doorbell"/>', '<model type="ivshmem-plain"/>', 1)):
        st = dx.orion_state(broken)
        assert st is not None and not st.shmem_present, broken
        assert dx.normalize(dx.attach(broken, 1, 128 * MIB, CFG, doorbell=DOORBELL)) == dx.normalize(bell)


@pytest.mark.parametrize("bad", ["relative.sock", "/run/a,b.sock", "/run/a\nb"])
def test_doorbell_path_checked(bad: str) -> None:
    with pytest.raises(ConfigError):
        dx.attach(read("pc-in.xml"), 1, 128 * MIB, CFG, doorbell=bad)
