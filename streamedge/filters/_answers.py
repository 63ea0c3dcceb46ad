"""What counts as "the same answer" and "an empty frame" for the video filters.

A filter that drops a frame makes the pipeline repeat the stream's last answer,
so dropping is right only when the full model would have given an answer the
application cannot tell apart from that one. :class:`AnswerSemantics` turns an
answer into a small hashable *key* (presence, count or label, see
:class:`~streamedge.filters.config.AnswerConfig`); two answers are the same
when their keys are equal. Answers the configuration cannot read get the key
:data:`UNKNOWN`, which equals nothing, not even itself, so filters facing them
only ever pass.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Final

from streamedge.filters.config import AnswerConfig
from streamedge.records import InferenceResult, Tier


class _Unknown:
    """Key of an unreadable answer: unequal to everything, itself included."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""Key of an answer that lacks the field it is judged by."""

AUTHORITATIVE_TIERS: Final = frozenset({Tier.LOCAL, Tier.EDGE, Tier.CLOUD})
"""Tiers whose answers come from running a model (not from a cache or filter)."""


def is_authoritative(result: InferenceResult, *, trust_cache: bool = False) -> bool:
    """Whether filters may learn from ``result`` (a model ran, or cache is trusted)."""
    return result.tier in AUTHORITATIVE_TIERS or (trust_cache and result.tier is Tier.CACHE)


class AnswerSemantics:
    """Reads answers the way an :class:`AnswerConfig` says.

    Example:
        >>> sem = AnswerSemantics(AnswerConfig(by="count"))
        >>> sem.key({"boxes": [[0, 0, 5, 5]], "count": 1})
        1
        >>> sem.is_empty({"boxes": [], "count": 0})
        True
    """

    def __init__(self, cfg: AnswerConfig | None = None) -> None:
        self.cfg = cfg or AnswerConfig()
        self._empty_labels = frozenset(self.cfg.empty_labels)

    def count(self, answer: Mapping[str, Any]) -> int | None:
        """The answer's object count, or ``None`` when it has neither field."""
        value = answer.get(self.cfg.count_field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(0, int(value))
        boxes = answer.get(self.cfg.boxes_field)
        if isinstance(boxes, list | tuple):
            return len(boxes)
        return None

    def label(self, answer: Mapping[str, Any]) -> str | None:
        """The answer's label as a string, or ``None`` when absent."""
        value = answer.get(self.cfg.label_field)
        return None if value is None else str(value)

    def key(self, answer: Mapping[str, Any]) -> Hashable:
        """A hashable key; answers with equal keys are interchangeable."""
        if self.cfg.by == "label":
            label = self.label(answer)
            return UNKNOWN if label is None else label
        count = self.count(answer)
        if count is None:
            return UNKNOWN
        return count if self.cfg.by == "count" else count > 0

    def is_empty(self, answer: Mapping[str, Any]) -> bool:
        """Whether the answer says "nothing of interest in this frame"."""
        if self.cfg.by == "label":
            label = self.label(answer)
            return label is not None and label in self._empty_labels
        return self.count(answer) == 0

    def same(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        """Whether two answers are interchangeable for the application."""
        return bool(self.key(a) == self.key(b))
