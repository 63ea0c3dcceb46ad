"""Reducto filter: features as Reducto defines them, last-sent reference, thresholds."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamedge.filters._frames import UnsupportedFrameError
from streamedge.filters.config import ReductoFilterConfig
from streamedge.filters.reducto import (
    ReductoFeatures,
    ReductoFilter,
    ReductoSample,
    ThresholdChoice,
    ThresholdMap,
    best_threshold,
    difference_series,
    replay_thresholds,
    thresholds_for_target,
)
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
EMPTY: JSON = {"boxes": [], "count": 0}
ONE: JSON = {"boxes": [[10, 10, 50, 50]], "count": 1}
PASS, DROP = Verdict.PASS, Verdict.DROP
N = 480 * 640


def scene(seed: int = 0) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (12, 16, 3), dtype=np.uint8)
    return np.asarray(cv2.resize(coarse, (640, 480), interpolation=cv2.INTER_CUBIC), np.uint8)


def flat(level: int = 100) -> npt.NDArray[np.uint8]:
    return np.full((480, 640, 3), level, dtype=np.uint8)


def with_box(
    img: npt.NDArray[np.uint8], x: int, y: int, w: int, h: int, delta: Any = 50
) -> npt.NDArray[np.uint8]:
    out = img.astype(np.int16)
    out[y : y + h, x : x + w] += np.asarray(delta, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


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


def native(**kwargs: Any) -> ReductoFilterConfig:
    """Reducto's exact definitions: native resolution, 11x11 blurs."""
    base: dict[str, Any] = {
        "thresholds": {"pixel": 0.0, "area": 0.0, "edge": 0.0},
        "width": None,
        "area_blur": 11,
        "edge_blur": 11,
    }
    base.update(kwargs)
    return ReductoFilterConfig(**base)


def diff(cfg: ReductoFilterConfig, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> dict[str, float]:
    features = ReductoFeatures(cfg)
    return features.diff(features.prepare(b), features.prepare(a))


# ------------------------------------------------------------------ features


def test_pixel_is_the_fraction_of_pixels_whose_grey_difference_exceeds_21() -> None:
    cfg = native()
    bg = scene()
    assert diff(cfg, bg, with_box(bg, 0, 0, 320, 240, 50))["pixel"] == pytest.approx(0.25)
    assert diff(cfg, bg, with_box(bg, 0, 0, 320, 240, 15))["pixel"] == 0.0  # below 21
    # Grey of the absolute BGR difference: a blue-only change of 60 weighs
    # 0.114 * 60 < 21 and does not count, a green-only one (0.587) does.
    assert diff(cfg, bg, with_box(bg, 0, 0, 320, 240, (60, 0, 0)))["pixel"] == 0.0
    assert diff(cfg, bg, with_box(bg, 0, 0, 320, 240, (0, 60, 0)))["pixel"] == pytest.approx(0.25)


def test_area_is_the_largest_changed_region_not_the_sum() -> None:
    cfg = native()
    bg = flat()
    big = with_box(bg, 40, 40, 160, 120)
    both = with_box(big, 400, 300, 80, 60)
    area_big = diff(cfg, bg, big)["area"]
    area_both = diff(cfg, bg, both)["area"]
    # Blur and dilation grow the region by a few pixels around the box.
    assert 160 * 120 / N <= area_big <= 172 * 132 / N
    assert area_both == pytest.approx(area_big, rel=0.01)  # the second box is smaller
    pixel_both = diff(cfg, bg, both)["pixel"]
    assert pixel_both == pytest.approx((160 * 120 + 80 * 60) / N)


def test_edge_counts_changed_edge_pixels_and_ignores_brightness() -> None:
    cfg = native()
    bg = flat(30)
    boxed = with_box(bg, 200, 150, 200, 100, 200)
    edge = diff(cfg, bg, boxed)["edge"]
    assert 0 < edge < 2 * 2 * (200 + 100) * 3 / N  # only around the outline
    brighter = np.clip(boxed.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    shifted = diff(cfg, boxed, brighter)
    assert shifted["pixel"] == 0.0  # 20 is under the grey level of 21...
    brighter = np.clip(boxed.astype(np.int16) + 25, 0, 255).astype(np.uint8)
    shifted = diff(cfg, boxed, brighter)
    assert shifted["pixel"] == pytest.approx(1.0)  # ...25 is over it, everywhere
    assert shifted["edge"] == 0.0  # and no edge moved


def test_subsampled_features_approximate_native_ones() -> None:
    bg = scene()
    changed = with_box(bg, 64, 48, 320, 240)
    at160 = diff(ReductoFilterConfig(thresholds={"pixel": 0, "area": 0, "edge": 0}), bg, changed)
    full = diff(native(), bg, changed)
    assert at160["pixel"] == pytest.approx(full["pixel"], abs=0.01)
    assert at160["area"] == pytest.approx(full["area"], rel=0.15)


def test_only_configured_features_are_computed() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"area": 0.5}))
    flt.check(S, frame(scene()), 0.0)
    flt.check(S, frame(with_box(scene(), 0, 0, 100, 100)), 1.0)
    assert set(flt.last_values) == {"area"}


