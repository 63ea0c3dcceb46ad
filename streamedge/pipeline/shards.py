"""Per-stream bounded queues, grouped into shards that each one worker drains.

A stream always maps to the same shard, so its messages are handled in order
and its filter state has a single writer. Inside a shard, streams take turns
(round robin), so one busy camera cannot starve a sensor. Each stream's queue
has its own bound and full-queue policy; all shards share one byte budget.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from streamedge.config import QueueConfig
from streamedge.records import RawMessage, StreamKey

DropHook = Callable[[RawMessage, str], None]


@dataclass(slots=True)
class _StreamQueue:
    cfg: QueueConfig
    items: deque[RawMessage] = field(default_factory=deque)
    nbytes: int = 0


class ByteBudget:
    """Bytes queued across all shards, against one cap."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.freed = asyncio.Event()

    def fits(self, n: int) -> bool:
        """Whether n more bytes fit (a lone message always fits an empty budget)."""
        return self.used == 0 or self.used + n <= self.max_bytes

    def take(self, n: int) -> None:
        """Account n bytes as queued."""
        self.used += n

    def give(self, n: int) -> None:
        """Account n bytes as released and wake blocked producers."""
        self.used -= n
        self.freed.set()
        self.freed = asyncio.Event()


class Shard:
    """A set of stream queues drained by one worker, in round-robin order."""

    def __init__(self, name: str, budget: ByteBudget, on_drop: DropHook) -> None:
        self.name = name
        self._budget = budget
        self._on_drop = on_drop
        self._queues: dict[StreamKey, _StreamQueue] = {}
        self._ready: deque[StreamKey] = deque()
        self._has_items = asyncio.Event()
        self._space: dict[StreamKey, asyncio.Event] = {}
        self.busy = False

    @property
    def depth(self) -> int:
        """Messages waiting in this shard."""
        return sum(len(q.items) for q in self._queues.values())

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being handled."""
        return not self.busy and not self._ready

    def _push(self, key: StreamKey, q: _StreamQueue, raw: RawMessage) -> None:
        if not q.items:
            self._ready.append(key)
        q.items.append(raw)
        n = len(raw.payload)
        q.nbytes += n
        self._budget.take(n)
        self._has_items.set()

    def _pop_oldest(self, q: _StreamQueue) -> RawMessage:
        raw = q.items.popleft()
        q.nbytes -= len(raw.payload)
        self._budget.give(len(raw.payload))
        return raw

    async def put(self, raw: RawMessage, cfg: QueueConfig) -> None:
        """Enqueue per the stream's policy; may wait (``block``) or drop with a reason."""
        key = raw.stream
        n = len(raw.payload)
        while True:
            # Re-read every turn: get() forgets a queue once it runs empty.
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = _StreamQueue(cfg)
            full = len(q.items) >= cfg.size
            over = not self._budget.fits(n)
            if not full and not over:
                self._push(key, q, raw)
                return
            if cfg.on_full == "block":
                # Wait for this stream's queue or the global budget to free up.
                space = self._space.setdefault(key, asyncio.Event())
                freed = self._budget.freed
                waiters = [asyncio.ensure_future(space.wait()), asyncio.ensure_future(freed.wait())]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
                space.clear()
                continue
            reason = "queue_full" if full else "queue_bytes"
            if cfg.on_full == "drop_oldest" and q.items:
                self._on_drop(self._pop_oldest(q), reason)
                if not q.items and key in self._ready:
                    self._ready.remove(key)
                continue
            self._on_drop(raw, reason)
            return

    async def get(self) -> RawMessage:
        """The next message, streams taking turns."""
        while not self._ready:
            self._has_items.clear()
            await self._has_items.wait()
        key = self._ready.popleft()
        q = self._queues[key]
        raw = self._pop_oldest(q)
        if q.items:
            self._ready.append(key)
        else:
            # Forget empty queues so a large fleet of quiet devices costs nothing.
            del self._queues[key]
        space = self._space.pop(key, None)
        if space is not None:
            space.set()
        return raw

    def drain_all(self) -> list[RawMessage]:
        """Remove and return everything queued (at shutdown)."""
        out: list[RawMessage] = []
        for q in self._queues.values():
            while q.items:
                out.append(self._pop_oldest(q))
        self._queues.clear()
        self._ready.clear()
        return out


class ShardSet:
    """Maps streams to shards by a stable hash."""

    def __init__(self, n: int, *, max_bytes: int, on_drop: DropHook) -> None:
        self.budget = ByteBudget(max_bytes)
        self.shards = [Shard(f"shard{i}", self.budget, on_drop) for i in range(n)]

    def shard_for(self, key: StreamKey) -> Shard:
        """The shard that owns a stream (crc32: stable across runs, unlike hash())."""
        return self.shards[zlib.crc32(str(key).encode()) % len(self.shards)]

    @property
    def depth(self) -> int:
        """Messages queued in all shards."""
        return sum(s.depth for s in self.shards)

    @property
    def idle(self) -> bool:
        """Whether every shard is empty and not busy."""
        return all(s.idle for s in self.shards)
