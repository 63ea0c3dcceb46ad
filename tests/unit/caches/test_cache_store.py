"""ResultStore: byte cap, eviction policies, TTL, quotas, versions, accounting."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamedge.caches.config import StoreConfig
from streamedge.caches.store import ResultStore, StoredEntry, is_peer_origin, quota_key
from streamedge.records import ModelRef
from tests.unit.caches.conftest import MODEL, EntryFactory, FakeClock, entry_factory


def _store(clock: FakeClock, **kw: object) -> ResultStore:
    return ResultStore(StoreConfig.model_validate(kw), clock)


# ---------------------------------------------------------------------- byte cap


@pytest.mark.parametrize("eviction", ["lru", "lfu", "cost"])
@pytest.mark.parametrize("share", [1.0, 0.4])
@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(100, 3000),  # nbytes
            st.sampled_from(["a", "b", "c"]),  # origin
            st.integers(0, 3),  # hits after insert
            st.floats(0.0, 5.0),  # cost_s
            st.floats(0.0, 30.0),  # time passing
        ),
        min_size=1,
        max_size=60,
    )
)
def test_store_byte_cap_holds_under_random_inserts(
    eviction: str,
    share: float,
    steps: list[tuple[int, str, int, float, float]],
) -> None:
    clock = FakeClock()
    make_entry = entry_factory(clock)
    store = _store(clock, max_bytes=8192, eviction=eviction, ttl_s=100.0, max_origin_share=share)
    for n, (size, origin, hits, cost, wait) in enumerate(steps, start=1):
        clock.advance(wait)
        removed = store.add(make_entry(n, nbytes=size, origin=origin, cost_s=cost))
        for _ in range(hits):
            store.record_hit(n)
        assert store.nbytes <= store.max_bytes
        live = list(store.entries())
        assert store.nbytes == sum(s.entry.nbytes for s in live)
        assert len(store) == len(live)
        for org in "abc":
            held = sum(s.entry.nbytes for s in live if s.entry.origin == org)
            assert held == store.origin_bytes(org)
            assert held <= store.quota_bytes
        assert all(i not in store for i in removed)
        # Every entry is either stored or reported removed (nothing vanishes silently).
        if n not in removed:
            assert n in store


def test_store_rejects_an_entry_larger_than_the_cap(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=4096)
    store.add(make_entry(1, nbytes=1000))
    assert store.add(make_entry(2, nbytes=5000)) == [2]
    assert 2 not in store
    assert 1 in store
    assert store.rejected == 1


def test_store_replacing_an_id_does_not_double_count(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=10_000)
    store.add(make_entry(1, nbytes=1000))
    assert store.add(make_entry(1, nbytes=1500)) == []
    assert store.nbytes == 1500
    assert len(store) == 1


# ---------------------------------------------------------------------- victims


def test_store_lru_evicts_least_recently_used(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=4096, eviction="lru")
    for i in (1, 2, 3):
        store.add(make_entry(i, nbytes=1300))
    store.record_hit(1)  # 2 is now the least recently used
    assert store.add(make_entry(4, nbytes=1300)) == [2]
    assert store.add(make_entry(5, nbytes=1300)) == [3]
    assert store.add(make_entry(6, nbytes=1300)) == [1]


def test_store_lfu_evicts_least_reused(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=4096, eviction="lfu")
    for i in (1, 2, 3):
        store.add(make_entry(i, nbytes=1300))
    for _ in range(3):
        store.record_hit(1)
    store.record_hit(3)
    # 2 has no hits: it goes, although 1 is older.
    assert store.add(make_entry(4, nbytes=1300)) == [2]
    # 3 (1 hit) vs 4 (0 hits): 4 goes, although it is the newest.
    assert store.add(make_entry(5, nbytes=1300)) == [4]
    # 5 and 3: 5 has 0 hits.
    store.record_hit(5)
    store.record_hit(5)
    assert store.add(make_entry(6, nbytes=1300)) == [3]


def test_store_lfu_breaks_ties_by_recency(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=4096, eviction="lfu")
    for i in (1, 2, 3):
        store.add(make_entry(i, nbytes=1300))
    store.record_hit(1)
    store.record_hit(2)
    store.record_hit(3)
    store.record_hit(1)
    store.record_hit(2)
    # 1 and 2 have 2 hits, 3 has 1.
    assert store.victim() == 3


def test_store_cost_aware_keeps_what_saves_most_per_byte(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=10_000, eviction="cost")
    store.add(make_entry(1, nbytes=3000, cost_s=2.0))  # 6.7e-4 s/B: expensive model
    store.add(make_entry(2, nbytes=3000, cost_s=0.02))  # 6.7e-6 s/B: cheap model
    store.add(make_entry(3, nbytes=3000, cost_s=0.5))  # 1.7e-4 s/B
    assert store.victim() == 2
    assert store.add(make_entry(4, nbytes=3000, cost_s=0.5)) == [2]
    # Equal cost, double size: half the value per byte.
    store2 = _store(clock, max_bytes=10_000, eviction="cost")
    store2.add(make_entry(1, nbytes=4000, cost_s=1.0))
    store2.add(make_entry(2, nbytes=2000, cost_s=1.0))
    store2.add(make_entry(3, nbytes=2000, cost_s=1.0))
    assert store2.victim() == 1


def test_store_cost_aware_counts_hits(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=10_000, eviction="cost")
    store.add(make_entry(1, nbytes=3000, cost_s=1.0))
    store.add(make_entry(2, nbytes=3000, cost_s=2.5))
    store.add(make_entry(3, nbytes=3000, cost_s=2.5))
    assert store.victim() == 1
    for _ in range(3):
        store.record_hit(1)  # 1.0 × 4 uses beats 2.5 × 1 use
    assert store.victim() == 2


def test_store_cost_aware_ages_out_entries_no_longer_hit(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    """GDSF inflation: a once-popular entry is evicted after enough turnover."""
    store = _store(clock, max_bytes=9000, eviction="cost")
    store.add(make_entry(1, nbytes=3000, cost_s=1.0))
    for _ in range(5):
        store.record_hit(1)  # importance 6/3000
    evicted_at = None
    for n in range(2, 40):
        removed = store.add(make_entry(n, nbytes=3000, cost_s=1.0))
        if 1 in removed:
            evicted_at = n
            break
    assert evicted_at is not None, "a popular entry that is never hit again must age out"
    # It survived several rounds first (it was worth 6 fresh entries).
    assert evicted_at > 6


# ---------------------------------------------------------------------- TTL


def test_store_ttl_hides_and_purges(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=100_000, ttl_s=60.0)
    store.add(make_entry(1))
    clock.advance(30)
    store.add(make_entry(2))
    clock.advance(31)  # 1 is 61 s old, 2 is 31 s old
    assert store.get(1) is None
    assert store.get(2) is not None
    assert store.purge_expired() == [1]
    assert 1 not in store
    assert store.expirations == 1
    clock.advance(30)
    assert store.purge_expired() == [2]


def test_store_purges_expired_before_evicting_valuable(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=4096, ttl_s=60.0, eviction="lfu")
    store.add(make_entry(1, nbytes=1300))
    clock.advance(50)
    store.add(make_entry(2, nbytes=1300))
    store.add(make_entry(3, nbytes=1300))
    for _ in range(5):
        store.record_hit(1)  # valuable but about to expire
    clock.advance(20)
    removed = store.add(make_entry(4, nbytes=1300))
    assert removed == [1]  # expired, not evicted: 2 and 3 (no hits) stay
    assert store.evictions == 0


def test_store_replaced_entry_keeps_its_new_expiry(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=100_000, ttl_s=60.0)
    store.add(make_entry(1))
    clock.advance(50)
    store.add(make_entry(1))  # refreshed
    clock.advance(20)
    assert store.purge_expired() == []
    assert store.get(1) is not None


# ---------------------------------------------------------------------- quotas


def test_store_origin_quota_evicts_own_entries(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=10_000, max_origin_share=0.5, eviction="lru")
    store.add(make_entry(1, nbytes=2000, origin="b"))
    for i in range(2, 7):  # 5 × 2000 from "a": quota 5000 → at most 2 of them
        store.add(make_entry(i, nbytes=2000, origin="a"))
        assert store.origin_bytes("a") <= 5000
    assert 1 in store, "another origin's entry must not pay for a chatty one"
    assert store.origin_bytes("a") == 4000
    assert {s.entry.id for s in store.entries()} == {1, 5, 6}
    assert store.quota_evictions == 3
    assert store.evictions == 0


def test_store_origin_quota_rejects_oversized(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=10_000, max_origin_share=0.3)
    assert store.add(make_entry(1, nbytes=3500)) == [1]
    assert len(store) == 0


# ---------------------------------------------------------------------- versions, restore


def test_store_drops_other_model_versions(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=100_000)
    store.add(make_entry(1, model=ModelRef("detector", "0")))
    store.add(make_entry(2, model=MODEL))
    store.add(make_entry(3, model=ModelRef("other", "1")))
    assert sorted(store.drop_other_models(MODEL)) == [1, 3]
    assert [s.entry.id for s in store.entries()] == [2]


def test_store_restore_keeps_hit_counts_and_ids(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=100_000, eviction="lfu")
    store.restore(StoredEntry(entry=make_entry(41), hits=7))
    store.restore(StoredEntry(entry=make_entry(42), hits=0))
    assert store.hits(41) == 7
    assert store.victim() == 42
    assert store.new_id() == 43


def test_store_clear(make_entry: EntryFactory, clock: FakeClock) -> None:
    store = _store(clock, max_bytes=100_000)
    for i in (1, 2):
        store.add(make_entry(i))
    assert sorted(store.clear()) == [1, 2]
    assert store.nbytes == 0
    assert len(store) == 0


# ---------------------------------------------------------------------- accounting


def test_store_accounting_covers_measured_memory(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    """The byte cap is honest: what is charged covers what Python really allocates."""
    store = _store(clock, max_bytes=2**30, eviction="cost", max_origin_share=0.5)
    n = 3000
    entries = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1, n + 1):
            e = make_entry(
                i,
                dim=128,
                answer={"label": f"class{i % 50}", "score": (i % 100) / 100},
                origin=f"cam{i % 7}/video",
            )
            store.add(e)
            if i % 3 == 0:
                store.record_hit(i)
            entries.append(e.nbytes)
        del e
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # The test's own list of ints is a few bytes per entry; it is part of "measured".
    measured = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    accounted = store.nbytes
    assert measured <= accounted, f"measured {measured / n:.0f} B/entry > {accounted / n:.0f}"
    assert accounted <= 1.35 * measured, "the accounting is wastefully pessimistic"
    assert np.mean(entries) == accounted / n


def test_store_quota_by_device_counts_all_streams_of_a_device(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=10_000, max_origin_share=0.5, eviction="lru")
    store.add(make_entry(1, nbytes=2000, origin="cam2/video"))
    # cam1 spreads over four streams; together they still get only half the cache.
    for i, stream in enumerate(["a", "b", "c", "d"], start=2):
        store.add(make_entry(i, nbytes=2000, origin=f"cam1/{stream}"))
        assert store.origin_bytes("cam1/x") <= 5000
    assert 1 in store
    assert store.origin_bytes("cam1/anything") == 4000
    assert store.quota_evictions == 2


def test_store_quota_by_stream_limits_each_stream(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    store = _store(clock, max_bytes=10_000, max_origin_share=0.5, quota_by="stream")
    for i, stream in enumerate(["a", "b", "a", "b"], start=1):
        store.add(make_entry(i, nbytes=2000, origin=f"cam1/{stream}"))
    assert store.quota_evictions == 0
    assert store.origin_bytes("cam1/a") == 4000
    assert store.origin_bytes("cam1/b") == 4000


def test_store_peer_gateway_entries_share_one_quota(
    make_entry: EntryFactory, clock: FakeClock
) -> None:
    assert quota_key("peer/gw-b/cam1/video") == "peer/gw-b"
    assert quota_key("peer/gw-b/cam9/x", "stream") == "peer/gw-b"
    assert quota_key("cam1/video") == "cam1"
    assert is_peer_origin("peer/gw-b/cam1/video")
    assert not is_peer_origin("peer/video"), "a local device named 'peer' is not a gateway"
    store = _store(clock, max_bytes=10_000, max_origin_share=0.3, eviction="lru")
    store.add(make_entry(1, nbytes=2000, origin="cam1/video"))
    for i in range(2, 6):  # a neighbour's devices together: quota 3000 → one entry
        store.add(make_entry(i, nbytes=2000, origin=f"peer/gw-b/dev{i}/video"))
    assert 1 in store
    assert store.origin_bytes("peer/gw-b/dev0/x") == 2000
    assert store.quota_evictions == 3
