"""Reuse opportunities captured by the approximate cache, against the full model's answers.

For a workload (one or more camera streams, replayed in time order) the
reference answers of the full model (:mod:`streamedge.bench.reference`) say
which inputs *could* have been answered from the cache:

* an input is a **reuse opportunity** when an earlier input of the workload
  (any stream, at most the cache's TTL earlier) has a reference answer that
  agrees with its own (:func:`streamedge.bench.answers.answers_agree`: same
  boxes at IoU ≥ 0.5, or same label; or, with ``match="count"``, the same
  face count);

and a cache configuration is scored by playing the workload through a real
:class:`~streamedge.caches.cache.ApproximateCache` (its index, hit policy and
byte-capped store), with the reference answer standing in for the model on
each miss (MTCNN is deterministic, so that *is* what the pipeline would
have stored):

* **captured**: opportunities answered by a correct hit, over opportunities;
* **wrong-hit rate**: hits whose reused answer disagrees with the reference
  answer of that input, over hits;
* **inference saved**: hits over inputs;
* **speedup**: the processing time of infer-every-frame (the reference's
  measured MTCNN seconds) over that with the cache (measured embedding and
  lookup/insert time of every input plus the reference MTCNN seconds of the
  misses); decoding is the same in both and left out.

The embedding of every input is computed once per embedder and timed; the
sweep then varies only the policy and threshold.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streamedge.bench.answers import answer_count, answers_agree, counts_agree
from streamedge.caches.cache import build_cache
from streamedge.caches.config import CacheConfig
from streamedge.protocols import Embedder
from streamedge.records import (
    JSON,
    CacheQuery,
    InferenceResult,
    ModelRef,
    Tier,
    Vector,
)

__all__ = [
    "Match",
    "ReuseInput",
    "ReusePoint",
    "agree",
    "opportunities",
    "previous_answer_wrong_rate",
    "simulate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReuseInput:
    """One input of a workload, in arrival order."""

    stream: int
    """Position of its stream in the workload."""
    ts: float
    """Stream time, seconds (the cache's clock)."""
    answer: JSON
    """The full model's answer (reference)."""
    infer_s: float
    """Seconds the full model took on it (reference run)."""


Match = Literal["boxes", "count"]


def agree(reference: JSON, other: JSON, match: Match = "boxes", iou_threshold: float = 0.5) -> bool:
    """Whether two answers agree: same boxes (IoU) or label, or only the same count."""
    if match == "count":
        return counts_agree(reference, other)
    return answers_agree(reference, other, iou_threshold=iou_threshold)


def opportunities(
    inputs: Sequence[ReuseInput],
    *,
    ttl_s: float = math.inf,
    match: Match = "boxes",
    iou_threshold: float = 0.5,
) -> list[bool]:
    """For each input: does an earlier one (within ``ttl_s``) have an agreeing answer?

    Only earlier inputs with the same face count are compared (agreeing
    answers have equal counts), newest first, so a typical input costs a
    few comparisons.
    """
    by_count: dict[int | None, list[int]] = {}
    out: list[bool] = []
    for i, item in enumerate(inputs):
        count = answer_count(item.answer)
        earlier = by_count.setdefault(count, [])
        found = False
        for j in reversed(earlier):
            if item.ts - inputs[j].ts > ttl_s:
                break
            if agree(item.answer, inputs[j].answer, match, iou_threshold):
                found = True
                break
        out.append(found)
        earlier.append(i)
    return out


def previous_answer_wrong_rate(
    inputs: Sequence[ReuseInput], *, match: Match = "boxes", iou_threshold: float = 0.5
) -> float:
    """Share of inputs whose answer disagrees with the previous input of the same stream.

    What reusing every stream's last answer would get wrong: a floor for any
    cache that reuses answers of near-identical consecutive frames, set by how
    often the model's answer changes (or flickers) from one frame to the next.
    """
    last: dict[int, JSON] = {}
    wrong = compared = 0
    for item in inputs:
        prev = last.get(item.stream)
        if prev is not None:
            compared += 1
            wrong += int(not agree(item.answer, prev, match, iou_threshold))
        last[item.stream] = item.answer
    return wrong / compared if compared else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReusePoint:
    """One cache configuration on one workload, scored."""

    inputs: int
    opportunities: int
    hits: int
    correct_hits: int
    wrong_hits: int
    captured_hits: int
    """Correct hits on opportunities (equals ``correct_hits``: see :func:`simulate`)."""
    embed_s: float
    """Seconds spent embedding every input (measured)."""
    cache_s: float
    """Seconds spent in cache lookups and inserts (measured)."""
    miss_infer_s: float
    """Reference MTCNN seconds of the misses."""
    every_frame_infer_s: float
    """Reference MTCNN seconds of every input."""
    rechecks: int = 0
    """Hits re-checked by the accuracy guard (``guard=True``)."""
    recheck_infer_s: float = 0.0
    """Reference MTCNN seconds of those re-checks (spent off the answer's path, but spent)."""
    final_distance: float | None = None
    """The policy's distance bound at the end (the guard may have moved it)."""

    @property
    def captured(self) -> float:
        """Opportunities answered by a correct hit, over opportunities."""
        return self.captured_hits / self.opportunities if self.opportunities else 0.0

    @property
    def wrong_hit_rate(self) -> float:
        """Wrong hits over hits."""
        return self.wrong_hits / self.hits if self.hits else 0.0

    @property
    def inference_saved(self) -> float:
        """Hits over inputs."""
        return self.hits / self.inputs if self.inputs else 0.0

    @property
    def speedup(self) -> float:
        """Every-frame processing time over the cached processing time."""
        cached = self.embed_s + self.cache_s + self.miss_infer_s + self.recheck_infer_s
        return self.every_frame_infer_s / cached if cached > 0 else 0.0

    def to_json(self) -> JSON:
        """Counts and the derived rates."""
        return {
            "inputs": self.inputs,
            "opportunities": self.opportunities,
            "hits": self.hits,
            "correct_hits": self.correct_hits,
            "wrong_hits": self.wrong_hits,
            "captured_hits": self.captured_hits,
            "captured": round(self.captured, 4),
            "wrong_hit_rate": round(self.wrong_hit_rate, 4),
            "inference_saved": round(self.inference_saved, 4),
            "speedup": round(self.speedup, 3),
            "embed_s": round(self.embed_s, 4),
            "cache_s": round(self.cache_s, 4),
            "miss_infer_s": round(self.miss_infer_s, 3),
            "every_frame_infer_s": round(self.every_frame_infer_s, 3),
            "rechecks": self.rechecks,
            "recheck_infer_s": round(self.recheck_infer_s, 3),
            "final_distance": self.final_distance,
        }


async def simulate(
    inputs: Sequence[ReuseInput],
    vectors: Sequence[Vector],
    embed_s: Sequence[float],
    cfg: CacheConfig,
    *,
    embedder: Embedder,
    model: ModelRef,
    opportunity: Sequence[bool],
    match: Match = "boxes",
    iou_threshold: float = 0.5,
    guard: bool = False,
) -> ReusePoint:
    """Play the inputs through a real cache built from ``cfg`` (see the module docstring).

    Without ``guard`` the threshold adjuster is off (thresholds stay as
    configured). With it, ``cfg.accuracy`` applies as in the pipeline: the
    cache picks ``recheck_fraction`` of hits, the reference answer stands in
    for the authoritative tier's, and :meth:`ApproximateCache.record_recheck`
    feeds the adjuster (agreement by the cache's ``answer_key``).
    """
    clock_now = [0.0]
    if not guard:
        off = {"enabled": False, "recheck_fraction": 0.0}
        cfg = cfg.model_copy(update={"accuracy": cfg.accuracy.model_copy(update=off)})
    rechecks = 0
    recheck_s = 0.0
    cache = build_cache(cfg, model=model, embedder=embedder, clock=lambda: clock_now[0])
    hits = correct = wrong = captured = 0
    cache_s = miss_infer_s = 0.0
    for item, vec, is_opportunity in zip(inputs, vectors, opportunity, strict=True):
        clock_now[0] = item.ts
        query = CacheQuery(
            namespace=cache.namespace,
            key=hashlib.blake2b(vec.tobytes(), digest_size=16).digest(),
            vector=vec,
        )
        start = time.perf_counter()
        hit = await cache.get(query)
        if hit is None:
            await cache.put(
                query,
                InferenceResult(
                    model=model,
                    answer=item.answer,
                    tier=Tier.LOCAL,
                    backend="reference",
                    latency_s=item.infer_s,
                ),
                origin=f"s{item.stream}",
            )
        cache_s += time.perf_counter() - start
        if hit is None:
            miss_infer_s += item.infer_s
            continue
        hits += 1
        if guard and cache.should_recheck():
            rechecks += 1
            recheck_s += item.infer_s
            cache.record_recheck(hit, item.answer)
        if agree(item.answer, hit.entry.answer, match, iou_threshold):
            correct += 1
            # A correct hit reuses an earlier agreeing answer, so it is an opportunity
            # by construction; counted on both sides to keep that checked.
            captured += int(is_opportunity)
        else:
            wrong += 1
    return ReusePoint(
        inputs=len(inputs),
        opportunities=sum(opportunity),
        hits=hits,
        correct_hits=correct,
        wrong_hits=wrong,
        captured_hits=captured,
        embed_s=float(sum(embed_s)),
        cache_s=cache_s,
        miss_infer_s=miss_infer_s,
        every_frame_infer_s=float(sum(i.infer_s for i in inputs)),
        rechecks=rechecks,
        recheck_infer_s=recheck_s,
        final_distance=cache.hit_distance,
    )
