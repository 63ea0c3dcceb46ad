"""The local tier: warm-up, batched runs of waiting misses, bounded queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamedge.errors import BackendUnavailableError, InferenceError
from streamedge.inference.config import LocalTierConfig
from streamedge.inference.local import LocalBackend
from streamedge.models.classifier import OnnxClassifier
from streamedge.records import InferenceRequest, ModelRef, StreamKey, Window

REF = ModelRef("win", "1")


def window_model(path: Path, *, batch: int | str) -> Path:
    """A linear classifier over (4, 2) windows; ``batch`` "N" makes the batch dim free."""
    w = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
        ],
        "win",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(2, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def classifier(tmp_path: Path, batch: int | str) -> OnnxClassifier:
    return OnnxClassifier(
        ref=REF,
        path=window_model(tmp_path / f"m{batch}.onnx", batch=batch),
        input_kind="window",
        labels=["no", "yes"],
    )


def req(i: int, rows: int = 4) -> InferenceRequest:
    values = np.full((rows, 2), float(i), dtype=np.float32)
    return InferenceRequest(
        model=REF,
        input=Window(stream=StreamKey("d", "s"), ts=0.0, fields=("a", "b"), values=values),
    )


async def test_waiting_misses_run_as_one_batch_with_the_same_answers(tmp_path: Path) -> None:
    model = classifier(tmp_path, "N")
    assert model.batchable
    expected = [model.predict(req(i).input).answer for i in range(5)]
    backend = LocalBackend({REF: model}, LocalTierConfig(max_concurrency=1, max_batch=8))
    async with backend:
        results = await asyncio.gather(*(backend.infer(req(i)) for i in range(5)))
    assert [r.answer for r in results] == expected
    assert (backend.batches, backend.batched_requests) == (1, 5)


async def test_a_fixed_batch_model_runs_one_by_one(tmp_path: Path) -> None:
    model = classifier(tmp_path, 1)
    assert not model.batchable
    backend = LocalBackend({REF: model}, LocalTierConfig(max_concurrency=1))
    async with backend:
        results = await asyncio.gather(*(backend.infer(req(i)) for i in range(3)))
    assert len(results) == 3 and backend.batches == 0


async def test_a_bad_input_fails_alone_not_its_batch(tmp_path: Path) -> None:
    backend = LocalBackend({REF: classifier(tmp_path, "N")}, LocalTierConfig(max_concurrency=1))
    async with backend:
        results = await asyncio.gather(
            backend.infer(req(1)),
            backend.infer(req(2, rows=3)),
            backend.infer(req(3)),
            return_exceptions=True,
        )
    assert isinstance(results[1], InferenceError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)


async def test_a_full_queue_refuses_and_a_cancelled_request_is_skipped(tmp_path: Path) -> None:
    cfg = LocalTierConfig(max_concurrency=1, max_batch=1, queue_size=2, warmup=False)
    backend = LocalBackend({REF: classifier(tmp_path, "N")}, cfg)
    async with backend:
        # All three are queued before a runner wakes up: the third finds the queue full.
        results = await asyncio.gather(
            *(backend.infer(req(i)) for i in range(3)), return_exceptions=True
        )
        assert [type(r).__name__ for r in results].count("BackendUnavailableError") == 1
        slow = asyncio.create_task(backend.infer(req(5)))
        await asyncio.sleep(0)
        slow.cancel()  # a caller's timeout: the runner skips the job
        assert (await backend.infer(req(4))).answer
    assert backend.depth == 0


async def test_not_entered_is_unavailable(tmp_path: Path) -> None:
    backend = LocalBackend({REF: classifier(tmp_path, "N")}, LocalTierConfig())
    with pytest.raises(BackendUnavailableError):
        await backend.infer(req(1))
