"""ApproximateCache: embedder + index + hit policy + byte-capped store.

One instance serves one namespace, ``model@version/embedder@version``; every
application that asks the same model about inputs embedded the same way
shares it (Potluck's application-level reuse), and entries from every device
feeding it are reused across devices (FoggyCache, Cachier).

Lookups: the index returns the policy's ``k`` nearest ids with squared L2
distances; the cache converts them to RMS per dimension (``sqrt(d2 / dim)``),
drops expired or evicted entries, and lets the policy decide. Searches
and inserts run inline while their moving-average duration stays under
``inline_budget_s``; past it they run in a worker thread (under the cache's
lock, so index and store still see one writer), which keeps the event loop
moving through brute-force scans of large caches and through the occasional
rebuild (HNSW compaction, IVF retraining, A-LSH rehash). numpy and faiss
release the GIL.

Sharing: entries stored by :meth:`ApproximateCache.put` (answers of an
authoritative tier) are handed to the ``on_put`` hook, which publishes them to
neighbour gateways (:mod:`streamedge.caches.sharing`); entries received from
neighbours come in through :meth:`ApproximateCache.merge`, which never calls
the hook, so shared entries are not re-published.

Privacy: a ``private`` cache reuses an answer only for the device that stored
it (its lookups skip other devices' entries) and is never shared.

Accuracy: the pipeline re-checks a sample of hits (:meth:`ApproximateCache.should_recheck`)
with the model and reports the answer with :meth:`ApproximateCache.record_recheck`;
the :class:`~streamedge.caches.calibration.ThresholdAdjuster` then tightens or
loosens the policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamedge.caches.answers import answers_agree
from streamedge.caches.calibration import AdjusterStats, ThresholdAdjuster
from streamedge.caches.config import CacheConfig, IndexConfig, PolicyConfig
from streamedge.caches.embedders import (
    DownscaleEmbedder,
    HistogramEmbedder,
    PHashEmbedder,
    PNetEmbedder,
    WindowEmbedder,
)
from streamedge.caches.numpy_index import NumpyIndex
from streamedge.caches.policy import HknnPolicy, ThresholdPolicy, Vote
from streamedge.caches.snapshot import (
    SnapshotData,
    SnapshotError,
    SnapshotRecord,
    read_snapshot,
    write_snapshot,
)
from streamedge.caches.store import ResultStore, StoredEntry, entry_nbytes
from streamedge.errors import CacheError
from streamedge.protocols import Embedder, HitPolicy, Index
from streamedge.records import (
    JSON,
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

__all__ = [
    "ApproximateCache",
    "CacheStats",
    "build_cache",
    "build_embedder",
    "build_index",
    "build_policy",
    "namespace_for",
    "recheck_gauge",
]

logger = logging.getLogger(__name__)

RECHECK_COUNTS = ("picked", "started", "skipped_busy", "failed", "not_authoritative", "running")
"""Keys of :attr:`ApproximateCache.recheck_counts`."""

_EWMA = 0.2
"""Weight of the newest search time in the moving average."""

_PRIVATE_K_FACTOR = 8
"""A private cache searches this many times the policy's k (at least 32), then
keeps the asker's own entries: other devices may crowd its neighbourhood."""