# ------------------------------------------------------------------ the filter


def test_static_scene_drops_and_a_change_passes() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}))
    bg = scene()
    images = [bg] * 4 + [with_box(bg, 100, 100, 200, 200)] * 3
    verdicts = run(flt, images, [EMPTY] * 4 + [ONE] * 3)
    assert verdicts == [PASS, DROP, DROP, DROP, PASS, DROP, DROP]


def test_compares_with_the_last_sent_frame_so_slow_drift_passes() -> None:
    # A region brightens by 4 per frame: never 21 from one frame to the next,
    # but 24 from the last sent frame after 6 frames.
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.05}))
    bg = flat(60)
    images = [with_box(bg, 0, 0, 320, 480, 4 * k) for k in range(14)]
    consecutive = difference_series(images, feature="pixel")
    assert max(consecutive) == 0.0
    verdicts = run(flt, images, EMPTY)
    assert verdicts == [PASS] + [DROP] * 5 + [PASS] + [DROP] * 5 + [PASS, DROP]


def test_any_feature_above_its_threshold_passes() -> None:
    bg = flat()
    brighter = flat(130)  # every pixel changes, no edge does
    edge_only = ReductoFilter(ReductoFilterConfig(thresholds={"edge": 0.001}))
    both = ReductoFilter(ReductoFilterConfig(thresholds={"edge": 0.001, "pixel": 0.5}))
    assert run(edge_only, [bg, brighter], EMPTY) == [PASS, DROP]
    assert run(both, [bg, brighter], EMPTY) == [PASS, PASS]


def test_max_age_passes_a_stale_stream() -> None:
    flt = ReductoFilter(ReductoFilterConfig(max_age_s=3.0))
    assert run(flt, [scene()] * 7, EMPTY) == [PASS, DROP, DROP, PASS, DROP, DROP, PASS]


def test_observe_records_samples_for_calibration() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}))
    bg = scene()
    person = with_box(bg, 100, 100, 200, 200)
    run(flt, [bg, bg, person], [EMPTY, EMPTY, ONE])
    # The pipeline verifies a dropped frame by running the model on it.
    dropped = frame(person, ts=3.0)
    assert flt.check(S, dropped, 3.0) is DROP
    flt.observe(S, dropped, result(ONE))
    samples = flt.samples(S)
    assert [(s.changed, s.dropped) for s in samples] == [(True, False), (False, True)]
    assert samples[0].values["pixel"] > 0.1
    assert samples[1].values["pixel"] == 0.0


def test_cache_answers_are_not_samples_but_still_the_last_answer() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}))
    bg = scene()
    first = frame(bg)
    flt.check(S, first, 0.0)
    flt.observe(S, first, result(EMPTY, tier=Tier.CACHE))
    second = frame(with_box(bg, 0, 0, 300, 300), ts=1.0)
    assert flt.check(S, second, 1.0) is PASS
    flt.observe(S, second, result(ONE, tier=Tier.CACHE))
    assert flt.samples(S) == []
    third = frame(with_box(bg, 300, 100, 300, 300), ts=2.0)
    flt.check(S, third, 2.0)
    flt.observe(S, third, result(EMPTY))
    assert [s.changed for s in flt.samples(S)] == [True]  # ONE (cache) -> EMPTY


