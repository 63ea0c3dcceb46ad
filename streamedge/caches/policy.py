"""Hit policies: decide whether the nearest cached answers may be reused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamedge.records import CacheHit, CacheQuery, Neighbour

if TYPE_CHECKING:
    from streamedge.caches.config import ThresholdPolicyConfig


class ThresholdPolicy:
    """Nearest neighbour under a distance threshold (the simple policy).

    Distances given to it are RMS per dimension (see :mod:`streamedge.caches.cache`).
    """

    k = 1

    def __init__(self, cfg: ThresholdPolicyConfig) -> None:
        self.max_distance = cfg.max_distance

    def decide(self, query: CacheQuery, neighbours: Sequence[Neighbour]) -> CacheHit | None:
        """Reuse the nearest neighbour when it is close enough."""
        if not neighbours:
            return None
        best = neighbours[0]
        if best.distance <= self.max_distance:
            return CacheHit(entry=best.entry, distance=best.distance)
        return None
