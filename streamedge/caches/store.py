"""Byte-capped storage of cached answers with LRU eviction and a TTL."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING

from streamedge.records import JSON, CacheEntry, Clock, Vector

if TYPE_CHECKING:
    from streamedge.caches.config import StoreConfig

_ENTRY_OVERHEAD = 200
"""Approximate bytes of Python bookkeeping per entry (dataclass, dict slots)."""


def entry_nbytes(vector: Vector, answer: JSON) -> int:
    """Bytes an entry costs: its vector, its answer as JSON, and overhead."""
    return int(vector.nbytes) + len(json.dumps(answer, separators=(",", ":"))) + _ENTRY_OVERHEAD


class ResultStore:
    """id → entry, least recently used first; evicts past ``max_bytes``."""

    def __init__(self, cfg: StoreConfig, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._hits: dict[int, int] = {}
        self._nbytes = 0
        self._next_id = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored entries."""
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        """The configured cap."""
        return self._cfg.max_bytes

    def new_id(self) -> int:
        """A fresh entry id."""
        self._next_id += 1
        return self._next_id

    def add(self, entry: CacheEntry) -> list[int]:
        """Store an entry; return the ids evicted to make room."""
        if entry.nbytes > self._cfg.max_bytes:
            return [entry.id]  # never fits: the caller must not index it
        evicted: list[int] = []
        old = self._entries.pop(entry.id, None)
        if old is not None:
            self._nbytes -= old.nbytes
        while self._entries and self._nbytes + entry.nbytes > self._cfg.max_bytes:
            victim_id, victim = self._entries.popitem(last=False)
            self._hits.pop(victim_id, None)
            self._nbytes -= victim.nbytes
            evicted.append(victim_id)
            self.evictions += 1
        self._entries[entry.id] = entry
        self._hits.setdefault(entry.id, 0)
        self._nbytes += entry.nbytes
        return evicted

    def get(self, entry_id: int) -> CacheEntry | None:
        """The entry if present and fresh (does not count as a use)."""
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if self._clock() - entry.created_at > self._cfg.ttl_s:
            return None
        return entry

    def record_hit(self, entry_id: int) -> None:
        """Count a reuse and mark the entry most recently used."""
        if entry_id in self._entries:
            self._entries.move_to_end(entry_id)
            self._hits[entry_id] = self._hits.get(entry_id, 0) + 1

    def hits(self, entry_id: int) -> int:
        """How often an entry has been reused."""
        return self._hits.get(entry_id, 0)

    def remove(self, entry_id: int) -> bool:
        """Drop one entry; return whether it was present."""
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return False
        self._hits.pop(entry_id, None)
        self._nbytes -= entry.nbytes
        return True

    def expired(self) -> list[int]:
        """Ids whose TTL has passed (oldest first; stops at the first fresh one)."""
        now = self._clock()
        out: list[int] = []
        # Insertion order is close to age order; scanning all keeps it exact.
        for entry_id, entry in self._entries.items():
            if now - entry.created_at > self._cfg.ttl_s:
                out.append(entry_id)
        return out

    def clear(self) -> list[int]:
        """Remove everything; return the ids removed."""
        ids = list(self._entries)
        self._entries.clear()
        self._hits.clear()
        self._nbytes = 0
        return ids