def namespace_for(model: ModelRef, embedder: Embedder) -> str:
    """``model@version/embedder@version``."""
    return f"{model}/{embedder.name}@{embedder.version}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """Counters of one cache namespace (for the stats topic).

    Attributes:
        entries: Answers held.
        nbytes: Accounted bytes held.
        max_bytes: The cap.
        lookups: ``get`` calls.
        hits: Lookups that reused an answer.
        puts: Answers stored.
        evictions: Entries evicted for space.
        quota_evictions: Entries evicted because their origin was over quota.
        expirations: Entries dropped by TTL.
        rejected: Answers too large to store.
        recheck: Online accuracy of re-checked hits (``None`` without an adjuster).
        recheck_counts: What became of the hits picked for a re-check
            (``picked``, ``started``, ``skipped_busy``, ``failed``,
            ``not_authoritative``, ``running``).
    """

    entries: int
    nbytes: int
    max_bytes: int
    lookups: int
    hits: int
    puts: int
    evictions: int
    quota_evictions: int
    expirations: int
    rejected: int
    recheck: AdjusterStats | None
    recheck_counts: dict[str, int] | None = None


class ApproximateCache:
    """Reuse an answer whose input embedding is near enough to the query's.

    Args:
        model: The model whose answers are cached (entries of other versions
            are dropped on restore and by :meth:`invalidate`).
        embedder: Maps inputs to vectors.
        index: Vector index (faiss-shaped).
        policy: Hit policy.
        store: Byte-capped result store.
        clock: Monotonic seconds.
        answer_key: Field deciding answer equality (see :mod:`streamedge.caches.answers`).
        adjuster: Online threshold control fed by :meth:`record_recheck`.
        recheck_fraction: Share of hits :meth:`should_recheck` selects.
        wall_clock: Epoch seconds, for snapshot ages across restarts.
        inline_budget_s: Searches slower than this (moving average) run in a thread.
        seed: Seed of the re-check sampler.
        private: Reuse answers only for the device that stored them.
        max_concurrent_rechecks: Re-checks of this namespace run at once at most.
    """

    def __init__(
        self,
        *,
        model: ModelRef,
        embedder: Embedder,
        index: Index,
        policy: HitPolicy,
        store: ResultStore,
        clock: Clock,
        answer_key: str | None = None,
        adjuster: ThresholdAdjuster | None = None,
        recheck_fraction: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
        inline_budget_s: float = 0.0005,
        seed: int = 0,
        private: bool = False,
        max_concurrent_rechecks: int = 2,
    ) -> None:
        if index.dim != embedder.dim:
            msg = f"index dim {index.dim} differs from embedder dim {embedder.dim}"
            raise CacheError(msg)
        self.model = model
        self.embedder = embedder
        self.namespace = namespace_for(model, embedder)
        self.answer_key = answer_key
        self.adjuster = adjuster
        self.recheck_fraction = recheck_fraction
        self.max_concurrent_rechecks = max_concurrent_rechecks
        # Re-check bookkeeping, kept by the pipeline (see Processor).
        self.recheck_counts: dict[str, int] = dict.fromkeys(RECHECK_COUNTS, 0)
        # Misses answered by a concurrent (identical or near) miss's inference (Processor).
        self.shared_misses = 0
        self._index = index
        self._policy = policy
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._inline_budget_s = inline_budget_s
        self._search_s = 0.0
        self._insert_s = 0.0
        self._rng = random.Random(seed)
        self._lock = asyncio.Lock()
        self._index_bytes = int(getattr(index, "bytes_per_entry", 4 * index.dim + 64))
        self._warned_models: set[ModelRef] = set()
        self.private = private
        self.on_put: Callable[[CacheEntry], Awaitable[None]] | None = None
        """Called with each entry :meth:`put` stored (cache sharing publishes it)."""
        self.lookups = 0
        self.hits = 0
        self.puts = 0

    # ------------------------------------------------------------------ sizes
    @property
    def entries(self) -> int:
        """Number of cached answers."""
        return len(self._store)

    @property
    def nbytes(self) -> int:
        """Accounted bytes used by cached answers (index share included)."""
        return self._store.nbytes

    @property
    def index(self) -> Index:
        """The vector index (read-only use: diagnostics, benchmarks)."""
        return self._index

    @property
    def hit_distance(self) -> float:
        """The policy's current nearest-distance bound (RMS); 0 when it has none."""
        thresholds = getattr(self._policy, "thresholds", None)
        return float(getattr(thresholds, "max_distance", 0.0))

    @property
    def policy(self) -> HitPolicy:
        """The hit policy."""
        return self._policy

    @property
    def store(self) -> ResultStore:
        """The result store."""
        return self._store

    # ------------------------------------------------------------------ keys
    def query_for(
        self, item: ModelInput, *, vector: Vector | None = None, owner: str | None = None
    ) -> CacheQuery:
        """Embed ``item`` (unless ``vector`` is given) and build the lookup key.

        In a private cache the query's owner is ``owner`` or else the item's
        device; only entries that device stored are reused for it.

        Raises:
            CacheError: the embedding has the wrong shape or is not finite.
        """
        vec = self.embedder.embed(item) if vector is None else vector
        vec = np.ascontiguousarray(vec, dtype=np.float32)
        if vec.shape != (self.embedder.dim,):
            msg = f"embedding has shape {vec.shape}, expected ({self.embedder.dim},)"
            raise CacheError(msg)
        if not np.all(np.isfinite(vec)):
            raise CacheError("embedding contains NaN or infinity")
        digest = hashlib.blake2b(vec.tobytes(), digest_size=16)
        if self.private:
            if owner is None:
                stream = getattr(item, "stream", None)
                owner = getattr(stream, "device", None)
            if owner is None:
                raise CacheError("a private cache needs the device of the input")
            # The exact key also keys single-flight: devices must not share one inference.
            digest.update(b"\x00" + owner.encode())
        key = digest.digest()
        return CacheQuery(
            namespace=self.namespace, key=key, vector=vec, owner=owner if self.private else None
        )

    # ------------------------------------------------------------------ lookup (sync core)
    def _search(self, vector: Vector, k: int) -> tuple[Vector, np.ndarray, float]:
        start = time.perf_counter()
        dist, ids = self._index.search(vector[None, :], k)
        return dist, ids, time.perf_counter() - start

    def _k_for(self, query: CacheQuery, k: int) -> int:
        if query.owner is None:
            return k
        return max(k * _PRIVATE_K_FACTOR, 32)

    def _neighbours(
        self, dist: Vector, ids: np.ndarray, owner: str | None = None, k: int | None = None
    ) -> list[Neighbour]:
        dim = self.embedder.dim
        now = self._clock()
        get = self._store.get
        out: list[Neighbour] = []
        mine = None if owner is None else owner + "/"
        for d2, ident in zip(dist[0].tolist(), ids[0].tolist(), strict=True):
            if ident < 0:
                break
            entry = get(ident, now=now)
            if entry is None:
                continue  # expired, or evicted between search and now
            if mine is not None and not entry.origin.startswith(mine):
                continue  # private namespace: another device's answer
            out.append(Neighbour(entry=entry, distance=math.sqrt(max(d2, 0.0) / dim)))
            if k is not None and len(out) >= k:
                break
        return out

    def neighbours(self, query: CacheQuery, k: int | None = None) -> list[Neighbour]:
        """The fresh neighbours of a query, RMS distances ascending (sync).

        Not synchronised with :meth:`put`: call it from the event loop thread
        only, or while nothing else uses the cache (benchmarks, calibration).
        """
        want = k or self._policy.k
        dist, ids, _ = self._search(query.vector, self._k_for(query, want))
        return self._neighbours(dist, ids, query.owner, want)

    def lookup(self, query: CacheQuery) -> CacheHit | None:
        """Search, apply the policy and count the hit (sync; see :meth:`neighbours`)."""
        k = self._policy.k
        dist, ids, took = self._search(query.vector, self._k_for(query, k))
        self._search_s += _EWMA * (took - self._search_s)
        return self._decide(query, self._neighbours(dist, ids, query.owner, k))

    def _decide(self, query: CacheQuery, neighbours: list[Neighbour]) -> CacheHit | None:
        self.lookups += 1
        hit = self._policy.decide(query, neighbours)
        if hit is not None:
            self.hits += 1
            self._store.record_hit(hit.entry.id)
        return hit

    def vote(self, query: CacheQuery) -> Vote | None:
        """What the policy's neighbours say, without deciding (calibration runs).

        Returns ``None`` for a policy without a ``vote`` method or no neighbours.
        """
        voter = getattr(self._policy, "vote", None)
        if voter is None:
            return None
        result: Vote | None = voter(self.neighbours(query))
        return result

    # ------------------------------------------------------------------ async API
    async def get(self, query: CacheQuery) -> CacheHit | None:
        """Return a reusable answer or ``None`` (errors propagate as CacheError)."""
        async with self._lock:
            if len(self._index) == 0:
                self.lookups += 1
                return None
            k = self._policy.k
            k_search = self._k_for(query, k)
            if self._search_s <= self._inline_budget_s:
                dist, ids, took = self._search(query.vector, k_search)
            else:
                dist, ids, took = await asyncio.to_thread(self._search, query.vector, k_search)
            self._search_s += _EWMA * (took - self._search_s)
            return self._decide(query, self._neighbours(dist, ids, query.owner, k))

    async def put(self, query: CacheQuery, result: InferenceResult, *, origin: str) -> None:
        """Store an answer under the query's embedding.

        Answers of another model version than the cache's are not stored
        (logged once per version).
        """
        if result.model != self.model:
            if result.model not in self._warned_models:
                self._warned_models.add(result.model)
                logger.warning(
                    "cache %s: not storing answers of %s (the cache holds %s)",
                    self.namespace,
                    result.model,
                    self.model,
                )
            return
        async with self._lock:
            entry = self._make_entry(
                self._store.new_id(),
                query.vector,
                result.answer,
                created_at=self._clock(),
                cost_s=result.latency_s,
                origin=origin,
                confidence=result.confidence,
            )
            stored = await self._insert_one(entry)
            self.puts += 1
        if stored and self.on_put is not None:
            await self.on_put(entry)

    async def _insert_one(self, entry: CacheEntry) -> bool:
        """Insert under the lock (held by the caller); return whether it was kept."""
        items = [StoredEntry(entry=entry, hits=0)]
        start = time.perf_counter()
        if self._insert_s <= self._inline_budget_s:
            added = self._insert(items)
        else:
            added = await asyncio.to_thread(self._insert, items)
        self._insert_s += _EWMA * (time.perf_counter() - start - self._insert_s)
        return added > 0

    async def merge(
        self,
        vector: Vector,
        answer: JSON,
        *,
        origin: str,
        age_s: float,
        cost_s: float,
        confidence: float | None,
    ) -> bool:
        """Store an entry received from a neighbour gateway; return whether it was kept.

        The caller has checked model and embedder versions. The ``on_put``
        hook is not called: received entries are never re-published.

        Raises:
            CacheError: the vector has the wrong shape or is not finite.
        """
        vec = np.ascontiguousarray(vector, dtype=np.float32)
        if vec.shape != (self.embedder.dim,) or not np.all(np.isfinite(vec)):
            msg = f"shared vector has shape {vec.shape} or non-finite values"
            raise CacheError(msg)
        async with self._lock:
            entry = self._make_entry(
                self._store.new_id(),
                vec,
                answer,
                created_at=self._clock() - max(0.0, age_s),
                cost_s=cost_s,
                origin=origin,
                confidence=confidence,
            )
            return await self._insert_one(entry)

    def _make_entry(
        self,
        ident: int,
        vector: Vector,
        answer: JSON,
        *,
        created_at: float,
        cost_s: float,
        origin: str,
        confidence: float | None,
    ) -> CacheEntry:
        return CacheEntry(
            id=ident,
            namespace=self.namespace,
            vector=vector,
            answer=answer,
            model=self.model,
            created_at=created_at,
            cost_s=cost_s,
            origin=origin,
            nbytes=entry_nbytes(vector, answer, index_bytes=self._index_bytes),
            confidence=confidence,
        )

    def _insert(self, items: list[StoredEntry]) -> int:
        """Add entries to store and index; evicted ids leave the index. Returns added."""
        dead: set[int] = set()
        added: dict[int, Vector] = {}
        for item in items:
            removed = self._store.restore(item)
            for ident in removed:
                dead.add(ident)
                added.pop(ident, None)
            if item.entry.id not in dead:
                added[item.entry.id] = item.entry.vector
        gone = [i for i in dead if i not in added]
        if gone:
            self._index.remove(np.asarray(gone, dtype=np.int64))
        if added:
            ids = np.fromiter(added.keys(), dtype=np.int64, count=len(added))
            self._index.add(ids, np.stack(list(added.values())))
        return len(added)

    async def clear(self) -> int:
        """Forget every answer; return how many there were."""
        async with self._lock:
            ids = self._store.clear()
            if ids:
                self._index.remove(np.asarray(ids, dtype=np.int64))
            return len(ids)

    async def invalidate(self, model: ModelRef | None = None) -> int:
        """Drop entries of any model other than ``model`` (default: the cache's)."""
        async with self._lock:
            ids = self._store.drop_other_models(model or self.model)
            if ids:
                self._index.remove(np.asarray(ids, dtype=np.int64))
            return len(ids)

    async def expire(self) -> int:
        """Purge entries past their TTL now (they are never reused anyway)."""
        async with self._lock:
            ids = self._store.purge_expired()
            if ids:
                self._index.remove(np.asarray(ids, dtype=np.int64))
            return len(ids)

    # ------------------------------------------------------------------ accuracy
    def should_recheck(self) -> bool:
        """Whether to re-check this hit with the model (``recheck_fraction`` of calls)."""
        return self.recheck_fraction > 0 and self._rng.random() < self.recheck_fraction

    def record_recheck(self, hit: CacheHit, answer: JSON) -> bool:
        """Report the model's answer for a re-checked hit; return whether they agreed.

        Feeds the adjuster, which may tighten or loosen the policy.
        """
        agreed = answers_agree(hit.entry.answer, answer, self.answer_key)
        if self.adjuster is not None:
            changed = self.adjuster.record(agreed=agreed)
            if changed is not None:
                logger.info(
                    "cache %s: thresholds now distance %.4g, homogeneity %.3f",
                    self.namespace,
                    changed.max_distance,
                    changed.min_homogeneity,
                )
        return agreed

    def stats(self) -> CacheStats:
        """Counters for the stats topic."""
        store = self._store
        return CacheStats(
            entries=len(store),
            nbytes=store.nbytes,
            max_bytes=store.max_bytes,
            lookups=self.lookups,
            hits=self.hits,
            puts=self.puts,
            evictions=store.evictions,
            quota_evictions=store.quota_evictions,
            expirations=store.expirations,
            rejected=store.rejected,
            recheck=None if self.adjuster is None else self.adjuster.stats(),
            recheck_counts=dict(self.recheck_counts),
        )

    # ------------------------------------------------------------------ snapshots
    def snapshot_file(self, data_dir: Path) -> Path:
        """Where this namespace's snapshot lives under the gateway's ``data_dir``.

        One cache profile serves one namespace per (model, embedder), so the
        file name is the namespace made filename-safe plus a short digest of it.
        """
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in self.namespace)
        digest = hashlib.blake2b(self.namespace.encode(), digest_size=4).hexdigest()
        return data_dir / "caches" / f"{safe}-{digest}.snap"

    async def snapshot(self, path: Path) -> int:
        """Write every fresh entry to ``path`` atomically; return the entry count.

        Raises:
            CacheError: the file could not be written (the previous one is intact).
        """
        async with self._lock:
            now = self._clock()
            records = [
                SnapshotRecord(
                    id=s.entry.id,
                    vector=s.entry.vector,
                    answer=s.entry.answer,
                    model=s.entry.model,
                    age_s=max(0.0, now - s.entry.created_at),
                    cost_s=s.entry.cost_s,
                    origin=s.entry.origin,
                    confidence=s.entry.confidence,
                    hits=s.hits,
                )
                for s in self._store.entries()
            ]
            data = SnapshotData(
                namespace=self.namespace,
                model=self.model,
                dim=self.embedder.dim,
                saved_wall=self._wall_clock(),
                next_id=self._store.new_id(),
                records=records,
            )
        # Entries are immutable, so encoding and writing need no lock.
        size = await asyncio.to_thread(write_snapshot, path, data)
        logger.info(
            "cache %s: snapshot of %d entries (%d bytes) written to %s",
            self.namespace,
            len(records),
            size,
            path,
        )
        return len(records)

    async def restore(self, path: Path) -> int:
        """Load entries from a snapshot; return how many were restored.

        A missing file restores nothing. A torn, corrupt or foreign snapshot
        is discarded with one warning and the cache stays as it was (empty
        at start). Entries of other model versions and entries past their TTL
        (counting the time the gateway was down) are skipped. Entries get
        fresh ids, so restoring into a non-empty cache is safe.
        """
        try:
            data = await asyncio.to_thread(read_snapshot, path)
        except FileNotFoundError:
            logger.info("cache %s: no snapshot at %s, starting empty", self.namespace, path)
            return 0
        except SnapshotError as exc:
            logger.warning("discarding cache snapshot %s: %s; starting empty", path, exc)
            return 0
        except CacheError as exc:
            logger.warning("cannot restore cache snapshot: %s; starting empty", exc)
            return 0
        if data.dim != self.embedder.dim or data.namespace != self.namespace:
            logger.warning(
                "discarding cache snapshot %s: it is for %s (dim %d), this cache is %s (dim %d)",
                path,
                data.namespace,
                data.dim,
                self.namespace,
                self.embedder.dim,
            )
            return 0
        async with self._lock:
            now = self._clock()
            down_s = max(0.0, self._wall_clock() - data.saved_wall)
            ttl = self._store.ttl_s
            items: list[StoredEntry] = []
            skipped_model = expired = 0
            # Oldest first, so insertion order follows age as it did before.
            for rec in sorted(data.records, key=lambda r: -r.age_s):
                if rec.model != self.model:
                    skipped_model += 1
                    continue
                age = rec.age_s + down_s
                if age > ttl:
                    expired += 1
                    continue
                entry = self._make_entry(
                    self._store.new_id(),
                    rec.vector,
                    rec.answer,
                    created_at=now - age,
                    cost_s=rec.cost_s,
                    origin=rec.origin,
                    confidence=rec.confidence,
                )
                items.append(StoredEntry(entry=entry, hits=rec.hits))
            # Bulk index insertion (training, graph building) can take seconds.
            restored = await asyncio.to_thread(self._insert, items)
        logger.info(
            "cache %s: restored %d entries from %s (%d of other model versions, %d expired)",
            self.namespace,
            restored,
            path,
            skipped_model,
            expired,
        )
        return restored


