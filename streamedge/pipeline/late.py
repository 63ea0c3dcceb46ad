"""Answers that are not the model's: error answers, and late answers from store-and-forward.

**Error answer.** When no tier answers an urgent request (and
``inference.error_answers`` is on), the stream's output topic (and the
request's reply topic, if any) gets::

    {"device": "cam1", "stream": "camera", "app": "faces", "model": "mtcnn@1",
     "tier": "error", "answer": null,
     "error": {"reason": "all_tiers_failed", "detail": "local: circuit open; edge: ..."},
     "latency_ms": {"total": 2003.1}, "ts": 1700000000.5}

``reason`` is ``all_tiers_failed``, ``no_tier`` (no tier serves the model),
``store_full`` (a non-urgent request found the store-and-forward queue full)
or ``expired`` (a stored request was older than ``max_age_s``). The message
itself is counted as dropped (``inference_failed``); the error answer counts
in ``messages.out``.

**Late answer.** A stored non-urgent request answered after recovery is
published like any answer, with ``"deferred": true`` and ``waited_s``. The
message was counted as ``deferred`` when it was stored; the router's
``store_and_forward`` gauge counts the late answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from streamedge.errors import AllTiersFailedError, InferenceError
from streamedge.records import (
    JSON,
    InferenceRequest,
    InferenceResult,
    OutboundMessage,
    StreamKey,
)
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme

logger = logging.getLogger(__name__)

Publish = Callable[[OutboundMessage], Awaitable[None]]


def error_reason(exc: InferenceError) -> str:
    """The machine-readable reason of an inference failure."""
    if isinstance(exc, AllTiersFailedError):
        return exc.reason
    return "inference_failed"


def error_payload(
    stream: StreamKey,
    *,
    app: str,
    model: str,
    reason: str,
    detail: str,
    ts: float,
    latency_s: float | None = None,
) -> JSON:
    """The answer published when no tier could answer."""
    doc: JSON = {
        "device": stream.device,
        "stream": stream.stream,
        "app": app,
        "model": model,
        "tier": "error",
        "answer": None,
        "error": {"reason": reason, "detail": detail[:500]},
        "ts": ts,
    }
    if latency_s is not None:
        doc["latency_ms"] = {"total": round(latency_s * 1e3, 3)}
    return doc


def dumps(doc: JSON) -> bytes:
    """Compact JSON."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class LateAnswers:
    """Publishes the answers of stored requests (``TierRouter.on_late``)."""

    def __init__(
        self,
        *,
        topics: TopicScheme,
        publish: Publish,
        stats: Stats,
        qos: int = 0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._topics = topics
        self._publish = publish
        self._stats = stats
        self._qos = qos
        self._wall = wall_clock

    async def __call__(
        self, request: InferenceRequest, result: InferenceResult | None, error: str | None
    ) -> None:
        """Publish one late answer (or an error answer for a request given up)."""
        stream = request.input.stream
        ctx = request.context
        app = ctx.app if ctx is not None else ""
        waited = max(0.0, self._wall() - request.input.ts) if request.input.ts else None
        if result is None:
            doc = error_payload(
                stream,
                app=app,
                model=str(request.model),
                reason=error or "expired",
                detail="stored request given up",
                ts=request.input.ts,
            )
        else:
            doc = {
                "device": stream.device,
                "stream": stream.stream,
                "app": app,
                "model": str(result.model),
                "tier": str(result.tier),
                "answer": result.answer,
                "confidence": None if result.confidence is None else round(result.confidence, 4),
                "deferred": True,
                "ts": request.input.ts,
            }
        if waited is not None:
            doc["waited_s"] = round(waited, 3)
        body = dumps(doc)
        await self._publish(
            OutboundMessage(topic=self._topics.output(stream), payload=body, qos=self._qos)
        )
        self._stats.published()
        if ctx is not None and ctx.reply_to:
            await self._publish(
                OutboundMessage(
                    topic=ctx.reply_to, payload=body, qos=self._qos, correlation=ctx.correlation
                )
            )
            self._stats.published()
