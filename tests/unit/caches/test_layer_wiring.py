"""The layer cache wired into models, the local tier and the gateway's stats."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from streamedge.caches.layer import LayerCacheConfig
from streamedge.caches.layer.wiring import (
    StripedLocks,
    layer_cache_report,
    layer_runners,
    with_input_range,
)
from streamedge.config import parse_config
from streamedge.datasets import find_video, iter_frames
from streamedge.inference.config import LocalTierConfig, OnnxClassifierConfig
from streamedge.inference.local import LocalBackend
from streamedge.models.config import MtcnnModelConfig
from streamedge.models.factory import build_model
from streamedge.models.mtcnn import INPUT_RANGE, MtcnnDetector, build_mtcnn
from streamedge.pipeline.gateway import Gateway
from streamedge.records import Frame, InferenceRequest, ModelRef, StreamKey
from streamedge.stats.metrics import Stats

A = StreamKey("cam-a", "camera")
B = StreamKey("cam-b", "camera")


def excerpt(name: str, n: int) -> list[npt.NDArray[np.uint8]]:
    return list(iter_frames(find_video(name, excerpt_only=True), step=15, max_frames=n))


def classifier_onnx(path: Path, *, conv: bool) -> Path:
    """A 3-class frame classifier: conv+relu+global pool+gemm, or flatten+gemm (no prefix)."""
    rng = np.random.default_rng(0)
    inits = []
    nodes = []
    if conv:
        inits.append(numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype("f"), "w"))
        nodes += [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"], axis=1),
        ]
        width = 4
    else:
        nodes.append(helper.make_node("Flatten", ["x"], ["f"], axis=1))
        width = 3 * 16 * 16
    inits.append(numpy_helper.from_array(rng.normal(size=(width, 3)).astype("f"), "k"))
    nodes.append(helper.make_node("Gemm", ["f", "k"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def classifier_cfg(path: Path, layer: dict[str, Any] | None) -> OnnxClassifierConfig:
    return OnnxClassifierConfig.model_validate(
        {"name": "cls", "path": str(path), "input_size": [16, 16], "layer_cache": layer}
    )


def request(ref: ModelRef, stream: StreamKey, image: npt.NDArray[np.uint8]) -> InferenceRequest:
    return InferenceRequest(model=ref, input=Frame(stream=stream, ts=0.0, image=image))


# --- config


def test_mtcnn_config_wires_a_shared_runner_with_mtcnn_input_range() -> None:
    det = build_mtcnn(MtcnnModelConfig.model_validate({"layer_cache": {"psnr_db": 30}}))
    assert det.layer_cache is not None
    assert det.layer_cache.active
    assert det.layer_cache.cfg.psnr_db == 30
    assert det.layer_cache.cfg.input_range == pytest.approx(INPUT_RANGE)
    assert det.layer_cache.decision is not None  # recheck_margin defaults on
    assert det.layer_cache.decision.threshold == pytest.approx(det.thresholds[0])
    explicit = LayerCacheConfig(input_range=7.0, recheck_margin=None)
    det = MtcnnDetector(layer_cache=explicit)
    assert det.layer_cache is not None
    assert det.layer_cache.cfg.input_range == 7.0
    assert det.layer_cache.decision is None
    assert build_mtcnn(MtcnnModelConfig()).layer_cache is None


def test_with_input_range_keeps_a_value_the_user_set() -> None:
    assert with_input_range(LayerCacheConfig(), 2.0).input_range == 2.0
    assert with_input_range(LayerCacheConfig(input_range=255), 2.0).input_range == 255


def test_layer_cache_on_a_window_classifier_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="layer_cache needs a frame model"):
        OnnxClassifierConfig.model_validate(
            {"name": "w", "path": str(tmp_path / "m.onnx"), "input": "window", "layer_cache": {}}
        )


def test_striped_locks_are_bounded_and_stable() -> None:
    locks = StripedLocks(4)
    assert len(locks) == 4
    assert locks.lock(A) is locks.lock(StreamKey("cam-a", "camera"))
    assert len({id(locks.lock(StreamKey("d", str(i)))) for i in range(100)}) <= 4
    with pytest.raises(ValueError, match="stripe"):
        StripedLocks(0)


# --- the real MTCNN through the local tier


def test_per_stream_state_through_local_backend_with_real_mtcnn() -> None:
    """Two streams run concurrently in the local tier's threads; state is per stream and level.

    Each stream sends a frame, the same frame again, then another one. The
    repeated frame must find its stream's own maps (no second "first" run)
    and answer exactly like the plain detector; had the state been shared
    between streams, stream B's first frame would not be a first run.
    """
    faces = excerpt("megamind", 3)
    street = excerpt("vtest", 3)
    det = MtcnnDetector(layer_cache=LayerCacheConfig(psnr_db=20.0))
    plain = MtcnnDetector()
    runner = det.layer_cache
    assert runner is not None
    backend = LocalBackend({det.ref: det}, LocalTierConfig(max_concurrency=2, warmup=False))
    seq_a = [faces[1], faces[1], faces[2]]
    seq_b = [street[0], street[0], street[1]]

    async def run() -> list[tuple[Any, Any]]:
        out = []
        async with backend:
            for fa, fb in zip(seq_a, seq_b, strict=True):
                ra, rb = await asyncio.gather(
                    backend.infer(request(det.ref, A, fa)), backend.infer(request(det.ref, B, fb))
                )
                out.append((ra.answer, rb.answer))
        return out

    answers = asyncio.run(run())
    levels_a = len(det.scaled_inputs(faces[0]))
    levels_b = len(det.scaled_inputs(street[0]))
    for level in range(levels_a):
        assert (A, level) in runner.cache
    for level in range(levels_b):
        assert (B, level) in runner.cache
    stats = runner.stats()
    assert stats.frames == 3 * (levels_a + levels_b)
    assert stats.first_runs == levels_a + levels_b
    assert stats.fallbacks == 0
    assert stats.partial_runs + stats.full_runs == stats.frames
    assert answers[0][0]["count"] >= 1  # the trailer frame has a face
    for i in (0, 1):  # first frame (full run) and its exact repeat (reused maps)
        assert answers[i][0] == plain.predict(Frame(stream=A, ts=0.0, image=seq_a[i])).answer
        assert answers[i][1] == plain.predict(Frame(stream=B, ts=0.0, image=seq_b[i])).answer


def test_one_streams_frames_never_overlap() -> None:
    """The per-stream lock: a second frame of a stream waits for the first to finish."""
    det = MtcnnDetector(layer_cache=LayerCacheConfig())
    runner = det.layer_cache
    assert runner is not None
    inside = 0
    overlap = False
    guard = threading.Lock()
    original = runner.run

    def spy(key: Any, image: Any) -> Any:
        nonlocal inside, overlap
        with guard:
            inside += 1
            overlap |= inside > 1
        try:
            return original(key, image)
        finally:
            with guard:
                inside -= 1

    runner.run = spy  # type: ignore[method-assign]
    image = excerpt("vtest", 1)[0]
    threads = [
        threading.Thread(target=det.predict, args=(Frame(stream=A, ts=0.0, image=image),))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not overlap
    assert runner.stats().frames == 3 * len(det.scaled_inputs(image))


# --- classifiers: a qualifying prefix, and a model that falls back


def test_classifier_with_conv_prefix_uses_the_cache(tmp_path: Path) -> None:
    path = classifier_onnx(tmp_path / "conv.onnx", conv=True)
    cached = build_model(classifier_cfg(path, {"psnr_db": 20}), data_dir=tmp_path)
    plain = build_model(classifier_cfg(path, None), data_dir=tmp_path)
    runner = getattr(cached, "layer_cache", None)
    assert runner is not None
    assert runner.active
    assert runner.cfg.input_range == pytest.approx(255 / 255)  # scale 1/255, std 1
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for stream in (A, A, B):
        item = Frame(stream=stream, ts=0.0, image=image)
        assert cached.predict(item).answer == plain.predict(item).answer
    stats = runner.stats()
    assert stats.first_runs == 2
    assert stats.fallbacks == 0
    assert A in runner.cache
    assert B in runner.cache


def test_classifier_without_prefix_falls_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = classifier_onnx(tmp_path / "mlp.onnx", conv=False)
    with caplog.at_level(logging.INFO, logger="streamedge.caches.layer.runner"):
        cached = build_model(classifier_cfg(path, {}), data_dir=tmp_path)
    lines = [r for r in caplog.records if "layer cache off" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "cls@1" in lines[0].getMessage()
    plain = build_model(classifier_cfg(path, None), data_dir=tmp_path)
    image = np.random.default_rng(2).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    item = Frame(stream=A, ts=0.0, image=image)
    assert cached.predict(item).answer == plain.predict(item).answer
    runner = getattr(cached, "layer_cache", None)
    assert runner is not None
    assert not runner.active
    assert runner.reason
    assert runner.stats().fallbacks == 1
    report = layer_cache_report(layer_runners([cached]))
    assert report["fallbacks"] == 1
    assert report["misses"] == 1
    assert report["models"]["cls@1"]["active"] is False


# --- stats


def test_stats_publish_the_layer_level(tmp_path: Path) -> None:
    path = classifier_onnx(tmp_path / "conv.onnx", conv=True)
    model = build_model(classifier_cfg(path, {"refresh_every": 0}), data_dir=tmp_path)
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    for _ in range(3):  # first run, then two frames with nothing changed
        model.predict(Frame(stream=A, ts=0.0, image=image))
    stats = Stats(gateway="g", version="0", clock=lambda: 0.0, wall_clock=lambda: 0.0)
    runners = layer_runners([model])
    stats.cache_gauges["layer"] = lambda: layer_cache_report(runners)
    stats.cache_result("layer", hit=True)  # counted hits from elsewhere are kept
    layer = stats.snapshot()["cache"]["layer"]
    assert layer["hits"] == 2  # the gauge's figures win for its own keys
    assert layer["misses"] == 1
    assert layer["hit_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    assert layer["reused_fraction"] == pytest.approx(2 / 3, abs=1e-3)
    assert layer["refreshes"] == 0
    assert layer["fallbacks"] == 0
    assert isinstance(layer["saved_s"], float)  # negative when crops cost more than they save
    assert layer["models"]["cls@1"]["partial_runs"] == 2


def test_gateway_registers_the_layer_gauge(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "gateway": {"name": "t", "data_dir": str(tmp_path)},
            "models": [{"type": "mtcnn", "layer_cache": {}}],
            "streams": [{"match": "*", "kind": "frame", "apps": [{"name": "f", "model": "mtcnn"}]}],
        }
    )
    gw = Gateway(cfg)
    asyncio.run(gw.build())
    assert "layer" in gw.stats.cache_gauges
    model = gw.models[ModelRef("mtcnn", "1")]
    model.predict(Frame(stream=A, ts=0.0, image=excerpt("vtest", 1)[0]))
    layer = gw.stats.snapshot()["cache"]["layer"]
    assert layer["misses"] >= 1
    assert layer["streams"] >= 1
    assert "mtcnn@1" in layer["models"]
