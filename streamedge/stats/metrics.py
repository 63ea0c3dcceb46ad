"""Counters, latency histograms and sliding windows, with no dependencies.

Everything here is O(1) (or O(log buckets)) per observation and bounded in
memory: histograms have fixed log-spaced buckets, sliding windows a fixed
ring of time slots, and per-stream counters an LRU bound.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from streamedge.records import JSON, Clock

_BOUNDS = [1e-5 * (1.2**i) for i in range(100)]  # 10 µs … ~830 s, 20 % resolution


class Histogram:
    """Log-bucketed latency histogram (seconds) with approximate quantiles."""

    __slots__ = ("_counts", "count", "max", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self._counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """The q-quantile, to within one bucket (20 %)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank and c:
                upper = _BOUNDS[i] if i < len(_BOUNDS) else self.max
                return min(upper, self.max)
        return self.max

    @property
    def mean(self) -> float:
        """Mean duration."""
        return self.sum / self.count if self.count else 0.0

    def summary_ms(self) -> JSON:
        """count, mean, p50, p95, p99 and max in milliseconds."""
        return {
            "count": self.count,
            "mean": round(self.mean * 1e3, 3),
            "p50": round(self.quantile(0.50) * 1e3, 3),
            "p95": round(self.quantile(0.95) * 1e3, 3),
            "p99": round(self.quantile(0.99) * 1e3, 3),
            "max": round(self.max * 1e3, 3),
        }