def test_per_stream_thresholds() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}))
    other = StreamKey("cam", "back")
    bg = scene()
    changed = with_box(bg, 0, 0, 200, 200)
    flt.set_thresholds(S, {"pixel": 0.9})
    assert flt.thresholds(S) == {"pixel": 0.9}
    assert run(flt, [bg, changed], EMPTY) == [PASS, DROP]
    assert run(flt, [bg, changed], EMPTY, stream=other) == [PASS, PASS]
    flt.set_thresholds(S, None)
    assert flt.thresholds(S) == {"pixel": 0.01}
    with pytest.raises(ValueError, match="not configured"):
        flt.set_thresholds(S, {"edge": 0.1})
    with pytest.raises(ValueError, match="non-negative"):
        flt.set_thresholds(S, {"pixel": -1.0})


def test_resolution_change_resets_but_keeps_own_thresholds() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}))
    flt.set_thresholds(S, {"pixel": 0.02})
    bg = scene()
    run(flt, [bg, bg], EMPTY)
    small = np.asarray(cv2.resize(bg, (320, 240)), np.uint8)
    assert run(flt, [small, small], EMPTY) == [PASS, DROP]
    assert flt.decisions["resolution"] == 1
    assert flt.thresholds(S) == {"pixel": 0.02}


def test_streams_are_isolated_and_bounded() -> None:
    flt = ReductoFilter(ReductoFilterConfig(samples=3), max_streams=2)
    bg = scene()
    for n in range(5):
        run(flt, [bg], EMPTY, stream=StreamKey("cam", str(n)))
    assert len(flt) == 2
    flt.reset(StreamKey("cam", "4"))
    assert len(flt) == 1
    images = [with_box(bg, 10 * (k % 2), 0, 300, 300) for k in range(20)]
    run(flt, images, [EMPTY, ONE] * 10)
    state = flt._states.peek(S)  # private: bounded buffers are not public API
    assert state is not None
    assert len(flt.samples(S)) == 3
    assert len(state.pending) <= 8


def test_odd_frames_are_converted_or_rejected() -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01, "edge": 0.01}))
    gray = cv2.cvtColor(scene(), cv2.COLOR_BGR2GRAY)
    assert run(flt, [gray, gray.astype(np.float32) / 255.0], EMPTY) == [PASS, DROP]
    with pytest.raises(UnsupportedFrameError):
        flt.check(S, frame(np.zeros((3, 48, 64), np.uint8)), 2.0)
    reading = Reading(stream=S, ts=0.0, values={"t": 1.0})
    assert flt.check(S, reading, 0.0) is PASS


@settings(max_examples=30, deadline=None)
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
    images = [(rng.random(shape) * 255).astype(dtype) for _ in range(2)]
    for cfg in (
        ReductoFilterConfig(thresholds={"pixel": 0.01, "area": 0.01, "edge": 0.01}),
        native(width=16),
    ):
        flt = ReductoFilter(cfg)
        assert run(flt, images, EMPTY)[0] is PASS


@pytest.mark.parametrize("width", [None, 160])
def test_frames_in_flight_are_not_kept_alive(width: int | None) -> None:
    flt = ReductoFilter(ReductoFilterConfig(thresholds={"pixel": 0.01}, width=width))
    img = scene()
    baseline = sys.getrefcount(img)
    item = frame(img)
    assert flt.check(S, item, 0.0) is PASS
    del item
    assert sys.getrefcount(img) == baseline


def test_is_a_filter() -> None:
    flt: Filter = ReductoFilter(ReductoFilterConfig())
    assert flt.name == "reducto"


def test_config_rejects_even_blur() -> None:
    with pytest.raises(ValueError, match="odd"):
        ReductoFilterConfig(area_blur=4)


# ------------------------------------------------------------------ thresholds


