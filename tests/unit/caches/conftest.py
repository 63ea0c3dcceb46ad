"""Fixtures for the cache tests: a fake clock and entry builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamedge.caches.store import entry_nbytes
from streamedge.records import CacheEntry, ModelRef

MODEL = ModelRef("detector", "1")


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


EntryFactory = Callable[..., CacheEntry]


@pytest.fixture
def make_entry(clock: FakeClock) -> EntryFactory:
    """Build entries with sensible defaults; ``nbytes`` may be forced."""
    return entry_factory(clock)


def entry_factory(clock: FakeClock) -> EntryFactory:
    """An entry builder on ``clock`` (usable inside hypothesis tests)."""

    def make(
        ident: int,
        *,
        dim: int = 8,
        answer: dict[str, Any] | None = None,
        cost_s: float = 0.1,
        origin: str = "cam1/video",
        model: ModelRef = MODEL,
        nbytes: int | None = None,
        created_at: float | None = None,
        seed: int | None = None,
    ) -> CacheEntry:
        rng = np.random.default_rng(ident if seed is None else seed)
        vector = rng.random(dim, dtype=np.float32)
        ans = {"label": "person"} if answer is None else answer
        return CacheEntry(
            id=ident,
            namespace="ns",
            vector=vector,
            answer=ans,
            model=model,
            created_at=clock() if created_at is None else created_at,
            cost_s=cost_s,
            origin=origin,
            nbytes=entry_nbytes(vector, ans) if nbytes is None else nbytes,
        )

    return make
