"""What happens to one message: decode → filter → embed → lookup → infer → publish.

:meth:`Processor.handle` returns exactly one :class:`Outcome` per message,
so the books always balance: received = answered + filtered + dropped +
pending. Filter and cache errors fail open (pass / miss); a model failure
drops the message with the reason ``inference_failed``.

**Accuracy guard.** A cache's ``accuracy.recheck_fraction`` of hits is
re-run on the inference tiers *after* the reused answer was published (a
background task, at most ``accuracy.max_concurrent_rechecks`` per namespace;
a hit picked beyond that is skipped and counted). An answer from an
authoritative tier is compared with the reused one; the outcome goes to the
cache's threshold adjuster (:meth:`ApproximateCache.record_recheck`, which
tightens the policy when agreement falls below the namespace's target and
loosens it slowly when well above) and to :meth:`Stats.recheck`.

**Single flight.** Concurrent misses of one namespace share one inference
when their embeddings are identical or within the policy's current hit
distance of each other (:meth:`SingleFlight.run_near`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from streamedge.caches.cache import ApproximateCache
from streamedge.caches.store import is_peer_origin
from streamedge.config import StreamConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import CacheError, DecodeError, DeferredError, InferenceError, PublishError
from streamedge.filters.chain import FilterChain
from streamedge.filters.recalibration import Decision, Recalibrator
from streamedge.models.factory import ModelInfo
from streamedge.pipeline.late import error_payload, error_reason
from streamedge.pipeline.singleflight import SingleFlight
from streamedge.records import (
    JSON,
    CacheHit,
    Clock,
    Frame,
    InferenceRequest,
    InferenceResult,
    Item,
    ModelInput,
    OutboundMessage,
    RawMessage,
    Reading,
    ReplyContext,
    StreamKey,
    Tier,
    Vector,
    Window,
)
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme

logger = logging.getLogger(__name__)

Publish = Callable[[OutboundMessage], Awaitable[None]]
Infer = Callable[[InferenceRequest], Awaitable[InferenceResult]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one message ended."""

    kind: Literal["answered", "filtered", "dropped", "deferred"]
    reason: str | None = None
    tier: str | None = None


@dataclass(slots=True)
class AppRuntime:
    """One application on a stream rule: its model and (optional) cache."""

    name: str
    info: ModelInfo
    cache: ApproximateCache | None


@dataclass(slots=True)
class RuleRuntime:
    """A stream rule with its built filters and applications."""

    index: int
    cfg: StreamConfig
    chain: FilterChain
    apps: list[AppRuntime]
    window_fields: tuple[str, ...] | None
    window_size: int
    recalibrator: Recalibrator | None = None
    """Online recalibration of the chain's thresholds (None: off)."""


@dataclass(slots=True)
class _Last:
    payload: JSON
    at: float


@dataclass(slots=True)
class StreamState:
    """What the pipeline remembers about one stream."""

    rule: RuleRuntime
    fields: tuple[str, ...] | None = None
    window: deque[list[float]] = field(default_factory=deque)
    last: dict[str, _Last] = field(default_factory=dict)


