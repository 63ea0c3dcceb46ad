"""The JSON Schemas of the published statistics, shipped inside the package.

``snapshot.schema.json`` describes ``<prefix>/stats`` (and the answers on
``stats/get`` and ``<prefix>/stats/{device}``); ``history.schema.json``
describes ``<prefix>/stats/history``. ``streamedge stats --schema`` prints
the first.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def _load(name: str) -> dict[str, Any]:
    text = resources.files("streamedge.stats").joinpath(name).read_text(encoding="utf-8")
    doc = json.loads(text)
    assert isinstance(doc, dict)  # noqa: S101  # a packaged file we wrote
    return doc


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a statistics snapshot."""
    return _load("snapshot.schema.json")


def history_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the published history ring."""
    return _load("history.schema.json")
