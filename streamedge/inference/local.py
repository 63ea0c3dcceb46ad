"""The ``local`` tier: models run in-process with onnxruntime, in worker threads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import numpy as np

from streamedge.errors import InferenceError, InferenceTimeoutError
from streamedge.inference.config import LocalTierConfig
from streamedge.protocols import Model
from streamedge.records import (
    Frame,
    InferenceRequest,
    InferenceResult,
    ModelInput,
    ModelRef,
    StreamKey,
    Tier,
    Window,
)

logger = logging.getLogger(__name__)


def warmup_input(model: Model) -> ModelInput:
    """A harmless input of the kind the model takes (for the warm-up run)."""
    kind = getattr(model, "input_kind", "frame")
    key = StreamKey("warmup", "warmup")
    if kind == "window":
        shape = getattr(model, "window_shape", (1, 1))
        return Window(stream=key, ts=0.0, fields=(), values=np.zeros(shape, dtype=np.float32))
    return Frame(stream=key, ts=0.0, image=np.full((96, 128, 3), 128, dtype=np.uint8))


class LocalBackend:
    """Runs :class:`Model` objects in threads, at most ``max_concurrency`` at once."""

    tier = Tier.LOCAL

    def __init__(self, models: Mapping[ModelRef, Model], cfg: LocalTierConfig) -> None:
        self.name = "local"
        self._models = dict(models)
        self._cfg = cfg
        self._slots = asyncio.Semaphore(cfg.max_concurrency)

    async def __aenter__(self) -> Self:
        if self._cfg.warmup:
            for ref, model in self._models.items():
                start = time.perf_counter()
                try:
                    await asyncio.to_thread(model.predict, warmup_input(model))
                except InferenceError:
                    raise
                except Exception as exc:
                    raise InferenceError(f"{ref}: warm-up failed: {exc}") from exc
                logger.info("warmed up %s in %.0f ms", ref, (time.perf_counter() - start) * 1e3)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def serves(self, model: ModelRef) -> bool:
        """Whether the model is loaded here."""
        return model in self._models

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run the model on the request's input in a worker thread."""
        model = self._models.get(request.model)
        if model is None:
            raise InferenceError(f"model {request.model} is not loaded on the local tier")
        async with self._slots:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self._cfg.timeout_s):
                    prediction = await asyncio.to_thread(model.predict, request.input)
            except TimeoutError as exc:
                raise InferenceTimeoutError(
                    f"{request.model}: local inference exceeded {self._cfg.timeout_s} s"
                ) from exc
            except InferenceError:
                raise
            except Exception as exc:  # a model bug: map it once, here
                raise InferenceError(f"{request.model}: {exc}") from exc
            latency = time.perf_counter() - start
        return InferenceResult(
            model=request.model,
            answer=prediction.answer,
            tier=Tier.LOCAL,
            backend=self.name,
            latency_s=latency,
            confidence=prediction.confidence,
        )
