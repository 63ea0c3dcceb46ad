"""Mechanisms behind the indexes: LSH maths, A-LSH adaptation, FAISS wrappers."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import numpy as np
import pytest

from streamedge.caches.alsh import AlshIndex, choose_lsh_parameters, estimate_density
from streamedge.caches.config import (
    AlshIndexConfig,
    HnswIndexConfig,
    IvfIndexConfig,
    LshIndexConfig,
)
from streamedge.caches.lsh import LshIndex, normal_cdf, pstable_collision_probability
from streamedge.errors import CacheError, MissingDependencyError
from streamedge.testing.contracts import clustered_vectors, exact_knn


def _recall(index: object, base: np.ndarray, queries: np.ndarray) -> float:
    ref, _ = exact_knn(base, queries, 1)
    dist, _ = index.search(queries, 1)  # type: ignore[attr-defined]
    return float((dist[:, 0] <= ref[:, 0] * (1 + 1e-4) + 1e-4).mean())


# ---------------------------------------------------------------------- LSH maths


def test_normal_cdf_matches_erf() -> None:
    xs = np.linspace(-6, 6, 241)
    ref = np.array([0.5 * (1 + math.erf(x / math.sqrt(2))) for x in xs])
    assert np.max(np.abs(normal_cdf(xs) - ref)) < 2e-7


def test_pstable_collision_probability_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    width = 1.0
    for dist in (0.25, 0.5, 1.0, 2.0, 4.0):
        # Two points dist apart: a·Δ ~ N(0, dist²); b uniform in [0, w).
        proj = rng.standard_normal(200_000) * dist
        b = rng.uniform(0, width, proj.size)
        same = np.floor(b / width) == np.floor((proj + b) / width)
        expected = float(pstable_collision_probability(dist, width))
        assert abs(same.mean() - expected) < 0.005, (dist, same.mean(), expected)
    ps = pstable_collision_probability(np.array([0.0, 0.1, 1.0, 10.0]), 1.0)
    assert ps[0] == pytest.approx(1.0)
    assert np.all(np.diff(ps) < 0)


def test_lsh_multiprobe_raises_recall() -> None:
    data, _ = clustered_vectors(3000, 32, seed=1)
    base, queries = data[:2700], data[2700:]
    recalls = []
    for probes in (0, 24):
        index = LshIndex.from_config(
            32, LshIndexConfig(tables=4, projections=6, width=0.1, probes=probes)
        )
        index.add(np.arange(len(base)), base)
        recalls.append(_recall(index, base, queries))
    assert recalls[1] > recalls[0] + 0.1, recalls


# ---------------------------------------------------------------------- A-LSH


def test_alsh_is_exact_below_min_entries() -> None:
    data, _ = clustered_vectors(200, 16, seed=2)
    index = AlshIndex(16, AlshIndexConfig(min_entries=64))
    index.add(np.arange(50), data[:50])
    assert index.estimates == 0
    assert _recall(index, data[:50], data[100:200]) == 1.0
    index.add(np.arange(50, 100), data[50:100])
    assert index.estimates == 1


def test_alsh_width_follows_density() -> None:
    """Denser data → smaller k-NN distance → narrower buckets (and re-estimation)."""
    rng = np.random.default_rng(3)
    dim = 16
    index = AlshIndex(dim, AlshIndexConfig(min_entries=64, width_factor=2.0))
    sparse = rng.random((200, dim), dtype=np.float32)
    index.add(np.arange(200), sparse)
    w_sparse, n_est = index.width, index.estimates
    dense = rng.random((3000, dim), dtype=np.float32)
    index.add(np.arange(200, 3200), dense)
    assert index.estimates > n_est
    assert index.width < 0.8 * w_sparse
    # The width tracks the measured k-NN distance: w = 2 · median R_5.
    est = estimate_density(
        np.concatenate([sparse, dense]), k=5, sample=96, rng=np.random.default_rng(0)
    )
    assert index.width == pytest.approx(2.0 * float(np.median(est.rk)), rel=0.25)


def test_alsh_reestimates_on_churn_at_constant_size() -> None:
    rng = np.random.default_rng(4)
    index = AlshIndex(8, AlshIndexConfig(min_entries=64, reestimate_growth=1.5, width_factor=1.0))
    index.add(np.arange(400), rng.random((400, 8), dtype=np.float32))
    first = index.estimates
    # Replace every entry twice over, one by one: the size stays 400 while the data
    # becomes ten times denser; re-estimates come every 200 insertions.
    for i in range(400, 1200):
        index.remove(np.array([i - 400]))
        index.add(np.array([i]), rng.random((1, 8), dtype=np.float32) * 0.1)
    assert len(index) == 400
    assert index.estimates >= first + 3
    assert index.width < 0.3 * pstable_width_of_uniform(8)


def pstable_width_of_uniform(dim: int) -> float:
    # Typical NN scale of 400 uniform points in [0, 1]^dim, for comparison only.
    rng = np.random.default_rng(0)
    pts = rng.random((400, dim))
    d, _ = exact_knn(pts, pts, 6)
    return float(np.median(np.sqrt(d[:, 5])))


def test_alsh_parameters_meet_their_recall_estimate() -> None:
    data, _ = clustered_vectors(6000, 32, seed=5, spread=0.04)
    base, queries = data[:5500], data[5500:]
    cfg = AlshIndexConfig(target_recall=0.95, max_probes=0)
    index = AlshIndex(32, cfg)
    index.add(np.arange(len(base)), base)
    measured = _recall(index, base, queries)
    assert index.expected_recall >= 0.95
    # Fresh queries are a little farther from their neighbours than stored points.
    assert measured >= index.expected_recall - 0.08
    assert index.expected_candidates < 0.2 * len(base), "it must not degrade to brute force"


def test_choose_lsh_parameters_prefers_cheaper_when_both_meet_target() -> None:
    rng = np.random.default_rng(6)
    data = rng.random((2000, 16), dtype=np.float32)
    est = estimate_density(data, k=5, sample=64, rng=rng)
    *_, rec_lo, cand_lo = choose_lsh_parameters(
        est, dim=16, width_factor=None, target_recall=0.5, max_tables=16, max_projections=24
    )
    *_, rec_hi, cand_hi = choose_lsh_parameters(
        est, dim=16, width_factor=None, target_recall=0.95, max_tables=16, max_projections=24
    )
    assert rec_lo >= 0.5
    assert rec_hi >= 0.95
    assert cand_lo <= cand_hi  # a looser target costs no more


def test_alsh_probes_more_in_sparse_regions() -> None:
    rng = np.random.default_rng(7)
    dim = 16
    dense = 0.5 + 0.01 * rng.standard_normal((3000, dim))
    sparse = rng.random((60, dim)) * 4.0 + 2.0  # far, scattered
    data = np.concatenate([dense, sparse]).astype(np.float32)
    probing = AlshIndex(dim, AlshIndexConfig(min_candidates=8, max_probes=64))
    fixed = AlshIndex(dim, AlshIndexConfig(min_candidates=8, max_probes=0))
    for index in (probing, fixed):
        index.add(np.arange(len(data)), data)
    query = (sparse[5] + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    proj_p = probing._project(query[None, :])[0]
    proj_f = fixed._project(query[None, :])[0]
    assert len(probing._candidates(proj_p)) > len(fixed._candidates(proj_f))


# ---------------------------------------------------------------------- FAISS


def test_faiss_is_imported_only_when_configured() -> None:
    code = (
        "import sys\n"
        "from streamedge.caches.cache import build_index\n"
        "from streamedge.caches.config import NumpyIndexConfig, AlshIndexConfig\n"
        "build_index(NumpyIndexConfig(), 8); build_index(AlshIndexConfig(), 8)\n"
        "assert 'faiss' not in sys.modules, 'faiss imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_faiss_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamedge.caches import faiss_index

    def no_faiss(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_faiss)
    with pytest.raises(MissingDependencyError, match="faiss-cpu"):
        faiss_index.FaissHnswIndex(8, HnswIndexConfig())


def test_faiss_errors_become_cache_errors() -> None:
    pytest.importorskip("faiss")
    from streamedge.caches.faiss_index import FaissFlatIndex

    index = FaissFlatIndex(8)
    index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))

    class Broken:
        ntotal = 3

        def search(self, *args: object, **kw: object) -> None:
            raise RuntimeError("Error in faiss::IndexFlat::search: bad state")

    index._index = Broken()
    with pytest.raises(CacheError, match="faiss failed in faiss_flat search") as info:
        index.search(np.zeros((1, 8), dtype=np.float32), 1)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_hnsw_tombstones_are_compacted() -> None:
    pytest.importorskip("faiss")
    from streamedge.caches.faiss_index import FaissHnswIndex

    data, _ = clustered_vectors(2400, 16, seed=8)
    index = FaissHnswIndex(16, HnswIndexConfig(m=8, rebuild_fraction=0.25))
    index.add(np.arange(2000), data[:2000])
    index.remove(np.arange(300))  # 300 ≤ 0.25 × 1700: tombstones only
    assert index.rebuilds == 0
    assert index.tombstones == 300
    assert index._index.ntotal == 2000
    index.remove(np.arange(300, 500))  # 500 > 0.25 × 1500: rebuild
    assert index.rebuilds == 1
    assert index.tombstones == 0
    assert index._index.ntotal == 1500
    assert _recall(index, data[500:2000], data[2000:]) >= 0.97


def test_hnsw_ef_search_controls_recall() -> None:
    pytest.importorskip("faiss")
    from streamedge.caches.faiss_index import FaissHnswIndex

    data, _ = clustered_vectors(8000, 64, seed=9, clusters=256, spread=0.08)
    base, queries = data[:7500], data[7500:]
    recalls = []
    for ef in (1, 128):
        index = FaissHnswIndex(64, HnswIndexConfig(m=4, ef_construction=16, ef_search=ef))
        index.add(np.arange(len(base)), base)
        recalls.append(_recall(index, base, queries))
    assert recalls[1] >= 0.95
    assert recalls[0] < recalls[1] - 0.05, recalls


def test_ivf_trains_then_retrains_and_nprobe_matters() -> None:
    pytest.importorskip("faiss")
    from streamedge.caches.faiss_index import FaissIvfIndex

    data, _ = clustered_vectors(9000, 32, seed=10, clusters=128)
    base, queries = data[:8500], data[8500:]
    index = FaissIvfIndex(32, IvfIndexConfig(train_min=1000, retrain_growth=4.0, nprobe=64))
    index.add(np.arange(999), base[:999])
    assert index.nlist == 0  # flat: not trained
    index.add(np.array([999]), base[999:1000])
    assert index.nlist > 0
    assert index.trainings == 1
    trained_cells = index.nlist
    index.add(np.arange(1000, 4000), base[1000:4000])
    assert index.trainings == 2  # 4000 ≥ 4 × 1000
    assert index.nlist > trained_cells
    index.add(np.arange(4000, len(base)), base[4000:])
    assert len(index) == len(base)
    full = _recall(index, base, queries)
    index.nprobe = 1
    index._ivf.nprobe = 1
    narrow = _recall(index, base, queries)
    assert full >= 0.99
    assert narrow < full
