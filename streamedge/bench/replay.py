"""Replay camera streams through a real pipeline configuration, frame by frame.

The pipeline is the gateway's own: :class:`~streamedge.pipeline.gateway.Gateway`
builds the models, tier router, caches, filter chains and stream rules from
the :class:`~streamedge.config.StreamedgeConfig` exactly as ``streamedge run``
does, and its :class:`~streamedge.pipeline.processor.Processor` handles every
frame. Only the transport differs: frames are handed to the processor
directly (no broker) and answers are collected in memory. Nothing of the
filter, cache or inference logic is re-implemented here.

* Frames travel as msgpack envelopes of raw BGR bytes
  (``content_type: image/x-raw``), so the model sees exactly the pixels the
  reference answers were computed on (JPEG would change them).
* The gateway's clock is the stream's own time (frame number / fps), not
  the wall clock: time-based settings (``max_age_s``, cache TTLs) behave as
  they would on a live camera at its frame rate, whatever the speed of the
  replay, and results are reproducible.
* Frames are handled one at a time, in time order across streams (several
  derived cameras are interleaved as different devices), as one shard would.
* Each frame's record holds the outcome, the tier whose answer the
  application received (``filter``, ``cache``, ``local`` ...), the answer,
  the wall time the processor took, and the per-stage times the answer
  carries (``latency_ms``: decode, filter, embed, lookup, infer, publish).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack

from streamedge.bench.progress import NoProgress, Progress
from streamedge.bench.workloads import StreamSpec, interleave
from streamedge.config import AppConfig, StreamConfig, StreamedgeConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import ConfigError
from streamedge.inference.config import ModelConfig
from streamedge.models.factory import model_info
from streamedge.pipeline.gateway import Gateway
from streamedge.pipeline.processor import Outcome, Processor, RuleRuntime
from streamedge.records import JSON, OutboundMessage, RawMessage, StreamKey

logger = logging.getLogger(__name__)

CLOCK_ORIGIN = 1_000.0
"""The replay clock reads ``CLOCK_ORIGIN + stream time`` (never 0, which some code treats
as "unset")."""
MODEL_TIERS = frozenset({"local", "edge", "cloud"})
"""Tiers at which a model ran."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameRecord:
    """What happened to one replayed frame."""

    stream: int
    """Position of the frame's stream in the replayed list."""
    index: int
    """Frame number within its stream."""
    ts: float
    """Stream time, seconds."""
    outcome: str
    """``answered``, ``filtered`` (nothing published) or ``dropped``."""
    level: str
    """Where the frame stopped: ``filter``, ``cache``, ``local``/``edge``/``cloud``
    (a model ran) or ``dropped``."""
    tier: str | None
    """The ``tier`` of the answer published for the evaluated app (None: none published)."""
    answer: JSON | None
    """The answer published for the evaluated app (None: none published)."""
    reason: str | None
    """The filter that dropped the frame, or the drop reason."""
    wall_s: float
    """Wall time the processor spent on the frame."""
    stages_ms: dict[str, float] = field(default_factory=dict)
    """Per-stage times from the answer's ``latency_ms`` (empty when none was published)."""
    distance: float | None = None
    """Cache distance of a reused answer."""
    cpu_s: float = 0.0
    """CPU time of this process (all threads) while the processor handled the frame:
    unlike wall time, not inflated when other processes take the cores."""

    def to_json(self) -> JSON:
        """A JSON-serialisable dict."""
        return {
            "stream": self.stream,
            "index": self.index,
            "ts": round(self.ts, 4),
            "outcome": self.outcome,
            "level": self.level,
            "tier": self.tier,
            "answer": self.answer,
            "reason": self.reason,
            "wall_ms": round(self.wall_s * 1e3, 3),
            "cpu_ms": round(self.cpu_s * 1e3, 3),
            "stages_ms": self.stages_ms,
            "distance": self.distance,
        }


