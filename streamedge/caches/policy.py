"""Hit policies: decide whether the nearest cached answers may be reused.

Distances handed to a policy are root-mean-square per dimension,
``sqrt(squared_l2 / dim)`` (see :mod:`streamedge.caches.cache`), ascending.

* :class:`ThresholdPolicy`: the nearest entry, if close enough (one global
  distance threshold, the GPTCache / Shadow Puppets way);
* :class:`HknnPolicy`: FoggyCache's homogenised kNN. The ``k`` nearest
  entries within a distance bound vote for their answer; the dominant answer
  is reused only when its share of the votes (the *homogeneity*) reaches
  ``θ`` and the nearest voter is close enough. A bare majority among mixed
  neighbours, which plain kNN would accept, is a miss.

Both expose their tunable :class:`Thresholds` so that
:func:`streamedge.caches.calibration.choose_thresholds` (offline, from
calibration pairs) and :class:`~streamedge.caches.calibration.ThresholdAdjuster`
(online, from re-check outcomes) can set them from an accuracy target, and a
``vote`` method returning the :class:`Vote` features those functions consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from streamedge.caches.answers import answer_key
from streamedge.records import CacheEntry, CacheHit, CacheQuery, Neighbour

if TYPE_CHECKING:
    from streamedge.caches.config import HknnPolicyConfig, ThresholdPolicyConfig

_MEMO_MAX = 65536
"""Answer keys remembered per policy (about 100 bytes each)."""

__all__ = [
    "AdjustablePolicy",
    "HknnPolicy",
    "ThresholdPolicy",
    "Thresholds",
    "Vote",
    "vote",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """The knobs an accuracy target sets.

    Attributes:
        max_distance: The nearest neighbour must be at most this far (RMS).
        min_homogeneity: The dominant answer's share of the votes must be at
            least this (0 for policies without a vote).
    """

    max_distance: float
    min_homogeneity: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """What the neighbours of one query say (H-kNN features).

    Attributes:
        nearest: Distance of the nearest voter (RMS).
        homogeneity: Share of the (weighted) votes for the dominant answer.
        voters: Neighbours within the voting bound.
        key: The dominant answer's :func:`~streamedge.caches.answers.answer_key`.
        entry: The nearest entry with the dominant answer (what is reused).
        distance: That entry's distance (RMS).
    """

    nearest: float
    homogeneity: float
    voters: int
    key: str
    entry: CacheEntry
    distance: float


def vote(
    neighbours: Sequence[Neighbour],
    *,
    max_distance: float,
    answer_field: str | None,
    weighting: str = "uniform",
    memo: dict[int, str] | None = None,
) -> Vote | None:
    """Let the neighbours within ``max_distance`` vote for their answers.

    Args:
        neighbours: Candidates, ascending by distance.
        max_distance: Neighbours farther than this do not vote.
        answer_field: The answer key field (see :func:`answer_key`).
        weighting: ``uniform`` (one vote each) or ``inverse_distance``
            (``1 / (d + ε)`` with ``ε`` 5 % of ``max_distance``, so an exact
            duplicate does not get an infinite vote).
        memo: Answer keys by entry id, filled as a side effect (entries are
            immutable and ids are not reused, so a key never goes stale).

    Returns:
        The vote, or ``None`` when no neighbour is within the bound.
    """
    eps = 0.05 * max_distance + 1e-12
    weights: dict[str, float] = {}
    first: dict[str, Neighbour] = {}
    total = 0.0
    voters = 0
    for nb in neighbours:
        if nb.distance > max_distance:
            break
        cached = None if memo is None else memo.get(nb.entry.id)
        if cached is None:
            key = answer_key(nb.entry.answer, answer_field)
            if memo is not None:
                memo[nb.entry.id] = key
        else:
            key = cached
        w = 1.0 if weighting == "uniform" else 1.0 / (nb.distance + eps)
        weights[key] = weights.get(key, 0.0) + w
        first.setdefault(key, nb)
        total += w
        voters += 1
    if not voters:
        return None
    # Ties go to the answer whose best entry is nearest (dict order is first-seen).
    dominant = max(weights, key=lambda k: (weights[k], -first[k].distance))
    best = first[dominant]
    return Vote(
        nearest=neighbours[0].distance,
        homogeneity=weights[dominant] / total,
        voters=voters,
        key=dominant,
        entry=best.entry,
        distance=best.distance,
    )


class AdjustablePolicy(Protocol):
    """A policy whose thresholds an accuracy controller may set."""

    @property
    def thresholds(self) -> Thresholds:
        """The current thresholds."""
        ...

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Replace the thresholds (sync; takes effect at the next decision)."""
        ...


