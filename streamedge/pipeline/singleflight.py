"""Concurrent misses with the same (or a near-identical) input share one inference.

:meth:`SingleFlight.run` keys by an exact key. :meth:`SingleFlight.run_near`
also lets a miss join an in-flight miss of the same group (a cache
namespace) whose embedding is within ``max_distance`` (RMS per dimension,
the unit of the cache's hit threshold) of its own: a burst of near-identical
frames from several cameras then costs one model run, which is what the
cache would have given the later ones had the first answer already been
stored.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from streamedge.records import Vector

T = TypeVar("T")

MAX_NEAR_SCAN = 64
"""In-flight misses per group compared with a new miss (the newest first); beyond
this a miss simply runs on its own, so the scan stays O(1) per message."""


@dataclass(slots=True)
class _Flight(Generic[T]):
    future: asyncio.Future[T]
    vector: Vector | None


class SingleFlight(Generic[T]):
    """The first caller for a key runs the work; later callers await its result.

    Attributes:
        shared: Calls that got another call's result (exact or near).
        near_shared: Of those, calls that joined a near-identical (not exact) flight.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}
        self._groups: dict[Hashable, dict[Hashable, _Flight[T]]] = {}
        self.shared = 0
        self.near_shared = 0

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, shared)``; ``shared`` is True when another call did the work."""
        return await self.run_near(key, work)

    async def run_near(
        self,
        key: Hashable,
        work: Callable[[], Awaitable[T]],
        *,
        group: Hashable | None = None,
        vector: Vector | None = None,
        max_distance: float = 0.0,
    ) -> tuple[T, bool]:
        """Like :meth:`run`, but also join a near-identical flight of the same group.

        Args:
            key: Exact key (an exact match is always joined).
            work: The inference to run when no flight can be joined.
            group: Flights are near-matched only within a group (a namespace).
            vector: This call's embedding (float32, 1-D).
            max_distance: Largest RMS distance per dimension to join at.

        Returns:
            ``(result, shared)``.
        """
        existing = self._flights.get(key)
        if existing is None and group is not None and vector is not None and max_distance > 0:
            existing = self._nearest(group, vector, max_distance)
            if existing is not None:
                self.near_shared += 1
        if existing is not None:
            self.shared += 1
            # shield: one waiter being cancelled must not cancel the others' result.
            return await asyncio.shield(existing.future), True
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        flight = _Flight(fut, vector)
        self._flights[key] = flight
        members = None
        if group is not None and vector is not None:
            members = self._groups.setdefault(group, {})
            members[key] = flight
        try:
            result = await work()
        except BaseException as exc:
            if not fut.done():
                if isinstance(exc, asyncio.CancelledError):
                    fut.cancel()
                else:
                    fut.set_exception(exc)
            # Waiters get the exception; mark it retrieved so an unobserved one is no warning.
            if not fut.cancelled():
                fut.exception()
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            self._flights.pop(key, None)
            if members is not None:
                members.pop(key, None)
                if not members:
                    self._groups.pop(group, None)

    def _nearest(self, group: Hashable, vector: Vector, max_distance: float) -> _Flight[T] | None:
        members = self._groups.get(group)
        if not members:
            return None
        best: _Flight[T] | None = None
        best_d = math.inf
        dim = max(1, vector.shape[0])
        for i, flight in enumerate(reversed(members.values())):
            if i >= MAX_NEAR_SCAN:
                break
            other = flight.vector
            if other is None or other.shape != vector.shape:
                continue
            diff = other - vector
            d = math.sqrt(float(np.dot(diff, diff)) / dim)
            if d <= max_distance and d < best_d:
                best, best_d = flight, d
        return best
