"""Byte-capped storage of cached answers: eviction, TTL, quotas, versions.

The store maps entry id → :class:`~streamedge.records.CacheEntry` and keeps
the bookkeeping eviction needs. It never holds more than ``max_bytes``
*accounted* bytes: each entry is charged :func:`entry_nbytes` (its vector, its
answer, the Python objects around them) plus what the index charges per entry,
which the cache adds before calling :meth:`ResultStore.add`.

**Eviction** (``StoreConfig.eviction``), all through one lazily invalidated
heap of priorities, lowest evicted first:

* ``lru``: last use (insertion or hit);
* ``lfu``: number of hits, ties by last use (Cachier keeps the popular objects);
* ``cost``: Potluck-style importance, computed as in GreedyDual-Size-Frequency
  (Cherkasova 1998)::

      importance = L + cost_s × (1 + hits) / nbytes

  ``cost_s`` is the inference time the answer cost (what each hit saves),
  ``1 + hits`` its use frequency (the insertion counts as a use), ``nbytes``
  what it occupies; so the score is *expected inference seconds saved per
  byte*. ``L`` is the importance of the last entry evicted for space: new and
  recently hit entries are scored against the current ``L``, so entries that
  stop being hit age out even if they were popular once. Ties go to LRU.

**TTL**: entries older than ``ttl_s`` are never returned and are purged
(earliest expiry first) before anything valuable is evicted.

**Per-origin quotas**: with ``max_origin_share < 1`` no origin may hold more
than that share of ``max_bytes``; an origin over its quota evicts its *own*
least valuable entries (same policy), so one chatty camera cannot flush
everyone else's answers. The origin is the device (``quota_by: device``, all
its streams together) or the device/stream; entries merged from a neighbour
gateway (origin ``peer/<gateway>/<device>/<stream>``) count as that gateway.

**Model versions**: :meth:`ResultStore.drop_other_models` removes entries
whose model is not the current ``name@version``.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamedge.records import JSON, CacheEntry, Clock, ModelRef, Vector

if TYPE_CHECKING:
    from streamedge.caches.config import StoreConfig

__all__ = [
    "ENTRY_OVERHEAD",
    "PEER_ORIGIN",
    "ResultStore",
    "StoredEntry",
    "entry_nbytes",
    "is_peer_origin",
    "quota_key",
]

logger = logging.getLogger(__name__)

ENTRY_OVERHEAD = 1024
"""Bytes of Python bookkeeping charged per entry on top of vector and answer:
the CacheEntry object, the numpy array header, the store's dict item and
metadata, eviction and expiry heap items, per-origin order (measured with
tracemalloc at about 930 bytes with quotas on; see the store tests)."""


def _answer_nbytes(answer: JSON) -> int:
    # A JSON object in memory costs a few times its text (dict, str and float
    # objects): 4× the compact text plus a dict header covers small answers.
    return 4 * len(json.dumps(answer, separators=(",", ":"))) + 128


def entry_nbytes(vector: Vector, answer: JSON, *, index_bytes: int = 0) -> int:
    """Bytes an entry is charged: vector, answer, overhead and the index's share.

    Args:
        vector: The entry's key vector.
        answer: Its JSON answer.
        index_bytes: What the index spends per entry (its ``bytes_per_entry``).
    """
    return int(vector.nbytes) + _answer_nbytes(answer) + ENTRY_OVERHEAD + int(index_bytes)


PEER_ORIGIN = "peer/"
"""Origins of entries merged from neighbour gateways start with this: a local
origin is ``device/stream`` (one slash), a peer's ``peer/gateway/device/stream``."""


def is_peer_origin(origin: str) -> bool:
    """Whether an entry came from a neighbour gateway (cache sharing)."""
    return origin.startswith(PEER_ORIGIN) and origin.count("/") >= 3


def quota_key(origin: str, quota_by: str = "device") -> str:
    """Who an entry's bytes count against: its device, its stream, or its peer gateway."""
    if is_peer_origin(origin):
        return origin[: origin.index("/", len(PEER_ORIGIN))]
    if quota_by == "device":
        return origin.split("/", 1)[0]
    return origin


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEntry:
    """An entry with its usage counters (what snapshots save)."""

    entry: CacheEntry
    hits: int


class _Meta:
    """Mutable per-entry state: use counters and the current priority."""

    __slots__ = ("entry", "hits", "prio")

    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry
        self.hits = 0
        self.prio: tuple[float, int] = (0.0, 0)