class ThresholdPolicy:
    """Nearest neighbour under a distance threshold (the simple policy).

    Args:
        cfg: ``max_distance`` in RMS units.
        answer_key: Unused for the decision; kept so every policy is built alike.
    """

    k = 1

    def __init__(self, cfg: ThresholdPolicyConfig, *, answer_key: str | None = None) -> None:
        self.max_distance = cfg.max_distance
        self.answer_field = answer_key

    @property
    def thresholds(self) -> Thresholds:
        """Current distance threshold (homogeneity is not used)."""
        return Thresholds(max_distance=self.max_distance)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Set the distance threshold."""
        self.max_distance = max(0.0, thresholds.max_distance)

    def vote(self, neighbours: Sequence[Neighbour]) -> Vote | None:
        """The nearest neighbour as a one-voter vote (for calibration)."""
        if not neighbours:
            return None
        nb = neighbours[0]
        return Vote(
            nearest=nb.distance,
            homogeneity=1.0,
            voters=1,
            key=answer_key(nb.entry.answer, self.answer_field),
            entry=nb.entry,
            distance=nb.distance,
        )

    def decide(self, query: CacheQuery, neighbours: Sequence[Neighbour]) -> CacheHit | None:
        """Reuse the nearest neighbour when it is close enough."""
        if not neighbours:
            return None
        best = neighbours[0]
        if best.distance <= self.max_distance:
            return CacheHit(entry=best.entry, distance=best.distance)
        return None


class HknnPolicy:
    """FoggyCache's H-kNN: reuse the dominant answer of homogeneous neighbours.

    A hit needs all of: at least ``min_votes`` neighbours within
    ``max_distance``; the nearest of them within ``nearest_max_distance``;
    the dominant answer holding at least ``min_homogeneity`` of the votes.
    The entry reused is the nearest one carrying the dominant answer.

    With ``min_votes=1`` a lone neighbour has homogeneity 1 and the policy
    degrades to a distance threshold (useful while the cache is cold); set
    ``min_votes`` to 2-3 once the cache is dense.

    Args:
        cfg: Bounds, θ, vote weighting.
        answer_key: Field deciding answer equality (see :mod:`streamedge.caches.answers`).
    """

    def __init__(self, cfg: HknnPolicyConfig, *, answer_key: str | None = None) -> None:
        self.k = cfg.k
        self.vote_distance = cfg.max_distance
        self.nearest_max_distance = cfg.nearest_max_distance
        self.min_homogeneity = cfg.min_homogeneity
        self.min_votes = cfg.min_votes
        self.weighting = cfg.weighting
        self.answer_field = answer_key
        self._memo: dict[int, str] = {}

    @property
    def thresholds(self) -> Thresholds:
        """Current ``nearest_max_distance`` and ``θ``."""
        return Thresholds(
            max_distance=self.nearest_max_distance, min_homogeneity=self.min_homogeneity
        )

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Set the nearest-distance bound and ``θ``.

        The voting bound stays as configured, so tightening does not shrink
        the electorate (fewer voters would make homogeneity easier to reach);
        it only grows if the nearest bound is loosened past it.
        """
        self.nearest_max_distance = max(0.0, thresholds.max_distance)
        self.min_homogeneity = min(1.0, max(0.0, thresholds.min_homogeneity))
        self.vote_distance = max(self.vote_distance, self.nearest_max_distance)

    def vote(self, neighbours: Sequence[Neighbour]) -> Vote | None:
        """The vote of the neighbours within the voting bound."""
        if len(self._memo) > _MEMO_MAX:
            self._memo.clear()  # bounded: rebuilt lazily from the entries seen next
        return vote(
            neighbours,
            max_distance=self.vote_distance,
            answer_field=self.answer_field,
            weighting=self.weighting,
            memo=self._memo,
        )

    def decide(self, query: CacheQuery, neighbours: Sequence[Neighbour]) -> CacheHit | None:
        """Reuse the dominant answer when the neighbours are close and agree."""
        if not neighbours or neighbours[0].distance > self.nearest_max_distance:
            return None
        result = self.vote(neighbours)
        if result is None or result.voters < self.min_votes:
            return None
        if result.homogeneity < self.min_homogeneity:
            return None
        return CacheHit(entry=result.entry, distance=result.distance)
