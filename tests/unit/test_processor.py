"""The per-message pipeline with in-memory fakes for inference and publishing."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from streamedge.caches.cache import build_cache, build_embedder
from streamedge.caches.config import CacheConfig, DownscaleEmbedderConfig, ThresholdPolicyConfig
from streamedge.config import StreamConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import InferenceError, PublishError
from streamedge.filters.chain import FilterChain
from streamedge.filters.config import DuplicateFilterConfig
from streamedge.filters.sensor import DuplicateFilter
from streamedge.models.factory import ModelInfo
from streamedge.pipeline.processor import AppRuntime, Processor, RuleRuntime
from streamedge.records import (
    InferenceRequest,
    InferenceResult,
    Item,
    ModelRef,
    OutboundMessage,
    RawMessage,
    StreamKey,
    Tier,
    Verdict,
)
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme

MODEL = ModelRef("m", "1")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeInfer:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[InferenceRequest] = []
        self.fail = fail

    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        self.calls.append(request)
        if self.fail:
            raise InferenceError("tier down")
        return InferenceResult(
            model=request.model,
            answer={"label": f"call{len(self.calls)}"},
            tier=Tier.LOCAL,
            backend="fake",
            latency_s=0.05,
            confidence=0.9,
        )


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[OutboundMessage] = []
        self.fail = fail

    async def __call__(self, message: OutboundMessage) -> None:
        if self.fail:
            raise PublishError("full")
        self.sent.append(message)

    def docs(self) -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in self.sent]


def make(
    *,
    apps: bool = True,
    window: int = 0,
    infer: FakeInfer | None = None,
    sink: Sink | None = None,
    filters: FilterChain | None = None,
) -> tuple[Processor, RuleRuntime, FakeInfer, Sink, Stats, FakeClock]:
    clock = FakeClock()
    stats = Stats(gateway="t", version="0", clock=clock, wall_clock=lambda: 0.0)
    infer = infer or FakeInfer()
    sink = sink or Sink()
    cache_cfg = CacheConfig(
        name="c",
        embedder=DownscaleEmbedderConfig(size=8),
        policy=ThresholdPolicyConfig(max_distance=0.05),
    )
    runtime_apps = []
    if apps:
        info = ModelInfo(MODEL, "window" if window else "frame")
        embedder = build_embedder(cache_cfg, window_fields=None, window_size=None)
        cache = (
            None if window else build_cache(cache_cfg, model=MODEL, embedder=embedder, clock=clock)
        )
        runtime_apps.append(AppRuntime(name="app", info=info, cache=cache))
    rule = RuleRuntime(
        index=0,
        cfg=StreamConfig(),
        chain=filters or FilterChain([]),
        apps=runtime_apps,
        window_fields=("t",) if window else None,
        window_size=window,
    )
    proc = Processor(
        topics=TopicScheme("p"),
        decoder=PayloadDecoder(max_frame_pixels=10**6),
        infer=infer,
        publish=sink,
        stats=stats,
        clock=clock,
    )
    return proc, rule, infer, sink, stats, clock


def jpeg(value: int) -> bytes:
    img = np.full((32, 32, 3), value, dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return bytes(buf)


def raw(payload: bytes, device: str = "d", reply_to: str | None = None) -> RawMessage:
    return RawMessage(
        stream=StreamKey(device, "s"), payload=payload, received_at=99.0, reply_to=reply_to
    )


async def test_miss_then_hit_from_another_device() -> None:
    proc, rule, infer, sink, stats, clock = make()
    first = await proc.handle(raw(jpeg(100), "cam1"), rule)
    clock.t += 1
    second = await proc.handle(raw(jpeg(101), "cam2"), rule)
    assert (first.kind, first.tier) == ("answered", "local")
    assert (second.kind, second.tier) == ("answered", "cache")
    assert len(infer.calls) == 1
    docs = sink.docs()
    assert [d["tier"] for d in docs] == ["local", "cache"]
    assert docs[1]["answer"] == {"label": "call1"}
    assert docs[1]["age_s"] == pytest.approx(1.0)
    assert 0 < float(docs[1]["distance"]) <= 0.05  # type: ignore[arg-type]
    assert sink.sent[1].topic == "p/out/cam2/s"
    c = stats.snapshot()["cache"]["application"]
    assert (c["hits"], c["misses"]) == (1, 1)
    assert stats.snapshot()["saved"]["inference_s"] == pytest.approx(0.05)


async def test_far_input_is_a_miss() -> None:
    proc, rule, infer, _, _, _ = make()
    await proc.handle(raw(jpeg(10)), rule)
    await proc.handle(raw(jpeg(200)), rule)
    assert len(infer.calls) == 2


async def test_decode_error_is_a_counted_drop() -> None:
    proc, rule, infer, sink, _, _ = make()
    outcome = await proc.handle(raw(b"\xff\xd8\xff garbage"), rule)
    assert (outcome.kind, outcome.reason) == ("dropped", "bad_image")
    assert not infer.calls and not sink.sent


async def test_filtered_input_republishes_the_last_answer() -> None:
    chain = FilterChain([DuplicateFilter(DuplicateFilterConfig())])
    proc, rule, infer, sink, stats, clock = make(filters=chain)
    await proc.handle(raw(jpeg(50)), rule)
    clock.t += 2
    outcome = await proc.handle(raw(jpeg(50)), rule)
    assert (outcome.kind, outcome.tier) == ("answered", "filter")
    doc = sink.docs()[-1]
    assert doc["tier"] == "filter"
    assert doc["filtered_by"] == "duplicate"
    assert doc["answer"] == {"label": "call1"}
    assert doc["age_s"] == pytest.approx(2.0)
    assert len(infer.calls) == 1
    assert stats.snapshot()["filters"]["duplicate"] == {"pass": 1, "drop": 1, "error": 0}


async def test_filtered_input_without_earlier_answer_is_filtered() -> None:
    chain = FilterChain([DuplicateFilter(DuplicateFilterConfig())])
    proc, rule, _, sink, _, _ = make(apps=False, filters=chain)
    await proc.handle(raw(b'{"t": 1}'), rule)
    outcome = await proc.handle(raw(b'{"t": 1}'), rule)
    assert outcome.kind == "filtered"
    assert len(sink.sent) == 1  # only the forwarded first reading


async def test_stream_without_apps_forwards_readings() -> None:
    proc, rule, _, sink, _, _ = make(apps=False)
    outcome = await proc.handle(raw(b'{"ts": 3, "t": 1.5, "note": "x"}'), rule)
    assert (outcome.kind, outcome.tier) == ("answered", "forward")
    doc = sink.docs()[0]
    assert doc["values"] == {"t": 1.5}
    assert doc["extra"] == {"note": "x"}
    assert doc["ts"] == 3


async def test_windows_fill_before_the_model_runs() -> None:
    proc, rule, infer, sink, _, _ = make(window=3)
    outcomes = [await proc.handle(raw(f'{{"t": {i}}}'.encode()), rule) for i in range(4)]
    assert [o.reason for o in outcomes[:2]] == ["window_incomplete", "window_incomplete"]
    assert [o.kind for o in outcomes[2:]] == ["answered", "answered"]
    assert infer.calls[-1].input.values.reshape(-1).tolist() == [1.0, 2.0, 3.0]  # type: ignore[union-attr]
    missing = await proc.handle(raw(b'{"other": 1}'), rule)
    assert missing.reason == "missing_field"


async def test_inference_failure_is_a_counted_drop() -> None:
    proc, rule, _, sink, stats, _ = make(infer=FakeInfer(fail=True))
    outcome = await proc.handle(raw(jpeg(5)), rule)
    assert (outcome.kind, outcome.reason) == ("dropped", "inference_failed")
    assert not sink.sent
    assert stats.snapshot()["inference"]["all"]["failures"] == 1


async def test_publish_failure_is_a_counted_drop() -> None:
    proc, rule, _, _, _, _ = make(apps=False, sink=Sink(fail=True))
    outcome = await proc.handle(raw(b'{"t": 1}'), rule)
    assert (outcome.kind, outcome.reason) == ("dropped", "publish_failed")


async def test_reply_to_gets_the_answer_too() -> None:
    proc, rule, _, sink, _, _ = make(apps=False)
    await proc.handle(raw(b'{"t": 1}', reply_to="dev/replies"), rule)
    assert [m.topic for m in sink.sent] == ["p/out/d/s", "dev/replies"]


class Raising:
    name = "raising"

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        raise ValueError("filter bug")

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        return None

    def reset(self, stream: StreamKey) -> None:
        return None


async def test_a_raising_filter_lets_input_pass_and_is_counted() -> None:
    proc, rule, infer, _, stats, _ = make(filters=FilterChain([Raising()]))
    outcome = await proc.handle(raw(jpeg(9)), rule)
    assert outcome.kind == "answered"
    assert len(infer.calls) == 1
    assert stats.snapshot()["filters"]["raising"]["error"] == 1


class Unreadable(Raising):
    name = "unreadable"

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        from streamedge.filters._frames import UnsupportedFrameError

        raise UnsupportedFrameError("channels first", reason="frame_channels")


async def test_an_unreadable_frame_passes_and_its_reason_is_counted() -> None:
    proc, rule, infer, _, stats, _ = make(filters=FilterChain([Unreadable(), Raising()]))
    outcome = await proc.handle(raw(jpeg(9)), rule)
    assert outcome.kind == "answered"
    assert len(infer.calls) == 1
    filters = stats.snapshot()["filters"]
    assert filters["unreadable"] == {
        "pass": 0,
        "drop": 0,
        "error": 1,
        "reasons": {"frame_channels": 1},
    }
    assert filters["raising"]["reasons"] == {"exception": 1}


async def test_concurrent_identical_misses_share_one_inference() -> None:
    import asyncio

    gate = asyncio.Event()

    class SlowInfer(FakeInfer):
        async def __call__(self, request: InferenceRequest) -> InferenceResult:
            await gate.wait()
            return await super().__call__(request)

    infer = SlowInfer()
    proc, rule, _, sink, _, _ = make(infer=infer)
    tasks = [asyncio.create_task(proc.handle(raw(jpeg(77), f"cam{i}"), rule)) for i in range(3)]
    await asyncio.sleep(0.01)
    gate.set()
    outcomes = await asyncio.gather(*tasks)
    assert [o.kind for o in outcomes] == ["answered"] * 3
    assert len(infer.calls) == 1
    assert len(sink.sent) == 3


async def test_stream_state_is_bounded_and_evicted_streams_are_reset() -> None:
    chain = FilterChain([DuplicateFilter(DuplicateFilterConfig())])
    proc, rule, _, _, _, _ = make(apps=False, filters=chain)
    proc._max_streams = 2
    for device in ("a", "b", "c"):
        await proc.handle(raw(b'{"t": 1}', device), rule)
    assert proc.streams == 2
    # "a" was evicted with its filter state: the same reading passes again.
    outcome = await proc.handle(raw(b'{"t": 1}', "a"), rule)
    assert outcome.tier == "forward"
