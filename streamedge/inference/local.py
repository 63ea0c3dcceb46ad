"""The ``local`` tier: models run in-process with onnxruntime, in worker threads.

``max_concurrency`` runner tasks take waiting requests from one bounded queue
and run them in threads (onnxruntime releases the GIL). When several misses
of one model are waiting as a runner becomes free, and the model takes a free
batch dimension (:attr:`OnnxClassifier.batchable`), they run as one batch of
up to ``max_batch``: no request is held back to form a batch, so batching
only ever happens under load, where it saves per-run overhead.

A request that times out or is cancelled leaves its job behind; a runner
skips it. A thread that is already running cannot be interrupted, so the slot
stays busy until the model returns: concurrency never exceeds the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np

from streamedge.errors import BackendUnavailableError, InferenceError
from streamedge.inference.config import LocalTierConfig
from streamedge.protocols import Model
from streamedge.records import (
    Frame,
    InferenceRequest,
    InferenceResult,
    ModelInput,
    ModelRef,
    Prediction,
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


def run_model(model: Model, items: Sequence[ModelInput]) -> list[Prediction]:
    """Run one model on one or more inputs (blocking; called in a thread).

    Raises:
        InferenceError: the model failed (foreign exceptions are mapped here).
    """
    try:
        if len(items) > 1:
            batch = getattr(model, "predict_batch", None)
            if batch is not None:
                predictions: list[Prediction] = batch(items)
                return predictions
        return [model.predict(item) for item in items]
    except InferenceError:
        raise
    except Exception as exc:  # a model bug: map it once, here
        raise InferenceError(f"{model.ref}: {exc}") from exc


@dataclass(slots=True)
class _Job:
    request: InferenceRequest
    model: Model
    future: asyncio.Future[Prediction]


class LocalBackend:
    """Runs :class:`Model` objects in threads, at most ``max_concurrency`` at once."""

    tier = Tier.LOCAL

    def __init__(self, models: Mapping[ModelRef, Model], cfg: LocalTierConfig) -> None:
        self.name = cfg.tier_name()
        self._models = dict(models)
        self._cfg = cfg
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._runners: list[asyncio.Task[None]] = []
        self.running = 0
        self.batches = 0
        self.batched_requests = 0

    @property
    def capacity(self) -> int:
        """Requests served at once without queueing."""
        return self._cfg.max_concurrency

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return len(self._jobs) + self.running

    async def __aenter__(self) -> Self:
        if self._cfg.warmup:
            for ref, model in self._models.items():
                start = time.perf_counter()
                await asyncio.to_thread(run_model, model, [warmup_input(model)])
                logger.info("warmed up %s in %.0f ms", ref, (time.perf_counter() - start) * 1e3)
        self._runners = [
            asyncio.create_task(self._runner(), name=f"streamedge.{self.name}.runner{i}")
            for i in range(self._cfg.max_concurrency)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._runners:
            task.cancel()
        for task in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._runners = []
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(BackendUnavailableError(f"{self.name} tier stopped"))

    def serves(self, model: ModelRef) -> bool:
        """Whether the model is loaded here."""
        return model in self._models and (
            self._cfg.models is None or model.name in self._cfg.models
        )

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Queue the request for a runner and wait for its answer."""
        model = self._models.get(request.model)
        if model is None:
            raise InferenceError(f"model {request.model} is not loaded on the {self.name} tier")
        if not self._runners:
            raise BackendUnavailableError(f"{self.name} tier is not running")
        if len(self._jobs) >= self._cfg.queue_size:
            raise BackendUnavailableError(f"{self.name} tier queue is full")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(request, model, future))
        self._wake.set()
        start = time.perf_counter()
        try:
            prediction = await future
        finally:
            future.cancel()  # a caller's timeout: the runner skips this job
        return InferenceResult(
            model=request.model,
            answer=prediction.answer,
            tier=Tier.LOCAL,
            backend=self.name,
            latency_s=time.perf_counter() - start,
            confidence=prediction.confidence,
        )

    def _take_batch(self) -> list[_Job]:
        while self._jobs:
            first = self._jobs.popleft()
            if first.future.done():
                continue
            batch = [first]
            if getattr(first.model, "batchable", False) and self._cfg.max_batch > 1:
                keep: deque[_Job] = deque()
                while self._jobs and len(batch) < self._cfg.max_batch:
                    job = self._jobs.popleft()
                    if job.future.done():
                        continue
                    (batch if job.model is first.model else keep).append(job)
                keep.extend(self._jobs)
                self._jobs = keep
            return batch
        return []

    async def _runner(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.running += 1
            try:
                await self._run(batch)
            finally:
                self.running -= 1

    async def _run(self, batch: list[_Job]) -> None:
        model = batch[0].model
        items = [job.request.input for job in batch]
        try:
            predictions = await asyncio.to_thread(run_model, model, items)
        except InferenceError as exc:
            if len(batch) > 1:  # one bad input must not fail its batch-mates
                for job in batch:
                    await self._run([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        if len(batch) > 1:
            self.batches += 1
            self.batched_requests += len(batch)
        for job, prediction in zip(batch, predictions, strict=True):
            if not job.future.done():
                job.future.set_result(prediction)