def recheck_gauge(cache: ApproximateCache) -> JSON:
    """The accuracy guard of one namespace for the ``caches`` gauge of the stats topic."""
    doc: JSON = {"fraction": cache.recheck_fraction, **cache.recheck_counts}
    thresholds = getattr(cache.policy, "thresholds", None)
    if thresholds is not None:
        doc["max_distance"] = round(float(thresholds.max_distance), 6)
        doc["min_homogeneity"] = round(float(thresholds.min_homogeneity), 4)
    if cache.adjuster is not None:
        adj = cache.adjuster.stats()
        doc["tightened"] = adj.tightened
        doc["loosened"] = adj.loosened
        doc["window"] = adj.window
        doc["window_agreement"] = round(adj.window_accuracy, 4)
    return doc


# ---------------------------------------------------------------------- construction


def build_index(cfg: IndexConfig, dim: int) -> Index:
    """Construct the index a profile names (FAISS is imported only for FAISS indexes)."""
    if cfg.type == "numpy":
        return NumpyIndex(dim)
    if cfg.type == "lsh":
        from streamedge.caches.lsh import LshIndex  # lazy: only when configured

        return LshIndex.from_config(dim, cfg)
    if cfg.type == "alsh":
        from streamedge.caches.alsh import AlshIndex  # lazy: only when configured

        return AlshIndex(dim, cfg)
    from streamedge.caches import faiss_index  # lazy: faiss only when configured

    if cfg.type == "faiss_flat":
        return faiss_index.FaissFlatIndex(dim, threads=cfg.threads)
    if cfg.type == "hnsw":
        return faiss_index.FaissHnswIndex(dim, cfg)
    return faiss_index.FaissIvfIndex(dim, cfg)


