"""Filters for sensor readings: deadband, exact duplicate, rate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from streamedge.filters.base import BaseFilter, StreamStates
from streamedge.filters.config import (
    DeadbandFilterConfig,
    DuplicateFilterConfig,
    RateFilterConfig,
)
from streamedge.records import Frame, Item, Reading, StreamKey, Verdict


@dataclass(slots=True)
class _Last:
    values: dict[str, float]
    at: float


class DeadbandFilter(BaseFilter):
    """Drop a reading when every field moved less than its epsilon since the last pass.

    A new field, a missing field or ``max_age_s`` since the last pass lets the
    reading through, so a quiet sensor still reports now and then.
    """

    name = "deadband"

    def __init__(self, cfg: DeadbandFilterConfig, *, max_streams: int = 10_000) -> None:
        self._cfg = cfg
        self._states: StreamStates[_Last] = StreamStates(max_streams)

    def _epsilon(self, field: str) -> float:
        eps = self._cfg.epsilon
        if isinstance(eps, dict):
            return eps.get(field, self._cfg.default_epsilon)
        return eps

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """PASS if any field changed by at least its epsilon, or the last pass is old."""
        if not isinstance(item, Reading):
            return Verdict.PASS
        last = self._states.get(stream)
        changed = (
            last is None
            or now - last.at >= self._cfg.max_age_s
            or last.values.keys() != item.values.keys()
            or any(abs(v - last.values[k]) >= self._epsilon(k) for k, v in item.values.items())
        )
        if not changed:
            return Verdict.DROP
        self._states.set(stream, _Last(dict(item.values), now))
        return Verdict.PASS

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream's last passed reading."""
        self._states.pop(stream)


class DuplicateFilter(BaseFilter):
    """Drop an input identical to the stream's previous input (readings or frames)."""

    name = "duplicate"

    def __init__(self, cfg: DuplicateFilterConfig, *, max_streams: int = 10_000) -> None:
        self._cfg = cfg
        self._states: StreamStates[tuple[bytes, float]] = StreamStates(max_streams)

    @staticmethod
    def _digest(item: Item) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        if isinstance(item, Frame):
            h.update(str(item.image.shape).encode())
            h.update(item.image.tobytes())
        else:
            h.update(json.dumps(item.values, sort_keys=True).encode())
            h.update(json.dumps(item.extra, sort_keys=True, default=str).encode())
        return h.digest()

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """DROP when the content equals the last input's and the last pass is recent."""
        digest = self._digest(item)
        last = self._states.get(stream)
        if last is not None and last[0] == digest and now - last[1] < self._cfg.max_age_s:
            return Verdict.DROP
        self._states.set(stream, (digest, now))
        return Verdict.PASS

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream's last digest."""
        self._states.pop(stream)


class RateFilter(BaseFilter):
    """Pass at most one input per ``min_interval_s`` per stream."""

    name = "rate"

    def __init__(self, cfg: RateFilterConfig, *, max_streams: int = 10_000) -> None:
        self._cfg = cfg
        self._states: StreamStates[float] = StreamStates(max_streams)

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """DROP inputs that arrive sooner than the interval after the last pass."""
        last = self._states.get(stream)
        if last is not None and now - last < self._cfg.min_interval_s:
            return Verdict.DROP
        self._states.set(stream, now)
        return Verdict.PASS

    def reset(self, stream: StreamKey) -> None:
        """Forget when the stream last passed."""
        self._states.pop(stream)
