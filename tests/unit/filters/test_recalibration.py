"""Online recalibration through the real processor: checks of dropped frames, calibration
windows answered by the model, thresholds re-chosen per stream, bounded memory.

The model is a deterministic fake (it "detects" the bright square drawn into
the frames), so the logic is tested exactly; ``test_calibration.py`` uses
real video and MTCNN answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from streamedge.bench.replay import frame_payload
from streamedge.config import StreamConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.filters.chain import FilterChain
from streamedge.filters.config import NoScopeFilterConfig, RecalibrationConfig
from streamedge.filters.noscope import NoScopeFilter
from streamedge.filters.recalibration import Recalibrator
from streamedge.models.factory import ModelInfo
from streamedge.pipeline.processor import AppRuntime, Processor, RuleRuntime
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
from streamedge.topics import TopicScheme

MODEL = ModelRef("squares", "1")
KEY = StreamKey("cam1", "camera")
SCHEMA = Path(__file__).parents[3] / "streamedge" / "stats" / "snapshot.schema.json"


class SquareModel:
    """Answers with the box of the bright square in the frame, if any (deterministic)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        self.calls += 1
        assert isinstance(request.input, Frame)
        ys, xs = np.nonzero(request.input.image[:, :, 0] > 200)
        boxes = (
            []
            if len(xs) == 0
            else [[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), 1.0]]
        )
        return InferenceResult(
            model=MODEL,
            answer={"boxes": boxes, "count": len(boxes)},
            tier=Tier.LOCAL,
            backend="fake",
            latency_s=0.05,
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scene(i: int) -> np.ndarray:
    """A grey room; a bright square walks in on frames 10-14 (mod 20) and stands still."""
    img = np.full((48, 64, 3), 60, np.uint8)
    img[::4, :, :] = 70  # texture, so thumbnails are not flat
    phase = i % 20
    if 10 <= phase < 15:
        x = 4 + 8 * (phase - 10)
        img[10:22, x : x + 12] = 250
    return img


def build(
    recal_cfg: RecalibrationConfig, threshold: float
) -> tuple[Processor, RuleRuntime, SquareModel, Stats, Clock, NoScopeFilter, Recalibrator]:
    clock = Clock()
    stats = Stats(gateway="t", version="0", clock=clock, wall_clock=clock)
    model = SquareModel()
    flt = NoScopeFilter(NoScopeFilterConfig(threshold=threshold, t_diff=1, size=16))
    chain = FilterChain([flt])
    recal = Recalibrator(recal_cfg, chain.filters)
    rule = RuleRuntime(
        index=0,
        cfg=StreamConfig(kind="frame"),
        chain=chain,
        apps=[AppRuntime(name="app", info=ModelInfo(MODEL, "frame"), cache=None)],
        window_fields=None,
        window_size=0,
        recalibrator=recal,
    )
    sent: list[OutboundMessage] = []

    async def publish(message: OutboundMessage) -> None:
        sent.append(message)

    proc = Processor(
        topics=TopicScheme("p"),
        decoder=PayloadDecoder(max_frame_pixels=10**6),
        infer=model,
        publish=publish,
        stats=stats,
        clock=clock,
    )
    return proc, rule, model, stats, clock, flt, recal


async def feed(proc: Processor, rule: RuleRuntime, clock: Clock, frames: range) -> None:
    for i in frames:
        image = scene(i)
        clock.now = 1000.0 + i * 0.1
        raw = RawMessage(
            stream=KEY,
            payload=frame_payload(image.tobytes(), image.shape, i * 0.1),
            received_at=clock.now,
        )
        await proc.handle(raw, rule)


async def test_a_window_at_start_goes_to_the_model_and_rechooses_the_threshold() -> None:
    cfg = RecalibrationConfig(window_frames=40, check_fraction=0.0, frame_width=0, target=0.98)
    proc, rule, model, _, clock, flt, recal = build(cfg, threshold=1e9)
    await feed(proc, rule, clock, range(40))
    assert model.calls == 40  # every window frame reached the model, drops overridden
    await recal.wait_idle()
    doc = recal.as_json()
    assert (doc["windows"], doc["collected_frames"], doc["runs"], doc["failed"]) == (1, 40, 1, 0)
    assert doc["last"]["met"] is True
    chosen = doc["last"]["settings"][0]["threshold"]
    # The configured 1e9 dropped the square's moves; the stream's own threshold passes them.
    assert flt.threshold(KEY) == chosen < 1e9
    assert flt.threshold(StreamKey("other", "camera")) == 1e9  # per stream
    assert doc["bytes_kept"] == 0  # the window's frames were released
    # With the new threshold the square's frames reach the model, the still ones do not.
    before = model.calls
    await feed(proc, rule, clock, range(40, 80))
    assert before + 10 <= model.calls < before + 40


async def test_checks_of_dropped_frames_trigger_a_recalibration_when_agreement_drops() -> None:
    cfg = RecalibrationConfig(
        window_frames=20,
        check_fraction=1.0,
        min_checks=5,
        min_agreement=0.9,
        at_start=False,
        frame_width=0,
    )
    proc, rule, model, stats, clock, _, recal = build(cfg, threshold=1e9)
    await feed(proc, rule, clock, range(16))
    doc = recal.as_json()
    # Every drop was checked by the model; the square's moves disagree with the repeat.
    assert doc["checked"] >= 5
    assert doc["agreed"] < doc["checked"]
    assert doc["windows"] == 1  # low agreement started a window at once
    assert recal.collecting(KEY)
    assert stats.snapshot()["filters"]["noscope"]["drop"] >= doc["checked"]


async def test_a_window_that_does_not_fit_in_memory_is_not_started() -> None:
    image_bytes = 48 * 64 * 3
    cfg = RecalibrationConfig(
        window_frames=20, check_fraction=0.0, frame_width=0, max_bytes=10 * image_bytes
    )
    proc, rule, model, _, clock, _, recal = build(cfg, threshold=1e9)
    await feed(proc, rule, clock, range(10))
    doc = recal.as_json()
    assert (doc["windows"], doc["skipped_memory"], doc["bytes_kept"]) == (0, 1, 0)
    assert model.calls < 10  # the filter kept dropping


async def test_a_stream_waits_for_room_until_another_streams_window_is_done() -> None:
    image_bytes = 48 * 64 * 3
    cfg = RecalibrationConfig(
        window_frames=10, check_fraction=0.0, frame_width=0, max_bytes=15 * image_bytes
    )
    recal = Recalibrator(cfg, [NoScopeFilter(NoScopeFilterConfig())])
    a, b = StreamKey("a", "camera"), StreamKey("b", "camera")
    fa, fb = Frame(stream=a, ts=0.0, image=scene(0)), Frame(stream=b, ts=0.0, image=scene(0))
    assert recal.decide(a, fa, dropped=False, now=0.0) == "collect"
    for t in range(3):  # b does not fit while a collects: counted once
        assert recal.decide(b, fb, dropped=False, now=float(t)) is None
    assert recal.as_json()["skipped_memory"] == 1
    for i in range(10):
        recal.answered(
            a,
            Frame(stream=a, ts=i, image=scene(i)),
            {"boxes": [], "count": 0},
            latency_s=0.01,
            repeated=None,
            decision="collect",
        )
    await recal.wait_idle()
    assert recal.bytes_kept == 0
    assert recal.decide(b, fb, dropped=False, now=5.0) == "collect"
    assert recal.as_json()["windows"] == 2


def test_kept_frames_are_subsampled_and_counted() -> None:
    cfg = RecalibrationConfig(window_frames=10, frame_width=32, check_fraction=0.0)
    recal = Recalibrator(cfg, [NoScopeFilter(NoScopeFilterConfig())])
    frame = Frame(stream=KEY, ts=0.0, image=scene(0))
    assert recal.decide(KEY, frame, dropped=True, now=0.0) == "collect"
    assert recal.bytes_kept == 10 * 32 * 24 * 3


def test_the_snapshot_section_matches_the_schema() -> None:
    cfg = RecalibrationConfig(window_frames=10)
    recal = Recalibrator(cfg, [NoScopeFilter(NoScopeFilterConfig())])
    schema = json.loads(SCHEMA.read_text())
    section = schema["properties"]["recalibration"]
    validator = jsonschema.Draft202012Validator({**section, "$defs": schema.get("$defs", {})})
    validator.validate({"0:*/camera*": recal.as_json()})


async def test_the_gateway_recalibrates_real_video_with_real_mtcnn() -> None:
    """The committed vtest excerpt through the gateway's own pipeline and MTCNN: the first
    window goes to the model although the configured threshold drops everything, then the
    stream's own threshold applies; the snapshot's section is valid."""
    from streamedge.bench.replay import CLOCK_ORIGIN, ReplayClock
    from streamedge.config import parse_config
    from streamedge.datasets import find_video, iter_frames
    from streamedge.pipeline.gateway import Gateway
    from streamedge.stats.schema import snapshot_schema

    window_frames = 12
    cfg = parse_config(
        {
            "models": [{"type": "mtcnn"}],
            "streams": [
                {
                    "match": "*/camera",
                    "kind": "frame",
                    "filters": [{"type": "noscope", "threshold": 1e9, "t_diff": 2}],
                    "recalibrate": {
                        "window_frames": window_frames,
                        "check_fraction": 0.0,
                        "target": 0.98,
                    },
                    "apps": [{"name": "faces", "model": "mtcnn"}],
                }
            ],
        }
    )
    clock = ReplayClock()
    gateway = Gateway(cfg, clock=clock, wall_clock=clock)
    await gateway.build()
    assert gateway.router is not None and gateway.processor is not None
    (rule,) = gateway.rules
    recal = rule.recalibrator
    assert recal is not None
    flt = rule.chain.filters[0]
    assert isinstance(flt, NoScopeFilter)
    levels = []
    async with gateway.router:
        for i, image in enumerate(
            iter_frames(find_video("vtest", excerpt_only=True), max_frames=20)
        ):
            clock.now = CLOCK_ORIGIN + i / 10
            raw = RawMessage(
                stream=KEY,
                payload=frame_payload(image.tobytes(), image.shape, i / 10),
                received_at=clock.now,
            )
            outcome = await gateway.processor.handle(raw, rule)
            levels.append(outcome.tier)
            if i == window_frames - 1:
                await recal.wait_idle()
    assert levels[:window_frames] == ["local"] * window_frames
    doc = recal.as_json()
    assert (doc["windows"], doc["runs"], doc["failed"]) == (1, 1, 0)
    assert flt.threshold(KEY) == doc["last"]["settings"][0]["threshold"] < 1e9
    snapshot = gateway.stats.snapshot()
    assert snapshot["recalibration"] == {"0:*/camera": doc}
    jsonschema.Draft202012Validator(snapshot_schema()).validate(snapshot)