def build_policy(cfg: PolicyConfig, *, answer_key: str | None = None) -> HitPolicy:
    """Construct the hit policy a profile names."""
    if cfg.type == "threshold":
        return ThresholdPolicy(cfg, answer_key=answer_key)
    return HknnPolicy(cfg, answer_key=answer_key)


def build_embedder(
    cfg: CacheConfig, *, window_fields: tuple[str, ...] | None, window_size: int | None
) -> Embedder:
    """Construct the embedder a cache profile names."""
    emb = cfg.embedder
    if emb.type == "downscale":
        return DownscaleEmbedder(emb)
    if emb.type == "histogram":
        return HistogramEmbedder(emb)
    if emb.type == "phash":
        return PHashEmbedder(emb)
    if emb.type == "pnet":
        return PNetEmbedder(emb)
    if window_fields is None or window_size is None:
        msg = f"cache {cfg.name!r}: the window embedder needs a stream with 'window' set"
        raise CacheError(msg)
    return WindowEmbedder(emb, fields=window_fields, size=window_size)


def build_cache(
    cfg: CacheConfig,
    *,
    model: ModelRef,
    embedder: Embedder,
    clock: Clock,
    wall_clock: Callable[[], float] = time.time,
) -> ApproximateCache:
    """Assemble a cache for one namespace from a profile.

    Raises:
        MissingDependencyError: a FAISS index is configured and faiss is missing.
    """
    index = build_index(cfg.index, embedder.dim)
    policy = build_policy(cfg.policy, answer_key=cfg.answer_key)
    adjuster = None
    if cfg.accuracy.enabled and isinstance(policy, ThresholdPolicy | HknnPolicy):
        adjuster = ThresholdAdjuster(policy, cfg.accuracy)
    return ApproximateCache(
        model=model,
        embedder=embedder,
        index=index,
        policy=policy,
        store=ResultStore(cfg.store, clock),
        clock=clock,
        answer_key=cfg.answer_key,
        adjuster=adjuster,
        recheck_fraction=cfg.accuracy.recheck_fraction,
        wall_clock=wall_clock,
        private=cfg.private,
        max_concurrent_rechecks=cfg.accuracy.max_concurrent_rechecks,
    )
