"""Comparing two answers to the same frame: box matching, counts, presence.

Detector answers are ``{"boxes": [[x1, y1, x2, y2, score], ...], "count": n}``;
classifier answers carry a ``label``. A missing answer (``None``: nothing was
published for a frame yet) stands for the empty answer, which is what an
application that has heard nothing assumes.

Agreement of two detector answers: boxes are matched greedily, highest IoU
first, each box at most once, and a pair counts only at IoU ≥ the threshold
(0.5 by default, the PASCAL VOC criterion). The answers agree when every box
of each side is matched (so both have the same number of boxes). Scores are
ignored: the question is where the faces are, not how sure the model was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamedge.records import JSON

IOU_THRESHOLD = 0.5
"""Default IoU at which two boxes are the same object."""
EMPTY_ANSWER: JSON = {"boxes": [], "count": 0}
"""What a missing answer stands for."""
EMPTY_LABELS = frozenset({"", "none", "background", "empty"})
"""Classifier labels that mean "nothing of interest" (as the filters' default)."""

Box = Sequence[float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2, ...]`` boxes (0 when either is empty)."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def match_boxes(
    reference: Sequence[Box], other: Sequence[Box], *, iou_threshold: float = IOU_THRESHOLD
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of boxes, highest IoU first.

    Args:
        reference: boxes of the reference answer.
        other: boxes of the answer under test.
        iou_threshold: a pair counts only at IoU ≥ this.

    Returns:
        ``(reference index, other index)`` pairs, best IoU first; ties keep
        the earlier reference box, then the earlier other box.
    """
    pairs = [
        (value, i, j)
        for i, r in enumerate(reference)
        for j, o in enumerate(other)
        if (value := iou(r, o)) >= iou_threshold
    ]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    used_r: set[int] = set()
    used_o: set[int] = set()
    matched: list[tuple[int, int]] = []
    for _, i, j in pairs:
        if i in used_r or j in used_o:
            continue
        used_r.add(i)
        used_o.add(j)
        matched.append((i, j))
    return matched


def boxes_agree(
    reference: Sequence[Box], other: Sequence[Box], *, iou_threshold: float = IOU_THRESHOLD
) -> bool:
    """Whether every box of each list is matched to one of the other's."""
    if len(reference) != len(other):
        return False
    if not reference:
        return True
    return len(match_boxes(reference, other, iou_threshold=iou_threshold)) == len(reference)


def _or_empty(answer: JSON | None) -> JSON:
    return EMPTY_ANSWER if answer is None else answer


def _boxes(answer: JSON) -> list[Box] | None:
    boxes: Any = answer.get("boxes")
    return boxes if isinstance(boxes, list) else None


def answer_count(answer: JSON | None) -> int | None:
    """The object count of an answer (``count``, else the number of boxes); None if neither."""
    answer = _or_empty(answer)
    count = answer.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    boxes = _boxes(answer)
    return len(boxes) if boxes is not None else None


def is_positive(answer: JSON | None) -> bool:
    """Whether an answer says something of interest is there (≥ 1 object, or a non-empty label)."""
    answer = _or_empty(answer)
    count = answer_count(answer)
    if count is not None:
        return count > 0
    label = answer.get("label")
    if isinstance(label, str):
        return label.lower() not in EMPTY_LABELS
    return bool(answer)


def answers_agree(
    reference: JSON | None, other: JSON | None, *, iou_threshold: float = IOU_THRESHOLD
) -> bool:
    """Whether an answer agrees with the reference answer to the same input.

    Detectors: every box matched both ways at IoU ≥ ``iou_threshold``.
    Classifiers: the same label. Anything else: equal JSON.
    """
    reference, other = _or_empty(reference), _or_empty(other)
    ref_boxes, other_boxes = _boxes(reference), _boxes(other)
    if ref_boxes is not None or other_boxes is not None:
        return boxes_agree(ref_boxes or [], other_boxes or [], iou_threshold=iou_threshold)
    if "label" in reference or "label" in other:
        return reference.get("label") == other.get("label")
    return reference == other


def counts_agree(reference: JSON | None, other: JSON | None) -> bool:
    """Whether two answers have the same object count (classifiers: the same label)."""
    ref_count, other_count = answer_count(reference), answer_count(other)
    if ref_count is not None or other_count is not None:
        return ref_count == other_count
    return _or_empty(reference).get("label") == _or_empty(other).get("label")
