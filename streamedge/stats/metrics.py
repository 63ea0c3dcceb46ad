"""Counters, latency histograms and sliding windows, with no dependencies.

Everything here is O(1) (or O(log buckets)) per observation and bounded in
memory: histograms have fixed log-spaced buckets, sliding windows a fixed
ring of time slots over a capped set of names, per-stream counters an LRU
bound and per-namespace accuracy counters a fixed cap.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streamedge.records import JSON, Clock

#: The cache levels of the snapshot, always present (zeros where nothing feeds one yet).
LEVELS = ("layer", "application", "device")

#: Bucket bounds (seconds) exported to Prometheus: each is also a bound of the fine
#: histogram, so the exported cumulative counts are exact, not interpolated.
PROMETHEUS_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# 10 µs … ~830 s in 20 % steps, plus the exported bounds (they add ~10 % more buckets).
BOUNDS: tuple[float, ...] = tuple(
    sorted({1e-5 * (1.2**i) for i in range(100)} | set(PROMETHEUS_BOUNDS))
)


def _quantile(counts: Iterable[int], total: int, q: float, hi: float) -> float:
    """The q-quantile of bucketed counts, interpolated inside its bucket."""
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    lower = 0.0
    for i, c in enumerate(counts):
        upper = BOUNDS[i] if i < len(BOUNDS) else hi
        if c and seen + c >= rank:
            upper = min(upper, hi)
            lower = min(lower, upper)
            return lower + (upper - lower) * max(rank - seen, 0.0) / c
        seen += c
        lower = upper
    return hi


@dataclass(frozen=True, slots=True)
class HistogramMark:
    """A histogram's cumulative state at one moment (for per-interval deltas)."""

    counts: tuple[int, ...]
    count: int
    sum: float


