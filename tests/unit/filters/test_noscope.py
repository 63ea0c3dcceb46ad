"""NoScope difference detector: earlier-frame and reference modes, t_skip, blocked MSE.

Also covers the frame hygiene shared by the video filters (conversions and
rejections in ``streamedge.filters._frames``).
"""

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
from pydantic import ValidationError

from streamedge.filters._answers import UNKNOWN, AnswerSemantics, is_authoritative
from streamedge.filters._distance import block_mse, max_block_mse, mse
from streamedge.filters._frames import UnsupportedFrameError, thumbnail, working_bgr
from streamedge.filters.config import AnswerConfig, NoScopeFilterConfig
from streamedge.filters.noscope import NoScopeFilter
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


def scene(seed: int = 0, shape: tuple[int, int] = (480, 640)) -> npt.NDArray[np.uint8]:
    """A smooth textured background (a fixed camera's empty scene)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (shape[0] // 40, shape[1] // 40, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.asarray(big, dtype=np.uint8)


def with_box(
    img: npt.NDArray[np.uint8],
    x: int,
    y: int,
    size: int = 120,
    color: tuple[int, int, int] = (20, 230, 250),
) -> npt.NDArray[np.uint8]:
    out = img.copy()
    out[y : y + size, x : x + size] = color
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
    start: int = 0,
) -> list[Verdict]:
    """Check each frame; observe the model's answer for the frames that pass."""
    verdicts = []
    for i, img in enumerate(images):
        item = frame(img, ts=float(start + i), stream=stream)
        verdict = flt.check(stream, item, float(start + i))
        if verdict is PASS:
            answer = answers[i] if isinstance(answers, Sequence) else answers
            flt.observe(stream, item, result(answer))
        verdicts.append(verdict)
    return verdicts


def make(**kwargs: Any) -> NoScopeFilter:
    return NoScopeFilter(NoScopeFilterConfig(**kwargs))


# ------------------------------------------------------------------ answers


def test_answer_semantics_by_presence_count_and_label() -> None:
    presence = AnswerSemantics(AnswerConfig(by="presence"))
    count = AnswerSemantics(AnswerConfig(by="count"))
    label = AnswerSemantics(AnswerConfig(by="label"))
    two: JSON = {"boxes": [[0, 0, 1, 1], [2, 2, 3, 3]], "count": 2}
    assert presence.same(ONE, two)
    assert not count.same(ONE, two)
    assert count.key(two) == 2
    assert presence.is_empty(EMPTY)
    assert not presence.is_empty(ONE)
    # Boxes are counted when the count key is absent; a boolean is not a count.
    assert count.count({"boxes": [[0, 0, 1, 1]]}) == 1
    assert count.count({"count": True}) is None
    assert label.same({"label": "cat", "score": 0.9}, {"label": "cat", "score": 0.6})
    assert not label.same({"label": "cat"}, {"label": "dog"})
    assert label.is_empty({"label": "background"})
    assert not label.is_empty({"label": "cat"})
    custom = AnswerSemantics(AnswerConfig(by="label", label_field="cls", empty_labels=("0",)))
    assert custom.is_empty({"cls": 0})


def test_unreadable_answers_are_never_the_same_nor_empty() -> None:
    sem = AnswerSemantics(AnswerConfig(by="count"))
    odd: JSON = {"label": "cat"}
    assert sem.key(odd) is UNKNOWN
    assert not sem.same(odd, odd)
    assert not sem.is_empty(odd)
    assert UNKNOWN != UNKNOWN  # by design: unknown equals nothing


def test_only_model_tiers_are_authoritative() -> None:
    assert is_authoritative(result(EMPTY, Tier.LOCAL))
    assert is_authoritative(result(EMPTY, Tier.CLOUD))
    assert not is_authoritative(result(EMPTY, Tier.CACHE))
    assert is_authoritative(result(EMPTY, Tier.CACHE), trust_cache=True)
    assert not is_authoritative(result(EMPTY, Tier.FILTER), trust_cache=True)


