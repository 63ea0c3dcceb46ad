"""FAISS indexes behind the faiss-shaped :class:`~streamedge.protocols.Index` API.

This is the only module that imports :mod:`faiss`, and it does so when an
index is constructed, so a gateway that never configures a FAISS index never
loads it. Every exception faiss raises (``RuntimeError`` from C++,
``AssertionError`` from its Python wrappers) is mapped here to
:class:`~streamedge.errors.CacheError`; a missing package raises
:class:`~streamedge.errors.MissingDependencyError`.

Three indexes:

* :class:`FaissFlatIndex`: ``IndexFlatL2``, exact;
* :class:`FaissHnswIndex`: ``IndexHNSWFlat``, approximate, ``efSearch`` set for recall;
* :class:`FaissIvfIndex`: ``IndexIVFFlat``, exact until trained, then ``nprobe`` cells.

Flat and HNSW keep their own label → id table and delete by **tombstones**: a
removed label's bit is cleared in a bitmap that searches pass to faiss as an
``IDSelectorBitmap``, so dead entries are never returned but still help the
HNSW graph navigate. When tombstones exceed ``rebuild_fraction`` of the live
entries the structure is compacted (flat: one ``remove_ids``; HNSW: a rebuild
from the live vectors, since HNSW cannot delete). The IVF index stores the
caller's ids itself and deletes through a hash-table direct map.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from streamedge.caches.index_base import (
    as_ids,
    as_vectors,
    check_k,
    empty_result,
    last_occurrence,
)
from streamedge.caches.numpy_index import NumpyIndex
from streamedge.errors import CacheError, MissingDependencyError
from streamedge.records import Ids, Vector

if TYPE_CHECKING:
    from streamedge.caches.config import HnswIndexConfig, IvfIndexConfig

__all__ = ["FaissFlatIndex", "FaissHnswIndex", "FaissIvfIndex", "load_faiss", "set_faiss_threads"]

logger = logging.getLogger(__name__)

_FAISS_ERRORS = (RuntimeError, AssertionError, ValueError, TypeError, MemoryError)
"""What faiss raises: C++ exceptions arrive as RuntimeError, wrapper checks as
AssertionError, SWIG argument errors as TypeError/ValueError."""

_MAP_ENTRY_BYTES = 100
"""Approximate bytes of one ``dict[int, int]`` item."""


def set_faiss_threads(faiss: Any, threads: int) -> None:
    """Set faiss's OpenMP thread count (process-wide; the last index built wins)."""
    with _mapped("omp_set_num_threads"):
        faiss.omp_set_num_threads(int(threads))


def load_faiss(plugin: str = "faiss") -> Any:
    """Import faiss (once; Python caches modules).

    The module is typed ``Any``: the wheel's stubs lack classes used here
    (``SearchParametersHNSW``) and numpy-facing wrappers differ from them.

    Raises:
        MissingDependencyError: faiss is not installed.
    """
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise MissingDependencyError(plugin, "faiss-cpu") from exc


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Map faiss's exceptions to CacheError, once, at this boundary."""
    try:
        yield
    except _FAISS_ERRORS as exc:
        msg = f"faiss failed in {what}: {type(exc).__name__}: {exc}"
        raise CacheError(msg) from exc


def _fix_padding(dist: np.ndarray, ids: np.ndarray) -> tuple[Vector, Ids]:
    # faiss pads with FLT_MAX; the protocol promises inf.
    d: Vector = np.ascontiguousarray(dist, dtype=np.float32)
    i: Ids = np.ascontiguousarray(ids, dtype=np.int64)
    d[i < 0] = np.inf
    return d, i


