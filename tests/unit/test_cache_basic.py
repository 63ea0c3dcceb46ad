"""The foundation's cache: byte-capped LRU store, TTL, index kept in step."""

from __future__ import annotations

import numpy as np
import pytest

from streamedge.caches.cache import build_cache, build_embedder
from streamedge.caches.config import CacheConfig, StoreConfig, WindowEmbedderConfig
from streamedge.caches.numpy_index import NumpyIndex
from streamedge.caches.store import ResultStore, entry_nbytes
from streamedge.records import CacheEntry, InferenceResult, ModelRef, StreamKey, Tier, Window

MODEL = ModelRef("m", "1")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def entry(store: ResultStore, clock: Clock, answer_size: int = 10) -> CacheEntry:
    vec = np.zeros(8, dtype=np.float32)
    answer = {"x": "a" * answer_size}
    return CacheEntry(
        id=store.new_id(),
        namespace="ns",
        vector=vec,
        answer=answer,
        model=MODEL,
        created_at=clock(),
        cost_s=0.01,
        origin="d/s",
        nbytes=entry_nbytes(vec, answer),
    )


def test_store_evicts_least_recently_used_within_the_byte_cap() -> None:
    clock = Clock()
    store = ResultStore(StoreConfig(max_bytes=4096, ttl_s=100), clock)
    entries = [entry(store, clock) for _ in range(40)]
    evicted: list[int] = []
    for e in entries:
        evicted += store.add(e)
        store.record_hit(entries[0].id)  # keep the first one warm
    assert store.nbytes <= 4096
    assert entries[0].id not in evicted
    assert entries[1].id in evicted
    assert store.get(entries[0].id) is not None
    assert store.hits(entries[0].id) == 40
    assert len(store) + len(evicted) == 40


def test_store_ttl_and_oversized_entries() -> None:
    clock = Clock()
    store = ResultStore(StoreConfig(max_bytes=4096, ttl_s=10), clock)
    e = entry(store, clock)
    store.add(e)
    clock.t = 11
    assert store.get(e.id) is None
    assert store.purge_expired() == [e.id]
    big = entry(store, clock, answer_size=10_000)
    assert store.add(big) == [big.id]
    assert store.get(big.id) is None


def test_numpy_index_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 16)).astype(np.float32)
    index = NumpyIndex(16, initial_capacity=8)
    index.add(np.arange(500, dtype=np.int64), data)
    index.remove(np.arange(0, 500, 7, dtype=np.int64))
    alive = [i for i in range(500) if i % 7]
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    dist, ids = index.search(queries, 5)
    for q, d_row, i_row in zip(queries, dist, ids, strict=True):
        d2 = ((data[alive] - q) ** 2).sum(axis=1)
        best = np.array(alive)[np.argsort(d2)[:5]]
        assert i_row.tolist() == best.tolist()
        assert np.allclose(d_row, np.sort(d2)[:5], rtol=1e-4, atol=1e-4)
    d_empty, i_empty = NumpyIndex(4).search(np.zeros((1, 4), np.float32), 3)
    assert i_empty.tolist() == [[-1, -1, -1]] and np.isinf(d_empty).all()


async def test_cache_evictions_leave_the_index_in_step() -> None:
    clock = Clock()
    cfg = CacheConfig(
        name="w",
        embedder=WindowEmbedderConfig(),
        store=StoreConfig(max_bytes=4096, ttl_s=100),
    )
    embedder = build_embedder(cfg, window_fields=("t",), window_size=4)
    cache = build_cache(cfg, model=MODEL, embedder=embedder, clock=clock)
    key = StreamKey("d", "s")
    for i in range(50):
        w = Window(stream=key, ts=0, fields=("t",), values=np.full((4, 1), i, np.float32))
        q = cache.query_for(w)
        result = InferenceResult(
            model=MODEL, answer={"v": i}, tier=Tier.LOCAL, backend="x", latency_s=0.01
        )
        await cache.put(q, result, origin="d/s")
    assert cache.nbytes <= 4096
    assert len(cache._index) == cache.entries
    near = Window(stream=key, ts=0, fields=("t",), values=np.full((4, 1), 49.001, np.float32))
    hit = await cache.get(cache.query_for(near))
    assert hit is not None and hit.entry.answer == {"v": 49}
    far = Window(stream=key, ts=0, fields=("t",), values=np.full((4, 1), 0.0, np.float32))
    assert await cache.get(cache.query_for(far)) is None  # evicted long ago
    n = cache.entries
    assert await cache.clear() == n
    assert cache.entries == 0 and len(cache._index) == 0


def test_window_embedder_scales_fields() -> None:
    cfg = CacheConfig(embedder=WindowEmbedderConfig(scale={"h": 2.0}))
    emb = build_embedder(cfg, window_fields=("t", "h"), window_size=2)
    w = Window(
        stream=StreamKey("d", "s"),
        ts=0,
        fields=("t", "h"),
        values=np.array([[1, 4], [2, 6]], np.float32),
    )
    assert emb.embed(w).tolist() == [1.0, 2.0, 2.0, 3.0]
    with pytest.raises(Exception, match="window"):
        build_embedder(cfg, window_fields=None, window_size=None)
