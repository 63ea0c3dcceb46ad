"""Threshold calibration: the replay, the cost model's choice, the search per filter, the
SNM's cross-fitting, writing the config back, and ``streamedge calibrate`` end to end on
frames of the committed vtest excerpt with real MTCNN answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamedge.bench.metrics import accuracy
from streamedge.cli import main as cli_main
from streamedge.commands.calibrate import write_config
from streamedge.config import load_config
from streamedge.datasets import find_video, iter_frames
from streamedge.filters.calibration import (
    CalibrationResult,
    CalibrationWindow,
    Trial,
    calibrate,
    choose,
    grid_for,
    simulate,
)
from streamedge.filters.config import (
    FfsvaFilterConfig,
    FrameDiffFilterConfig,
    NoScopeFilterConfig,
    ReductoFilterConfig,
)
from streamedge.records import JSON, StreamKey

KEY = StreamKey("cam1", "camera")


def scene(i: int) -> np.ndarray:
    """A textured grey room; a bright square walks through on frames 10-19 of every 30."""
    img = np.full((48, 64, 3), 60, np.uint8)
    img[::4, :, :] = 70
    phase = i % 30
    if 10 <= phase < 20:
        x = 2 + 5 * (phase - 10)
        img[10:22, x : x + 12] = 250
    return img


def answer(image: np.ndarray) -> JSON:
    ys, xs = np.nonzero(image[:, :, 0] > 200)
    if len(xs) == 0:
        return {"boxes": [], "count": 0}
    return {
        "boxes": [[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), 1.0]],
        "count": 1,
    }


def window(n: int = 90) -> CalibrationWindow:
    frames = [scene(i) for i in range(n)]
    return CalibrationWindow(KEY, frames, [0.1 * i for i in range(n)], [answer(f) for f in frames])


def test_simulate_repeats_the_last_answer_on_drops() -> None:
    w = window(30)
    # A threshold no change reaches: every frame after the first is dropped.
    sim = simulate([FrameDiffFilterConfig(threshold=1e9, max_age_s=1e9)], w)
    assert sim.passed == 1
    assert sim.given == [w.answers[0]] * 30
    assert sim.reached == {"0:frame_diff": 30}
    # Threshold 0 passes everything: the answers are the model's own.
    sim = simulate([FrameDiffFilterConfig(threshold=0.0)], w)
    assert sim.passed == 30
    assert sim.given == list(w.answers)


def trial(score: float, cost: float, meets: bool) -> Trial:
    acc = accuracy([{"count": 0}], [{"count": 0}])
    return Trial(
        filter_index=0,
        filter_type="noscope",
        settings={"threshold": cost},
        accuracy=acc,
        score=score,
        pass_fraction=cost / 100,
        filter_ms=0.1,
        cost_ms=cost,
        meets=meets,
    )


def test_choose_takes_the_cheapest_setting_that_meets_the_target() -> None:
    a, b, c = trial(1.0, 50, True), trial(0.99, 10, True), trial(0.5, 1, False)
    assert choose([a, b, c]) is b
    # Within 1 % of the cheapest, the more accurate one wins.
    d = trial(0.995, 10.05, True)
    assert choose([a, b, c, d]) is d
    # None meets: the most accurate.
    e, f = trial(0.9, 5, False), trial(0.95, 50, False)
    assert choose([e, f]) is f
    with pytest.raises(ValueError, match="no trials"):
        choose([])


@pytest.mark.parametrize(
    "cfg",
    [
        NoScopeFilterConfig(t_diff=1, size=16),
        NoScopeFilterConfig(mode="reference", size=16, metric="blocked", blocks=4),
        ReductoFilterConfig(thresholds={"pixel": 0.5}, width=None),
        FfsvaFilterConfig(size=16, snm_size=8),
    ],
    ids=lambda c: f"{c.type}-{getattr(c, 'mode', '')}",
)
def test_calibrate_meets_the_target_and_saves_model_runs(cfg: object) -> None:
    w = window()
    result = calibrate([cfg], w, target=0.98, model_s=0.1, metric="agreement")  # type: ignore[list-item]
    assert result.met
    assert result.final is not None
    assert result.final.score >= 0.98
    # The square is there a third of the time, so a good setting skips most still frames.
    assert result.final.pass_fraction < 0.8
    # The chosen settings are those of the filters returned, and replay to the same score.
    sim = simulate(result.filters, w)
    assert accuracy(list(w.answers), sim.given).agreement >= 0.98
    for key, value in result.chosen[0].items():
        assert getattr(result.filters[0], key) == value
    # Every setting tried was a real replay with a measured cost.
    assert all(t.filter_ms > 0 for t in result.trials)


def test_the_model_cost_decides_between_settings_that_meet_the_target() -> None:
    w = window()
    cheap_model = calibrate([NoScopeFilterConfig(t_diff=1, size=16)], w, target=0.9, model_s=0.0)
    dear_model = calibrate([NoScopeFilterConfig(t_diff=1, size=16)], w, target=0.9, model_s=1.0)
    assert dear_model.final is not None and cheap_model.final is not None
    assert dear_model.final.pass_fraction <= cheap_model.final.pass_fraction


def test_ffsva_trains_an_snm_and_crossfits_its_thresholds() -> None:
    w = window(120)
    result = calibrate([FfsvaFilterConfig(size=16, snm_size=8)], w, target=0.98, model_s=0.1)
    assert 0 in result.snm and result.snm[0][:2] != b""
    # The SNM thresholds were searched (the grid has them once an SNM exists).
    tried = {(t.settings["snm_low"], t.settings["snm_high"]) for t in result.trials}
    assert len(tried) > 1
    # The returned config refers to no temporary file: the caller saves the SNM.
    assert result.filters[0].snm_models == {}  # type: ignore[union-attr]


def test_online_grids_keep_to_per_stream_settings() -> None:
    w = window(30)
    noscope = grid_for(NoScopeFilterConfig(), w, online=True)
    assert noscope and all(set(g) == {"threshold"} for g in noscope)
    assert grid_for(FrameDiffFilterConfig(), w, online=True) == []
    ffsva = grid_for(FfsvaFilterConfig(), w, online=True)
    assert ffsva and all("count_source" not in g for g in ffsva)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="one time and one answer"):
        CalibrationWindow(KEY, [scene(0)], [], [])
    with pytest.raises(ValueError, match="target"):
        calibrate([NoScopeFilterConfig()], window(10), target=1.5, model_s=0.1)


CONFIG = """\
# a comment that must survive
models: [{type: mtcnn}]
streams:
  - match: "*/camera*"  # the cameras
    kind: frame
    filters:
      - {type: noscope, mode: earlier, threshold: 400.0, t_diff: 10}
      - {type: reducto, thresholds: {edge: 0.002}}  # hand-tuned
    apps: [{name: faces, model: mtcnn}]
  - match: "*"
    kind: reading
