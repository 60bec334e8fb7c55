"""One pool test suite against every store: SQLite (file) and a real etcd on loopback."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from etcd_fixture import etcd_url  # noqa: F401 - pytest fixture

from orion_virt.controller import pool
from orion_virt.controller.exceptions import AllocationError, StoreError
from orion_virt.controller.model import AllocationRequest, PoolState, parse_registration
from orion_virt.controller.store import EtcdStore, SqliteStore, Store, open_store
from orion_virt.errors import ConfigError
from orion_virt.launch import free_port

POLICY = pool.Policy(lease_seconds=600, heartbeat_timeout=600)
Spec = tuple[str, str, str]


def make_store(spec: Spec) -> Store:
    kind, where, prefix = spec
    return SqliteStore(where) if kind == "sqlite" else EtcdStore(where, prefix=prefix)


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.integration)])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    if request.param == "sqlite":
        yield ("sqlite", str(tmp_path / "pool.db"), "")
    else:
        yield ("etcd", request.getfixturevalue("etcd_url"), f"/orion-test/{uuid.uuid4()}/")


@pytest.fixture
def store(spec: Spec) -> Store:
    return make_store(spec)


def add_nodes(store: Store, nodes: int, gpus: int, vgpu: int = 4) -> None:
    now = time.time()
    for n in range(nodes):
        node = parse_registration(
            {"node_id": f"n{n}", "address": f"127.0.0.1:{9960 + n}",
             "gpus": [{"index": i, "memory_mib": 16384, "vgpu_count": vgpu}
                      for i in range(gpus)]}, 4, now)
        store.update(lambda s, node=node: pool.register(s, node))


def allocate(store: Store, vgpu: int = 1, gmem: int | None = None) -> pool.Allocation:
    return store.update(lambda s: pool.allocate(s, AllocationRequest(vgpu, gmem), time.time(),
                                                 POLICY, lambda: str(uuid.uuid4())))


def test_empty_store_reads_empty(store: Store) -> None:
    s = store.read()
    assert s.nodes == {} and s.allocations == {}


def test_state_round_trips(store: Store) -> None:
    add_nodes(store, 1, 2)
    a = allocate(store, 2, 12000)
    again = make_store_same(store).read()
    assert again.allocations[a.allocation_id] == a
    assert pool.summary(again).free_vgpus == 2
    store.update(lambda s: pool.release(s, a.allocation_id))
    assert pool.summary(store.read()).free_vgpus == 8


def make_store_same(store: Store) -> Store:
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    assert isinstance(store, EtcdStore)
    return EtcdStore(store.url, prefix=store.prefix)


def test_failed_update_changes_nothing(store: Store) -> None:
    add_nodes(store, 1, 1)
    before = store.read()

    def boom(s: PoolState) -> None:
        pool.allocate(s, AllocationRequest(1), time.time(), POLICY, lambda: "x")
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        store.update(boom)
    with pytest.raises(AllocationError):
        allocate(store, 1, 99999)
    assert store.read() == before


def test_conflicting_commit_is_refused(store: Store) -> None:
    if isinstance(store, SqliteStore):
        pytest.skip("SQLite serialises writers with BEGIN IMMEDIATE; commits cannot conflict")
    add_nodes(store, 1, 1)
    docs_a, ha = store._begin()
    docs_b, hb = store._begin()
    assert store._commit(hb, {"alloc/b": "{}"}, [])
    assert not store._commit(ha, {"alloc/a": "{}"}, [])


@pytest.mark.parametrize("threads,slots", [(20, 24), (30, 24)])
def test_concurrent_threads_never_share_a_vgpu(store: Store, spec: Spec, threads: int,
                                               slots: int) -> None:
    add_nodes(store, 3, 2)
    barrier = threading.Barrier(threads)

    def one(_: int) -> pool.Allocation | None:
        st = make_store(spec)
        barrier.wait()
        try:
            return allocate(st)
        except AllocationError:
            return None

    with ThreadPoolExecutor(threads) as ex:
        got = [a for a in ex.map(one, range(threads)) if a is not None]
    assert len(got) == min(threads, slots)
    held = [(p.node_id, p.gpu_index, p.slot) for a in got for p in a.placements]
    assert len(held) == len(set(held))
    final = store.read()
    assert set(final.allocations) == {a.allocation_id for a in got}
    pool.check_invariants(final)


def _proc_allocate(spec: Spec, n: int) -> list[tuple[str, int, int]]:
    st = make_store(spec)
    out = []
    for _ in range(n):
        a = allocate(st)
        out += [(p.node_id, p.gpu_index, p.slot) for p in a.placements]
    return out


def test_concurrent_processes_never_share_a_vgpu(store: Store, spec: Spec) -> None:
    add_nodes(store, 2, 2)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as ex:
        held = list(itertools.chain.from_iterable(ex.map(_proc_allocate, [spec] * 4, [4] * 4)))
    assert len(held) == 16 == len(set(held))
    pool.check_invariants(store.read())
    assert pool.summary(store.read()).free_vgpus == 0


def test_reap_through_store(store: Store) -> None:
    add_nodes(store, 1, 1)
    a = allocate(store)
    r = store.update(lambda s: pool.reap(s, time.time() + 10_000, POLICY))
    assert r.nodes_down == ("n0",) and r.released == (a.allocation_id,)
    s = store.read()
    assert not s.allocations and not s.nodes["n0"].up


def test_open_store_urls(tmp_path: Path) -> None:
    st = open_store(f"sqlite://{tmp_path}/sub/x.db")
    assert isinstance(st, SqliteStore) and st.path == tmp_path / "sub" / "x.db"
    assert isinstance(open_store("http://127.0.0.1:2379"), EtcdStore)
    assert isinstance(open_store("etcd://127.0.0.1:2379"), EtcdStore)
    for bad in ("redis://x", "sqlite://", "/tmp/x.db"):
        with pytest.raises(ConfigError):
            open_store(bad)


def test_unreachable_etcd_is_a_store_error() -> None:
    port = free_port()
    with pytest.raises(StoreError, match="cannot reach etcd"):
        EtcdStore(f"http://127.0.0.1:{port}", timeout=2).read()


def test_unwritable_sqlite_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "file" / "x.db")
