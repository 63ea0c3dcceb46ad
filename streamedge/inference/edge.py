"""The ``edge`` tier: ``streamedge worker`` processes answer over MQTT request/response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from types import TracebackType
from typing import Any, Self

from streamedge.errors import BackendUnavailableError, InferenceError
from streamedge.inference.config import EdgeTierConfig
from streamedge.inference.mqtt_rpc import Broker, MqttRpcClient, infer_topic
from streamedge.inference.wire import VERSION, encode_input
from streamedge.records import InferenceRequest, InferenceResult, ModelRef, Tier

logger = logging.getLogger(__name__)

_UNAVAILABLE = {"overloaded", "not_served", "stopping"}


class EdgeBackend:
    """Forwards requests to edge workers; fails over at once when none serves the model."""

    tier = Tier.EDGE

    def __init__(self, cfg: EdgeTierConfig, *, broker: Broker, prefix: str) -> None:
        self.name = cfg.tier_name()
        self._cfg = cfg
        self.rpc = MqttRpcClient(broker, prefix=prefix, qos=cfg.qos)
        self.prefix = prefix
        self.inflight = 0

    @property
    def capacity(self) -> int:
        """Requests the online workers run at once (the configured capacity if unknown)."""
        total = sum(
            int(s.get("concurrency") or 1)
            for s in self.rpc.workers.values()
            if s.get("state") == "online"
        )
        return total or self._cfg.capacity

    @property
    def depth(self) -> int:
        """Requests in flight."""
        return self.inflight

    async def __aenter__(self) -> Self:
        await self.rpc.__aenter__()
        # Give the connection and the workers' retained announcements a moment, so
        # the first requests do not fail over just because the tier is starting.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(1.0, self._cfg.timeout_s * 2)):
                await self.rpc.connected.wait()
                while not self.rpc.workers:  # noqa: ASYNC110  # retained statuses arrive at once
                    await asyncio.sleep(0.02)
        if not self.rpc.connected.is_set():
            logger.warning(
                "edge tier %s: broker not reachable yet; falling back meanwhile", self.name
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rpc.__aexit__(exc_type, exc, tb)

    def serves(self, model: ModelRef) -> bool:
        """Whether this tier is configured for the model (workers may still be absent)."""
        return self._cfg.models is None or model.name in self._cfg.models

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Send the request to a worker and wait for its answer."""
        name = request.model.name
        if (
            self._cfg.require_workers
            and self.rpc.connected.is_set()
            and self.rpc.workers_for(name) == 0
        ):
            raise BackendUnavailableError(f"no edge worker serves {name}")
        start = time.perf_counter()
        self.inflight += 1
        try:
            if self._cfg.encoding == "jpeg" and request.encoded is None:
                body = await asyncio.to_thread(self._encode, request)  # JPEG encoding takes ms
            else:
                body = self._encode(request)
            reply = await self.rpc.request(infer_topic(self.prefix, name), body)
        finally:
            self.inflight -= 1
        return self._result(request, reply, time.perf_counter() - start)

    def _encode(self, request: InferenceRequest) -> dict[str, Any]:
        doc = encode_input(
            request.input,
            encoded=request.encoded,
            encoding=self._cfg.encoding,
            jpeg_quality=self._cfg.jpeg_quality,
        )
        doc.update(v=VERSION, model=str(request.model))
        return doc

    def _result(
        self, request: InferenceRequest, reply: dict[str, Any], latency: float
    ) -> InferenceResult:
        worker = reply.get("worker")
        if not reply.get("ok"):
            reason = str(reply.get("reason", "error"))
            message = f"edge worker {worker}: {reason}: {reply.get('error', '')}"
            if reason in _UNAVAILABLE:
                raise BackendUnavailableError(message)
            raise InferenceError(message)
        answer = reply.get("answer")
        if not isinstance(answer, dict):
            raise InferenceError(f"edge worker {worker}: reply without an answer")
        if reply.get("model") != str(request.model):
            raise InferenceError(
                f"edge worker {worker} answered {reply.get('model')}, not {request.model}"
            )
        confidence = reply.get("confidence")
        conf = (
            float(confidence)
            if isinstance(confidence, int | float) and math.isfinite(confidence)
            else None
        )
        return InferenceResult(
            model=request.model,
            answer=answer,
            tier=Tier.EDGE,
            backend=f"{self.name}:{worker}" if isinstance(worker, str) else self.name,
            latency_s=latency,
            confidence=conf,
        )
