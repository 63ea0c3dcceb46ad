"""The accuracy guard and near-identical single flight in the Processor (fake model: logic only)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cv2
import jsonschema
import numpy as np

from streamedge.caches.cache import build_cache, build_embedder, recheck_gauge
from streamedge.caches.config import CacheConfig
from streamedge.config import StreamConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import InferenceError
from streamedge.filters.chain import FilterChain
from streamedge.models.factory import ModelInfo
from streamedge.pipeline.processor import AppRuntime, Processor, RuleRuntime
from streamedge.pipeline.singleflight import SingleFlight
from streamedge.records import (
    Frame,
    InferenceRequest,
    InferenceResult,
    ModelRef,
    OutboundMessage,
    RawMessage,
    StreamKey,
    Tier,
)
from streamedge.stats.metrics import Stats
from streamedge.stats.schema import snapshot_schema
from streamedge.topics import TopicScheme

MODEL = ModelRef("m", "1")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Model:
    """A deterministic fake tier: answers ``label`` (or fails), optionally after a gate."""

    def __init__(self, label: str = "a", *, authoritative: bool = True) -> None:
        self.label = label
        self.authoritative = authoritative
        self.calls: list[InferenceRequest] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.delay_s = 0.0

    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        self.calls.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise InferenceError("tier down")
        return InferenceResult(
            model=request.model,
            answer={"label": self.label},
            tier=Tier.LOCAL,
            backend="fake",
            latency_s=0.01,
            authoritative=self.authoritative,
        )


class Sink:
    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def __call__(self, message: OutboundMessage) -> None:
        self.sent.append(message)

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sent]


def setup(
    model: Model, *, max_distance: float = 1.0, private: bool = False, **accuracy: Any
) -> tuple[Processor, RuleRuntime, Stats, Sink, Any]:
    clock = Clock()
    stats = Stats(gateway="t", version="0", clock=clock, wall_clock=lambda: 0.0)
    cfg = CacheConfig.model_validate(
        {
            "name": "c",
            "embedder": {"type": "downscale", "size": 8},
            "policy": {"type": "threshold", "max_distance": max_distance},
            "answer_key": "label",
            "accuracy": {"recheck_fraction": 1.0, **accuracy},
            "private": private,
        }
    )
    embedder = build_embedder(cfg, window_fields=None, window_size=None)
    cache = build_cache(cfg, model=MODEL, embedder=embedder, clock=clock)
    rule = RuleRuntime(
        index=0,
        cfg=StreamConfig(),
        chain=FilterChain([]),
        apps=[AppRuntime(name="app", info=ModelInfo(MODEL, "frame"), cache=cache)],
        window_fields=None,
        window_size=0,
    )
    sink = Sink()
    proc = Processor(
        topics=TopicScheme("p"),
        decoder=PayloadDecoder(max_frame_pixels=10**6),
        infer=model,
        publish=sink,
        stats=stats,
        clock=clock,
    )
    return proc, rule, stats, sink, cache


def png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((32, 32, 3), value, dtype=np.uint8))
    assert ok
    return bytes(buf)


def raw(value: int, device: str = "d") -> RawMessage:
    return RawMessage(stream=StreamKey(device, "s"), payload=png(value), received_at=99.0)


async def test_hit_is_published_before_its_recheck_runs() -> None:
    model = Model("a")
    proc, rule, _, sink, cache = setup(model)
    await proc.handle(raw(100), rule)  # miss: stored
    model.gate = asyncio.Event()  # the re-check will block in the model
    outcome = await proc.handle(raw(101), rule)
    assert outcome.tier == "cache"
    assert [d["tier"] for d in sink.docs()] == ["local", "cache"]  # already out
    await asyncio.sleep(0)
    assert proc.rechecks_running == 1
    assert len(model.calls) == 2  # the re-check is running, after the publish
    assert cache.recheck_counts["running"] == 1
    model.gate.set()
    assert await proc.drain_rechecks(5.0) == 0
    assert cache.recheck_counts["running"] == 0
    assert cache.recheck_counts["started"] == 1


async def test_disagreement_is_counted_and_tightens_the_threshold() -> None:
    model = Model("a")
    proc, rule, stats, _, cache = setup(model, target=0.9, min_samples=5, window=10)
    await proc.handle(raw(100), rule)
    model.label = "b"  # from now on the model disagrees with the cached "a"
    for i in range(8):
        await proc.handle(raw(101 + i % 3, f"cam{i}"), rule)
        await proc.drain_rechecks(5.0)
    snap = stats.snapshot()
    ns = snap["accuracy"]["namespaces"][cache.namespace]
    assert (ns["checked"], ns["agreed"]) == (8, 0)
    assert snap["accuracy"]["levels"]["application"]["checked"] == 8
    assert cache.adjuster is not None
    assert cache.adjuster.tightened >= 1
    assert cache.hit_distance < 1.0  # tightened from 1.0 by 0.8 per step


async def test_agreement_well_above_target_loosens_slowly() -> None:
    model = Model("a")
    proc, rule, stats, _, cache = setup(
        model, max_distance=0.5, target=0.7, min_samples=5, window=10
    )
    await proc.handle(raw(100), rule)
    for i in range(10):
        await proc.handle(raw(100 + i % 2, f"cam{i}"), rule)
        await proc.drain_rechecks(5.0)
    assert stats.snapshot()["accuracy"]["namespaces"][cache.namespace]["agreement"] == 1.0
    assert cache.adjuster is not None
    assert cache.adjuster.loosened == 1
    assert cache.adjuster.tightened == 0
    assert abs(cache.hit_distance - 0.5 * 1.05) < 1e-9  # one slow step


async def test_rechecks_are_bounded_and_the_excess_is_counted() -> None:
    model = Model("a")
    proc, rule, _, sink, cache = setup(model, max_concurrent_rechecks=2)
    await proc.handle(raw(100), rule)
    model.gate = asyncio.Event()
    for i in range(5):
        await proc.handle(raw(100, f"cam{i}"), rule)
    counts = cache.recheck_counts
    assert (counts["picked"], counts["started"], counts["skipped_busy"]) == (5, 2, 3)
    assert sum(d["tier"] == "cache" for d in sink.docs()) == 5  # none waited
    model.gate.set()
    await proc.drain_rechecks(5.0)
    assert counts["running"] == 0


async def test_failed_and_non_authoritative_rechecks_are_not_judged() -> None:
    model = Model("a")
    proc, rule, stats, _, cache = setup(model)
    await proc.handle(raw(100), rule)
    model.fail = True
    await proc.handle(raw(100, "x"), rule)
    await proc.drain_rechecks(5.0)
    model.fail = False
    model.authoritative = False
    await proc.handle(raw(100, "y"), rule)
    await proc.drain_rechecks(5.0)
    assert cache.recheck_counts["failed"] == 1
    assert cache.recheck_counts["not_authoritative"] == 1
    assert stats.snapshot()["accuracy"]["checked"] == 0


async def test_drain_cancels_rechecks_past_the_deadline() -> None:
    model = Model("a")
    proc, rule, _, _, cache = setup(model)
    await proc.handle(raw(100), rule)
    model.gate = asyncio.Event()  # never set
    await proc.handle(raw(100, "x"), rule)
    assert await proc.drain_rechecks(0.05) == 1
    assert cache.recheck_counts["running"] == 0


async def test_recheck_gauge_fits_the_snapshot_schema() -> None:
    model = Model("a")
    proc, rule, stats, _, cache = setup(model)
    await proc.handle(raw(100), rule)
    await proc.handle(raw(100, "x"), rule)
    await proc.drain_rechecks(5.0)
    stats.gauges["caches"] = lambda: {
        cache.namespace: {
            "entries": cache.entries,
            "bytes": cache.nbytes,
            "shared_misses": cache.shared_misses,
            "recheck": recheck_gauge(cache),
        }
    }
    doc = stats.snapshot()
    jsonschema.Draft202012Validator(snapshot_schema()).validate(doc)
    gauge = doc["caches"][cache.namespace]["recheck"]
    assert gauge["started"] == 1
    assert gauge["fraction"] == 1.0
    assert gauge["max_distance"] == 1.0


async def test_recheck_of_a_neighbour_entry_counts_at_device_level() -> None:
    model = Model("b")  # the authoritative tier disagrees with the neighbour's answer
    proc, rule, stats, _, cache = setup(model)
    image = np.full((32, 32, 3), 100, dtype=np.uint8)  # what png(100) decodes to
    # The embedding the processor computes for the same frame, merged as a neighbour's entry.
    vector = cache.embedder.embed(Frame(stream=StreamKey("d", "s"), ts=0.0, image=image))
    kept = await cache.merge(
        vector,
        {"label": "a"},
        origin="peer/gw2/cam/s",
        age_s=0.0,
        cost_s=0.01,
        confidence=None,
    )
    assert kept
    outcome = await proc.handle(raw(100), rule)
    assert outcome.tier == "cache"
    assert await proc.drain_rechecks(5.0) == 0
    assert stats.accuracy["device"].checked == 1
    assert stats.accuracy["device"].agreed == 0
    assert stats.accuracy["application"].checked == 0


# -- near-identical single flight ----------------------------------------------


async def test_concurrent_near_identical_misses_share_one_model_call() -> None:
    model = Model("a")
    model.delay_s = 0.05
    proc, rule, _, sink, cache = setup(model, max_distance=0.05, recheck_fraction=0.0)
    # Eight cameras, pixel values 100..107: within 0.05 RMS (12.75 grey levels) of each other.
    outcomes = await asyncio.gather(*(proc.handle(raw(100 + i, f"cam{i}"), rule) for i in range(8)))
    assert len(model.calls) == 1
    assert all(o.kind == "answered" for o in outcomes)
    assert [d["answer"] for d in sink.docs()] == [{"label": "a"}] * 8
    assert proc.flights.near_shared == 7
    assert proc.flights.shared == 7
    assert cache.shared_misses == 7
    assert cache.entries == 1  # the shared answer is stored once, by the call that ran it


async def test_private_namespace_shares_near_identical_flights_only_within_a_device() -> None:
    model = Model("a")
    model.delay_s = 0.05
    proc, rule, _, _, _ = setup(model, max_distance=0.05, recheck_fraction=0.0, private=True)
    # Two near-identical frames from each of three cameras: one model call per camera.
    await asyncio.gather(
        *(proc.handle(raw(100 + i + j, f"cam{i}"), rule) for i in range(3) for j in range(2))
    )
    assert len(model.calls) == 3
    assert proc.flights.near_shared == 3


async def test_concurrent_different_misses_each_run() -> None:
    model = Model("a")
    model.delay_s = 0.05
    proc, rule, _, _, cache = setup(model, max_distance=0.05, recheck_fraction=0.0)
    await asyncio.gather(proc.handle(raw(20, "a"), rule), proc.handle(raw(220, "b"), rule))
    assert len(model.calls) == 2
    assert proc.flights.near_shared == 0
    assert cache.entries == 2


async def test_run_near_respects_groups_distance_and_errors() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()
    runs: list[str] = []

    def work(name: str, fail: bool = False) -> Any:
        async def run() -> str:
            runs.append(name)
            await gate.wait()
            if fail:
                raise InferenceError("boom")
            return name

        return run

    v = np.zeros(4, dtype=np.float32)
    first = asyncio.create_task(
        flights.run_near("k1", work("first", fail=True), group="g", vector=v, max_distance=0.1)
    )
    await asyncio.sleep(0)
    near = asyncio.create_task(
        flights.run_near("k2", work("near"), group="g", vector=v + 0.05, max_distance=0.1)
    )
    far = asyncio.create_task(
        flights.run_near("k3", work("far"), group="g", vector=v + 0.5, max_distance=0.1)
    )
    other = asyncio.create_task(
        flights.run_near("k4", work("other"), group="h", vector=v, max_distance=0.1)
    )
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, near, far, other, return_exceptions=True)
    assert sorted(runs) == ["far", "first", "other"]
    assert isinstance(results[0], InferenceError)
    assert isinstance(results[1], InferenceError)  # the joined flight's error reaches it
    assert results[2] == ("far", False)
    assert results[3] == ("other", False)
    assert flights.near_shared == 1
    assert len(flights) == 0
