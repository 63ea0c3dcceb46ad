"""Baselines computed from the reference answers alone (no model run needed).

* **Uniform sampling**: run the model on every ``k``-th frame (frames 0, k,
  2k, ...) and repeat its answer on the frames in between. The model is
  deterministic, so the answer on a sampled frame is the reference answer.
  :func:`uniform_for_target` picks the largest ``k`` whose agreement still
  reaches a target (the agreement of a configuration under evaluation), so a
  configuration can be compared with the plainest way of saving the same.
* **Oracle**: send a frame to the model only when the reference answer
  changed from the last answer sent (judged by the same agreement test the
  metrics use), and repeat the last answer otherwise. It reaches full
  agreement with the fewest model calls any "send or repeat" scheme can: the
  limit no filter or cache can beat at full agreement.

Every function takes one stream's reference answers; the pooled variants
take several streams (derived cameras) at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from streamedge.bench.answers import IOU_THRESHOLD, answers_agree, counts_agree
from streamedge.bench.metrics import Accuracy, pooled_accuracy
from streamedge.records import JSON

ChangeTest = Literal["boxes", "count"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselinePoint:
    """One operating point of a baseline: how many model runs, at what accuracy."""

    name: str
    """``every-frame``, ``uniform`` or ``oracle``."""
    k: int | None
    """Sampling interval (uniform only)."""
    inferences: int
    """Model runs over all frames."""
    frames: int
    accuracy: Accuracy

    @property
    def inference_fraction(self) -> float:
        """Model runs per frame (1.0 = every frame)."""
        return self.inferences / self.frames if self.frames else 0.0

    def to_json(self) -> JSON:
        """A JSON-serialisable dict."""
        doc = asdict(self)
        doc["accuracy"] = self.accuracy.to_json()
        doc["inference_fraction"] = self.inference_fraction
        return doc


def uniform_answers(reference: Sequence[JSON], k: int) -> list[JSON]:
    """The answers uniform sampling every ``k``-th frame gives (k = 1: the reference).

    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        msg = f"k must be at least 1, got {k}"
        raise ValueError(msg)
    return [reference[i - i % k] for i in range(len(reference))]


def uniform(
    streams: Sequence[Sequence[JSON]], k: int, *, iou_threshold: float = IOU_THRESHOLD
) -> BaselinePoint:
    """Uniform sampling every ``k``-th frame of each stream."""
    sampled = [(ref, uniform_answers(ref, k)) for ref in streams]
    frames = sum(len(ref) for ref in streams)
    runs = sum(-(-len(ref) // k) for ref in streams)  # ceil(n / k) per stream
    return BaselinePoint(
        name="uniform" if k > 1 else "every-frame",
        k=k,
        inferences=runs,
        frames=frames,
        accuracy=pooled_accuracy(sampled, iou_threshold=iou_threshold),
    )


def uniform_curve(
    streams: Sequence[Sequence[JSON]],
    ks: Sequence[int] | None = None,
    *,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[BaselinePoint]:
    """Uniform sampling at several intervals (default 1-10, 12, 15, 20, 25, 30, 40, 50, 60)."""
    longest = max((len(ref) for ref in streams), default=1)
    chosen = ks if ks is not None else [*range(1, 11), 12, 15, 20, 25, 30, 40, 50, 60]
    return [uniform(streams, k, iou_threshold=iou_threshold) for k in chosen if k <= longest]


Metric = Literal["agreement", "count_agreement", "presence_agreement", "windowed"]


def metric_value(accuracy: Accuracy, metric: Metric) -> float:
    """One figure of an :class:`Accuracy` (windowed: 1.0 when no window is complete)."""
    if metric == "windowed":
        value = accuracy.windowed.accuracy
        return 1.0 if value is None else value
    result: float = getattr(accuracy, metric)
    return result


def pick_uniform(
    curve: Sequence[BaselinePoint], target: float, *, metric: Metric = "agreement"
) -> BaselinePoint:
    """The point of a uniform curve with the largest ``k`` whose ``metric`` reaches ``target``.

    Agreement is not monotonic in ``k`` (a long interval can land on the
    right frames by chance), so the largest ``k`` that reaches the target
    wins, as a user tuning ``k`` by hand on this video would pick it. The
    curve should include ``k = 1``, which always reaches full agreement.

    Raises:
        ValueError: no point of the curve reaches the target.
    """
    reaching = [p for p in curve if metric_value(p.accuracy, metric) >= target - 1e-12]
    if not reaching:
        msg = f"no uniform interval reaches {metric} {target:.4f}"
        raise ValueError(msg)
    return max(reaching, key=lambda p: p.k or 0)


def uniform_for_target(
    streams: Sequence[Sequence[JSON]],
    target: float,
    *,
    metric: Metric = "agreement",
    max_k: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> BaselinePoint:
    """The largest sampling interval (1 to ``max_k``, default the longest stream) whose
    ``metric`` still reaches ``target`` (see :func:`pick_uniform`)."""
    longest = max((len(ref) for ref in streams), default=1)
    ks = range(1, (max_k or longest) + 1)
    curve = uniform_curve(streams, ks, iou_threshold=iou_threshold)
    return pick_uniform(curve, target, metric=metric)


def oracle_answers(
    reference: Sequence[JSON],
    *,
    change: ChangeTest = "boxes",
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[list[JSON], int]:
    """The oracle's answers and its number of model runs on one stream.

    Args:
        reference: the full model's answers.
        change: ``boxes``: send when the answer no longer agrees with the
            last one sent (boxes at IoU ≥ ``iou_threshold``); ``count``: send
            when the count changed (full count agreement, fewer runs).
        iou_threshold: IoU at which two boxes match.
    """
    same: Callable[[JSON, JSON], bool]
    if change == "boxes":

        def same(a: JSON, b: JSON) -> bool:
            return answers_agree(a, b, iou_threshold=iou_threshold)

    else:
        same = counts_agree
    out: list[JSON] = []
    runs = 0
    last: JSON | None = None
    for answer in reference:
        if last is None or not same(answer, last):
            last = answer
            runs += 1
        out.append(last)
    return out, runs


def oracle(
    streams: Sequence[Sequence[JSON]],
    *,
    change: ChangeTest = "boxes",
    iou_threshold: float = IOU_THRESHOLD,
) -> BaselinePoint:
    """The oracle over each stream (see :func:`oracle_answers`)."""
    pairs: list[tuple[Sequence[JSON], Sequence[JSON]]] = []
    runs = 0
    for ref in streams:
        answers, n = oracle_answers(ref, change=change, iou_threshold=iou_threshold)
        pairs.append((ref, answers))
        runs += n
    return BaselinePoint(
        name="oracle" if change == "boxes" else "oracle-count",
        k=None,
        inferences=runs,
        frames=sum(len(ref) for ref in streams),
        accuracy=pooled_accuracy(pairs, iou_threshold=iou_threshold),
    )