# ------------------------------------------------------------------ distances


def test_mse_and_block_mse_match_their_definitions() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    diff2 = (a.astype(np.float64) - b) ** 2
    assert mse(a, b) == pytest.approx(diff2.mean())
    blocks = block_mse(a, b, 10)
    expected = diff2.reshape(10, 5, 10, 5, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(blocks, expected, rtol=1e-4)
    assert max_block_mse(a, b, 10) == pytest.approx(expected.max(), rel=1e-4)


# ------------------------------------------------------------------ earlier mode


def test_static_scene_drops_after_first_frame() -> None:
    flt = make(t_diff=1)
    verdicts = run(flt, [scene()] * 20, EMPTY)
    assert verdicts == [PASS] + [DROP] * 19
    assert flt.decisions["first"] == 1
    assert flt.decisions["unchanged"] == 19


def test_object_appearing_passes_then_drops_while_it_stays() -> None:
    flt = make(t_diff=1)
    bg = scene()
    images = [bg] * 5 + [with_box(bg, 300, 200)] * 5
    answers = [EMPTY] * 5 + [ONE] * 5
    verdicts = run(flt, images, answers)
    assert verdicts == [PASS, DROP, DROP, DROP, DROP, PASS, DROP, DROP, DROP, DROP]
    assert flt.decisions["changed"] == 1


def test_t_diff_compares_with_the_frame_t_diff_back() -> None:
    # Period-5 motion: frame i equals frame i-5 but differs from frame i-1.
    bg = scene()
    cycle = [with_box(bg, 40 + 110 * k, 150) for k in range(5)]
    images = cycle * 3
    far = make(t_diff=5)
    assert run(far, images, ONE) == [PASS] * 5 + [DROP] * 10
    assert far.decisions["no_history"] == 4  # frames 1-4 have nothing 5 back
    near = make(t_diff=1)
    assert run(near, images, ONE) == [PASS] * 15


def test_t_diff_not_a_multiple_of_t_skip_uses_newest_checked_frame_far_enough_back() -> None:
    # t_skip=2 checks frames 0, 2, 4...; t_diff=3 makes frame 4 compare with
    # frame 0 (frame 2 is only 2 back). Frame 4 equals frame 0, frame 2 differs.
    bg = scene()
    other = with_box(bg, 200, 100)
    images = [bg, bg, other, other, bg]
    flt = make(t_skip=2, t_diff=3)
    assert run(flt, images, EMPTY) == [PASS, DROP, PASS, DROP, DROP]
    assert flt.decisions["skip"] == 2
    assert flt.decisions["unchanged"] == 1


def test_unchanged_frame_passes_when_the_answer_changed_since_the_earlier_frame() -> None:
    # The scene does not change but the model's answer did (a flickering
    # detection): repeating the last answer would not be the earlier frame's.
    flt = make(t_diff=2)
    bg = scene()
    verdicts = run(flt, [bg, bg, bg, bg], [ONE, EMPTY, EMPTY, EMPTY])
    assert verdicts[:3] == [PASS, PASS, PASS]
    assert flt.decisions["answer_changed"] == 1
    assert verdicts[3] is DROP  # frame 3 vs frame 1: both EMPTY


def test_unreadable_answers_never_allow_a_drop() -> None:
    flt = make(t_diff=1)
    verdicts = run(flt, [scene()] * 5, {"something": "else"})
    assert verdicts == [PASS] * 5


# ------------------------------------------------------------------ t_skip


def test_t_skip_checks_every_nth_frame_and_drops_the_rest() -> None:
    bg = scene()
    car = with_box(bg, 250, 200)
    images = [bg] * 4 + [car] * 5  # the object arrives on frame 4
    flt = make(t_skip=3, t_diff=3)
    verdicts = run(flt, images, [EMPTY] * 4 + [ONE] * 5)
    # Frames 1, 2, 4, 5, 7, 8 are skipped; 3 is unchanged; 6 sees the car.
    assert verdicts == [PASS, DROP, DROP, DROP, DROP, DROP, PASS, DROP, DROP]
    assert flt.decisions["skip"] == 6


def test_skipped_frames_are_not_even_thumbnailed() -> None:
    flt = make(t_skip=10)
    run(flt, [scene()], EMPTY)
    # A skipped frame with unreadable pixels but a valid shape is not looked at.
    weird = np.full((480, 640, 3), np.nan, dtype=np.float32)
    assert flt.check(S, frame(weird), 1.0) is DROP


# ------------------------------------------------------------------ reference mode


def test_reference_is_learned_from_empty_answers_then_used() -> None:
    flt = make(mode="reference", reference_min_frames=3)
    bg = scene()
    verdicts = run(flt, [bg] * 6, EMPTY)
    assert verdicts == [PASS, PASS, PASS, DROP, DROP, DROP]
    assert flt.decisions["no_reference"] == 2
    reference = flt.reference(S)
    assert reference is not None
    np.testing.assert_allclose(reference, thumbnail(bg, 50), atol=0.01)


def test_reference_mode_object_passes_and_empty_scene_after_it_passes_once() -> None:
    flt = make(mode="reference", reference_min_frames=2)
    bg = scene()
    person = with_box(bg, 100, 100)
    images = [bg, bg, bg, person, person, bg, bg]
    answers = [EMPTY, EMPTY, EMPTY, ONE, ONE, EMPTY, EMPTY]
    verdicts = run(flt, images, answers)
    # The empty scene right after the person passes once (the repeated answer
    # would still show the person), then drops again.
    assert verdicts == [PASS, PASS, DROP, PASS, PASS, PASS, DROP]
    assert flt.decisions["object"] == 2
    assert flt.decisions["leaving"] == 1


def test_reference_is_the_mean_then_an_exponential_average() -> None:
    flt = make(mode="reference", reference_min_frames=1, reference_max_frames=2, threshold=0)
    levels = [100, 110, 130]
    for i, level in enumerate(levels):
        item = frame(np.full((480, 640, 3), level, np.uint8), ts=i)
        assert flt.check(S, item, float(i)) is PASS  # threshold 0: nothing is close
        flt.observe(S, item, result(EMPTY))
    reference = flt.reference(S)
    assert reference is not None
    # mean(100, 110) = 105, then weight 1/2: (105 + 130) / 2 = 117.5
    np.testing.assert_allclose(reference, 117.5, atol=1e-3)


def test_reference_ignores_non_empty_and_cache_answers_unless_trusted() -> None:
    bg = scene()
    for trust, expected in ((False, 1), (True, 2)):
        flt = make(mode="reference", trust_cache=trust)
        item = frame(bg)
        flt.check(S, item, 0.0)
        flt.observe(S, item, result(EMPTY))
        flt.observe(S, frame(with_box(bg, 0, 0)), result(ONE))
        flt.observe(S, frame(bg), result(EMPTY, tier=Tier.CACHE))
        state = flt._states.peek(S)  # private: the count is not public API
        assert state is not None
        assert state.reference_count == expected


def test_label_answers_use_empty_labels() -> None:
    flt = make(mode="reference", reference_min_frames=1, answer=AnswerConfig(by="label"))
    bg = scene()
    verdicts = run(flt, [bg, bg, bg], [{"label": "background"}] * 3)
    assert verdicts == [PASS, DROP, DROP]


# ------------------------------------------------------------------ blocked variant


def test_blocked_metric_catches_a_small_local_change_global_mse_misses() -> None:
    bg = scene()
    small = with_box(bg, 300, 220, size=48, color=(60, 60, 60))
    a, b = thumbnail(bg, 50), thumbnail(small, 50)
    assert mse(a, b) < 100 < max_block_mse(a, b, 10)  # the premise of the test
    global_ = make(t_diff=1, threshold=100)
    blocked = make(t_diff=1, threshold=100, metric="blocked", blocks=10)
    assert run(global_, [bg, small], EMPTY) == [PASS, DROP]
    assert run(blocked, [bg, small], EMPTY) == [PASS, PASS]


def test_blocked_needs_blocks_dividing_size() -> None:
    with pytest.raises(ValidationError, match="multiple of blocks"):
        NoScopeFilterConfig(metric="blocked", size=50, blocks=7)


# ------------------------------------------------------------------ streams and state


def test_streams_are_isolated() -> None:
    flt = make(t_diff=1)
    other = StreamKey("cam", "back")
    bg = scene()
    assert run(flt, [bg, bg], EMPTY) == [PASS, DROP]
    assert run(flt, [bg, bg], EMPTY, stream=other) == [PASS, DROP]
    flt.reset(S)
    assert run(flt, [bg], EMPTY) == [PASS]
    assert run(flt, [bg], EMPTY, stream=other) == [DROP]


def test_state_is_bounded_in_streams_and_history() -> None:
    flt = NoScopeFilter(NoScopeFilterConfig(t_diff=7, t_skip=2), max_streams=3)
    bg = scene()
    for n in range(10):
        run(flt, [bg], EMPTY, stream=StreamKey("cam", str(n)))
    assert len(flt) == 3
    run(flt, [bg] * 100, EMPTY, stream=StreamKey("cam", "9"))
    state = flt._states.peek(StreamKey("cam", "9"))
    assert state is not None
    assert len(state.history) <= 7 // 2 + 2
    assert len(state.pending) <= 4


def test_forgotten_stream_starts_again() -> None:
    flt = NoScopeFilter(NoScopeFilterConfig(t_diff=1), max_streams=1)
    bg = scene()
    run(flt, [bg, bg], EMPTY)
    run(flt, [bg], EMPTY, stream=StreamKey("cam", "other"))  # evicts S
    assert run(flt, [bg], EMPTY) == [PASS]


def test_max_age_passes_a_stale_stream() -> None:
    flt = make(t_diff=1, max_age_s=5.0)
    bg = scene()
    verdicts = run(flt, [bg] * 12, EMPTY)
    assert verdicts == [PASS, DROP, DROP, DROP, DROP, PASS, DROP, DROP, DROP, DROP, PASS, DROP]
    assert flt.decisions["stale"] == 2


def test_readings_pass_untouched() -> None:
    flt = make()
    reading = Reading(stream=S, ts=0.0, values={"t": 1.0})
    assert flt.check(S, reading, 0.0) is PASS
    flt.observe(S, reading, result(EMPTY))  # no state, no error
    assert len(flt) == 0


def test_observe_for_an_unknown_stream_is_ignored() -> None:
    flt = make()
    flt.observe(StreamKey("x", "y"), frame(scene()), result(EMPTY))
    assert len(flt) == 0


def test_per_stream_threshold_and_last_distance() -> None:
    bg = scene()
    small = with_box(bg, 300, 220, size=48, color=(60, 60, 60))
    flt = make(t_diff=1, threshold=100)
    other = StreamKey("cam", "back")
    flt.set_threshold(S, 1.0)
    assert flt.threshold(S) == 1.0
    assert flt.threshold(other) == 100
    assert run(flt, [bg, small], EMPTY) == [PASS, PASS]  # 1.0 is strict
    assert flt.last_distance is not None
    assert 1.0 <= flt.last_distance < 100
    assert run(flt, [bg, small], EMPTY, stream=other) == [PASS, DROP]
    # A calibrated threshold survives a resolution change; None restores the config.
    run(flt, [np.asarray(cv2.resize(bg, (320, 240)), np.uint8)], EMPTY)
    assert flt.threshold(S) == 1.0
    flt.set_threshold(S, None)
    assert flt.threshold(S) == 100
    with pytest.raises(ValueError, match="non-negative"):
        flt.set_threshold(S, float("nan"))


def test_frames_in_flight_are_not_kept_alive() -> None:
    flt = make(mode="reference")
    img = scene()
    baseline = sys.getrefcount(img)
    item = frame(img)
    assert flt.check(S, item, 0.0) is PASS
    del item
    assert sys.getrefcount(img) == baseline  # no reference to the 640x480 image left


def test_is_a_filter() -> None:
    flt: Filter = make()
    assert flt.name == "noscope"


# ------------------------------------------------------------------ frame hygiene


def test_resolution_change_resets_the_stream_and_passes() -> None:
    flt = make(t_diff=1)
    bg = scene()
    assert run(flt, [bg, bg], EMPTY) == [PASS, DROP]
    smaller = cv2.resize(bg, (320, 240))
    assert run(flt, [smaller, smaller], EMPTY) == [PASS, DROP]
    assert flt.decisions["resolution"] == 1


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda g: g, id="gray-2d"),
        pytest.param(lambda g: g[:, :, None], id="gray-hw1"),
        pytest.param(lambda g: np.dstack([g, g, g, np.full_like(g, 7)]), id="bgra"),
        pytest.param(lambda g: g.astype(np.float32) / 255.0, id="float32-0-1"),
        pytest.param(lambda g: g.astype(np.float64), id="float64-0-255"),
        pytest.param(lambda g: g.astype(np.uint16) * 257, id="uint16"),
        pytest.param(lambda g: g.astype(np.int32), id="int32"),
        pytest.param(lambda g: np.ascontiguousarray(g[:, ::-1])[:, ::-1], id="flipped-view"),
    ],
)
def test_odd_layouts_are_converted_to_the_same_thumbnail(convert: Any) -> None:
    gray = cv2.cvtColor(scene(), cv2.COLOR_BGR2GRAY)
    bgr = np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    expected = thumbnail(bgr, 50).astype(np.int16)
    got = thumbnail(convert(gray), 50)
    assert got.shape == (50, 50, 3)
    assert got.dtype == np.uint8
    assert np.abs(got.astype(np.int16) - expected).max() <= 1
    flt = make(t_diff=1)
    assert run(flt, [convert(gray)] * 3, EMPTY) == [PASS, DROP, DROP]


