"""Conformance suites that every implementation of an interface must pass.

In the spirit of trio's ``check_*_stream`` helpers: a plugin author calls
:func:`check_index` with a factory, in their own test, and gets the same
checks the built-in indexes pass. Data is seeded (numpy), so a failure
reproduces exactly; the suite takes about a second per index.

What :func:`check_index` demands of an :class:`~streamedge.protocols.Index`:

* an empty index searches to ``-1`` ids and ``inf`` distances;
* an inserted vector is found by its own query at distance ~0;
* each row of ``D`` is ascending; ``-1``/``inf`` only pad the tail, never
  mix with real results; a row never repeats an id;
* returned distances are the true squared L2 distances of the returned ids;
* ``k`` greater than ``len`` pads with ``-1``/``inf``;
* a batch search equals the searches of its rows one by one;
* removed ids are never returned; ``remove`` counts only ids present; ``len``
  follows adds and removes;
* re-adding an id replaces its vector; an id repeated inside one ``add``
  keeps its last vector;
* a wrong dimension, a count mismatch between ids and vectors, or ``k < 1``
  raises :class:`~streamedge.errors.CacheError` (which the pipeline treats as
  a miss) rather than crashing or silently truncating;
* float64 and non-contiguous inputs are accepted;
* after mass removal and refill (rebuild paths) all of the above still hold;
* recall@1 against exact search on seeded clustered data is at least
  ``recall_floor`` (1.0 for exact indexes; approximate ones pass their floor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np

from streamedge.errors import CacheError
from streamedge.protocols import Index
from streamedge.records import Vector

__all__ = ["IndexFactory", "check_index", "clustered_vectors", "exact_knn"]

IndexFactory = Callable[[int], Index]
"""Builds an empty index for a dimension."""


def clustered_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 32,
    spread: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded clustered data shaped like cache keys, and the cluster of each row.

    Centres lie in a random 8-dimensional subspace mapped into ``[0, 1]^dim``
    (thumbnail-like values with a low intrinsic dimension, in the manner of
    faiss's ``SyntheticDataset``); points add isotropic noise of ``spread``
    per dimension. Returns ``(vectors float32 (n, dim), labels int64 (n,))``.
    """
    rng = np.random.default_rng(seed)
    intrinsic = min(8, dim)
    latent = rng.standard_normal((clusters, intrinsic))
    mix = rng.uniform(-1.0, 1.0, (intrinsic, dim)) / np.sqrt(intrinsic)
    centres = 0.5 + 0.25 * np.tanh(latent @ mix)
    labels = rng.integers(0, clusters, n)
    points = centres[labels] + spread * rng.standard_normal((n, dim))
    return points.astype(np.float32), labels.astype(np.int64)


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force squared L2 k-NN (float64), the reference for recall.

    Returns ``(D, positions)`` into ``base``, ascending.
    """
    b = base.astype(np.float64)
    q = queries.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * q @ b.T
    np.maximum(d2, 0.0, out=d2)
    k = min(k, len(b))
    pos = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, pos, axis=1), pos


def _tol(vectors: np.ndarray) -> float:
    # float32 arithmetic on |x|² ~ dim/3 leaves relative errors ~1e-6.
    return 1e-4 * (1.0 + float(np.max(np.einsum("ij,ij->i", vectors, vectors))))


def _expect(condition: object, message: str) -> None:
    """Fail the contract with ``message`` (explicit, so ``python -O`` keeps the checks)."""
    if not condition:
        raise AssertionError(message)


def _check_shape(dist: np.ndarray, ids: np.ndarray, nq: int, k: int, what: str) -> None:
    _expect(dist.shape == (nq, k), f"{what}: D has shape {dist.shape}, expected {(nq, k)}")
    _expect(ids.shape == (nq, k), f"{what}: I has shape {ids.shape}, expected {(nq, k)}")
    _expect(dist.dtype == np.float32, f"{what}: D is {dist.dtype}, expected float32")
    _expect(ids.dtype == np.int64, f"{what}: I is {ids.dtype}, expected int64")


def _check_rows(dist: np.ndarray, ids: np.ndarray, what: str) -> None:
    for row in range(len(ids)):
        d, i = dist[row], ids[row]
        found = i >= 0
        n_found = int(found.sum())
        _expect(found[:n_found].all(), f"{what}: -1 ids are not all at the tail: {i}")
        _expect(np.all(np.isinf(d[~found])), f"{what}: padding distances are not inf: {d}")
        _expect(np.all(np.isfinite(d[found])), f"{what}: a result has a non-finite distance: {d}")
        real = d[:n_found]
        _expect(np.all(np.diff(real) >= 0), f"{what}: distances are not ascending: {real}")
        _expect(len(set(i[found].tolist())) == n_found, f"{what}: an id repeats in a row: {i}")


def _check_true_distances(
    dist: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    stored: dict[int, np.ndarray],
    tol: float,
    what: str,
) -> None:
    for row in range(len(ids)):
        for col in np.flatnonzero(ids[row] >= 0):
            ident = int(ids[row, col])
            _expect(ident in stored, f"{what}: returned id {ident} is not stored")
            true = float(np.sum((queries[row].astype(np.float64) - stored[ident]) ** 2))
            got = float(dist[row, col])
            _expect(abs(got - true) <= tol, f"{what}: id {ident} at {got}, true distance {true}")


def _raises_cache_error(fn: Callable[[], object], what: str) -> None:
    try:
        fn()
    except CacheError:
        return
    except Exception as exc:  # the contract is about the exception type
        msg = f"{what}: raised {type(exc).__name__} ({exc}), expected CacheError"
        raise AssertionError(msg) from exc
    msg = f"{what}: no error raised, expected CacheError"
    raise AssertionError(msg)


def _self_found(index: Index, stored: dict[int, np.ndarray], sample: list[int], tol: float) -> None:
    queries = np.stack([stored[i] for i in sample]).astype(np.float32)
    dist, ids = index.search(queries, 1)
    for row, ident in enumerate(sample):
        _expect(
            dist[row, 0] <= tol,
            f"self-query of id {ident}: nearest at {dist[row, 0]}, expected ~0 (tolerance {tol})",
        )
        # Another id at distance ~0 would be an exact duplicate; seeded data has none.
        _expect(ids[row, 0] == ident, f"self-query of id {ident} returned id {ids[row, 0]}")


def check_index(
    make_index: IndexFactory,
    *,
    recall_floor: float = 1.0,
    dim: int = 24,
    n: int = 1500,
    seed: int = 0,
) -> None:
    """Run the Index conformance suite (see the module docstring).

    Args:
        make_index: Builds an empty index for a dimension.
        recall_floor: Least recall@1 against exact search on seeded data.
        dim: Dimension of the test vectors.
        n: Entries in the main phase (large enough to exercise training or
            rebuild paths the factory configures).
        seed: Seed of the data.

    Raises:
        AssertionError: the index broke the contract (the message says how).
    """
    rng = np.random.default_rng(seed)
    vectors, _ = clustered_vectors(n + 300, dim, seed=seed)
    base, fresh = vectors[:n], vectors[n:]
    tol = _tol(vectors)
    # Sparse, large ids: an index must not assume ids are row numbers.
    ids = (10**12 + 7 * rng.permutation(n * 3)[:n]).astype(np.int64)

    # -- empty
    index = make_index(dim)
    _expect(index.dim == dim, f"index.dim is {index.dim}, expected {dim}")
    _expect(len(index) == 0, f"a new index has len {len(index)}")
    dist, got = index.search(fresh[:3], 4)
    _check_shape(dist, got, 3, 4, "empty search")
    _expect(np.all(got == -1), f"empty search returned ids {got}")
    _expect(np.all(np.isinf(dist)), f"empty search returned distances {dist}")

    # -- k > len pads
    index.add(ids[:3], base[:3])
    _expect(len(index) == 3, f"len is {len(index)} after adding 3")
    dist, got = index.search(base[:2], 5)
    _check_shape(dist, got, 2, 5, "k > len")
    _check_rows(dist, got, "k > len")
    _expect(np.all(got[:, 3:] == -1), f"k > len: expected -1 padding, got {got}")
    _expect(set(got[got >= 0].tolist()) <= set(ids[:3].tolist()), f"k > len: unknown id in {got}")
    _expect(got[0, 0] == ids[0], f"k > len: the query's own id is not first: {got[0]}")

    # -- bad arguments
    _raises_cache_error(lambda: index.add(ids[3:5], base[3:5, :-1]), "add with dim - 1")
    _raises_cache_error(
        lambda: index.add(ids[3:5], np.zeros((2, dim + 1), np.float32)), "add with dim + 1"
    )
    _raises_cache_error(lambda: index.add(ids[3:6], base[3:5]), "3 ids for 2 vectors")
    _raises_cache_error(lambda: index.search(base[:1, :-1], 1), "search with dim - 1")
    _raises_cache_error(lambda: index.search(base[:1], 0), "search with k = 0")
    _expect(len(index) == 3, f"a failed add changed len to {len(index)}")

    # -- main phase: bulk add (float64, non-contiguous input accepted)
    index = make_index(dim)
    wide = np.zeros((n, dim * 2), dtype=np.float64)
    wide[:, ::2] = base
    # Deliberately float64 and strided: the protocol says float32, indexes must convert.
    index.add(ids, cast("Vector", wide[:, ::2]))
    stored = {int(i): base[row].astype(np.float64) for row, i in enumerate(ids.tolist())}
    _expect(len(index) == n, f"len is {len(index)} after adding {n}")
    sample = rng.choice(ids, size=40, replace=False).tolist()
    _self_found(index, stored, sample, tol)

    # -- sorted, padded, true distances, batch == one by one
    k = 10
    dist, got = index.search(fresh[:25], k)
    _check_shape(dist, got, 25, k, "batch search")
    _check_rows(dist, got, "batch search")
    _check_true_distances(dist, got, fresh[:25], stored, tol, "batch search")
    for row in range(25):
        d1, i1 = index.search(fresh[row], k)
        _expect(
            np.array_equal(i1[0], got[row]),
            f"batch row {row} returned {got[row]}, the single query {i1[0]}",
        )
        _expect(np.allclose(d1[0], dist[row], atol=tol, equal_nan=False), "batch distances differ")

    # -- recall@1 against exact search
    ref_d, _ = exact_knn(base, fresh, 1)
    dist, got = index.search(fresh, 1)
    hit = dist[:, 0] <= ref_d[:, 0] * (1 + 1e-4) + tol
    recall = float(hit.mean())
    _expect(recall >= recall_floor, f"recall@1 {recall:.3f} is below the floor {recall_floor}")

    # -- removal
    gone = ids[: n // 3]
    _expect(index.remove(gone) == len(gone), "remove did not count the ids present")
    _expect(index.remove(gone) == 0, "removing absent ids counted them")
    _expect(index.remove(np.array([7, 11], dtype=np.int64)) == 0, "unknown ids were counted")
    for ident in gone.tolist():
        stored.pop(int(ident))
    _expect(len(index) == n - len(gone), f"len is {len(index)} after removing {len(gone)}")
    gone_set = set(gone.tolist())
    queries = np.concatenate([base[: n // 3 : 5], fresh[:20]])
    dist, got = index.search(queries, 20)
    _check_rows(dist, got, "search after remove")
    leaked = gone_set.intersection(got[got >= 0].tolist())
    _expect(not leaked, f"removed ids returned: {sorted(leaked)[:5]}")
    _check_true_distances(dist, got, queries, stored, tol, "search after remove")
    _self_found(index, stored, rng.choice(list(stored), size=30, replace=False).tolist(), tol)

    # -- re-adding an id replaces its vector; repeats inside one add keep the last
    victim = int(ids[n // 2])
    old_vec = stored[victim].astype(np.float32)
    new_vec = fresh[-1]
    before = len(index)
    index.add(np.array([victim], dtype=np.int64), new_vec[None, :])
    stored[victim] = new_vec.astype(np.float64)
    _expect(len(index) == before, f"re-adding an id changed len from {before} to {len(index)}")
    _self_found(index, stored, [victim], tol)
    dist, got = index.search(old_vec, 5)
    stale = (got[0] == victim) & (dist[0] <= tol)
    _expect(not stale.any(), "the replaced vector of a re-added id is still found")
    twice = np.array([ids[0], ids[0]], dtype=np.int64)  # ids[0] was removed above
    index.add(twice, np.stack([fresh[-2], fresh[-3]]))
    stored[int(ids[0])] = fresh[-3].astype(np.float64)
    _expect(len(index) == before + 1, "an id repeated inside one add was counted twice")
    _self_found(index, stored, [int(ids[0])], tol)

    # -- mass removal and refill (compaction, rebuild, retraining paths)
    keep = list(stored)
    drop = keep[: int(len(keep) * 0.9)]
    _expect(index.remove(np.asarray(drop, dtype=np.int64)) == len(drop), "mass removal count")
    for ident in drop:
        stored.pop(ident)
    _expect(len(index) == len(stored), f"len {len(index)} after mass removal, {len(stored)} live")
    refill_ids = np.arange(len(fresh) - 3, dtype=np.int64) + 5 * 10**12
    index.add(refill_ids, fresh[:-3])
    for row, ident in enumerate(refill_ids.tolist()):
        stored[int(ident)] = fresh[row].astype(np.float64)
    _expect(len(index) == len(stored), f"len {len(index)} after refill, {len(stored)} live")
    dist, got = index.search(base[:50], len(stored) + 5)
    _check_rows(dist, got, "search after refill")
    dropped = set(drop).intersection(got[got >= 0].tolist())
    _expect(not dropped, f"mass-removed ids returned: {sorted(dropped)[:5]}")
    _check_true_distances(dist[:5], got[:5], base[:5], stored, tol, "search after refill")
    _self_found(index, stored, rng.choice(list(stored), size=30, replace=False).tolist(), tol)

    # -- remove everything
    _expect(index.remove(np.asarray(list(stored), dtype=np.int64)) == len(stored), "remove all")
    _expect(len(index) == 0, f"len is {len(index)} after removing everything")
    dist, got = index.search(base[:2], 3)
    _expect(np.all(got == -1), f"an emptied index returned {got}")