def test_thresholds_for_target_picks_the_largest_safe_value() -> None:
    samples = [ReductoSample({"edge": v / 10}, changed=v >= 6) for v in range(1, 11)]
    exact = thresholds_for_target(samples, 1.0)["edge"]
    assert exact.threshold == pytest.approx(0.5)
    assert exact.accuracy == 1.0
    assert exact.filtered == pytest.approx(0.5)
    loose = thresholds_for_target(samples, 0.9)["edge"]
    assert loose.threshold == pytest.approx(0.6)  # one wrong drop in ten allowed
    assert loose.accuracy == pytest.approx(0.9)
    safe = thresholds_for_target(samples, 0.85, safe_zone=0.06)["edge"]
    assert safe.threshold == pytest.approx(0.5)


def test_thresholds_for_target_treats_ties_and_weights() -> None:
    tied = [ReductoSample({"pixel": 0.2}, changed=False), ReductoSample({"pixel": 0.2}, True)]
    tied += [ReductoSample({"pixel": 0.1}, changed=False)]
    # Dropping 0.2 drops both tied samples, one of them wrong: 2/3 right.
    assert thresholds_for_target(tied, 0.9)["pixel"].threshold == pytest.approx(0.1)
    assert thresholds_for_target(tied, 0.6)["pixel"].threshold == pytest.approx(0.2)
    # A verification sample standing for 9 unverified drops weighs 9.
    weighted = [
        ReductoSample({"pixel": 0.1}, changed=True, dropped=True, weight=9.0),
        ReductoSample({"pixel": 0.5}, changed=False),
    ]
    choice = thresholds_for_target(weighted, 0.5)["pixel"]
    assert choice.threshold == -1.0  # dropping even the smallest value costs 90 %
    assert choice.filtered == 0.0


def test_thresholds_for_target_leaves_out_features_without_samples() -> None:
    samples = [ReductoSample({"edge": 0.1}, changed=False)]
    assert set(thresholds_for_target(samples, 0.9, features=["edge", "area"])) == {"edge"}


def test_replay_thresholds_and_best_threshold() -> None:
    bg = scene()
    person = with_box(bg, 100, 100, 120, 120)
    frames = [bg] * 5 + [person] * 5
    answers = [EMPTY] * 5 + [ONE] * 5
    choices = replay_thresholds(frames, answers, [0.0, 0.01, 0.5], feature="pixel")
    assert [c.accuracy for c in choices] == [1.0, 1.0, 0.5]
    assert [c.filtered for c in choices] == [0.8, 0.8, 0.9]
    best = best_threshold(choices, 0.9)
    assert best is not None
    assert best.threshold == 0.01
    assert best_threshold([ThresholdChoice(0.3, 0.5, 0.9, 10)], 0.9) is None
    with pytest.raises(ValueError, match="one answer per frame"):
        replay_thresholds(frames, answers[:3], [0.0], feature="pixel")


def test_threshold_map_returns_the_nearest_segments_threshold() -> None:
    quiet = ([0.001, 0.002, 0.001, 0.003] * 5, 0.01)
    busy = ([0.2, 0.3, 0.25, 0.35] * 5, 0.002)
    table = ThresholdMap.build([quiet, busy], k=1)
    assert table.bins == 30
    threshold, distance = table.lookup(quiet[0])
    assert threshold == 0.01
    assert distance == 0.0
    threshold, distance = table.lookup([0.21, 0.31, 0.26])
    assert threshold == 0.002
    assert distance > 0.0
    _, far = table.lookup([5.0] * 10)  # outside the profiled range: in no bin
    assert far == pytest.approx(min(float(np.linalg.norm(h)) for h in table.histograms))


def test_threshold_map_votes_by_inverse_distance() -> None:
    busy = ([0.9] * 10, 0.1)
    mostly_busy = ([0.9] * 9 + [0.1], 0.1)
    quiet = ([0.1] * 10, 0.5)
    table = ThresholdMap.build([busy, mostly_busy, quiet], k=3, bins=10)
    # One close neighbour outweighs two far ones (a plain vote would say 0.1).
    threshold, _ = table.lookup([0.1] * 9 + [0.9])
    assert threshold == 0.5
    # An exact match takes the whole vote.
    assert table.lookup([0.1] * 10) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no difference values"):
        ThresholdMap.build([([], 0.1)])
