"""ApproximateCache: embedder + index + hit policy + byte-capped store.

One instance serves one namespace, ``model@version/embedder@version``; every
application that asks the same model about inputs embedded the same way
shares it (Potluck's application-level reuse).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math

import numpy as np

from streamedge.caches.config import CacheConfig
from streamedge.caches.embedders import DownscaleEmbedder, WindowEmbedder
from streamedge.caches.numpy_index import NumpyIndex
from streamedge.caches.policy import ThresholdPolicy
from streamedge.caches.store import ResultStore, entry_nbytes
from streamedge.errors import CacheError
from streamedge.protocols import Embedder, HitPolicy, Index
from streamedge.records import (
    CacheEntry,
    CacheHit,
    CacheQuery,
    Clock,
    InferenceResult,
    ModelInput,
    ModelRef,
    Neighbour,
    Vector,
)

logger = logging.getLogger(__name__)

_INLINE_SEARCH_MAX = 4096
"""Below this many entries a search costs less than a thread hop; run it inline."""


def namespace_for(model: ModelRef, embedder: Embedder) -> str:
    """``model@version/embedder@version``."""
    return f"{model}/{embedder.name}@{embedder.version}"


class ApproximateCache:
    """Reuse an answer whose input embedding is near enough to the query's."""

    def __init__(
        self,
        *,
        model: ModelRef,
        embedder: Embedder,
        index: Index,
        policy: HitPolicy,
        store: ResultStore,
        clock: Clock,
    ) -> None:
        self.model = model
        self.embedder = embedder
        self.namespace = namespace_for(model, embedder)
        self._index = index
        self._policy = policy
        self._store = store
        self._clock = clock
        self._lock = asyncio.Lock()

    @property
    def entries(self) -> int:
        """Number of cached answers."""
        return len(self._store)

    @property
    def nbytes(self) -> int:
        """Bytes used by cached answers."""
        return self._store.nbytes

    def query_for(self, item: ModelInput, *, vector: Vector | None = None) -> CacheQuery:
        """Embed ``item`` (unless ``vector`` is given) and build the lookup key."""
        vec = self.embedder.embed(item) if vector is None else vector
        if vec.shape != (self.embedder.dim,):
            msg = f"embedding has shape {vec.shape}, expected ({self.embedder.dim},)"
            raise CacheError(msg)
        key = hashlib.blake2b(vec.tobytes(), digest_size=16).digest()
        return CacheQuery(namespace=self.namespace, key=key, vector=vec)

    def _rms(self, d2: float) -> float:
        return math.sqrt(max(d2, 0.0) / self.embedder.dim)

    def _search(self, vector: Vector, k: int) -> tuple[Vector, np.ndarray]:
        return self._index.search(vector[None, :], k)

    async def get(self, query: CacheQuery) -> CacheHit | None:
        """Return a reusable answer or ``None``."""
        k = self._policy.k
        async with self._lock:
            if len(self._index) == 0:
                return None
            if len(self._index) <= _INLINE_SEARCH_MAX:
                dist, ids = self._search(query.vector, k)
            else:
                dist, ids = await asyncio.to_thread(self._search, query.vector, k)
        neighbours = []
        for d2, ident in zip(dist[0].tolist(), ids[0].tolist(), strict=True):
            if ident < 0:
                break
            entry = self._store.get(int(ident))
            if entry is None:
                continue
            neighbours.append(Neighbour(entry=entry, distance=self._rms(float(d2))))
        hit = self._policy.decide(query, neighbours)
        if hit is not None:
            self._store.record_hit(hit.entry.id)
        return hit

    async def put(self, query: CacheQuery, result: InferenceResult, *, origin: str) -> None:
        """Store an answer under the query's embedding."""
        entry = CacheEntry(
            id=self._store.new_id(),
            namespace=self.namespace,
            vector=query.vector,
            answer=result.answer,
            model=result.model,
            created_at=self._clock(),
            cost_s=result.latency_s,
            origin=origin,
            nbytes=entry_nbytes(query.vector, result.answer),
            confidence=result.confidence,
        )
        async with self._lock:
            dead = self._store.add(entry)
            dead.extend(i for i in self._store.expired() if self._store.remove(i))
            if dead:
                self._index.remove(np.asarray(dead, dtype=np.int64))
            if entry.id not in dead:
                self._index.add(np.asarray([entry.id], dtype=np.int64), query.vector[None, :])

    async def clear(self) -> int:
        """Forget every answer; return how many there were."""
        async with self._lock:
            ids = self._store.clear()
            if ids:
                self._index.remove(np.asarray(ids, dtype=np.int64))
            return len(ids)


def build_embedder(
    cfg: CacheConfig, *, window_fields: tuple[str, ...] | None, window_size: int | None
) -> Embedder:
    """Construct the embedder a cache profile names."""
    emb = cfg.embedder
    if emb.type == "downscale":
        return DownscaleEmbedder(emb)
    if window_fields is None or window_size is None:
        msg = f"cache {cfg.name!r}: the window embedder needs a stream with 'window' set"
        raise CacheError(msg)
    return WindowEmbedder(emb, fields=window_fields, size=window_size)


def build_cache(
    cfg: CacheConfig, *, model: ModelRef, embedder: Embedder, clock: Clock
) -> ApproximateCache:
    """Assemble a cache for one namespace from a profile."""
    index: Index = NumpyIndex(embedder.dim)
    policy: HitPolicy = ThresholdPolicy(cfg.policy)
    return ApproximateCache(
        model=model,
        embedder=embedder,
        index=index,
        policy=policy,
        store=ResultStore(cfg.store, clock),
        clock=clock,
    )
