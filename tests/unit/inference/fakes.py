"""Scripted inference backends and a fake clock for router tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self

import numpy as np

from streamedge.errors import InferenceError
from streamedge.records import (
    JSON,
    Frame,
    InferenceRequest,
    InferenceResult,
    ModelRef,
    StreamKey,
    Tier,
)

MODEL = ModelRef("m", "1")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeBackend:
    """Answers, fails or stalls as told; records every call."""

    def __init__(
        self,
        name: str,
        tier: Tier = Tier.LOCAL,
        *,
        confidence: float | None = 0.9,
        answer: JSON | None = None,
        serves: Callable[[ModelRef], bool] | None = None,
    ) -> None:
        self.name = name
        self.tier = tier
        self.mode = "ok"  # ok | fail | stall
        self.confidence = confidence
        self.answer = answer or {"label": name}
        self.calls = 0
        self.latency_s = 0.01
        self.depth = 0
        self.capacity = 1
        self._serves = serves or (lambda _m: True)
        self.release = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def serves(self, model: ModelRef) -> bool:
        return self._serves(model)

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        self.calls += 1
        if self.mode == "fail":
            raise InferenceError("scripted failure")
        if self.mode == "stall":
            await self.release.wait()
        return InferenceResult(
            model=request.model,
            answer=self.answer,
            tier=self.tier,
            backend=self.name,
            latency_s=self.latency_s,
            confidence=self.confidence,
        )


def request(
    stream: StreamKey | None = None, *, urgent: bool = True, value: int = 100
) -> InferenceRequest:
    image = np.full((24, 32, 3), value, dtype=np.uint8)
    return InferenceRequest(
        model=MODEL,
        input=Frame(stream=stream or StreamKey("cam", "camera"), ts=5.0, image=image),
        urgent=urgent,
    )
