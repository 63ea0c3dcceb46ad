"""Random-projection LSH for Euclidean distance, in numpy.

The hash family is the p-stable one of Datar, Immorlica, Indyk and Mirrokni
(E2LSH): ``h(x) = floor((a·x + b) / w)`` with ``a`` Gaussian and ``b``
uniform in ``[0, w)``. Two points at distance ``δ`` collide in one such hash
with probability :func:`pstable_collision_probability` ``(δ, w)``, which falls
with ``δ / w``. A table concatenates ``K`` hashes (its key collides only if all
``K`` do) and ``L`` tables are queried; candidates from all the query's
buckets are re-ranked by exact distance, so returned distances are exact and
the approximation is only in which neighbours are found. (Sign-of-projection
"hyperplane" LSH approximates angular distance, not L2, so it is not used.)

**Multi-probe** (Lv et al., VLDB 2007, single perturbations): besides its own
bucket, a query probes the buckets one step across the hash boundaries it is
closest to, nearest boundary first. This buys recall without more tables.

**Layout.** All tables share one sorted pair of arrays ``(key, slot)``; a
lookup is one vectorised ``searchsorted`` over every probed key. Vectors live
in a :class:`~streamedge.caches.index_base.SlotArena` (slots never move).
New entries go to a small dict of pending buckets and are merged into the
sorted arrays in batches; removals free the slot at once and leave stale
``(key, slot)`` pairs that lookups filter out and merges purge. Memory is
about ``4·dim + 20·L + 120`` bytes per entry, no Python object per entry and
table.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from streamedge.caches.index_base import (
    SlotArena,
    as_ids,
    as_vectors,
    check_k,
    empty_result,
    exact_topk,
    last_occurrence,
)
from streamedge.records import Ids, Vector

if TYPE_CHECKING:
    from streamedge.caches.config import LshIndexConfig

__all__ = ["LshIndex", "normal_cdf", "pstable_collision_probability"]

logger = logging.getLogger(__name__)

_H_CLIP = 2**20 - 1
"""Quantised projections are clipped to ±2^20 so that keys never overflow int64."""
_MULT_BITS = 35
"""Key = Σ h_i·m_i + offset with |h| < 2^20, m < 2^35, K ≤ 64: |key| < 2^62."""
_BULK = 1024
"""Adds of at least this many vectors go straight into the sorted arrays."""


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (Abramowitz-Stegun 7.1.26, error < 1.5e-7)."""
    z = np.abs(np.asarray(x, dtype=np.float64)) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * np.exp(-z * z)
    out: np.ndarray = 0.5 * (1.0 + np.sign(x) * erf)
    return out


def pstable_collision_probability(distance: np.ndarray | float, width: float) -> np.ndarray:
    """Probability that two points ``distance`` apart share one p-stable hash.

    With ``u = width / distance``:
    ``p = 1 − 2Φ(−u) − 2 / (√(2π)·u) · (1 − exp(−u²/2))`` (Datar et al. 2004);
    ``p = 1`` at distance 0.
    """
    dist = np.maximum(np.asarray(distance, dtype=np.float64), 1e-30)
    u = width / dist
    tail = 2.0 / (math.sqrt(2.0 * math.pi) * u) * (1.0 - np.exp(-u * u / 2))
    p = 1.0 - 2.0 * normal_cdf(-u) - tail
    out: np.ndarray = np.clip(p, 0.0, 1.0)
    return out


