"""The device plugin's pure parts: slots and their health, preferred allocations packed as the
controller packs, each container's shared-memory device book (allocate, reuse, PreStart, the
unmounted sweep over a fake /proc), the generated gRPC code being current, and the one-line
message for a missing optional module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orion_virt.k8s.entry import missing_module_message
from orion_virt.k8s.shm import DeviceBook, fs_key
from orion_virt.k8s.slots import HEALTHY, UNHEALTHY, gpu_of, health, node_matches, preferred, slots_of

ROOT = Path(__file__).resolve().parents[3]


def _node(nid: str, addr: str, gpus: list[tuple[int, int, int]], up: bool = True) -> dict:
    return {"node_id": nid, "address": addr, "up": up,
            "gpus": [{"index": i, "memory_mib": m, "vgpu_count": c} for i, m, c in gpus]}


def test_slots_of_one_and_of_several_oriond() -> None:
    one = slots_of([_node("h:127.0.0.1:9960", "127.0.0.1:9960", [(0, 16384, 4), (1, 8192, 2)])])
    assert [s.id for s in one] == ["vgpu-0-0", "vgpu-0-1", "vgpu-0-2", "vgpu-0-3", "vgpu-1-0", "vgpu-1-1"]
    assert one[0].default_gmem_mib == 4096 and one[0].default_ratio == 25 and one[4].default_gmem_mib == 4096
    two = slots_of([_node("h:b", "x:2", [(0, 100, 1)]), _node("h:a", "x:1", [(0, 100, 2)])])
    assert [s.id for s in two] == ["vgpu-0-0-0", "vgpu-0-0-1", "vgpu-1-0-0"]
    assert gpu_of("vgpu-1-0-0") == (1, 0) and gpu_of("vgpu-3-2") == (0, 3) and gpu_of("nvidia0") is None


def test_node_matching_by_id_address_or_hostname() -> None:
    n = _node("gpu1:10.0.0.5:9960", "10.0.0.5:9960", [])
    assert node_matches(n, node_id="gpu1:10.0.0.5:9960", hostname="x", address=None)
    assert not node_matches(n, node_id="other", hostname="gpu1", address="10.0.0.5")
    assert node_matches(n, node_id=None, hostname="x", address="10.0.0.5")
    assert node_matches(n, node_id=None, hostname="gpu1", address=None)
    assert not node_matches(n, node_id=None, hostname="gpu", address=None)


def test_health_needs_controller_node_up_and_oriond() -> None:
    s = slots_of([_node("a", "1:1", [(0, 100, 2)]), _node("b", "1:2", [(0, 100, 1)])])
    assert set(health(s, {"a": True, "b": True}, {"a": True, "b": True}, True).values()) == {HEALTHY}
    h = health(s, {"a": True, "b": False}, {"a": True, "b": True}, True)
    assert [h[x.id] for x in s] == [HEALTHY, HEALTHY, UNHEALTHY]
    h = health(s, {"a": True, "b": True}, {"a": False, "b": True}, True)
    assert [h[x.id] for x in s] == [UNHEALTHY, UNHEALTHY, HEALTHY]
    assert set(health(s, {"a": True}, {"a": True}, False).values()) == {UNHEALTHY}


def test_preferred_packs_on_few_gpus_best_fit() -> None:
    avail = ["vgpu-0-1", "vgpu-0-2", "vgpu-0-3", "vgpu-1-0", "vgpu-1-1", "vgpu-2-0", "vgpu-2-1", "vgpu-2-2",
             "vgpu-2-3"]
    # two fit on GPU 1 exactly (best fit), not spread, not on the emptier GPU 2
    assert sorted(preferred(avail, [], 2)) == ["vgpu-1-0", "vgpu-1-1"]
    # three: GPU 0 holds exactly three
    assert sorted(preferred(avail, [], 3)) == ["vgpu-0-1", "vgpu-0-2", "vgpu-0-3"]
    # five: the largest GPU first (2: four), then best fit for the last one
    got = preferred(avail, [], 5)
    assert len(got) == 5 and sum(i.startswith("vgpu-2-") for i in got) == 4
    # must-include first, and its GPU filled before others
    got = preferred(avail, ["vgpu-2-0"], 3)
    assert got[0] == "vgpu-2-0" and all(i.startswith("vgpu-2-") for i in got)
    assert preferred(avail, ["vgpu-0-1", "vgpu-1-0"], 1) == ["vgpu-0-1", "vgpu-1-0"]
    assert preferred(["x", "vgpu-0-0"], [], 2) == ["vgpu-0-0", "x"]


def _book(tmp: Path, now: list[float]) -> DeviceBook:
    return DeviceBook(tmp / "shm", tmp / "state" / "devices.json", 1 << 20, grace=5, unused_timeout=100,
                      proc=tmp / "proc", clock=lambda: now[0])


def _fake_proc(tmp: Path, dev: Path, mounted: bool) -> None:
    """A /proc with 'self' (the plugin's view) and pid 42 (a container that binds ``dev``)."""
    st = os.stat(dev)
    devno = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    proc = tmp / "proc"
    for d in ("self", "42"):
        (proc / d / "ns").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "ns" / "mnt").write_text("self")
    (proc / "42" / "ns" / "mnt").write_text("ct")
    base = f"1 0 {devno} / / rw - ext4 /dev/root rw\n"
    (proc / "self" / "mountinfo").write_text(base)
    ct = base + (f"7 1 {devno} {dev} /dev/shm/{dev.name} rw - ext4 /dev/root rw\n" if mounted else "")
    (proc / "42" / "mountinfo").write_text(ct)