"""


def fake_result(
    chosen: list[dict[str, object]], snm: dict[int, bytes] | None = None
) -> CalibrationResult:
    return CalibrationResult(
        filters=[],
        chosen=chosen,
        final=None,
        trials=[],
        model_ms=50.0,
        target=0.98,
        metric="agreement",
        frames=10,
        snm=snm or {},
    )


def test_write_config_changes_only_the_chosen_keys(tmp_path: Path) -> None:
    src = tmp_path / "gw.yaml"
    src.write_text(CONFIG)
    out = tmp_path / "out" / "gw.yaml"
    result = fake_result([{"threshold": 12.5, "t_skip": 3}, {"thresholds": {"edge": 0.01}}])
    write_config(src, out, 0, result, {}, key="cam1/camera")
    text = out.read_text()
    assert "# a comment that must survive" in text
    assert "# the cameras" in text
    assert "{type: noscope, mode: earlier, threshold: 12.5, t_diff: 10, t_skip: 3}" in text
    assert "models: [{type: mtcnn}]" in text
    # Everything else is as it was (comments keep their column, so only spaces before them move).
    restored = (
        text.replace("threshold: 12.5", "threshold: 400.0")
        .replace(", t_skip: 3", "")
        .replace("{edge: 0.01}", "{edge: 0.002}")
    )
    assert re.sub(r" +#", " #", restored) == re.sub(r" +#", " #", CONFIG)
    cfg = load_config(out)
    assert cfg.streams[0].filters[0].threshold == 12.5  # type: ignore[union-attr]


def test_write_config_json_and_snm_reference(tmp_path: Path) -> None:
    src = tmp_path / "gw.json"
    src.write_text(
        json.dumps(
            {
                "models": [{"type": "mtcnn"}],
                "streams": [{"match": "*", "kind": "frame", "filters": [{"type": "ffsva"}]}],
            }
        )
    )
    snm = tmp_path / "gw.cam1_camera.snm.onnx"
    snm.write_bytes(b"x")
    write_config(src, src, 0, fake_result([{"sdd_threshold": 3.0}]), {0: snm}, key="cam1/camera")
    doc = json.loads(src.read_text())
    assert doc["streams"][0]["filters"][0] == {
        "type": "ffsva",
        "sdd_threshold": 3.0,
        "snm_models": {"cam1/camera": "gw.cam1_camera.snm.onnx"},
    }


def test_calibrate_command_on_a_recorded_stream_with_real_mtcnn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames_dir = tmp_path / "recording"
    frames_dir.mkdir()
    for i, image in enumerate(iter_frames(find_video("vtest", excerpt_only=True), max_frames=24)):
        cv2.imwrite(str(frames_dir / f"{i:04d}.png"), image)
    src = tmp_path / "gw.yaml"
    src.write_text(CONFIG)
    out = tmp_path / "calibrated.yaml"
    trials = tmp_path / "trials.json"
    code = cli_main(
        [
            "calibrate",
            "--stream",
            str(frames_dir),
            "--config",
            str(src),
            "--window",
            "24",
            "--target",
            "0.98",
            "--metric",
            "agreement",
            "--cost-frames",
            "2",
            "--out",
            str(out),
            "--json",
            str(trials),
            "--reference-dir",
            str(tmp_path / "refs"),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "calibrated cam1/camera on 24 frames" in printed
    assert "ms per frame (measured now)" in printed
    cfg = load_config(out)
    doc = json.loads(trials.read_text())
    assert doc["met"] is True
    assert doc["final"]["agreement"] >= 0.98
    noscope = cfg.streams[0].filters[0]
    assert noscope.threshold == doc["chosen"][0]["threshold"]  # type: ignore[union-attr]
    assert "# a comment that must survive" in out.read_text()
    # The reference answers were cached: a second run does not need the model for them.
    assert list((tmp_path / "refs").glob("*.json"))


def test_calibrate_command_rejects_a_rule_without_filters(tmp_path: Path) -> None:
    src = tmp_path / "gw.yaml"
    src.write_text("models: [{type: mtcnn}]\nstreams: [{match: '*', kind: frame}]\n")
    code = cli_main(["calibrate", "--video", "vtest", "--config", str(src), "--no-progress"])
    assert code == 2
