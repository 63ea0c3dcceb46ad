"""Every index passes the same conformance suite, plus a property test against an oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamedge.caches.alsh import AlshIndex
from streamedge.caches.config import (
    AlshIndexConfig,
    HnswIndexConfig,
    IvfIndexConfig,
    LshIndexConfig,
)
from streamedge.caches.lsh import LshIndex
from streamedge.caches.numpy_index import NumpyIndex
from streamedge.protocols import Index
from streamedge.testing.contracts import check_index

pytest.importorskip("faiss")

from streamedge.caches.faiss_index import (
    FaissFlatIndex,
    FaissHnswIndex,
    FaissIvfIndex,
)

Factory = Callable[[int], Index]

# (factory, recall@1 floor on the suite's seeded data, exact?)
INDEXES: dict[str, tuple[Factory, float, bool]] = {
    "numpy": (NumpyIndex, 1.0, True),
    "faiss_flat": (lambda d: FaissFlatIndex(d), 1.0, True),
    "hnsw": (
        lambda d: FaissHnswIndex(d, HnswIndexConfig(m=16, ef_construction=40, ef_search=64)),
        0.97,
        False,
    ),
    # Never trained: must behave exactly like flat search.
    "ivf_untrained": (lambda d: FaissIvfIndex(d, IvfIndexConfig(train_min=10**9)), 1.0, True),
    "ivf": (lambda d: FaissIvfIndex(d, IvfIndexConfig(train_min=256, nprobe=4)), 0.95, False),
    "lsh": (
        lambda d: LshIndex.from_config(
            d, LshIndexConfig(tables=10, projections=4, width=0.2, probes=16)
        ),
        0.95,
        False,
    ),
    "alsh": (lambda d: AlshIndex(d, AlshIndexConfig()), 0.93, False),
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_index_contract(name: str) -> None:
    make, floor, _ = INDEXES[name]
    check_index(make, recall_floor=floor)


def test_index_contract_detects_a_broken_index() -> None:
    """The suite must fail an index that returns removed ids (it is not vacuous)."""

    class Leaky(NumpyIndex):
        def remove(self, ids: np.ndarray) -> int:
            return len(np.asarray(ids).reshape(-1))  # claims removal, keeps the vectors

    with pytest.raises(AssertionError):
        check_index(Leaky)


def test_index_contract_detects_unsorted_results() -> None:
    class Reversed(NumpyIndex):
        def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            dist, ids = super().search(vectors, k)
            return dist[:, ::-1].copy(), ids[:, ::-1].copy()

    with pytest.raises(AssertionError, match=r"tail|ascending"):
        check_index(Reversed)


# ---------------------------------------------------------------------- property test

DIM = 6
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 150), min_size=1, max_size=60)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 150), min_size=1, max_size=40)),
    ),
    min_size=1,
    max_size=8,
)


def _vector(ident: int, version: int) -> np.ndarray:
    rng = np.random.default_rng([ident, version])
    return rng.random(DIM, dtype=np.float32)


@pytest.mark.parametrize("name", sorted(INDEXES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_index_matches_oracle(name: str, ops: list[tuple[str, list[int]]]) -> None:
    make, _, exact = INDEXES[name]
    if name == "ivf":
        # Train as early as the config allows, so the trained path is exercised.
        index: Index = FaissIvfIndex(DIM, IvfIndexConfig(train_min=64, nlist=1, nprobe=1))
    else:
        index = make(DIM)
    oracle: dict[int, np.ndarray] = {}
    version = 0
    for op, idents in ops:
        version += 1
        if op == "add":
            vecs = np.stack([_vector(i, version * 1000 + j) for j, i in enumerate(idents)])
            index.add(np.asarray(idents, dtype=np.int64), vecs)
            for j, i in enumerate(idents):
                oracle[i] = vecs[j]  # the last occurrence wins
        else:
            present = len(set(idents) & set(oracle))
            assert index.remove(np.asarray(idents, dtype=np.int64)) == present
            for i in idents:
                oracle.pop(i, None)
        assert len(index) == len(oracle)
        if not oracle:
            continue
        live = sorted(oracle)
        queries = np.stack([oracle[i] for i in live])
        k = min(len(live) + 2, 12)
        dist, got = index.search(queries, k)
        returned = set(got[got >= 0].tolist())
        assert returned <= set(oracle), f"dead ids returned: {returned - set(oracle)}"
        for row, ident in enumerate(live):
            assert got[row, 0] == ident, f"self-query of {ident} returned {got[row]}"
            assert dist[row, 0] <= 1e-5
            real = dist[row][got[row] >= 0]
            assert np.all(np.diff(real) >= 0)
        if exact:
            base = np.stack([oracle[i] for i in live]).astype(np.float64)
            d2 = ((queries[:, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
            kk = min(k, len(live))
            ref = np.sort(d2, axis=1)[:, :kk]
            assert np.allclose(dist[:, :kk], ref, atol=1e-5)
