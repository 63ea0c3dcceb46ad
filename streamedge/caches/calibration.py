"""Thresholds from an accuracy target: offline choice and online adjustment.

Accuracy is the control input; thresholds are outputs (NoScope, FoggyCache,
Potluck). Two tools:

* :func:`choose_thresholds` takes **calibration pairs** — for a sample of
  requests, the features of what the cache would have answered
  (:class:`~streamedge.caches.policy.Vote`: nearest distance, homogeneity)
  and whether that answer agreed with the full model — and returns the
  loosest thresholds whose accepted samples meet the target with confidence;
* :class:`ThresholdAdjuster` is fed re-check outcomes of live hits by the
  pipeline and tightens the policy when measured agreement falls below the
  target, loosening it slowly when agreement is well above.

**The conservative bound.** For ``c`` correct among ``n`` accepted samples,
the accuracy estimate is the lower end of the Wilson score interval
(:func:`wilson_interval`) with ``z = 1.645`` by default: the true accuracy is
above it with about 95 % confidence (one-sided). Unlike the normal
approximation it stays meaningful at ``p̂ = 1`` and small ``n``: 30/30 correct
gives a bound of 0.917, not 1. Caveat: :func:`choose_thresholds` applies the
bound to each candidate threshold separately and keeps the loosest that passes,
which is a search over many candidates; the bound is then slightly
optimistic. Use a larger ``z`` (2.33 for 99 %) when the calibration set is
small or the target strict, and keep checking online (the adjuster).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamedge.caches.policy import AdjustablePolicy, Thresholds

if TYPE_CHECKING:
    from streamedge.caches.config import AccuracyConfig

__all__ = [
    "AdjusterStats",
    "Calibration",
    "CalibrationSample",
    "ThresholdAdjuster",
    "choose_thresholds",
    "wilson_interval",
]


def wilson_interval(successes: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Args:
        successes: Number of successes.
        n: Number of trials (0 gives ``(0, 1)``).
        z: Normal quantile; 1.645 for one-sided 95 %, 1.96 for two-sided 95 %.

    Returns:
        ``(lower, upper)``.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def _wilson_lower(successes: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Vectorised lower end of :func:`wilson_interval`."""
    n_f = n.astype(np.float64)
    p = successes / n_f
    z2 = z * z
    centre = p + z2 / (2 * n_f)
    half = z * np.sqrt(p * (1 - p) / n_f + z2 / (4 * n_f * n_f))
    out: np.ndarray = np.maximum(0.0, (centre - half) / (1.0 + z2 / n_f))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationSample:
    """One calibration pair.

    Attributes:
        distance: The nearest voter's distance (RMS).
        homogeneity: The dominant answer's vote share (1.0 without a vote).
        correct: Whether the answer the cache would have reused agreed with
            the full model on that input (compared by answer key).
    """

    distance: float
    homogeneity: float
    correct: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """The outcome of :func:`choose_thresholds`.

    Attributes:
        thresholds: The loosest thresholds meeting the target.
        accepted: Calibration samples those thresholds accept.
        correct: How many of them were correct.
        lower_bound: Wilson lower bound of accuracy among the accepted.
        coverage: Accepted share of all samples (an estimate of the hit rate).
    """

    thresholds: Thresholds
    accepted: int
    correct: int
    lower_bound: float
    coverage: float


