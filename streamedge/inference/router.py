"""Send each miss to the tier that should answer it, and keep answering when tiers fail.

* **Order.** ``fixed`` tries tiers in the configured order (weakest first);
  ``latency`` (the cost model) tries first the tier with the lowest expected
  latency: its measured service time (an EWMA) times the queueing factor
  ``ceil((in flight + 1) / capacity)``. A tier unmeasured for ``stale_s`` is
  treated as unmeasured (its ``expected_latency_ms`` prior, or 0, so it is
  tried once and measured again).
* **Timeout and fallback.** Every attempt runs under ``asyncio.timeout`` of
  its tier; an error or timeout moves on to the next tier.
* **Circuit breaker** per tier (:mod:`streamedge.inference.breaker`): an
  open breaker skips its tier without waiting for a timeout.
* **Confidence escalation** (Sedna's hard examples): an answer from a tier
  named in an escalation rule whose confidence is below ``min_confidence``,
  or whose class scores' normalised entropy is above ``max_entropy``, is sent
  on to the stronger tiers (those configured after it); the first stronger
  answer wins, and if none comes the weak answer stands.
* **Store-and-forward**: when every tier failed, a non-urgent request
  (``store_and_forward.streams``) is written to a bounded on-disk queue and
  :class:`DeferredError` is raised; a background task answers stored
  requests in order once a tier answers again and hands each late answer to
  :attr:`TierRouter.on_late`. Urgent requests get :class:`AllTiersFailedError`
  with a reason and each tier's cause.

Every result says which tier produced it (``tier``, ``backend``) and whether
that tier is authoritative for the model (cache write-back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Self

from streamedge.errors import (
    AllTiersFailedError,
    BackendUnavailableError,
    DecodeError,
    DeferredError,
    InferenceError,
    InferenceTimeoutError,
    StreamedgeError,
)
from streamedge.inference.breaker import CircuitBreaker
from streamedge.inference.config import EscalationRule, InferenceConfig, TierCommon
from streamedge.inference.store import StoredEntry, StoreFullError
from streamedge.protocols import InferenceBackend
from streamedge.records import JSON, Clock, InferenceRequest, InferenceResult

if TYPE_CHECKING:
    from streamedge.inference.store import DeferredStore
    from streamedge.stats.metrics import Stats

logger = logging.getLogger(__name__)

LateAnswer = Callable[[InferenceRequest, InferenceResult | None, str | None], Awaitable[None]]
"""``(request, result, error)``: a stored request was answered (or given up: ``error``)."""

_EWMA = 0.2
_PLAIN = (InferenceError, BackendUnavailableError, InferenceTimeoutError)


def normalised_entropy(answer: JSON) -> float | None:
    """Entropy of an answer's class ``scores`` divided by log(classes): 0 sure, 1 uniform."""
    scores = answer.get("scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        return None
    values = [float(v) for v in scores.values() if isinstance(v, int | float) and v > 0]
    total = sum(values)
    if total <= 0:
        return None
    h = -sum((v / total) * math.log(v / total) for v in values)
    return h / math.log(len(scores))


def is_hard(result: InferenceResult, rule: EscalationRule) -> bool:
    """Whether a rule says this answer should go to a stronger tier."""
    if (
        rule.min_confidence is not None
        and result.confidence is not None
        and result.confidence < rule.min_confidence
    ):
        return True
    if rule.max_entropy is not None:
        h = normalised_entropy(result.answer)
        if h is not None and h > rule.max_entropy:
            return True
    return False


@dataclasses.dataclass(slots=True)
class TierState:
    """What the router knows about one tier."""

    index: int
    backend: InferenceBackend
    cfg: TierCommon
    breaker: CircuitBreaker
    inflight: int = 0
    service_s: float | None = None
    """EWMA of the measured service time (latency divided by the queueing factor)."""
    last_sample: float = -math.inf
    escalations: int = 0

    @property
    def name(self) -> str:
        """The tier's name."""
        return self.backend.name

    @property
    def capacity(self) -> int:
        """Requests served at once without queueing."""
        cap = getattr(self.backend, "capacity", None)
        return cap if isinstance(cap, int) and cap > 0 else self.cfg.capacity

    @property
    def depth(self) -> int:
        """Requests waiting or running on the tier."""
        depth = getattr(self.backend, "depth", None)
        return depth if isinstance(depth, int) else self.inflight

    def queue_factor(self) -> int:
        """How many service times a new request waits, including its own."""
        return math.ceil((self.depth + 1) / self.capacity)

    def expected_s(self, now: float, stale_s: float) -> float:
        """Expected latency of one more request now (the cost model)."""
        if self.service_s is None or now - self.last_sample > stale_s:
            prior = self.cfg.expected_latency_ms
            base = prior / 1e3 if prior is not None else 0.0
        else:
            base = self.service_s
        return base * self.queue_factor()


class TierRouter:
    """Routes inference requests over tiers; see the module docstring."""

    def __init__(
        self,
        backends: Sequence[InferenceBackend],
        cfg: InferenceConfig | None = None,
        *,
        tier_configs: Sequence[TierCommon] | None = None,
        stats: Stats | None = None,
        store: DeferredStore | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.cfg = cfg or InferenceConfig()
        configs = list(tier_configs) if tier_configs is not None else list(self.cfg.tiers)
        if len(configs) != len(backends):
            configs = [TierCommon() for _ in backends]
        self._clock = clock
        self.tiers = [
            TierState(i, b, c, CircuitBreaker(b.name, c.breaker, clock))
            for i, (b, c) in enumerate(zip(backends, configs, strict=True))
        ]
        self.backends = list(backends)
        self._stats = stats
        self.store = store
        self.on_late: LateAnswer | None = None
        self._stack = AsyncExitStack()
        self._drainer: asyncio.Task[None] | None = None
        self._stored_event = asyncio.Event()
        self._non_urgent = list(self.cfg.store_and_forward.streams)
        self.failures: dict[str, int] = {}
        self.deferred = 0
        self.late_answered = 0
        self.late_expired = 0
        self.late_lost = 0

    # -- lifecycle ---------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            for backend in self.backends:
                await self._stack.enter_async_context(backend)
            if self.store is not None:
                await asyncio.to_thread(self.store.open)
                self._drainer = asyncio.create_task(
                    self._drain(), name="streamedge.router.store-and-forward"
                )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
        await self._stack.__aexit__(exc_type, exc, tb)

    # -- routing -----------------------------------------------------------------
    def is_urgent(self, request: InferenceRequest) -> bool:
        """Non-urgent: marked so, or its stream matches ``store_and_forward.streams``."""
        if not request.urgent:
            return False
        key = str(request.input.stream)
        return not any(fnmatch.fnmatchcase(key, pattern) for pattern in self._non_urgent)

    def _serving(self, request: InferenceRequest) -> list[TierState]:
        return [t for t in self.tiers if t.backend.serves(request.model)]

    def _ordered(self, tiers: list[TierState]) -> list[TierState]:
        if self.cfg.order == "fixed" or len(tiers) < 2:
            return tiers
        now = self._clock()
        return sorted(tiers, key=lambda t: (t.expected_s(now, self.cfg.stale_s), t.index))

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Answer from the best tier that can (see the module docstring).

        Raises:
            DeferredError: no tier answered; the non-urgent request was stored.
            AllTiersFailedError: no tier answered (``reason`` says why).
        """
        tiers = self._serving(request)
        if not tiers:
            raise AllTiersFailedError(f"no tier serves {request.model}", [], reason="no_tier")
        causes: list[BaseException] = []
        result = await self._first_answer(request, tiers, causes)
        if result is not None:
            return result
        detail = "; ".join(str(c) for c in causes)
        if (
            self.store is not None
            and self.cfg.store_and_forward.enabled
            and request.deferrable
            and not self.is_urgent(request)
        ):
            return await self._defer(request, causes, detail)
        raise AllTiersFailedError(
            f"every tier failed for {request.model}: {detail}", causes, reason="all_tiers_failed"
        )

    async def _first_answer(
        self, request: InferenceRequest, tiers: list[TierState], causes: list[BaseException]
    ) -> InferenceResult | None:
        for tier in self._ordered(tiers):
            result = await self._attempt(tier, request, causes)
            if result is not None:
                return await self._escalate(tier, result, request, tiers)
        return None

    async def _attempt(
        self, tier: TierState, request: InferenceRequest, causes: list[BaseException]
    ) -> InferenceResult | None:
        """One try on one tier, under its breaker and deadline; None on failure."""
        if not tier.breaker.allow():
            causes.append(BackendUnavailableError(f"{tier.name}: circuit open"))
            return None
        timeout = tier.cfg.timeout_s
        factor = tier.queue_factor()
        tier.inflight += 1
        start = time.perf_counter()
        error: InferenceError | None = None
        try:
            async with asyncio.timeout(timeout):
                result = await tier.backend.infer(request)
        except TimeoutError:
            error = InferenceTimeoutError(f"{tier.name}: no answer within {timeout:g} s")
        except InferenceError as exc:
            kind = type(exc) if type(exc) in _PLAIN else InferenceError
            error = exc if str(exc).startswith(tier.name) else kind(f"{tier.name}: {exc}")
        except asyncio.CancelledError:
            tier.breaker.release()
            raise
        finally:
            tier.inflight -= 1
        elapsed = time.perf_counter() - start
        model = str(request.model)
        stream = str(request.input.stream)
        if error is not None:
            tier.breaker.failure()
            self.failures[tier.name] = self.failures.get(tier.name, 0) + 1
            if self._stats is not None:
                self._stats.inference(tier.name, elapsed, ok=False, model=model)
            logger.warning("tier %s failed for %s: %s", tier.name, request.model, error)
            causes.append(error)
            return None
        tier.breaker.success()
        sample = elapsed / max(1, factor)
        tier.service_s = (
            sample if tier.service_s is None else (1 - _EWMA) * tier.service_s + _EWMA * sample
        )
        tier.last_sample = self._clock()
        if self._stats is not None:
            self._stats.inference(tier.name, result.latency_s, ok=True, stream=stream, model=model)
        return dataclasses.replace(
            result, authoritative=tier.cfg.is_authoritative(request.model.name)
        )

    async def _escalate(
        self,
        tier: TierState,
        result: InferenceResult,
        request: InferenceRequest,
        tiers: list[TierState],
    ) -> InferenceResult:
        rules = [r for r in self.cfg.escalation if r.applies(request.model.name, tier.name)]
        hard = next((rule for rule in rules if is_hard(result, rule)), None)
        if hard is None:
            return result
        if hard.to is None:
            stronger = [t for t in tiers if t.index > tier.index]
        else:
            by_name = {t.name: t for t in tiers}
            stronger = [by_name[n] for n in hard.to if n in by_name and n != tier.name]
        if not stronger:
            return result
        tier.escalations += 1
        if self._stats is not None:
            self._stats.escalation(tier.name)
        causes: list[BaseException] = []
        for strong in stronger:
            better = await self._attempt(strong, request, causes)
            if better is not None:
                logger.debug(
                    "escalated %s from %s (confidence %s) to %s",
                    request.model,
                    tier.name,
                    result.confidence,
                    strong.name,
                )
                return better
        logger.info("escalation of %s from %s failed; its answer stands", request.model, tier.name)
        return result

    # -- store-and-forward -------------------------------------------------------
    async def _defer(
        self, request: InferenceRequest, causes: list[BaseException], detail: str
    ) -> InferenceResult:
        assert self.store is not None  # noqa: S101  # checked by the caller
        try:
            entry = await asyncio.to_thread(self.store.put, request)
        except StoreFullError as exc:
            raise AllTiersFailedError(
                f"every tier failed for {request.model} and {exc}", causes, reason="store_full"
            ) from exc
        self.deferred += 1
        self._stored_event.set()
        raise DeferredError(
            f"no tier answered {request.model} ({detail}); stored as {entry.name}",
            entry=entry.name,
        )

    def _any_tier_ready(self) -> bool:
        return any(t.breaker.ready() for t in self.tiers)

    async def _drain(self) -> None:
        """Answer stored requests, oldest first, whenever a tier answers again."""
        assert self.store is not None  # noqa: S101  # only started with a store
        sf = self.cfg.store_and_forward
        while True:
            if not len(self.store):
                self._stored_event.clear()
                await self._stored_event.wait()
            await asyncio.sleep(sf.retry_s)
            while (entry := self.store.oldest()) is not None:
                if self.store.age(entry) > sf.max_age_s:
                    await self._give_up(entry, "expired")
                    continue
                if not self._any_tier_ready():
                    break
                try:
                    request, _created = await asyncio.to_thread(self.store.load, entry)
                except DecodeError as exc:
                    logger.warning("store-and-forward: dropping %s: %s", entry.name, exc)
                    await asyncio.to_thread(self.store.remove, entry)
                    self.late_lost += 1
                    continue
                tiers = self._serving(request)
                causes: list[BaseException] = []
                result = await self._first_answer(request, tiers, causes) if tiers else None
                if result is None:
                    break  # still down: wait retry_s
                await asyncio.to_thread(self.store.remove, entry)
                self.late_answered += 1
                await self._late(request, result, None)

    async def _give_up(self, entry: StoredEntry, reason: str) -> None:
        assert self.store is not None  # noqa: S101  # only called by the drainer
        try:
            request, _ = await asyncio.to_thread(self.store.load, entry)
        except DecodeError:
            request = None
        await asyncio.to_thread(self.store.remove, entry)
        self.late_expired += 1
        if request is not None:
            await self._late(request, None, reason)

    async def _late(
        self, request: InferenceRequest, result: InferenceResult | None, error: str | None
    ) -> None:
        if self.on_late is None:
            return
        try:
            await self.on_late(request, result, error)
        except StreamedgeError as exc:
            self.late_lost += 1
            logger.warning("a late answer for %s was not published: %s", request.model, exc)

    # -- stats -------------------------------------------------------------------
    def gauge(self) -> JSON:
        """Per-tier state for the stats snapshot (``tiers``), and the store's."""
        now = self._clock()
        doc: JSON = {
            "order": self.cfg.order,
            "tiers": {
                t.name: {
                    "breaker": str(t.breaker.state),
                    "breaker_opens": t.breaker.opens,
                    "in_flight": t.depth,
                    "capacity": t.capacity,
                    "service_ms": None if t.service_s is None else round(t.service_s * 1e3, 3),
                    "expected_ms": round(t.expected_s(now, self.cfg.stale_s) * 1e3, 3),
                    "escalations": t.escalations,
                }
                for t in self.tiers
            },
        }
        if self.store is not None:
            doc["store_and_forward"] = {
                "entries": len(self.store),
                "bytes": self.store.bytes,
                "stored": self.store.stored,
                "refused": self.store.refused,
                "answered": self.late_answered,
                "expired": self.late_expired,
                "lost": self.late_lost,
            }
        return doc