class _Order:
    """A min-heap of ``(priority, tick, id)`` with lazy invalidation."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int]] = []
        self.live: dict[int, tuple[float, int]] = {}

    def push(self, ident: int, prio: tuple[float, int]) -> None:
        self.live[ident] = prio
        heapq.heappush(self.heap, (prio[0], prio[1], ident))
        if len(self.heap) > 2 * len(self.live) + 64:
            # Stale items (older priorities of hit entries) are dropped in one pass.
            self.heap = [(p, t, i) for i, (p, t) in self.live.items()]
            heapq.heapify(self.heap)

    def discard(self, ident: int) -> None:
        self.live.pop(ident, None)

    def peek(self) -> int | None:
        heap, live = self.heap, self.live
        while heap:
            p, t, ident = heap[0]
            if live.get(ident) == (p, t):
                return ident
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        return len(self.live)


class ResultStore:
    """id → entry; evicts past ``max_bytes`` by the configured policy.

    Args:
        cfg: Cap, TTL, eviction policy, per-origin share.
        clock: Monotonic seconds (``created_at`` of entries is on this clock).
    """

    def __init__(self, cfg: StoreConfig, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._meta: dict[int, _Meta] = {}
        self._order = _Order()
        self._by_origin: dict[str, _Order] = {}
        self._origin_bytes: dict[str, int] = {}
        self._expiry: list[tuple[float, int]] = []
        self._nbytes = 0
        self._next_id = 0
        self._tick = 0
        self._inflation = 0.0  # GDSF's L
        self.evictions = 0
        self.quota_evictions = 0
        self.expirations = 0
        self.rejected = 0

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._meta

    @property
    def nbytes(self) -> int:
        """Accounted bytes of the stored entries."""
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        """The configured cap."""
        return self._cfg.max_bytes

    @property
    def ttl_s(self) -> float:
        """The configured time to live."""
        return self._cfg.ttl_s

    @property
    def quota_bytes(self) -> int:
        """Most bytes one origin may hold."""
        return int(self._cfg.max_origin_share * self._cfg.max_bytes)

    def origin_bytes(self, origin: str) -> int:
        """Accounted bytes held by the quota holder of ``origin`` (see :func:`quota_key`)."""
        return self._origin_bytes.get(self._quota_key(origin), 0)

    def _quota_key(self, origin: str) -> str:
        return quota_key(origin, self._cfg.quota_by)

    def new_id(self) -> int:
        """A fresh entry id (never reused within this store's life)."""
        self._next_id += 1
        return self._next_id

    # ------------------------------------------------------------------ priorities
    def _priority(self, meta: _Meta) -> tuple[float, int]:
        self._tick += 1
        policy = self._cfg.eviction
        if policy == "lru":
            score = 0.0
        elif policy == "lfu":
            score = float(meta.hits)
        else:
            entry = meta.entry
            score = self._inflation + entry.cost_s * (1 + meta.hits) / max(1, entry.nbytes)
        return (score, self._tick)

    def _touch(self, meta: _Meta) -> None:
        meta.prio = self._priority(meta)
        ident = meta.entry.id
        self._order.push(ident, meta.prio)
        if self._cfg.max_origin_share < 1.0:
            key = self._quota_key(meta.entry.origin)
            self._by_origin.setdefault(key, _Order()).push(ident, meta.prio)

    # ------------------------------------------------------------------ mutation
    def add(self, entry: CacheEntry) -> list[int]:
        """Store an entry; return the ids removed to make room.

        An entry with the same id is replaced (its id is not in the returned
        list). Expired entries are purged first. If the entry can never fit
        (larger than the cap or its origin's quota) its own id is returned
        and nothing changes: the caller must not index it.
        """
        if entry.nbytes > self._cfg.max_bytes or entry.nbytes > self.quota_bytes:
            self.rejected += 1
            return [entry.id]
        self._drop(entry.id)
        removed = self.purge_expired()
        owner = self._quota_key(entry.origin)
        if self._cfg.max_origin_share < 1.0:
            origin_order = self._by_origin.get(owner)
            while (
                origin_order is not None
                and self._origin_bytes.get(owner, 0) + entry.nbytes > self.quota_bytes
            ):
                victim = origin_order.peek()
                if victim is None:
                    break
                self._drop(victim)
                removed.append(victim)
                self.quota_evictions += 1
        while self._meta and self._nbytes + entry.nbytes > self._cfg.max_bytes:
            victim = self._order.peek()
            if victim is None:
                break
            # GDSF: the next entries are scored against the importance just evicted.
            self._inflation = max(self._inflation, self._meta[victim].prio[0])
            self._drop(victim)
            removed.append(victim)
            self.evictions += 1
        meta = _Meta(entry)
        self._meta[entry.id] = meta
        self._nbytes += entry.nbytes
        self._origin_bytes[owner] = self._origin_bytes.get(owner, 0) + entry.nbytes
        heapq.heappush(self._expiry, (entry.created_at + self._cfg.ttl_s, entry.id))
        self._touch(meta)
        return removed

    def _drop(self, entry_id: int) -> bool:
        meta = self._meta.pop(entry_id, None)
        if meta is None:
            return False
        entry = meta.entry
        owner = self._quota_key(entry.origin)
        self._nbytes -= entry.nbytes
        left = self._origin_bytes.get(owner, 0) - entry.nbytes
        if left > 0:
            self._origin_bytes[owner] = left
        else:
            self._origin_bytes.pop(owner, None)
        self._order.discard(entry_id)
        origin_order = self._by_origin.get(owner)
        if origin_order is not None:
            origin_order.discard(entry_id)
            if not len(origin_order):
                del self._by_origin[owner]
        return True

    def remove(self, entry_id: int) -> bool:
        """Drop one entry; return whether it was present."""
        return self._drop(entry_id)

    def purge_expired(self) -> list[int]:
        """Remove entries whose TTL has passed; return their ids."""
        now = self._clock()
        out: list[int] = []
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            _, entry_id = heapq.heappop(expiry)
            meta = self._meta.get(entry_id)
            # The heap may hold a replaced entry's old expiry: check it is this one.
            if meta is not None and meta.entry.created_at + self._cfg.ttl_s < now:
                self._drop(entry_id)
                out.append(entry_id)
                self.expirations += 1
        if len(expiry) > 2 * len(self._meta) + 64:
            self._expiry = [
                (m.entry.created_at + self._cfg.ttl_s, i) for i, m in self._meta.items()
            ]
            heapq.heapify(self._expiry)
        return out

    def drop_other_models(self, model: ModelRef) -> list[int]:
        """Remove every entry whose model is not ``model`` (name and version)."""
        stale = [i for i, m in self._meta.items() if m.entry.model != model]
        for entry_id in stale:
            self._drop(entry_id)
        if stale:
            logger.info("dropped %d cached answers of models other than %s", len(stale), model)
        return stale

    def clear(self) -> list[int]:
        """Remove everything; return the ids removed."""
        ids = list(self._meta)
        for entry_id in ids:
            self._drop(entry_id)
        self._expiry.clear()
        self._inflation = 0.0
        return ids

    # ------------------------------------------------------------------ reads
    def get(self, entry_id: int, *, now: float | None = None) -> CacheEntry | None:
        """The entry if present and fresh (does not count as a use).

        Args:
            entry_id: The id.
            now: The clock's time, when the caller already has it (batch reads).
        """
        meta = self._meta.get(entry_id)
        if meta is None:
            return None
        if (self._clock() if now is None else now) - meta.entry.created_at > self._cfg.ttl_s:
            return None
        return meta.entry

    def record_hit(self, entry_id: int) -> None:
        """Count a reuse: raises the entry's LFU count, recency and importance."""
        meta = self._meta.get(entry_id)
        if meta is not None:
            meta.hits += 1
            self._touch(meta)

    def hits(self, entry_id: int) -> int:
        """How often an entry has been reused."""
        meta = self._meta.get(entry_id)
        return 0 if meta is None else meta.hits

    def victim(self) -> int | None:
        """The id that would be evicted next (for tests and diagnostics)."""
        return self._order.peek()

    def entries(self) -> Iterator[StoredEntry]:
        """Stored entries with their hit counts, oldest insertion first."""
        for meta in self._meta.values():
            yield StoredEntry(entry=meta.entry, hits=meta.hits)

    def restore(self, stored: StoredEntry) -> list[int]:
        """Insert an entry with its saved hit count (snapshot restore).

        Returns:
            Ids removed to make room (the entry's own id if it was rejected).
        """
        self._next_id = max(self._next_id, stored.entry.id)
        removed = self.add(stored.entry)
        meta = self._meta.get(stored.entry.id)
        if meta is not None and stored.hits:
            meta.hits = stored.hits
            self._touch(meta)
        return removed
