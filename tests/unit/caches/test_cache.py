"""ApproximateCache: round trips through every index, eviction, TTL, re-checks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamedge.caches.cache import ApproximateCache, build_cache
from streamedge.caches.config import CacheConfig
from streamedge.caches.policy import HknnPolicy, ThresholdPolicy
from streamedge.errors import CacheError
from streamedge.records import CacheQuery, InferenceResult, ModelInput, ModelRef, Tier, Vector
from tests.unit.caches.conftest import MODEL, FakeClock

DIM = 16

INDEX_CONFIGS: dict[str, dict[str, Any]] = {
    "numpy": {"type": "numpy"},
    "faiss_flat": {"type": "faiss_flat"},
    "hnsw": {"type": "hnsw", "m": 8, "ef_search": 32},
    "ivf": {"type": "ivf", "train_min": 64, "nprobe": 4},
    "lsh": {"type": "lsh", "tables": 8, "projections": 3, "width": 0.3, "probes": 8},
    "alsh": {"type": "alsh", "min_entries": 16},
}


class FakeEmbedder:
    """Vectors are passed in explicitly; this only names the namespace."""

    name = "fake"
    version = "1"
    dim = DIM

    def embed(self, item: ModelInput) -> Vector:
        raise AssertionError("tests pass vectors explicitly")


def _cache(clock: FakeClock, index: str = "numpy", **overrides: Any) -> ApproximateCache:
    cfg: dict[str, Any] = {
        "index": INDEX_CONFIGS[index],
        "policy": {"type": "threshold", "max_distance": 0.05},
        "store": {"max_bytes": 1 << 22, "ttl_s": 600.0},
        "answer_key": "label",
    }
    cfg.update(overrides)
    return build_cache(
        CacheConfig.model_validate(cfg),
        model=MODEL,
        embedder=FakeEmbedder(),
        clock=clock,
        wall_clock=lambda: clock() + 1e9,
    )


def _result(label: str, model: ModelRef = MODEL, latency: float = 0.05) -> InferenceResult:
    return InferenceResult(
        model=model, answer={"label": label}, tier=Tier.LOCAL, backend="t", latency_s=latency
    )


def _vec(seed: int) -> Vector:
    return np.random.default_rng(seed).random(DIM, dtype=np.float32)


@pytest.mark.parametrize("index", sorted(INDEX_CONFIGS))
async def test_cache_put_get_round_trip(index: str, clock: FakeClock) -> None:
    if index in {"faiss_flat", "hnsw", "ivf"}:
        pytest.importorskip("faiss")
    cache = _cache(clock, index)
    vectors = [_vec(i) for i in range(200)]
    for i, v in enumerate(vectors):
        await cache.put(cache.query_for(None, vector=v), _result(f"c{i}"), origin="cam/1")  # type: ignore[arg-type]
    assert cache.entries == 200
    assert len(cache.index) == 200
    for i in (0, 57, 199):
        near = vectors[i] + np.float32(0.01)  # RMS distance 0.01 < 0.05
        hit = await cache.get(cache.query_for(None, vector=near))  # type: ignore[arg-type]
        assert hit is not None
        assert hit.entry.answer == {"label": f"c{i}"}
        assert hit.distance == pytest.approx(0.01, abs=1e-4)
    far = np.full(DIM, 5.0, dtype=np.float32)
    assert await cache.get(cache.query_for(None, vector=far)) is None  # type: ignore[arg-type]
    stats = cache.stats()
    assert (stats.lookups, stats.hits, stats.puts) == (4, 3, 200)


@pytest.mark.parametrize("index", sorted(INDEX_CONFIGS))
async def test_cache_eviction_removes_ids_from_the_index(index: str, clock: FakeClock) -> None:
    if index in {"faiss_flat", "hnsw", "ivf"}:
        pytest.importorskip("faiss")
    cache = _cache(clock, index, store={"max_bytes": 60_000, "eviction": "lru"})
    queries = []
    for i in range(300):
        q = cache.query_for(None, vector=_vec(i))  # type: ignore[arg-type]
        queries.append(q)
        await cache.put(q, _result(f"c{i}"), origin="cam/1")
        assert len(cache.index) == cache.entries
        assert cache.nbytes <= 60_000
    live = {s.entry.id for s in cache.store.entries()}
    assert cache.stats().evictions > 0
    # Every id the index can return is live; the oldest answers are gone.
    _, ids = cache.index.search(np.stack([q.vector for q in queries]), 5)
    returned = set(ids[ids >= 0].tolist())
    assert returned <= live
    assert await cache.get(queries[0]) is None
    hit = await cache.get(queries[-1])
    assert hit is not None
    assert hit.entry.answer == {"label": "c299"}


async def test_cache_expired_entries_leave_index_and_are_not_reused(clock: FakeClock) -> None:
    cache = _cache(clock, store={"ttl_s": 60.0})
    q1 = cache.query_for(None, vector=_vec(1))  # type: ignore[arg-type]
    await cache.put(q1, _result("a"), origin="x")
    clock.advance(61)
    assert await cache.get(q1) is None  # stale entries are never reused
    assert await cache.expire() == 1
    assert len(cache.index) == 0
    # A put also purges.
    await cache.put(q1, _result("a"), origin="x")
    clock.advance(61)
    await cache.put(cache.query_for(None, vector=_vec(2)), _result("b"), origin="x")  # type: ignore[arg-type]
    assert len(cache.index) == 1


async def test_cache_skips_answers_of_another_model_version(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _cache(clock)
    q = cache.query_for(None, vector=_vec(1))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        await cache.put(q, _result("a", model=ModelRef("detector", "2")), origin="x")
        await cache.put(q, _result("a", model=ModelRef("detector", "2")), origin="x")
    assert cache.entries == 0
    assert len([r for r in caplog.records if "not storing" in r.message]) == 1


async def test_cache_invalidate_and_clear(clock: FakeClock) -> None:
    cache = _cache(clock)
    for i in range(5):
        await cache.put(cache.query_for(None, vector=_vec(i)), _result("a"), origin="x")  # type: ignore[arg-type]
    assert await cache.invalidate(ModelRef("detector", "2")) == 5
    assert cache.entries == 0
    assert len(cache.index) == 0
    await cache.put(cache.query_for(None, vector=_vec(9)), _result("a"), origin="x")  # type: ignore[arg-type]
    assert await cache.invalidate() == 0
    assert await cache.clear() == 1
    assert len(cache.index) == 0


async def test_cache_works_in_a_thread_when_slow(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(clock)
    cache._inline_budget_s = -1.0  # every search and insert counts as slow
    offloaded: list[str] = []
    real = asyncio.to_thread

    async def spy(fn: Any, /, *args: Any) -> Any:
        offloaded.append(fn.__name__)
        return await real(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    q = cache.query_for(None, vector=_vec(3))  # type: ignore[arg-type]
    await cache.put(q, _result("a"), origin="x")
    hit = await cache.get(q)
    assert hit is not None
    assert hit.distance == 0.0
    assert offloaded == ["_insert", "_search"]


async def test_cache_runs_inline_when_fast(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(clock)
    cache._inline_budget_s = 10.0

    async def forbidden(fn: Any, /, *args: Any) -> Any:
        raise AssertionError("a fast operation left the event loop")

    monkeypatch.setattr(asyncio, "to_thread", forbidden)
    q = cache.query_for(None, vector=_vec(3))  # type: ignore[arg-type]
    await cache.put(q, _result("a"), origin="x")
    assert await cache.get(q) is not None


def test_cache_snapshot_file_is_per_namespace(clock: FakeClock, tmp_path: Path) -> None:
    a = _cache(clock)
    path = a.snapshot_file(tmp_path)
    assert path.parent == tmp_path / "caches"
    assert path.suffix == ".snap"
    assert "/" not in path.name
    assert path.name.startswith("detector@1_fake@1-")
    other = build_cache(
        CacheConfig(), model=ModelRef("detector", "2"), embedder=FakeEmbedder(), clock=clock
    )
    assert other.snapshot_file(tmp_path) != path


def test_cache_query_for_rejects_bad_embeddings(clock: FakeClock) -> None:
    cache = _cache(clock)
    with pytest.raises(CacheError, match="shape"):
        cache.query_for(None, vector=np.zeros(DIM + 1, dtype=np.float32))  # type: ignore[arg-type]
    bad = np.zeros(DIM, dtype=np.float32)
    bad[0] = np.nan
    with pytest.raises(CacheError, match="NaN"):
        cache.query_for(None, vector=bad)  # type: ignore[arg-type]
    q = cache.query_for(None, vector=_vec(1))  # type: ignore[arg-type]
    assert isinstance(q, CacheQuery)
    assert q.key == cache.query_for(None, vector=_vec(1)).key  # type: ignore[arg-type]


async def test_cache_recheck_feeds_the_adjuster(clock: FakeClock) -> None:
    cache = _cache(
        clock,
        policy={"type": "hknn", "max_distance": 0.1, "nearest_max_distance": 0.05},
        accuracy={"target": 0.9, "min_samples": 10, "window": 50, "recheck_fraction": 0.5},
    )
    assert isinstance(cache.policy, HknnPolicy)
    q = cache.query_for(None, vector=_vec(1))  # type: ignore[arg-type]
    await cache.put(q, _result("car"), origin="x")
    hit = await cache.get(q)
    assert hit is not None
    assert cache.record_recheck(hit, {"label": "car", "score": 0.2})  # same label: agrees
    for _ in range(10):
        assert not cache.record_recheck(hit, {"label": "bus"})
    assert cache.policy.thresholds.max_distance < 0.05
    stats = cache.stats().recheck
    assert stats is not None
    assert stats.rechecks == 11
    assert stats.tightened == 1
    picks = sum(cache.should_recheck() for _ in range(2000))
    assert 850 < picks < 1150


def test_build_cache_constructs_what_the_profile_names(clock: FakeClock) -> None:
    pytest.importorskip("faiss")
    from streamedge.caches.alsh import AlshIndex
    from streamedge.caches.faiss_index import FaissHnswIndex, FaissIvfIndex
    from streamedge.caches.lsh import LshIndex

    assert isinstance(_cache(clock, "hnsw").index, FaissHnswIndex)
    assert isinstance(_cache(clock, "ivf").index, FaissIvfIndex)
    assert isinstance(_cache(clock, "lsh").index, LshIndex)
    assert isinstance(_cache(clock, "alsh").index, AlshIndex)
    assert isinstance(_cache(clock).policy, ThresholdPolicy)
    off = _cache(clock, accuracy={"enabled": False})
    assert off.adjuster is None
    assert off.stats().recheck is None