@dataclass(slots=True, kw_only=True)
class ReplayResult:
    """All frame records of one replay, and what was replayed."""

    name: str
    streams: list[StreamSpec]
    app: str
    model: str
    """``name@version`` of the evaluated app's model."""
    records: list[FrameRecord]

    def answers(self, stream: int = 0) -> list[JSON | None]:
        """The evaluated app's answer to each frame of one stream (None: none published)."""
        return [r.answer for r in self.records if r.stream == stream]

    def levels(self) -> Counter[str]:
        """Frames by the level they stopped at (``filter``, ``cache``, ``local`` ...)."""
        return Counter(r.level for r in self.records)

    @property
    def frames(self) -> int:
        """Frames replayed over all streams."""
        return len(self.records)

    @property
    def inferences(self) -> int:
        """Frames on which a model ran."""
        return sum(1 for r in self.records if r.level in MODEL_TIERS)

    @property
    def wall_s(self) -> float:
        """Processor wall time over all frames."""
        return sum(r.wall_s for r in self.records)

    @property
    def cpu_s(self) -> float:
        """Process CPU time over all frames."""
        return sum(r.cpu_s for r in self.records)

    @property
    def infer_s(self) -> float:
        """Time spent in the ``infer`` stage over all frames."""
        return sum(r.stages_ms.get("infer", 0.0) for r in self.records) / 1e3

    def stage_means_ms(self) -> dict[str, float]:
        """Mean time of each stage over the frames where it ran, ms."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for r in self.records:
            for stage, ms in r.stages_ms.items():
                if stage == "total":
                    continue
                sums[stage] = sums.get(stage, 0.0) + ms
                counts[stage] = counts.get(stage, 0) + 1
        return {stage: sums[stage] / counts[stage] for stage in sorted(sums)}


class ReplayClock:
    """The gateway clock during a replay: set to each frame's stream time."""

    def __init__(self) -> None:
        self.now = CLOCK_ORIGIN

    def __call__(self) -> float:
        return self.now


def frame_payload(image_bytes: bytes, shape: Sequence[int], ts: float) -> bytes:
    """A msgpack frame envelope of raw BGR bytes, as a device would publish it."""
    doc = {"ts": ts, "content_type": "image/x-raw", "data": image_bytes, "shape": list(shape)}
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def evaluated_app(cfg: StreamedgeConfig, key: str, app: str | None = None) -> AppConfig:
    """The application a replay evaluates on the stream ``key``.

    Raises:
        ConfigError: no rule matches ``key``, it has no applications, or none is named ``app``.
    """
    rule = cfg.stream_for(key)
    if rule is None:
        msg = f"no stream rule matches {key!r}; add one (e.g. match: '*/camera*')"
        raise ConfigError(msg)
    if not rule.apps:
        msg = f"the stream rule for {key!r} ({rule.match!r}) has no applications to evaluate"
        raise ConfigError(msg)
    if app is None:
        return rule.apps[0]
    for candidate in rule.apps:
        if candidate.name == app:
            return candidate
    names = ", ".join(a.name for a in rule.apps)
    msg = f"the stream rule for {key!r} has no app {app!r} (apps: {names})"
    raise ConfigError(msg)


def model_config_of(cfg: StreamedgeConfig, app: AppConfig) -> ModelConfig:
    """The configuration of the model an application uses."""
    return next(m for m in cfg.models if m.name == app.model)


def every_frame_config(
    cfg: StreamedgeConfig, streams: Sequence[StreamSpec], app: str | None = None
) -> StreamedgeConfig:
    """The infer-every-frame baseline of a configuration.

    The same models, inference tiers and limits, and one stream rule for
    every stream with the evaluated application and no filter and no cache:
    every frame goes to the model.
    """
    chosen = evaluated_app(cfg, streams[0].key, app)
    rule = StreamConfig(
        match="*",
        kind="frame",
        filters=[],
        apps=[chosen.model_copy(update={"cache": None})],
    )
    return cfg.model_copy(update={"streams": [rule], "caches": []})