class _Timer:
    """Per-stage durations of one message, in seconds."""

    __slots__ = ("stages",)

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def _dumps(doc: JSON) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class Processor:
    """Handles one message at a time for a shard worker (stateless across shards)."""

    def __init__(
        self,
        *,
        topics: TopicScheme,
        decoder: PayloadDecoder,
        infer: Infer,
        publish: Publish,
        stats: Stats,
        clock: Clock,
        wall_clock: Callable[[], float] = time.time,
        max_streams: int = 10_000,
        qos_out: int = 0,
        error_answers: bool = False,
    ) -> None:
        self._topics = topics
        self._decoder = decoder
        self._infer = infer
        self._publish = publish
        self._stats = stats
        self._clock = clock
        self._wall = wall_clock
        self._max_streams = max_streams
        self._qos_out = qos_out
        self._error_answers = error_answers
        self._states: OrderedDict[StreamKey, StreamState] = OrderedDict()
        self._flights: SingleFlight[InferenceResult] = SingleFlight()
        self._rechecks: set[asyncio.Task[None]] = set()

    @property
    def flights(self) -> SingleFlight[InferenceResult]:
        """The miss de-duplicator (``shared``/``near_shared`` counters)."""
        return self._flights

    @property
    def rechecks_running(self) -> int:
        """Accuracy re-checks in progress."""
        return len(self._rechecks)

    async def drain_rechecks(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for running re-checks, then cancel the rest.

        Returns:
            How many were cancelled.
        """
        tasks = list(self._rechecks)
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return len(pending)

    @property
    def streams(self) -> int:
        """Streams with state."""
        return len(self._states)

    def state_for(self, key: StreamKey, rule: RuleRuntime) -> StreamState:
        """A stream's state (created on first use, LRU-bounded)."""
        state = self._states.get(key)
        if state is None or state.rule is not rule:
            state = StreamState(rule=rule)
            self._states[key] = state
            while len(self._states) > self._max_streams:
                old_key, old = self._states.popitem(last=False)
                for flt in old.rule.chain.filters:
                    flt.reset(old_key)
                if old.rule.recalibrator is not None:
                    old.rule.recalibrator.forget(old_key)
        else:
            self._states.move_to_end(key)
        return state

    # -- the stages -------------------------------------------------------------
    async def handle(self, raw: RawMessage, rule: RuleRuntime) -> Outcome:
        """Process one message to its outcome, recording per-stage times."""
        timer = _Timer()
        try:
            return await self._handle(raw, rule, timer)
        finally:
            for stage, seconds in timer.stages.items():
                self._stats.stage(stage, seconds)

    async def _handle(self, raw: RawMessage, rule: RuleRuntime, timer: _Timer) -> Outcome:
        key = raw.stream
        skey = str(key)
        state = self.state_for(key, rule)

        start = time.perf_counter()
        try:
            item = await self._decode(raw, rule.cfg)
        except DecodeError as exc:
            logger.warning("dropping %s from %s: %s", exc.reason, skey, exc)
            return Outcome("dropped", exc.reason)
        finally:
            timer.add("decode", time.perf_counter() - start)

        start = time.perf_counter()
        now = self._clock()
        if raw.request:  # a device asked for an answer; filters only thin streams
            dropped_by = None
        else:
            chained = rule.chain.check(key, item, now)
            dropped_by = chained.dropped_by
            self._count_filters(rule.chain, dropped_by, chained.failures)
        timer.add("filter", time.perf_counter() - start)
        decision: Decision | None = None
        repeated: JSON | None = None
        recal = rule.recalibrator
        if recal is not None and isinstance(item, Frame) and rule.apps:
            # A calibration window, or a sampled check of a drop: the model answers anyway.
            decision = recal.decide(key, item, dropped=dropped_by is not None, now=now)
            if decision is not None and dropped_by is not None:
                last = state.last.get(rule.apps[0].name)
                repeated = last.payload.get("answer") if last is not None else None
                dropped_by = None
        if dropped_by is not None:
            if isinstance(item, Frame):
                self._stats.saved_bytes(item.encoded_bytes)
            return await self._republish(raw, state, dropped_by, timer)

        if not rule.apps:
            return await self._forward(raw, item, timer)

        model_input: ModelInput
        if isinstance(item, Reading):
            window = self._windowed(state, item)
            if isinstance(window, str):
                return Outcome("dropped", window)
            model_input = window
        else:
            model_input = item

        first_result: InferenceResult | None = None
        first_tier: str | None = None
        vectors: dict[str, Vector] = {}
        for app in rule.apps:
            if app.info.input_kind != ("frame" if isinstance(model_input, Frame) else "window"):
                logger.warning(
                    "app %s on %s: model %s takes %ss",
                    app.name,
                    skey,
                    app.info.ref,
                    app.info.input_kind,
                )
                return Outcome("dropped", "wrong_input_kind")
            try:
                result, distance, age, recheck = await self._answer(
                    app, raw, model_input, vectors, timer
                )
            except DeferredError as exc:
                logger.info("request of %s (%s) stored for later: %s", skey, app.name, exc)
                return Outcome("deferred", "store_and_forward")
            except InferenceError as exc:
                logger.warning("no answer for %s (%s): %s", skey, app.name, exc)
                if self._error_answers:
                    doc = error_payload(
                        key,
                        app=app.name,
                        model=str(app.info.ref),
                        reason=error_reason(exc),
                        detail=str(exc),
                        ts=item.ts,
                        latency_s=self._clock() - raw.received_at,
                    )
                    with contextlib.suppress(PublishError):
                        await self._send(raw, key, doc, timer)
                return Outcome("dropped", "inference_failed")
            payload = self._payload(raw, item, app, result, distance, age, timer)
            try:
                await self._send(raw, key, payload, timer)
            except PublishError as exc:
                logger.warning("answer for %s not published: %s", skey, exc)
                return Outcome("dropped", "publish_failed")
            state.last[app.name] = _Last(payload, self._clock())
            if recheck is not None:
                self._start_recheck(app, recheck, raw, model_input)
            if first_result is None:
                first_result, first_tier = result, payload["tier"]
        if first_result is not None:
            for name in rule.chain.observe(key, item, first_result):
                self._stats.filter_result(name, "error", reason="observe")
            if recal is not None and decision is not None and isinstance(item, Frame):
                recal.answered(
                    key,
                    item,
                    first_result.answer,
                    latency_s=first_result.latency_s,
                    repeated=repeated,
                    decision=decision,
                    authoritative=first_result.tier is not Tier.CACHE,
                )
        return Outcome("answered", tier=first_tier)

    async def _decode(self, raw: RawMessage, cfg: StreamConfig) -> Item:
        kind = cfg.kind
        if kind == "frame" or (kind == "auto" and raw.payload[:2] in (b"\xff\xd8", b"\x89P")):
            # JPEG/PNG decoding takes milliseconds: keep it off the event loop.
            return await asyncio.to_thread(self._decoder.decode, raw, kind)
        return self._decoder.decode(raw, kind)

    def _count_filters(
        self, chain: FilterChain, dropped_by: str | None, failures: list[tuple[str, str]]
    ) -> None:
        reasons = dict(failures)
        for flt in chain.filters:
            if flt.name in reasons:
                self._stats.filter_result(flt.name, "error", reason=reasons[flt.name])
            elif flt.name == dropped_by:
                self._stats.filter_result(flt.name, "drop")
                return
            else:
                self._stats.filter_result(flt.name, "pass")

    def _windowed(self, state: StreamState, reading: Reading) -> Window | str:
        """Append a reading to the stream's window; the window, or a drop reason."""
        rule = state.rule
        if state.fields is None:
            state.fields = rule.window_fields or tuple(sorted(reading.values))
        try:
            row = [reading.values[f] for f in state.fields]
        except KeyError as exc:
            logger.warning("reading from %s lacks field %s", reading.stream, exc)
            return "missing_field"
        state.window.append(row)
        while len(state.window) > rule.window_size:
            state.window.popleft()
        if len(state.window) < rule.window_size:
            return "window_incomplete"
        return Window(
            stream=reading.stream,
            ts=reading.ts,
            fields=state.fields,
            values=np.asarray(state.window, dtype=np.float32),
        )

    async def _answer(
        self,
        app: AppRuntime,
        raw: RawMessage,
        item: ModelInput,
        vectors: dict[str, Vector],
        timer: _Timer,
    ) -> tuple[InferenceResult, float | None, float, CacheHit | None]:
        """A cached or freshly inferred answer, its distance, its age, and the hit to re-check."""
        cache = app.cache
        query = None
        skey = str(raw.stream)
        if cache is not None:
            start = time.perf_counter()
            try:
                emb_key = f"{cache.embedder.name}@{cache.embedder.version}"
                vec = vectors.get(emb_key)
                query = cache.query_for(item, vector=vec)
                vectors[emb_key] = query.vector
                timer.add("embed", time.perf_counter() - start)
                start = time.perf_counter()
                hit: CacheHit | None = await cache.get(query)
            except CacheError as exc:
                logger.warning(
                    "cache %s failed on %s, treating as a miss: %s", cache.namespace, skey, exc
                )
                hit = None
            timer.add("lookup", time.perf_counter() - start)
            self._stats.cache_result(
                # Hits on entries merged from neighbour gateways count at the device level.
                "device" if hit is not None and is_peer_origin(hit.entry.origin) else "application",
                hit=hit is not None,
                stream=skey,
                saved_s=hit.entry.cost_s if hit is not None else 0.0,
                model=str(app.info.ref),
            )
            if hit is not None:
                if isinstance(item, Frame):
                    self._stats.saved_bytes(item.encoded_bytes)
                entry = hit.entry
                result = InferenceResult(
                    model=entry.model,
                    answer=entry.answer,
                    tier=Tier.CACHE,
                    backend=cache.namespace,
                    latency_s=0.0,
                    confidence=entry.confidence,
                )
                recheck = hit if cache.should_recheck() else None
                return result, hit.distance, self._clock() - entry.created_at, recheck

        request = InferenceRequest(
            model=app.info.ref,
            input=item,
            # The device's JPEG/PNG, so remote tiers need not send raw pixels.
            encoded=raw.payload if raw.payload[:2] in (b"\xff\xd8", b"\x89P") else None,
            context=ReplyContext(app=app.name, reply_to=raw.reply_to, correlation=raw.correlation),
        )
        start = time.perf_counter()
        shared = False
        try:
            if cache is not None and query is not None:
                result, shared = await self._flights.run_near(
                    (cache.namespace, query.key),
                    lambda: self._infer(request),
                    # A private namespace's owner is part of the group: devices never
                    # share an inference there, near-identical or not.
                    group=(cache.namespace, query.owner),
                    vector=query.vector,
                    max_distance=cache.hit_distance,
                )
            else:
                result = await self._infer(request)
        except DeferredError:
            raise
        except InferenceError:
            # Per-tier calls, failures and latency are counted by the tier router;
            # "all" counts requests that no tier answered.
            self._stats.inference("all", time.perf_counter() - start, ok=False, stream=skey)
            raise
        timer.add("infer", time.perf_counter() - start)
        if shared and cache is not None:
            cache.shared_misses += 1
        # Only tiers configured as authoritative for the model write back; a shared
        # answer was stored by the call that ran it.
        if cache is not None and query is not None and result.authoritative and not shared:
            try:
                await cache.put(query, result, origin=skey)
            except CacheError as exc:
                logger.warning("cache %s could not store an answer: %s", cache.namespace, exc)
        return result, None, 0.0, None

    # -- the accuracy guard -----------------------------------------------------
    def _start_recheck(
        self, app: AppRuntime, hit: CacheHit, raw: RawMessage, item: ModelInput
    ) -> None:
        """Re-run a published hit on the tiers in the background (bounded per namespace)."""
        cache = app.cache
        if cache is None:
            return
        counts = cache.recheck_counts
        counts["picked"] += 1
        if counts["running"] >= cache.max_concurrent_rechecks:
            counts["skipped_busy"] += 1
            return
        counts["started"] += 1
        counts["running"] += 1
        request = InferenceRequest(
            model=app.info.ref,
            input=item,
            encoded=raw.payload if raw.payload[:2] in (b"\xff\xd8", b"\x89P") else None,
            deferrable=False,  # nobody waits for a late re-check
        )
        task = asyncio.create_task(
            self._recheck(cache, hit, request), name=f"recheck[{cache.namespace}]"
        )
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck(
        self, cache: ApproximateCache, hit: CacheHit, request: InferenceRequest
    ) -> None:
        try:
            result = await self._infer(request)
        except InferenceError as exc:
            cache.recheck_counts["failed"] += 1
            logger.warning("re-check of a hit in %s failed: %s", cache.namespace, exc)
            return
        finally:
            cache.recheck_counts["running"] -= 1
        if not result.authoritative or result.model != cache.model:
            # Only the authoritative tier's answer may judge a reused one.
            cache.recheck_counts["not_authoritative"] += 1
            return
        agreed = cache.record_recheck(hit, result.answer)
        # A hit on an entry merged from a neighbour gateway is device-level reuse.
        level = "device" if is_peer_origin(hit.entry.origin) else "application"
        self._stats.recheck(cache.namespace, agreed=agreed, level=level)

    def _payload(
        self,
        raw: RawMessage,
        item: Item,
        app: AppRuntime,
        result: InferenceResult,
        distance: float | None,
        age: float,
        timer: _Timer,
    ) -> JSON:
        total = self._clock() - raw.received_at
        doc: JSON = {
            "device": raw.stream.device,
            "stream": raw.stream.stream,
            "app": app.name,
            "model": str(result.model),
            "tier": str(result.tier),
            "answer": result.answer,
            "confidence": None if result.confidence is None else round(result.confidence, 4),
            "distance": None if distance is None else round(distance, 5),
            "age_s": round(age, 3),
            "latency_ms": {
                "total": round(total * 1e3, 3),
                **{k: round(v * 1e3, 3) for k, v in timer.stages.items()},
            },
            "ts": item.ts,
        }
        return doc

    async def _send(self, raw: RawMessage, key: StreamKey, payload: JSON, timer: _Timer) -> None:
        start = time.perf_counter()
        if raw.request:
            payload = {**payload, "correlation": correlation_echo(raw.correlation)}
        body = _dumps(payload)
        if not raw.request:
            await self._publish(
                OutboundMessage(topic=self._topics.output(key), payload=body, qos=self._qos_out)
            )
            self._stats.published()
        if raw.reply_to:
            await self._publish(
                OutboundMessage(
                    topic=raw.reply_to, payload=body, qos=self._qos_out, correlation=raw.correlation
                )
            )
            self._stats.published()
        timer.add("publish", time.perf_counter() - start)

    async def _republish(
        self, raw: RawMessage, state: StreamState, dropped_by: str, timer: _Timer
    ) -> Outcome:
        """A filtered input repeats the stream's last answers, tagged tier=filter."""
        if not state.rule.cfg.republish_on_filter or not state.last:
            return Outcome("filtered", dropped_by)
        now = self._clock()
        for last in list(state.last.values()):
            payload = dict(last.payload)
            payload["tier"] = str(Tier.FILTER)
            payload["filtered_by"] = dropped_by
            payload["age_s"] = round(float(payload.get("age_s", 0.0)) + now - last.at, 3)
            payload["latency_ms"] = {
                "total": round((now - raw.received_at) * 1e3, 3),
                **{k: round(v * 1e3, 3) for k, v in timer.stages.items()},
            }
            try:
                await self._send(raw, raw.stream, payload, timer)
            except PublishError:
                return Outcome("dropped", "publish_failed")
        return Outcome("answered", dropped_by, str(Tier.FILTER))

    async def _forward(self, raw: RawMessage, item: Item, timer: _Timer) -> Outcome:
        """No application: forward the decoded reading (or a frame summary)."""
        doc: dict[str, Any] = {
            "device": raw.stream.device,
            "stream": raw.stream.stream,
            "tier": str(Tier.FORWARD),
            "ts": item.ts,
        }
        if isinstance(item, Reading):
            doc["values"] = dict(item.values)
            if item.extra:
                doc["extra"] = dict(item.extra)
        else:
            h, w = item.image.shape[:2]
            doc["frame"] = {"width": w, "height": h, "bytes": item.encoded_bytes}
        try:
            await self._send(raw, raw.stream, doc, timer)
        except PublishError:
            return Outcome("dropped", "publish_failed")
        return Outcome("answered", tier=str(Tier.FORWARD))


def correlation_echo(correlation: bytes | None) -> Any:
    """The request's correlation for the answer's body (3.1.1 has no property for it)."""
    if correlation is None:
        return None
    try:
        return json.loads(correlation)
    except ValueError:
        return correlation.decode(errors="replace")


def rules_summary(rules: Sequence[RuleRuntime]) -> list[JSON]:
    """A description of the stream rules for logs and stats."""
    return [
        {
            "match": r.cfg.match,
            "filters": [f.name for f in r.chain.filters],
            "apps": [
                {
                    "name": a.name,
                    "model": str(a.info.ref),
                    "cache": a.cache.namespace if a.cache else None,
                }
                for a in r.apps
            ],
        }
        for r in rules
    ]
