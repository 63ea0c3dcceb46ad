"""Shared argument checks and storage for the index implementations.

Every index in :mod:`streamedge.caches` validates its inputs the same way, so
the conformance suite (:func:`streamedge.testing.contracts.check_index`) can
demand the same behaviour from all of them:

* vectors are converted to C-contiguous float32 of shape ``(n, dim)``; a
  ``(dim,)`` vector is one row; any other shape raises
  :class:`~streamedge.errors.CacheError` naming both dimensions;
* ``ids`` must have one int64 per vector; when an id repeats inside one
  ``add`` the last vector wins;
* ``k`` must be at least 1.
"""

from __future__ import annotations

import numpy as np

from streamedge.errors import CacheError
from streamedge.records import Ids, Vector

__all__ = [
    "SlotArena",
    "as_ids",
    "as_vectors",
    "check_k",
    "empty_result",
    "exact_topk",
    "last_occurrence",
]


def as_vectors(vectors: object, dim: int) -> Vector:
    """``vectors`` as C-contiguous float32 ``(n, dim)``.

    Raises:
        CacheError: the shape is not ``(dim,)`` or ``(n, dim)``.
    """
    if (
        isinstance(vectors, np.ndarray)
        and vectors.dtype == np.float32
        and vectors.ndim == 2
        and vectors.shape[1] == dim
        and vectors.flags.c_contiguous
    ):
        if not np.isfinite(vectors).all():
            raise CacheError("vectors contain NaN or infinity")
        return vectors  # the common case: nothing to convert
    given = np.asarray(vectors)
    arr = given[None, :] if given.ndim == 1 else given
    if arr.ndim != 2 or arr.shape[1] != dim:
        msg = f"vectors have shape {given.shape}; this index needs (n, {dim})"
        raise CacheError(msg)
    out: Vector = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise CacheError("vectors contain NaN or infinity")
    return out


def as_ids(ids: object, n: int) -> Ids:
    """``ids`` as a 1-D int64 array of length ``n``.

    Raises:
        CacheError: the count differs from ``n`` or an id is negative.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] != n:
        msg = f"{arr.size} ids for {n} vectors"
        raise CacheError(msg)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        msg = f"ids must be integers, got {arr.dtype}"
        raise CacheError(msg)
    out: Ids = np.ascontiguousarray(arr, dtype=np.int64)
    if out.size and int(out.min()) < 0:
        raise CacheError("ids must be non-negative (-1 means 'no entry')")
    return out


def last_occurrence(ids: Ids) -> Ids:
    """Positions of the last occurrence of each distinct id, in input order."""
    if len(ids) < 2:
        return np.arange(len(ids), dtype=np.int64)
    rev = ids[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_rev)
    return keep.astype(np.int64)


def check_k(k: int) -> int:
    """``k`` as an int, at least 1.

    Raises:
        CacheError: ``k < 1``.
    """
    k = int(k)
    if k < 1:
        msg = f"k must be at least 1, got {k}"
        raise CacheError(msg)
    return k


def empty_result(nq: int, k: int) -> tuple[Vector, Ids]:
    """``(D, I)`` filled with ``inf`` and ``-1``."""
    return (
        np.full((nq, k), np.inf, dtype=np.float32),
        np.full((nq, k), -1, dtype=np.int64),
    )


def exact_topk(query: Vector, candidates: Vector, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared L2 from one query to candidate rows; the ``k`` best, ascending.

    Distances are computed as ``sum((q - x)**2)`` rather than through norms,
    so an identical vector is at exactly 0.

    Returns:
        ``(positions, d2)`` into ``candidates``, at most ``k`` long.
    """
    diff = candidates - query
    d2 = np.einsum("ij,ij->i", diff, diff)
    n = len(d2)
    part = np.argpartition(d2, k - 1)[:k] if k < n else np.arange(n)
    order = np.argsort(d2[part], kind="stable")
    pos = part[order]
    return pos, d2[pos]


class SlotArena:
    """Vectors in fixed slots of one float32 matrix; freed slots are reused.

    Slots never move, so other structures (hash buckets, graphs) can refer to
    them. The matrix doubles when full and halves when a quarter full, so its
    memory stays within about 4× the live vectors even after mass removal.
    """

    def __init__(self, dim: int, capacity: int = 256) -> None:
        self.dim = dim
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.slot_of: dict[int, int] = {}
        # Popped from the end, so the lowest slots fill first.
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return int(self.vectors.shape[0])

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        vectors = np.zeros((new, self.dim), dtype=np.float32)
        vectors[:old] = self.vectors
        ids = np.full(new, -1, dtype=np.int64)
        ids[:old] = self.ids
        self.vectors, self.ids = vectors, ids
        self._free.extend(range(new - 1, old - 1, -1))

    def put(self, ident: int, vector: Vector) -> int:
        """Store a vector for a new id; return its slot."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.vectors[slot] = vector
        self.ids[slot] = ident
        self.slot_of[ident] = slot
        return slot

    def pop(self, ident: int) -> int | None:
        """Free an id's slot; return the slot, or ``None`` if absent."""
        slot = self.slot_of.pop(ident, None)
        if slot is None:
            return None
        self.ids[slot] = -1
        self._free.append(slot)
        return slot

    def live_slots(self) -> np.ndarray:
        """Slots in use, ascending."""
        return np.flatnonzero(self.ids >= 0)

    def wants_compaction(self) -> bool:
        """Whether the matrix is less than a quarter full (and not tiny)."""
        return self.capacity > 1024 and len(self) * 4 < self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays plus an estimate of the id→slot dict and free list."""
        return (
            int(self.vectors.nbytes + self.ids.nbytes)
            + len(self.slot_of) * 100
            + (len(self._free) * 8)
        )
