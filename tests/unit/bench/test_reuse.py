"""Reuse scoring: opportunities from reference answers, a real cache played over them."""

from __future__ import annotations

import numpy as np
import pytest

from streamedge.bench.reuse import (
    ReuseInput,
    opportunities,
    previous_answer_wrong_rate,
    simulate,
)
from streamedge.caches.config import CacheConfig
from streamedge.records import JSON, ModelInput, ModelRef, Vector

EMPTY: JSON = {"boxes": [], "count": 0}
FACE: JSON = {"boxes": [[10, 10, 50, 50, 0.99]], "count": 1}
FACE_MOVED: JSON = {"boxes": [[40, 40, 80, 80, 0.99]], "count": 1}


class Vectors:
    """An embedder stand-in: the benchmark hands the vectors in."""

    name = "test"
    version = "1"
    dim = 2

    def embed(self, item: ModelInput) -> Vector:
        raise AssertionError("not called: vectors are precomputed")


def inputs(*answers: JSON) -> list[ReuseInput]:
    return [ReuseInput(stream=0, ts=float(i), answer=a, infer_s=0.1) for i, a in enumerate(answers)]


def test_opportunities_need_an_earlier_agreeing_answer_within_the_ttl() -> None:
    items = inputs(EMPTY, EMPTY, FACE, FACE_MOVED, FACE, EMPTY)
    assert opportunities(items) == [False, True, False, False, True, True]
    assert opportunities(items, match="count") == [False, True, False, True, True, True]
    assert opportunities(items, ttl_s=2.0) == [False, True, False, False, True, False]


async def test_simulate_counts_captured_wrong_and_saved() -> None:
    items = inputs(EMPTY, EMPTY, FACE, EMPTY, FACE)
    # 1 is next to 0 (correct hit); 2 is next to 0 too but has a face (wrong hit);
    # 3 is far from everything (miss, although an opportunity); 4 is near 3 (wrong hit).
    vecs = [
        np.array(v, dtype=np.float32) for v in ([0, 0], [0.01, 0], [0, 0.01], [5, 5], [5, 5.01])
    ]
    cfg = CacheConfig.model_validate({"policy": {"type": "threshold", "max_distance": 0.05}})
    opp = opportunities(items)
    assert opp == [False, True, False, True, True]
    point = await simulate(
        items, vecs, [0.001] * 5, cfg, embedder=Vectors(), model=ModelRef("m", "1"), opportunity=opp
    )
    assert (point.hits, point.correct_hits, point.wrong_hits) == (3, 1, 2)
    assert point.captured == pytest.approx(1 / 3)
    assert point.wrong_hit_rate == pytest.approx(2 / 3)
    assert point.inference_saved == pytest.approx(3 / 5)
    # Every-frame: 0.5 s of model time; cached: 2 misses x 0.1 s + embedding + cache time.
    assert point.every_frame_infer_s == pytest.approx(0.5)
    assert point.miss_infer_s == pytest.approx(0.2)
    assert 0 < point.speedup < 0.5 / 0.205
    tight = CacheConfig.model_validate({"policy": {"type": "threshold", "max_distance": 0.001}})
    none = await simulate(
        items, vecs, [0.0] * 5, tight, embedder=Vectors(), model=ModelRef("m", "1"), opportunity=opp
    )
    assert none.hits == 0 and none.captured == 0.0


def test_previous_answer_wrong_rate_is_per_stream() -> None:
    items = [
        ReuseInput(stream=0, ts=0.0, answer=EMPTY, infer_s=0.1),
        ReuseInput(stream=1, ts=0.0, answer=FACE, infer_s=0.1),
        ReuseInput(stream=0, ts=0.1, answer=EMPTY, infer_s=0.1),  # same as its stream's last
        ReuseInput(stream=1, ts=0.1, answer=FACE_MOVED, infer_s=0.1),  # moved: differs
        ReuseInput(stream=0, ts=0.2, answer=FACE, infer_s=0.1),  # differs
    ]
    assert previous_answer_wrong_rate(items) == pytest.approx(2 / 3)
    assert previous_answer_wrong_rate(items, match="count") == pytest.approx(1 / 3)


async def test_the_guard_rechecks_hits_and_tightens_on_wrong_ones() -> None:
    # Answers alternate along a line of inputs 0.0071 RMS apart: within 0.05 the nearest
    # stored neighbour often has the other answer; below 0.007 nothing is reused.
    n = 200
    items = inputs(*([EMPTY, FACE] * (n // 2)))
    vecs = [np.array([0.01 * i, 0.0], dtype=np.float32) for i in range(n)]
    cfg = CacheConfig.model_validate(
        {
            "policy": {"type": "threshold", "max_distance": 0.05},
            "answer_key": "count",
            "accuracy": {
                "recheck_fraction": 1.0,
                "target": 0.9,
                "min_samples": 5,
                "window": 10,
                "tighten_factor": 0.5,
            },
        }
    )
    opp = opportunities(items)
    model = ModelRef("m", "1")
    free = await simulate(
        items, vecs, [0.0] * n, cfg, embedder=Vectors(), model=model, opportunity=opp
    )
    guarded = await simulate(
        items, vecs, [0.0] * n, cfg, embedder=Vectors(), model=model, opportunity=opp, guard=True
    )
    assert free.rechecks == 0 and free.final_distance == 0.05
    assert free.wrong_hits > 20
    assert guarded.rechecks == guarded.hits > 0
    assert guarded.recheck_infer_s == pytest.approx(0.1 * guarded.rechecks)
    assert guarded.final_distance is not None and guarded.final_distance < 0.007
    assert guarded.wrong_hits < free.wrong_hits / 2
