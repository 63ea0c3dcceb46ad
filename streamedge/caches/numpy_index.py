"""Exact nearest-neighbour search with numpy (squared L2).

Vectors live in one preallocated float32 matrix that doubles when full; a
removed row is overwritten by the last row, so search is one matrix product
over live rows only. Single writer; searches may overlap (numpy releases the
GIL in the product).
"""

from __future__ import annotations

import numpy as np

from streamedge.records import Ids, Vector


class NumpyIndex:
    """Exact brute-force index; the fastest single query up to ~10k entries."""

    def __init__(self, dim: int, *, initial_capacity: int = 1024) -> None:
        if dim <= 0:
            msg = f"dim must be positive, got {dim}"
            raise ValueError(msg)
        self.dim = dim
        self._vectors = np.zeros((initial_capacity, dim), dtype=np.float32)
        self._norms = np.zeros(initial_capacity, dtype=np.float32)
        self._ids = np.full(initial_capacity, -1, dtype=np.int64)
        self._row: dict[int, int] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _grow(self, need: int) -> None:
        cap = self._vectors.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        vectors = np.zeros((new_cap, self.dim), dtype=np.float32)
        vectors[: self._n] = self._vectors[: self._n]
        norms = np.zeros(new_cap, dtype=np.float32)
        norms[: self._n] = self._norms[: self._n]
        ids = np.full(new_cap, -1, dtype=np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._vectors, self._norms, self._ids = vectors, norms, ids

    def add(self, ids: Ids, vectors: Vector) -> None:
        """Insert (or replace) vectors under the given ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            msg = f"{len(ids)} ids for {len(vectors)} vectors"
            raise ValueError(msg)
        self.remove(ids)
        self._grow(self._n + len(ids))
        start = self._n
        end = start + len(ids)
        self._vectors[start:end] = vectors
        self._norms[start:end] = np.einsum("ij,ij->i", vectors, vectors)
        self._ids[start:end] = ids
        for offset, ident in enumerate(ids.tolist()):
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
                self._vectors[row] = self._vectors[last]
                self._norms[row] = self._norms[last]
                moved = int(self._ids[last])
                self._ids[row] = moved
                self._row[moved] = row
            self._ids[last] = -1
            self._n = last
            removed += 1
        return removed

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return ``(D, I)``: squared L2 distances and ids, ascending, ``-1`` padded."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        nq = len(queries)
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        out = np.full((nq, k), -1, dtype=np.int64)
        if self._n == 0 or k <= 0:
            return dist, out
        live = self._vectors[: self._n]
        q_norms = np.einsum("ij,ij->i", queries, queries)
        d2 = q_norms[:, None] + self._norms[None, : self._n] - 2.0 * (queries @ live.T)
        np.maximum(d2, 0.0, out=d2)
        kk = min(k, self._n)
        if kk < self._n:
            part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(self._n), (nq, self._n))
        part_d = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        rows = np.take_along_axis(part, order, axis=1)
        dist[:, :kk] = np.take_along_axis(part_d, order, axis=1)
        out[:, :kk] = self._ids[rows]
        return dist, out

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays (capacity, not just live rows)."""
        return int(self._vectors.nbytes + self._norms.nbytes + self._ids.nbytes)
