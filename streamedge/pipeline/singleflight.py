"""Concurrent misses with the same key share one inference (no stampede)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The first caller for a key runs the work; later callers await its result."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}
        self.shared = 0

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, shared)``; ``shared`` is True when another call did the work."""
        existing = self._flights.get(key)
        if existing is not None:
            self.shared += 1
            # shield: one waiter being cancelled must not cancel the others' result.
            return await asyncio.shield(existing), True
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
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
