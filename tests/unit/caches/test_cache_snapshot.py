"""Snapshots: round trip, torn/corrupt files discarded with one warning, atomic writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamedge.caches import snapshot as snap
from streamedge.caches.cache import ApproximateCache, build_cache
from streamedge.caches.config import CacheConfig
from streamedge.errors import CacheError
from streamedge.records import InferenceResult, ModelInput, ModelRef, Tier, Vector
from tests.unit.caches.conftest import MODEL, FakeClock

DIM = 12


class FakeEmbedder:
    name = "fake"
    version = "1"
    dim = DIM

    def embed(self, item: ModelInput) -> Vector:
        raise AssertionError("tests pass vectors explicitly")


class Wall:
    """Epoch seconds, settable."""

    def __init__(self) -> None:
        self.now = 1.7e9

    def __call__(self) -> float:
        return self.now


def _cache(
    clock: FakeClock, wall: Wall, *, model: ModelRef = MODEL, **cfg: Any
) -> ApproximateCache:
    base: dict[str, Any] = {
        "policy": {"type": "threshold", "max_distance": 0.05},
        "store": {"max_bytes": 1 << 22, "ttl_s": 600.0, "eviction": "lfu"},
    }
    base.update(cfg)
    return build_cache(
        CacheConfig.model_validate(base),
        model=model,
        embedder=FakeEmbedder(),
        clock=clock,
        wall_clock=wall,
    )


def _vec(seed: int) -> Vector:
    return np.random.default_rng(seed).random(DIM, dtype=np.float32)


async def _filled(clock: FakeClock, wall: Wall, n: int = 20) -> ApproximateCache:
    cache = _cache(clock, wall)
    for i in range(n):
        result = InferenceResult(
            model=MODEL,
            answer={"label": f"c{i}", "boxes": [[i, 0, 1, 1]], "note": "é"},
            tier=Tier.LOCAL,
            backend="t",
            latency_s=0.01 * i,
            confidence=0.5 if i % 2 else None,
        )
        await cache.put(cache.query_for(None, vector=_vec(i)), result, origin=f"cam{i % 3}/v")  # type: ignore[arg-type]
        clock.advance(1.0)
    for _ in range(4):
        await cache.get(cache.query_for(None, vector=_vec(3)))  # type: ignore[arg-type]
    return cache


async def test_snapshot_round_trip(tmp_path: Path, clock: FakeClock) -> None:
    wall = Wall()
    cache = await _filled(clock, wall)
    path = tmp_path / "caches" / "default.snap"
    assert await cache.snapshot(path) == 20
    assert _names(path.parent) == ["default.snap"]  # no temporary file left

    # A restart: new monotonic clock, 30 s of wall time later.
    clock2 = FakeClock(start=5.0)
    wall.now += 30.0
    fresh = _cache(clock2, wall)
    assert await fresh.restore(path) == 20
    assert fresh.entries == 20
    assert len(fresh.index) == 20
    before = {s.entry.answer["label"]: s for s in cache.store.entries()}
    for stored in fresh.store.entries():
        old = before[stored.entry.answer["label"]]
        assert stored.entry.answer == old.entry.answer
        assert stored.entry.origin == old.entry.origin
        assert stored.entry.cost_s == old.entry.cost_s
        assert stored.entry.confidence == old.entry.confidence
        assert stored.hits == old.hits
        assert np.array_equal(stored.entry.vector, old.entry.vector)
        old_age = clock() - old.entry.created_at
        assert clock2() - stored.entry.created_at == pytest.approx(old_age + 30.0)
    hit = await fresh.get(fresh.query_for(None, vector=_vec(7)))  # type: ignore[arg-type]
    assert hit is not None
    assert hit.entry.answer["label"] == "c7"


async def test_restore_skips_entries_expired_while_down(tmp_path: Path, clock: FakeClock) -> None:
    wall = Wall()
    cache = await _filled(clock, wall)  # ages 1..20 s
    path = tmp_path / "c.snap"
    await cache.snapshot(path)
    wall.now += 600.0 - 10.5  # the 10 oldest pass the 600 s TTL while down
    fresh = _cache(FakeClock(), wall)
    assert await fresh.restore(path) == 10


async def test_restore_discards_another_namespace(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    wall = Wall()
    cache = await _filled(clock, wall, n=3)
    path = tmp_path / "c.snap"
    await cache.snapshot(path)
    # The namespace names the model version: a v2 cache must not load v1 answers.
    other = _cache(FakeClock(), wall, model=ModelRef("detector", "2"))
    with caplog.at_level(logging.WARNING):
        assert await other.restore(path) == 0
    assert other.entries == 0
    assert len(caplog.records) == 1


async def test_restore_skips_records_of_other_model_versions(
    tmp_path: Path, clock: FakeClock
) -> None:
    wall = Wall()
    cache = _cache(clock, wall)

    def record(i: int, model: ModelRef) -> snap.SnapshotRecord:
        return snap.SnapshotRecord(
            id=i,
            vector=_vec(i),
            answer={"label": str(i)},
            model=model,
            age_s=1.0,
            cost_s=0.1,
            origin="x",
            confidence=None,
            hits=0,
        )

    data = snap.SnapshotData(
        namespace=cache.namespace,
        model=MODEL,
        dim=DIM,
        saved_wall=wall(),
        next_id=9,
        records=[record(1, MODEL), record(2, ModelRef("detector", "0")), record(3, MODEL)],
    )
    path = tmp_path / "mixed.snap"
    snap.write_snapshot(path, data)
    assert await cache.restore(path) == 2
    assert sorted(s.entry.answer["label"] for s in cache.store.entries()) == ["1", "3"]
    assert all(s.entry.model == MODEL for s in cache.store.entries())


async def test_restore_missing_file_is_quiet(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _cache(clock, Wall())
    with caplog.at_level(logging.WARNING):
        assert await cache.restore(tmp_path / "none.snap") == 0
    assert not caplog.records


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _corrupt(blob: bytes, how: str) -> bytes:
    if how == "torn":
        return blob[: len(blob) * 2 // 3]
    if how == "flipped":
        data = bytearray(blob)
        data[-7] ^= 0x40
        return bytes(data)
    if how == "magic":
        return b"NOTASNAP" + blob[8:]
    if how == "version":
        return blob[:8] + (99).to_bytes(2, "big") + blob[10:]
    if how == "header":
        return blob[:20]
    if how == "empty":
        return b""
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["torn", "flipped", "magic", "version", "header", "empty"])
async def test_corrupt_snapshot_is_discarded_with_one_warning(
    how: str, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    wall = Wall()
    cache = await _filled(clock, wall)
    path = tmp_path / "c.snap"
    await cache.snapshot(path)
    path.write_bytes(_corrupt(path.read_bytes(), how))
    fresh = _cache(FakeClock(), wall)
    with caplog.at_level(logging.WARNING):
        assert await fresh.restore(path) == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "discarding cache snapshot" in warnings[0].getMessage()
    assert fresh.entries == 0
    assert len(fresh.index) == 0


def test_decode_rejects_a_valid_checksum_over_a_bad_schema() -> None:
    data = snap.SnapshotData(
        namespace="ns", model=MODEL, dim=2, saved_wall=0.0, next_id=1, records=[]
    )
    blob = snap.encode_snapshot(data)
    header = snap._HEADER
    body = b"\x93\x01\x02\x03"  # a msgpack list, not a map
    forged = header.pack(snap.MAGIC, snap.FORMAT_VERSION, 0, len(body), snap._digest(body)) + body
    with pytest.raises(snap.SnapshotError, match="not a map"):
        snap.decode_snapshot(forged)
    assert snap.decode_snapshot(blob).records == []


async def test_snapshot_write_failure_keeps_the_old_file(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = Wall()
    cache = await _filled(clock, wall, n=5)
    path = tmp_path / "c.snap"
    await cache.snapshot(path)
    good = path.read_bytes()
    await cache.put(
        cache.query_for(None, vector=_vec(99)),  # type: ignore[arg-type]
        InferenceResult(
            model=MODEL, answer={"label": "new"}, tier=Tier.LOCAL, backend="t", latency_s=0.1
        ),
        origin="x",
    )

    def crash(fd: int) -> None:
        raise OSError(5, "I/O error")  # a crash between write and rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(CacheError, match="cannot write"):
        await cache.snapshot(path)
    assert path.read_bytes() == good  # readers still see the complete old snapshot
    assert _names(tmp_path) == ["c.snap"]  # the temporary file was removed


async def test_snapshot_replace_is_atomic(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file is complete and fsync-ed before it replaces the old one."""
    wall = Wall()
    cache = await _filled(clock, wall, n=5)
    path = tmp_path / "c.snap"
    events: list[str] = []
    real_fsync = os.fsync
    real_replace = Path.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(self: Path, target: Any) -> Path:
        # At rename time the temporary file must already be a valid snapshot.
        snap.decode_snapshot(self.read_bytes())
        events.append("rename")
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    await cache.snapshot(path)
    assert events[:2] == ["fsync", "rename"]
    assert events[-1] == "fsync"  # the directory, after the rename
    assert len(snap.read_snapshot(path).records) == 5