def choose_thresholds(
    samples: Iterable[CalibrationSample],
    *,
    target: float,
    z: float = 1.645,
    total: int | None = None,
    min_accepted: int = 1,
) -> Calibration | None:
    """The loosest ``(max_distance, min_homogeneity)`` meeting an accuracy target.

    "Loosest" means accepting the most samples; ties go to the larger
    distance, then the smaller homogeneity. A pair ``(D, θ)`` accepts a
    sample when ``distance ≤ D`` and ``homogeneity ≥ θ``; it qualifies when
    the Wilson lower bound (``z``) of the accuracy among the accepted is at
    least ``target``.

    Args:
        samples: Calibration pairs (requests with no neighbour at all cannot
            be reused by any threshold; count them in ``total``).
        target: Required accuracy of reused answers, e.g. 0.98.
        z: Normal quantile of the one-sided bound.
        total: Requests in the calibration run, for ``coverage`` (default:
            the number of samples).
        min_accepted: Smallest acceptable number of accepted samples.

    Returns:
        The best calibration, or ``None`` when no thresholds qualify (keep
        reuse off, or collect more samples).
    """
    rows = list(samples)
    if not rows:
        return None
    dist = np.array([s.distance for s in rows], dtype=np.float64)
    homog = np.array([s.homogeneity for s in rows], dtype=np.float64)
    ok = np.array([s.correct for s in rows], dtype=np.int64)
    denominator = total if total is not None else len(rows)
    best: tuple[int, float, float, int, float] | None = None  # n, D, -θ, correct, lb
    for theta in np.unique(homog):
        sel = homog >= theta
        d = dist[sel]
        c = ok[sel]
        order = np.argsort(d, kind="stable")
        d, c = d[order], c[order]
        cum_c = np.cumsum(c)
        n_acc = np.arange(1, len(d) + 1)
        # A threshold at d[i] accepts every sample at that distance: use tie ends only.
        ends = np.flatnonzero(np.append(d[1:] != d[:-1], True))
        n_end = n_acc[ends]
        lower = _wilson_lower(cum_c[ends], n_end, z)
        good = np.flatnonzero((lower >= target) & (n_end >= min_accepted))
        if not len(good):
            continue
        i = int(ends[good[-1]])  # the largest qualifying prefix of this θ
        cand = (int(n_acc[i]), float(d[i]), -float(theta), int(cum_c[i]), float(lower[good[-1]]))
        if best is None or cand[:3] > best[:3]:
            best = cand
    if best is None:
        return None
    n_best, d_best, neg_theta, c_best, lb_best = best
    return Calibration(
        thresholds=Thresholds(max_distance=d_best, min_homogeneity=-neg_theta),
        accepted=n_best,
        correct=c_best,
        lower_bound=lb_best,
        coverage=n_best / max(1, denominator),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdjusterStats:
    """What the adjuster has seen (for the stats topic).

    Attributes:
        rechecks: Re-checked hits since start.
        agreed: How many agreed with the model.
        accuracy: ``agreed / rechecks`` (1.0 before any re-check).
        wrong_rate_upper: Upper confidence bound of the wrong-hit rate.
        window: Outcomes in the current window.
        window_accuracy: Agreement within the window.
        tightened: Times the thresholds were tightened.
        loosened: Times they were loosened.
        thresholds: The current thresholds.
    """

    rechecks: int
    agreed: int
    accuracy: float
    wrong_rate_upper: float
    window: int
    window_accuracy: float
    tightened: int
    loosened: int
    thresholds: Thresholds


class ThresholdAdjuster:
    """Online control of a policy's thresholds from re-check outcomes.

    The pipeline re-checks a sample of hits with the authoritative model and
    calls :meth:`record` with whether the reused answer agreed. Over a window
    of recent outcomes:

    * **tighten fast**: once ``min_samples`` outcomes are in and agreement is
      below ``target``, multiply the distance bound by ``tighten_factor`` and
      raise ``θ`` by ``homogeneity_step``;
    * **loosen slowly**: once a full window is in and even its Wilson *lower*
      bound (``confidence_z``) is at least ``target``, multiply the distance
      by ``loosen_factor`` and lower ``θ`` by a fifth of the step;

    then start a new window, so one batch of evidence moves the thresholds
    once. The distance stays within ``[0, 4 × initial]`` and ``θ`` within
    ``[min(initial, max(0.5, initial − 0.2)), 1]`` so that loosening never
    turns the vote into a minority rule.

    Args:
        policy: The policy to adjust (its current thresholds are the start).
        cfg: Target, window, factors.
    """

    def __init__(self, policy: AdjustablePolicy, cfg: AccuracyConfig) -> None:
        self._policy = policy
        self._cfg = cfg
        start = policy.thresholds
        self._max_distance_cap = 4.0 * start.max_distance
        self._theta_floor = min(start.min_homogeneity, max(0.5, start.min_homogeneity - 0.2))
        self._window: deque[bool] = deque(maxlen=cfg.window)
        self._window_agreed = 0
        self.rechecks = 0
        self.agreed = 0
        self.tightened = 0
        self.loosened = 0

    def record(self, *, agreed: bool) -> Thresholds | None:
        """Feed one re-check outcome; return the new thresholds if they changed."""
        cfg = self._cfg
        self.rechecks += 1
        self.agreed += int(agreed)
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_agreed -= 1
        self._window.append(agreed)
        self._window_agreed += int(agreed)
        if not cfg.enabled:
            return None
        n = len(self._window)
        if n >= cfg.min_samples and self._window_agreed < cfg.target * n:
            return self._move(tighten=True)
        if n >= cfg.window:
            lower, _ = wilson_interval(self._window_agreed, n, cfg.confidence_z)
            if lower >= cfg.target:
                return self._move(tighten=False)
        return None

    def _move(self, *, tighten: bool) -> Thresholds | None:
        cfg = self._cfg
        old = self._policy.thresholds
        if tighten:
            new = Thresholds(
                max_distance=old.max_distance * cfg.tighten_factor,
                min_homogeneity=min(1.0, old.min_homogeneity + cfg.homogeneity_step)
                if old.min_homogeneity > 0
                else 0.0,
            )
            self.tightened += 1
        else:
            new = Thresholds(
                max_distance=min(self._max_distance_cap, old.max_distance * cfg.loosen_factor),
                min_homogeneity=max(
                    self._theta_floor, old.min_homogeneity - cfg.homogeneity_step / 5
                )
                if old.min_homogeneity > 0
                else 0.0,
            )
            self.loosened += 1
        self._window.clear()
        self._window_agreed = 0
        if new == old:
            return None
        self._policy.set_thresholds(new)
        return new

    def stats(self) -> AdjusterStats:
        """Counts, agreement and its bound, current thresholds."""
        lower_agree, _ = wilson_interval(self.agreed, self.rechecks, self._cfg.confidence_z)
        n = len(self._window)
        return AdjusterStats(
            rechecks=self.rechecks,
            agreed=self.agreed,
            accuracy=self.agreed / self.rechecks if self.rechecks else 1.0,
            wrong_rate_upper=1.0 - lower_agree if self.rechecks else 1.0,
            window=n,
            window_accuracy=self._window_agreed / n if n else 1.0,
            tightened=self.tightened,
            loosened=self.loosened,
            thresholds=self._policy.thresholds,
        )