class Histogram:
    """Log-bucketed latency histogram (seconds) with approximate quantiles."""

    __slots__ = ("_counts", "count", "max", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration (O(log buckets))."""
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        self._counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def quantile(self, q: float) -> float:
        """The q-quantile, to within one bucket (20 %), interpolated linearly."""
        return _quantile(self._counts, self.count, q, self.max)

    @property
    def mean(self) -> float:
        """Mean duration."""
        return self.sum / self.count if self.count else 0.0

    def cumulative(self, bounds: Iterable[float]) -> list[tuple[float, int]]:
        """Observations ≤ each bound (exact for bounds in :data:`BOUNDS`)."""
        out: list[tuple[float, int]] = []
        seen = 0
        i = 0
        for bound in bounds:
            stop = bisect.bisect_right(BOUNDS, bound)
            while i < stop:
                seen += self._counts[i]
                i += 1
            out.append((bound, seen))
        return out

    def mark(self) -> HistogramMark:
        """The cumulative state now (O(buckets))."""
        return HistogramMark(tuple(self._counts), self.count, self.sum)

    def since(self, mark: HistogramMark | None) -> Histogram:
        """A histogram of what was observed after ``mark``."""
        out = Histogram()
        if mark is None:
            out._counts = list(self._counts)
        else:
            out._counts = [a - b for a, b in zip(self._counts, mark.counts, strict=True)]
        out.count = self.count - (mark.count if mark else 0)
        out.sum = self.sum - (mark.sum if mark else 0.0)
        top = max((i for i, c in enumerate(out._counts) if c), default=-1)
        out.max = 0.0 if top < 0 else min(BOUNDS[top] if top < len(BOUNDS) else self.max, self.max)
        return out

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
    """Counts events per name over the last ``window_s`` seconds in fixed slots.

    ``add`` is O(1): it touches only the slot of the current time, clearing it
    first when it last held an older period (a ring). Memory is
    ``slots × max_names`` integers at most, whatever the event rate or run
    time; names past ``max_names`` are counted under ``"other"``.
    """

    __slots__ = ("_clock", "_counts", "_max_names", "_n", "_names", "_slot_ids", "_slot_s")

    def __init__(
        self, window_s: float, clock: Clock, slots: int = 60, max_names: int = 256
    ) -> None:
        if window_s <= 0 or slots < 1:
            raise ValueError("a sliding window needs window_s > 0 and at least one slot")
        self._slot_s = window_s / slots
        self._clock = clock
        self._n = slots
        self._slot_ids = [-1] * slots
        self._counts: list[dict[str, int]] = [{} for _ in range(slots)]
        self._names: set[str] = set()
        self._max_names = max_names

    @property
    def window_s(self) -> float:
        """The longest window this counter can answer for."""
        return self._slot_s * self._n

    @property
    def slot_s(self) -> float:
        """The resolution of the window."""
        return self._slot_s

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` events called ``name`` now (O(1))."""
        if name not in self._names:
            if len(self._names) >= self._max_names:
                name = "other"
            self._names.add(name)
        sid = int(self._clock() // self._slot_s)
        i = sid % self._n
        if self._slot_ids[i] != sid:
            self._slot_ids[i] = sid
            self._counts[i].clear()
        slot = self._counts[i]
        slot[name] = slot.get(name, 0) + n

    def totals(self, window_s: float | None = None) -> dict[str, int]:
        """Totals over the window, or over the last ``window_s`` seconds of it
        (rounded up to whole slots, at most the full window)."""
        slots = self._n
        if window_s is not None:
            slots = max(1, min(self._n, math.ceil(window_s / self._slot_s - 1e-9)))
        now = int(self._clock() // self._slot_s)
        oldest = now - slots + 1
        out: dict[str, int] = {}
        for sid, counts in zip(self._slot_ids, self._counts, strict=True):
            if oldest <= sid <= now:
                for k, v in counts.items():
                    out[k] = out.get(k, 0) + v
        return out

    def effective_window(self, window_s: float | None = None) -> float:
        """The window length :meth:`totals` answers for with this argument."""
        if window_s is None:
            return self.window_s
        slots = max(1, min(self._n, math.ceil(window_s / self._slot_s - 1e-9)))
        return slots * self._slot_s


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

    def as_json(self) -> JSON:
        """The stream's entry in a snapshot."""
        return {
            "received": self.received,
            "answered": self.answered,
            "filtered": self.filtered,
            "dropped": self.dropped,
            "hits": self.hits,
            "misses": self.misses,
            "inferences": self.inferences,
            "hit_ratio": ratio(self.hits, self.hits + self.misses),
            "last_seen": round(self.last_seen, 3),
        }


@dataclass(slots=True)
class TierStats:
    """Calls, failures and latency of one inference tier."""

    calls: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)
    escalations: int = 0


@dataclass(slots=True)
class ModelStats:
    """Per-model counts: where its answers came from and what inference cost."""

    hits: int = 0
    misses: int = 0
    calls: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)


@dataclass(slots=True)
class Agreement:
    """Re-checked cache hits and how many agreed with the authoritative tier."""

    checked: int = 0
    agreed: int = 0

    def as_json(self) -> JSON:
        """checked, agreed and their ratio."""
        return {
            "checked": self.checked,
            "agreed": self.agreed,
            "agreement": ratio(self.agreed, self.checked),
        }


def ratio(num: int, den: int) -> float | None:
    """num/den rounded, or None when there is nothing to divide."""
    return round(num / den, 4) if den else None


def _matches_model(name: str, model: str) -> bool:
    """``model`` names a model by ``name@version`` or by ``name`` alone."""
    return name == model or name.split("@", 1)[0] == model


class Stats:
    """Everything the gateway counts; :meth:`snapshot` renders it as JSON.

    The observation methods are called on the event loop by the pipeline (and
    by the caches for :meth:`cache_result` and :meth:`recheck`); each is O(1)
    or O(log buckets).
    """

    SCHEMA_VERSION = 2
    MAX_NAMESPACES = 256

    def __init__(
        self,
        *,
        gateway: str,
        version: str,
        clock: Clock,
        wall_clock: Callable[[], float],
        window_s: float = 300.0,
        window_slots: int = 60,
        max_streams: int = 10_000,
        per_stream: bool = True,
    ) -> None:
        self.gateway = gateway
        self.version = version
        self.clock = self._clock = clock
        self.wall_clock = self._wall = wall_clock
        self._started = clock()
        self.started_wall = wall_clock()
        self._window_s = window_s
        self.messages_in = 0
        self.messages_out = 0
        self.outcomes: dict[str, int] = {"answered": 0, "filtered": 0, "dropped": 0}
        self.deferred = 0
        self.drops: dict[str, int] = {}
        self.filters: dict[str, dict[str, int]] = {}
        self.filter_reasons: dict[str, dict[str, int]] = {}
        self.cache: dict[str, dict[str, int]] = {lv: {"hits": 0, "misses": 0} for lv in LEVELS}
        self.accuracy: dict[str, Agreement] = {lv: Agreement() for lv in LEVELS}
        self.namespaces: dict[str, tuple[str, Agreement]] = {}
        self.tiers: dict[str, TierStats] = {}
        self.models: dict[str, ModelStats] = {}
        self.answers_by_tier: dict[str, int] = {}
        self.stages: dict[str, Histogram] = {}
        self.end_to_end = Histogram()
        self.bytes_in = 0
        self.bytes_not_sent = 0
        self.inference_s_saved = 0.0
        self.errors: dict[str, int] = {}
        self.requests: dict[str, int] = {"answered": 0, "invalid": 0}
        self.recent = SlidingCounter(window_s, clock, slots=window_slots)
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
        self.recent.add("in")
        if stream is not None and (sc := self._stream(stream)) is not None:
            sc.received += 1

    def dropped(self, reason: str, stream: str | None = None) -> None:
        """A message ended without an answer, for a counted reason."""
        self.outcomes["dropped"] += 1
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.recent.add("dropped")
        if stream is not None and (sc := self._stream(stream)) is not None:
            sc.dropped += 1

    def filtered(self, stream: str) -> None:
        """A message was filtered and no earlier answer was republished."""
        self.outcomes["filtered"] += 1
        self.recent.add("filtered")
        if (sc := self._stream(stream)) is not None:
            sc.filtered += 1

    def answered(self, stream: str, tier: str, e2e_s: float) -> None:
        """A message got its answer(s) published."""
        self.outcomes["answered"] += 1
        self.answers_by_tier[tier] = self.answers_by_tier.get(tier, 0) + 1
        self.end_to_end.observe(e2e_s)
        self.recent.add("answered")
        self.recent.add(f"answer.{tier}")
        if (sc := self._stream(stream)) is not None:
            sc.answered += 1

    def deferred_to_store(self, stream: str) -> None:
        """A message's request was stored to be answered later (store-and-forward).

        For this process the message has ended (``in = answered + filtered +
        dropped + deferred + pending``); its late answer, possibly from a later
        run, is counted by the router's ``store_and_forward`` gauge.
        """
        self.deferred += 1
        self._stream(stream)

    def escalation(self, tier: str) -> None:
        """An answer of ``tier`` was hard and went on to a stronger tier."""
        self.tiers.setdefault(tier, TierStats()).escalations += 1

    def published(self, n: int = 1) -> None:
        """Answers handed to the transport."""
        self.messages_out += n

    def filter_result(self, name: str, verdict: str, *, reason: str | None = None) -> None:
        """One filter's verdict (pass / drop / error); an error's ``reason`` is counted too:
        ``frame_channels``, ``frame_dtype`` ... (unreadable frames), ``exception``, ``observe``."""
        per = self.filters.setdefault(name, {"pass": 0, "drop": 0, "error": 0})
        per[verdict] = per.get(verdict, 0) + 1
        if reason is not None:
            reasons = self.filter_reasons.setdefault(name, {})
            if reason not in reasons and len(reasons) >= 32:
                reason = "other"  # bounded: reasons come from a small set in practice
            reasons[reason] = reasons.get(reason, 0) + 1

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
        """A cache lookup at a level: ``layer``, ``application`` or ``device``.

        ``saved_s`` is the inference time a hit saved (the cached entry's cost).
        A ``layer`` lookup is counted per model run, not per message, so levels
        are reported side by side and never summed.

        Raises:
            ValueError: ``level`` is not one of :data:`LEVELS`.
        """
        per = self.cache.get(level)
        if per is None:
            raise ValueError(f"unknown cache level {level!r}; expected one of {LEVELS}")
        if (ms := self._model(model)) is not None:
            if hit:
                ms.hits += 1
            else:
                ms.misses += 1
        per["hits" if hit else "misses"] += 1
        self.recent.add(f"{level}.{'hit' if hit else 'miss'}")
        if hit:
            self.inference_s_saved += saved_s
        if stream is not None and (sc := self._stream(stream)) is not None:
            if hit:
                sc.hits += 1
            else:
                sc.misses += 1

    def recheck(self, namespace: str, *, agreed: bool, level: str = "application") -> None:
        """A re-checked cache hit: whether the authoritative tier gave the same answer.

        The cache calls this for the sample of hits it sends to the model anyway;
        the snapshot reports the agreement (measured reuse accuracy) with its
        sample count, in total, over the window, per level and per namespace.

        Raises:
            ValueError: ``level`` is not one of :data:`LEVELS`.
        """
        total = self.accuracy.get(level)
        if total is None:
            raise ValueError(f"unknown cache level {level!r}; expected one of {LEVELS}")
        entry = self.namespaces.get(namespace)
        if entry is None:
            if len(self.namespaces) >= self.MAX_NAMESPACES - 1:
                namespace = "other"
                entry = self.namespaces.get(namespace)
            if entry is None:
                entry = self.namespaces[namespace] = (level, Agreement())
        for agreement in (total, entry[1]):
            agreement.checked += 1
            agreement.agreed += int(agreed)
        self.recent.add("recheck.checked")
        if agreed:
            self.recent.add("recheck.agreed")

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
        ts = self.tiers.get(tier)
        if ts is None:
            ts = self.tiers[tier] = TierStats()
        ts.calls += 1
        self.recent.add(f"tier.{tier}")
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

    def request(self, *, valid: bool) -> None:
        """A ``stats/get`` request was answered, or refused as invalid."""
        self.requests["answered" if valid else "invalid"] += 1

    # -- rendering ------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages received but not yet answered, filtered or dropped."""
        return self.messages_in - sum(self.outcomes.values()) - self.deferred

    @property
    def uptime_s(self) -> float:
        """Seconds since the stats were created."""
        return self._clock() - self._started

    def counters(self) -> dict[str, float]:
        """Every cumulative counter under a flat dotted name (for per-interval history)."""
        out: dict[str, float] = {
            "in": self.messages_in,
            "out": self.messages_out,
            **self.outcomes,
            "bytes_in": self.bytes_in,
            "saved.bytes_not_sent": self.bytes_not_sent,
            "saved.inference_s": self.inference_s_saved,
        }
        for reason, n in self.drops.items():
            out[f"drops.{reason}"] = n
        for level, per in self.cache.items():
            out[f"cache.{level}.hits"] = per["hits"]
            out[f"cache.{level}.misses"] = per["misses"]
        for tier, n in self.answers_by_tier.items():
            out[f"answers.{tier}"] = n
        for tier, ts in self.tiers.items():
            out[f"inference.{tier}.calls"] = ts.calls
            out[f"inference.{tier}.failures"] = ts.failures
        checked = sum(a.checked for a in self.accuracy.values())
        out["accuracy.checked"] = checked
        out["accuracy.agreed"] = sum(a.agreed for a in self.accuracy.values())
        return out

    def latency_histograms(self) -> dict[str, Histogram]:
        """The end-to-end and per-tier histograms, by name (for per-interval history)."""
        out = {"end_to_end": self.end_to_end}
        for tier, ts in self.tiers.items():
            out[f"inference.{tier}"] = ts.latency
        return out

    def snapshot(
        self,
        *,
        device: str | None = None,
        stream: str | None = None,
        model: str | None = None,
        window_s: float | None = None,
    ) -> JSON:
        """The JSON document published on ``<prefix>/stats`` (see snapshot.schema.json).

        Args:
            device: Include per-stream counters of this device.
            stream: Include per-stream counters of streams with this name.
            model: Restrict ``models``, ``caches`` and ``accuracy.namespaces`` to this
                model (``name`` or ``name@version``).
            window_s: Compute the windowed figures over this many seconds (at most
                ``stats.window_s``, rounded up to the window's resolution).
        """
        recent = self.recent.totals(window_s)
        window = self.recent.effective_window(window_s)
        cache: JSON = {}
        for level, per in self.cache.items():
            rh, rm = recent.get(f"{level}.hit", 0), recent.get(f"{level}.miss", 0)
            cache[level] = {
                **per,
                "hit_ratio": ratio(per["hits"], per["hits"] + per["misses"]),
                "window_hits": rh,
                "window_misses": rm,
                "window_hit_ratio": ratio(rh, rh + rm),
            }
        for level, gauge in self.cache_gauges.items():
            cache[level] = {**cache.get(level, {}), **gauge()}
        answered = self.outcomes["answered"]
        reused = self.answers_by_tier.get("cache", 0) + self.answers_by_tier.get("filter", 0)
        w_answered = recent.get("answered", 0)
        w_reused = recent.get("answer.cache", 0) + recent.get("answer.filter", 0)
        total_checked = sum(a.checked for a in self.accuracy.values())
        total_agreed = sum(a.agreed for a in self.accuracy.values())
        w_checked, w_agreed = recent.get("recheck.checked", 0), recent.get("recheck.agreed", 0)
        namespaces = {
            ns: {"level": level, **agreement.as_json()}
            for ns, (level, agreement) in sorted(self.namespaces.items())
            if model is None or _matches_model(ns.split("/", 1)[0], model)
        }
        doc: JSON = {
            "schema_version": self.SCHEMA_VERSION,
            "gateway": self.gateway,
            "version": self.version,
            "ts": round(self._wall(), 3),
            "started_at": round(self.started_wall, 3),
            "uptime_s": round(self.uptime_s, 1),
            "window_s": round(window, 3),
            "messages": {
                "in": self.messages_in,
                "out": self.messages_out,
                "pending": self.pending,
                **self.outcomes,
                "deferred": self.deferred,
                "bytes_in": self.bytes_in,
            },
            "window": {k: recent.get(k, 0) for k in ("in", "answered", "filtered", "dropped")},
            "drops": dict(sorted(self.drops.items())),
            "filters": {
                k: {**v, **({"reasons": dict(r)} if (r := self.filter_reasons.get(k)) else {})}
                for k, v in sorted(self.filters.items())
            },
            "cache": cache,
            "reuse": {
                "answers": answered,
                "reused": reused,
                "ratio": ratio(reused, answered),
                "window_answers": w_answered,
                "window_reused": w_reused,
                "window_ratio": ratio(w_reused, w_answered),
            },
            "accuracy": {
                "checked": total_checked,
                "agreed": total_agreed,
                "agreement": ratio(total_agreed, total_checked),
                "window_checked": w_checked,
                "window_agreed": w_agreed,
                "window_agreement": ratio(w_agreed, w_checked),
                "levels": {lv: a.as_json() for lv, a in self.accuracy.items()},
                "namespaces": namespaces,
            },
            "answers_by_tier": dict(sorted(self.answers_by_tier.items())),
            "inference": {
                tier: {
                    "calls": ts.calls,
                    "failures": ts.failures,
                    "window_calls": recent.get(f"tier.{tier}", 0),
                    "escalations": ts.escalations,
                    "latency_ms": ts.latency.summary_ms(),
                }
                for tier, ts in sorted(self.tiers.items())
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
                if model is None or _matches_model(name, model)
            },
            "latency_ms": {
                "end_to_end": self.end_to_end.summary_ms(),
                "stages": {k: h.summary_ms() for k, h in sorted(self.stages.items())},
            },
            "saved": {
                "inference_s": round(self.inference_s_saved, 3),
                "bytes_not_sent": self.bytes_not_sent,
            },
            "errors": dict(sorted(self.errors.items())),
            "requests": dict(self.requests),
        }
        for name, gauge in self.gauges.items():
            doc[name] = gauge()
        if model is not None and isinstance(doc.get("caches"), dict):
            doc["caches"] = {
                ns: v
                for ns, v in doc["caches"].items()
                if _matches_model(ns.split("/", 1)[0], model)
            }
        doc["streams_tracked"] = len(self.streams)
        if device is not None or stream is not None or model is not None or window_s is not None:
            doc["selection"] = {
                "device": device,
                "stream": stream,
                "model": model,
                "window_s": window_s,
            }
        if self._per_stream and (device is not None or stream is not None):
            doc["streams"] = {
                key: sc.as_json()
                for key, sc in self.streams.items()
                if (device is None or key.split("/", 1)[0] == device)
                and (stream is None or key.split("/", 1)[1] == stream)
            }
        return doc


def finite(x: float) -> float:
    """Replace NaN/inf by 0 for JSON."""
    return x if math.isfinite(x) else 0.0
