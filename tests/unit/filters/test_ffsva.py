"""FFS-VA cascade: SDD background, SNM (real onnxruntime), count stage, training."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamedge.errors import ConfigError
from streamedge.filters._snm import FORMAT_VERSION, _export
from streamedge.filters.config import FfsvaFilterConfig
from streamedge.filters.ffsva import FfsvaFilter, SnmModel, fit_snm, snm_input, train_snm
from streamedge.protocols import Filter
from streamedge.records import (
    JSON,
    Frame,
    InferenceResult,
    ModelRef,
    Reading,
    StreamKey,
    Tier,
    Verdict,
)

S = StreamKey("cam", "front")
OTHER = StreamKey("cam", "back")
EMPTY: JSON = {"boxes": [], "count": 0}
ONE: JSON = {"boxes": [[0, 0, 9, 9]], "count": 1}
TWO: JSON = {"boxes": [[0, 0, 9, 9], [20, 20, 29, 29]], "count": 2}
PASS, DROP = Verdict.PASS, Verdict.DROP
SLOTS = [(40, 40), (440, 40), (40, 300), (440, 300)]


def scene(seed: int = 0, shape: tuple[int, int] = (480, 640)) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (shape[0] // 40, shape[1] // 40, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.asarray(big, dtype=np.uint8)


def with_boxes(
    img: npt.NDArray[np.uint8],
    corners: Sequence[tuple[int, int]],
    size: int = 140,
    color: tuple[int, int, int] = (20, 230, 250),
) -> npt.NDArray[np.uint8]:
    out = img.copy()
    for x, y in corners:
        out[y : y + size, x : x + size] = color
    return out


def noisy(img: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    noise = rng.integers(-8, 9, img.shape)
    out: npt.NDArray[np.uint8] = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def frame(img: npt.NDArray[Any], ts: float = 0.0, stream: StreamKey = S) -> Frame:
    return Frame(stream=stream, ts=ts, image=img)


def result(answer: JSON, tier: Tier = Tier.LOCAL) -> InferenceResult:
    return InferenceResult(
        model=ModelRef("det", "1"), answer=answer, tier=tier, backend="test", latency_s=0.05
    )


def run(
    flt: Filter,
    images: Sequence[npt.NDArray[Any]],
    answers: Sequence[JSON] | JSON,
    *,
    stream: StreamKey = S,
) -> list[Verdict]:
    verdicts = []
    for i, img in enumerate(images):
        item = frame(img, ts=float(i), stream=stream)
        verdict = flt.check(stream, item, float(i))
        if verdict is PASS:
            answer = answers[i] if isinstance(answers, Sequence) else answers
            flt.observe(stream, item, result(answer))
        verdicts.append(verdict)
    return verdicts


def constant_snm(p: float, count: float, *, size: int = 16, thumb: int = 50) -> bytes:
    """A real ONNX SNM whose outputs do not depend on the frame."""
    dim = size * size * 3
    zeros = np.zeros(dim, np.float32)
    logit = math.log(p / (1 - p))
    meta = {"version": FORMAT_VERSION, "thumb": thumb, "size": size, "grayscale": False}
    return _export(zeros, logit, zeros, count, meta)


def two_class_set(
    n: int, seed: int, shape: tuple[int, int] = (240, 320)
) -> tuple[list[npt.NDArray[np.uint8]], list[bool]]:
    rng = np.random.default_rng(seed)
    bg = scene(0, shape)
    frames, labels = [], []
    for i in range(n):
        positive = i % 2 == 0
        img = bg
        if positive:
            x = int(rng.integers(0, shape[1] - 80))
            y = int(rng.integers(0, shape[0] - 80))
            img = with_boxes(bg, [(x, y)], size=80)
        frames.append(noisy(img, rng))
        labels.append(positive)
    return frames, labels


# ------------------------------------------------------------------ SNM


def test_snm_trains_and_separates_an_easy_two_class_set() -> None:
    frames, labels = two_class_set(120, seed=1)
    model = SnmModel(train_snm(frames, labels))
    test_frames, test_labels = two_class_set(60, seed=2)
    probs = [model.predict_frame(f)[0] for f in test_frames]
    accuracy = np.mean([(p > 0.5) == y for p, y in zip(probs, test_labels, strict=True)])
    assert accuracy >= 0.95
    assert model.meta["n"] == 120
    assert model.meta["positives"] == 60


def test_snm_count_regression_tracks_object_counts() -> None:
    rng = np.random.default_rng(3)
    bg = scene(shape=(240, 320))
    slots = [(x // 2, y // 2) for x, y in SLOTS]

    def sample(n: int) -> tuple[list[npt.NDArray[np.uint8]], list[int]]:
        frames, counts = [], []
        for _ in range(n):
            k = int(rng.integers(0, 4))
            chosen = [slots[i] for i in rng.choice(4, size=k, replace=False)]
            frames.append(noisy(with_boxes(bg, chosen, size=70), rng))
            counts.append(k)
        return frames, counts

    frames, counts = sample(120)
    model = SnmModel(train_snm(frames, [c > 0 for c in counts], counts, size=8))
    test_frames, test_counts = sample(40)
    predicted = [round(model.predict_frame(f)[1]) for f in test_frames]
    exact = np.mean([p == c for p, c in zip(predicted, test_counts, strict=True)])
    assert exact >= 0.9


def test_snm_balances_rare_positives() -> None:
    # Uninformative inputs and a heavy penalty leave only the intercept: with
    # balanced classes it sits at p = 0.5, not at the 10 % base rate, so rare
    # objects are not drowned by empty frames.
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (200, 192)).astype(np.uint8)
    labels = [i % 10 == 0 for i in range(200)]
    model = SnmModel(fit_snm(x, labels, thumb=50, size=8, grayscale=False, l2=1e6))
    p, _ = model.predict(x)
    assert float(p.mean()) == pytest.approx(0.5, abs=0.02)


def test_snm_file_describes_its_preprocessing() -> None:
    frames, labels = two_class_set(40, seed=4)
    model = SnmModel(train_snm(frames, labels, thumb=32, size=8, grayscale=True))
    assert (model.thumb, model.size, model.grayscale, model.dim) == (32, 8, True, 64)
    p, count = model.predict(np.zeros((3, 64), np.uint8))
    assert p.shape == (3,)
    assert count.shape == (3,)
    assert np.all(count >= 0)  # the count is clipped at 0


def test_snm_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load"):
        SnmModel(b"not an onnx model")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    plain.ir_version = 7
    with pytest.raises(ValueError, match="not an SNM"):
        SnmModel(plain.SerializeToString())
    onnx.checker.check_model(plain)
    x = np.zeros((10, 768), np.uint8)
    with pytest.raises(ValueError, match="both classes"):
        fit_snm(x, [False] * 10, thumb=50, size=16, grayscale=False)
    with pytest.raises(ValueError, match="n labels"):
        fit_snm(x, [True, False], thumb=50, size=16, grayscale=False)
    with pytest.raises(ValueError, match="imply"):
        fit_snm(x, [True, False] * 5, thumb=50, size=8, grayscale=False)


# ------------------------------------------------------------------ cascade routing


def cascade(model: bytes | None = None, **kwargs: Any) -> FfsvaFilter:
    flt = FfsvaFilter(FfsvaFilterConfig(**kwargs))
    if model is not None:
        flt.set_model(S, model)
    return flt


@pytest.mark.parametrize(
    ("p", "count", "last", "verdict", "reason"),
    [
        (0.01, 0.0, EMPTY, DROP, "snm_low"),
        (0.01, 0.0, ONE, PASS, "snm_low_leaving"),
        (0.99, 0.0, EMPTY, PASS, "snm_high"),
        (0.5, 0.0, EMPTY, DROP, "count"),
        (0.5, 0.0, ONE, PASS, "count_leaving"),
        (0.5, 2.0, EMPTY, PASS, "count_ok"),
        (0.5, 0.6, EMPTY, PASS, "count_ok"),  # rounds to 1
        (0.5, 0.4, EMPTY, DROP, "count"),  # rounds to 0
    ],
)
def test_cascade_routes_by_snm_confidence_and_count(
    p: float, count: float, last: JSON, verdict: Verdict, reason: str
) -> None:
    flt = cascade(constant_snm(p, count))
    bg = scene()
    person = with_boxes(bg, [SLOTS[0]])
    assert run(flt, [bg], last) == [PASS]
    assert flt.check(S, frame(person, 1.0), 1.0) is verdict
    assert flt.decisions[reason] == 1


def test_sdd_drops_an_empty_scene_only_after_an_empty_answer() -> None:
    flt = cascade(constant_snm(0.99, 5.0))  # the SNM is never asked
    bg = scene()
    assert run(flt, [bg, bg, bg], [ONE, EMPTY, EMPTY]) == [PASS, PASS, DROP]
    assert flt.decisions["sdd_leaving"] == 1
    assert flt.decisions["sdd"] == 1
    assert flt.decisions["snm_high"] == 0


def test_without_an_snm_the_cascade_passes_what_the_sdd_cannot_drop() -> None:
    bg = scene()
    person = with_boxes(bg, [SLOTS[0]])
    flt = cascade()
    assert run(flt, [bg, person], EMPTY) == [PASS, PASS]
    assert flt.decisions["no_snm"] == 1
    unsure = cascade(constant_snm(0.5, 0.0), count_source="none")
    assert run(unsure, [bg, person], EMPTY) == [PASS, PASS]
    assert unsure.decisions["snm_unsure"] == 1


def test_blob_count_stage() -> None:
    bg = scene()
    two = with_boxes(bg, SLOTS[:2])
    need3 = cascade(count_source="blobs", min_count=3)
    assert run(need3, [bg, two], [TWO, TWO]) == [PASS, DROP]  # 2 blobs < 3, last had 2
    assert need3.decisions["count"] == 1
    need2 = cascade(count_source="blobs", min_count=2)
    assert run(need2, [bg, two], [EMPTY, TWO]) == [PASS, PASS]
    assert need2.decisions["count_ok"] == 1
    tiny = cascade(count_source="blobs", min_count=1, blob_min_pixels=500)
    assert run(tiny, [bg, two], EMPTY) == [PASS, DROP]  # blobs too small to count


def test_blocked_sdd_sees_a_small_object() -> None:
    bg = scene()
    small = with_boxes(bg, [(300, 220)], size=48, color=(60, 60, 60))
    flat = cascade(sdd_threshold=100)
    blocked = cascade(sdd_threshold=100, sdd_metric="blocked")
    assert run(flat, [bg, small], EMPTY) == [PASS, DROP]
    assert run(blocked, [bg, small], EMPTY) == [PASS, PASS]


# ------------------------------------------------------------------ background


def test_median_background_resists_passers_by_and_follows_lighting() -> None:
    flt = cascade(background_step=1.0)
    bg = scene()
    run(flt, [bg] * 3, EMPTY)
    before = flt.background(S)
    assert before is not None
    run(flt, [with_boxes(bg, [SLOTS[0]])], EMPTY)  # one frame of a passer-by
    after = flt.background(S)
    assert after is not None
    assert float(np.abs(after - before).max()) <= 1.0
    # A lighting change of +40: the background walks there at 1 level a frame
    # and the empty scene drops again once it is close enough.
    lit = np.clip(bg.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    verdicts = run(flt, [lit] * 45, EMPTY)
    assert verdicts[0] is PASS
    assert verdicts[-1] is DROP
    final = flt.background(S)
    assert final is not None
    assert float(np.abs(final - lit[:1, :1].astype(np.float32)).min()) < 2.0


def test_mean_background_moves_by_alpha() -> None:
    flt = cascade(background="mean", background_alpha=0.25)
    run(flt, [np.full((48, 64, 3), 100, np.uint8)], EMPTY)
    run(flt, [np.full((48, 64, 3), 180, np.uint8)], EMPTY)
    background = flt.background(S)
    assert background is not None
    np.testing.assert_allclose(background, 120.0, atol=1e-3)


# ------------------------------------------------------------------ online training


def test_online_training_from_observed_answers() -> None:
    flt = cascade(snm_size=8, train_min_per_class=10, sdd_threshold=0.0)
    rng = np.random.default_rng(5)
    bg = scene()
    images, answers = [], []
    for i in range(40):
        positive = i % 2 == 1
        images.append(noisy(with_boxes(bg, [SLOTS[i % 4]]) if positive else bg, rng))
        answers.append(ONE if positive else EMPTY)
    assert flt.train_stream(S) is None  # nothing observed yet
    run(flt, images[:10], answers[:10])
    assert flt.train_stream(S) is None  # 5 of each class < 10
    run(flt, images[10:], answers[10:])
    data = flt.training_set(S)
    assert data is not None
    assert data.x.shape == (40, 8 * 8 * 3)
    assert int(data.labels.sum()) == 20
    assert set(data.counts.tolist()) == {0.0, 1.0}
    onnx_bytes = flt.train_stream(S)
    assert onnx_bytes is not None
    model = flt.model(S)
    assert model is not None
    assert model.size == 8
    # The trained SNM now routes: an empty scene after an empty answer is
    # dropped by it (the SDD threshold of 0 lets everything through).
    assert run(flt, [noisy(bg, rng), noisy(bg, rng)], EMPTY) == [PASS, DROP]
    assert flt.decisions["snm_low"] == 1
    assert run(flt, [noisy(with_boxes(bg, [SLOTS[2]]), rng)], ONE) == [PASS]


def test_training_buffer_is_bounded_per_class() -> None:
    flt = cascade(train_buffer=5, sdd_threshold=0.0)
    bg = scene()
    person = with_boxes(bg, [SLOTS[0]])
    run(flt, [bg, person] * 12, [EMPTY, ONE] * 12)
    data = flt.training_set(S)
    assert data is not None
    assert len(data.labels) == 10
    assert int(data.labels.sum()) == 5


def test_cache_answers_train_only_when_trusted() -> None:
    bg = scene()
    for trust, expected in ((False, None), (True, 1)):
        flt = cascade(trust_cache=trust)
        item = frame(bg)
        flt.check(S, item, 0.0)
        flt.observe(S, item, result(EMPTY, tier=Tier.CACHE))
        data = flt.training_set(S)
        assert (None if data is None else len(data.labels)) == expected


def test_answers_without_a_count_are_not_training_data() -> None:
    flt = cascade()
    item = frame(scene())
    flt.check(S, item, 0.0)
    flt.observe(S, item, result({"label": "person"}))
    assert flt.training_set(S) is None


def test_snm_trained_on_another_thumbnail_size_still_runs() -> None:
    frames, labels = two_class_set(60, seed=6, shape=(480, 640))
    # SDD threshold 0: every frame reaches the SNM.
    flt = cascade(model=train_snm(frames, labels, thumb=32, size=8), sdd_threshold=0.0)
    test_frames, test_labels = two_class_set(2, seed=7, shape=(480, 640))
    run(flt, [scene()], EMPTY)
    verdict = flt.check(S, frame(test_frames[1], 1.0), 1.0)  # an empty frame
    assert not test_labels[1]
    assert verdict is DROP
    assert flt.decisions["snm_low"] == 1


# ------------------------------------------------------------------ models from configuration


def test_configured_models_per_stream_and_default(tmp_path: Path) -> None:
    path = tmp_path / "snm.onnx"
    path.write_bytes(constant_snm(0.99, 1.0))
    own = FfsvaFilter(FfsvaFilterConfig(snm_models={"cam/front": path}))
    own_model = own.model(S)
    assert own_model is not None
    assert own_model.data == path.read_bytes()
    assert own.model(OTHER) is None
    fallback = FfsvaFilter(FfsvaFilterConfig(snm_models={"*": path}))
    assert fallback.model(OTHER) is not None
    # A stream's own model overrides the configured one, and None restores it.
    fallback.set_model(OTHER, constant_snm(0.01, 0.0))
    chosen = fallback.model(OTHER)
    assert chosen is not None
    assert chosen.data != path.read_bytes()
    fallback.set_model(OTHER, None)
    chosen = fallback.model(OTHER)
    assert chosen is not None
    assert chosen.data == path.read_bytes()


def test_unreadable_configured_model_fails_closed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(ConfigError, match="cam/front"):
        FfsvaFilter(FfsvaFilterConfig(snm_models={"cam/front": bad}))
    with pytest.raises(ConfigError, match="missing"):
        FfsvaFilter(FfsvaFilterConfig(snm_models={"*": tmp_path / "missing.onnx"}))


def test_config_checks_threshold_order() -> None:
    with pytest.raises(ValueError, match="snm_low"):
        FfsvaFilterConfig(snm_low=0.9, snm_high=0.1)


# ------------------------------------------------------------------ streams and frames


def test_streams_are_isolated_and_bounded() -> None:
    flt = FfsvaFilter(FfsvaFilterConfig(), max_streams=2)
    flt.set_model(S, constant_snm(0.01, 0.0))
    bg = scene()
    person = with_boxes(bg, [SLOTS[0]])
    assert run(flt, [bg, person], EMPTY) == [PASS, DROP]  # S's own SNM says empty
    assert run(flt, [bg, person], EMPTY, stream=OTHER) == [PASS, PASS]  # no SNM
    run(flt, [bg], EMPTY, stream=StreamKey("cam", "third"))
    assert len(flt) == 2
    assert flt.model(S) is None  # S was the least recently used: forgotten
    flt.reset(OTHER)
    assert len(flt) == 1


def test_resolution_change_keeps_the_snm_and_resets_the_background() -> None:
    flt = cascade(constant_snm(0.01, 0.0))
    bg = scene()
    run(flt, [bg, bg], EMPTY)
    small = np.asarray(cv2.resize(bg, (320, 240)), np.uint8)
    assert run(flt, [small, small], EMPTY) == [PASS, DROP]
    assert flt.decisions["resolution"] == 1
    assert flt.model(S) is not None


def test_odd_frames_and_readings() -> None:
    flt = cascade()
    gray = cv2.cvtColor(scene(), cv2.COLOR_BGR2GRAY)
    assert run(flt, [gray, np.dstack([gray, gray, gray, gray])], EMPTY) == [PASS, DROP]
    reading = Reading(stream=S, ts=0.0, values={"t": 1.0})
    assert flt.check(S, reading, 0.0) is PASS
    flt.observe(S, reading, result(EMPTY))
    flt.observe(OTHER, frame(gray), result(EMPTY))  # unknown stream: ignored


def test_per_stream_thresholds_and_last_scores() -> None:
    flt = cascade(constant_snm(0.5, 0.0))
    flt.set_model(OTHER, constant_snm(0.5, 0.0))
    bg = scene()
    person = with_boxes(bg, [SLOTS[0]])
    flt.set_thresholds(S, snm_low=0.6)  # p = 0.5 is now "empty" for S only
    assert flt.thresholds(S) == {"sdd": 20.0, "snm_low": 0.6, "snm_high": 0.95}
    assert run(flt, [bg, person], EMPTY) == [PASS, DROP]
    assert flt.decisions["snm_low"] == 1
    assert flt.last_scores["p_object"] == pytest.approx(0.5, abs=1e-6)
    assert flt.last_scores["sdd"] > 20.0
    assert run(flt, [bg, person], EMPTY, stream=OTHER) == [PASS, DROP]
    assert flt.decisions["count"] == 1  # OTHER: unsure, then the count stage
    flt.set_thresholds(S, sdd=1e9)  # replaces S's own thresholds: snm_low back to 0.05
    assert flt.thresholds(S)["snm_low"] == 0.05
    assert run(flt, [with_boxes(bg, SLOTS[:3])], EMPTY) == [DROP]
    assert flt.decisions["sdd"] == 1
    with pytest.raises(ValueError, match="snm_low"):
        flt.set_thresholds(S, snm_low=0.99, snm_high=0.5)
    with pytest.raises(ValueError, match="within 0-1"):
        flt.set_thresholds(S, snm_high=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        flt.set_thresholds(S, sdd=-1.0)


def test_blob_count_is_reported() -> None:
    flt = cascade(count_source="blobs", sdd_threshold=0.0)
    bg = scene()
    run(flt, [bg, with_boxes(bg, SLOTS[:3])], EMPTY)
    assert flt.last_scores["blobs"] == 3


def test_max_age_passes_a_stale_stream() -> None:
    flt = cascade(max_age_s=3.0)
    assert run(flt, [scene()] * 7, EMPTY) == [PASS, DROP, DROP, PASS, DROP, DROP, PASS]
    assert flt.decisions["stale"] == 2


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels=st.sampled_from([0, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.bool_]),
    seed=st.integers(0, 2**16),
)
def test_any_valid_image_is_judged_without_raising(
    height: int, width: int, channels: int, dtype: Any, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 0 else (height, width, channels)
    images = [(rng.random(shape) * 255).astype(dtype) for _ in range(3)]
    flt = cascade(constant_snm(0.5, 0.0), count_source="snm", sdd_threshold=0.0)
    blobs = cascade(count_source="blobs", sdd_threshold=0.0, sdd_metric="blocked")
    for f in (flt, blobs):
        assert run(f, images, [EMPTY, ONE, EMPTY])[0] is PASS


def test_frames_in_flight_are_not_kept_alive() -> None:
    flt = cascade()
    img = scene()
    baseline = sys.getrefcount(img)
    item = frame(img)
    assert flt.check(S, item, 0.0) is PASS
    del item
    assert sys.getrefcount(img) == baseline


def test_snm_input_shape() -> None:
    thumb = np.zeros((50, 50, 3), np.uint8)
    assert snm_input(thumb, size=16, grayscale=False).shape == (768,)
    assert snm_input(thumb, size=16, grayscale=True).shape == (256,)


def test_is_a_filter() -> None:
    flt: Filter = cascade()
    assert flt.name == "ffsva"
