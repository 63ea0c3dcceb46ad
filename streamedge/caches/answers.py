"""When are two model answers "the same"? One small function, used everywhere.

Answers are JSON objects. Whether a reused answer was right, whether cached
neighbours agree (H-kNN), and whether a re-check agreed are all decided by
comparing **answer keys**:

* ``answer_key(answer, "label")`` compares one field: a classifier's label;
* ``answer_key(answer, "count")`` compares a detector's object count;
* ``answer_key(answer, "summary.count")`` follows a dotted path into nested objects;
* ``answer_key(answer, None)`` compares the whole answer;
* ``answer_key(answer, "auto")`` (the cache default) compares ``label`` when the answer
  has one, else ``count``, else the whole answer: a whole answer carries float scores,
  which almost never repeat exactly, so measured agreement would read near zero.

The key is the canonical JSON text of the selected value (sorted keys, no
whitespace, UTF-8 kept), so it is hashable, stable across processes and cheap
to compare. A field that is absent yields the key ``"<missing:FIELD>"``; two
answers that both lack the field compare equal, which is the conservative
reading for "no label" answers. Floats compare exactly; round them in the
model's post-processing if near-equal values should count as equal.
"""

from __future__ import annotations

import json
from typing import Any

from streamedge.records import JSON

__all__ = ["AUTO", "answer_key", "answers_agree"]

AUTO = "auto"
"""Field selector: the answer's ``label``, else its ``count``, else the whole answer."""


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""Built once: ``json.dumps`` with non-default options builds an encoder per call."""


def _canonical(value: Any) -> str:
    return _ENCODER.encode(value)


def answer_key(answer: JSON, field: str | None = None) -> str:
    """The part of an answer that decides equality, as canonical JSON text.

    Args:
        answer: A model's JSON answer.
        field: A field name or dotted path (``"label"``, ``"summary.count"``);
            ``None`` selects the whole answer; ``"auto"`` see :data:`AUTO`.

    Returns:
        Canonical JSON of the selected value, or ``"<missing:FIELD>"``.
    """
    if field == AUTO:
        field = next((f for f in ("label", "count") if f in answer), None)
    if field is None:
        return _canonical(answer)
    value: Any = answer
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return f"<missing:{field}>"
        value = value[part]
    return _canonical(value)


def answers_agree(a: JSON, b: JSON, field: str | None = None) -> bool:
    """Whether two answers have the same :func:`answer_key`."""
    return answer_key(a, field) == answer_key(b, field)
