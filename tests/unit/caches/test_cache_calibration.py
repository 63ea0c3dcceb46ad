"""Thresholds from an accuracy target: Wilson bound, chooser, online adjuster."""

from __future__ import annotations

import numpy as np
import pytest

from streamedge.caches.calibration import (
    CalibrationSample,
    ThresholdAdjuster,
    choose_thresholds,
    wilson_interval,
)
from streamedge.caches.config import AccuracyConfig, HknnPolicyConfig, ThresholdPolicyConfig
from streamedge.caches.policy import HknnPolicy, ThresholdPolicy, Thresholds


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(30, 30, 1.645)
    assert lo == pytest.approx(0.9172, abs=1e-3)
    assert hi == 1.0
    lo, hi = wilson_interval(81, 100, 1.96)  # textbook: (0.722, 0.875)
    assert lo == pytest.approx(0.7222, abs=1e-3)
    assert hi == pytest.approx(0.8748, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _synthetic(n: int, seed: int) -> list[CalibrationSample]:
    """Near-duplicates are always right; reuse is right less often farther away
    and among mixed neighbours."""
    rng = np.random.default_rng(seed)
    dist = rng.uniform(0.0, 0.1, n)
    homog = rng.choice([0.4, 0.6, 0.8, 1.0], n)
    p_right = np.clip(1.0 - 6.0 * np.maximum(0.0, dist - 0.02) - 0.5 * (1.0 - homog), 0.0, 1.0)
    right = rng.random(n) < p_right
    return [
        CalibrationSample(distance=float(d), homogeneity=float(h), correct=bool(r))
        for d, h, r in zip(dist, homog, right, strict=True)
    ]


def _accuracy(samples: list[CalibrationSample], t: Thresholds) -> tuple[float, int]:
    acc = [
        s.correct
        for s in samples
        if s.distance <= t.max_distance and s.homogeneity >= t.min_homogeneity
    ]
    return (float(np.mean(acc)) if acc else 1.0), len(acc)


@pytest.mark.parametrize("target", [0.9, 0.95, 0.98])
def test_choose_thresholds_meets_target_on_held_out_data(target: float) -> None:
    calib = _synthetic(6000, seed=1)
    held_out = _synthetic(20000, seed=2)
    result = choose_thresholds(calib, target=target)
    assert result is not None
    assert result.lower_bound >= target
    acc, accepted = _accuracy(held_out, result.thresholds)
    assert acc >= target, f"held-out accuracy {acc:.4f} below {target}"
    assert accepted > 0.02 * len(held_out), "a useful share of requests is still reused"


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_choose_thresholds_is_the_loosest_qualifying(target: float) -> None:
    """Brute force over every (distance, θ) pair agrees with the chooser."""
    calib = _synthetic(700, seed=3)
    best = 0
    for theta in sorted({s.homogeneity for s in calib}):
        for d in sorted({s.distance for s in calib}):
            acc = [s.correct for s in calib if s.distance <= d and s.homogeneity >= theta]
            if acc and wilson_interval(sum(acc), len(acc))[0] >= target:
                best = max(best, len(acc))
    result = choose_thresholds(calib, target=target)
    if best == 0:
        assert result is None
        return
    assert result is not None
    assert result.accepted == best
    share, n = _accuracy(calib, result.thresholds)
    assert n == result.accepted
    assert wilson_interval(round(share * n), n)[0] == pytest.approx(result.lower_bound)


def test_choose_thresholds_prefers_more_coverage() -> None:
    # Homogeneous neighbours are always right; mixed ones are right half the time.
    samples = [
        CalibrationSample(distance=0.01 * i, homogeneity=1.0, correct=True) for i in range(200)
    ]
    samples += [
        CalibrationSample(distance=0.001 * i, homogeneity=0.5, correct=i % 2 == 0)
        for i in range(200)
    ]
    result = choose_thresholds(samples, target=0.95)
    assert result is not None
    assert result.thresholds.min_homogeneity == 1.0
    assert result.thresholds.max_distance == pytest.approx(1.99)
    assert result.accepted == 200
    assert result.coverage == pytest.approx(0.5)


def test_choose_thresholds_infeasible_returns_none() -> None:
    samples = [
        CalibrationSample(distance=0.01, homogeneity=1.0, correct=i % 3 != 0) for i in range(90)
    ]
    assert choose_thresholds(samples, target=0.9) is None
    assert choose_thresholds([], target=0.9) is None
    # Too few samples for the bound: 10/10 right is not enough evidence for 0.95.
    few = [CalibrationSample(distance=0.01, homogeneity=1.0, correct=True) for _ in range(10)]
    assert choose_thresholds(few, target=0.95) is None


# ---------------------------------------------------------------------- adjuster


def _adjuster(**kw: bool) -> tuple[HknnPolicy, ThresholdAdjuster]:
    policy = HknnPolicy(
        HknnPolicyConfig(max_distance=0.05, nearest_max_distance=0.02, min_homogeneity=0.8)
    )
    cfg = AccuracyConfig(target=0.95, window=100, min_samples=20, **kw)
    return policy, ThresholdAdjuster(policy, cfg)


def test_adjuster_tightens_when_agreement_falls_below_target() -> None:
    policy, adj = _adjuster()
    changed = None
    for i in range(20):
        changed = adj.record(agreed=i % 5 != 0)  # 80 % agreement
    assert changed is not None
    assert policy.thresholds.max_distance == pytest.approx(0.016)
    assert policy.thresholds.min_homogeneity == pytest.approx(0.85)
    assert adj.tightened == 1
    # The window restarted: the next bad outcome alone does not tighten again.
    assert adj.record(agreed=False) is None


def test_adjuster_does_not_tighten_before_min_samples() -> None:
    policy, adj = _adjuster()
    for _ in range(19):
        assert adj.record(agreed=False) is None
    assert policy.thresholds.max_distance == 0.02
    assert adj.record(agreed=False) is not None


def test_adjuster_loosens_slowly_when_well_above() -> None:
    policy, adj = _adjuster()
    changes = [adj.record(agreed=True) for _ in range(100)]
    assert changes[:99] == [None] * 99  # only after a full window
    assert changes[99] is not None
    assert policy.thresholds.max_distance == pytest.approx(0.021)
    assert policy.thresholds.min_homogeneity == pytest.approx(0.79)
    assert adj.loosened == 1


def test_adjuster_does_not_loosen_when_merely_at_target() -> None:
    policy, adj = _adjuster()
    # 96 % agreement, never below 95 % in any prefix, but its lower bound is not above.
    outcomes = [i % 25 != 24 for i in range(100)]
    for ok in outcomes:
        adj.record(agreed=ok)
    assert adj.loosened == 0
    assert adj.tightened == 0
    assert policy.thresholds.max_distance == 0.02


def test_adjuster_bounds() -> None:
    policy, adj = _adjuster()
    for _ in range(50 * 100):
        adj.record(agreed=True)
    assert policy.thresholds.max_distance <= 4 * 0.02 + 1e-12
    assert policy.thresholds.min_homogeneity >= 0.6 - 1e-12
    for _ in range(40 * 20):
        adj.record(agreed=False)
    assert policy.thresholds.min_homogeneity == 1.0
    assert policy.thresholds.max_distance < 1e-4


def test_adjuster_threshold_policy_and_stats() -> None:
    policy = ThresholdPolicy(ThresholdPolicyConfig(max_distance=0.03))
    adj = ThresholdAdjuster(policy, AccuracyConfig(target=0.9, min_samples=10, window=50))
    for _ in range(10):
        adj.record(agreed=False)
    assert policy.max_distance == pytest.approx(0.024)
    stats = adj.stats()
    assert stats.rechecks == 10
    assert stats.agreed == 0
    assert stats.accuracy == 0.0
    assert stats.wrong_rate_upper == 1.0
    assert stats.thresholds.min_homogeneity == 0.0


def test_adjuster_disabled_only_counts() -> None:
    policy, adj = _adjuster(enabled=False)
    for _ in range(50):
        assert adj.record(agreed=False) is None
    assert policy.thresholds.max_distance == 0.02
    assert adj.stats().rechecks == 50
