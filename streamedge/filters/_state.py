"""Bounded per-stream state for the video filters.

Each filter keeps one state object per :class:`~streamedge.records.StreamKey`.
The table is an LRU map: past ``max_streams`` the least recently used stream
is forgotten, so a gateway that sees many short-lived streams cannot grow
without bound. A forgotten stream simply starts again (its next frame passes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from streamedge.records import Frame, StreamKey

S = TypeVar("S")

ItemKey = tuple[int, float]
"""Identifies a frame between ``check`` and ``observe`` without keeping it alive."""


def item_key(item: Frame) -> ItemKey:
    """The frame's identity and timestamp.

    Filters remember frames in flight by this key instead of a reference, so
    a stream's pending frames do not pin full-size images in memory. The
    timestamp guards against an id reused after a frame was freed; pending
    entries are searched newest first, so a frame's own entry wins anyway.
    """
    return id(item), item.ts


class StreamTable(Generic[S]):
    """Per-stream state, least recently used evicted past ``max_streams``."""

    def __init__(self, factory: Callable[[], S], *, max_streams: int = 10_000) -> None:
        if max_streams < 1:
            msg = f"max_streams must be at least 1, got {max_streams}"
            raise ValueError(msg)
        self._factory = factory
        self._max = max_streams
        self._states: OrderedDict[StreamKey, S] = OrderedDict()

    def get(self, stream: StreamKey) -> S:
        """Return the stream's state, creating it (and evicting the LRU) if new."""
        state = self._states.get(stream)
        if state is None:
            state = self._factory()
            self._states[stream] = state
            while len(self._states) > self._max:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(stream)
        return state

    def peek(self, stream: StreamKey) -> S | None:
        """Return the stream's state without creating it or marking it used."""
        return self._states.get(stream)

    def pop(self, stream: StreamKey) -> None:
        """Forget a stream."""
        self._states.pop(stream, None)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, stream: object) -> bool:
        return stream in self._states

    def __iter__(self) -> Iterator[StreamKey]:
        return iter(list(self._states))