def test_device_book_allocate_reuse_prestart_and_sweep(tmp_path: Path) -> None:
    now = [1000.0]
    book = _book(tmp_path, now)
    a = book.allocate(["vgpu-0-0", "vgpu-0-1"])
    b = book.allocate(["vgpu-0-2"])
    assert a.name == "orionsock100" and b.name == "orionsock101" and a.exists() and b.exists()
    assert oct(a.stat().st_mode & 0o777) == "0o666"
    # a restarted plugin finds its devices again
    assert sorted(_book(tmp_path, now).records) == sorted([str(a), str(b)])
    # a slot handed out again: the old device goes first
    c = book.allocate(["vgpu-0-1"])
    assert sorted(r.slot_ids for r in book.records.values()) == [["vgpu-0-1"], ["vgpu-0-2"]] and c.exists()
    # PreStartContainer recreates a missing device of exactly those slots
    c.unlink()
    assert book.ensure(["vgpu-0-1"]) == c and c.exists()
    assert book.ensure(["vgpu-3-3"]) is None

    _fake_proc(tmp_path, c, mounted=True)
    assert fs_key(c, tmp_path / "proc") is not None
    assert book.sweep() == [] and book.records[str(c)].seen_mounted
    _fake_proc(tmp_path, c, mounted=False)
    assert book.sweep() == []  # within the grace
    now[0] += 6
    assert book.sweep() == [str(c)] and not c.exists()
    # never mounted: kept until unused_timeout
    assert str(b) in book.records
    now[0] += 100
    assert book.sweep() == [str(b)] and not b.exists() and book.records == {}


def test_generated_grpc_code_is_current() -> None:
    head = (ROOT / "orion_virt" / "k8s" / "deviceplugin_pb2.py").read_text().splitlines()[0]
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_k8s_proto

    assert f"sha256:{gen_k8s_proto.proto_sha()}" in head, "deviceplugin.proto changed: python tools/gen_k8s_proto.py"
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the k8s extra) is not installed")
    if f"grpcio-tools {gen_k8s_proto.tools_version()} " not in head:
        pytest.skip(f"generated by another grpcio-tools than the installed {gen_k8s_proto.tools_version()}: {head}")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_k8s_proto.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"stale generated code: python tools/gen_k8s_proto.py\n{r.stdout}{r.stderr}"


def test_the_services_have_the_kubelets_names() -> None:
    pytest.importorskip("grpc")
    from orion_virt.k8s import deviceplugin_pb2 as pb

    svc = pb.DESCRIPTOR.services_by_name
    assert svc["Registration"].full_name == "v1beta1.Registration"
    assert [m.name for m in svc["DevicePlugin"].methods] == [
        "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"]
    f = pb.ContainerAllocateResponse.DESCRIPTOR.fields_by_name
    assert (f["envs"].number, f["mounts"].number, f["devices"].number, f["cdi_devices"].number) == (1, 2, 3, 5)


def test_a_missing_module_names_the_k8s_extra() -> None:
    e = ModuleNotFoundError("No module named 'grpc'", name="grpc")
    assert missing_module_message("orion-device-plugin", e) == (
        "orion-device-plugin: the Python module 'grpc' is not installed: pip install 'orion_virt[k8s]' "
        "(or: make test-deps)")
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['kubernetes'] = None; "
                        "sys.argv = ['orion-node-labeller', '--once', '--interface', 'lo', '--api-server', "
                        "'http://127.0.0.1:1']; from orion_virt.k8s.entry import node_labeller_main; "
                        "node_labeller_main()"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.endswith(
        "orion-node-labeller: the Python module 'kubernetes' is not installed: pip install 'orion_virt[k8s]' "
        "(or: make test-deps)\n"), r.stderr