def test_bool_masks_become_black_and_white() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 32:] = True
    small = working_bgr(mask, None)
    assert small[0, 0].tolist() == [0, 0, 0]
    assert small[0, 63].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((4, 480, 640, 3), np.uint8), "frame_ndim"),
        (np.zeros((3, 480, 640), np.uint8), "frame_channels"),
        (np.zeros((480, 640, 2), np.uint8), "frame_channels"),
        (np.zeros((0, 640, 3), np.uint8), "frame_empty"),
        (np.zeros((48, 64, 3), np.complex64), "frame_dtype"),
        (np.full((48, 64, 3), np.nan, np.float32), "frame_nonfinite"),
        ([[1, 2], [3, 4]], "frame_type"),
    ],
)
def test_unreadable_frames_are_rejected_with_a_reason(image: Any, reason: str) -> None:
    flt = make()
    with pytest.raises(UnsupportedFrameError) as info:
        flt.check(S, frame(image), 0.0)
    assert info.value.reason == reason


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels=st.sampled_from([0, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64, np.bool_]),
    seed=st.integers(0, 2**16),
)
def test_any_valid_image_is_judged_without_raising(
    height: int, width: int, channels: int, dtype: Any, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 0 else (height, width, channels)
    image = (rng.random(shape) * 255).astype(dtype)
    for cfg in (NoScopeFilterConfig(t_diff=1), NoScopeFilterConfig(metric="blocked")):
        flt = NoScopeFilter(cfg)
        verdicts = run(flt, [image, image], EMPTY)
        assert verdicts[0] is PASS