class _TombstoneIndex:
    """Label bookkeeping shared by the flat and HNSW wrappers.

    faiss assigns labels 0, 1, 2, ... in insertion order; ``_ext[label]`` is
    the caller's id, ``_label[id]`` the live label, and bit ``label`` of
    ``_bitmap`` is set while the label is live.
    """

    _plugin = "faiss"

    def __init__(self, dim: int, rebuild_fraction: float, threads: int) -> None:
        if dim <= 0:
            msg = f"dim must be positive, got {dim}"
            raise ValueError(msg)
        self.dim = dim
        self._faiss = load_faiss(self._plugin)
        set_faiss_threads(self._faiss, threads)
        self._rebuild_fraction = rebuild_fraction
        self._label: dict[int, int] = {}
        self._ext = np.full(1024, -1, dtype=np.int64)
        self._bitmap = np.zeros(1024 // 8, dtype=np.uint8)
        self._selector: Any = None
        self._params: dict[bool, Any] = {}  # with/without selector; built once (SWIG is slow)
        self._tombstones = 0
        self.rebuilds = 0
        with _mapped("index construction"):
            self._index: Any = self._new_index()

    # -- subclass hooks
    def _new_index(self) -> Any:
        raise NotImplementedError

    def _search_params(self, selector: Any) -> Any:
        raise NotImplementedError

    def _compact(self, live_labels: np.ndarray) -> None:
        raise NotImplementedError

    # -- bookkeeping
    def __len__(self) -> int:
        return len(self._label)

    @property
    def tombstones(self) -> int:
        """Removed entries still occupying space in the faiss structure."""
        return self._tombstones

    def _ensure_capacity(self, labels_needed: int) -> None:
        cap = len(self._ext)
        if labels_needed <= cap:
            return
        new = max(labels_needed, 2 * cap)
        new += (-new) % 8
        ext = np.full(new, -1, dtype=np.int64)
        ext[:cap] = self._ext
        bitmap = np.zeros(new // 8, dtype=np.uint8)
        bitmap[: len(self._bitmap)] = self._bitmap
        self._ext, self._bitmap = ext, bitmap
        self._selector = None  # it points at the old bitmap
        self._params.pop(True, None)

    def _set_bits(self, labels: np.ndarray, *, live: bool) -> None:
        if not len(labels):
            return
        byte = labels >> 3
        mask = (1 << (labels & 7)).astype(np.uint8)
        if live:
            np.bitwise_or.at(self._bitmap, byte, mask)
        else:
            np.bitwise_and.at(self._bitmap, byte, ~mask)

    def add(self, ids: Ids, vectors: Vector) -> None:
        """Insert (or replace) vectors under the given ids.

        Raises:
            CacheError: shapes do not match, or faiss failed.
        """
        vecs = as_vectors(vectors, self.dim)
        idents = as_ids(ids, len(vecs))
        keep = last_occurrence(idents)
        if len(keep) != len(idents):
            idents, vecs = idents[keep], vecs[keep]
        if not len(idents):
            return
        self._bury(idents)
        start = int(self._index.ntotal)
        self._ensure_capacity(start + len(idents))
        with _mapped(f"{self._plugin} add"):
            self._index.add(vecs)
        labels = np.arange(start, start + len(idents), dtype=np.int64)
        self._ext[labels] = idents
        self._set_bits(labels, live=True)
        for label, ident in zip(labels.tolist(), idents.tolist(), strict=True):
            self._label[ident] = label
        self._maybe_compact()

    def _bury(self, ids: Ids) -> int:
        dead = [
            label for label in (self._label.pop(i, None) for i in ids.tolist()) if label is not None
        ]
        if dead:
            self._set_bits(np.asarray(dead, dtype=np.int64), live=False)
            self._tombstones += len(dead)
        return len(dead)

    def remove(self, ids: Ids) -> int:
        """Remove ids (tombstones; compacted later); return how many were present."""
        removed = self._bury(np.asarray(ids, dtype=np.int64).reshape(-1))
        if removed:
            self._maybe_compact()
        return removed

    def _maybe_compact(self) -> None:
        live = len(self._label)
        if self._tombstones == 0:
            return
        if live > 0 and self._tombstones <= max(16, self._rebuild_fraction * live):
            return
        ntotal = int(self._index.ntotal)
        alive = np.zeros(ntotal, dtype=bool)
        alive[list(self._label.values())] = True
        live_labels = np.flatnonzero(alive)
        with _mapped(f"{self._plugin} compaction"):
            self._compact(live_labels)
        # Survivors keep their order, so their new labels are 0..live-1.
        ext = self._ext[live_labels].copy()
        self._ext[:] = -1
        self._ext[: len(ext)] = ext
        self._bitmap[:] = 0
        self._set_bits(np.arange(len(ext), dtype=np.int64), live=True)
        self._label = {int(i): n for n, i in enumerate(ext.tolist())}
        self._tombstones = 0
        self.rebuilds += 1
        logger.debug("%s compacted to %d entries", self._plugin, len(ext))

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return ``(D, I)``: squared L2 and ids, ascending, ``-1``/``inf`` padded.

        Raises:
            CacheError: wrong query shape, ``k < 1``, or faiss failed.
        """
        queries = as_vectors(vectors, self.dim)
        k = check_k(k)
        if not self._label:
            return empty_result(len(queries), k)
        filtered = self._tombstones > 0
        if filtered not in self._params:
            with _mapped("search parameters"):
                if filtered and self._selector is None:
                    self._selector = self._faiss.IDSelectorBitmap(self._bitmap)
                self._params[filtered] = self._search_params(self._selector if filtered else None)
        with _mapped(f"{self._plugin} search"):
            dist, labels = self._index.search(queries, k, params=self._params[filtered])
        dist, labels = _fix_padding(dist, labels)
        found = labels >= 0
        labels[found] = self._ext[labels[found]]
        return dist, labels

    @property
    def bytes_per_entry(self) -> int:
        """Estimated bytes one more entry costs (vector, label tables)."""
        return 4 * self.dim + 8 + _MAP_ENTRY_BYTES


class FaissFlatIndex(_TombstoneIndex):
    """Exact search with faiss ``IndexFlatL2``.

    Args:
        dim: Vector dimension.
        rebuild_fraction: Compact when tombstones exceed this share of live entries.
        threads: OpenMP threads for faiss (process-wide).
    """

    _plugin = "faiss_flat"

    def __init__(self, dim: int, *, rebuild_fraction: float = 0.25, threads: int = 1) -> None:
        super().__init__(dim, rebuild_fraction, threads)

    def _new_index(self) -> Any:
        return self._faiss.IndexFlatL2(self.dim)

    def _search_params(self, selector: Any) -> Any:
        if selector is None:
            return None
        return self._faiss.SearchParameters(sel=selector)

    def _compact(self, live_labels: np.ndarray) -> None:
        ntotal = int(self._index.ntotal)
        dead = np.ones(ntotal, dtype=bool)
        dead[live_labels] = False
        self._index.remove_ids(self._faiss.IDSelectorBatch(np.flatnonzero(dead).astype(np.int64)))

    @property
    def nbytes(self) -> int:
        """Bytes of the flat codes and the label tables."""
        return int(
            self._index.ntotal * 4 * self.dim
            + self._ext.nbytes
            + self._bitmap.nbytes
            + len(self._label) * _MAP_ENTRY_BYTES
        )


class FaissHnswIndex(_TombstoneIndex):
    """Approximate search with faiss ``IndexHNSWFlat``.

    Args:
        dim: Vector dimension.
        cfg: ``M``, ``efConstruction``, ``efSearch`` and the rebuild fraction.
    """

    _plugin = "hnsw"

    def __init__(self, dim: int, cfg: HnswIndexConfig) -> None:
        self._m = cfg.m
        self._ef_construction = cfg.ef_construction
        self._ef_search = cfg.ef_search
        super().__init__(dim, cfg.rebuild_fraction, cfg.threads)

    @property
    def ef_search(self) -> int:
        """Candidate list size while searching (recall against speed)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = int(value)
        self._params.clear()

    def _new_index(self) -> Any:
        index = self._faiss.IndexHNSWFlat(self.dim, self._m)
        index.hnsw.efConstruction = self._ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _search_params(self, selector: Any) -> Any:
        # Passing params replaces the index's efSearch, so it is always set here.
        if selector is None:
            return self._faiss.SearchParametersHNSW(efSearch=self.ef_search)
        return self._faiss.SearchParametersHNSW(efSearch=self.ef_search, sel=selector)

    def _compact(self, live_labels: np.ndarray) -> None:
        ntotal = int(self._index.ntotal)
        storage = self._faiss.downcast_index(self._index.storage)
        xb = self._faiss.rev_swig_ptr(storage.get_xb(), ntotal * self.dim)
        live = np.array(xb.reshape(ntotal, self.dim)[live_labels], dtype=np.float32)
        index = self._new_index()
        if len(live):
            index.add(live)
        self._index = index

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors, the graph's link lists and the label tables."""
        hnsw = self._index.hnsw
        graph = int(hnsw.neighbors.size()) * 4 + int(hnsw.offsets.size()) * 8
        graph += int(hnsw.levels.size()) * 4
        return int(
            self._index.ntotal * 4 * self.dim
            + graph
            + self._ext.nbytes
            + self._bitmap.nbytes
            + len(self._label) * _MAP_ENTRY_BYTES
        )

    @property
    def bytes_per_entry(self) -> int:
        """Vector, about ``2·M`` level-0 links plus upper levels, label tables."""
        links = int(4 * self._m * 2 * 1.1) + 12
        return 4 * self.dim + links + 8 + _MAP_ENTRY_BYTES


class FaissIvfIndex:
    """faiss ``IndexIVFFlat``; exact (numpy) until enough entries exist to train.

    Args:
        dim: Vector dimension.
        cfg: ``nlist``, ``nprobe``, training size and retraining growth.
    """

    def __init__(self, dim: int, cfg: IvfIndexConfig) -> None:
        if dim <= 0:
            msg = f"dim must be positive, got {dim}"
            raise ValueError(msg)
        self.dim = dim
        self._cfg = cfg
        self._faiss = load_faiss("ivf")
        set_faiss_threads(self._faiss, cfg.threads)
        self.nprobe = cfg.nprobe
        self._flat: NumpyIndex | None = NumpyIndex(dim)
        self._ivf: Any = None
        self._trained_at = 0
        self.trainings = 0

    def __len__(self) -> int:
        if self._flat is not None:
            return len(self._flat)
        return int(self._ivf.ntotal)

    @property
    def trained(self) -> bool:
        """Whether search goes through the inverted lists."""
        return self._ivf is not None

    @property
    def nlist(self) -> int:
        """Cells of the trained index (0 while flat)."""
        return 0 if self._ivf is None else int(self._ivf.nlist)

    def _nlist_for(self, n: int) -> int:
        if self._cfg.nlist is not None:
            return self._cfg.nlist
        # ~sqrt(n) cells keeps both the coarse search and the scanned lists small;
        # faiss wants at least 39 training points per cell.
        return max(1, min(round(math.sqrt(n)), n // 39))

    def _train_threshold(self) -> int:
        if self._cfg.nlist is not None:
            return max(self._cfg.train_min, 39 * self._cfg.nlist)
        return self._cfg.train_min

    def add(self, ids: Ids, vectors: Vector) -> None:
        """Insert (or replace) vectors; train or retrain when the size calls for it.

        Raises:
            CacheError: shapes do not match, or faiss failed.
        """
        vecs = as_vectors(vectors, self.dim)
        idents = as_ids(ids, len(vecs))
        keep = last_occurrence(idents)
        if len(keep) != len(idents):
            idents, vecs = idents[keep], vecs[keep]
        if self._flat is not None:
            self._flat.add(idents, vecs)
            if len(self._flat) >= self._train_threshold():
                self._train(*self._flat_contents())
            return
        self.remove(idents)
        with _mapped("ivf add"):
            self._ivf.add_with_ids(vecs, idents)
        if len(self) >= self._cfg.retrain_growth * self._trained_at:
            self._train(*self._ivf_contents())

    def _flat_contents(self) -> tuple[Ids, Vector]:
        if self._flat is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return self._flat.contents()

    def _ivf_contents(self) -> tuple[Ids, Vector]:
        invlists = self._ivf.invlists
        code_size = int(self._ivf.code_size)
        all_ids: list[np.ndarray] = []
        all_vecs: list[np.ndarray] = []
        with _mapped("ivf export"):
            for cell in range(int(self._ivf.nlist)):
                size = int(invlists.list_size(cell))
                if size == 0:
                    continue
                ids = self._faiss.rev_swig_ptr(invlists.get_ids(cell), size)
                codes = self._faiss.rev_swig_ptr(invlists.get_codes(cell), size * code_size)
                all_ids.append(np.array(ids, dtype=np.int64))
                all_vecs.append(np.frombuffer(codes.tobytes(), dtype=np.float32))
        if not all_ids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(all_ids), np.concatenate(all_vecs).reshape(-1, self.dim)

    def _train(self, ids: Ids, vectors: Vector) -> None:
        n = len(ids)
        nlist = self._nlist_for(n)
        faiss = self._faiss
        with _mapped("ivf training"):
            quantizer = faiss.IndexFlatL2(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_L2)
            ivf.cp.niter = self._cfg.train_iterations
            ivf.cp.seed = self._cfg.seed
            ivf.train(vectors)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            ivf.add_with_ids(vectors, ids)
            ivf.nprobe = min(self.nprobe, nlist)
        self._ivf = ivf
        self._flat = None
        self._trained_at = n
        self.trainings += 1
        logger.info("ivf index trained: %d entries, %d cells", n, nlist)

    def remove(self, ids: Ids) -> int:
        """Remove ids; return how many were present."""
        idents = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self._flat is not None:
            return self._flat.remove(idents)
        if not len(idents):
            return 0
        with _mapped("ivf remove"):
            return int(self._ivf.remove_ids(self._faiss.IDSelectorArray(np.unique(idents))))

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return ``(D, I)``: squared L2 and ids, ascending, ``-1``/``inf`` padded.

        Raises:
            CacheError: wrong query shape, ``k < 1``, or faiss failed.
        """
        queries = as_vectors(vectors, self.dim)
        k = check_k(k)
        if self._flat is not None:
            return self._flat.search(queries, k)
        if self._ivf.ntotal == 0:
            return empty_result(len(queries), k)
        with _mapped("ivf search"):
            dist, ids = self._ivf.search(queries, k)
        return _fix_padding(dist, ids)

    @property
    def bytes_per_entry(self) -> int:
        """Vector, stored id, direct-map hash entry."""
        return 4 * self.dim + 8 + 48

    @property
    def nbytes(self) -> int:
        """Bytes of the lists, the centroids and the direct map (estimated)."""
        if self._flat is not None:
            return self._flat.nbytes
        n = int(self._ivf.ntotal)
        return int(n * (4 * self.dim + 8 + 48) + self._ivf.nlist * 4 * self.dim)
