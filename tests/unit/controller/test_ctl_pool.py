"""Pool logic without I/O: placement, errors, release, leases, node liveness."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orion_virt.controller import pool
from orion_virt.controller.exceptions import AllocationError, BadRequest, NotFound
from orion_virt.controller.model import AllocationRequest, PoolState, parse_registration
from orion_virt.errors import ControllerError

POLICY = pool.Policy(default_vgpu_count=4, lease_seconds=30, heartbeat_timeout=15)
T0 = 1_000_000.0


def node(state: PoolState, nid: str, *mems: int, vgpu: int | None = None, now: float = T0,
         port: int = 9960) -> None:
    gpus = [{"index": i, "uuid": f"GPU-{nid}-{i}", "name": "Tesla V100", "memory_mib": m,
             **({"vgpu_count": vgpu} if vgpu else {})} for i, m in enumerate(mems)]
    pool.register(state, parse_registration(
        {"node_id": nid, "address": f"10.0.0.{len(state.nodes) + 1}:{port}", "gpus": gpus},
        POLICY.default_vgpu_count, now))


_ids = (f"alloc-{i}" for i in itertools.count())


def alloc(state: PoolState, vgpu: int, gmem: int | None = None, ratio: int | None = None,
          cross: bool = False, now: float = T0, group: str = "") -> pool.Allocation:
    a = pool.allocate(state, AllocationRequest(vgpu, gmem, ratio, cross, group), now, POLICY,
                      lambda: next(_ids))
    pool.check_invariants(state)
    return a


def gpus_used(a: pool.Allocation) -> set[tuple[str, int]]:
    return {(p.node_id, p.gpu_index) for p in a.placements}


@pytest.fixture
def v100x2() -> PoolState:
    s = PoolState()
    node(s, "n1", 16384, 16384)
    return s


def test_two_large_vgpus_take_two_gpus(v100x2: PoolState) -> None:
    a = alloc(v100x2, 2, 12000)
    assert gpus_used(a) == {("n1", 0), ("n1", 1)}
    assert all(p.memory_mib == 12000 and p.ratio == 25 for p in a.placements)


def test_two_small_vgpus_share_one_gpu(v100x2: PoolState) -> None:
    a = alloc(v100x2, 2, 4096)
    assert len(gpus_used(a)) == 1
    assert sorted(p.slot for p in a.placements) == [0, 1]


def test_defaults_come_from_the_chosen_gpu() -> None:
    s = PoolState()
    node(s, "n1", 8192, vgpu=2)
    a = alloc(s, 1)
    assert (a.placements[0].memory_mib, a.placements[0].ratio) == (4096, 50)


def test_ratio_limits_packing(v100x2: PoolState) -> None:
    a = alloc(v100x2, 2, 1024, ratio=60)
    assert len(gpus_used(a)) == 2
    with pytest.raises(AllocationError, match="pool exhausted: "):
        alloc(v100x2, 2, 1024, ratio=50)
    alloc(v100x2, 2, 1024, ratio=40)


def test_slots_limit_packing(v100x2: PoolState) -> None:
    a = alloc(v100x2, 5, 100, ratio=1)
    assert len(gpus_used(a)) == 2
    assert pool.summary(v100x2).free_vgpus == 3


def test_best_fit_keeps_an_empty_gpu_for_big_requests(v100x2: PoolState) -> None:
    first = alloc(v100x2, 1, 4096)
    second = alloc(v100x2, 1, 4096)
    assert gpus_used(first) == gpus_used(second)
    alloc(v100x2, 1, 16384, ratio=100)


def test_gmem_over_any_gpu_is_refused_with_the_seed_reason(v100x2: PoolState) -> None:
    msg = r"ORION_GMEM=20000 exceeds the memory of any single GPU \(16384 MiB\)"
    with pytest.raises(AllocationError, match=msg):
        alloc(v100x2, 1, 20000)


def test_more_than_one_node_can_hold() -> None:
    s = PoolState()
    node(s, "n1", 16384)
    node(s, "n2", 16384)
    with pytest.raises(AllocationError, match="request needs more than one node can hold"):
        alloc(s, 2, 12000)
    a = alloc(s, 2, 12000, cross=True)
    assert {p.node_id for p in a.placements} == {"n1", "n2"}
    assert all(p.ratio == 100 for p in a.placements)


def test_cross_node_requires_ratio_100() -> None:
    with pytest.raises(BadRequest, match="ORION_RATIO=100") as e:
        AllocationRequest(2, 1024, 50, True).validate()
    assert e.value.field == "ratio"
    assert isinstance(e.value, ControllerError)


def test_cross_node_prefers_a_single_node() -> None:
    s = PoolState()
    node(s, "n1", 16384)
    node(s, "n2", 16384, 16384)
    a = alloc(s, 2, 1024, cross=True)
    assert {p.node_id for p in a.placements} == {"n2"}


def test_pool_exhausted_reports_free_count(v100x2: PoolState) -> None:
    for _ in range(8):
        alloc(v100x2, 1)
    assert pool.summary(v100x2).free_vgpus == 0
    with pytest.raises(AllocationError, match=r"^pool exhausted: 0 vGPUs free"):
        alloc(v100x2, 1)


def test_empty_pool() -> None:
    with pytest.raises(AllocationError, match="pool exhausted: 0 vGPUs free"):
        alloc(PoolState(), 1)


@pytest.mark.parametrize("body,field", [
    ({"vgpu": 0}, "vgpu"), ({}, "vgpu"), ({"vgpu": "2"}, "vgpu"), ({"vgpu": True}, "vgpu"),
    ({"vgpu": 1, "gmem_mib": 0}, "gmem_mib"), ({"vgpu": 1, "ratio": 101}, "ratio"),
    ({"vgpu": 1, "cross_node": "yes"}, "cross_node"), ({"vgpu": 1, "group_id": 3}, "group_id"),
])
def test_bad_request_fields_are_named(body: dict, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        AllocationRequest.from_json(body)
    assert e.value.field == field and field in str(e.value)


@pytest.mark.parametrize("body,field", [
    ({"address": "h:1", "gpus": []}, "node_id"),
    ({"node_id": "a", "address": "nohost", "gpus": []}, "address"),
    ({"node_id": "a", "address": "h:1", "gpus": [{"index": 0}]}, "gpus[0].memory_mib"),
    ({"node_id": "a", "address": "h:1", "gpus": [{"index": 0, "memory_mib": 1}] * 2}, "gpus"),
])
def test_bad_registration_fields_are_named(body: dict, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_registration(body, 4, T0)
    assert e.value.field == field


def test_release_restores_free_count(v100x2: PoolState) -> None:
    before = pool.summary(v100x2)
    assert (before.total_vgpus, before.free_vgpus) == (8, 8)
    a = alloc(v100x2, 3)
    assert pool.summary(v100x2).free_vgpus == 5
    pool.release(v100x2, a.allocation_id)
    assert pool.summary(v100x2) == before
    with pytest.raises(NotFound):
        pool.release(v100x2, a.allocation_id)


def test_lease_expiry_and_renew(v100x2: PoolState) -> None:
    a = alloc(v100x2, 2)
    b = alloc(v100x2, 2)
    pool.renew(v100x2, a.allocation_id, T0 + 20, POLICY)
    pool.heartbeat(v100x2, "n1", T0 + 30)
    r = pool.reap(v100x2, T0 + 31, POLICY)
    assert r.expired == (b.allocation_id,)
    assert set(v100x2.allocations) == {a.allocation_id}
    assert pool.summary(v100x2).free_vgpus == 6
    with pytest.raises(NotFound):
        pool.renew(v100x2, b.allocation_id, T0 + 31, POLICY)
    with pytest.raises(NotFound):
        pool.renew(v100x2, a.allocation_id, T0 + 50, POLICY)
    assert a.allocation_id not in v100x2.allocations


def test_node_loss_releases_its_allocations_and_is_never_used() -> None:
    s = PoolState()
    node(s, "n1", 16384)
    node(s, "n2", 16384)
    a1 = alloc(s, 4)
    assert gpus_used(a1) == {("n1", 0)}
    pool.heartbeat(s, "n2", T0 + 10)
    r = pool.reap(s, T0 + 16, POLICY)
    assert r.nodes_down == ("n1",) and r.released == (a1.allocation_id,)
    assert s.nodes["n1"].up is False and not s.allocations
    summ = pool.summary(s)
    assert (summ.total_vgpus, summ.free_vgpus, summ.nodes_down) == (4, 4, 1)
    for _ in range(4):
        assert gpus_used(alloc(s, 1, now=T0 + 16)) == {("n2", 0)}
    with pytest.raises(AllocationError, match="pool exhausted: 0 vGPUs free"):
        alloc(s, 1, now=T0 + 16)
    pool.heartbeat(s, "n1", T0 + 17)
    assert s.nodes["n1"].up
    assert pool.summary(s).free_vgpus == 4


def test_allocate_reaps_silent_nodes_first() -> None:
    s = PoolState()
    node(s, "n1", 16384)
    with pytest.raises(AllocationError, match="no GPU node is up"):
        alloc(s, 1, now=T0 + 100)


def test_heartbeat_unknown_node() -> None:
    with pytest.raises(NotFound):
        pool.heartbeat(PoolState(), "ghost", T0)


def test_reregistration_keeps_fitting_allocations_and_drops_others(v100x2: PoolState) -> None:
    a = alloc(v100x2, 1, 12000)
    b = alloc(v100x2, 1, 12000)
    gone_gpu = b.placements[0].gpu_index
    node_again = parse_registration(
        {"node_id": "n1", "address": "10.0.0.1:9960",
         "gpus": [{"index": 1 - gone_gpu, "memory_mib": 16384}]}, 4, T0 + 1)
    released = pool.register(v100x2, node_again)
    assert released == (b.allocation_id,)
    assert set(v100x2.allocations) == {a.allocation_id}
    assert v100x2.nodes["n1"].registered_at == T0


def test_remove_node(v100x2: PoolState) -> None:
    alloc(v100x2, 2)
    assert len(pool.remove_node(v100x2, "n1")) == 1
    assert pool.summary(v100x2).total_vgpus == 0
    with pytest.raises(NotFound):
        pool.remove_node(v100x2, "n1")


def test_reap_is_bounded() -> None:
    s = PoolState()
    node(s, "n1", *[16384] * 8)
    for _ in range(32):
        alloc(s, 1)
    r = pool.reap(s, T0 + 1000, pool.Policy(max_reap_changes=10))
    assert len(r.released) + len(r.expired) == 10


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(1, 4), st.sampled_from([None, 1000, 4096, 9000]),
                              st.sampled_from([None, 10, 25, 50, 100]), st.booleans()),
                    max_size=25))
def test_random_requests_keep_invariants(ops: list) -> None:
    s = PoolState()
    node(s, "n1", 16384, 16384)
    node(s, "n2", 8192, vgpu=2)
    for vgpu, gmem, ratio, release_one in ops:
        try:
            a = alloc(s, vgpu, gmem, ratio)
            assert len(a.placements) == vgpu
        except AllocationError:
            pass
        if release_one and s.allocations:
            pool.release(s, next(iter(s.allocations)))
        summ = pool.summary(s)
        assert 0 <= summ.free_vgpus <= summ.total_vgpus == 10
    for aid in list(s.allocations):
        pool.release(s, aid)
    assert pool.summary(s).free_vgpus == 10
