"""Shared pieces of filter implementations: bounded per-stream state."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from streamedge.records import InferenceResult, Item, StreamKey

S = TypeVar("S")


class StreamStates(Generic[S]):
    """Per-stream state, least recently used evicted past ``max_streams``."""

    def __init__(self, max_streams: int = 10_000) -> None:
        self._max = max_streams
        self._states: OrderedDict[StreamKey, S] = OrderedDict()

    def get(self, stream: StreamKey) -> S | None:
        """The stream's state, marking it recently used."""
        state = self._states.get(stream)
        if state is not None:
            self._states.move_to_end(stream)
        return state

    def set(self, stream: StreamKey, state: S) -> None:
        """Store a stream's state, evicting the least recently used beyond the bound."""
        self._states[stream] = state
        self._states.move_to_end(stream)
        while len(self._states) > self._max:
            self._states.popitem(last=False)

    def pop(self, stream: StreamKey) -> None:
        """Forget a stream."""
        self._states.pop(stream, None)

    def __len__(self) -> int:
        return len(self._states)


class BaseFilter:
    """Defaults for the optional parts of the Filter protocol."""

    name = "base"

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        """Most filters learn nothing from answers."""

    def reset(self, stream: StreamKey) -> None:
        """Forget a stream's state (subclasses with state override)."""
