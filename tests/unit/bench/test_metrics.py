"""Harness metrics on hand-checked cases: IoU matching, agreement, NoScope windows, baselines."""

from __future__ import annotations

import pytest

from streamedge.bench.answers import (
    EMPTY_ANSWER,
    answer_count,
    answers_agree,
    boxes_agree,
    counts_agree,
    iou,
    is_positive,
    match_boxes,
)
from streamedge.bench.baselines import (
    oracle,
    oracle_answers,
    pick_uniform,
    uniform,
    uniform_answers,
    uniform_curve,
    uniform_for_target,
)
from streamedge.bench.metrics import (
    accuracy,
    carry_forward,
    pooled_accuracy,
    window_labels,
    windowed_accuracy,
)
from streamedge.records import JSON


def det(*boxes: list[float]) -> JSON:
    return {"boxes": [list(b) for b in boxes], "count": len(boxes)}


def counted(n: int) -> JSON:
    """An answer with ``n`` identical boxes far apart (only the count matters)."""
    return det(*([100.0 * i, 0.0, 100.0 * i + 10, 10.0, 0.9] for i in range(n)))


# -- IoU and matching -----------------------------------------------------------------------


def test_iou_hand_checked() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    # 5x10 overlap = 50, union 100 + 100 - 50 = 150.
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    # 1x1 corner overlap: 1 / (100 + 100 - 1).
    assert iou([0, 0, 10, 10], [9, 9, 19, 19]) == pytest.approx(1 / 199)
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area
    assert iou([0, 0, 10, 10], [30, 30, 40, 40]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # degenerate boxes never match


def test_matching_is_greedy_by_best_iou_and_one_to_one() -> None:
    a, b = [0, 0, 10, 10], [8, 0, 18, 10]
    x, y = [1, 0, 11, 10], [9, 0, 19, 10]  # x: 0.818 with a; y: 0.818 with b
    assert match_boxes([a, b], [y, x]) == [(0, 1), (1, 0)]
    # Two candidates for one box: the better one wins, the other stays unmatched.
    exact, near = [0, 0, 10, 10], [1, 0, 11, 10]
    assert match_boxes([a], [near, exact]) == [(0, 1)]
    # Below the threshold nothing matches; the threshold is inclusive.
    assert match_boxes([a], [[5, 0, 15, 10]]) == []
    assert match_boxes([a], [[5, 0, 15, 10]], iou_threshold=1 / 3) == [(0, 0)]


def test_agreement_needs_every_box_matched_both_ways() -> None:
    a, far = [0, 0, 10, 10, 0.99], [50, 50, 60, 60, 0.9]
    assert boxes_agree([a], [[1, 0, 11, 10, 0.2]])  # scores do not matter
    assert not boxes_agree([a], [a, far])  # an extra box
    assert not boxes_agree([a, far], [a])  # a missing box
    assert not boxes_agree([a, far], [a, [0, 1, 10, 11]])  # same count, one unmatched
    assert boxes_agree([], [])
    assert answers_agree(det(a), det([1, 0, 11, 10, 0.5]))
    assert not answers_agree(det(a), det([5, 0, 15, 10, 0.5]))  # IoU 1/3 < 0.5


def test_missing_answers_are_empty_and_counts_compare() -> None:
    assert answers_agree(None, EMPTY_ANSWER)
    assert not answers_agree(None, counted(1))
    assert answer_count(None) == 0
    assert answer_count({"boxes": [[0, 0, 1, 1]]}) == 1  # no count key: boxes counted
    assert counts_agree(counted(2), det([0, 0, 5, 5], [300, 0, 310, 10]))
    assert not counts_agree(counted(2), counted(1))
    assert is_positive(counted(1))
    assert not is_positive(None)
    assert not is_positive(EMPTY_ANSWER)


def test_classifier_answers_compare_by_label() -> None:
    assert answers_agree({"label": "cat", "score": 0.9}, {"label": "cat", "score": 0.4})
    assert not answers_agree({"label": "cat"}, {"label": "dog"})
    assert counts_agree({"label": "cat"}, {"label": "cat"})
    assert is_positive({"label": "cat"})
    assert not is_positive({"label": "background"})


# -- NoScope windows ------------------------------------------------------------------------


def test_window_needs_28_of_30_positive_frames() -> None:
    first = [True] * 28 + [False] * 2  # 28 of 30: positive
    second = [True] * 27 + [False] * 3  # 27 of 30: negative
    tail = [True] * 5  # an incomplete last window is left out
    assert window_labels(first + second + tail) == [True, False]


def test_windowed_accuracy_counts_false_negatives_and_positives() -> None:
    reference = [True] * 28 + [False] * 2 + [True] * 27 + [False] * 3 + [False] * 30
    predicted = [True] * 90  # windows: T, T, T against T, F, F
    result = windowed_accuracy(reference, predicted)
    assert result.windows == 3
    assert result.positive_windows == 1
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.false_negative_rate == 0.0
    assert result.false_positive_rate == 1.0
    missed = windowed_accuracy(reference, [False] * 90)
    assert missed.accuracy == pytest.approx(2 / 3)
    assert missed.false_negative_rate == 1.0
    assert missed.false_positive_rate == 0.0
    with pytest.raises(ValueError, match="89 predicted"):
        windowed_accuracy(reference, predicted[:-1])


def test_window_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="min_positive"):
        window_labels([True], size=10, min_positive=11)