class SlidingCounter:
    """Counts events per name over the last ``window_s`` seconds in fixed slots."""

    def __init__(self, window_s: float, clock: Clock, slots: int = 60) -> None:
        self._slot_s = window_s / slots
        self._clock = clock
        self._n = slots
        self._slot_ids = [-1] * slots
        self._counts: list[dict[str, int]] = [{} for _ in range(slots)]

    def _slot(self) -> dict[str, int]:
        sid = int(self._clock() // self._slot_s)
        i = sid % self._n
        if self._slot_ids[i] != sid:
            self._slot_ids[i] = sid
            self._counts[i] = {}
        return self._counts[i]

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` events called ``name`` now."""
        slot = self._slot()
        slot[name] = slot.get(name, 0) + n

    def totals(self) -> dict[str, int]:
        """Totals over the window."""
        oldest = int(self._clock() // self._slot_s) - self._n + 1
        out: dict[str, int] = {}
        for sid, counts in zip(self._slot_ids, self._counts, strict=True):
            if sid >= oldest:
                for k, v in counts.items():
                    out[k] = out.get(k, 0) + v
        return out


@dataclass(slots=True)
class StreamCounters:
    """Per-stream counts."""

    received: int = 0
    answered: int = 0
    filtered: int = 0
    dropped: int = 0
    hits: int = 0
    misses: int = 0
    inferences: int = 0
    last_seen: float = 0.0


@dataclass(slots=True)
class TierStats:
    """Calls, failures and latency of one inference tier."""

    calls: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)


@dataclass(slots=True)
class ModelStats:
    """Per-model counts: where its answers came from and what inference cost."""

    hits: int = 0
    misses: int = 0
    calls: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)


def ratio(num: int, den: int) -> float | None:
    """num/den rounded, or None when there is nothing to divide."""
    return round(num / den, 4) if den else None


class Stats:
    """Everything the gateway counts; :meth:`snapshot` renders it as JSON."""

    SCHEMA_VERSION = 1

    def __init__(
        self,
        *,
        gateway: str,
        version: str,
        clock: Clock,
        wall_clock: Callable[[], float],
        window_s: float = 300.0,
        max_streams: int = 10_000,
        per_stream: bool = True,
    ) -> None:
        self.gateway = gateway
        self.version = version
        self._clock = clock
        self._wall = wall_clock
        self._started = clock()
        self._started_wall = wall_clock()
        self._window_s = window_s
        self.messages_in = 0
        self.messages_out = 0
        self.outcomes: dict[str, int] = {"answered": 0, "filtered": 0, "dropped": 0}
        self.drops: dict[str, int] = {}
        self.filters: dict[str, dict[str, int]] = {}
        self.cache: dict[str, dict[str, int]] = {}
        self.tiers: dict[str, TierStats] = {}
        self.models: dict[str, ModelStats] = {}
        self.answers_by_tier: dict[str, int] = {}
        self.stages: dict[str, Histogram] = {}
        self.end_to_end = Histogram()
        self.bytes_in = 0
        self.bytes_not_sent = 0
        self.inference_s_saved = 0.0
        self.errors: dict[str, int] = {}
        self._recent = SlidingCounter(window_s, clock)
        self._per_stream = per_stream
        self._max_streams = max_streams
        self.streams: OrderedDict[str, StreamCounters] = OrderedDict()
        self.gauges: dict[str, Callable[[], JSON]] = {}
        self.cache_gauges: dict[str, Callable[[], JSON]] = {}
        """Cache levels whose figures are read when a snapshot is taken (``layer``)."""

    # -- observations ---------------------------------------------------------
    def _stream(self, key: str) -> StreamCounters | None:
        if not self._per_stream:
            return None
        sc = self.streams.get(key)
        if sc is None:
            sc = StreamCounters()
            self.streams[key] = sc
            while len(self.streams) > self._max_streams:
                self.streams.popitem(last=False)
        else:
            self.streams.move_to_end(key)
        sc.last_seen = self._wall()
        return sc

    def received(self, stream: str | None, nbytes: int) -> None:
        """A transport delivered a message."""
        self.messages_in += 1
        self.bytes_in += nbytes
        self._recent.add("in")
        if stream is not None and (sc := self._stream(stream)) is not None:
            sc.received += 1

    def dropped(self, reason: str, stream: str | None = None) -> None:
        """A message ended without an answer, for a counted reason."""
        self.outcomes["dropped"] += 1
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self._recent.add("dropped")
        if stream is not None and (sc := self._stream(stream)) is not None:
            sc.dropped += 1

    def filtered(self, stream: str) -> None:
        """A message was filtered and no earlier answer was republished."""
        self.outcomes["filtered"] += 1
        self._recent.add("filtered")
        if (sc := self._stream(stream)) is not None:
            sc.filtered += 1

    def answered(self, stream: str, tier: str, e2e_s: float) -> None:
        """A message got its answer(s) published."""
        self.outcomes["answered"] += 1
        self.answers_by_tier[tier] = self.answers_by_tier.get(tier, 0) + 1
        self.end_to_end.observe(e2e_s)
        self._recent.add("answered")
        if (sc := self._stream(stream)) is not None:
            sc.answered += 1

    def published(self, n: int = 1) -> None:
        """Answers handed to the transport."""
        self.messages_out += n

    def filter_result(self, name: str, verdict: str) -> None:
        """One filter's verdict (pass / drop / error)."""
        per = self.filters.setdefault(name, {"pass": 0, "drop": 0, "error": 0})
        per[verdict] = per.get(verdict, 0) + 1

    def _model(self, model: str | None) -> ModelStats | None:
        if model is None:
            return None
        ms = self.models.get(model)
        if ms is None:
            ms = self.models[model] = ModelStats()
        return ms

    def cache_result(
        self,
        level: str,
        *,
        hit: bool,
        stream: str | None = None,
        saved_s: float = 0.0,
        model: str | None = None,
    ) -> None:
        """A cache lookup at a level (layer / application / device)."""
        if (ms := self._model(model)) is not None:
            if hit:
                ms.hits += 1
            else:
                ms.misses += 1
        per = self.cache.setdefault(level, {"hits": 0, "misses": 0})
        per["hits" if hit else "misses"] += 1
        self._recent.add(f"{level}.{'hit' if hit else 'miss'}")
        if hit:
            self.inference_s_saved += saved_s
        if stream is not None and (sc := self._stream(stream)) is not None:
            if hit:
                sc.hits += 1
            else:
                sc.misses += 1

    def inference(
        self,
        tier: str,
        seconds: float,
        *,
        ok: bool,
        stream: str | None = None,
        model: str | None = None,
    ) -> None:
        """One call to an inference tier."""
        if (ms := self._model(model)) is not None:
            ms.calls += 1
            if ok:
                ms.latency.observe(seconds)
            else:
                ms.failures += 1
        ts = self.tiers.setdefault(tier, TierStats())
        ts.calls += 1
        if ok:
            ts.latency.observe(seconds)
        else:
            ts.failures += 1
        if ok and stream is not None and (sc := self._stream(stream)) is not None:
            sc.inferences += 1

    def stage(self, name: str, seconds: float) -> None:
        """Time spent in one pipeline stage."""
        hist = self.stages.get(name)
        if hist is None:
            hist = self.stages[name] = Histogram()
        hist.observe(seconds)

    def saved_bytes(self, nbytes: int) -> None:
        """Bytes that did not need to go upstream (filtered or reused)."""
        self.bytes_not_sent += nbytes

    def error(self, stage: str) -> None:
        """An unexpected error contained at the per-message boundary."""
        self.errors[stage] = self.errors.get(stage, 0) + 1

    # -- rendering ------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages received but not yet answered, filtered or dropped."""
        return self.messages_in - sum(self.outcomes.values())

    def snapshot(self, *, device: str | None = None, stream: str | None = None) -> JSON:
        """The JSON document published on ``<prefix>/stats``."""
        recent = self._recent.totals()
        cache: JSON = {}
        for level, per in self.cache.items():
            rh, rm = recent.get(f"{level}.hit", 0), recent.get(f"{level}.miss", 0)
            cache[level] = {
                **per,
                "hit_ratio": ratio(per["hits"], per["hits"] + per["misses"]),
                "window_hit_ratio": ratio(rh, rh + rm),
            }
        for level, gauge in self.cache_gauges.items():
            cache[level] = {**cache.get(level, {}), **gauge()}
        doc: JSON = {
            "schema_version": self.SCHEMA_VERSION,
            "gateway": self.gateway,
            "version": self.version,
            "ts": round(self._wall(), 3),
            "uptime_s": round(self._clock() - self._started, 1),
            "window_s": self._window_s,
            "messages": {
                "in": self.messages_in,
                "out": self.messages_out,
                "pending": self.pending,
                **self.outcomes,
                "bytes_in": self.bytes_in,
            },
            "window": {k: recent.get(k, 0) for k in ("in", "answered", "filtered", "dropped")},
            "drops": dict(sorted(self.drops.items())),
            "filters": self.filters,
            "cache": cache,
            "answers_by_tier": self.answers_by_tier,
            "inference": {
                tier: {
                    "calls": ts.calls,
                    "failures": ts.failures,
                    "latency_ms": ts.latency.summary_ms(),
                }
                for tier, ts in self.tiers.items()
            },
            "models": {
                name: {
                    "hits": ms.hits,
                    "misses": ms.misses,
                    "hit_ratio": ratio(ms.hits, ms.hits + ms.misses),
                    "calls": ms.calls,
                    "failures": ms.failures,
                    "latency_ms": ms.latency.summary_ms(),
                }
                for name, ms in sorted(self.models.items())
            },
            "latency_ms": {
                "end_to_end": self.end_to_end.summary_ms(),
                "stages": {k: h.summary_ms() for k, h in sorted(self.stages.items())},
            },
            "saved": {
                "inference_s": round(self.inference_s_saved, 3),
                "bytes_not_sent": self.bytes_not_sent,
            },
            "errors": self.errors,
        }
        for name, gauge in self.gauges.items():
            doc[name] = gauge()
        if self._per_stream:
            doc["streams_tracked"] = len(self.streams)
            selected = {
                key: sc
                for key, sc in self.streams.items()
                if (device is None or key.split("/", 1)[0] == device)
                and (stream is None or key.split("/", 1)[1] == stream)
            }
            if device is not None or stream is not None:
                doc["streams"] = {
                    key: {
                        "received": sc.received,
                        "answered": sc.answered,
                        "filtered": sc.filtered,
                        "dropped": sc.dropped,
                        "hits": sc.hits,
                        "misses": sc.misses,
                        "inferences": sc.inferences,
                        "hit_ratio": ratio(sc.hits, sc.hits + sc.misses),
                        "last_seen": round(sc.last_seen, 3),
                    }
                    for key, sc in selected.items()
                }
        return doc


def finite(x: float) -> float:
    """Replace NaN/inf by 0 for JSON."""
    return x if math.isfinite(x) else 0.0
