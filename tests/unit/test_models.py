from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamedge.errors import InferenceError
from streamedge.models import builtin
from streamedge.models.classifier import OnnxClassifier
from streamedge.models.onnx_runtime import make_session
from streamedge.records import Frame, ModelRef, StreamKey, Window

KEY = StreamKey("d", "s")


def presence_model(models_dir: Path) -> OnnxClassifier:
    return OnnxClassifier(
        ref=ModelRef("tiny_presence", "1"),
        path=builtin.builtin_path("tiny_presence", models_dir),
        input_kind="frame",
        labels=("empty", "visitor"),
    )


def test_presence_model_generalises_to_unseen_scenes(models_dir: Path) -> None:
    session = make_session(builtin.builtin_path("tiny_presence", models_dir))
    x, y = builtin.presence_training_set(n=400, seed=999)
    p = np.array([session.run(None, {"image": xi[None]})[0][0, 1] for xi in x])
    accuracy = float(np.mean((p > 0.5) == (y > 0.5)))
    assert accuracy >= 0.85, accuracy


def test_anomaly_model_beats_chance_on_unseen_devices(models_dir: Path) -> None:
    session = make_session(builtin.builtin_path("sensor_anomaly", models_dir))
    x, y = builtin.anomaly_training_set(devices=4, seed=999)
    p = np.array([session.run(None, {"window": xi[None]})[0][0, 1] for xi in x]) > 0.5
    pos = y > 0.5
    balanced = 0.5 * (np.mean(p[pos]) + np.mean(~p[~pos]))
    assert balanced >= 0.75, balanced


def test_classifier_answers_frames_with_label_score_and_scores(models_dir: Path) -> None:
    model = presence_model(models_dir)
    frame = Frame(stream=KEY, ts=0, image=np.zeros((120, 160, 3), dtype=np.uint8))
    pred = model.predict(frame)
    assert pred.answer["label"] in ("empty", "visitor")
    assert set(pred.answer["scores"]) == {"empty", "visitor"}
    assert pred.confidence == pytest.approx(max(pred.answer["scores"].values()), abs=1e-3)


def test_classifier_rejects_the_wrong_input_kind(models_dir: Path) -> None:
    model = presence_model(models_dir)
    window = Window(stream=KEY, ts=0, fields=("t",), values=np.zeros((16, 2), np.float32))
    with pytest.raises(InferenceError, match="takes frames"):
        model.predict(window)


def test_window_classifier_checks_the_window_shape(models_dir: Path) -> None:
    model = OnnxClassifier(
        ref=ModelRef("sensor_anomaly", "1"),
        path=builtin.builtin_path("sensor_anomaly", models_dir),
        input_kind="window",
        labels=("normal", "anomaly"),
    )
    assert model.window_shape == (16, 2)
    ok = Window(stream=KEY, ts=0, fields=("t", "h"), values=np.full((16, 2), 20, np.float32))
    assert model.predict(ok).answer["label"] == "normal"
    spike = ok.values.copy()
    spike[-1, 0] = 60.0
    assert (
        model.predict(Window(stream=KEY, ts=0, fields=("t", "h"), values=spike)).answer["label"]
        == "anomaly"
    )
    bad = Window(stream=KEY, ts=0, fields=("t",), values=np.zeros((8, 2), np.float32))
    with pytest.raises(InferenceError, match="does not fit"):
        model.predict(bad)


def test_missing_or_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="not found"):
        OnnxClassifier(ref=ModelRef("m", "1"), path=tmp_path / "no.onnx", input_kind="frame")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(InferenceError, match="cannot load"):
        OnnxClassifier(ref=ModelRef("m", "1"), path=broken, input_kind="frame")


def test_ensure_builtin_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = builtin.BUILDERS["sensor_anomaly"]

    def counting() -> bytes:
        calls.append(1)
        return real()

    monkeypatch.setitem(builtin.BUILDERS, "sensor_anomaly", counting)
    first = builtin.ensure_builtin("sensor_anomaly", tmp_path)
    second = builtin.ensure_builtin("sensor_anomaly", tmp_path)
    assert first == second and first.is_file()
    assert len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left