async def replay(
    cfg: StreamedgeConfig,
    streams: Sequence[StreamSpec],
    *,
    name: str = "config",
    app: str | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay streams through a pipeline built from ``cfg``; record every frame.

    Args:
        cfg: a gateway configuration (models, caches, stream rules, tiers).
        streams: the camera streams, replayed interleaved in time order.
        name: a label for the result.
        app: the application whose answers are recorded (default: the first
            app of the rule matching the first stream).
        progress: advanced once per frame.

    Raises:
        ConfigError: a stream matches no rule, or the rules have no app to evaluate.
        ValueError: no streams.
    """
    if not streams:
        raise ValueError("replay needs at least one stream")
    progress = progress or NoProgress()
    chosen = evaluated_app(cfg, streams[0].key, app)
    clock = ReplayClock()
    gateway = Gateway(cfg, clock=clock, wall_clock=clock)
    await gateway.build()
    assert gateway.router is not None  # noqa: S101  # set by build()
    rules: list[RuleRuntime] = []
    for spec in streams:
        rule = gateway.rule_for(StreamKey(spec.device, spec.stream))
        if rule is None:
            msg = f"no stream rule matches {spec.key!r}"
            raise ConfigError(msg)
        rules.append(rule)
    outbox: list[OutboundMessage] = []

    async def publish(message: OutboundMessage) -> None:
        outbox.append(message)

    processor = Processor(
        topics=gateway.topics,
        decoder=PayloadDecoder(max_frame_pixels=cfg.limits.max_frame_pixels, wall_clock=clock),
        infer=gateway.router.infer,
        publish=publish,
        stats=gateway.stats,
        clock=clock,
        wall_clock=clock,
        max_streams=cfg.limits.max_streams,
        qos_out=cfg.mqtt.qos_out,
    )
    records: list[FrameRecord] = []
    async with gateway.router:
        for position, frame in interleave(streams):
            spec = streams[position]
            key = StreamKey(spec.device, spec.stream)
            image = frame.image
            payload = frame_payload(image.tobytes(), image.shape, frame.ts)
            clock.now = CLOCK_ORIGIN + frame.ts
            raw = RawMessage(stream=key, payload=payload, received_at=clock.now)
            outbox.clear()
            cpu = time.process_time()
            start = time.perf_counter()
            outcome = await processor.handle(raw, rules[position])
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            doc = _answer_doc(outbox, gateway.topics.output(key), chosen.name)
            records.append(_record(position, frame.index, frame.ts, outcome, doc, wall, cpu))
            progress.advance()
    return ReplayResult(
        name=name,
        streams=list(streams),
        app=chosen.name,
        model=str(model_info(model_config_of(cfg, chosen)).ref),
        records=records,
    )


def _answer_doc(outbox: Sequence[OutboundMessage], topic: str, app: str) -> JSON | None:
    for message in outbox:
        if message.topic != topic:
            continue
        doc = json.loads(message.payload)
        if isinstance(doc, dict) and doc.get("app") == app:
            return doc
    return None


def _record(
    position: int,
    index: int,
    ts: float,
    outcome: Outcome,
    doc: JSON | None,
    wall: float,
    cpu: float,
) -> FrameRecord:
    kind = outcome.kind
    reason = outcome.reason
    tier = str(doc["tier"]) if doc is not None and "tier" in doc else None
    if kind == "filtered" or tier == "filter":
        level = "filter"
    elif kind == "dropped":
        level = "dropped"
    else:
        level = tier or outcome.tier or "dropped"
    stages: dict[str, float] = {}
    distance = None
    answer = None
    if doc is not None:
        latency = doc.get("latency_ms")
        if isinstance(latency, dict):
            stages = {str(k): float(v) for k, v in latency.items() if isinstance(v, int | float)}
        raw_distance = doc.get("distance")
        distance = float(raw_distance) if isinstance(raw_distance, int | float) else None
        raw_answer = doc.get("answer")
        answer = raw_answer if isinstance(raw_answer, dict) else None
    return FrameRecord(
        stream=position,
        index=index,
        ts=ts,
        outcome=kind,
        level=level,
        tier=tier,
        answer=answer,
        reason=reason,
        wall_s=wall,
        stages_ms=stages,
        distance=distance,
        cpu_s=cpu,
    )
