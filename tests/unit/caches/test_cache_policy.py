"""Hit policies (threshold, H-kNN) and the answer key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamedge.caches.answers import answer_key, answers_agree
from streamedge.caches.config import HknnPolicyConfig, ThresholdPolicyConfig
from streamedge.caches.policy import HknnPolicy, ThresholdPolicy, Thresholds, vote
from streamedge.records import CacheQuery, Neighbour
from tests.unit.caches.conftest import EntryFactory

QUERY = CacheQuery(namespace="ns", key=b"k", vector=np.zeros(8, dtype=np.float32))


def _nbs(make_entry: EntryFactory, items: list[tuple[float, dict[str, Any]]]) -> list[Neighbour]:
    return [
        Neighbour(entry=make_entry(i + 1, answer=ans), distance=d)
        for i, (d, ans) in enumerate(items)
    ]


# ---------------------------------------------------------------------- answer key


def test_answer_key_selects_a_field() -> None:
    a = {"label": "cat", "score": 0.91}
    b = {"score": 0.55, "label": "cat"}
    assert answers_agree(a, b, "label")
    assert not answers_agree(a, b, None)  # whole answers differ in score
    assert answer_key({"x": 1, "y": [1, 2]}) == answer_key({"y": [1, 2], "x": 1})  # canonical


def test_answer_key_auto_prefers_label_then_count_then_whole() -> None:
    # Scores differ between runs of the same answer; "auto" must ignore them.
    assert answers_agree({"label": "cat", "score": 0.91}, {"label": "cat", "score": 0.9}, "auto")
    assert not answers_agree({"label": "cat"}, {"label": "dog"}, "auto")
    assert answers_agree({"count": 1, "boxes": [[1, 2]]}, {"count": 1, "boxes": [[1, 3]]}, "auto")
    assert not answers_agree({"count": 1}, {"count": 2}, "auto")
    assert not answers_agree({"v": 0.5}, {"v": 0.6}, "auto")
    assert answer_key({"v": 0.5}, "auto") == answer_key({"v": 0.5}, None)


def test_answer_key_dotted_and_missing() -> None:
    a = {"summary": {"count": 3, "boxes": [[0, 0, 1, 1]]}}
    b = {"summary": {"count": 3, "boxes": [[5, 5, 6, 6]]}}
    assert answers_agree(a, b, "summary.count")
    assert not answers_agree(a, b, "summary.boxes")
    assert answer_key({"label": "x"}, "count") == "<missing:count>"
    assert answer_key({"summary": 3}, "summary.count") == "<missing:summary.count>"
    assert not answers_agree({"count": 0}, {}, "count")


# ---------------------------------------------------------------------- threshold


def test_threshold_policy_reuses_only_close_neighbours(make_entry: EntryFactory) -> None:
    policy = ThresholdPolicy(ThresholdPolicyConfig(max_distance=0.02))
    nbs = _nbs(make_entry, [(0.01, {"label": "a"}), (0.015, {"label": "b"})])
    hit = policy.decide(QUERY, nbs)
    assert hit is not None
    assert hit.entry.id == 1
    assert policy.decide(QUERY, _nbs(make_entry, [(0.03, {"label": "a"})])) is None
    assert policy.decide(QUERY, []) is None
    policy.set_thresholds(Thresholds(max_distance=0.005))
    assert policy.decide(QUERY, nbs) is None


# ---------------------------------------------------------------------- H-kNN


def _hknn(**kw: Any) -> HknnPolicy:
    base: dict[str, Any] = {
        "k": 5,
        "max_distance": 0.05,
        "nearest_max_distance": 0.02,
        "min_homogeneity": 0.8,
    }
    base.update(kw)
    return HknnPolicy(HknnPolicyConfig(**base), answer_key="label")


def test_hknn_accepts_homogeneous_close_neighbours(make_entry: EntryFactory) -> None:
    nbs = _nbs(
        make_entry,
        [
            (0.010, {"label": "car", "score": 0.9}),
            (0.012, {"label": "car", "score": 0.7}),
            (0.020, {"label": "car", "score": 0.8}),
            (0.030, {"label": "car", "score": 0.6}),
        ],
    )
    hit = _hknn().decide(QUERY, nbs)
    assert hit is not None
    assert hit.entry.id == 1
    assert hit.distance == pytest.approx(0.010)


def test_hknn_rejects_mixed_neighbours(make_entry: EntryFactory) -> None:
    # A bare majority (3 of 5) that plain kNN would accept.
    nbs = _nbs(
        make_entry,
        [
            (0.010, {"label": "car"}),
            (0.012, {"label": "bus"}),
            (0.020, {"label": "car"}),
            (0.030, {"label": "bus"}),
            (0.040, {"label": "car"}),
        ],
    )
    assert _hknn().decide(QUERY, nbs) is None
    assert _hknn(min_homogeneity=0.6).decide(QUERY, nbs) is not None


def test_hknn_rejects_far_neighbours(make_entry: EntryFactory) -> None:
    nbs = _nbs(make_entry, [(0.025, {"label": "car"}), (0.03, {"label": "car"})])
    assert _hknn().decide(QUERY, nbs) is None  # nearest beyond 0.02


def test_hknn_ignores_voters_beyond_the_bound(make_entry: EntryFactory) -> None:
    nbs = _nbs(
        make_entry,
        [
            (0.010, {"label": "car"}),
            (0.015, {"label": "car"}),
            (0.060, {"label": "bus"}),  # beyond max_distance: no vote
            (0.070, {"label": "bus"}),
        ],
    )
    hit = _hknn().decide(QUERY, nbs)
    assert hit is not None
    assert hit.entry.answer["label"] == "car"


def test_hknn_min_votes(make_entry: EntryFactory) -> None:
    nbs = _nbs(make_entry, [(0.01, {"label": "car"}), (0.09, {"label": "car"})])
    assert _hknn(min_votes=1).decide(QUERY, nbs) is not None
    assert _hknn(min_votes=2).decide(QUERY, nbs) is None


def test_hknn_reuses_the_dominant_answer_not_the_nearest(make_entry: EntryFactory) -> None:
    nbs = _nbs(
        make_entry,
        [
            (0.010, {"label": "bus"}),
            (0.011, {"label": "car"}),
            (0.012, {"label": "car"}),
            (0.013, {"label": "car"}),
            (0.014, {"label": "car"}),
        ],
    )
    hit = _hknn(min_homogeneity=0.8).decide(QUERY, nbs)
    assert hit is not None
    assert hit.entry.answer["label"] == "car"
    assert hit.entry.id == 2  # the nearest "car"


def test_hknn_inverse_distance_weighting(make_entry: EntryFactory) -> None:
    # One very close "car" against two farther "bus": uniform says bus 2/3,
    # inverse distance says car.
    nbs = _nbs(
        make_entry,
        [(0.001, {"label": "car"}), (0.04, {"label": "bus"}), (0.045, {"label": "bus"})],
    )
    uniform = vote(nbs, max_distance=0.05, answer_field="label")
    weighted = vote(nbs, max_distance=0.05, answer_field="label", weighting="inverse_distance")
    assert uniform is not None
    assert weighted is not None
    assert uniform.key == answer_key({"label": "bus"}, "label")
    assert uniform.homogeneity == pytest.approx(2 / 3)
    assert weighted.key == answer_key({"label": "car"}, "label")
    assert weighted.homogeneity > 0.8
    hit = _hknn(weighting="inverse_distance").decide(QUERY, nbs)
    assert hit is not None
    assert hit.entry.answer["label"] == "car"


def test_hknn_answer_key_whole_answer(make_entry: EntryFactory) -> None:
    nbs = _nbs(
        make_entry,
        [(0.01, {"label": "car", "n": 1}), (0.011, {"label": "car", "n": 2})],
    )
    by_label = HknnPolicy(HknnPolicyConfig(min_homogeneity=0.9), answer_key="label")
    whole = HknnPolicy(HknnPolicyConfig(min_homogeneity=0.9), answer_key=None)
    assert by_label.decide(QUERY, nbs) is not None
    assert whole.decide(QUERY, nbs) is None  # the answers differ in "n"


def test_hknn_thresholds_round_trip() -> None:
    policy = _hknn()
    policy.set_thresholds(Thresholds(max_distance=0.01, min_homogeneity=0.95))
    assert policy.thresholds == Thresholds(max_distance=0.01, min_homogeneity=0.95)
    assert policy.vote_distance == 0.05  # the electorate is unchanged by tightening
    policy.set_thresholds(Thresholds(max_distance=0.08, min_homogeneity=0.9))
    assert policy.vote_distance == 0.08  # loosening past it widens it


def test_hknn_config_rejects_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="nearest_max_distance"):
        HknnPolicyConfig(max_distance=0.01, nearest_max_distance=0.02)
    with pytest.raises(ValueError, match="min_votes"):
        HknnPolicyConfig(k=2, min_votes=3)