def test_flicker_inside_a_window_does_not_change_its_label() -> None:
    # One frame of disagreement: per-frame agreement drops, windowed accuracy does not.
    reference = [counted(1)] * 30
    answers: list[JSON | None] = [counted(1)] * 30
    answers[10] = EMPTY_ANSWER
    result = accuracy(reference, answers)
    assert result.agreement == pytest.approx(29 / 30)
    assert result.windowed.accuracy == 1.0


# -- accuracy over sequences ----------------------------------------------------------------


def test_missing_answers_carry_the_last_one_forward() -> None:
    one = counted(1)
    assert carry_forward([None, one, None, EMPTY_ANSWER, None]) == [
        EMPTY_ANSWER,
        one,
        one,
        EMPTY_ANSWER,
        EMPTY_ANSWER,
    ]
    reference = [EMPTY_ANSWER, one, one, counted(2)]
    result = accuracy(reference, [None, one, None, None])
    assert result.agreement == pytest.approx(3 / 4)
    assert result.count_agreement == pytest.approx(3 / 4)
    assert result.presence_agreement == 1.0
    assert accuracy(reference, [None, one, None, None], fill_missing=False).agreement == 0.5


def test_pooled_accuracy_keeps_streams_apart() -> None:
    one = counted(1)
    a = ([one] * 30, [one] * 30)
    b = ([EMPTY_ANSWER] * 30, [None] * 30)
    pooled = pooled_accuracy([a, b])
    assert pooled.frames == 60
    assert pooled.agreement == 1.0
    assert pooled.windowed.windows == 2
    assert pooled.windowed.positive_windows == 1
    # Stream b's missing answers are empty, not stream a's last answer.
    assert accuracy([*a[0], *b[0]], [*a[1], *b[1]]).agreement == 0.5


# -- baselines ------------------------------------------------------------------------------


COUNTS = [0, 0, 1, 1, 1, 0]


def test_uniform_sampling_repeats_the_last_sampled_answer() -> None:
    refs = [counted(n) for n in COUNTS]
    assert uniform_answers(refs, 2) == [refs[0], refs[0], refs[2], refs[2], refs[4], refs[4]]
    k2 = uniform([refs], 2)
    assert (k2.k, k2.inferences, k2.frames) == (2, 3, 6)
    assert k2.accuracy.agreement == pytest.approx(5 / 6)  # frame 5 repeats frame 4's face
    k3 = uniform([refs], 3)
    assert k3.inferences == 2
    assert k3.accuracy.agreement == pytest.approx(4 / 6)  # frames 2 and 5 wrong
    assert uniform([refs], 1).accuracy.agreement == 1.0
    assert uniform([refs], 4).inferences == 2  # frames 0 and 4
    with pytest.raises(ValueError, match="at least 1"):
        uniform_answers(refs, 0)


def test_uniform_at_the_same_agreement_takes_the_largest_k_reaching_it() -> None:
    refs = [counted(n) for n in COUNTS]
    assert uniform_for_target([refs], 0.8).k == 2
    assert uniform_for_target([refs], 0.6).k == 3
    assert uniform_for_target([refs], 1.0).k == 1
    curve = uniform_curve([refs], [1, 2, 3])
    assert [p.k for p in curve] == [1, 2, 3]
    assert pick_uniform(curve, 0.5).k == 3
    with pytest.raises(ValueError, match="reaches"):
        pick_uniform(curve[1:], 1.0)


def test_uniform_counts_runs_per_stream() -> None:
    refs = [counted(n) for n in COUNTS]
    point = uniform([refs, refs[:5]], 2)
    assert point.inferences == 3 + 3  # ceil(6/2) + ceil(5/2)
    assert point.frames == 11


def test_oracle_sends_only_when_the_answer_changes() -> None:
    refs = [counted(n) for n in COUNTS]
    answers, runs = oracle_answers(refs)
    assert runs == 3  # frames 0, 2 and 5
    assert answers == refs
    point = oracle([refs])
    assert point.inferences == 3
    assert point.inference_fraction == pytest.approx(0.5)
    assert point.accuracy.agreement == 1.0


def test_oracle_on_moving_boxes_versus_counts() -> None:
    frames = [det([0, 0, 10, 10]), det([1, 0, 11, 10]), det([6, 0, 16, 10])]
    # Frame 1 still matches frame 0 (IoU 0.82); frame 2 does not (IoU 0.25).
    assert oracle([frames]).inferences == 2
    by_count = oracle([frames], change="count")
    assert by_count.inferences == 1
    assert by_count.accuracy.count_agreement == 1.0
    assert by_count.accuracy.agreement == pytest.approx(2 / 3)