class LshIndex:
    """p-stable LSH with ``tables`` × ``projections`` hashes and exact re-ranking.

    Args:
        dim: Vector dimension.
        tables: Number of tables ``L``.
        projections: Hashes concatenated per table ``K``.
        width: Bucket width ``w`` in absolute L2 units.
        probes: Extra buckets probed per query at most (multi-probe).
        min_candidates: Stop probing once this many candidates are found;
            ``None`` always probes ``probes`` buckets.
        seed: Seed of the projections.
    """

    def __init__(
        self,
        dim: int,
        *,
        tables: int = 8,
        projections: int = 6,
        width: float = 1.0,
        probes: int = 0,
        min_candidates: int | None = None,
        seed: int = 0,
    ) -> None:
        if dim <= 0:
            msg = f"dim must be positive, got {dim}"
            raise ValueError(msg)
        self.dim = dim
        self._rng = np.random.default_rng(seed)
        self._arena = SlotArena(dim)
        self.probes = probes
        self.min_candidates = min_candidates
        self._exact = False
        self._configure(tables, projections, width)

    @classmethod
    def from_config(cls, dim: int, cfg: LshIndexConfig) -> LshIndex:
        """Build from a config whose width is in RMS-per-dimension units."""
        return cls(
            dim,
            tables=cfg.tables,
            projections=cfg.projections,
            width=cfg.width * math.sqrt(dim),
            probes=cfg.probes,
            seed=cfg.seed,
        )

    # ------------------------------------------------------------------ parameters
    @property
    def tables(self) -> int:
        """Number of hash tables ``L``."""
        return self._L

    @property
    def projections(self) -> int:
        """Hashes per table ``K``."""
        return self._K

    @property
    def width(self) -> float:
        """Bucket width in absolute L2 units."""
        return self._w

    def _configure(self, tables: int, projections: int, width: float) -> None:
        """Draw new hash functions and rehash every live entry."""
        if tables < 1 or projections < 1 or not width > 0:
            msg = f"bad LSH parameters L={tables} K={projections} w={width}"
            raise ValueError(msg)
        self._L, self._K, self._w = tables, projections, float(width)
        rng = self._rng
        self._a = rng.standard_normal((tables * projections, self.dim)).astype(np.float32)
        self._a /= np.float32(width)
        self._b = rng.uniform(0.0, 1.0, tables * projections).astype(np.float32)
        self._mult = rng.integers(1, 2**_MULT_BITS, size=(tables, projections), dtype=np.int64)
        self._offset = rng.integers(0, 2**61, size=tables, dtype=np.int64)
        self._slot_keys = np.zeros((self._arena.capacity, tables), dtype=np.int64)
        self._keys = np.zeros(0, dtype=np.int64)
        self._slots = np.zeros(0, dtype=np.int32)
        self._pending: dict[int, list[int]] = {}
        self._pending_pairs = 0
        self._stale = 0
        live = self._arena.live_slots()
        if len(live):
            self._insert_slots(live, bulk=True)

    # ------------------------------------------------------------------ hashing
    def _project(self, vectors: Vector) -> np.ndarray:
        """``(a·x + b) / w`` for every hash, shape ``(n, L·K)`` (``a`` is pre-divided)."""
        out: np.ndarray = vectors @ self._a.T + self._b
        return out

    def _keys_of(self, h: np.ndarray) -> np.ndarray:
        """Table keys from quantised projections ``(n, L·K)`` → ``(n, L)``."""
        hq = np.clip(h, -_H_CLIP, _H_CLIP).astype(np.int64).reshape(-1, self._L, self._K)
        keys: np.ndarray = np.einsum("nlk,lk->nl", hq, self._mult) + self._offset
        return keys

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return len(self._arena)

    def _ensure_slot_keys(self) -> None:
        cap = self._arena.capacity
        if self._slot_keys.shape[0] < cap:
            grown = np.zeros((cap, self._L), dtype=np.int64)
            grown[: self._slot_keys.shape[0]] = self._slot_keys
            self._slot_keys = grown

    def _insert_slots(self, slots: np.ndarray, *, bulk: bool) -> None:
        vectors = self._arena.vectors[slots]
        keys = self._keys_of(np.floor(self._project(vectors)))
        self._slot_keys[slots] = keys
        if bulk:
            flat_keys = keys.reshape(-1)
            flat_slots = np.repeat(slots.astype(np.int32), self._L)
            self._merge(flat_keys, flat_slots)
            return
        pending = self._pending
        for slot, row in zip(slots.tolist(), keys.tolist(), strict=True):
            for key in row:
                bucket = pending.get(key)
                if bucket is None:
                    pending[key] = [slot]
                else:
                    bucket.append(slot)
        self._pending_pairs += len(slots) * self._L
        if self._pending_pairs > max(4096, len(self._keys) // 16):
            self._merge(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))

    def _merge(self, new_keys: np.ndarray, new_slots: np.ndarray) -> None:
        """Fold pending buckets (and ``new`` pairs) into the sorted arrays."""
        parts_k = [self._keys, new_keys]
        parts_s = [self._slots, new_slots]
        if self._pending:
            pk: list[int] = []
            ps: list[int] = []
            for key, bucket in self._pending.items():
                pk.extend([key] * len(bucket))
                ps.extend(bucket)
            parts_k.append(np.asarray(pk, dtype=np.int64))
            parts_s.append(np.asarray(ps, dtype=np.int32))
        keys = np.concatenate(parts_k)
        slots = np.concatenate(parts_s)
        if self._stale:
            # A pair is current if its slot is live and still hashes to that key.
            valid = (self._arena.ids[slots] >= 0) & (self._slot_keys[slots] == keys[:, None]).any(
                axis=1
            )
            keys, slots = keys[valid], slots[valid]
            self._stale = 0
        order = np.argsort(keys, kind="stable")
        self._keys, self._slots = keys[order], slots[order]
        self._pending = {}
        self._pending_pairs = 0

    def add(self, ids: Ids, vectors: Vector) -> None:
        """Insert (or replace) vectors under the given ids.

        Raises:
            CacheError: shapes do not match ``dim`` or the id count.
        """
        vecs = as_vectors(vectors, self.dim)
        idents = as_ids(ids, len(vecs))
        keep = last_occurrence(idents)
        if len(keep) != len(idents):
            idents, vecs = idents[keep], vecs[keep]
        if not len(idents):
            return
        self.remove(idents)
        slots = np.fromiter(
            (self._arena.put(i, v) for i, v in zip(idents.tolist(), vecs, strict=True)),
            dtype=np.int64,
            count=len(idents),
        )
        self._ensure_slot_keys()
        self._insert_slots(slots, bulk=len(slots) >= _BULK)
        self._after_add()

    def _after_add(self) -> None:
        """Hook for subclasses (A-LSH re-estimates its parameters here)."""

    def remove(self, ids: Ids) -> int:
        """Remove ids; return how many were present."""
        removed = 0
        for ident in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if self._arena.pop(ident) is not None:
                removed += 1
        if removed:
            self._stale += removed * self._L
            if self._stale > max(4096, len(self._keys) // 4):
                self._merge(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))
            if self._arena.wants_compaction():
                self._compact_arena()
            self._after_remove()
        return removed

    def _after_remove(self) -> None:
        """Hook for subclasses."""

    def _compact_arena(self) -> None:
        live = self._arena.live_slots()
        arena = SlotArena(self.dim, capacity=max(256, 2 * len(live)))
        for slot in live.tolist():
            arena.put(int(self._arena.ids[slot]), self._arena.vectors[slot])
        self._arena = arena
        self._configure_same()

    def _configure_same(self) -> None:
        """Rehash everything with the current hash functions' parameters."""
        self._configure(self._L, self._K, self._w)

    # ------------------------------------------------------------------ search
    def _lookup(self, probe_keys: np.ndarray) -> np.ndarray:
        """Slots stored under any of the keys (may repeat, may be stale)."""
        found: list[np.ndarray] = []
        if len(self._keys):
            lo = np.searchsorted(self._keys, probe_keys, side="left")
            hi = np.searchsorted(self._keys, probe_keys, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if total:
                # Concatenate the ranges [lo, hi) without a Python loop.
                starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
                found.append(self._slots[starts + np.arange(total)])
        if self._pending:
            extra = [s for key in probe_keys.tolist() for s in self._pending.get(key, ())]
            if extra:
                found.append(np.asarray(extra, dtype=np.int32))
        if not found:
            return np.zeros(0, dtype=np.int64)
        slots = np.unique(np.concatenate(found)).astype(np.int64)
        live: np.ndarray = slots[self._arena.ids[slots] >= 0]
        return live

    def _candidates(self, proj: np.ndarray) -> np.ndarray:
        """Candidate slots for one query's projections ``(L·K,)``."""
        h = np.floor(proj)
        home = self._keys_of(h[None, :])[0]
        cands = self._lookup(home)
        if self.probes == 0:
            return cands
        if self.min_candidates is not None and len(cands) >= self.min_candidates:
            return cands
        frac = (proj - h).reshape(self._L, self._K)
        # Distance to the lower boundary is frac, to the upper 1 − frac (in widths).
        scores = np.concatenate([frac.reshape(-1), (1.0 - frac).reshape(-1)])
        # Nearest boundaries first (at most 2·L·K scores: a full sort is cheap).
        order = np.argsort(scores, kind="stable")[: self.probes]
        lk = self._L * self._K
        sign = np.where(order < lk, -1, 1)
        flat = order % lk
        table = flat // self._K
        probe_keys = home[table] + sign * self._mult.reshape(-1)[flat]
        if self.min_candidates is None:
            return np.union1d(cands, self._lookup(probe_keys))
        # Widen in doubling rounds until enough candidates (local density adaptation).
        done, step = 0, max(1, self._L)
        while done < len(probe_keys) and len(cands) < self.min_candidates:
            cands = np.union1d(cands, self._lookup(probe_keys[done : done + step]))
            done += step
            step *= 2
        return cands

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return ``(D, I)``: exact squared L2 of the candidates found, ascending.

        Raises:
            CacheError: wrong query shape or ``k < 1``.
        """
        queries = as_vectors(vectors, self.dim)
        k = check_k(k)
        dist, out = empty_result(len(queries), k)
        if not len(self._arena):
            return dist, out
        arena = self._arena
        if self._exact:
            every = arena.live_slots()
            for row, query in enumerate(queries):
                pos, d2 = exact_topk(query, arena.vectors[every], k)
                dist[row, : len(pos)] = d2
                out[row, : len(pos)] = arena.ids[every[pos]]
            return dist, out
        proj = self._project(queries)
        for row, query in enumerate(queries):
            slots = self._candidates(proj[row])
            if not len(slots):
                continue
            pos, d2 = exact_topk(query, arena.vectors[slots], k)
            dist[row, : len(pos)] = d2
            out[row, : len(pos)] = arena.ids[slots[pos]]
        return dist, out

    # ------------------------------------------------------------------ memory
    @property
    def bytes_per_entry(self) -> int:
        """Vector, id, key per table, ``(key, slot)`` pair per table, id map."""
        return 4 * self.dim + 8 + 8 * self._L + 12 * self._L + 100

    @property
    def nbytes(self) -> int:
        """Bytes of the arena, the sorted tables, the slot keys and pending buckets."""
        pending = self._pending_pairs * 8 + len(self._pending) * 120
        return int(
            self._arena.nbytes
            + self._keys.nbytes
            + self._slots.nbytes
            + self._slot_keys.nbytes
            + pending
        )
