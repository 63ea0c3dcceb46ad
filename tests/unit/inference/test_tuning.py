"""The local tier's onnxruntime tuning: threads, optimisation level, providers, int8 variants."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from streamedge.inference.config import BuiltinModelConfig, InferenceConfig
from streamedge.inference.factory import build_options, needs_model
from streamedge.models.factory import build_model
from streamedge.models.onnx_runtime import SessionSettings, available_providers
from streamedge.records import Frame, StreamKey


def test_local_tier_settings_reach_model_building() -> None:
    cfg = InferenceConfig.model_validate(
        {
            "tiers": [
                {
                    "type": "local",
                    "models": ["a"],
                    "intra_op_threads": 2,
                    "graph_optimization": "basic",
                    "quantize": ["a"],
                },
                {"type": "edge"},
            ]
        }
    )
    settings, quantize = build_options(cfg, "a")
    assert settings == SessionSettings(2, "basic", ("CPUExecutionProvider",))
    assert quantize
    assert build_options(cfg, "b") == (SessionSettings(), False)
    assert needs_model(cfg, "a") and not needs_model(cfg, "b")  # b: edge only, never loaded


def test_unavailable_providers_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = available_providers(("NoSuchExecutionProvider", "CPUExecutionProvider"))
    assert chosen == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider" in caplog.text


def test_int8_variant_is_made_once_and_answers(models_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(models_dir / "models", data / "models")
    cfg = BuiltinModelConfig(name="tiny_presence")
    settings = SessionSettings(graph_optimization="disable")
    fp32 = build_model(cfg, data_dir=data, settings=settings)
    int8 = build_model(cfg, data_dir=data, settings=settings, quantize=True)
    made = sorted((data / "quantized").glob("*.onnx"))
    assert len(made) == 1 and "int8dyn" in made[0].name
    build_model(cfg, data_dir=data, quantize=True)
    assert sorted((data / "quantized").glob("*.onnx")) == made  # reused, not remade
    frame = Frame(stream=StreamKey("d", "s"), ts=0.0, image=np.full((32, 32, 3), 90, np.uint8))
    a, b = fp32.predict(frame).answer, int8.predict(frame).answer
    assert set(a["scores"]) == set(b["scores"])
    assert abs(a["scores"]["visitor"] - b["scores"]["visitor"]) < 0.2
