"""Exact nearest-neighbour search with numpy (squared L2).

Vectors live in one preallocated float32 matrix that doubles when full and
halves when a quarter full; a removed row is overwritten by the last row, so
search is one matrix-vector product over live rows only. The product uses the
``|q|² + |x|² − 2 q·x`` expansion (one BLAS call); the ``k`` winners' distances
are then recomputed as ``Σ (q − x)²`` so that an identical vector is at exactly
0 and the policy sees precise distances. Single writer; searches may overlap
(numpy releases the GIL in the product).
"""

from __future__ import annotations

import numpy as np

from streamedge.caches.index_base import (
    as_ids,
    as_vectors,
    check_k,
    empty_result,
    last_occurrence,
)
from streamedge.records import Ids, Vector

__all__ = ["NumpyIndex"]

_DICT_ENTRY_BYTES = 100
"""Approximate bytes of one ``dict[int, int]`` item (two int objects + slot)."""


class NumpyIndex:
    """Exact brute-force index; the fastest single query up to ~10k entries.

    Args:
        dim: Vector dimension.
        initial_capacity: Rows allocated up front.
    """

    def __init__(self, dim: int, *, initial_capacity: int = 1024) -> None:
        if dim <= 0:
            msg = f"dim must be positive, got {dim}"
            raise ValueError(msg)
        self.dim = dim
        self._min_capacity = max(16, initial_capacity)
        self._alloc(self._min_capacity)
        self._row: dict[int, int] = {}
        self._n = 0

    def _alloc(self, capacity: int) -> None:
        self._vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        self._norms = np.zeros(capacity, dtype=np.float32)
        self._ids = np.full(capacity, -1, dtype=np.int64)

    def __len__(self) -> int:
        return self._n

    def _resize(self, capacity: int) -> None:
        vectors, norms, ids = self._vectors, self._norms, self._ids
        self._alloc(capacity)
        n = self._n
        self._vectors[:n] = vectors[:n]
        self._norms[:n] = norms[:n]
        self._ids[:n] = ids[:n]

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
        self.remove(idents)
        need = self._n + len(idents)
        if need > self._vectors.shape[0]:
            self._resize(max(need, 2 * self._vectors.shape[0]))
        start, end = self._n, need
        self._vectors[start:end] = vecs
        self._norms[start:end] = np.einsum("ij,ij->i", vecs, vecs)
        self._ids[start:end] = idents
        for offset, ident in enumerate(idents.tolist()):
            self._row[ident] = start + offset
        self._n = end

    def remove(self, ids: Ids) -> int:
        """Remove ids; return how many were present."""
        removed = 0
        for ident in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            row = self._row.pop(ident, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                # Keep live rows contiguous: the last row takes the hole.
                self._vectors[row] = self._vectors[last]
                self._norms[row] = self._norms[last]
                moved = int(self._ids[last])
                self._ids[row] = moved
                self._row[moved] = row
            self._ids[last] = -1
            self._n = last
            removed += 1
        cap = self._vectors.shape[0]
        if removed and cap > self._min_capacity and self._n * 4 < cap:
            self._resize(max(self._min_capacity, 2 * self._n))
        return removed

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return ``(D, I)``: squared L2 distances and ids, ascending, ``-1`` padded.

        Raises:
            CacheError: wrong query shape or ``k < 1``.
        """
        queries = as_vectors(vectors, self.dim)
        k = check_k(k)
        nq = len(queries)
        dist, out = empty_result(nq, k)
        n = self._n
        if n == 0:
            return dist, out
        live = self._vectors[:n]
        kk = min(k, n)
        if nq == 1:
            # gemv is cheaper than a (1, d) × (d, n) gemm with its temporaries.
            d2 = (self._norms[:n] - 2.0 * (live @ queries[0]))[None, :]
        else:
            d2 = self._norms[None, :n] - 2.0 * (queries @ live.T)
        # |q|² is the same for every row of a query, so it is left out of the ranking.
        if kk < n:
            part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (nq, n))
        # Exact distances for the winners only: Σ (q − x)², never negative.
        diff = live[part] - queries[:, None, :]
        exact = np.einsum("qkd,qkd->qk", diff, diff)
        order = np.argsort(exact, axis=1, kind="stable")
        dist[:, :kk] = np.take_along_axis(exact, order, axis=1)
        out[:, :kk] = self._ids[np.take_along_axis(part, order, axis=1)]
        return dist, out

    def contents(self) -> tuple[Ids, Vector]:
        """Copies of the live ids and their vectors (paired, in internal order)."""
        n = self._n
        return self._ids[:n].copy(), self._vectors[:n].copy()

    def reconstruct(self, ident: int) -> Vector | None:
        """The stored vector of an id, or ``None``."""
        row = self._row.get(int(ident))
        return None if row is None else self._vectors[row].copy()

    @property
    def bytes_per_entry(self) -> int:
        """Estimated bytes one more entry costs (vector, norm, id, map item)."""
        return 4 * self.dim + 4 + 8 + _DICT_ENTRY_BYTES

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (array capacity plus the id map estimate)."""
        return int(
            self._vectors.nbytes
            + self._norms.nbytes
            + self._ids.nbytes
            + len(self._row) * _DICT_ENTRY_BYTES
        )
